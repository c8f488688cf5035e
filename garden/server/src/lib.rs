//! gardend: a container server speaking Garden's HTTP API.
//!
//! Layers, top to bottom (see ARCHITECTURE.md):
//! - `http/` and `api/`: bytes on a socket to [`service::Request`] and back; nothing else.
//! - [`service`]: the typed boundary.
//! - `garden/`: the core service: containers, processes, properties, grace timers; one file
//!   per job. It reaches the host only through [`kernel::Kernel`].
//! - `kernel/`: the seam: the `Kernel`/`Sandbox` traits, the Linux implementation and a
//!   recording fake for unit tests.
//! - `runtime/`, `cgroups/`, `net/`, `quota/`, `process/`: the kernel side (clone, pidfds,
//!   cgroup files, links and firewall, disk quotas, pipes and ptys). Only these, `kernel/` and
//!   `init/` use libc or nix (`scripts/check-layers.sh`).
//! - [`telemetry`]: metrics and the debug listener (`/metrics`, `/debug/vars`).
//! - `garden-init` (src/bin/garden-init.rs): pid 1 of every container.

pub mod api;
pub mod cgroups;
pub mod cli;
pub mod config;
pub mod garden;
pub mod http;
pub mod init;
pub mod kernel;
pub mod net;
pub mod process;
pub mod quota;
pub mod runtime;
pub mod server;
pub mod service;
pub mod telemetry;
