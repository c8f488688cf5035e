//! One gardend per depot and per instance: a second one would wipe the first one's firewall
//! chains, cgroups and depot at startup. Each gardend holds an exclusive `flock` on a lock file
//! for its state directory (the depot's parent, which also holds the disk layers) and one for
//! its instance name (the cgroup parent, from which link and chain names derive) for as long as
//! it runs; the kernel drops them when it dies, even by SIGKILL.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Where instance locks live: host-wide, and gone after a reboot like the instances' state.
const INSTANCE_LOCKS: &str = "/run/gardend";

/// The locks this gardend holds; dropping it releases them.
pub(super) struct Ownership {
    _files: Vec<File>,
}

/// Why this gardend may not start.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("another gardend{} already owns {what} (lock {path} is held); stop it first or choose another --depot / --cgroup-parent", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Taken {
        what: String,
        path: PathBuf,
        holder: Option<u32>,
    },
    #[error("lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Take both locks, or say who holds one.
pub(super) fn claim(
    state_dir: &Path,
    depot: &Path,
    instance: &str,
) -> Result<Ownership, OwnershipError> {
    let state = lock(
        &state_dir.join("gardend.lock"),
        format!("depot {}", depot.display()),
    )?;
    let name: String = instance
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    let instance = lock(
        &Path::new(INSTANCE_LOCKS).join(format!("{name}.lock")),
        format!("instance {instance:?} (cgroup parent and firewall chains)"),
    )?;
    Ok(Ownership {
        _files: vec![state, instance],
    })
}

fn lock(path: &Path, what: String) -> Result<File, OwnershipError> {
    let io = |source| OwnershipError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(OwnershipError::Taken {
                what,
                path: path.to_path_buf(),
                holder: text.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    // Ours now: say who holds it, for the next one's error message.
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_names_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let first = lock(&path, "depot /x".into()).unwrap();
        let e = lock(&path, "depot /x".into()).unwrap_err().to_string();
        assert!(e.contains("already owns depot /x"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        lock(&path, "depot /x".into()).expect("free again");
    }
}
