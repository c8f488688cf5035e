//! Messages between gardend and garden-init, the pid 1 of every container.
//!
//! One SOCK_SEQPACKET unix socket per connection: every packet is one JSON message, and the
//! file descriptors that go with it (a process's stdio) ride on the same packet as
//! SCM_RIGHTS, so a message and its fds can never be split or reordered.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

/// Largest message we accept; a spawn request with a huge argv or env fails cleanly.
pub const MAX_PACKET: usize = 192 * 1024;
/// At most this many fds travel with one message.
pub const MAX_FDS: usize = 8;

/// What garden-init sends on its setup channel (fd 3) once the container's root is built on
/// disk: gardend then puts it in the container's cgroups and answers with one byte
/// (`runtime::ready` says why the join waits until then).
pub const JOIN: &[u8] = b"join\n";

/// Everything garden-init needs to build the container, written by gardend to
/// `<bundle>/init.json` before garden-init starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    /// Overlay layers, top first; empty = `rootfs` is used as is (raw).
    pub lower_dirs: Vec<PathBuf>,
    /// Id-mapped lower layers: detached mounts garden-init attaches (one of `lower_dirs`
    /// each) before mounting the overlay.
    #[serde(default)]
    pub lower_mounts: Vec<FdMount>,
    /// garden-init runs in its own user namespace (the overlay then reads `user.overlay.*`).
    #[serde(default)]
    pub user_namespace: bool,
    pub upper_dir: PathBuf,
    pub work_dir: PathBuf,
    /// Mount point of the container root (`<bundle>/rootfs`).
    pub rootfs: PathBuf,
    pub hostname: String,
    pub bind_mounts: Vec<InitBindMount>,
    /// `cgroup.procs` files garden-init writes itself into when it joins its cgroups.
    pub cgroup_procs: Vec<PathBuf>,
    /// Where garden-init listens for gardend.
    pub socket: PathBuf,
    /// Host directory where garden-init records exit codes (`<id>.exit`) and gardend hands over
    /// spawn requests too large for a packet.
    pub processes_dir: PathBuf,
    /// Privileged containers keep every capability and an unmasked /proc.
    #[serde(default)]
    pub privileged: bool,
    /// The devices cgroup allows only the standard devices, so root may keep CAP_MKNOD as in
    /// Guardian; without it (cgroup v2 for now) nobody may make device nodes.
    #[serde(default)]
    pub devices_allowlisted: bool,
    /// Set for a pea's init: it joined a container's namespaces (all but mount) instead of
    /// making its own, so it neither names the host nor brings up `lo`.
    #[serde(default)]
    pub pea: Option<PeaConfig>,
}

/// What a pea's init does differently from a container's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeaConfig {
    /// Files copied from the container (`/etc/hosts`, `/etc/resolv.conf`): path inside the
    /// pea and content.
    pub etc_files: Vec<(PathBuf, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitBindMount {
    /// Host path.
    pub src: PathBuf,
    /// Path inside the container.
    pub dst: PathBuf,
    pub read_only: bool,
    /// gardend's detached clone of `src` (already read-only if asked), which garden-init
    /// attaches instead of looking `src` up itself: container root in a user namespace may
    /// not be able to reach it.
    #[serde(default)]
    pub fd: Option<i32>,
    /// Whether `src` is a directory (the target is made as one, else as an empty file).
    #[serde(default)]
    pub src_is_dir: bool,
}

/// A detached mount garden-init holds as descriptor `fd`, to attach at `target`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FdMount {
    pub fd: i32,
    pub target: PathBuf,
}

/// The resource limits a process spec may set (Garden's `ResourceLimits`, one each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rlimit {
    As,
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Sigpending,
    Stack,
}

/// A process to start inside the container. Its stdio fds travel with the message:
/// `[stdin, stdout, stderr]`, or with `tty` one pty slave used for all three.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SpawnRequest {
    pub id: String,
    pub path: String,
    pub args: Vec<String>,
    /// Image env, container env, then process env; garden-init merges and adds defaults.
    pub env: Vec<String>,
    /// Empty = the user's home.
    pub dir: String,
    /// `name`, `uid:gid`, `name:group`; empty = root.
    pub user: String,
    /// (resource, value) pairs applied with soft = hard.
    pub rlimits: Vec<(Rlimit, u64)>,
    pub tty: bool,
    /// Keep the full capability set (privileged containers).
    #[serde(default)]
    pub privileged: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToInit {
    Spawn(SpawnRequest),
    /// A spawn request too large for one packet (big env or args): its JSON is in
    /// `<processes_dir>/.<id>.spawn`, which garden-init reads and removes.
    SpawnFile {
        id: String,
    },
    /// Signal one process started by Spawn.
    Signal {
        id: String,
        signal: i32,
    },
    /// Signal every process of the container except init itself.
    SignalAll {
        signal: i32,
    },
    /// Drop init's copy of a process's stdin (gardend closed its own): the process sees EOF.
    CloseStdin {
        id: String,
    },
    /// A new gardend takes over: init answers one `Running` per live process, with its copies
    /// of gardend's stdio ends, then `Adopted`.
    Adopt,
}

/// Why a spawn failed; selects the Garden error type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpawnFailure {
    ExecutableNotFound,
    Other,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromInit {
    /// `pid` is in the container's pid namespace.
    Spawned { id: String, pid: i32 },
    SpawnFailed {
        id: String,
        kind: SpawnFailure,
        error: String,
    },
    /// Exit code, or 128 + signal.
    Exited { id: String, status: i32 },
    /// Answer to `Adopt`: a live process and, as fds, init's copies of gardend's ends of its
    /// stdio: `[stdout, stderr]` plus `stdin` unless it was closed, or `[pty master]`.
    Running { id: String, pid: i32, tty: bool },
    /// Answer to `Adopt`: a process that exited while no gardend was connected, with init's
    /// copies of gardend's stdio ends (as for `Running`), so its last output can be read.
    Finished { id: String, status: i32, tty: bool },
    /// Every `Running` and `Finished` of an `Adopt` was sent.
    Adopted,
}

/// Send one message with its fds.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[RawFd]) -> nix::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(|_| nix::errno::Errno::EINVAL)?;
    if bytes.len() > MAX_PACKET {
        return Err(nix::errno::Errno::EMSGSIZE);
    }
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// What one `recv` produced.
pub enum Received<T> {
    Message(T, Vec<OwnedFd>),
    /// The peer closed the connection.
    Closed,
    /// A packet that did not decode (logged by the caller and skipped).
    Garbage(String),
}

/// Receive one message and its fds. Blocks or returns EAGAIN per the socket's mode.
pub fn recv<T: for<'de> Deserialize<'de>>(sock: BorrowedFd<'_>) -> nix::Result<Received<T>> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds, truncated) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us; we own them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds, msg.flags.contains(MsgFlags::MSG_TRUNC))
    };
    if len == 0 && fds.is_empty() {
        return Ok(Received::Closed);
    }
    if truncated {
        return Ok(Received::Garbage("message truncated".into()));
    }
    match serde_json::from_slice(&buf[..len]) {
        Ok(m) => Ok(Received::Message(m, fds)),
        Err(e) => Ok(Received::Garbage(e.to_string())),
    }
}
