//! Disk limits enforced by the kernel on each container's writable layer.
//!
//! Two backends, both put the bundle's `upper` and `work` (as symlinks) on a filesystem where
//! the kernel accounts and limits every byte and inode, so writers get ENOSPC / EDQUOT and
//! metrics read usage from the kernel instead of walking the tree:
//! - [`xfs::Store`] (with `--disk-store-size`): one sparse XFS file under the state directory,
//!   loop-mounted with `prjquota`; a project per container with its limits. Needs a kernel
//!   with XFS quota support.
//! - [`images::Images`] (otherwise, or when the XFS store cannot be set up): a small sparse
//!   ext4 image per container with disk limits, sized to the byte limit and made with the
//!   inode limit, loop-mounted for the container's lifetime. Containers without disk limits
//!   keep their layer in the bundle.
//!
//! Without either (no loop devices, no mkfs) gardend still runs and refuses disk limits with
//! the reason.

mod images;
mod sys;
mod xfs;

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use sys::Quota;

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("disk limits are not available: {0}")]
    Unavailable(String),
    #[error(
        "disk limit of {limit} {unit} is not larger than the image's {image} {unit} (scope total counts the image)"
    )]
    ImageTooLarge {
        limit: u64,
        image: u64,
        unit: &'static str,
    },
    #[error("disk limit of {limit} bytes exceeds the {backend} store's {capacity} bytes")]
    BeyondStore {
        limit: u64,
        capacity: u64,
        backend: &'static str,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

type Result<T> = std::result::Result<T, QuotaError>;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> QuotaError + 'a {
    move |source| QuotaError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Disk quota support of this gardend: a backend, or the reason there is none.
#[derive(Clone)]
pub struct Disk {
    state: Arc<DiskState>,
}

enum DiskState {
    Off(String),
    Xfs(xfs::Store),
    Images(images::Images),
}

/// Bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

/// A container's disk limits in the server's own terms (the core converts Garden's
/// `DiskLimits` at the service boundary). Zero = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskLimit {
    pub byte_soft: u64,
    pub byte_hard: u64,
    pub inode_soft: u64,
    pub inode_hard: u64,
    /// The limits count the image too (Garden's scope "total"), not only the container's own
    /// writes ("exclusive").
    pub includes_image: bool,
}

fn has_limits(l: &DiskLimit) -> bool {
    l.limits_anything()
}

impl DiskLimit {
    /// Whether any byte or inode limit is set.
    pub fn limits_anything(&self) -> bool {
        self.byte_hard > 0 || self.inode_hard > 0 || self.byte_soft > 0 || self.inode_soft > 0
    }
}

impl Disk {
    /// No backend: disk limits are refused with `reason`.
    pub fn disabled(reason: impl Into<String>) -> Disk {
        Disk {
            state: Arc::new(DiskState::Off(reason.into())),
        }
    }

    /// Pick and set up a backend under `state_dir` (the XFS store of `store_size` bytes when
    /// non-zero, else or on failure per-container images). Never fails: without a backend
    /// the returned `Disk` refuses disk limits and carries the reason. Layers a previous run
    /// left behind are removed, except those of the containers in `keep` (taken over by a
    /// restart), which are registered as they are.
    pub fn open(state_dir: &Path, store_size: u64, keep: &[String]) -> Disk {
        let disk = Disk::choose(state_dir, store_size, keep);
        let wanted = if store_size > 0 { "xfs" } else { "images" };
        crate::telemetry::metrics().disk_backend(disk.backend(), wanted, disk.capacity());
        disk
    }

    fn choose(state_dir: &Path, store_size: u64, keep: &[String]) -> Disk {
        let mut reasons = Vec::new();
        if store_size > 0 {
            match xfs::Store::open(&state_dir.join("quota"), store_size, keep) {
                Ok(store) => {
                    tracing::info!(mount = %store.mount.display(), store_size, "disk quotas: XFS project quota store");
                    return Disk {
                        state: Arc::new(DiskState::Xfs(store)),
                    };
                }
                Err(e) => {
                    tracing::warn!(error = %e, store_size, "XFS quota store unavailable (--disk-store-size is NOT in effect): falling back to a loop-mounted ext4 image per limited container; Capacity and the garden_disk_backend metric report the fallback");
                    reasons.push(format!("XFS quota store: {e}"));
                }
            }
        }
        match images::Images::open(&state_dir.join("disk"), keep) {
            Ok(images) => {
                tracing::info!(dir = %images.dir.display(), "disk quotas: a loop-mounted ext4 image per limited container");
                Disk {
                    state: Arc::new(DiskState::Images(images)),
                }
            }
            Err(e) => {
                reasons.push(format!("per-container images: {e}"));
                let reason = reasons.join("; ");
                tracing::warn!(reason, "disk limits will be refused");
                Disk::disabled(reason)
            }
        }
    }

    /// Bytes the backend's filesystem holds in all (the XFS store's size, or the filesystem
    /// the per-container images live on): a limit beyond it could never be honoured, and
    /// Capacity reports it as the disk containers can have.
    pub fn capacity(&self) -> u64 {
        let dir = match &*self.state {
            DiskState::Off(_) => return 0,
            DiskState::Xfs(store) => &store.mount,
            DiskState::Images(images) => &images.dir,
        };
        nix::sys::statvfs::statvfs(dir)
            .map(|s| s.blocks() * s.fragment_size())
            .unwrap_or(u64::MAX)
    }

    /// Which backend is in use: "xfs", "images" or "off".
    pub fn backend(&self) -> &'static str {
        match &*self.state {
            DiskState::Off(_) => "off",
            DiskState::Xfs(_) => "xfs",
            DiskState::Images(_) => "images",
        }
    }

    /// Give the container at `bundle` its writable layer under `limits` (`image` is the
    /// image's size, counted against scope total): `upper` and `work` become symlinks into
    /// the quota'd filesystem. Without a backend this is a no-op unless limits were asked
    /// for, which is an error.
    pub fn attach(
        &self,
        handle: &str,
        bundle: &Path,
        limits: &DiskLimit,
        image: Usage,
    ) -> Result<()> {
        match &*self.state {
            DiskState::Off(reason) if has_limits(limits) => {
                Err(QuotaError::Unavailable(reason.clone()))
            }
            DiskState::Off(_) => Ok(()),
            _ if limits.byte_hard.max(limits.byte_soft) > self.capacity() => {
                Err(QuotaError::BeyondStore {
                    limit: limits.byte_hard.max(limits.byte_soft),
                    capacity: self.capacity(),
                    backend: self.backend(),
                })
            }
            DiskState::Xfs(store) => store.attach(handle, bundle, quota_for(limits, image)?),
            DiskState::Images(images) if has_limits(limits) => {
                images.attach(handle, bundle, quota_for(limits, image)?)
            }
            DiskState::Images(_) => Ok(()),
        }
    }

    /// Whether [`Disk::attach`] with `limits` does anything (else a container needs no layer
    /// of its own, and a warm container, made without one, may serve it).
    pub fn layer_needed(&self, limits: &DiskLimit) -> bool {
        match &*self.state {
            DiskState::Xfs(_) => true,
            DiskState::Off(_) | DiskState::Images(_) => has_limits(limits),
        }
    }

    /// The container's own bytes and inodes as the kernel accounts them; `None` when its
    /// layer is not under a quota.
    pub fn usage(&self, handle: &str) -> Option<Usage> {
        let usage = match &*self.state {
            DiskState::Off(_) => return None,
            DiskState::Xfs(store) => store.usage(handle)?,
            DiskState::Images(images) => images.usage(handle)?,
        };
        usage
            .map_err(|e| tracing::warn!(handle, error = %e, "read disk usage"))
            .ok()
    }

    /// Remove the container's layer and its quota (project limits, or image and loop device).
    pub fn release(&self, handle: &str) -> Result<()> {
        match &*self.state {
            DiskState::Off(_) => Ok(()),
            DiskState::Xfs(store) => store.release(handle),
            DiskState::Images(images) => images.release(handle),
        }
    }

    /// The XFS project id of a container, for leak checks.
    pub fn project(&self, handle: &str) -> Option<u32> {
        match &*self.state {
            DiskState::Xfs(store) => store.project(handle),
            _ => None,
        }
    }

    /// Unmount the XFS store if no container uses it (its loop device detaches with it).
    /// With containers left running it stays mounted for the next gardend to reuse.
    pub fn shutdown(&self) {
        let DiskState::Xfs(store) = &*self.state else {
            return;
        };
        if store.in_use() {
            return;
        }
        match nix::mount::umount2(&store.mount, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => {
                tracing::info!(mount = %store.mount.display(), image = %store.image.display(), "quota store unmounted")
            }
            Err(e) => {
                tracing::warn!(mount = %store.mount.display(), error = %e, "unmount quota store")
            }
        }
    }
}

/// The project limits for `limits`: scope total subtracts the image (which lives outside the
/// project) and refuses limits it already exceeds. Zero = unlimited.
pub fn quota_for(limits: &DiskLimit, image: Usage) -> Result<Quota> {
    let total = limits.includes_image;
    let own = |limit: u64, image: u64, unit: &'static str| -> Result<u64> {
        if limit == 0 || !total {
            return Ok(limit);
        }
        if limit <= image {
            return Err(QuotaError::ImageTooLarge { limit, image, unit });
        }
        Ok(limit - image)
    };
    Ok(Quota {
        bytes_hard: own(limits.byte_hard, image.bytes, "bytes")?,
        bytes_soft: if limits.byte_soft > 0 {
            own(limits.byte_soft, image.bytes, "bytes")?
        } else {
            0
        },
        inodes_hard: own(limits.inode_hard, image.inodes, "inodes")?,
        inodes_soft: if limits.inode_soft > 0 {
            own(limits.inode_soft, image.inodes, "inodes")?
        } else {
            0
        },
        ..Quota::default()
    })
}

fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(QuotaError::Io {
            op: "remove",
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Ok(canonical) = path.canonicalize() else {
        return false;
    };
    let wanted = canonical.to_string_lossy();
    mountinfo
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(&*wanted))
}

/// Open a directory for an ioctl or quotactl_fd.
fn open_dir(path: &Path) -> Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
        .map_err(io("open", path))
}

/// The raw fd of an open file, for the syscalls in `sys`.
fn raw(f: &fs::File) -> i32 {
    f.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOTAL: bool = true;
    const EXCLUSIVE: bool = false;

    fn limits(bytes: u64, inodes: u64, includes_image: bool) -> DiskLimit {
        DiskLimit {
            byte_hard: bytes,
            inode_hard: inodes,
            includes_image,
            ..Default::default()
        }
    }

    #[test]
    fn total_scope_subtracts_the_image() {
        let image = Usage {
            bytes: 10 << 20,
            inodes: 100,
        };
        let q = quota_for(&limits(50 << 20, 1000, TOTAL), image).unwrap();
        assert_eq!((q.bytes_hard, q.inodes_hard), (40 << 20, 900));
        let q = quota_for(&limits(50 << 20, 1000, EXCLUSIVE), image).unwrap();
        assert_eq!((q.bytes_hard, q.inodes_hard), (50 << 20, 1000));
        let q = quota_for(&limits(0, 0, TOTAL), image).unwrap();
        assert_eq!(q, Quota::default(), "no limits, no quota");
    }

    #[test]
    fn total_scope_refuses_limits_below_the_image() {
        let image = Usage {
            bytes: 10 << 20,
            inodes: 100,
        };
        let e = quota_for(&limits(1 << 20, 0, TOTAL), image).unwrap_err();
        assert!(e.to_string().contains("not larger than the image"), "{e}");
        let e = quota_for(&limits(0, 50, TOTAL), image).unwrap_err();
        assert!(e.to_string().contains("inodes"), "{e}");
    }

    #[test]
    fn disabled_store_refuses_limits_only() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Disk::disabled("no store here");
        d.attach("h", tmp.path(), &DiskLimit::default(), Usage::default())
            .unwrap();
        let e = d.attach(
            "h",
            tmp.path(),
            &limits(1 << 20, 0, EXCLUSIVE),
            Usage::default(),
        );
        assert!(e.unwrap_err().to_string().contains("no store here"));
        assert_eq!(d.usage("h"), None);
        d.release("h").unwrap();
    }

    #[test]
    fn too_small_xfs_store_falls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Disk::open(tmp.path(), 1 << 20, &[]);
        assert_ne!(d.backend(), "xfs");
    }
}
