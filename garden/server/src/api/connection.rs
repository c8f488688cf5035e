//! One connection, from request head to close: route, read and parse the body, call the core,
//! and write the reply in the framing its route needs.
//!
//! Every connection carries exactly one request (the Go client disables keep-alive and
//! hijacked routes own the socket afterwards), which keeps this a straight line.

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use garden_api::{routes::NoRoute, GardenError, Route, RouteMatch};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::hijack::{linger_close, output_stream, process_session, stopped};
use super::reply::{
    error_response, http_error_response, json_response, method_not_allowed_response,
    not_found_response,
};
use super::{body_use, parse, parse_streaming, BodyUse};
use crate::http::{
    encode_chunk, BodyKind, BodyReader, Conn, HttpError, RequestHead, ResponseHead, LAST_CHUNK,
};
use crate::service::{Reply, Service};

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    /// Time allowed for the request head to arrive (bounds idle connections).
    pub head_timeout: Duration,
    /// Longest pause within a request body (and within the head) before the request is
    /// answered 408; hijacked streams have none.
    pub body_idle: Duration,
    /// Largest JSON request body; longer ones get 413 without being buffered.
    pub max_json_body: u64,
    /// Chunks of a streamed body (StreamIn) buffered ahead of the core; beyond this the socket
    /// is not read (back-pressure).
    pub stream_body_queue: usize,
}

impl Default for ConnOptions {
    fn default() -> Self {
        ConnOptions {
            head_timeout: Duration::from_secs(10),
            body_idle: Duration::from_secs(60),
            max_json_body: 16 * 1024 * 1024,
            stream_body_queue: 8,
        }
    }
}

/// What was answered, for the request log. `None`: nothing could be written (client gone).
type Status = Option<u16>;

/// Serve the one request on `io`. Never panics on client input; all errors are answered (when
/// the socket still works) and logged.
pub async fn serve_connection<S, IO>(
    io: IO,
    service: &S,
    opts: &ConnOptions,
    shutdown: watch::Receiver<bool>,
) where
    S: Service,
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let started = Instant::now();
    let mut conn = Conn::new(io).with_read_idle(opts.body_idle);
    let mut stop = shutdown.clone();
    let read = tokio::select! {
        read = tokio::time::timeout(opts.head_timeout, conn.read_head()) => read,
        // An idle connection must not hold up a graceful stop.
        () = stopped(&mut stop) => return,
    };
    let head = match read {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            reject(conn, e, false).await;
            return;
        }
        Err(_) => {
            reject(conn, HttpError::HeadTimeout, false).await;
            return;
        }
    };
    let recognized = Route::recognize(&head.method, &head.target);
    // Every event logged while serving carries the handle and process id it concerns.
    let (span, route_name) = match &recognized {
        Ok(m) => (
            tracing::info_span!(
                "request",
                route = ?m.route,
                handle = m.handle.as_str(),
                process = m.pid.as_str()
            ),
            format!("{:?}", m.route),
        ),
        Err(_) => (tracing::Span::none(), "unknown".to_string()),
    };
    let status = tracing::Instrument::instrument(
        respond(conn, &head, recognized, service, opts, shutdown),
        span.clone(),
    )
    .await;
    crate::telemetry::metrics().request(&route_name, status.unwrap_or(0), started.elapsed());
    let _entered = span.enter();
    tracing::debug!(
        method = %head.method,
        path = %head.path(),
        status = status.unwrap_or(0),
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
}

async fn respond<S, IO>(
    mut conn: Conn<IO>,
    head: &RequestHead,
    recognized: Result<RouteMatch, NoRoute>,
    service: &S,
    opts: &ConnOptions,
    shutdown: watch::Receiver<bool>,
) -> Status
where
    S: Service,
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let m = match recognized {
        Ok(m) => m,
        Err(NoRoute::NotFound) => return finish(conn, &not_found_response(), 404).await,
        Err(NoRoute::MethodNotAllowed(allowed)) => {
            return finish(conn, &method_not_allowed_response(&allowed), 405).await
        }
    };
    let route = m.route;
    let hijacked = route.is_hijacked();
    let kind = match head.body_kind() {
        Ok(kind) => kind,
        Err(e) => return reject(conn, e, hijacked).await,
    };
    let use_ = body_use(route);
    if kind != BodyKind::Empty
        && use_ != BodyUse::None
        && head.expects_continue()
        && conn
            .io
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return None;
    }
    let parsed = match use_ {
        BodyUse::Stream => return stream_in(conn, m, kind, service, opts, shutdown).await,
        BodyUse::Json => match conn.read_body_to_end(kind, opts.max_json_body).await {
            Ok(body) => parse(m, &body),
            Err(e) => return reject(conn, e, hijacked).await,
        },
        BodyUse::None => {
            // A body on a route that takes none is skipped, so that on Attach it cannot be
            // mistaken for inbound messages.
            if kind != BodyKind::Empty {
                if let Err(e) = conn.read_body_to_end(kind, opts.max_json_body).await {
                    return reject(conn, e, hijacked).await;
                }
            }
            parse(m, b"")
        }
    };
    let request = match parsed {
        Ok(request) => request,
        Err(e) => return finish(conn, &error_response(&e, hijacked), e.http_status()).await,
    };
    let reply = service.handle(request).await;
    render(conn, route, reply, shutdown).await
}

/// StreamIn: the core reads the body from a channel while this task feeds it from the socket,
/// at the pace the core consumes it.
async fn stream_in<S, IO>(
    mut conn: Conn<IO>,
    m: RouteMatch,
    kind: BodyKind,
    service: &S,
    opts: &ConnOptions,
    shutdown: watch::Receiver<bool>,
) -> Status
where
    S: Service,
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let route = m.route;
    let (tx, rx) = mpsc::channel(opts.stream_body_queue.max(1));
    let request = match parse_streaming(m, rx) {
        Ok(request) => request,
        Err(e) => return finish(conn, &error_response(&e, false), e.http_status()).await,
    };
    let mut reader = BodyReader::new(kind);
    let reply = {
        let handled = service.handle(request);
        tokio::pin!(handled);
        let pump = pump_body(&mut conn, &mut reader, tx);
        tokio::pin!(pump);
        let mut pumping = true;
        loop {
            tokio::select! {
                reply = &mut handled => break reply,
                () = &mut pump, if pumping => pumping = false,
            }
        }
    };
    render(conn, route, reply, shutdown).await
}

/// Move body pieces from the socket into the core's channel until the body ends, the core stops
/// listening, or the body turns out to be broken (then the core gets the error).
async fn pump_body<IO: AsyncRead + Unpin>(
    conn: &mut Conn<IO>,
    reader: &mut BodyReader,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    loop {
        match conn.read_body_chunk(reader).await {
            Ok(Some(data)) => {
                if tx.send(Ok(data)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("request body failed: {e}");
                let _ = tx.send(Err(e.into_io())).await;
                return;
            }
        }
    }
}

/// Write the core's answer in the framing its route needs.
async fn render<IO>(
    conn: Conn<IO>,
    route: Route,
    reply: Result<Reply, GardenError>,
    shutdown: watch::Receiver<bool>,
) -> Status
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let hijacked = route.is_hijacked();
    match reply {
        Err(e) => finish(conn, &error_response(&e, hijacked), e.http_status()).await,
        Ok(Reply::Json(body)) if !hijacked => finish(conn, &json_response(&body), 200).await,
        Ok(Reply::Tar(chunks)) if !hijacked => stream_tar(conn, chunks).await,
        Ok(Reply::Process(session)) if matches!(route, Route::Run | Route::Attach) => {
            let status = if route == Route::Run { 201 } else { 200 };
            process_session(conn, status, session, shutdown).await;
            Some(status)
        }
        Ok(Reply::Output(stream)) if matches!(route, Route::Stdout | Route::Stderr) => {
            output_stream(conn, stream, shutdown).await;
            Some(200)
        }
        Ok(other) => {
            tracing::error!(?route, reply = ?other, "core answered with a reply this route cannot carry");
            let e = GardenError::generic(format!("internal error: unexpected reply to {route:?}"));
            finish(conn, &error_response(&e, hijacked), 500).await
        }
    }
}

/// StreamOut's tar: chunked, so that an error part-way (which just ends the stream without the
/// last chunk) is visible to the client as a truncated body rather than a short archive.
async fn stream_tar<IO: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Conn<IO>,
    mut chunks: mpsc::Receiver<io::Result<Bytes>>,
) -> Status {
    let head = ResponseHead::new(200)
        .header("Content-Type", "application/x-tar")
        .date()
        .header("Transfer-Encoding", "chunked")
        .close()
        .encode();
    if conn.io.write_all(&head).await.is_err() {
        return None;
    }
    loop {
        match chunks.recv().await {
            Some(Ok(data)) if data.is_empty() => {}
            Some(Ok(data)) => {
                if conn.io.write_all(&encode_chunk(&data)).await.is_err() {
                    return Some(200);
                }
            }
            Some(Err(e)) => {
                tracing::warn!("stream out failed part-way, truncating the reply: {e}");
                break;
            }
            None => {
                if conn.io.write_all(LAST_CHUNK).await.is_err() {
                    return Some(200);
                }
                break;
            }
        }
    }
    linger_close(conn.io).await;
    Some(200)
}

/// Answer a request that could not be read; a dead socket gets nothing.
async fn reject<IO: AsyncRead + AsyncWrite + Unpin>(
    conn: Conn<IO>,
    err: HttpError,
    hijacked: bool,
) -> Status {
    tracing::debug!("bad request: {err}");
    match err.status() {
        Some(status) => finish(conn, &http_error_response(status, &err, hijacked), status).await,
        None => None,
    }
}

/// Write a complete reply and close.
async fn finish<IO: AsyncRead + AsyncWrite + Unpin>(
    mut conn: Conn<IO>,
    bytes: &[u8],
    status: u16,
) -> Status {
    if conn.io.write_all(bytes).await.is_err() {
        return None;
    }
    linger_close(conn.io).await;
    Some(status)
}
