//! gardend: a container server speaking Garden's HTTP API.
//!
//! Layers, top to bottom (see ARCHITECTURE.md):
//! - `http/` and `api/`: bytes on a socket to [`service::Request`] and back; nothing else.
//! - [`service`]: the typed boundary.
//! - `garden.rs`: the core service: containers, processes, properties, grace timers.
//! - `runtime/`, `cgroups/`: namespaces, mounts, cgroups; the only code that talks to the kernel.
//! - `garden-init` (src/bin/garden-init.rs): pid 1 of every container.

pub mod api;
pub mod cgroups;
pub mod cli;
pub mod config;
pub mod garden;
pub mod http;
pub mod init;
pub mod net;
pub mod process;
pub mod quota;
pub mod runtime;
pub mod server;
pub mod service;
