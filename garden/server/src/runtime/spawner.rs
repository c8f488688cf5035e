//! Host programs (ip, iptables-restore) and containers' garden-init started by a helper
//! process forked before gardend opens anything.
//!
//! Every fork or posix_spawn copies the caller's descriptor table, and every exec then closes
//! each close-on-exec entry one by one: about 1 µs per open descriptor here. gardend holds two
//! per container, so with 5,000 containers each `ip` or `iptables-restore` cost it ~10 ms of
//! CPU before the program even ran, and creates and destroys got slower the more containers
//! there were. The spawner holds a handful of descriptors; it forks the program with
//! `CLONE_PARENT`, so the program is gardend's own child (waited for through a pidfd), and
//! hands gardend the pidfd.
//!
//! garden-init is cloned from the spawner for the same reason (see
//! [`runtime::clone::spawn_init`](crate::runtime::clone::spawn_init)): a clone of gardend
//! copied its page tables and descriptor table, then closed every descriptor again.
//!
//! Protocol on a SEQPACKET socket pair, one exchange at a time; a request is NUL-terminated
//! fields, the first naming its kind, with descriptors (SCM_RIGHTS):
//! - `exec`, the program and its arguments; the child's stdin, stdout and stderr. Answer: a
//!   zero errno and the child's pid, with its pidfd; or the errno of the failed exec (with the
//!   pidfd, to reap it) or clone.
//! - `init`, `1` or `0` (a user namespace or not), garden-init's binary, the bundle, then the
//!   directories the child opens; the ready pipe, the log, the go pipe and the passed mounts
//!   (see [`InitFds`](crate::runtime::clone::InitFds)). Answer: a zero errno and garden-init's
//!   pid, or the clone's errno.

use std::ffi::CString;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// gardend's end of the socket, once [`start`] forked the spawner.
static SPAWNER: OnceLock<Mutex<OwnedFd>> = OnceLock::new();

/// Largest request (program and arguments).
const MAX_REQUEST: usize = 64 * 1024;

/// Most descriptors in one request: the kernel's limit per SCM_RIGHTS message (SCM_MAX_FD)
/// is 253. An init with more passed mounts is cloned by gardend itself.
const MAX_FDS: usize = 250;

/// Fork the spawner. Must run while gardend is single-threaded (first thing in `main`, before
/// the async runtime), as the child keeps running Rust code after the fork. Without a
/// spawner, [`spawn`] answers `None` and callers start programs themselves.
pub fn start() -> std::io::Result<()> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the process is single-threaded (the caller's contract), so the child may run
    // arbitrary code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(ours);
            // SAFETY: plain syscalls on our own process and descriptors.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                // Named apart from gardend in ps and /proc (its command line is gardend's).
                libc::prctl(libc::PR_SET_NAME, c"gardend-spawner".as_ptr());
                if libc::getppid() != parent {
                    libc::_exit(0);
                }
                // Keep stdio (for the programs' inherited environment) and the socket as fd 3.
                if theirs.as_raw_fd() != 3 {
                    libc::dup3(theirs.as_raw_fd(), 3, libc::O_CLOEXEC);
                }
                libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
            }
            std::mem::forget(theirs);
            serve(3)
        }
        _ => {
            drop(theirs);
            let _ = SPAWNER.set(Mutex::new(ours));
            Ok(())
        }
    }
}

/// Start `program args` through the spawner with `stdio` as its stdin, stdout and stderr;
/// its pidfd. `None`: there is no working spawner (start the program directly).
pub fn spawn(
    program: &str,
    args: &[&str],
    stdio: [&OwnedFd; 3],
) -> Option<std::io::Result<OwnedFd>> {
    let fields: Vec<&[u8]> = std::iter::once(program)
        .chain(args.iter().copied())
        .map(str::as_bytes)
        .collect();
    let fds = stdio.map(|f| f.as_raw_fd());
    match exchange("exec", &fields, &fds)? {
        Err(e) => Some(Err(e)),
        Ok(Answer {
            errno: 0,
            pidfd: Some(fd),
            ..
        }) => Some(Ok(fd)),
        Ok(Answer { errno: 0, .. }) => {
            Some(Err(std::io::Error::other("the spawner sent no pidfd")))
        }
        Ok(Answer { errno, pidfd, .. }) => {
            // A child whose exec failed is ours (CLONE_PARENT) and already exiting: reap it.
            if let Some(fd) = pidfd {
                let _ = wait(&fd);
            }
            Some(Err(std::io::Error::from_raw_os_error(errno)))
        }
    }
}

/// Clone garden-init through the spawner (see [`crate::runtime::clone::spawn_init`]); its pid,
/// a child of gardend. `None`: no working spawner, or too many descriptors for one message
/// (clone it directly).
pub(crate) fn spawn_init(
    bin: &std::ffi::CStr,
    bundle: &std::ffi::CStr,
    fds: &crate::runtime::clone::InitFds<'_>,
    userns: bool,
) -> Option<std::io::Result<i32>> {
    if fds.passed.len() + 3 > MAX_FDS {
        return None;
    }
    let mut fields: Vec<&[u8]> = vec![
        if userns { b"1" } else { b"0" },
        bin.to_bytes(),
        bundle.to_bytes(),
    ];
    fields.extend(fds.opened.iter().map(|c| c.to_bytes()));
    let raw: Vec<RawFd> = [fds.ready, fds.log, fds.go]
        .into_iter()
        .chain(fds.passed.iter())
        .map(|f| f.as_raw_fd())
        .collect();
    match exchange("init", &fields, &raw)? {
        Err(e) => Some(Err(e)),
        Ok(Answer { errno: 0, pid, .. }) => Some(Ok(pid)),
        Ok(Answer { errno, .. }) => Some(Err(std::io::Error::from_raw_os_error(errno))),
    }
}

/// What the spawner answered.
struct Answer {
    errno: i32,
    pid: i32,
    pidfd: Option<OwnedFd>,
}

/// One request and its answer. `None`: there is no working spawner (logged); `Some(Err)`: a
/// request the spawner cannot take.
fn exchange(kind: &str, fields: &[&[u8]], fds: &[RawFd]) -> Option<std::io::Result<Answer>> {
    let sock = SPAWNER.get()?;
    let mut request = Vec::new();
    for part in std::iter::once(kind.as_bytes()).chain(fields.iter().copied()) {
        if part.contains(&0) {
            return Some(Err(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        request.extend_from_slice(part);
        request.push(0);
    }
    if request.len() > MAX_REQUEST {
        return Some(Err(std::io::Error::from_raw_os_error(libc::E2BIG)));
    }
    let sock = sock.lock().unwrap_or_else(|p| p.into_inner());
    let sent = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&request)],
        &[ControlMessage::ScmRights(fds)],
        MsgFlags::empty(),
        None,
    );
    if let Err(e) = sent {
        tracing::warn!(error = %e, "the spawner is gone; starting programs directly");
        return None;
    }
    let mut answer = [0u8; 8];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [IoSliceMut::new(&mut answer)];
    let received = match recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(msg) if msg.bytes == 8 => msg
            .cmsgs()
            .ok()
            .into_iter()
            .flatten()
            .find_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                _ => None,
            }),
        Ok(_) | Err(_) => {
            tracing::warn!("the spawner did not answer; starting programs directly");
            return None;
        }
    };
    // SAFETY: a descriptor just received through SCM_RIGHTS, owned by nobody else.
    let pidfd = received.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    let word = |i: usize| i32::from_ne_bytes(answer[i..i + 4].try_into().expect("4 bytes"));
    Some(Ok(Answer {
        errno: word(0),
        pid: word(4),
        pidfd,
    }))
}

/// Reap our child `pidfd` (blocks until it exits); its exit code, or 128 + the signal that
/// killed it.
pub fn wait(pidfd: &OwnedFd) -> std::io::Result<i32> {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(P_PIDFD) on a valid pidfd with a valid siginfo_t to fill.
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if rc == 0 {
            // SAFETY: waitid filled a SIGCHLD siginfo, whose si_status is set.
            let status = unsafe { info.si_status() };
            return Ok(if info.si_code == libc::CLD_EXITED {
                status
            } else {
                128 + status
            });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The spawner's loop: one request, one child, one answer; gone with gardend's end.
fn serve(sock: RawFd) -> ! {
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (len, fds, truncated) =
            match recvmsg::<()>(sock, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(msg) if msg.bytes == 0 => exit(),
                Ok(msg) => {
                    let fds: Vec<OwnedFd> = msg
                        .cmsgs()
                        .ok()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| match c {
                            ControlMessageOwned::ScmRights(fds) => Some(fds),
                            _ => None,
                        })
                        .flatten()
                        // SAFETY: descriptors just received, owned by nobody else.
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
                        .collect();
                    let truncated = msg
                        .flags
                        .intersects(MsgFlags::MSG_CTRUNC | MsgFlags::MSG_TRUNC);
                    (msg.bytes, fds, truncated)
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => exit(),
            };
        let answer = if truncated {
            Err(libc::E2BIG)
        } else {
            serve_one(&buf[..len], fds)
        };
        let (errno, pid, pidfd) = match answer {
            Ok((pid, pidfd, errno)) => (errno, pid, pidfd),
            Err(e) => (e, 0, None),
        };
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&errno.to_ne_bytes());
        bytes[4..].copy_from_slice(&pid.to_ne_bytes());
        let iov = [IoSlice::new(&bytes)];
        let raw: Vec<RawFd> = pidfd.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs: Vec<ControlMessage> = if raw.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&raw)]
        };
        if sendmsg::<()>(sock, &iov, &cmsgs, MsgFlags::empty(), None).is_err() {
            exit();
        }
    }
}

/// One request: (pid, pidfd if any, errno of a failed exec), or the errno of the request.
/// The received descriptors are closed on return, so that only the child holds them.
fn serve_one(request: &[u8], fds: Vec<OwnedFd>) -> Result<(i32, Option<OwnedFd>, i32), i32> {
    let fields: Vec<&[u8]> = request
        .strip_suffix(&[0])
        .ok_or(libc::EINVAL)?
        .split(|b| *b == 0)
        .collect();
    let cstring = |b: &[u8]| CString::new(b).map_err(|_| libc::EINVAL);
    match fields.split_first() {
        Some((&b"exec", argv)) => {
            let stdio = <[OwnedFd; 3]>::try_from(fds).map_err(|_| libc::EINVAL)?;
            let argv: Vec<CString> = argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
            fork_exec(&argv, &stdio)
        }
        Some((&b"init", [userns, bin, bundle, opened @ ..])) => {
            if fds.len() < 3 {
                return Err(libc::EINVAL);
            }
            let opened: Vec<CString> = opened
                .iter()
                .map(|p| cstring(p))
                .collect::<Result<_, _>>()?;
            let exec = crate::runtime::clone::InitExec::from_c(cstring(bin)?, cstring(bundle)?);
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let passed = &raw[3..];
            let init_fds = crate::runtime::clone::RawInitFds {
                ready: raw[0],
                log: raw[1],
                go: raw[2],
                passed,
            };
            crate::runtime::clone::clone_init(
                &exec,
                &init_fds,
                &opened,
                *userns == b"1",
                nix::sched::CloneFlags::CLONE_PARENT,
            )
            .map(|pid| (pid, None, 0))
            .map_err(|e| e as i32)
        }
        _ => Err(libc::EINVAL),
    }
}

fn exit() -> ! {
    // SAFETY: leaving the spawner process.
    unsafe { libc::_exit(0) }
}

/// The `clone3` arguments (version 0, 64 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// Fork the program as gardend's child (`CLONE_PARENT`) and wait until it has exec'd
/// (`CLONE_VFORK`): (its pid, its pidfd, 0 or the errno of a failed exec (then gardend reaps
/// it)); or the errno of the clone.
fn fork_exec(argv: &[CString], stdio: &[OwnedFd; 3]) -> Result<(i32, Option<OwnedFd>, i32), i32> {
    if argv.is_empty() {
        return Err(libc::EINVAL);
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| e as i32)?;
    let mut pidfd: RawFd = -1;
    let args = CloneArgs {
        flags: (libc::CLONE_PARENT | libc::CLONE_PIDFD | libc::CLONE_VFORK) as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with a valid, fully initialised argument struct; no CLONE_VM, so the
    // child has its own copy of this (single-threaded) process.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    if pid == 0 {
        // SAFETY: the child: only dup2, execvp, write and _exit on our own descriptors.
        unsafe {
            for (i, fd) in stdio.iter().enumerate() {
                if libc::dup2(fd.as_raw_fd(), i as i32) < 0 {
                    report_and_exit(err_w.as_raw_fd());
                }
            }
            libc::execvp(ptrs[0], ptrs.as_ptr());
            report_and_exit(err_w.as_raw_fd());
        }
    }
    drop(err_w);
    // SAFETY: clone3 stored a fresh pidfd, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    // With CLONE_VFORK the child has exec'd (closing the pipe) or failed by now.
    let mut errno = [0u8; 4];
    let pid = pid as i32;
    match nix::unistd::read(&err_r, &mut errno) {
        Ok(4) => Ok((pid, Some(pidfd), i32::from_ne_bytes(errno))),
        _ => Ok((pid, Some(pidfd), 0)),
    }
}

/// In the child: tell the spawner why it failed, and leave.
unsafe fn report_and_exit(err_w: RawFd) -> ! {
    let errno = std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    let bytes = errno.to_ne_bytes();
    // SAFETY: writing our own buffer to our own pipe, then exiting without unwinding.
    unsafe {
        libc::write(err_w, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}
