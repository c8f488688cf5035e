//! Building the container's world, in order: private mounts, the overlay root, bind mounts,
//! /proc, /sys, /dev, /dev/shm, /tmp (in the writable layer), hostname, the control socket,
//! the cgroups (joined by gardend when asked) and the cgroup namespace, pivot_root, loopback.
//! Each step's error names the step and the path.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root, sethostname};

use super::proto::{self, InitConfig};

/// What the supervisor needs once the container is built.
pub struct Prepared {
    pub listener: OwnedFd,
    pub processes_dir: OwnedFd,
    /// The capabilities of the container's processes.
    pub caps: super::caps::Container,
    /// This init serves one pea: it leaves once its process is gone.
    pub pea: bool,
}

type Result<T> = std::result::Result<T, String>;

fn ctx<T, E: std::fmt::Display>(
    r: std::result::Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Build the container. `gardend` is the setup channel (fd 3): see [`join_cgroups`].
pub fn prepare(c: &InitConfig, gardend: &mut fs::File) -> Result<Prepared> {
    // init's OOM score is gardend's business (runtime::shield_from_oom): lowering it needs
    // CAP_SYS_RESOURCE in the host's user namespace.
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
        || "make / private".into(),
    )?;
    super::userns::attach_lowers(c)?;
    mount_root(c)?;
    let root = &c.rootfs;
    for b in &c.bind_mounts {
        match b.fd {
            // gardend cloned the source (and made it read-only if asked).
            Some(fd) => super::userns::attach_bind(root, b, fd)?,
            None => bind_mount(root, &b.src, &b.dst, b.read_only)?,
        }
    }
    mount_at(
        root,
        "proc",
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    mount_at(
        root,
        "sys",
        "sysfs",
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    make_dev(root, c.privileged)?;
    if !c.privileged {
        mask_proc(root)?;
    }
    super::userns::mount_mqueue(root)?;
    prepare_tmp(root)?;
    match &c.pea {
        // The uts namespace and its name are the container's; so are the network's files.
        Some(pea) => copy_etc(root, &pea.etc_files)?,
        None => {
            write_etc(root, &c.hostname)?;
            ctx(sethostname(&c.hostname), || {
                format!("set hostname {}", c.hostname)
            })?;
        }
    }

    let listener = ctx(
        socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        ),
        || "create control socket".into(),
    )?;
    let _ = fs::remove_file(&c.socket);
    // Bind by a relative name from inside the bundle: a full path could exceed the 108 bytes
    // of sun_path for long handles or deep depots. (init is single-threaded; it chdirs into
    // the root below anyway.)
    if let Some(dir) = c.socket.parent() {
        ctx(chdir(dir), || format!("chdir {}", dir.display()))?;
    }
    let name = c.socket.file_name().map(Path::new).unwrap_or(&c.socket);
    let addr = ctx(UnixAddr::new(name), || {
        format!("socket path {}", c.socket.display())
    })?;
    ctx(bind(listener.as_raw_fd(), &addr), || {
        format!("bind {}", c.socket.display())
    })?;
    ctx(
        listen(&listener, Backlog::new(16).expect("small backlog")),
        || "listen".into(),
    )?;
    let processes_dir = ctx(
        open(
            &c.processes_dir,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || format!("open {}", c.processes_dir.display()),
    )?;

    join_cgroups(c, gardend)?;
    ctx(chdir(root), || format!("chdir {}", root.display()))?;
    ctx(pivot_root(".", "."), || "pivot_root".into())?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || {
        "detach old root".into()
    })?;
    ctx(chdir("/"), || "chdir /".into())?;
    if c.pea.is_none() {
        loopback_up()?;
    }
    Ok(Prepared {
        listener,
        processes_dir,
        caps: super::caps::Container {
            privileged: c.privileged,
            mknod: c.devices_allowlisted,
        },
        pea: c.pea.is_some(),
    })
}

/// Everything that writes to the host's disk is done: ask gardend to put init in the
/// container's cgroups, wait for its byte, and make the cgroup namespace there. The page cache
/// the setup brought in is then not the container's, so the container's memory cgroup can go
/// with it (see `runtime::ready`).
fn join_cgroups(c: &InitConfig, gardend: &mut fs::File) -> Result<()> {
    ctx(gardend.write_all(proto::JOIN), || {
        "ask gardend to join the cgroups".into()
    })?;
    let mut answer = [0u8; 1];
    ctx(gardend.read_exact(&mut answer), || {
        "wait for gardend to join the cgroups".into()
    })?;
    for procs in &c.cgroup_procs {
        ctx(fs::write(procs, "0"), || {
            format!("join cgroup {}", procs.display())
        })?;
    }
    // Rooted at the cgroups just joined: /proc/self/cgroup shows `/` instead of the host's
    // hierarchy (gardend, in the host's namespace, still reads the full paths). Container
    // processes may not make namespaces of their own (seccomp).
    ctx(
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP),
        || "unshare the cgroup namespace".into(),
    )
}

fn mount_root(c: &InitConfig) -> Result<()> {
    let lower = c
        .lower_dirs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        c.upper_dir.display(),
        c.work_dir.display()
    );
    // The writable layer never outlives the host (after a reboot the depot is gone and the
    // layers are swept), so nothing in it is worth a sync: without `volatile` each unmount
    // (every destroy) synced the whole host file system under the layer, and a container's
    // fsync/syncfs did too.
    data.push_str(",volatile");
    if c.user_namespace {
        // trusted.* xattrs are out of a user namespace's reach: opaque dirs are user.*.
        data.push_str(",userxattr");
    }
    ctx(
        mount(
            Some("overlay"),
            &c.rootfs,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        ),
        || format!("mount overlay on {} ({data})", c.rootfs.display()),
    )
}

/// `dst` is a path inside the container; it is created (as a dir, or an empty file when the
/// source is a file) if missing.
fn bind_mount(root: &Path, src: &Path, dst: &Path, read_only: bool) -> Result<()> {
    let target = inside(root, dst)?;
    let meta = ctx(fs::metadata(src), || {
        format!("bind mount source {}", src.display())
    })?;
    if meta.is_dir() {
        ctx(fs::create_dir_all(&target), || {
            format!("create bind mount target {}", dst.display())
        })?;
    } else if !target.exists() {
        if let Some(parent) = target.parent() {
            ctx(fs::create_dir_all(parent), || {
                format!("create bind mount target {}", dst.display())
            })?;
        }
        ctx(fs::write(&target, b""), || {
            format!("create bind mount target {}", dst.display())
        })?;
    }
    ctx(
        mount(
            Some(src),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        ),
        || format!("bind mount {} to {}", src.display(), dst.display()),
    )?;
    if read_only {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC;
        let flags = flags | super::userns::locked_flags(&target);
        ctx(
            mount(None::<&str>, &target, None::<&str>, flags, None::<&str>),
            || format!("remount {} read-only", dst.display()),
        )?;
    }
    Ok(())
}

/// Join a container path onto the root lexically, refusing `..` so a bind mount target cannot
/// land outside the container. The overlay is not yet anybody's root, so symlinks in the image
/// are not followed by `create_dir_all` beyond what the image already holds; targets are
/// checked again after creation.
pub(super) fn inside(root: &Path, path: &Path) -> Result<PathBuf> {
    let mut out = root.to_path_buf();
    for comp in path.components() {
        match comp {
            std::path::Component::Normal(c) => out.push(c),
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            _ => return Err(format!("path {} leaves the container", path.display())),
        }
    }
    Ok(out)
}

fn mount_at(
    root: &Path,
    dir: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    let target = root.join(dir);
    ctx(fs::create_dir_all(&target), || {
        format!("create {}", target.display())
    })?;
    ctx(
        mount(Some(fstype), &target, Some(fstype), flags, data),
        || format!("mount {fstype} on /{dir}"),
    )
}

/// /tmp stays in the writable layer, as Guardian keeps it, so the container's disk limit
/// covers it (a tmpfs would escape the limit and take host memory instead): a directory,
/// world-writable and sticky, owned by container root. Reached from the root's descriptor
/// without following links, since the image's `/tmp` could be a symlink to anywhere on the
/// host's side; an image whose /tmp is not a directory keeps it as it is.
fn prepare_tmp(root: &Path) -> Result<()> {
    let dir = ctx(
        open(
            root,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || format!("open {}", root.display()),
    )?;
    match nix::sys::stat::mkdirat(&dir, "tmp", Mode::from_bits_truncate(0o1777)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(format!("create /tmp: {e}")),
    }
    let tmp = match nix::fcntl::openat(
        &dir,
        "tmp",
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => return Ok(()),
        Err(e) => return Err(format!("open /tmp: {e}")),
    };
    let root_id = (
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(0)),
    );
    ctx(nix::unistd::fchown(&tmp, root_id.0, root_id.1), || {
        "chown /tmp to container root".into()
    })?;
    ctx(
        nix::sys::stat::fchmod(&tmp, Mode::from_bits_truncate(0o1777)),
        || "chmod /tmp 1777".into(),
    )
}

/// Without a user namespace, container root is host root: keep it away from kernel knobs
/// that are not namespaced. Read-only binds cannot be undone without CAP_SYS_ADMIN, which
/// unprivileged container processes do not have.
fn mask_proc(root: &Path) -> Result<()> {
    let proc = root.join("proc");
    for dir in ["sys", "sysrq-trigger", "irq", "bus", "fs"] {
        let p = proc.join(dir);
        if !p.exists() {
            continue;
        }
        ctx(
            mount(
                Some(&p),
                &p,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            ),
            || format!("bind /proc/{dir}"),
        )?;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC;
        ctx(
            mount(None::<&str>, &p, None::<&str>, flags, None::<&str>),
            || format!("remount /proc/{dir} read-only"),
        )?;
    }
    for file in [
        "kcore",
        "keys",
        "timer_list",
        "sched_debug",
        "latency_stats",
        "timer_stats",
    ] {
        let p = proc.join(file);
        if p.is_file() {
            ctx(
                mount(
                    Some("/dev/null"),
                    &p,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                ),
                || format!("mask /proc/{file}"),
            )?;
        }
    }
    // Directories hidden under an empty read-only directory, as Guardian does with a tmpfs
    // each (firmware tables and SCSI rescans are the host's). The directory is made on the
    // /dev tmpfs and removed once bound: no file system of its own (see `make_dev`).
    let hidden = [
        proc.join("acpi"),
        proc.join("scsi"),
        root.join("sys/firmware"),
    ];
    let empty = root.join("dev/.mask");
    ctx(fs::create_dir(&empty), || {
        "create the masking directory".into()
    })?;
    ctx(
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o555)),
        || "chmod the masking directory".into(),
    )?;
    for p in hidden {
        let dir = p.strip_prefix(root).unwrap_or(&p).display().to_string();
        if p.is_dir() {
            let flags =
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            bind_with_flags(&empty, &p, flags).map_err(|e| format!("mask /{dir}: {e}"))?;
        }
    }
    ctx(fs::remove_dir(&empty), || {
        "remove the masking directory".into()
    })
}

/// Bind `src` on `dst`, the new mount with exactly `flags` (a bind takes mount flags only
/// when remounted).
fn bind_with_flags(src: &Path, dst: &Path, flags: MsFlags) -> Result<()> {
    ctx(
        mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>),
        || "bind".into(),
    )?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
    ctx(
        mount(None::<&str>, dst, None::<&str>, flags, None::<&str>),
        || "remount".into(),
    )
}

fn make_dev(root: &Path, privileged: bool) -> Result<()> {
    let dev = root.join("dev");
    mount_at(
        root,
        "dev",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = dev.join(name);
        let made = mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        );
        if made == Err(nix::errno::Errno::EPERM) {
            // A user namespace may not make device nodes: use the host's.
            super::userns::bind_host_device(name, &path)?;
            continue;
        }
        ctx(made, || format!("mknod /dev/{name}"))?;
        // mknod is subject to the umask; devices must be usable by every user.
        ctx(
            fs::set_permissions(&path, fs::Permissions::from_mode(0o666)),
            || format!("chmod /dev/{name}"),
        )?;
    }
    if privileged {
        // Guardian's privileged containers can run FUSE file systems.
        let fuse = dev.join("fuse");
        ctx(
            mknod(
                &fuse,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(10, 229),
            ),
            || "mknod /dev/fuse".into(),
        )?;
        ctx(
            fs::set_permissions(&fuse, fs::Permissions::from_mode(0o666)),
            || "chmod /dev/fuse".into(),
        )?;
    }
    let pts = dev.join("pts");
    ctx(fs::create_dir_all(&pts), || "create /dev/pts".into())?;
    ctx(
        mount(
            Some("devpts"),
            &pts,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            // gid 5 is the tty group: terminals belong to it, as Guardian (and login) make them.
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        ),
        || "mount devpts".into(),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(symlink(target, dev.join(link)), || {
            format!("symlink /dev/{link}")
        })?;
    }
    // /dev/shm is a directory of the /dev tmpfs bound on itself (so it has its own mount
    // flags; the mount table shows it as `tmpfs`, as Guardian's does and clients grep for),
    // not a tmpfs of its own: every superblock on the host costs each cgroup made or removed
    // later (the kernel sizes a memory cgroup's shrinker data by the number of superblocks,
    // and walks every superblock's LRU lists when one goes), so a container's tmpfs mounts
    // (/dev, /dev/shm and one per masked directory, 4 of 9 superblocks) are now one.
    // /dev/shm shares /dev's 64 MiB, where the device nodes take no room.
    let shm = dev.join("shm");
    ctx(fs::create_dir_all(&shm), || "create /dev/shm".into())?;
    ctx(
        fs::set_permissions(&shm, fs::Permissions::from_mode(0o1777)),
        || "chmod /dev/shm".into(),
    )?;
    bind_with_flags(
        &shm,
        &shm,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
    .map_err(|e| format!("/dev/shm: {e}"))?;
    Ok(())
}

/// /etc/hosts with localhost and the container's own name, so the container resolves itself
/// even when the image has no such file.
fn write_etc(root: &Path, hostname: &str) -> Result<()> {
    let etc = root.join("etc");
    if fs::symlink_metadata(&etc)
        .map(|m| !m.is_dir())
        .unwrap_or(false)
    {
        return Ok(()); // an image with a strange /etc: leave it alone
    }
    ctx(fs::create_dir_all(&etc), || "create /etc".into())?;
    let hosts = format!(
        "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n127.0.0.1 {hostname}\n"
    );
    let path = etc.join("hosts");
    if fs::symlink_metadata(&path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
    {
        let _ = fs::remove_file(&path);
    }
    ctx(fs::write(&path, hosts), || "write /etc/hosts".into())
}

/// A pea's copies of the container's network files, replacing whatever its image has there
/// (a symlink is replaced, never followed).
fn copy_etc(root: &Path, files: &[(PathBuf, String)]) -> Result<()> {
    for (path, content) in files {
        let target = inside(root, path)?;
        let Some(dir) = target.parent() else { continue };
        if fs::symlink_metadata(dir).is_ok_and(|m| !m.is_dir()) {
            continue; // an image with a strange /etc: leave it alone
        }
        ctx(fs::create_dir_all(dir), || {
            format!("create {}", dir.display())
        })?;
        if fs::symlink_metadata(&target).is_ok_and(|m| !m.is_file()) {
            let _ = fs::remove_file(&target);
        }
        ctx(fs::write(&target, content), || {
            format!("write {}", path.display())
        })?;
    }
    Ok(())
}

/// A new network namespace starts with `lo` down.
fn loopback_up() -> Result<()> {
    let sock = ctx(
        socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        ),
        || "socket for lo".into(),
    )?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: valid socket and a properly sized ifreq for SIOCGIFFLAGS/SIOCSIFFLAGS.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(format!("get lo flags: {}", std::io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(format!("bring lo up: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etc_files() -> Vec<(PathBuf, String)> {
        vec![
            (PathBuf::from("/etc/hosts"), "127.0.0.1 localhost\n".into()),
            (
                PathBuf::from("/etc/resolv.conf"),
                "nameserver 10.0.0.1\n".into(),
            ),
        ]
    }

    /// A pea image whose /etc/hosts links to a host file: the copy replaces the link and
    /// never writes through it.
    #[test]
    fn a_pea_s_etc_files_replace_links_and_never_follow_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, host) = (tmp.path().join("root"), tmp.path().join("host-file"));
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(&host, "host secret\n").unwrap();
        symlink(&host, root.join("etc/hosts")).unwrap();
        copy_etc(&root, &etc_files()).unwrap();
        assert_eq!(fs::read_to_string(&host).unwrap(), "host secret\n");
        let hosts = root.join("etc/hosts");
        assert!(fs::symlink_metadata(&hosts).unwrap().is_file());
        assert_eq!(fs::read_to_string(hosts).unwrap(), "127.0.0.1 localhost\n");
        assert_eq!(
            fs::read_to_string(root.join("etc/resolv.conf")).unwrap(),
            "nameserver 10.0.0.1\n"
        );
    }

    /// An image whose /etc is a link (to anywhere) is left alone; one without /etc gets one.
    #[test]
    fn a_pea_image_with_a_linked_etc_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("root"), tmp.path().join("outside"));
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("etc")).unwrap();
        copy_etc(&root, &etc_files()).unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);

        let bare = tmp.path().join("bare");
        fs::create_dir_all(&bare).unwrap();
        copy_etc(&bare, &etc_files()).unwrap();
        assert!(bare.join("etc/hosts").is_file());
    }
}
