//! Where a bundle's files live. gardend mounts a tmpfs on an empty depot (as runc keeps its
//! state in /run): records, garden-init's socket and log, exit codes and mount points never
//! touch the disk. Only a container's writable layer does: `upper` and `work` in the bundle
//! are symlinks to `<state dir>/writable/<bundle name>.<n>/{upper,work}`.
//!
//! Why: every inode made or freed on the depot's filesystem costs. On an ext4 without a
//! journal (this host's root) each new inode first skips the inodes freed in the last one to
//! six minutes (`find_inode_bit` → `recently_deleted`), which took 30% of all CPU in a create
//! burst that followed a destroy burst. A bundle made about 20 disk inodes and freed them on
//! destroy; now it makes 3 of its own (the layer directory, `upper`, `work`) plus what the
//! overlay writes. The tmpfs lives as long as the host (a restarted gardend finds it and
//! adopts from it); after a reboot it is empty, and the layers nobody names are swept.
//!
//! A depot that already holds bundles on disk (from a gardend before this layout) is left as
//! it is, and so are the layers of containers with disk limits (the quota backends' symlinks).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The source name of the depot's tmpfs, by which a gardend knows it mounted it.
const SOURCE: &str = "gardend-depot";
/// With the time, keeps layer names unique.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// How the depot was found or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepotFs {
    /// gardend mounted the tmpfs now.
    Mounted,
    /// Already a tmpfs (left mounted by a previous gardend, or the operator's).
    Tmpfs,
    /// Bundles kept on disk: the depot held bundles of the old layout, or the mount failed.
    Disk,
}

/// `<state dir>/writable`: the writable layers of containers whose bundles are on a tmpfs.
pub fn layers_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("writable")
}

/// Make the depot a tmpfs if it is empty; with the depot a tmpfs, the directory writable
/// layers go to (made, under `state_dir`).
pub fn prepare(depot: &Path, state_dir: &Path) -> (DepotFs, Option<PathBuf>) {
    let kind = if is_tmpfs(depot) {
        DepotFs::Tmpfs
    } else if std::fs::read_dir(depot).is_ok_and(|mut d| d.next().is_none()) {
        let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
        match nix::mount::mount(Some(SOURCE), depot, Some("tmpfs"), flags, Some("mode=0700")) {
            Ok(()) => DepotFs::Mounted,
            Err(e) => {
                tracing::warn!(depot = %depot.display(), error = %e, "cannot mount a tmpfs on the depot; bundles stay on disk");
                DepotFs::Disk
            }
        }
    } else {
        tracing::info!(depot = %depot.display(), "the depot holds bundles on disk; keeping that layout");
        spread_subdirectories(depot);
        DepotFs::Disk
    };
    if kind == DepotFs::Disk {
        return (kind, None);
    }
    let root = layers_dir(state_dir);
    match std::fs::create_dir_all(&root) {
        Ok(()) => {
            spread_subdirectories(&root);
            (kind, Some(root))
        }
        Err(e) => {
            tracing::warn!(dir = %root.display(), error = %e, "cannot create the writable-layer directory; layers stay in the bundles");
            (kind, None)
        }
    }
}

/// ext4's `T` attribute (`chattr +T`): the directories made in `dir` are unrelated, so the
/// allocator spreads them over block groups as it does top-level directories, instead of
/// packing every layer into the group of `dir`. Packed, the group fills with inodes destroyed
/// layers freed a moment ago, and without a journal every new inode first skips all of those
/// (`recently_deleted`). Other filesystems refuse the flag, which is harmless.
fn spread_subdirectories(dir: &Path) {
    use std::os::fd::AsRawFd;
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(d) = std::fs::File::open(dir) else {
        return;
    };
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one int through a valid pointer on a
    // descriptor we own.
    let set = unsafe {
        libc::ioctl(d.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) == 0 && {
            flags |= FS_TOPDIR_FL;
            libc::ioctl(d.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) == 0
        }
    };
    if !set {
        tracing::debug!(dir = %dir.display(), error = %io::Error::last_os_error(), "no top-directory flag");
    }
}

/// Whether the mount at `depot` is the tmpfs a gardend mounted (its source names it).
fn mounted_by_gardend(depot: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let depot = std::fs::canonicalize(depot).unwrap_or_else(|_| depot.to_path_buf());
    let target = depot.to_string_lossy();
    // Fields: id parent major:minor root mount-point options ... - fstype source options.
    info.lines().any(|l| {
        let mut halves = l.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        let point = left.split(' ').nth(4).unwrap_or_default();
        let mut fs = right.split(' ');
        point == target && fs.next() == Some("tmpfs") && fs.next() == Some(SOURCE)
    })
}

fn is_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Give `bundle` its `upper` and `work` directories: in `layers` through symlinks when the
/// depot is a tmpfs, in the bundle otherwise. Ones that exist (a quota backend's) are kept.
pub(crate) fn make_layer(bundle: &Path, layers: Option<&Path>) -> io::Result<()> {
    std::fs::create_dir_all(bundle)?;
    let upper = bundle.join("upper");
    if upper.symlink_metadata().is_ok() {
        return std::fs::create_dir_all(bundle.join("work"));
    }
    let Some(root) = layers else {
        std::fs::create_dir_all(&upper)?;
        return std::fs::create_dir_all(bundle.join("work"));
    };
    // Unique across runs too: a kept container's pea may share the bundle name.
    let name = bundle.file_name().unwrap_or_default().to_string_lossy();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("{name}.{stamp:x}.{n}"));
    std::fs::create_dir(&dir)?;
    for sub in ["upper", "work"] {
        std::fs::create_dir(dir.join(sub))?;
        std::os::unix::fs::symlink(dir.join(sub), bundle.join(sub))?;
    }
    Ok(())
}

/// The layer directory in `root` that `bundle`'s `upper` points to, if any.
fn layer_of(bundle: &Path, root: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(bundle.join("upper")).ok()?;
    let dir = target.parent()?;
    (dir.parent() == Some(root)).then(|| dir.to_path_buf())
}

/// The layer directories in `root` that `bundle` and its peas point to.
fn layers_named_by(bundle: &Path, root: &Path) -> Vec<PathBuf> {
    let peas = std::fs::read_dir(super::pea::peas_dir(bundle))
        .into_iter()
        .flatten();
    std::iter::once(layer_of(bundle, root))
        .chain(peas.flatten().map(|p| layer_of(&p.path(), root)))
        .flatten()
        .collect()
}

/// Remove `bundle` and the writable layers in `root` (see [`layers_dir`]) it and its peas
/// point to (absent ones are not an error).
pub fn remove_bundle(bundle: &Path, root: &Path) -> io::Result<()> {
    for layer in layers_named_by(bundle, root) {
        match std::fs::remove_dir_all(&layer) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match std::fs::remove_dir_all(bundle) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Remove the writable layers in `root` no bundle in `kept` (nor their peas) points to: those
/// of containers a previous run lost, or of every container after a reboot emptied the tmpfs.
pub fn sweep_layers(root: &Path, kept: &[PathBuf]) {
    let named: std::collections::HashSet<PathBuf> = kept
        .iter()
        .flat_map(|bundle| layers_named_by(bundle, root))
        .collect();
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if named.contains(&e.path()) {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => {
                tracing::info!(layer = %e.path().display(), "removed a writable layer no container names")
            }
            Err(err) => {
                tracing::warn!(layer = %e.path().display(), error = %err, "remove a stale writable layer")
            }
        }
    }
}

/// Unmount the depot's tmpfs once gardend stops with no container left (containers that
/// outlive gardend keep it for the next one). Only a tmpfs a gardend mounted: an operator's
/// own stays.
pub fn release(depot: &Path) {
    if !mounted_by_gardend(depot) {
        return;
    }
    if std::fs::read_dir(depot).is_ok_and(|mut d| d.next().is_some()) {
        return;
    }
    if let Err(e) = nix::mount::umount2(depot, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(depot = %depot.display(), error = %e, "unmount the depot's tmpfs");
    }
}
