//! `db/instances.json` (spec §4): written atomically (temp file, fsync, rename, fsync of the
//! directory) on every state change, read once at boot.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use serde::{Deserialize, Serialize};

use super::{Instances, Record};
use crate::protocol::{now_timestamp, InstanceState};

#[derive(Serialize, Deserialize)]
struct Snapshot {
    time: f64,
    instances: Vec<Record>,
    /// Staging tasks in flight (they do not survive a restart: the next run fails them).
    #[serde(default)]
    staging_tasks: Vec<serde_json::Value>,
}

impl Instances {
    fn snapshot_path(&self) -> std::path::PathBuf {
        self.cell.config.db_dir().join("instances.json")
    }

    /// Save every instance worth resuming or reporting after a restart.
    pub(super) fn save_snapshot(&self) {
        let _guard = self.snapshot_lock.lock().unwrap();
        let mut instances: Vec<Record> = self
            .all()
            .iter()
            .map(|i| i.record())
            .filter_map(|mut r| {
                match r.state {
                    InstanceState::Starting
                    | InstanceState::Stopping
                    | InstanceState::Running
                    | InstanceState::Crashed
                    | InstanceState::Evacuating => {}
                    // Not re-attached yet: still what it was.
                    InstanceState::Resuming => r.state = InstanceState::Running,
                    _ => return None,
                }
                Some(r)
            })
            .collect();
        instances.sort_by(|a, b| a.warden_handle.cmp(&b.warden_handle));
        let snap = Snapshot {
            time: now_timestamp(),
            instances,
            staging_tasks: self.staging_snapshot.get().map(|f| f()).unwrap_or_default(),
        };
        if let Err(e) = self.write_snapshot(&snap) {
            tracing::error!(path = %self.snapshot_path().display(), error = %e, "cannot save the snapshot");
        }
    }

    fn write_snapshot(&self, snap: &Snapshot) -> std::io::Result<()> {
        let path = self.snapshot_path();
        let dir = self.cell.config.db_dir();
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join("instances.json.tmp");
        // Service credentials are in here: owner-only.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(snap).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()
    }

    /// The records of the last snapshot; a missing or unreadable one is an empty start.
    pub(super) fn load_snapshot(&self) -> Vec<Record> {
        let path = self.snapshot_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the snapshot");
                return Vec::new();
            }
        };
        match serde_json::from_slice::<Snapshot>(&bytes) {
            Ok(s) => s.instances,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "snapshot is not valid; starting empty");
                Vec::new()
            }
        }
    }
}
