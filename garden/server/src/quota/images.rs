//! Per-container images: a sparse ext4 file per container with disk limits, made with the
//! byte limit as its free space and the inode limit as its inode count, loop-mounted for the
//! container's lifetime. Works on kernels without XFS or ext4 quota support (this host's).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::sys::{self, Quota};
use super::{io, is_mount_point, remove_tree, QuotaError, Result, Usage};

const BLOCK: u64 = 4096;
/// ext4 reserves inodes 1-10; lost+found (removed) is 11.
const RESERVED_INODES: u64 = 10;
/// Inodes gardend itself uses in the image: upper/, work/ and overlayfs's work/work.
const OWN_INODES: u64 = 3;
/// Bytes of data per inode when only bytes are limited.
const BYTES_PER_INODE: u64 = 16384;

pub struct Images {
    pub dir: PathBuf,
    mounted: Mutex<HashMap<String, Mounted>>,
}

struct Mounted {
    mount: PathBuf,
    image: PathBuf,
    /// What the filesystem holds before the container writes anything.
    baseline: Usage,
}

impl Images {
    /// Check that loop devices and mkfs.ext4 exist, and remove what a previous run left but
    /// the images of `keep` (still mounted), which are registered.
    pub fn open(dir: &Path, keep: &[String]) -> Result<Images> {
        if !Path::new("/dev/loop-control").exists() {
            return Err(QuotaError::Setup(
                "no loop device support (/dev/loop-control is missing)".into(),
            ));
        }
        match Command::new("mkfs.ext4").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(QuotaError::Setup(format!(
                    "mkfs.ext4 -V failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )))
            }
            Err(e) => {
                return Err(QuotaError::Setup(format!(
                    "run mkfs.ext4 (install e2fsprogs): {e}"
                )))
            }
        }
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        let mut mounted = HashMap::new();
        for handle in keep {
            let m = Mounted {
                mount: dir.join(handle),
                image: dir.join(format!("{handle}.img")),
                baseline: read_baseline(&dir.join(format!("{handle}.baseline"))),
            };
            if is_mount_point(&m.mount) && m.image.is_file() {
                mounted.insert(handle.clone(), m);
            }
        }
        let kept = |name: &str| {
            let stem = name
                .strip_suffix(".img")
                .or_else(|| name.strip_suffix(".baseline"))
                .unwrap_or(name);
            mounted.contains_key(stem)
        };
        for e in fs::read_dir(dir).map_err(io("read", dir))?.flatten() {
            if kept(&e.file_name().to_string_lossy()) {
                continue;
            }
            let path = e.path();
            tracing::info!(path = %path.display(), "removing a layer left by a previous run");
            if path.is_dir() {
                if is_mount_point(&path) {
                    let _ = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH);
                }
                remove_tree(&path)?;
            } else {
                fs::remove_file(&path).map_err(io("remove", &path))?;
            }
        }
        Ok(Images {
            dir: dir.to_path_buf(),
            mounted: Mutex::new(mounted),
        })
    }

    pub fn attach(&self, handle: &str, bundle: &Path, quota: Quota) -> Result<()> {
        let m = Mounted {
            mount: self.dir.join(handle),
            image: self.dir.join(format!("{handle}.img")),
            baseline: Usage::default(),
        };
        match self.build(m, bundle, &quota) {
            Ok(m) => {
                tracing::debug!(handle, image = %m.image.display(), ?quota, "disk image attached");
                // The baseline cannot be measured again once the container wrote: keep it.
                let path = self.dir.join(format!("{handle}.baseline"));
                let text = format!("{} {}\n", m.baseline.bytes, m.baseline.inodes);
                if let Err(e) = fs::write(&path, text) {
                    tracing::warn!(path = %path.display(), error = %e, "write disk baseline");
                }
                self.mounted
                    .lock()
                    .expect("mounted lock")
                    .insert(handle.to_string(), m);
                Ok(())
            }
            Err((m, e)) => {
                unmount_and_remove(&m);
                Err(e)
            }
        }
    }

    fn build(
        &self,
        mut m: Mounted,
        bundle: &Path,
        q: &Quota,
    ) -> std::result::Result<Mounted, (Mounted, QuotaError)> {
        let bytes = if q.bytes_hard > 0 {
            q.bytes_hard
        } else {
            // Only inodes are limited: bytes up to what the host has.
            match nix::sys::statvfs::statvfs(&self.dir) {
                Ok(s) => s.blocks_available() * s.fragment_size(),
                Err(e) => {
                    return Err((
                        m,
                        QuotaError::Setup(format!("statfs {}: {e}", self.dir.display())),
                    ))
                }
            }
        };
        let inodes = if q.inodes_hard > 0 {
            (q.inodes_hard + RESERVED_INODES + OWN_INODES).div_ceil(16) * 16
        } else {
            (bytes / BYTES_PER_INODE).max(64) + RESERVED_INODES + OWN_INODES
        };
        let size = image_size(bytes, inodes);
        if let Err(e) = make_image(&m.image, size, inodes) {
            return Err((m, e));
        }
        let steps = || -> Result<Usage> {
            fs::create_dir(&m.mount).map_err(io("create", &m.mount))?;
            sys::mount_loop(&m.image, &m.mount, "ext4", "")?;
            let lost = m.mount.join("lost+found");
            fs::remove_dir(&lost).map_err(io("remove", &lost))?;
            for name in ["upper", "work"] {
                let target = m.mount.join(name);
                fs::create_dir(&target).map_err(io("create", &target))?;
            }
            // Metadata left more room than the limit: hold the surplus in a file outside the
            // container's layer, so the container gets exactly its bytes.
            if q.bytes_hard > 0 {
                let free = free_bytes(&m.mount)?;
                if free > q.bytes_hard {
                    let reserve = m.mount.join(".reserve");
                    let f = fs::File::create(&reserve).map_err(io("create", &reserve))?;
                    nix::fcntl::fallocate(
                        &f,
                        nix::fcntl::FallocateFlags::empty(),
                        0,
                        (free - q.bytes_hard) as i64,
                    )
                    .map_err(|e| io("fallocate", &reserve)(e.into()))?;
                }
            }
            // ext4 gives every block group inodes, so a large image has more than asked:
            // take the surplus with empty files outside the layer (overlayfs still needs one
            // for work/work).
            if q.inodes_hard > 0 {
                let free = free_inodes(&m.mount)?;
                let keep = q.inodes_hard + 1;
                if free > keep + 1 {
                    let dir = m.mount.join(".reserve-inodes");
                    fs::create_dir(&dir).map_err(io("create", &dir))?;
                    for i in 0..free - keep - 1 {
                        let f = dir.join(i.to_string());
                        fs::File::create(&f).map_err(io("create", &f))?;
                    }
                }
            }
            let baseline = used(&m.mount)?;
            for name in ["upper", "work"] {
                let link = bundle.join(name);
                std::os::unix::fs::symlink(m.mount.join(name), &link)
                    .map_err(io("symlink", &link))?;
            }
            Ok(baseline)
        };
        match steps() {
            Ok(baseline) => {
                m.baseline = baseline;
                Ok(m)
            }
            Err(e) => Err((m, e)),
        }
    }

    pub fn usage(&self, handle: &str) -> Option<Result<Usage>> {
        let mounted = self.mounted.lock().expect("mounted lock");
        let m = mounted.get(handle)?;
        Some(used(&m.mount).map(|u| Usage {
            bytes: u.bytes.saturating_sub(m.baseline.bytes),
            inodes: u.inodes.saturating_sub(m.baseline.inodes),
        }))
    }

    pub fn release(&self, handle: &str) -> Result<()> {
        let Some(m) = self.mounted.lock().expect("mounted lock").remove(handle) else {
            return Ok(());
        };
        unmount_and_remove(&m);
        if m.mount.exists() || m.image.exists() {
            let e = QuotaError::Setup(format!(
                "could not remove {} / {}",
                m.mount.display(),
                m.image.display()
            ));
            self.mounted
                .lock()
                .expect("mounted lock")
                .insert(handle.to_string(), m);
            return Err(e);
        }
        Ok(())
    }
}

/// `<bytes> <inodes>` as `attach` wrote it; zero if unreadable.
fn read_baseline(path: &Path) -> Usage {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut n = text.split_whitespace().map(|w| w.parse().unwrap_or(0));
    Usage {
        bytes: n.next().unwrap_or(0),
        inodes: n.next().unwrap_or(0),
    }
}

/// Lazily unmount (the loop device detaches once the container's mount namespace, which
/// holds a copy, is gone too) and delete the mount point and the image.
fn unmount_and_remove(m: &Mounted) {
    if is_mount_point(&m.mount) {
        if let Err(e) = nix::mount::umount2(&m.mount, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %m.mount.display(), error = %e, "unmount disk image");
        }
    }
    if let Err(e) = fs::remove_dir(&m.mount) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(mount = %m.mount.display(), error = %e, "remove mount point");
        }
    }
    let _ = fs::remove_file(m.image.with_extension("baseline"));
    if let Err(e) = fs::remove_file(&m.image) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(image = %m.image.display(), error = %e, "remove disk image");
        }
    }
}

/// Image bytes for `bytes` of data and `inodes` inodes: data, the inode tables (256-byte
/// inodes), bitmaps and descriptors per 128 MiB group, and a margin the reserve file absorbs.
pub fn image_size(bytes: u64, inodes: u64) -> u64 {
    let groups = bytes / (128 << 20) + 1;
    let size = bytes + inodes * 256 + groups * 4 * BLOCK + (512 << 10);
    size.div_ceil(BLOCK) * BLOCK
}

fn make_image(image: &Path, size: u64, inodes: u64) -> Result<()> {
    let f = fs::File::create(image).map_err(io("create", image))?;
    f.set_len(size).map_err(io("truncate", image))?;
    drop(f);
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-b",
            "4096",
            "-m",
            "0",
            "-O",
            "^has_journal,^resize_inode",
            "-E",
            "nodiscard",
        ])
        .args(["-N", &inodes.to_string()])
        .arg(image)
        .output()
        .map_err(|e| QuotaError::Setup(format!("run mkfs.ext4: {e}")))?;
    if !out.status.success() {
        return Err(QuotaError::Setup(format!(
            "mkfs.ext4 {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn free_bytes(mount: &Path) -> Result<u64> {
    let s = nix::sys::statvfs::statvfs(mount).map_err(|e| io("statfs", mount)(e.into()))?;
    Ok(s.blocks_available() * s.fragment_size())
}

fn free_inodes(mount: &Path) -> Result<u64> {
    let s = nix::sys::statvfs::statvfs(mount).map_err(|e| io("statfs", mount)(e.into()))?;
    Ok(s.files_available())
}

fn used(mount: &Path) -> Result<Usage> {
    let s = nix::sys::statvfs::statvfs(mount).map_err(|e| io("statfs", mount)(e.into()))?;
    Ok(Usage {
        bytes: (s.blocks() - s.blocks_free()) * s.fragment_size(),
        inodes: s.files() - s.files_free(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_size_covers_data_and_metadata() {
        let s = image_size(64 << 20, 1024);
        assert!(s > (64 << 20) + 1024 * 256);
        assert_eq!(s % BLOCK, 0);
        assert!(s < (66 << 20), "{s}");
    }
}
