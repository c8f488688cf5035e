//! The hijacked replies: Run/Attach sessions and stdout/stderr streams (spec §5.3–§5.6).
//!
//! After a hand-written 2xx head that declares `Transfer-Encoding: chunked` (so that Go's
//! persistent-connection reader accepts it) the socket carries unframed bytes: NDJSON messages
//! both ways on Run/Attach, raw output on the streams.

use std::time::Duration;

use bytes::BytesMut;
use garden_api::{to_wire, ProcessInput, ProcessPayload};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::ndjson::NdjsonDecoder;
use crate::http::{Conn, ResponseHead};
use crate::service::{OutputStream, ProcessSession};

/// Largest single inbound message (the Go client sends stdin in 32 KiB pieces).
const MAX_MESSAGE: usize = 8 * 1024 * 1024;
/// How long to keep reading (and discarding) after our last byte, so that unread client bytes
/// do not make the kernel answer with a reset that could destroy the reply in flight.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 4 * 1024 * 1024;

/// Run (`status` 201) or Attach (200): write the head and the first message, forward inbound
/// messages to the core until the process exits, then write the terminal message and close.
/// The client going away, or server shutdown, detaches: `session.input` is dropped and the
/// process keeps running.
pub async fn process_session<IO>(
    conn: Conn<IO>,
    status: u16,
    session: ProcessSession,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let ProcessSession {
        process_id,
        stream_id,
        input,
        exit,
        guard,
    } = session;
    let Conn { io, buf, .. } = conn;
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut head = ResponseHead::new(status)
        .header("Content-Type", "application/json")
        .date()
        .header("Transfer-Encoding", "chunked")
        .encode();
    head.extend_from_slice(&to_wire(&ProcessPayload::first(&process_id, &stream_id)));
    if let Err(e) = wr.write_all(&head).await {
        tracing::debug!(%process_id, "client gone before the session started: {e}");
        return;
    }
    let outcome = {
        let inbound = forward_inbound(&mut rd, buf, input, &process_id);
        tokio::pin!(inbound);
        let mut exit = exit;
        tokio::select! {
            biased;
            outcome = &mut exit => Some(outcome),
            () = &mut inbound => None,
            () = stopped(&mut shutdown) => None,
        }
    };
    let Some(outcome) = outcome else {
        tracing::debug!(%process_id, %stream_id, "process session detached");
        return;
    };
    let last = match outcome {
        Ok(Ok(code)) => ProcessPayload::exit(&process_id, code),
        Ok(Err(message)) => ProcessPayload::failure(&process_id, &message),
        Err(_) => ProcessPayload::failure(
            &process_id,
            "the server lost track of the process exit status",
        ),
    };
    if let Err(e) = wr.write_all(&to_wire(&last)).await {
        tracing::debug!(%process_id, "client gone before the exit status: {e}");
        return;
    }
    linger_close(rd.unsplit(wr)).await;
    drop(guard);
}

/// Decode inbound messages and hand them to the core until the client closes the connection.
/// A message of the wrong shape counts as an unknown message; after a syntax error the stream
/// cannot be framed any more, so the rest is discarded (the session stays up to report the
/// exit status). Returning drops `input`, which detaches.
async fn forward_inbound<R>(
    rd: &mut R,
    leftover: BytesMut,
    input: mpsc::UnboundedSender<ProcessInput>,
    process_id: &str,
) where
    R: AsyncRead + Unpin,
{
    let mut decoder = NdjsonDecoder::new(leftover, MAX_MESSAGE);
    let mut framed = true;
    loop {
        while framed {
            match decoder.next_value::<ProcessPayload>() {
                Ok(Some(payload)) => {
                    // The core may have stopped listening (process gone); keep reading anyway
                    // so a disconnect is still noticed.
                    let _ = input.send(payload.classify());
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%process_id, "bad message from client: {e}");
                    let _ = input.send(ProcessInput::Unknown);
                    framed = !e.is_fatal();
                }
            }
        }
        let buf = decoder.buffer_mut();
        if !framed {
            buf.clear();
        }
        buf.reserve(16 * 1024);
        match rd.read_buf(buf).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(%process_id, "reading client messages failed: {e}");
                return;
            }
        }
    }
}

/// Stdout or Stderr: write the head at once (the client waits for it before Run returns), then
/// the raw output until the core closes the channel, then close.
pub async fn output_stream<IO>(
    conn: Conn<IO>,
    stream: OutputStream,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let OutputStream { mut chunks, guard } = stream;
    let (mut rd, mut wr) = tokio::io::split(conn.io);
    let head = ResponseHead::new(200)
        .date()
        .header("Transfer-Encoding", "chunked")
        .encode();
    if wr.write_all(&head).await.is_err() {
        return;
    }
    let complete = {
        let gone = wait_for_eof(&mut rd);
        tokio::pin!(gone);
        loop {
            tokio::select! {
                biased;
                chunk = chunks.recv() => match chunk {
                    Some(data) => {
                        if wr.write_all(&data).await.is_err() {
                            break false;
                        }
                    }
                    None => break true,
                },
                () = &mut gone => break false,
                () = stopped(&mut shutdown) => break false,
            }
        }
    };
    drop(chunks);
    drop(guard);
    if complete {
        linger_close(rd.unsplit(wr)).await;
    }
}

/// Resolve once the peer has closed its side (or the socket failed); bytes are discarded.
async fn wait_for_eof<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut scratch = [0u8; 1024];
    while let Ok(n) = rd.read(&mut scratch).await {
        if n == 0 {
            return;
        }
    }
}

/// Resolve when the server is shutting down; never, if the shutdown sender is gone.
pub(super) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Half-close, then drain what the client still sends for a bounded time before closing, so
/// that the reply already written is not destroyed by a reset.
pub(super) async fn linger_close<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    if io.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut scratch = vec![0u8; 16 * 1024];
        let mut total = 0;
        while let Ok(n) = io.read(&mut scratch).await {
            total += n;
            if n == 0 || total > LINGER_MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
}
