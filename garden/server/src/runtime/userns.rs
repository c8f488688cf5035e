//! User namespaces for unprivileged containers: writing a container's uid/gid maps, and
//! id-mapped clones of the image's lower layers so that files the image gives to host root
//! appear owned by container root (and files container root creates land on disk as the
//! mapped host id, never as host root).
//!
//! An id-mapped mount needs a user namespace holding the mapping when it is made, before the
//! container's own namespace exists: gardend keeps one such "template" namespace per mapping
//! (a child that unshared it and exited; the namespace lives on through its fd).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use nix::errno::Errno;
use rootfs::IdMapping;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Write `/proc/<pid>/uid_map` and `gid_map` of a child blocked before exec. gardend is root
/// in the parent namespace, so any range may be mapped and setgroups stays allowed.
pub fn write_maps(pid: i32, ids: &IdMapping) -> std::io::Result<()> {
    for (file, ranges) in [("uid_map", &ids.uids), ("gid_map", &ids.gids)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, IdMapping::map_file(ranges))
            .map_err(|e| std::io::Error::new(e.kind(), format!("write {path}: {e}")))?;
    }
    Ok(())
}

/// The template user namespace of one mapping, made on first use and kept for gardend's life.
#[derive(Default)]
pub struct Templates {
    made: Mutex<Vec<(IdMapping, OwnedFd)>>,
}

impl Templates {
    /// Clone `dir` as a detached mount whose ids are shifted by `ids`: host root's files show
    /// as container root's. Fails where the filesystem cannot be id-mapped (the caller falls
    /// back to a chown'd copy).
    pub fn idmapped_tree(&self, dir: &Path, ids: &IdMapping) -> std::io::Result<OwnedFd> {
        let mut made = self.made.lock().expect("templates lock");
        let userns = match made.iter().position(|(m, _)| m == ids) {
            Some(i) => &made[i].1,
            None => {
                let fd = template_userns(ids)?;
                made.push((ids.clone(), fd));
                &made.last().expect("just pushed").1
            }
        };
        idmapped_clone(dir, userns)
    }
}

/// open_tree(OPEN_TREE_CLONE): a detached copy of the mount at `path` (with its submounts
/// when `recursive`).
fn open_tree(path: &Path, recursive: bool) -> std::io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(Errno::EINVAL))?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree with a valid path; returns a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn set_attr(tree: &OwnedFd, attr: MountAttr, recursive: bool) -> std::io::Result<()> {
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr on our detached mount with a properly sized struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn idmapped_clone(dir: &Path, userns: &OwnedFd) -> std::io::Result<OwnedFd> {
    let tree = open_tree(dir, false)?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    set_attr(&tree, attr, false)?;
    Ok(tree)
}

/// A bind mount of `src` (and its submounts) as a detached mount for garden-init to attach,
/// read-only throughout if asked: gardend resolves the host path, so the container needs no
/// access to the directories above it.
pub fn detached_clone(src: &Path, read_only: bool) -> std::io::Result<OwnedFd> {
    let tree = open_tree(src, true)?;
    if read_only {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        set_attr(&tree, attr, true)?;
    }
    Ok(tree)
}

/// A user namespace with `ids`' maps, held by fd: a child unshares it and waits until its maps
/// are written and the namespace is opened, then exits.
fn template_userns(ids: &IdMapping) -> std::io::Result<OwnedFd> {
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut stack = vec![0u8; 64 * 1024];
    let go = go_r.as_raw_fd();
    let child = Box::new(move || -> isize {
        // SAFETY: dup2, close_range, read and _exit only (async-signal-safe), on descriptors
        // opened before clone. Every descriptor but the read end goes first: our copy of the
        // write end, or the read would never see EOF, and the write ends of other such
        // children's pipes that this clone inherited from gardend's other threads, or two
        // children made at once would each keep the other waiting for ever.
        unsafe {
            if libc::dup2(go, 0) < 0 {
                libc::_exit(1);
            }
            libc::syscall(libc::SYS_close_range, 1u32, u32::MAX, 0u32);
            let mut b = 0u8;
            libc::read(0, &mut b as *mut u8 as *mut libc::c_void, 1);
            libc::_exit(0)
        }
    });
    // SAFETY: the callback only makes async-signal-safe calls.
    let pid = unsafe {
        nix::sched::clone(
            child,
            &mut stack,
            nix::sched::CloneFlags::CLONE_NEWUSER,
            Some(libc::SIGCHLD),
        )
    }?;
    drop(go_r);
    let opened = write_maps(pid.as_raw(), ids).and_then(|()| {
        std::fs::File::open(format!("/proc/{}/ns/user", pid.as_raw())).map(OwnedFd::from)
    });
    drop(go_w); // the child reads EOF and exits
    let _ = nix::sys::wait::waitpid(pid, None);
    opened
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only: an id-mapped clone shows a host-root file as owned by the mapping's root.
    #[test]
    fn idmapped_tree_shows_host_root_as_container_root() {
        test_support::require_root!();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let ids = IdMapping::guardian(1, None, 1, None).unwrap();
        let templates = Templates::default();
        let tree = templates.idmapped_tree(dir.path(), &ids).unwrap();
        let st = nix::sys::stat::fstatat(&tree, "f", nix::fcntl::AtFlags::empty()).unwrap();
        assert_eq!(
            (st.st_uid, st.st_gid),
            (rootfs::idmap::MAXIMUS, rootfs::idmap::MAXIMUS)
        );
        // The template is made once per mapping.
        let _again = templates.idmapped_tree(dir.path(), &ids).unwrap();
        assert_eq!(templates.made.lock().unwrap().len(), 1);
    }
}
