//! garden-init's event loop: accept gardend connections, spawn and signal processes, reap
//! every child at once and report exits.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{accept4, SockFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{
    chown, dup2, execve, fork, pipe2, setgid, setgroups, setsid, setuid, ForkResult, Gid, Pid, Uid,
};

use super::proto::{self, FromInit, Received, Rlimit, SpawnFailure, SpawnRequest, ToInit};
use super::setup::Prepared;
use super::user;

struct Supervisor {
    listener: OwnedFd,
    processes_dir: OwnedFd,
    caps: super::caps::Container,
    clients: Vec<OwnedFd>,
    /// pid (in the container) -> process id, and the descriptors held for it: duplicates of
    /// gardend's ends of its stdio, so the process never sees SIGPIPE or a hangup just
    /// because gardend went away, and a restarted gardend gets them back (`ToInit::Adopt`).
    running: HashMap<i32, (String, Vec<OwnedFd>)>,
    /// Processes started with a tty (their held fd is the pty master).
    ttys: std::collections::HashSet<i32>,
    /// Processes that exited while no gardend was connected: status, tty, and the held fds
    /// (their unread output), for the next gardend's `Adopt`. At most FINISHED_KEPT.
    finished: Vec<(String, i32, bool, Vec<OwnedFd>)>,
    by_id: HashMap<String, i32>,
    /// A pea's init: it leaves once its one process is gone.
    pea: bool,
}

pub fn run(prepared: Prepared) -> ! {
    // Container processes must start with a clean mask: each child undoes this after fork.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .expect("signalfd");
    if prepared.pea {
        pea_init();
        // Not pid 1, so not immune: Stop's SIGTERM to every process must reach the pea's
        // process, not the init that reports its exit.
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGQUIT,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
        ] {
            mask.add(s);
        }
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None).expect("block signals");
    let mut s = Supervisor {
        listener: prepared.listener,
        processes_dir: prepared.processes_dir,
        caps: prepared.caps,
        clients: Vec::new(),
        running: HashMap::new(),
        ttys: Default::default(),
        finished: Vec::new(),
        by_id: HashMap::new(),
        pea: prepared.pea,
    };
    loop {
        let (sig_ready, accept_ready, client_ready) = {
            let mut fds = vec![
                PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
                PollFd::new(s.listener.as_fd(), PollFlags::POLLIN),
            ];
            fds.extend(
                s.clients
                    .iter()
                    .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
            );
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("garden-init: poll: {e}");
                    continue;
                }
            }
            let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
            (
                ready(&fds[0]),
                ready(&fds[1]),
                fds[2..].iter().map(ready).collect::<Vec<_>>(),
            )
        };
        if sig_ready {
            while let Ok(Some(_)) = sfd.read_signal() {}
            s.reap();
        }
        if accept_ready {
            s.accept();
        }
        let mut closed = Vec::new();
        for (i, ready) in client_ready.into_iter().enumerate() {
            if ready && !s.serve(i) {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            s.clients.remove(i);
        }
    }
}

impl Supervisor {
    fn accept(&mut self) {
        loop {
            match accept4(self.listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new descriptor that we now own.
                Ok(fd) => self.clients.push(unsafe { OwnedFd::from_raw_fd(fd) }),
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("garden-init: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Handle one message from client `i`; false = the client is gone.
    fn serve(&mut self, i: usize) -> bool {
        let msg = match proto::recv::<ToInit>(self.clients[i].as_fd()) {
            Ok(Received::Message(m, fds)) => (m, fds),
            Ok(Received::Closed) => return false,
            Ok(Received::Garbage(e)) => {
                eprintln!("garden-init: bad message: {e}");
                return true;
            }
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return true,
            Err(e) => {
                eprintln!("garden-init: recv: {e}");
                return false;
            }
        };
        let msg = match msg {
            (ToInit::SpawnFile { id }, fds) => match self.read_spawn_file(&id) {
                Ok(req) => (ToInit::Spawn(req), fds),
                Err(error) => {
                    let reply = FromInit::SpawnFailed {
                        id,
                        kind: SpawnFailure::Other,
                        error,
                    };
                    let _ = proto::send(self.clients[i].as_fd(), &reply, &[]);
                    return true;
                }
            },
            other => other,
        };
        match msg {
            (ToInit::SpawnFile { .. }, _) => {}
            (ToInit::Spawn(req), fds) => {
                let reply = match self.spawn(&req, fds) {
                    Ok(pid) => FromInit::Spawned {
                        id: req.id.clone(),
                        pid,
                    },
                    Err((kind, error)) => FromInit::SpawnFailed {
                        id: req.id.clone(),
                        kind,
                        error,
                    },
                };
                let _ = proto::send(self.clients[i].as_fd(), &reply, &[]);
            }
            (ToInit::Signal { id, signal }, _) => {
                if let (Some(pid), Ok(sig)) = (self.by_id.get(&id), Signal::try_from(signal)) {
                    let _ = kill(Pid::from_raw(*pid), sig);
                }
            }
            (ToInit::SignalAll { signal }, _) => {
                if let Ok(sig) = Signal::try_from(signal) {
                    // From pid 1, pid -1 means every process of the namespace but ourselves.
                    let _ = kill(Pid::from_raw(-1), sig);
                }
            }
            (ToInit::CloseStdin { id }, _) => {
                let pid = self.by_id.get(&id).copied();
                if let Some((_, held)) = pid.and_then(|p| self.running.get_mut(&p)) {
                    // Pipes hold [stdout, stderr, stdin]; a tty holds only its master.
                    if held.len() > 2 {
                        held.truncate(2);
                    }
                }
            }
            (ToInit::Adopt, _) => {
                self.adopt(i);
                // Handed over: the new gardend holds them now.
                self.finished.clear();
            }
        }
        true
    }

    /// Hand every live process's held stdio ends to client `i` (a restarted gardend).
    fn adopt(&self, i: usize) {
        for (pid, (id, held)) in &self.running {
            let msg = FromInit::Running {
                id: id.clone(),
                pid: *pid,
                tty: self.ttys.contains(pid),
            };
            let fds: Vec<RawFd> = held.iter().map(|f| f.as_raw_fd()).collect();
            if let Err(e) = proto::send(self.clients[i].as_fd(), &msg, &fds) {
                eprintln!("garden-init: hand over {id}: {e}");
            }
        }
        for (id, status, tty, held) in &self.finished {
            let msg = FromInit::Finished {
                id: id.clone(),
                status: *status,
                tty: *tty,
            };
            let fds: Vec<RawFd> = held.iter().map(|f| f.as_raw_fd()).collect();
            if let Err(e) = proto::send(self.clients[i].as_fd(), &msg, &fds) {
                eprintln!("garden-init: hand over {id}: {e}");
            }
        }
        let _ = proto::send(self.clients[i].as_fd(), &FromInit::Adopted, &[]);
    }

    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    eprintln!("garden-init: waitpid: {e}");
                    return;
                }
                Ok(s) => s,
            };
            let (pid, code) = match status {
                WaitStatus::Exited(pid, code) => (pid, code),
                WaitStatus::Signaled(pid, sig, _) => (pid, 128 + sig as i32),
                _ => continue,
            };
            if let Some((id, held)) = self.running.remove(&pid.as_raw()) {
                let tty = self.ttys.remove(&pid.as_raw());
                self.by_id.remove(&id);
                self.record_exit(&id, code);
                if self.clients.is_empty() {
                    // Nobody read its last output: keep it for the next gardend.
                    if self.finished.len() >= FINISHED_KEPT {
                        self.finished.remove(0);
                    }
                    self.finished.push((id.clone(), code, tty, held));
                }
                let msg = FromInit::Exited { id, status: code };
                for c in &self.clients {
                    let _ = proto::send(c.as_fd(), &msg, &[]);
                }
                if self.pea && self.running.is_empty() {
                    pea_done();
                }
            }
        }
    }

    /// Read and remove `<processes_dir>/.<id>.spawn` (see `ToInit::SpawnFile`).
    fn read_spawn_file(&self, id: &str) -> Result<SpawnRequest, String> {
        if id.contains('/') {
            return Err(format!("invalid process id {id:?}"));
        }
        let name = format!(".{id}.spawn");
        let flags = nix::fcntl::OFlag::O_RDONLY
            | nix::fcntl::OFlag::O_CLOEXEC
            | nix::fcntl::OFlag::O_NOFOLLOW;
        let fd = nix::fcntl::openat(
            self.processes_dir.as_fd(),
            name.as_str(),
            flags,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("open process spec: {e}"))?;
        let _ = nix::unistd::unlinkat(
            self.processes_dir.as_fd(),
            name.as_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        let mut json = Vec::new();
        std::fs::File::from(fd)
            .take(64 << 20)
            .read_to_end(&mut json)
            .map_err(|e| format!("read process spec: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| format!("parse process spec: {e}"))
    }

    /// `<processes_dir>/<id>.exit`, so an exit code survives gardend restarts (re-adopting
    /// containers will read it; today `tests/garden_restart.rs` does).
    fn record_exit(&self, id: &str, code: i32) {
        let name = format!("{id}.exit");
        let flags =
            nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_TRUNC;
        let flags = flags | nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NOFOLLOW;
        match nix::fcntl::openat(
            self.processes_dir.as_fd(),
            name.as_str(),
            flags,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        ) {
            Ok(fd) => {
                let mut f = std::fs::File::from(fd);
                let _ = writeln!(f, "{code}");
            }
            Err(e) => eprintln!("garden-init: record exit of {id}: {e}"),
        }
    }

    fn spawn(
        &mut self,
        req: &SpawnRequest,
        fds: Vec<OwnedFd>,
    ) -> Result<i32, (SpawnFailure, String)> {
        let other = |e: String| (SpawnFailure::Other, e);
        if self.by_id.contains_key(&req.id) {
            return Err(other(format!("process ID '{}' already in use", req.id)));
        }
        let want = if req.tty { 1 } else { 3 };
        if fds.len() < want {
            return Err(other(format!(
                "expected {want} stdio descriptors, got {}",
                fds.len()
            )));
        }
        let mut fds = fds;
        let held = fds.split_off(want);
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        let user = user::resolve(&req.user, &passwd, &group).map_err(other)?;
        if !req.tty {
            // The process's pipes are its own, as runc makes them: a user may reopen them
            // through /dev/stdout or /proc/self/fd.
            for fd in &fds[..3] {
                let _ = nix::unistd::fchown(
                    fd,
                    Some(Uid::from_raw(user.uid)),
                    Some(Gid::from_raw(user.gid)),
                );
            }
        }
        if req.tty {
            // The terminal belongs to the process's user and stays in the tty group (devpts'
            // gid=5), as a login terminal would.
            let _ = nix::unistd::fchown(&fds[0], Some(Uid::from_raw(user.uid)), None);
            let _ =
                nix::sys::stat::fchmod(&fds[0], nix::sys::stat::Mode::from_bits_truncate(0o620));
        }
        let env = user::merge_env(&req.env, &user, &req.user);
        let dir = if req.dir.is_empty() {
            user.home.clone()
        } else {
            req.dir.clone()
        };
        let dir = if Path::new(&dir).is_absolute() {
            PathBuf::from(dir)
        } else {
            Path::new(&user.home).join(dir)
        };
        ensure_dir(&dir, user.uid, user.gid).map_err(other)?;
        let exe = resolve_executable(&req.path, user::env_get(&env, "PATH").unwrap_or(""), &dir)?;

        let cstr = |s: &str| CString::new(s).map_err(|_| other(format!("NUL byte in {s:?}")));
        let exe_c = CString::new(exe.as_os_str().as_bytes())
            .map_err(|_| other("NUL byte in path".into()))?;
        let mut argv = vec![cstr(&req.path)?];
        for a in &req.args {
            argv.push(cstr(a)?);
        }
        let envp = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>, _>>()?;
        let dir_c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| other("NUL byte in dir".into()))?;
        let (err_r, err_w) =
            pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| other(format!("pipe: {e}")))?;
        let oom_score_adj = process_oom_score_adj();

        let stdio: [RawFd; 3] = if req.tty {
            [fds[0].as_raw_fd(); 3]
        } else {
            [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()]
        };
        // SAFETY: garden-init is single-threaded, so the child may allocate and run normal code.
        match unsafe { fork() } {
            Err(e) => Err(other(format!("fork: {e}"))),
            Ok(ForkResult::Child) => {
                drop(err_r);
                let caps = super::caps::Container {
                    // A privileged request is honoured only in a privileged container.
                    privileged: req.privileged && self.caps.privileged,
                    ..self.caps
                };
                let (stage, errno) = child(
                    stdio,
                    req,
                    &user,
                    caps,
                    oom_score_adj,
                    &dir_c,
                    &exe_c,
                    &argv,
                    &envp,
                );
                let mut w = std::fs::File::from(err_w);
                let _ = w.write_all(&[stage]);
                let _ = w.write_all(&(errno as i32).to_le_bytes());
                // SAFETY: leave without running the parent's atexit handlers or destructors.
                unsafe { libc::_exit(127) }
            }
            Ok(ForkResult::Parent { child }) => {
                drop(err_w);
                drop(fds);
                let pid = child.as_raw();
                self.running.insert(pid, (req.id.clone(), held));
                if req.tty {
                    self.ttys.insert(pid);
                }
                self.by_id.insert(req.id.clone(), pid);
                let mut buf = Vec::new();
                let _ = std::fs::File::from(err_r).read_to_end(&mut buf);
                if buf.len() >= 5 {
                    let errno =
                        Errno::from_raw(i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]));
                    // The child is gone; the reaper reports nothing for it because we forget it.
                    self.running.remove(&pid);
                    self.ttys.remove(&pid);
                    self.by_id.remove(&req.id);
                    let _ = waitpid(child, None);
                    return Err(match (buf[0], errno) {
                        (STAGE_EXEC, Errno::ENOENT) => (
                            SpawnFailure::ExecutableNotFound,
                            format!("exec: \"{}\": executable file not found in $PATH", req.path),
                        ),
                        (STAGE_EXEC, e) => other(format!("exec {}: {}", req.path, e.desc())),
                        (STAGE_CHDIR, e) => other(format!("chdir {}: {}", dir.display(), e.desc())),
                        (_, e) => other(format!("start {}: {}", req.path, e.desc())),
                    });
                }
                Ok(pid)
            }
        }
    }
}

/// The OOM score a new process gets: 0 when gardend shielded init (-1000); otherwise the
/// highest, so that the container's OOM killer still picks any process before init (a process
/// scores its rss plus score/1000 of the limit, and init's rss is far below the limit).
fn process_oom_score_adj() -> &'static str {
    let init: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if init < 0 {
        "0"
    } else {
        "1000"
    }
}

/// A pea's init adopts every orphan of its process (so none escapes to the container's init
/// and keeps the pea's mount namespace alive).
fn pea_init() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
}

/// The pea's process is gone: kill what it left behind, reap it, and leave, taking the pea's
/// mount namespace (its root filesystem) with us.
fn pea_done() -> ! {
    loop {
        let children = std::fs::read_to_string("/proc/thread-self/children").unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        match waitpid(Pid::from_raw(-1), None) {
            Err(Errno::ECHILD) => break,
            Err(Errno::EINTR) | Ok(_) => continue,
            Err(e) => {
                eprintln!("garden-init: waitpid: {e}");
                break;
            }
        }
    }
    std::process::exit(0)
}

/// How many finished processes' stdio garden-init keeps while no gardend is connected.
const FINISHED_KEPT: usize = 64;

const STAGE_SETUP: u8 = 1;
const STAGE_CHDIR: u8 = 2;
const STAGE_EXEC: u8 = 3;

/// In the forked child: become the process. Returns only on failure, with the stage and errno.
#[allow(clippy::too_many_arguments)]
fn child(
    stdio: [RawFd; 3],
    req: &SpawnRequest,
    user: &user::User,
    caps: super::caps::Container,
    oom_score_adj: &'static str,
    dir: &CString,
    exe: &CString,
    argv: &[CString],
    envp: &[CString],
) -> (u8, Errno) {
    let fail = |stage: u8| move |e: Errno| (stage, e);
    let run = || -> Result<std::convert::Infallible, (u8, Errno)> {
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            .map_err(fail(STAGE_SETUP))?;
        // Whatever init holds must not reach the process (its own stdio is in place by now;
        // the error pipe must survive until exec, hence close-on-exec rather than close).
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only flags descriptors.
        unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        // Undo init's OOM immunity (raising the score needs no privilege).
        std::fs::write("/proc/self/oom_score_adj", oom_score_adj)
            .map_err(|_| (STAGE_SETUP, Errno::last()))?;
        // Rust ignores SIGPIPE in garden-init; ignored signals survive exec, so restore it.
        // SAFETY: resetting a disposition to the default in the single-threaded child.
        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl) }
            .map_err(fail(STAGE_SETUP))?;
        setsid().map_err(fail(STAGE_SETUP))?;
        // Move stdio to 0..2. The sources are > 2 (init's own 0..2 are open), so no clobbering.
        for (target, src) in stdio.iter().enumerate() {
            // SAFETY: both descriptors are valid; dup2 onto 0..2 replaces init's inherited ones.
            let mut t = unsafe { OwnedFd::from_raw_fd(target as RawFd) };
            // SAFETY: src is a live descriptor received with the request.
            dup2(unsafe { BorrowedFd::borrow_raw(*src) }, &mut t).map_err(fail(STAGE_SETUP))?;
            std::mem::forget(t);
        }
        if req.tty {
            // SAFETY: fd 0 is the pty slave; make it our controlling terminal.
            if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
                return Err((STAGE_SETUP, Errno::last()));
            }
        }
        for (resource, value) in &req.rlimits {
            {
                setrlimit(rlimit_resource(*resource), *value, *value).map_err(fail(STAGE_SETUP))?;
            }
        }
        super::caps::shape_process(super::caps::Profile::new(caps, user.uid))
            .map_err(|_| (STAGE_SETUP, Errno::EPERM))?;
        let groups: Vec<Gid> = user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        setgroups(&groups).map_err(fail(STAGE_SETUP))?;
        setgid(Gid::from_raw(user.gid)).map_err(fail(STAGE_SETUP))?;
        setuid(Uid::from_raw(user.uid)).map_err(fail(STAGE_SETUP))?;
        if user.uid != 0 {
            // setuid cleared every capability; nothing (setuid-root or file-capability
            // binaries) may hand one back.
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err((STAGE_SETUP, Errno::last()));
            }
        }
        nix::unistd::chdir(dir.as_c_str()).map_err(fail(STAGE_CHDIR))?;
        execve(exe, argv, envp).map_err(fail(STAGE_EXEC))
    };
    match run() {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

fn rlimit_resource(r: Rlimit) -> Resource {
    match r {
        Rlimit::As => Resource::RLIMIT_AS,
        Rlimit::Core => Resource::RLIMIT_CORE,
        Rlimit::Cpu => Resource::RLIMIT_CPU,
        Rlimit::Data => Resource::RLIMIT_DATA,
        Rlimit::Fsize => Resource::RLIMIT_FSIZE,
        Rlimit::Locks => Resource::RLIMIT_LOCKS,
        Rlimit::Memlock => Resource::RLIMIT_MEMLOCK,
        Rlimit::Msgqueue => Resource::RLIMIT_MSGQUEUE,
        Rlimit::Nice => Resource::RLIMIT_NICE,
        Rlimit::Nofile => Resource::RLIMIT_NOFILE,
        Rlimit::Nproc => Resource::RLIMIT_NPROC,
        Rlimit::Rss => Resource::RLIMIT_RSS,
        Rlimit::Rtprio => Resource::RLIMIT_RTPRIO,
        Rlimit::Sigpending => Resource::RLIMIT_SIGPENDING,
        Rlimit::Stack => Resource::RLIMIT_STACK,
    }
}

/// Create the working directory if missing, each new component owned by the user, 0755.
/// An existing directory is left as it is (the process then fails itself if it may not use it).
fn ensure_dir(dir: &Path, uid: u32, gid: u32) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.exists() {
        missing.push(cur.to_path_buf());
        match cur.parent() {
            Some(p) => cur = p,
            None => break,
        }
    }
    for d in missing.iter().rev() {
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(d)
            .map_err(|e| format!("create working directory {}: {e}", d.display()))?;
        chown(d, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| format!("chown working directory {}: {e}", d.display()))?;
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
    }
    Ok(())
}

/// A path with a `/` is used as is (relative to the working dir); otherwise search `PATH`.
fn resolve_executable(
    path: &str,
    search: &str,
    dir: &Path,
) -> Result<PathBuf, (SpawnFailure, String)> {
    let not_found = || {
        (
            SpawnFailure::ExecutableNotFound,
            format!("exec: \"{path}\": executable file not found in $PATH"),
        )
    };
    if path.is_empty() {
        return Err(not_found());
    }
    if path.contains('/') {
        let p = Path::new(path);
        return Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        });
    }
    for d in search.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(d).join(path);
        if let Ok(meta) = std::fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
        }
    }
    Err(not_found())
}
