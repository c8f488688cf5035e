//! The listener and accept loop: one task per connection, a cap on concurrent connections, and
//! a graceful stop that detaches process sessions instead of killing anything (containers and
//! their processes outlive the server).

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::api::{serve_connection, ConnOptions};
use crate::config::Config;
use crate::service::Service;

/// Where gardend listens.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    /// The path is removed again when the server stops.
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

/// Binding failed; the message names the address.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: {source}")]
    Tcp { addr: String, source: io::Error },
    #[error("cannot listen on unix socket {}: {source}", path.display())]
    Unix { path: PathBuf, source: io::Error },
    #[error("unix socket {} is in use by a running server", path.display())]
    SocketInUse { path: PathBuf },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
}

impl Listener {
    /// The unix socket when `bind_socket` is set, else TCP on `bind_ip:bind_port`.
    pub async fn bind(config: &Config) -> Result<Listener, BindError> {
        match &config.bind_socket {
            Some(path) => Listener::unix(path),
            None => Listener::tcp(&config.bind_ip, config.bind_port).await,
        }
    }

    pub async fn tcp(ip: &str, port: u16) -> Result<Listener, BindError> {
        let addr = if ip.contains(':') {
            format!("[{ip}]:{port}")
        } else {
            format!("{ip}:{port}")
        };
        match TcpListener::bind(&addr).await {
            Ok(listener) => Ok(Listener::Tcp(listener)),
            Err(source) => Err(BindError::Tcp { addr, source }),
        }
    }

    /// Bind a unix socket, replacing a stale socket file left by a previous run (but not a live
    /// one, nor a file that is not a socket), and open it to every local user like gdn (0777).
    pub fn unix(path: &Path) -> Result<Listener, BindError> {
        let err = |source| BindError::Unix {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(BindError::SocketInUse {
                        path: path.to_path_buf(),
                    });
                }
                std::fs::remove_file(path).map_err(err)?;
            }
            Ok(_) => {
                return Err(BindError::NotASocket {
                    path: path.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).map_err(err)?;
        Ok(Listener::Unix {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// For logs: `127.0.0.1:7777` or the socket path.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|e| format!("tcp ({e})")),
            Listener::Unix { path, .. } => path.display().to_string(),
        }
    }

    /// The bound TCP port (tests bind port 0).
    pub fn local_port(&self) -> Option<u16> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok().map(|a| a.port()),
            Listener::Unix { .. } => None,
        }
    }
}

/// Server-wide limits.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one TCP client address may hold; beyond it a new one is answered 429.
    pub max_per_client: usize,
    /// After shutdown, how long running plain requests may take before they are aborted.
    pub drain_timeout: Duration,
    pub conn: ConnOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_connections: 4096,
            max_per_client: 0,
            drain_timeout: Duration::from_secs(10),
            conn: ConnOptions::default(),
        }
    }
}

impl ServeOptions {
    pub fn from_config(config: &Config) -> Self {
        ServeOptions {
            max_connections: config.max_connections.max(1),
            max_per_client: config.max_connections_per_client,
            conn: ConnOptions {
                head_timeout: config.request_timeout,
                body_idle: config.body_idle_timeout,
                ..ConnOptions::default()
            },
            ..ServeOptions::default()
        }
    }
}

/// Serve with default limits until `shutdown` resolves.
pub async fn serve<S: Service>(
    listener: Listener,
    service: Arc<S>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, service, ServeOptions::default(), shutdown).await
}

/// Accept connections until `shutdown` resolves; then stop accepting, detach process sessions
/// and streams at once, give plain requests `drain_timeout` to finish, and abort the rest.
pub async fn serve_with<S: Service>(
    listener: Listener,
    service: Arc<S>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let limit = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let conn_options = Arc::new(options.conn.clone());
    let per_client = PerClient::new(options.max_per_client);
    let mut tasks = JoinSet::new();
    tracing::info!(address = %listener.describe(), "serving the garden API");
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listener) => accepted,
        };
        while let Some(done) = tasks.try_join_next() {
            log_task_end(done);
        }
        match accepted {
            Ok(Accepted::Tcp(stream)) => {
                let Some(slot) = per_client.enter(&stream) else {
                    tasks.spawn(refuse_busy_client(stream, permit));
                    continue;
                };
                let permit = (permit, slot);
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!("cannot set TCP_NODELAY: {e}");
                }
                spawn_connection(
                    &mut tasks,
                    stream,
                    &service,
                    &conn_options,
                    &stop_rx,
                    permit,
                );
            }
            Ok(Accepted::Unix(stream)) => spawn_connection(
                &mut tasks,
                stream,
                &service,
                &conn_options,
                &stop_rx,
                permit,
            ),
            Err(e) => {
                // Usually fd exhaustion: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if let Listener::Unix { path, .. } = &listener {
        let _ = std::fs::remove_file(path);
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while let Some(done) = tasks.try_join_next() {
        log_task_end(done);
    }
    tracing::info!(
        connections = tasks.len(),
        "stopped accepting; draining connections"
    );
    let drained = tokio::time::timeout(options.drain_timeout, async {
        while let Some(done) = tasks.join_next().await {
            log_task_end(done);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "connections still busy after the drain timeout; aborting them"
        );
        tasks.shutdown().await;
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Accepted::Tcp(s)),
        Listener::Unix { listener, .. } => listener.accept().await.map(|(s, _)| Accepted::Unix(s)),
    }
}

/// Connections per TCP client address, so one client cannot take every connection slot.
#[derive(Clone)]
struct PerClient {
    limit: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
}

/// One connection's place in [`PerClient`], given back on drop.
struct ClientSlot {
    ip: Option<std::net::IpAddr>,
    clients: PerClient,
}

impl PerClient {
    fn new(limit: usize) -> Self {
        PerClient {
            limit,
            open: Arc::default(),
        }
    }

    /// A slot for the stream's peer, or `None` when it already holds `limit` connections.
    fn enter(&self, stream: &tokio::net::TcpStream) -> Option<ClientSlot> {
        let ip = stream
            .peer_addr()
            .ok()
            .map(|a| a.ip())
            .filter(|_| self.limit > 0);
        if let Some(ip) = ip {
            let mut open = self.open.lock().expect("per-client lock");
            let n = open.entry(ip).or_default();
            if *n >= self.limit {
                return None;
            }
            *n += 1;
        }
        Some(ClientSlot {
            ip,
            clients: self.clone(),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut open = self.clients.open.lock().expect("per-client lock");
            if let Some(n) = open.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&ip);
                }
            }
        }
    }
}

/// 429 with a Garden error body to a client over its connection limit, then close.
async fn refuse_busy_client(
    mut stream: tokio::net::TcpStream,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    use tokio::io::AsyncWriteExt;
    let peer = stream
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    tracing::warn!(client = peer, "too many connections from one client");
    let err = garden_api::GardenError::generic(format!("too many connections from {peer}"));
    let reply = crate::http::ResponseHead::new(429)
        .header("Content-Type", "application/json")
        .date()
        .close()
        .with_body(&garden_api::to_wire(&err.to_body()));
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&reply)).await;
    let _ = stream.shutdown().await;
    drop(permit);
}

fn spawn_connection<S, IO, P: Send + 'static>(
    tasks: &mut JoinSet<()>,
    io: IO,
    service: &Arc<S>,
    options: &Arc<ConnOptions>,
    stop: &watch::Receiver<bool>,
    permit: P,
) where
    S: Service,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (service, options, stop) = (Arc::clone(service), Arc::clone(options), stop.clone());
    tasks.spawn(async move {
        serve_connection(io, &*service, &options, stop).await;
        drop(permit);
    });
}

fn log_task_end(result: Result<(), tokio::task::JoinError>) {
    if let Err(e) = result {
        if e.is_panic() {
            tracing::error!("connection task panicked: {e}");
        }
    }
}
