//! The shared XFS store: one loop-mounted XFS file with project quotas, a project per
//! container.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::sys::{self, Quota};
use super::{io, is_mount_point, remove_tree, QuotaError, Result, Usage};

/// XFS refuses to make smaller filesystems.
const MIN_STORE_SIZE: u64 = 300 << 20;
/// Project ids below this are left to the administrator.
const FIRST_PROJECT: u32 = 1000;

pub struct Store {
    pub image: PathBuf,
    pub mount: PathBuf,
    /// handle -> project id.
    projects: Mutex<HashMap<String, u32>>,
}

impl Store {
    pub fn open(dir: &Path, size: u64, keep: &[String]) -> Result<Store> {
        if size < MIN_STORE_SIZE {
            return Err(QuotaError::Setup(format!(
                "--disk-store-size {size} is below XFS's minimum of {MIN_STORE_SIZE} bytes"
            )));
        }
        let image = dir.join("store.xfs");
        let mount = dir.join("mnt");
        fs::create_dir_all(&mount).map_err(io("create", &mount))?;
        let mounted_here = !is_mount_point(&mount);
        if mounted_here {
            if !image.exists() {
                make_image(&image, size)?;
            }
            if let Err(e) = sys::mount_loop(&image, &mount, "xfs", "prjquota") {
                return Err(diagnose_mount(&image, &mount, e));
            }
        }
        let store = Store {
            image,
            mount,
            projects: Mutex::default(),
        };
        if let Err(e) = store.check_quota_on().and_then(|()| store.wipe(keep)) {
            if mounted_here {
                // Unmounting also detaches the loop device.
                let _ = nix::mount::umount2(&store.mount, nix::mount::MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
        Ok(store)
    }

    /// A mount without `prjquota` (e.g. one made by hand) would silently not enforce.
    fn check_quota_on(&self) -> Result<()> {
        sys::quota_state(&self.mount).map_err(|e| {
            QuotaError::Setup(format!(
                "project quotas are not enabled on {}: {e}",
                self.mount.display()
            ))
        })
    }

    /// Remove every layer but those of `keep`, whose projects are registered.
    fn wipe(&self, keep: &[String]) -> Result<()> {
        for e in fs::read_dir(&self.mount)
            .map_err(io("read", &self.mount))?
            .flatten()
        {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                if let Ok(id) = sys::project_of(&path) {
                    if id >= FIRST_PROJECT {
                        self.projects
                            .lock()
                            .expect("projects lock")
                            .insert(name, id);
                        continue;
                    }
                }
            }
            if let Ok(id) = sys::project_of(&path) {
                if id >= FIRST_PROJECT {
                    let _ = sys::set_quota(&self.mount, id, &Quota::default());
                }
            }
            tracing::info!(path = %path.display(), "removing a layer left by a previous run");
            remove_tree(&path)?;
        }
        Ok(())
    }

    pub fn attach(&self, handle: &str, bundle: &Path, quota: Quota) -> Result<()> {
        let id = {
            let mut projects = self.projects.lock().expect("projects lock");
            let mut id = FIRST_PROJECT;
            while projects.values().any(|&p| p == id) {
                id += 1;
            }
            projects.insert(handle.to_string(), id);
            id
        };
        let result = self.attach_project(handle, bundle, id, &quota);
        if result.is_err() {
            let _ = self.release(handle);
        }
        result
    }

    fn attach_project(&self, handle: &str, bundle: &Path, id: u32, quota: &Quota) -> Result<()> {
        let dir = self.mount.join(handle);
        fs::create_dir(&dir).map_err(io("create", &dir))?;
        sys::set_project(&dir, id)?;
        // Clear whatever a crashed run left in this project before setting its limits.
        sys::set_quota(&self.mount, id, quota)?;
        for name in ["upper", "work"] {
            let target = dir.join(name);
            fs::create_dir(&target).map_err(io("create", &target))?;
            let link = bundle.join(name);
            std::os::unix::fs::symlink(&target, &link).map_err(io("symlink", &link))?;
        }
        tracing::debug!(handle, project = id, ?quota, "disk quota attached");
        Ok(())
    }

    pub fn usage(&self, handle: &str) -> Option<Result<Usage>> {
        let id = *self.projects.lock().expect("projects lock").get(handle)?;
        Some(sys::get_quota(&self.mount, id).map(|q| Usage {
            bytes: q.bytes_used,
            inodes: q.inodes_used,
        }))
    }

    pub fn project(&self, handle: &str) -> Option<u32> {
        self.projects
            .lock()
            .expect("projects lock")
            .get(handle)
            .copied()
    }

    pub fn in_use(&self) -> bool {
        !self.projects.lock().expect("projects lock").is_empty()
    }

    pub fn release(&self, handle: &str) -> Result<()> {
        let Some(id) = self
            .projects
            .lock()
            .expect("projects lock")
            .get(handle)
            .copied()
        else {
            return Ok(());
        };
        remove_tree(&self.mount.join(handle))?;
        sys::set_quota(&self.mount, id, &Quota::default())?;
        self.projects.lock().expect("projects lock").remove(handle);
        Ok(())
    }
}

/// Why mounting the store with `prjquota` failed. A kernel built without
/// `CONFIG_XFS_QUOTA` refuses the option with EINVAL ("quota support not available in this
/// kernel" in the kernel log) though it mounts XFS itself: try without quotas to tell that
/// apart from a broken image or a missing XFS driver.
fn diagnose_mount(image: &Path, mount: &Path, err: QuotaError) -> QuotaError {
    if sys::mount_loop(image, mount, "xfs", "").is_err() {
        return err;
    }
    // Unmounting also detaches the loop device.
    let _ = nix::mount::umount2(mount, nix::mount::MntFlags::MNT_DETACH);
    QuotaError::Setup(format!(
        "this kernel's XFS has no quota support (CONFIG_XFS_QUOTA is not set): {} mounts \
         without quotas but not with prjquota ({err})",
        image.display()
    ))
}

/// A sparse file of `size` bytes formatted as XFS (mkfs.xfs from xfsprogs).
fn make_image(image: &Path, size: u64) -> Result<()> {
    let tmp = image.with_extension("new");
    let file = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    file.set_len(size).map_err(io("truncate", &tmp))?;
    drop(file);
    let out = Command::new("mkfs.xfs")
        .args(["-q", "-f"])
        .arg(&tmp)
        .output()
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            QuotaError::Setup(format!("run mkfs.xfs (install xfsprogs): {e}"))
        })?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(QuotaError::Setup(format!(
            "mkfs.xfs {}: {}",
            tmp.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    fs::rename(&tmp, image).map_err(io("rename", &tmp))
}
