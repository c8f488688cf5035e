//! Run and Attach: the hijacked main connection, which carries JSON messages both ways, and
//! the raw stdout/stderr stream connections (spec §5).

use std::fmt;
use std::sync::Arc;

use garden_api::{to_wire, ProcessPayload, Route, Signal, WindowSize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::conn::{
    dial, error_from_response, prefixed, read_head, request_head, Address, Body, Prefixed, Stream,
};
use crate::error::ClientError;

/// Stdin is sent in messages of at most this many bytes.
const STDIN_CHUNK: usize = 32 * 1024;
/// A single message larger than this means the peer is not speaking Garden.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// What to connect to a process, like Go's `garden.ProcessIO`. `None` means not wanted: no
/// output stream is opened, and without stdin no stdin message (not even EOF) is ever sent,
/// so the process's stdin stays open and empty.
#[derive(Default)]
pub struct ProcessIo {
    pub stdin: Option<Box<dyn AsyncRead + Send + Unpin>>,
    pub stdout: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    pub stderr: Option<Box<dyn AsyncWrite + Send + Unpin>>,
}

impl fmt::Debug for ProcessIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .finish()
    }
}

/// The write side of the main connection, shared by stdin copying and `ProcessControl` so that
/// whole messages never interleave. `None` once the client closed it.
type SharedWriter = Arc<Mutex<Option<WriteHalf<Stream>>>>;

/// Sends signals and window sizes to a process. Clonable, usable while another task waits.
#[derive(Clone)]
pub struct ProcessControl {
    process_id: Arc<str>,
    writer: SharedWriter,
}

impl fmt::Debug for ProcessControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessControl")
            .field("process_id", &self.process_id)
            .finish_non_exhaustive()
    }
}

impl ProcessControl {
    /// Ask the server to signal the process. Like Go, there is no acknowledgement.
    pub async fn signal(&self, signal: Signal) -> Result<(), ClientError> {
        self.send(&ProcessPayload::signal(&self.process_id, signal))
            .await
    }

    /// Resize the process's pty (ignored by the server for processes without one).
    pub async fn set_tty(&self, size: WindowSize) -> Result<(), ClientError> {
        self.send(&ProcessPayload::resize(&self.process_id, size))
            .await
    }

    async fn send(&self, message: &ProcessPayload) -> Result<(), ClientError> {
        let bytes = to_wire(message);
        let mut guard = self.writer.lock().await;
        let Some(writer) = guard.as_mut() else {
            return Err(ClientError::Protocol(format!(
                "process {}: connection already closed (the process has finished)",
                self.process_id
            )));
        };
        let sent = async {
            writer.write_all(&bytes).await?;
            writer.flush().await
        };
        sent.await.map_err(|e| {
            ClientError::io(
                format!("sending a message to process {}", self.process_id),
                e,
            )
        })
    }
}

/// A process started by Run or reached by Attach.
///
/// Dropping it does not stop anything: output keeps being copied to the caller's writers until
/// the process exits, as with Go's client.
pub struct Process {
    id: String,
    control: ProcessControl,
    task: Option<JoinHandle<Result<i32, ClientError>>>,
    result: Option<Result<i32, ClientError>>,
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("id", &self.id)
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

impl Process {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The exit status, once the server sent it and every opened output stream reached EOF
    /// and was flushed to its writer. The result is cached; calling again returns it again.
    /// Cancel-safe: dropping the future early loses nothing.
    pub async fn wait(&mut self) -> Result<i32, ClientError> {
        if let Some(task) = self.task.as_mut() {
            let result = match task.await {
                Ok(r) => r,
                Err(e) => Err(ClientError::Protocol(format!(
                    "process {}: supervising task failed: {e}",
                    self.id
                ))),
            };
            self.task = None;
            self.result = Some(result);
        }
        match &self.result {
            Some(Ok(status)) => Ok(*status),
            Some(Err(e)) => Err(e.duplicate()),
            None => Err(ClientError::Protocol(format!(
                "process {}: no result recorded",
                self.id
            ))),
        }
    }

    pub fn control(&self) -> ProcessControl {
        self.control.clone()
    }
}

/// Send a hijacking request (Run or Attach), read the first message, attach the wanted
/// output streams and start stdin copying.
pub(crate) async fn start(
    addr: &Address,
    handle: &str,
    requested_id: &str,
    what: String,
    request: Vec<u8>,
    io: ProcessIo,
) -> Result<Process, ClientError> {
    let mut stream = dial(addr).await?;
    stream
        .write_all(&request)
        .await
        .map_err(|e| ClientError::io(format!("sending {what}"), e))?;
    let (head, leftover) = read_head(&mut stream, &what).await?;
    if !head.is_success() {
        let bytes = Body::new(&head, leftover, stream)?.read_all(&what).await?;
        return Err(error_from_response(&what, head.status, &bytes));
    }
    // From here on the socket is ours: no HTTP framing, just JSON values both ways.
    let (rd, wr) = tokio::io::split(stream);
    let mut messages = Messages {
        rd,
        buf: leftover,
        what,
    };
    let first = messages.next().await?.ok_or_else(|| {
        ClientError::Protocol(format!(
            "{}: connection closed before the first process message",
            messages.what
        ))
    })?;
    let id = if first.process_id.is_empty() {
        requested_id.to_string()
    } else {
        first.process_id
    };
    if id.is_empty() {
        return Err(ClientError::Protocol(format!(
            "{}: first message carries no process_id",
            messages.what
        )));
    }
    tracing::debug!(process_id = %id, stream_id = %first.stream_id, "process attached");

    let writer: SharedWriter = Arc::new(Mutex::new(Some(wr)));
    let control = ProcessControl {
        process_id: id.as_str().into(),
        writer: writer.clone(),
    };

    // Go opens stdout, then stderr, one after the other, before Run returns.
    let ProcessIo {
        stdin,
        stdout,
        stderr,
    } = io;
    let mut streams: Vec<(&'static str, JoinHandle<Result<(), ClientError>>)> = Vec::new();
    for (name, route, sink) in [
        ("stdout", Route::Stdout, stdout),
        ("stderr", Route::Stderr, stderr),
    ] {
        let Some(sink) = sink else { continue };
        let path = route.path(&[handle, &id, &first.stream_id]);
        match open_stream(addr, &path).await {
            Ok(source) => streams.push((name, tokio::spawn(copy_output(name, source, sink)))),
            Err(e) => {
                // As in Go: the process exists and can be re-attached, but this handle is
                // broken, so its wait reports why.
                for (_, task) in &streams {
                    task.abort();
                }
                writer.lock().await.take();
                let err = ClientError::Protocol(format!("failed to hijack stream {name}: {e}"));
                return Ok(Process {
                    id,
                    control,
                    task: None,
                    result: Some(Err(err)),
                });
            }
        }
    }
    let stdin_task = stdin.map(|reader| tokio::spawn(copy_stdin(reader, control.clone())));
    let task = tokio::spawn(supervise(messages, streams, stdin_task, writer));
    Ok(Process {
        id,
        control,
        task: Some(task),
        result: None,
    })
}

/// Open one output stream connection; returns the raw bytes after its head.
async fn open_stream(addr: &Address, path: &str) -> Result<Prefixed<Stream>, ClientError> {
    let what = format!("GET {path}");
    let mut stream = dial(addr).await?;
    let request = request_head("GET", path, &[("Content-Type", "application/json".into())]);
    stream
        .write_all(&request)
        .await
        .map_err(|e| ClientError::io(format!("sending {what}"), e))?;
    let (head, leftover) = read_head(&mut stream, &what).await?;
    if !head.is_success() {
        let bytes = Body::new(&head, leftover, stream)?.read_all(&what).await?;
        return Err(error_from_response(&what, head.status, &bytes));
    }
    Ok(prefixed(leftover, stream))
}

/// Copy one output stream to the caller's writer until EOF, then flush.
async fn copy_output(
    name: &'static str,
    mut source: Prefixed<Stream>,
    mut sink: Box<dyn AsyncWrite + Send + Unpin>,
) -> Result<(), ClientError> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = source
            .read(&mut buf)
            .await
            .map_err(|e| ClientError::io(format!("reading process {name}"), e))?;
        if n == 0 {
            break;
        }
        sink.write_all(&buf[..n])
            .await
            .map_err(|e| ClientError::io(format!("writing process {name}"), e))?;
    }
    sink.flush()
        .await
        .map_err(|e| ClientError::io(format!("flushing process {name}"), e))
}

/// Send the caller's stdin as messages, then the EOF message (also after a read error, as Go
/// does). Chunks are cut at UTF-8 character boundaries, because each chunk travels as a JSON
/// string and a split character would arrive as two replacement characters.
async fn copy_stdin(mut reader: Box<dyn AsyncRead + Send + Unpin>, control: ProcessControl) {
    let id = control.process_id.clone();
    let mut buf = vec![0u8; STDIN_CHUNK];
    let mut pending = Vec::new();
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(process_id = %id, error = %e, "reading stdin failed; sending EOF");
                break;
            }
        };
        pending.extend_from_slice(&buf[..n]);
        let complete = pending.len() - incomplete_utf8_tail(&pending);
        if complete == 0 {
            continue;
        }
        if let Err(e) = control
            .send(&ProcessPayload::stdin(&id, &pending[..complete]))
            .await
        {
            tracing::debug!(process_id = %id, error = %e, "stopped sending stdin");
            return;
        }
        pending.drain(..complete);
    }
    if !pending.is_empty() {
        if let Err(e) = control.send(&ProcessPayload::stdin(&id, &pending)).await {
            tracing::debug!(process_id = %id, error = %e, "stopped sending stdin");
            return;
        }
    }
    if let Err(e) = control.send(&ProcessPayload::stdin_eof(&id)).await {
        tracing::debug!(process_id = %id, error = %e, "could not send stdin EOF");
    }
}

/// How many bytes at the end of `bytes` start a UTF-8 character that is not complete yet.
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: look further back for the lead byte
        }
        let width = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0, // ASCII or invalid: nothing to hold back
        };
        return if back < width { back } else { 0 };
    }
    0
}

/// Read messages until the terminal one, then wait for the output streams to drain.
async fn supervise(
    mut messages: Messages<ReadHalf<Stream>>,
    streams: Vec<(&'static str, JoinHandle<Result<(), ClientError>>)>,
    stdin_task: Option<JoinHandle<()>>,
    writer: SharedWriter,
) -> Result<i32, ClientError> {
    let outcome = loop {
        match messages.next().await {
            Ok(Some(message)) => {
                if let Some(error) = message.error {
                    break Err(ClientError::Protocol(format!("process error: {error}")));
                }
                if let Some(status) = message.exit_status {
                    break Ok(status);
                }
                // Anything else (legacy output payloads) is ignored, as Go does.
            }
            Ok(None) => {
                break Err(ClientError::Protocol(format!(
                    "{}: connection closed before the process's exit status",
                    messages.what
                )))
            }
            Err(e) => break Err(e),
        }
    };
    // The caller's stdin may never end; the process is done with it either way.
    if let Some(task) = stdin_task {
        task.abort();
    }
    writer.lock().await.take();
    drop(messages);
    let status = match outcome {
        Ok(status) => status,
        Err(e) => {
            for (_, task) in &streams {
                task.abort();
            }
            return Err(e);
        }
    };
    for (name, task) in streams {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(ClientError::Protocol(format!(
                    "copying process {name} failed: {e}"
                )))
            }
        }
    }
    Ok(status)
}

/// A stream of JSON messages: values may be split across reads or share one.
struct Messages<R> {
    rd: R,
    buf: Vec<u8>,
    what: String,
}

impl<R: AsyncRead + Unpin> Messages<R> {
    /// The next message, or `None` on a clean EOF between messages.
    async fn next(&mut self) -> Result<Option<ProcessPayload>, ClientError> {
        let mut chunk = [0u8; 8192];
        loop {
            let mut values =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<ProcessPayload>();
            match values.next() {
                Some(Ok(message)) => {
                    let used = values.byte_offset();
                    self.buf.drain(..used);
                    return Ok(Some(message));
                }
                Some(Err(e)) if e.is_eof() => {}
                Some(Err(e)) => {
                    return Err(ClientError::Protocol(format!(
                        "{}: decode failed: {e}",
                        self.what
                    )))
                }
                None => self.buf.clear(), // only whitespace so far
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(ClientError::Protocol(format!(
                    "{}: message larger than {MAX_MESSAGE} bytes",
                    self.what
                )));
            }
            let n =
                self.rd.read(&mut chunk).await.map_err(|e| {
                    ClientError::io(format!("reading messages of {}", self.what), e)
                })?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ClientError::Protocol(format!(
                        "{}: connection closed inside a message",
                        self.what
                    )))
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_tail_is_held_back_only_when_incomplete() {
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&"é".as_bytes()[..1]), 1);
        assert_eq!(incomplete_utf8_tail(&"a€".as_bytes()[..3]), 2);
        assert_eq!(incomplete_utf8_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(incomplete_utf8_tail("😀".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&[0xFF]), 0);
        assert_eq!(incomplete_utf8_tail(&[]), 0);
    }

    #[tokio::test]
    async fn messages_split_and_merged_across_reads() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut messages = Messages {
            rd: rx,
            buf: b"{\"process_id\":\"p1\",".to_vec(),
            what: "test".into(),
        };
        let writer = tokio::spawn(async move {
            tx.write_all(b"\"stream_id\":\"7\"}\n{\"exit_status\":3}{\"proc")
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            tx.write_all(b"ess_id\":\"p1\",\"error\":\"boom\"}\n  ")
                .await
                .unwrap();
        });
        let first = messages.next().await.unwrap().unwrap();
        assert_eq!(
            (first.process_id.as_str(), first.stream_id.as_str()),
            ("p1", "7")
        );
        assert_eq!(messages.next().await.unwrap().unwrap().exit_status, Some(3));
        assert_eq!(
            messages.next().await.unwrap().unwrap().error.as_deref(),
            Some("boom")
        );
        writer.await.unwrap();
        assert!(messages.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn chunk_framed_stream_is_a_decode_error() {
        let mut messages = Messages {
            rd: tokio::io::empty(),
            buf: b"24\r\n{}".to_vec(),
            what: "run".into(),
        };
        let err = messages.next().await.unwrap_err().to_string();
        assert!(err.starts_with("run: decode failed"), "{err}");
        let mut messages = Messages {
            rd: tokio::io::empty(),
            buf: b"{\"process_id\":".to_vec(),
            what: "run".into(),
        };
        let err = messages.next().await.unwrap_err().to_string();
        assert!(err.contains("closed inside a message"), "{err}");
    }
}
