//! The cell agent: the thin layer a controller drives over NATS.
//!
//! It speaks the DEA's protocol (`shared/spec/agent-protocol.md`) and maps it onto the
//! executor, which it embeds as a library (the way Diego's rep embeds its executor); the
//! executor reaches gardend only through `garden-client`. Nothing here knows about
//! namespaces or cgroups.
//!
//! Types to read first: [`protocol`] (every message on the bus), [`config::Config`],
//! [`resources::Resources`] (what may still be placed here), [`cell::Cell`] (what every
//! subsystem shares), [`bus::Bus`].

pub mod bus;
pub mod cell;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod dirserver;
pub mod instance;
pub mod logs;
pub mod metrics;
pub mod protocol;
pub mod resources;
pub mod signer;
pub mod staging;
pub mod task;
