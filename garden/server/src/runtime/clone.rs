//! Starting garden-init with clone(2): the child is pid 1 of a new pid namespace from its
//! first instruction, with no intermediate process and no setns dance.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sched::{clone, CloneFlags};
use nix::sys::signal::Signal;

/// The descriptors garden-init starts with besides /dev/null.
pub struct InitFds<'a> {
    /// Becomes fd 3: garden-init says "ok" (or why not) on it.
    pub ready: &'a OwnedFd,
    /// Becomes fds 1 and 2.
    pub log: &'a OwnedFd,
    /// Directories the child opens (O_PATH) in its own mount namespace before it becomes
    /// container root, which may not be allowed to walk the host paths to them: fds 4, 5, ...
    pub opened: &'a [CString],
    /// Detached mounts garden-init attaches (move_mount): the fds after `opened`'s.
    pub passed: &'a [OwnedFd],
    /// The child waits for one byte here before it execs, so that gardend can put it in its
    /// cgroups and write its id maps first.
    pub go: &'a OwnedFd,
}

/// In the child: 0 = `null`, 1 and 2 = `log`, 3 = `ready`, the `high` duplicates of the
/// passed descriptors from `first_passed` on, and `go` right after them. Returns where `go`
/// now is; `_exit(126)` if a dup2 fails.
///
/// # Safety
/// Only dup2 and _exit: async-signal-safe, for a child of clone in a threaded process.
unsafe fn place_fds(
    null: i32,
    log: i32,
    ready: i32,
    first_passed: i32,
    high: &[i32],
    go: i32,
) -> i32 {
    // SAFETY: see the function's contract; every call is async-signal-safe.
    unsafe {
        if libc::dup2(null, 0) < 0
            || libc::dup2(log, 1) < 0
            || libc::dup2(log, 2) < 0
            || libc::dup2(ready, 3) < 0
        {
            libc::_exit(126);
        }
        for (i, h) in high.iter().enumerate() {
            if libc::dup2(*h, first_passed + i as i32) < 0 {
                libc::_exit(126);
            }
        }
        let go_at = first_passed + high.len() as i32;
        if libc::dup2(go, go_at) < 0 {
            libc::_exit(126);
        }
        go_at
    }
}

/// In the child: wait for gardend's byte on `go` (EOF: it gave up, exit 125), open the
/// directories garden-init reaches as /proc/self/fd/4.. while still host root (which owns
/// the host paths), become container root in a user namespace (until now this process was
/// host root, which the namespace does not map), and exec garden-init.
///
/// # Safety
/// Only read, open, dup2, close, raw set*id syscalls (glibc's wrappers would try to signal
/// threads that do not exist here), execve and _exit: async-signal-safe.
unsafe fn wait_then_exec(go: i32, opened: &[CString], userns: bool, exec: &InitExec) -> ! {
    // SAFETY: see the function's contract; every call is async-signal-safe.
    unsafe {
        let mut byte = 0u8;
        loop {
            let n = libc::read(go, &mut byte as *mut u8 as *mut libc::c_void, 1);
            if n == 1 {
                break;
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            libc::_exit(125);
        }
        for (i, path) in opened.iter().enumerate() {
            let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
            if fd < 0 || (fd != 4 + i as i32 && libc::dup2(fd, 4 + i as i32) < 0) {
                libc::_exit(123);
            }
        }
        libc::close(go);
        if userns
            && (libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(libc::SYS_setresgid, 0u32, 0u32, 0u32) < 0
                || libc::syscall(libc::SYS_setresuid, 0u32, 0u32, 0u32) < 0)
        {
            libc::_exit(124);
        }
        let argv: [*const libc::c_char; 3] =
            [exec.argv0.as_ptr(), exec.bundle.as_ptr(), std::ptr::null()];
        let envp: [*const libc::c_char; 2] = [exec.path_env.as_ptr(), std::ptr::null()];
        libc::execve(exec.bin.as_ptr(), argv.as_ptr(), envp.as_ptr());
        libc::_exit(127)
    }
}

/// Clone garden-init into new mount, pid, uts, ipc and net namespaces, and a new user
/// namespace when `userns`. It waits for a byte on `fds.go` (EOF = abort) before it becomes
/// container root (in a user namespace) and execs. Returns its host pid.
///
/// Through the [`spawner`](crate::runtime::spawner) when there is one: a clone copies the
/// caller's descriptor table and page tables, and the child then closes every descriptor it
/// got, so cloning gardend itself cost more the more containers it held (`copy_page_range`,
/// `unmap_page_range`, `filp_flush`: about a fifth of the CPU at 3,000 containers). The
/// spawner is small and holds a handful of descriptors; its clone is gardend's child all the
/// same (`CLONE_PARENT`).
pub fn spawn_init(
    init_bin: &Path,
    bundle: &Path,
    fds: &InitFds<'_>,
    userns: bool,
) -> nix::Result<i32> {
    let exec = InitExec::new(init_bin, bundle)?;
    if let Some(pid) = crate::runtime::spawner::spawn_init(&exec.bin, &exec.bundle, fds, userns) {
        return pid.map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)));
    }
    let passed: Vec<i32> = fds.passed.iter().map(|f| f.as_raw_fd()).collect();
    let raw = RawInitFds {
        ready: fds.ready.as_raw_fd(),
        log: fds.log.as_raw_fd(),
        go: fds.go.as_raw_fd(),
        passed: &passed,
    };
    clone_init(&exec, &raw, fds.opened, userns, CloneFlags::empty())
}

/// [`InitFds`] as raw descriptors (in the process that clones).
pub(crate) struct RawInitFds<'a> {
    pub ready: i32,
    pub log: i32,
    pub go: i32,
    pub passed: &'a [i32],
}

/// garden-init's program and bundle, as [`spawn_init`] and the spawner pass them.
pub(crate) struct InitExec {
    bin: CString,
    argv0: CString,
    bundle: CString,
    path_env: CString,
}

impl InitExec {
    fn new(init_bin: &Path, bundle: &Path) -> nix::Result<InitExec> {
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)
        };
        Ok(InitExec::from_c(c(init_bin)?, c(bundle)?))
    }

    pub(crate) fn from_c(bin: CString, bundle: CString) -> InitExec {
        InitExec {
            bin,
            argv0: CString::new("garden-init").expect("static string"),
            bundle,
            path_env: CString::new("PATH=/usr/sbin:/usr/bin:/sbin:/bin").expect("static string"),
        }
    }
}

/// The clone itself, in gardend (no spawner) or in the spawner (`extra` = `CLONE_PARENT`).
pub(crate) fn clone_init(
    exec: &InitExec,
    fds: &RawInitFds<'_>,
    opened: &[CString],
    userns: bool,
    extra: CloneFlags,
) -> nix::Result<i32> {
    // Everything the child touches is prepared here: after clone in a multi-threaded process
    // the child may only make async-signal-safe calls (no allocation).
    let (ready_fd, log_fd, go_fd) = (fds.ready, fds.log, fds.go);
    let passed_fds = fds.passed;
    // Scratch for the passed fds' high duplicates, allocated before clone.
    let mut high = vec![-1i32; passed_fds.len()];
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | extra;
    if userns {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    // A fork-like clone (no new stack: the child goes on with a copy of this one). A fresh
    // stack per clone had to be zeroed, and the caller's writes to it were copy-on-write
    // faults while the previous child, still waiting for its go byte, shared those pages.
    // SAFETY: no CLONE_VM, so the child has its own copy of the caller's memory; it only
    // performs async-signal-safe calls (below) and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags.bits() | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(nix::errno::Errno::last());
    }
    if pid == 0 {
        // SAFETY: only open, fcntl, dup2, read, close_range, raw set*id syscalls, execve and
        // _exit run in the child, all async-signal-safe, on values prepared before clone.
        // (glibc's setresuid wrappers would try to signal threads that do not exist here.)
        unsafe {
            // garden-init gets exactly: 0 = /dev/null, 1 and 2 = <bundle>/init.log,
            // 3 = the ready pipe, 4.. = the passed descriptors. Nothing else of gardend's may
            // reach a container.
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            let ready = libc::fcntl(ready_fd, libc::F_DUPFD, 100);
            let log = libc::fcntl(log_fd, libc::F_DUPFD, 100);
            let go = libc::fcntl(go_fd, libc::F_DUPFD, 100);
            if null < 0 || ready < 0 || log < 0 || go < 0 {
                libc::_exit(126);
            }
            for (h, fd) in high.iter_mut().zip(passed_fds) {
                *h = libc::fcntl(*fd, libc::F_DUPFD, 100);
                if *h < 0 {
                    libc::_exit(126);
                }
            }
            // The go pipe goes right after them; everything else (gardend's copy of the go
            // pipe's write end included, so that its close reads as EOF here) is closed.
            let go_at = place_fds(null, log, ready, 4 + opened.len() as i32, &high, go);
            libc::syscall(libc::SYS_close_range, go_at as u32 + 1, u32::MAX, 0u32);
            wait_then_exec(go_at, opened, userns, exec)
        }
    }
    Ok(pid as i32)
}

/// The container namespaces a pea's init joins: everything but mount.
pub struct JoinedNamespaces<'a> {
    /// `None` for a privileged container, which shares the host's.
    pub user: Option<&'a OwnedFd>,
    pub net: &'a OwnedFd,
    pub ipc: &'a OwnedFd,
    pub uts: &'a OwnedFd,
    pub pid: &'a OwnedFd,
}

/// Start a pea's garden-init: a child joins the container's user, network, ipc, uts and pid
/// namespaces, unshares a mount namespace (owned by the container's user namespace, so the
/// pea's init may mount its root) and forks the init with CLONE_PARENT, so that it is
/// gardend's child (held by pidfd and reaped like a container's init) inside the container's
/// pid namespace; the joining child exits at once. The init waits on `fds.go` as
/// [`spawn_init`]'s does. Returns (the joining child's pid, the init's host pid).
pub fn spawn_pea_init(
    init_bin: &Path,
    bundle: &Path,
    fds: &InitFds<'_>,
    ns: &JoinedNamespaces<'_>,
) -> nix::Result<(i32, i32)> {
    let exec = InitExec::new(init_bin, bundle)?;
    let ready_fd = fds.ready.as_raw_fd();
    let log_fd = fds.log.as_raw_fd();
    let go_fd = fds.go.as_raw_fd();
    let passed_fds: Vec<i32> = fds.passed.iter().map(|f| f.as_raw_fd()).collect();
    let opened = fds.opened;
    let userns = ns.user.map(|f| f.as_raw_fd());
    let joined: [(i32, i32); 4] = [
        (ns.net.as_raw_fd(), libc::CLONE_NEWNET),
        (ns.ipc.as_raw_fd(), libc::CLONE_NEWIPC),
        (ns.uts.as_raw_fd(), libc::CLONE_NEWUTS),
        (ns.pid.as_raw_fd(), libc::CLONE_NEWPID),
    ];
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let report_fd = report_w.as_raw_fd();
    let mut high = vec![-1i32; passed_fds.len()];
    let mut high_ns = [-1i32; 5];
    let mut stack = vec![0u8; 256 * 1024];
    let child = Box::new(|| -> isize {
        // SAFETY: as in spawn_init, only async-signal-safe calls on values prepared before
        // clone; the raw clone below behaves like fork (no shared memory).
        unsafe {
            // From the moment it is in the container's namespaces until garden-init takes
            // over (which does the same), this copy of gardend is out of the container's
            // reach: no ptrace, no /proc/<pid>/mem, no open files through /proc.
            if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) < 0 {
                libc::_exit(126);
            }
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            let ready = libc::fcntl(ready_fd, libc::F_DUPFD, 100);
            let log = libc::fcntl(log_fd, libc::F_DUPFD, 100);
            let go = libc::fcntl(go_fd, libc::F_DUPFD, 100);
            let report = libc::fcntl(report_fd, libc::F_DUPFD, 100);
            if null < 0 || ready < 0 || log < 0 || go < 0 || report < 0 {
                libc::_exit(126);
            }
            for (h, fd) in high.iter_mut().zip(&passed_fds) {
                *h = libc::fcntl(*fd, libc::F_DUPFD, 100);
                if *h < 0 {
                    libc::_exit(126);
                }
            }
            let all_ns = [
                userns.unwrap_or(-1),
                joined[0].0,
                joined[1].0,
                joined[2].0,
                joined[3].0,
            ];
            for (h, fd) in high_ns.iter_mut().zip(all_ns) {
                if fd >= 0 {
                    *h = libc::fcntl(fd, libc::F_DUPFD, 100);
                    if *h < 0 {
                        libc::_exit(126);
                    }
                }
            }
            let go_at = place_fds(null, log, ready, 4 + opened.len() as i32, &high, go);
            // The namespaces and the report pipe right after the go pipe; the rest closed.
            let report_at = go_at + 1;
            if libc::dup2(report, report_at) < 0 {
                libc::_exit(126);
            }
            let mut ns_at = [-1i32; 5];
            for (i, h) in high_ns.iter().enumerate() {
                if *h >= 0 {
                    ns_at[i] = report_at + 1 + i as i32;
                    if libc::dup2(*h, ns_at[i]) < 0 {
                        libc::_exit(126);
                    }
                }
            }
            libc::syscall(libc::SYS_close_range, report_at as u32 + 6, u32::MAX, 0u32);
            // The user namespace first: it grants the rights to join the others.
            if ns_at[0] >= 0 && libc::setns(ns_at[0], libc::CLONE_NEWUSER) < 0 {
                libc::_exit(122);
            }
            for (i, (_, kind)) in joined.iter().enumerate() {
                if libc::setns(ns_at[i + 1], *kind) < 0 {
                    libc::_exit(122);
                }
            }
            if libc::unshare(libc::CLONE_NEWNS) < 0 {
                libc::_exit(122);
            }
            let pid = libc::syscall(
                libc::SYS_clone,
                libc::CLONE_PARENT as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            );
            if pid < 0 {
                libc::_exit(121);
            }
            if pid > 0 {
                let pid = pid as i32;
                let bytes = pid.to_ne_bytes();
                libc::write(report_at, bytes.as_ptr() as *const libc::c_void, 4);
                libc::_exit(0);
            }
            // The pea's init, in the container's pid namespace.
            libc::syscall(libc::SYS_close_range, report_at as u32, u32::MAX, 0u32);
            wait_then_exec(go_at, opened, userns.is_some(), &exec)
        }
    });
    // SAFETY: the callback only performs async-signal-safe calls (see above).
    let joiner = unsafe {
        clone(
            child,
            &mut stack,
            CloneFlags::empty(),
            Some(Signal::SIGCHLD as i32),
        )
    }?;
    drop(report_w);
    let mut buf = [0u8; 4];
    let read = nix::unistd::read(&report_r, &mut buf);
    // The joiner leaves at once either way.
    let status = nix::sys::wait::waitpid(joiner, None);
    match (read, status) {
        (Ok(4), _) => Ok((joiner.as_raw(), i32::from_ne_bytes(buf))),
        (_, Ok(nix::sys::wait::WaitStatus::Exited(_, code))) => {
            tracing::warn!(code, "the pea's namespace joiner failed");
            Err(nix::errno::Errno::EINVAL)
        }
        _ => Err(nix::errno::Errno::EINVAL),
    }
}
