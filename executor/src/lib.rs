//! Diego-style actions on top of the Garden API.
//!
//! An action tree (download, upload, run, timeout, try, serial, parallel, codependent,
//! emit_progress; see `shared/spec/executor-actions.md`) is loaded and validated by
//! [`action`], turned into cancellable steps by [`step::build`], and run against a container
//! that only ever is reached through the [`garden::Garden`] trait (implemented by
//! `garden_client::Client`). [`container`] adds the container lifecycle a scheduling agent
//! needs (allocate, run, stop, delete, events); [`http_api`] exposes it over HTTP.
//!
//! This crate knows nothing of namespaces or cgroups: all of that is gardend's.

pub mod action;
pub mod archive;
pub mod cache;
pub mod container;
pub mod garden;
pub mod health;
pub mod http;
pub mod http_api;
pub mod log;
pub mod step;
pub mod testing;

pub use action::Action;
pub use step::{CancellationToken, Ready, Step, StepError};
