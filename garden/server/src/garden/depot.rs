//! The depot: one bundle directory per container, `<depot>/<handle>/`, holding the state a
//! restarted gardend adopts the container from:
//! - `container.json` ([`Record`]): what never changes after create (spec, image, garden-init's
//!   pid and start time, address). Written once the container is complete, so a bundle without
//!   it is a create that did not finish.
//! - `properties.json` ([`Mutable`]): properties (with the grace time) and the NetOut rules
//!   added after create, rewritten on every change.
//!
//! garden-init adds `processes/<id>.exit`, the exit code of each process. Every file is written
//! whole to a temporary name, synced and renamed, so a crash leaves the old or the new version.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use garden_api::{ContainerSpec, NetOutRule};

use crate::kernel::InitIdentity;

/// Format of the state files; a file of another version is not adopted.
pub(super) const VERSION: u32 = 1;

/// `<bundle>/container.json`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Record {
    pub version: u32,
    pub handle: String,
    pub init_pid: i32,
    /// garden-init's start time (clock ticks since boot), against pid reuse.
    pub init_start_time: u64,
    pub created_unix_ns: u128,
    pub spec: ContainerSpec,
    pub image_env: Vec<String>,
    pub lower_dirs: Vec<PathBuf>,
    /// The image config's user and working dir (for processes that name none).
    #[serde(default)]
    pub image_user: String,
    #[serde(default)]
    pub image_dir: String,
    /// `a.b.c.d/n` and `a.b.c.d`; empty if the container has no network.
    pub subnet: String,
    pub container_ip: String,
    /// The name of its cgroup: the warm name a container made ahead of demand had (cgroup v2
    /// cannot rename one); empty = the handle.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroup: String,
}

impl Record {
    pub fn init(&self) -> InitIdentity {
        InitIdentity {
            pid: self.init_pid,
            start_time: self.init_start_time,
        }
    }

    /// The name of its cgroup under gardend's parent.
    pub fn cgroup(&self) -> &str {
        if self.cgroup.is_empty() {
            &self.handle
        } else {
            &self.cgroup
        }
    }
}

/// `<bundle>/properties.json`.
#[derive(Debug, serde::Serialize, serde::Deserialize, Default)]
pub(super) struct Mutable {
    pub version: u32,
    /// Every property as Info reports it (`garden.grace-time` included).
    pub properties: BTreeMap<String, String>,
    /// NetOut rules added after create (the firewall holds them; kept for the record).
    pub net_out: Vec<NetOutRule>,
}

pub(super) fn now_unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Write `bytes` to `path` atomically: a temporary file beside it, renamed over it. A gardend
/// that dies at any point (even by SIGKILL) leaves the old file or the new one, never a part.
/// No fsync: these records only matter while the containers' processes live, and a host crash
/// ends those too (the next start finds the garden-inits gone and sweeps whatever it reads).
/// Two fsyncs per file cost about 0.9 ms here, and a create writes two files, a destroy one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

pub(super) fn write_record(bundle: &Path, record: &Record) {
    let path = bundle.join("container.json");
    let bytes = serde_json::to_vec(record).expect("record serialises");
    if let Err(e) = write_atomic(&path, &bytes) {
        tracing::warn!(path = %path.display(), error = %e, "write container record");
    }
}

pub(super) fn write_mutable(bundle: &Path, state: &Mutable) {
    let path = bundle.join("properties.json");
    let bytes = serde_json::to_vec(state).expect("state serialises");
    if let Err(e) = write_atomic(&path, &bytes) {
        tracing::warn!(path = %path.display(), error = %e, "persist properties");
    }
}

/// A bundle's state, if both files are there, readable and of this version.
pub(super) fn read(bundle: &Path) -> Result<(Record, Mutable), String> {
    let record: Record = read_json(&bundle.join("container.json"))?;
    let mutable: Mutable = read_json(&bundle.join("properties.json"))?;
    if record.version != VERSION || mutable.version != VERSION {
        return Err(format!(
            "state version {}/{} (this gardend reads {VERSION})",
            record.version, mutable.version
        ));
    }
    Ok((record, mutable))
}

fn read_json<T: for<'de> serde::Deserialize<'de>>(path: &Path) -> Result<T, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("parse {}: {e}", path.display()))
}

/// `<bundle>/destroying`: a destroy began. A restart does not adopt such a container; it
/// finishes the destroy (the sweep removes it).
pub(super) fn mark_destroying(bundle: &Path, on: bool) {
    let path = bundle.join("destroying");
    let r = if on {
        write_atomic(&path, b"")
    } else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    };
    if let Err(e) = r {
        tracing::warn!(path = %path.display(), error = %e, "mark destroy");
    }
}

pub(super) fn is_destroying(bundle: &Path) -> bool {
    bundle.join("destroying").exists()
}

/// Exit codes garden-init recorded: `processes/<id>.exit`.
pub(super) fn exit_codes(bundle: &Path) -> Vec<(String, i32)> {
    let dir = crate::runtime::processes_dir(bundle);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".exit")?.to_string();
            let code = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((id, code))
        })
        .collect()
}

/// Remove a bundle (`<depot>/<name>`) and the writable layers it points to, in
/// `<state dir>/writable` (the state directory is the depot's parent).
pub(super) async fn remove_bundle_blocking(dir: PathBuf) -> Result<(), String> {
    let depot = dir.parent().unwrap_or(Path::new("/"));
    let layers = crate::runtime::depot_fs::layers_dir(depot.parent().unwrap_or(depot));
    tokio::task::spawn_blocking(move || {
        crate::runtime::depot_fs::remove_bundle(&dir, &layers)
            .map_err(|e| format!("remove {}: {e}", dir.display()))
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(handle: &str) -> Record {
        Record {
            version: VERSION,
            handle: handle.into(),
            init_pid: 42,
            init_start_time: 4242,
            created_unix_ns: now_unix_ns(),
            spec: ContainerSpec {
                handle: handle.into(),
                grace_time: 7,
                ..Default::default()
            },
            image_env: vec!["A=b".into()],
            lower_dirs: vec![PathBuf::from("/layers/x")],
            image_user: "vcap".into(),
            image_dir: "/home/vcap".into(),
            subnet: "10.0.0.0/30".into(),
            container_ip: "10.0.0.2".into(),
            cgroup: String::new(),
        }
    }

    #[test]
    fn state_files_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).is_err(), "no record: not a container");
        write_record(dir.path(), &record("h"));
        assert!(
            read(dir.path()).is_err(),
            "record only: create not finished"
        );
        let mutable = Mutable {
            version: VERSION,
            properties: BTreeMap::from([("k".to_string(), "v".to_string())]),
            net_out: vec![NetOutRule::default()],
        };
        write_mutable(dir.path(), &mutable);
        let (r, m) = read(dir.path()).expect("read back");
        assert_eq!(
            (r.handle.as_str(), r.init().pid, r.init().start_time),
            ("h", 42, 4242)
        );
        assert_eq!(r.spec.grace_time, 7);
        assert_eq!(m.properties["k"], "v");
        assert_eq!(m.net_out.len(), 1);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn other_versions_and_garbage_are_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = record("h");
        r.version = VERSION + 1;
        write_record(dir.path(), &r);
        write_mutable(
            dir.path(),
            &Mutable {
                version: VERSION,
                ..Default::default()
            },
        );
        assert!(read(dir.path()).unwrap_err().contains("version"));
        std::fs::write(dir.path().join("container.json"), b"{\"handle\":").unwrap();
        assert!(read(dir.path()).unwrap_err().contains("parse"));
    }

    #[test]
    fn exit_codes_are_read_from_the_processes_dir() {
        let dir = tempfile::tempdir().unwrap();
        let procs = crate::runtime::processes_dir(dir.path());
        std::fs::create_dir_all(&procs).unwrap();
        std::fs::write(procs.join("a.exit"), "7\n").unwrap();
        std::fs::write(procs.join(".b.spawn"), "{}").unwrap();
        std::fs::write(procs.join("c.exit"), "").unwrap();
        assert_eq!(exit_codes(dir.path()), [("a".to_string(), 7)]);
    }
}
