//! gardend's end of the garden-init socket: requests out, replies and exit events in.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use crate::init::proto::{self, FromInit, Received, SpawnFailure, SpawnRequest, ToInit};

/// Why a spawn failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}")]
    ExecutableNotFound(String),
    #[error("{0}")]
    Failed(String),
    #[error("container init is gone")]
    InitGone,
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<i32, SpawnError>>>>>;

/// A connection to one container's garden-init.
pub struct InitClient {
    fd: Arc<AsyncFd<OwnedFd>>,
    pending: Pending,
    /// Where spawn requests too large for a packet are handed over.
    processes_dir: std::path::PathBuf,
}

/// Spawn requests larger than this go through a file (packets are limited by socket buffers).
const INLINE_SPAWN: usize = 64 * 1024;

impl InitClient {
    /// Connect, and start routing replies. Exit events arrive on the returned channel as
    /// (process id, status).
    pub async fn connect(
        path: &Path,
    ) -> std::io::Result<(InitClient, mpsc::UnboundedReceiver<(String, i32)>)> {
        let (client, exits, _) = InitClient::open(path, false).await?;
        Ok((client, exits))
    }

    /// Connect to a garden-init a previous gardend started and take over its live processes'
    /// stdio ends (`ToInit::Adopt`).
    pub async fn adopt(
        path: &Path,
    ) -> std::io::Result<(
        InitClient,
        mpsc::UnboundedReceiver<(String, i32)>,
        Vec<RunningProcess>,
    )> {
        InitClient::open(path, true).await
    }

    async fn open(
        path: &Path,
        adopt: bool,
    ) -> std::io::Result<(
        InitClient,
        mpsc::UnboundedReceiver<(String, i32)>,
        Vec<RunningProcess>,
    )> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        // Connect through a short /proc/self/fd path to the socket's directory, so long
        // handles and deep depots never hit the 108-byte sun_path limit.
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path.file_name().unwrap_or(path.as_os_str());
        let dirfd = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let short = Path::new("/proc/self/fd")
            .join(dirfd.as_raw_fd().to_string())
            .join(name);
        let addr = UnixAddr::new(&short)?;
        // A unix connect to a listening socket completes at once, even when non-blocking.
        connect(fd.as_raw_fd(), &addr)?;
        drop(dirfd);
        // SAFETY: the socket is owned by the AsyncFd and stays open until it is dropped.
        let fd = Arc::new(unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?);
        let pending: Pending = Arc::default();
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let processes_dir = dir.join("processes");
        let client = InitClient {
            fd: fd.clone(),
            pending: pending.clone(),
            processes_dir,
        };
        let mut running = Vec::new();
        if adopt {
            client.send(&ToInit::Adopt, &[]).await?;
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                adopt_answer(&fd, &exits_tx),
            )
            .await
            .map_err(|_| std::io::Error::other("garden-init did not answer Adopt"))?;
            running = answer?;
        }
        tokio::spawn(read_loop(fd, pending, exits_tx));
        Ok((client, exits, running))
    }

    /// Hand spawn requests too large for a packet over in `dir` (where that init reads them).
    pub fn with_processes_dir(mut self, dir: std::path::PathBuf) -> InitClient {
        self.processes_dir = dir;
        self
    }

    /// The process's stdin is closed on gardend's side: garden-init drops its copy too.
    pub async fn close_stdin(&self, id: &str) -> std::io::Result<()> {
        self.send(&ToInit::CloseStdin { id: id.to_string() }, &[])
            .await
    }

    async fn send(&self, msg: &ToInit, fds: &[RawFd]) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                proto::send(fd.get_ref().as_fd(), msg, fds).map_err(std::io::Error::from)
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Start a process; returns its pid inside the container.
    pub async fn spawn(&self, req: SpawnRequest, fds: &[RawFd]) -> Result<i32, SpawnError> {
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending lock")
            .insert(req.id.clone(), tx);
        let id = req.id.clone();
        let json = serde_json::to_vec(&req).expect("spawn request serialises");
        let msg = if json.len() > INLINE_SPAWN {
            let path = self.processes_dir.join(format!(".{id}.spawn"));
            if let Err(e) = tokio::fs::write(&path, &json).await {
                self.pending.lock().expect("pending lock").remove(&id);
                return Err(SpawnError::Failed(format!("hand over process spec: {e}")));
            }
            ToInit::SpawnFile { id: id.clone() }
        } else {
            ToInit::Spawn(req)
        };
        if let Err(e) = self.send(&msg, fds).await {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(if e.raw_os_error() == Some(libc::EMSGSIZE) {
                SpawnError::Failed("process spec too large".into())
            } else {
                SpawnError::InitGone
            });
        }
        rx.await.unwrap_or(Err(SpawnError::InitGone))
    }

    pub async fn signal(&self, id: &str, signal: i32) -> std::io::Result<()> {
        self.send(
            &ToInit::Signal {
                id: id.to_string(),
                signal,
            },
            &[],
        )
        .await
    }

    pub async fn signal_all(&self, signal: i32) -> std::io::Result<()> {
        self.send(&ToInit::SignalAll { signal }, &[]).await
    }
}

/// A live process handed over by garden-init: its id, whether it has a tty, and gardend's ends
/// of its stdio (`[stdout, stderr]` plus stdin unless closed, or `[pty master]`).
pub struct RunningProcess {
    pub id: String,
    pub tty: bool,
    pub fds: Vec<OwnedFd>,
    /// It exited while no gardend was connected, with this status (its output may be left).
    pub exited: Option<i32>,
    /// A pea's image layers (pinned while it runs); empty for other processes.
    pub layers: Vec<std::path::PathBuf>,
}

/// Read garden-init's answer to `Adopt` up to `Adopted`; exits reported meanwhile are passed on.
async fn adopt_answer(
    fd: &AsyncFd<OwnedFd>,
    exits: &mpsc::UnboundedSender<(String, i32)>,
) -> std::io::Result<Vec<RunningProcess>> {
    let mut running = Vec::new();
    loop {
        let mut guard = fd.readable().await?;
        let msg = match guard.try_io(|fd| {
            proto::recv::<FromInit>(fd.get_ref().as_fd()).map_err(std::io::Error::from)
        }) {
            Err(_would_block) => continue,
            Ok(r) => r?,
        };
        match msg {
            Received::Closed => return Err(std::io::Error::other("garden-init closed the socket")),
            Received::Garbage(e) => tracing::warn!(error = %e, "bad message from garden-init"),
            Received::Message(FromInit::Running { id, tty, .. }, fds) => {
                running.push(RunningProcess {
                    id,
                    tty,
                    fds,
                    exited: None,
                    layers: Vec::new(),
                })
            }
            Received::Message(FromInit::Finished { id, status, tty }, fds) => {
                running.push(RunningProcess {
                    id,
                    tty,
                    fds,
                    exited: Some(status),
                    layers: Vec::new(),
                })
            }
            Received::Message(FromInit::Exited { id, status }, _) => {
                let _ = exits.send((id, status));
            }
            Received::Message(FromInit::Adopted, _) => return Ok(running),
            Received::Message(_, _) => {}
        }
    }
}

async fn read_loop(
    fd: Arc<AsyncFd<OwnedFd>>,
    pending: Pending,
    exits: mpsc::UnboundedSender<(String, i32)>,
) {
    loop {
        let Ok(mut guard) = fd.readable().await else {
            break;
        };
        let msg = match guard.try_io(|fd| {
            proto::recv::<FromInit>(fd.get_ref().as_fd()).map_err(std::io::Error::from)
        }) {
            Err(_would_block) => continue,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "read from garden-init");
                break;
            }
            Ok(Ok(Received::Closed)) => break,
            Ok(Ok(Received::Garbage(e))) => {
                tracing::warn!(error = %e, "bad message from garden-init");
                continue;
            }
            Ok(Ok(Received::Message(m, _fds))) => m,
        };
        match msg {
            FromInit::Spawned { id, pid } => {
                if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
                    let _ = tx.send(Ok(pid));
                }
            }
            FromInit::SpawnFailed { id, kind, error } => {
                if let Some(tx) = pending.lock().expect("pending lock").remove(&id) {
                    let _ = tx.send(Err(match kind {
                        SpawnFailure::ExecutableNotFound => SpawnError::ExecutableNotFound(error),
                        SpawnFailure::Other => SpawnError::Failed(error),
                    }));
                }
            }
            FromInit::Exited { id, status } => {
                let _ = exits.send((id, status));
            }
            FromInit::Running { .. } | FromInit::Finished { .. } | FromInit::Adopted => {}
        }
    }
    // Init is gone: fail whoever still waits for a spawn reply.
    for (_, tx) in pending.lock().expect("pending lock").drain() {
        let _ = tx.send(Err(SpawnError::InitGone));
    }
}
