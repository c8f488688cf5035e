//! The narrow slice of Garden the executor needs, behind a trait so the step engine can be
//! tested against an in-memory fake and driven in production by `garden_client::Client`.

use std::sync::Arc;

use async_trait::async_trait;
use garden_api::{ContainerInfo, ContainerSpec, ProcessSpec, Signal};
use tokio::io::{AsyncRead, AsyncWrite};

/// A failed Garden call, flattened to its message (the executor only reports it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub message: String,
}

impl BackendError {
    pub fn new(message: impl Into<String>) -> Self {
        BackendError {
            message: message.into(),
        }
    }
}

pub type BackendResult<T> = Result<T, BackendError>;

/// Where a process's output goes; `None` = not wanted.
#[derive(Default)]
pub struct Io {
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
}

/// Sends signals to a running process while another task waits for it.
#[async_trait]
pub trait Signaller: Send + Sync {
    async fn signal(&self, signal: Signal) -> BackendResult<()>;
}

/// A process started in a container.
#[async_trait]
pub trait RunningProcess: Send {
    fn id(&self) -> String;
    /// Exit status, once the process exited and its output streams ended.
    async fn wait(&mut self) -> BackendResult<i32>;
    fn signaller(&self) -> Arc<dyn Signaller>;
}

/// Everything the executor asks of Garden.
#[async_trait]
pub trait Garden: Send + Sync + 'static {
    async fn create(&self, spec: &ContainerSpec) -> BackendResult<String>;
    async fn destroy(&self, handle: &str) -> BackendResult<()>;
    async fn info(&self, handle: &str) -> BackendResult<ContainerInfo>;
    async fn run(
        &self,
        handle: &str,
        spec: &ProcessSpec,
        io: Io,
    ) -> BackendResult<Box<dyn RunningProcess>>;
    /// Extract an uncompressed tar stream into `destination` as `user`.
    async fn stream_in(
        &self,
        handle: &str,
        user: &str,
        destination: &str,
        tar: Box<dyn AsyncRead + Send + Unpin>,
    ) -> BackendResult<()>;
    /// A tar stream of `source` (as `tar -C dirname -c basename`).
    async fn stream_out(
        &self,
        handle: &str,
        user: &str,
        source: &str,
    ) -> BackendResult<Box<dyn AsyncRead + Send + Unpin>>;
}

#[cfg(feature = "client")]
mod client_impl {
    use super::*;
    use garden_client::{Client, ClientError, Process, ProcessControl, ProcessIo};

    fn err(e: ClientError) -> BackendError {
        BackendError::new(e.to_string())
    }

    struct ClientProcess {
        process: Process,
    }

    struct ClientSignaller(ProcessControl);

    #[async_trait]
    impl Signaller for ClientSignaller {
        async fn signal(&self, signal: Signal) -> BackendResult<()> {
            self.0.signal(signal).await.map_err(err)
        }
    }

    #[async_trait]
    impl RunningProcess for ClientProcess {
        fn id(&self) -> String {
            self.process.id().to_string()
        }
        async fn wait(&mut self) -> BackendResult<i32> {
            self.process.wait().await.map_err(err)
        }
        fn signaller(&self) -> Arc<dyn Signaller> {
            Arc::new(ClientSignaller(self.process.control()))
        }
    }

    #[async_trait]
    impl Garden for Client {
        async fn create(&self, spec: &ContainerSpec) -> BackendResult<String> {
            Client::create(self, spec).await.map_err(err)
        }
        async fn destroy(&self, handle: &str) -> BackendResult<()> {
            Client::destroy(self, handle).await.map_err(err)
        }
        async fn info(&self, handle: &str) -> BackendResult<ContainerInfo> {
            Client::info(self, handle).await.map_err(err)
        }
        async fn run(
            &self,
            handle: &str,
            spec: &ProcessSpec,
            io: Io,
        ) -> BackendResult<Box<dyn RunningProcess>> {
            let io = ProcessIo {
                stdin: None,
                stdout: io.stdout,
                stderr: io.stderr,
            };
            let process = Client::run(self, handle, spec, io).await.map_err(err)?;
            Ok(Box::new(ClientProcess { process }))
        }
        async fn stream_in(
            &self,
            handle: &str,
            user: &str,
            destination: &str,
            tar: Box<dyn AsyncRead + Send + Unpin>,
        ) -> BackendResult<()> {
            Client::stream_in(self, handle, user, destination, tar)
                .await
                .map_err(err)
        }
        async fn stream_out(
            &self,
            handle: &str,
            user: &str,
            source: &str,
        ) -> BackendResult<Box<dyn AsyncRead + Send + Unpin>> {
            Client::stream_out(self, handle, user, source)
                .await
                .map_err(err)
        }
    }
}

pub mod fake;
