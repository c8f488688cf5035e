//! Processes as gardend sees them: stdio plumbing, exit publication and Run/Attach sessions.
//!
//! A process's exit is published only after its output has been read to the end (or, when a
//! background child keeps the pipe open, to what was buffered), so the terminal message on a
//! Run/Attach connection never overtakes the process's last bytes.

pub mod stdio;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use garden_api::{ProcessInput, Signal, WindowSize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::kernel::{self, Sandbox};
use crate::service::ExitOutcome;
use stdio::{async_fd, Hub, PendingStream, StdinSink};

/// How long a tty's output may stay idle after exit before it counts as complete; only a
/// background child that keeps the tty open ever waits this long.
const PTY_DRAIN_IDLE: Duration = Duration::from_millis(250);
/// How long a finished process's unclaimed session streams stay resolvable.
pub const STREAM_RETENTION: Duration = Duration::from_secs(60);

/// Where a process stands: the one record of its exit, watched by its output pumps (which
/// drain once it leaves `Running`), its Run/Attach sessions (which end at `Done`) and the
/// retention of unclaimed streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessState {
    Running,
    /// garden-init reported the exit status; output is still being drained.
    Exited(i32),
    /// Output drained: the outcome every Run/Attach reports.
    Done(ExitOutcome),
}

/// Which output stream a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// A session's output streams, until their HTTP requests claim them.
#[derive(Default)]
struct Unclaimed {
    stdout: Option<PendingStream>,
    stderr: Option<PendingStream>,
}

/// One process of a container, from Run to long after its exit. It owns its output streams:
/// the fan-out to every session (`Hub`) and the sessions' not yet claimed ends.
pub struct Process {
    pub id: String,
    stdin: tokio::sync::Mutex<Option<StdinSink>>,
    /// The pty master, for resizes.
    tty: Option<StdinSink>,
    stdout: Arc<Hub>,
    stderr: Arc<Hub>,
    state: watch::Sender<ProcessState>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
    /// By stream id. An entry goes when both streams are claimed, when its client detaches
    /// while the process runs, or STREAM_RETENTION after the process is done.
    sessions: Mutex<HashMap<String, Unclaimed>>,
    sandbox: Arc<dyn Sandbox>,
}

/// What goes to garden-init: the process's own `[stdin, stdout, stderr]` (or `[pty slave]`),
/// then duplicates of gardend's ends (`[stdout, stderr, stdin]`, or the pty master), which
/// garden-init holds until the process exits so that the process keeps running (it blocks once
/// a pipe is full) if gardend goes away, and hands back to a restarted gardend.
pub type ChildFds = Vec<OwnedFd>;

/// gardend's ends of a process's stdio.
enum Ends {
    Pty(OwnedFd),
    Pipes {
        stdout: OwnedFd,
        stderr: OwnedFd,
        /// `None` once closed.
        stdin: Option<OwnedFd>,
    },
}

impl Process {
    /// Create the plumbing and start reading; the caller sends `ChildFds` to garden-init.
    pub fn new(
        id: &str,
        tty: Option<WindowSize>,
        sandbox: Arc<dyn Sandbox>,
    ) -> std::io::Result<(Arc<Process>, ChildFds)> {
        match tty {
            Some(ws) => {
                let size = libc::winsize {
                    ws_row: if ws.rows == 0 { 24 } else { ws.rows },
                    ws_col: if ws.columns == 0 { 80 } else { ws.columns },
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                let pty = container_pty(sandbox.open_ptmx()?, &size)?;
                let held = pty.master.try_clone()?;
                let p = Process::with_ends(id, Ends::Pty(pty.master), sandbox, false)?;
                Ok((p, vec![pty.slave, held]))
            }
            None => {
                let flags = nix::fcntl::OFlag::O_CLOEXEC;
                // Made as container root (pipes belong to their creator's fsuid), so that
                // garden-init may give them to the process's user even in a user namespace.
                let (uid, gid) = sandbox.root_owner();
                let pipes = rootfs::idmap::as_fs_ids(uid, gid, || -> nix::Result<_> {
                    Ok((
                        nix::unistd::pipe2(flags)?,
                        nix::unistd::pipe2(flags)?,
                        nix::unistd::pipe2(flags)?,
                    ))
                });
                let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = pipes?;
                // A larger pipe means fewer wake-ups for chatty processes.
                let _ = nix::fcntl::fcntl(&out_r, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
                // garden-init keeps [stdout, stderr, stdin] of ours for a restarted gardend.
                let held = vec![out_r.try_clone()?, err_r.try_clone()?, in_w.try_clone()?];
                let ends = Ends::Pipes {
                    stdout: out_r,
                    stderr: err_r,
                    stdin: Some(in_w),
                };
                let p = Process::with_ends(id, ends, sandbox, false)?;
                let child = vec![in_r, out_w, err_w].into_iter().chain(held).collect();
                Ok((p, child))
            }
        }
    }

    /// A process a previous gardend started, still running: `fds` are garden-init's copies of
    /// gardend's ends of its stdio (`[stdout, stderr]` plus stdin if still open, or the pty
    /// master). Output it wrote while nobody read waited in the pipe (or pty) buffer; what is
    /// read before the first Attach is kept for it (bounded).
    pub fn adopt(
        id: &str,
        tty: bool,
        fds: Vec<OwnedFd>,
        sandbox: Arc<dyn Sandbox>,
    ) -> std::io::Result<Arc<Process>> {
        let mut fds = fds.into_iter();
        let missing = || std::io::Error::other("garden-init handed over too few descriptors");
        let ends = if tty {
            Ends::Pty(fds.next().ok_or_else(missing)?)
        } else {
            Ends::Pipes {
                stdout: fds.next().ok_or_else(missing)?,
                stderr: fds.next().ok_or_else(missing)?,
                stdin: fds.next(),
            }
        };
        Process::with_ends(id, ends, sandbox, true)
    }

    /// A process that exited while no gardend was running: only its status is left.
    pub fn finished(id: &str, status: i32, sandbox: Arc<dyn Sandbox>) -> Arc<Process> {
        let (state, _) = watch::channel(ProcessState::Done(Ok(status)));
        let (stdout, stderr) = (Arc::new(Hub::default()), Arc::new(Hub::default()));
        stdout.close_now();
        stderr.close_now();
        Arc::new(Process {
            id: id.to_string(),
            stdin: tokio::sync::Mutex::new(None),
            tty: None,
            stdout,
            stderr,
            state,
            pumps: Mutex::default(),
            sessions: Mutex::default(),
            sandbox,
        })
    }

    /// Start reading gardend's ends of a process's stdio; `backlog`: keep what is read before
    /// the first session (see [`Hub::with_backlog`]).
    fn with_ends(
        id: &str,
        ends: Ends,
        sandbox: Arc<dyn Sandbox>,
        backlog: bool,
    ) -> std::io::Result<Arc<Process>> {
        let (state, exited_rx) = watch::channel(ProcessState::Running);
        let hub = || {
            Arc::new(if backlog {
                Hub::with_backlog()
            } else {
                Hub::default()
            })
        };
        let (stdout, stderr) = (hub(), hub());
        let mut pumps = Vec::new();
        let (stdin, tty_sink) = match ends {
            Ends::Pty(master) => {
                let master = Arc::new(async_fd(master)?);
                pumps.push(tokio::spawn(stdio::pump(
                    master.clone(),
                    stdout.clone(),
                    exited_rx.clone(),
                    stdio::Drain::Pty(PTY_DRAIN_IDLE),
                )));
                // With a tty everything arrives on stdout; stderr just ends.
                pumps.push(tokio::spawn(close_hub(stderr.clone())));
                (
                    Some(StdinSink::new(master.clone(), true)),
                    Some(StdinSink::new(master, true)),
                )
            }
            Ends::Pipes {
                stdout: out_r,
                stderr: err_r,
                stdin: in_w,
            } => {
                let out = Arc::new(async_fd(out_r)?);
                let err = Arc::new(async_fd(err_r)?);
                pumps.push(tokio::spawn(stdio::pump(
                    out,
                    stdout.clone(),
                    exited_rx.clone(),
                    stdio::Drain::Pipe,
                )));
                pumps.push(tokio::spawn(stdio::pump(
                    err,
                    stderr.clone(),
                    exited_rx.clone(),
                    stdio::Drain::Pipe,
                )));
                let stdin = match in_w {
                    Some(w) => Some(StdinSink::new(Arc::new(async_fd(w)?), false)),
                    None => None,
                };
                (stdin, None)
            }
        };
        Ok(Arc::new(Process {
            id: id.to_string(),
            stdin: tokio::sync::Mutex::new(stdin),
            tty: tty_sink,
            stdout,
            stderr,
            state,
            pumps: Mutex::new(pumps),
            sessions: Mutex::default(),
            sandbox,
        }))
    }

    /// garden-init reported the exit: drain output, then publish.
    pub fn on_exit(self: &Arc<Self>, status: i32) {
        self.finish(status, Ok(status));
    }

    /// garden-init died (OOM kill, a SIGKILL from the host) and took the process with it: no
    /// exit status will ever come, so every waiter ends with an error once the output is
    /// drained.
    pub fn on_init_gone(self: &Arc<Self>) {
        self.finish(
            137,
            Err("container init exited: the process was killed with its container".into()),
        );
    }

    fn finish(self: &Arc<Self>, status: i32, outcome: ExitOutcome) {
        let first = self.state.send_if_modified(|s| {
            let running = *s == ProcessState::Running;
            if running {
                *s = ProcessState::Exited(status);
            }
            running
        });
        if !first {
            return; // already exited (e.g. the container was destroyed first)
        }
        let pumps: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.pumps.lock().expect("pumps lock"));
        let me = self.clone();
        tokio::spawn(async move {
            for p in pumps {
                let _ = p.await;
            }
            *me.stdin.lock().await = None;
            me.state.send_replace(ProcessState::Done(outcome));
        });
    }

    pub fn state(&self) -> ProcessState {
        self.state.borrow().clone()
    }

    pub fn is_running(&self) -> bool {
        *self.state.borrow() == ProcessState::Running
    }

    /// Resolves with the outcome once the output is drained.
    pub fn wait(&self) -> oneshot::Receiver<ExitOutcome> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state.subscribe();
        tokio::spawn(async move {
            if let Ok(s) = state.wait_for(|s| matches!(s, ProcessState::Done(_))).await {
                if let ProcessState::Done(outcome) = &*s {
                    let _ = tx.send(outcome.clone());
                }
            }
        });
        rx
    }

    /// A new Run/Attach session: its stdout and stderr receive output from now on (so a Run
    /// that subscribes before the spawn gets the very first bytes) and wait to be claimed.
    pub fn open_session(self: &Arc<Self>, stream_id: &str) {
        let streams = Unclaimed {
            stdout: Some(self.stdout.subscribe(stream_id)),
            stderr: Some(self.stderr.subscribe(stream_id)),
        };
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(stream_id.to_string(), streams);
        // Forget what was not claimed a while after the process is done.
        let (me, stream_id) = (Arc::downgrade(self), stream_id.to_string());
        let mut state = self.state.subscribe();
        tokio::spawn(async move {
            let _ = state.wait_for(|s| matches!(s, ProcessState::Done(_))).await;
            drop(state);
            tokio::time::sleep(STREAM_RETENTION).await;
            if let Some(me) = me.upgrade() {
                me.sessions
                    .lock()
                    .expect("sessions lock")
                    .remove(&stream_id);
            }
        });
    }

    /// Claim one output stream of a session; `None` if unknown, already claimed or forgotten.
    pub fn claim(&self, stream_id: &str, which: Output) -> Option<PendingStream> {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let unclaimed = sessions.get_mut(stream_id)?;
        let taken = match which {
            Output::Stdout => unclaimed.stdout.take(),
            Output::Stderr => unclaimed.stderr.take(),
        };
        if unclaimed.stdout.is_none() && unclaimed.stderr.is_none() {
            sessions.remove(stream_id);
        }
        taken
    }

    /// Serve one session's inbound messages until its client goes away, then detach.
    pub async fn serve_input(
        self: Arc<Self>,
        stream_id: String,
        mut input: mpsc::UnboundedReceiver<ProcessInput>,
    ) {
        while let Some(msg) = input.recv().await {
            match msg {
                ProcessInput::Stdin(data) => {
                    if let Some(sink) = self.stdin.lock().await.as_ref() {
                        let _ = sink.write_all(&data).await;
                    }
                }
                ProcessInput::StdinEof => self.close_stdin().await,
                ProcessInput::Resize(ws) => {
                    if let Some(t) = &self.tty {
                        t.resize(ws.columns, ws.rows);
                    }
                }
                ProcessInput::ResizeWithoutSize => {}
                ProcessInput::Signal(s) => self.signal(s).await,
                // Go closes stdin and stops reading; we close stdin and keep listening.
                ProcessInput::Unknown => self.close_stdin().await,
            }
        }
        // The client disconnected: close stdin (the process sees EOF, as Guardian does) and
        // stop its streams; the process itself keeps running.
        self.close_stdin().await;
        self.stdout.unsubscribe(&stream_id);
        self.stderr.unsubscribe(&stream_id);
        // A client that leaves while its process runs has detached: the streams it never
        // claimed never will be. After an exit the server itself closed the session, and the
        // client may still be about to fetch the output: keep them (STREAM_RETENTION).
        if self.is_running() {
            self.sessions
                .lock()
                .expect("sessions lock")
                .remove(&stream_id);
        }
    }

    async fn close_stdin(&self) {
        let mut stdin = self.stdin.lock().await;
        if let Some(sink) = stdin.as_ref() {
            sink.eof().await;
        }
        if self.tty.is_none() && stdin.take().is_some() && self.is_running() {
            // garden-init holds a copy for a restarted gardend: the process sees EOF only
            // once that one is closed too.
            let _ = self.sandbox.close_stdin(&self.id).await;
        }
    }

    pub async fn signal(&self, signal: Signal) {
        let signal = match signal {
            Signal::Terminate => kernel::Signal::Terminate,
            Signal::Kill => kernel::Signal::Kill,
        };
        if self.is_running() {
            let _ = self.sandbox.signal(&self.id, signal).await;
        }
    }
}

struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

/// A pty from the container's own devpts instance (`/dev/pts` inside it), so `tty` and
/// ttyname(3) work in the container. TIOCGPTPEER opens the slave through the master, which
/// works across mount namespaces.
fn container_pty(master: OwnedFd, size: &libc::winsize) -> std::io::Result<Pty> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let unlock: libc::c_int = 0;
    // SAFETY: ioctls on our own ptmx descriptor with correctly typed arguments.
    unsafe {
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let slave = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let slave = OwnedFd::from_raw_fd(slave);
        if libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, size) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Pty { master, slave })
    }
}

async fn close_hub(hub: Arc<Hub>) {
    hub.close_now();
}
