//! The depot: one bundle directory per container, `<depot>/<handle>/`, holding
//! `container.json` (the [`Record`]) and `properties.json`. Containers cannot be restored yet:
//! the record is read back to clean up what a previous gardend left, and the properties (like
//! garden-init's `processes/<id>.exit`) are kept for re-adoption, which will read them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use garden_api::ContainerSpec;

use crate::kernel::linux::Linux;

/// On-disk record of a container, `<bundle>/container.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    handle: String,
    init_pid: i32,
    created_unix_ns: u128,
    spec: ContainerSpec,
}

pub(super) fn write_record(bundle: &Path, handle: &str, init_pid: i32, spec: &ContainerSpec) {
    let record = Record {
        handle: handle.to_string(),
        init_pid,
        created_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
        spec: spec.clone(),
    };
    let path = bundle.join("container.json");
    let bytes = serde_json::to_vec(&record).expect("record serialises");
    if let Err(e) = std::fs::write(&path, bytes) {
        tracing::warn!(path = %path.display(), error = %e, "write container record");
    }
}

/// `<bundle>/properties.json`, every property as Info reports it.
pub(super) fn write_properties(bundle: &Path, properties: &BTreeMap<String, String>) {
    let path = bundle.join("properties.json");
    let bytes = serde_json::to_vec(properties).expect("map serialises");
    if let Err(e) = std::fs::write(&path, bytes) {
        tracing::warn!(path = %path.display(), error = %e, "persist properties");
    }
}

/// The init pid a bundle's record names, if it has a readable one.
fn recorded_init_pid(bundle: &Path) -> Option<i32> {
    let bytes = std::fs::read(bundle.join("container.json")).ok()?;
    serde_json::from_slice::<Record>(&bytes)
        .ok()
        .map(|r| r.init_pid)
}

/// Remove what a previous gardend left: each bundle's init is killed, its cgroups and its
/// directory are removed.
pub(super) fn remove_stale(depot: &Path, linux: &Linux) {
    let Ok(entries) = std::fs::read_dir(depot) else {
        return;
    };
    for e in entries.flatten() {
        let bundle = e.path();
        let handle = e.file_name().to_string_lossy().into_owned();
        linux.remove_stale(&handle, recorded_init_pid(&bundle));
        match std::fs::remove_dir_all(&bundle) {
            Ok(()) => tracing::info!(handle, "removed container left by a previous run"),
            Err(e) => tracing::warn!(handle, error = %e, "remove stale bundle"),
        }
    }
}

pub(super) async fn remove_dir_all_blocking(dir: PathBuf) -> Result<(), String> {
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    })
    .await
    .map_err(|e| e.to_string())?
}
