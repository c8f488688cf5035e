//! Log lines of a container, tagged with their source (`APP/PROC/WEB`, `STG`, `HEALTH`...) and
//! instance, delivered to a pluggable sink. Process output is framed as Diego does: split at
//! every `\n` or `\r`, empty segments dropped, partial lines kept until a line end or an
//! explicit flush, and over-long lines cut into pieces of at most `max_line_bytes` without
//! splitting a UTF-8 sequence.

use std::io::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;

/// Diego's cap on one log message.
pub const DEFAULT_MAX_LINE_BYTES: usize = 61440;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Stream {
    Out,
    Err,
}

/// One log message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogMessage {
    pub text: String,
    /// The step's source name, e.g. `APP/PROC/WEB`.
    pub source_type: String,
    /// The container's log guid.
    pub source_id: String,
    /// The instance index, as text.
    pub instance_id: String,
    pub stream: Stream,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: i64,
}

/// Where log messages go.
pub trait LogSink: Send + Sync {
    fn emit(&self, msg: LogMessage);
}

/// Prints `[SOURCE/instance] text` to the process's stdout or stderr (the CLI's default).
#[derive(Debug, Default)]
pub struct StdioSink;

impl LogSink for StdioSink {
    fn emit(&self, msg: LogMessage) {
        let line = format!("[{}/{}] {}\n", msg.source_type, msg.instance_id, msg.text);
        let _ = match msg.stream {
            Stream::Out => std::io::stdout().lock().write_all(line.as_bytes()),
            Stream::Err => std::io::stderr().lock().write_all(line.as_bytes()),
        };
    }
}

/// Sends every message into a channel (for an agent or the HTTP event stream).
#[derive(Debug, Clone)]
pub struct ChannelSink(pub tokio::sync::mpsc::UnboundedSender<LogMessage>);

impl LogSink for ChannelSink {
    fn emit(&self, msg: LogMessage) {
        let _ = self.0.send(msg);
    }
}

/// Keeps every message in memory (tests, and captured health-check output).
#[derive(Debug, Clone, Default)]
pub struct MemorySink(Arc<Mutex<Vec<LogMessage>>>);

impl MemorySink {
    pub fn messages(&self) -> Vec<LogMessage> {
        self.0.lock().unwrap().clone()
    }
    /// `(stream, source, text)` triples, handy for assertions.
    pub fn lines(&self) -> Vec<(Stream, String, String)> {
        self.messages()
            .into_iter()
            .map(|m| (m.stream, m.source_type, m.text))
            .collect()
    }
    pub fn texts(&self) -> Vec<String> {
        self.messages().into_iter().map(|m| m.text).collect()
    }
}

impl LogSink for MemorySink {
    fn emit(&self, msg: LogMessage) {
        self.0.lock().unwrap().push(msg);
    }
}

/// Drops everything.
#[derive(Debug, Default)]
pub struct NullSink;

impl LogSink for NullSink {
    fn emit(&self, _msg: LogMessage) {}
}

/// A container's log configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    #[serde(default)]
    pub guid: String,
    #[serde(default)]
    pub index: u32,
    /// Root source name; empty = `LOG`.
    #[serde(default)]
    pub source_name: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            guid: String::new(),
            index: 0,
            source_name: "LOG".into(),
        }
    }
}

/// Writes messages for one source; cheap to clone.
#[derive(Clone)]
pub struct LogStreamer {
    sink: Arc<dyn LogSink>,
    source: String,
    guid: String,
    instance: String,
    max_line: usize,
}

impl std::fmt::Debug for LogStreamer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStreamer")
            .field("source", &self.source)
            .field("guid", &self.guid)
            .finish()
    }
}

impl LogStreamer {
    pub fn new(sink: Arc<dyn LogSink>, config: &LogConfig) -> Self {
        let source = if config.source_name.is_empty() {
            "LOG".to_string()
        } else {
            config.source_name.clone()
        };
        LogStreamer {
            sink,
            source,
            guid: config.guid.clone(),
            instance: config.index.to_string(),
            max_line: DEFAULT_MAX_LINE_BYTES,
        }
    }

    /// A streamer whose messages are dropped.
    pub fn null() -> Self {
        LogStreamer::new(Arc::new(NullSink), &LogConfig::default())
    }

    pub fn with_max_line_bytes(mut self, max: usize) -> Self {
        self.max_line = max.max(4);
        self
    }

    /// The same streamer under another source; an empty name keeps the current one.
    pub fn with_source(&self, source: &str) -> Self {
        let mut s = self.clone();
        if !source.is_empty() {
            s.source = source.to_string();
        }
        s
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Log `text` on stdout, one message per line.
    pub fn out(&self, text: &str) {
        self.emit_text(Stream::Out, text.as_bytes());
    }

    /// Log `text` on stderr, one message per line.
    pub fn err(&self, text: &str) {
        self.emit_text(Stream::Err, text.as_bytes());
    }

    fn emit_text(&self, stream: Stream, bytes: &[u8]) {
        for seg in bytes.split(|b| *b == b'\n' || *b == b'\r') {
            self.emit_segment(stream, seg);
        }
    }

    fn emit_segment(&self, stream: Stream, mut seg: &[u8]) {
        while !seg.is_empty() {
            let cut = utf8_cut(seg, self.max_line);
            let (piece, rest) = seg.split_at(cut);
            seg = rest;
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or_default();
            self.sink.emit(LogMessage {
                text: String::from_utf8_lossy(piece).into_owned(),
                source_type: self.source.clone(),
                source_id: self.guid.clone(),
                instance_id: self.instance.clone(),
                stream,
                timestamp,
            });
        }
    }

    /// An `AsyncWrite` that frames process output into messages on `stream`.
    pub fn writer(&self, stream: Stream) -> LineWriter {
        LineWriter {
            streamer: self.clone(),
            stream,
            partial: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

/// Largest prefix length `<= max` that does not split a UTF-8 sequence (at least one byte).
fn utf8_cut(seg: &[u8], max: usize) -> usize {
    if seg.len() <= max {
        return seg.len();
    }
    let mut cut = max;
    // Step back over continuation bytes (10xxxxxx) so the piece ends on a char boundary.
    while cut > 0 && (seg[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    if cut == 0 {
        max
    } else {
        cut
    }
}

/// Line-framing writer; clones share the partial-line buffer so the owner can flush it after
/// the writer itself was handed to a process.
#[derive(Clone)]
pub struct LineWriter {
    streamer: LogStreamer,
    stream: Stream,
    partial: Arc<Mutex<Vec<u8>>>,
}

impl LineWriter {
    fn push(&self, mut data: &[u8]) {
        let mut partial = self.partial.lock().unwrap();
        while let Some(pos) = data.iter().position(|b| *b == b'\n' || *b == b'\r') {
            partial.extend_from_slice(&data[..pos]);
            let line = std::mem::take(&mut *partial);
            self.streamer.emit_segment(self.stream, &line);
            data = &data[pos + 1..];
        }
        partial.extend_from_slice(data);
        // A partial line that already exceeds the cap is emitted in full pieces.
        while partial.len() > self.streamer.max_line {
            let cut = utf8_cut(&partial, self.streamer.max_line);
            let piece: Vec<u8> = partial.drain(..cut).collect();
            self.streamer.emit_segment(self.stream, &piece);
        }
    }

    /// Emit a buffered partial line, if any.
    pub fn flush_partial(&self) {
        let line = std::mem::take(&mut *self.partial.lock().unwrap());
        self.streamer.emit_segment(self.stream, &line);
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    /// Deliberately does not emit a partial line: only line ends and `flush_partial` do.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_partial();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn streamer(sink: &MemorySink) -> LogStreamer {
        LogStreamer::new(
            Arc::new(sink.clone()),
            &LogConfig {
                guid: "g".into(),
                index: 3,
                source_name: String::new(),
            },
        )
    }

    #[tokio::test]
    async fn frames_on_newline_and_carriage_return() {
        let sink = MemorySink::default();
        let s = streamer(&sink).with_source("APP");
        let w = s.writer(Stream::Out);
        let mut w2 = w.clone();
        w2.write_all(b"one\ntw").await.unwrap();
        w2.write_all(b"o\r\rthree").await.unwrap();
        w2.flush().await.unwrap();
        assert_eq!(sink.texts(), vec!["one", "two"]);
        w.flush_partial();
        assert_eq!(sink.texts(), vec!["one", "two", "three"]);
        let m = &sink.messages()[0];
        assert_eq!(
            (
                m.source_type.as_str(),
                m.source_id.as_str(),
                m.instance_id.as_str()
            ),
            ("APP", "g", "3")
        );
    }

    #[test]
    fn with_source_empty_keeps_parent_and_root_defaults_to_log() {
        let sink = MemorySink::default();
        let s = streamer(&sink);
        assert_eq!(s.source(), "LOG");
        assert_eq!(s.with_source("").source(), "LOG");
        assert_eq!(s.with_source("X").with_source("").source(), "X");
    }

    #[test]
    fn long_lines_are_cut_on_char_boundaries() {
        let sink = MemorySink::default();
        let s = streamer(&sink).with_max_line_bytes(5);
        s.out("abcdéfghi");
        // "abcd" + "é" would be 6 bytes: the cut steps back before the two-byte 'é'.
        assert_eq!(sink.texts(), vec!["abcd", "éfgh", "i"]);
    }
}
