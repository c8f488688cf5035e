//! Run's body (`ProcessSpec`) and the messages exchanged on a hijacked Run/Attach connection.

use serde::{Deserialize, Serialize};

use crate::de::{is_default, null};
use crate::spec::{BindMount, CpuLimits, ImageRef, MemoryLimits};

/// Run's body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Process id; empty = the server generates one.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub id: String,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub path: String,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub args: Vec<String>,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub env: Vec<String>,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub dir: String,
    /// `name`, `uid:gid` or `name:group`; empty = root.
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub user: String,
    #[serde(default, deserialize_with = "null")]
    pub rlimits: ResourceLimits,
    /// Peas only: absent = share the container's limits, present (even empty) = own limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ProcessLimits>,
    /// Present = allocate a pty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySpec>,
    #[serde(default, deserialize_with = "null")]
    pub image: ImageRef,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub bind_mounts: Vec<BindMount>,
}

/// setrlimit values (soft = hard). A key is present only when set; 0 is meaningful.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimits {
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    pub as_: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsize: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memlock: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgqueue: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nice: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nproc: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtprio: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigpending: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessLimits {
    #[serde(default, deserialize_with = "null")]
    pub cpu_limits: CpuLimits,
    #[serde(default, deserialize_with = "null")]
    pub memory_limits: MemoryLimits,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_size: Option<WindowSize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub columns: u16,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub rows: u16,
}

/// Signal numbers on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Kill,
}

impl Signal {
    pub const TERMINATE: u8 = 0;
    pub const KILL: u8 = 1;

    pub fn from_wire(n: u8) -> Option<Signal> {
        match n {
            0 => Some(Signal::Terminate),
            1 => Some(Signal::Kill),
            _ => None,
        }
    }

    pub fn to_wire(self) -> u8 {
        match self {
            Signal::Terminate => 0,
            Signal::Kill => 1,
        }
    }
}

/// Source values on the wire: stdin is the only one clients send today.
pub const SOURCE_STDIN: u8 = 0;
pub const SOURCE_STDOUT: u8 = 1;
pub const SOURCE_STDERR: u8 = 2;

/// Every message on a Run/Attach connection, both directions. Pointer-like fields are present
/// whenever set, including the value 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPayload {
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub process_id: String,
    #[serde(default, deserialize_with = "null", skip_serializing_if = "is_default")]
    pub stream_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<u8>,
}

/// What a client→server message on the main connection asks for, in the Go server's dispatch
/// order (tty, then source, then signal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessInput {
    Resize(WindowSize),
    /// A tty message without a window size: ignored.
    ResizeWithoutSize,
    Stdin(Vec<u8>),
    StdinEof,
    Signal(Signal),
    /// Anything else (unknown signal, empty message): Go closes stdin and stops reading.
    Unknown,
}

impl ProcessPayload {
    pub fn classify(&self) -> ProcessInput {
        if let Some(tty) = &self.tty {
            return match tty.window_size {
                Some(ws) => ProcessInput::Resize(ws),
                None => ProcessInput::ResizeWithoutSize,
            };
        }
        if self.source.is_some() {
            return match &self.data {
                Some(d) => ProcessInput::Stdin(d.as_bytes().to_vec()),
                None => ProcessInput::StdinEof,
            };
        }
        if let Some(sig) = self.signal {
            return match Signal::from_wire(sig) {
                Some(s) => ProcessInput::Signal(s),
                None => ProcessInput::Unknown,
            };
        }
        ProcessInput::Unknown
    }

    pub fn first(process_id: &str, stream_id: &str) -> Self {
        ProcessPayload {
            process_id: process_id.into(),
            stream_id: stream_id.into(),
            ..Default::default()
        }
    }

    pub fn exit(process_id: &str, status: i32) -> Self {
        ProcessPayload {
            process_id: process_id.into(),
            exit_status: Some(status),
            ..Default::default()
        }
    }

    pub fn failure(process_id: &str, error: &str) -> Self {
        ProcessPayload {
            process_id: process_id.into(),
            error: Some(error.into()),
            ..Default::default()
        }
    }

    pub fn stdin(process_id: &str, data: &[u8]) -> Self {
        ProcessPayload {
            process_id: process_id.into(),
            source: Some(SOURCE_STDIN),
            data: Some(String::from_utf8_lossy(data).into_owned()),
            ..Default::default()
        }
    }

    pub fn stdin_eof(process_id: &str) -> Self {
        ProcessPayload {
            process_id: process_id.into(),
            source: Some(SOURCE_STDIN),
            ..Default::default()
        }
    }

    pub fn signal(process_id: &str, signal: Signal) -> Self {
        ProcessPayload {
            process_id: process_id.into(),
            signal: Some(signal.to_wire()),
            ..Default::default()
        }
    }

    pub fn resize(process_id: &str, size: WindowSize) -> Self {
        ProcessPayload {
            process_id: process_id.into(),
            tty: Some(TtySpec {
                window_size: Some(size),
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_spec_matches_go_client_bytes() {
        let spec = ProcessSpec {
            id: "p1".into(),
            path: "/bin/sh".into(),
            args: vec!["-c".into(), "x".into()],
            tty: Some(TtySpec {
                window_size: Some(WindowSize {
                    columns: 80,
                    rows: 24,
                }),
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&spec).unwrap(),
            r#"{"id":"p1","path":"/bin/sh","args":["-c","x"],"rlimits":{},"tty":{"window_size":{"columns":80,"rows":24}},"image":{}}"#
        );
    }

    #[test]
    fn payload_zero_values_are_kept() {
        assert_eq!(
            serde_json::to_string(&ProcessPayload::stdin_eof("p1")).unwrap(),
            r#"{"process_id":"p1","source":0}"#
        );
        assert_eq!(
            serde_json::to_string(&ProcessPayload::exit("p", 0)).unwrap(),
            r#"{"process_id":"p","exit_status":0}"#
        );
        assert_eq!(
            serde_json::to_string(&ProcessPayload::signal("p", Signal::Terminate)).unwrap(),
            r#"{"process_id":"p","signal":0}"#
        );
    }

    #[test]
    fn classify_follows_go_dispatch_order() {
        let p: ProcessPayload =
            serde_json::from_str(r#"{"process_id":"p","source":0,"data":"hi"}"#).unwrap();
        assert_eq!(p.classify(), ProcessInput::Stdin(b"hi".to_vec()));
        let p: ProcessPayload = serde_json::from_str(r#"{"source":0}"#).unwrap();
        assert_eq!(p.classify(), ProcessInput::StdinEof);
        let p: ProcessPayload = serde_json::from_str(r#"{"signal":1}"#).unwrap();
        assert_eq!(p.classify(), ProcessInput::Signal(Signal::Kill));
        let p: ProcessPayload = serde_json::from_str(r#"{"signal":7}"#).unwrap();
        assert_eq!(p.classify(), ProcessInput::Unknown);
        let p: ProcessPayload =
            serde_json::from_str(r#"{"tty":{"window_size":{"columns":100,"rows":50}},"signal":1}"#)
                .unwrap();
        assert_eq!(
            p.classify(),
            ProcessInput::Resize(WindowSize {
                columns: 100,
                rows: 50
            })
        );
    }
}
