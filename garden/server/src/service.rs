//! The boundary between the HTTP layer (`api/`, `http/`) and the core (`garden.rs`).
//!
//! The HTTP side only parses bytes into a [`Request`] and renders the [`Reply`] or
//! [`GardenError`] it gets back; it never touches container state. The core never sees HTTP.
//! Streams cross the boundary as channels so that neither side borrows the other's I/O.

use std::future::Future;
use std::io;

use bytes::Bytes;
use garden_api::{
    BindMount, ContainerSpec, GardenError, NetInRequest, NetOutRule, ProcessInput, ProcessSpec,
};
use tokio::sync::{mpsc, oneshot};

/// A request body streamed in chunks (StreamIn's tar). `Err` = the client's body was cut
/// short or malformed (e.g. bad chunk framing).
pub type Body = mpsc::Receiver<io::Result<Bytes>>;

/// Every route, parsed. Path parameters are already percent-decoded.
#[derive(Debug)]
pub enum Request {
    Ping,
    Capacity,
    /// Property filters in order; the first value of a repeated key wins (the parser dedups).
    List {
        filter: Vec<(String, String)>,
    },
    Create(Box<ContainerSpec>),
    Info {
        handle: String,
    },
    BulkInfo {
        handles: Vec<String>,
    },
    BulkMetrics {
        handles: Vec<String>,
    },
    Destroy {
        handle: String,
    },
    Stop {
        handle: String,
        kill: bool,
    },
    StreamIn {
        handle: String,
        user: String,
        destination: String,
        body: Body,
    },
    StreamOut {
        handle: String,
        user: String,
        source: String,
    },
    CurrentBandwidthLimits {
        handle: String,
    },
    CurrentCpuLimits {
        handle: String,
    },
    CurrentDiskLimits {
        handle: String,
    },
    CurrentMemoryLimits {
        handle: String,
    },
    NetIn {
        handle: String,
        request: NetInRequest,
    },
    NetOut {
        handle: String,
        rule: NetOutRule,
    },
    BulkNetOut {
        handle: String,
        rules: Vec<NetOutRule>,
    },
    /// Grace time in nanoseconds.
    SetGraceTime {
        handle: String,
        grace_time: u64,
    },
    Properties {
        handle: String,
    },
    Property {
        handle: String,
        key: String,
    },
    SetProperty {
        handle: String,
        key: String,
        value: String,
    },
    RemoveProperty {
        handle: String,
        key: String,
    },
    Metrics {
        handle: String,
    },
    Run {
        handle: String,
        spec: Box<ProcessSpec>,
    },
    Attach {
        handle: String,
        process_id: String,
    },
    Stdout {
        handle: String,
        process_id: String,
        stream_id: String,
    },
    Stderr {
        handle: String,
        process_id: String,
        stream_id: String,
    },
}

/// What the core answers.
pub enum Reply {
    /// A JSON value already encoded with [`garden_api::to_wire`] (`{}` at the least).
    Json(Vec<u8>),
    /// StreamOut: tar bytes; `Err` after streaming started just truncates the body.
    Tar(mpsc::Receiver<io::Result<Bytes>>),
    /// Run (status 201) and Attach (status 200).
    Process(ProcessSession),
    /// Stdout / Stderr: raw output bytes; the channel closing means EOF.
    Output(OutputStream),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Json(b) => write!(f, "Json({})", String::from_utf8_lossy(b)),
            Reply::Tar(_) => write!(f, "Tar"),
            Reply::Process(s) => write!(f, "Process({}, {})", s.process_id, s.stream_id),
            Reply::Output(_) => write!(f, "Output"),
        }
    }
}

/// How a process ended, as the terminal message on a Run/Attach connection reports it.
pub type ExitOutcome = Result<i32, String>;

/// A Run or Attach that succeeded. The HTTP layer writes the response head and the first
/// message `{"process_id","stream_id"}`, forwards every inbound message to `input`, and when
/// `exit` resolves writes the terminal message and closes the connection.
///
/// Dropping `input` (the client went away) detaches: the core closes the process's stdin and
/// stops this session's streams; the process keeps running. `guard` keeps the container's
/// grace timer paused for as long as the session lives.
pub struct ProcessSession {
    pub process_id: String,
    pub stream_id: String,
    pub input: mpsc::UnboundedSender<ProcessInput>,
    pub exit: oneshot::Receiver<ExitOutcome>,
    pub guard: ActivityGuard,
}

/// A stdout or stderr stream of one Run/Attach session.
pub struct OutputStream {
    pub chunks: mpsc::Receiver<Bytes>,
    pub guard: ActivityGuard,
}

/// Opaque token that pauses a container's grace timer while alive. `None` = no container.
pub struct ActivityGuard(pub Option<Box<dyn Send + Sync>>);

impl ActivityGuard {
    pub fn none() -> Self {
        ActivityGuard(None)
    }
}

/// The core, as the HTTP layer sees it.
pub trait Service: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Result<Reply, GardenError>> + Send;
}

/// Bind mounts of a process spec are only allowed with an image (peas).
pub fn bind_mounts_need_image(mounts: &[BindMount], image_uri: &str) -> Result<(), GardenError> {
    if !mounts.is_empty() && image_uri.is_empty() {
        return Err(GardenError::generic(
            "Running a process with bind mounts and no image provided is not allowed",
        ));
    }
    Ok(())
}
