//! What garden-init does differently as container root in a user namespace: it attaches the
//! id-mapped lower layers gardend made, binds the host's device nodes (a user namespace may not
//! mknod them), and keeps the mount flags the kernel locks on mounts it inherited.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::proto::{InitBindMount, InitConfig};

const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Attach the detached id-mapped lower layers gardend made. Attached here, in our own mount
/// namespace, the overlay may use them as layers.
pub fn attach_lowers(c: &InitConfig) -> Result<(), String> {
    for m in &c.lower_mounts {
        attach(m.fd, &m.target).map_err(|e| {
            format!(
                "attach id-mapped lower layer at {}: {e}",
                m.target.display()
            )
        })?;
    }
    Ok(())
}

/// Attach the detached mount gardend handed us as `fd` at `target`, and close `fd`.
pub fn attach(fd: i32, target: &Path) -> std::io::Result<()> {
    {
        // SAFETY: gardend handed us this descriptor at exactly this number; we own it.
        let tree = unsafe { OwnedFd::from_raw_fd(fd) };
        let dst = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: move_mount of our detached mount onto an existing directory.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                dst.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        drop(tree);
    }
    Ok(())
}

/// The host's `/dev/<name>` bound onto `path` (created as an empty file), for a container
/// that may not mknod.
pub fn bind_host_device(name: &str, path: &Path) -> Result<(), String> {
    std::fs::write(path, b"").map_err(|e| format!("create /dev/{name}: {e}"))?;
    let src = Path::new("/dev").join(name);
    mount(
        Some(&src),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind /dev/{name}: {e}"))
}

/// Flags a read-only remount of the bind mount at `path` must repeat: in a user namespace the
/// kernel refuses to clear nosuid, nodev or noexec that the host's mount had.
pub fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

/// A bind mount gardend prepared as the detached mount `fd`: make its target (a directory,
/// or an empty file for a file source) and attach it there.
pub fn attach_bind(root: &Path, b: &InitBindMount, fd: i32) -> Result<(), String> {
    let target = super::setup::inside(root, &b.dst)?;
    let made = if b.src_is_dir {
        std::fs::create_dir_all(&target)
    } else if !target.exists() {
        target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&target, b""))
    } else {
        Ok(())
    };
    made.map_err(|e| format!("create bind mount target {}: {e}", b.dst.display()))?;
    attach(fd, &target)
        .map_err(|e| format!("bind mount {} to {}: {e}", b.src.display(), b.dst.display()))
}

/// POSIX message queues at /dev/mqueue: an mqueue filesystem of the container's own ipc
/// namespace, mounted from inside (so, with a user namespace, it belongs to it).
pub fn mount_mqueue(root: &Path) -> Result<(), String> {
    let target = root.join("dev/mqueue");
    std::fs::create_dir_all(&target).map_err(|e| format!("create /dev/mqueue: {e}"))?;
    mount(
        Some("mqueue"),
        &target,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mount mqueue on /dev/mqueue: {e}"))
}
