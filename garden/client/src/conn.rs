//! Minimal HTTP/1.1 over TCP or a unix socket: dialing, request heads, response heads and
//! response body framing (Content-Length, chunked, or until close).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use garden_api::chunked::{ChunkedDecoder, Decoded};
use garden_api::{ErrorBody, GardenError};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, BufReader, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::error::ClientError;

/// The Go client's dial timeout; it covers connecting only, never the request itself.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Response heads larger than this are refused rather than buffered without bound.
const MAX_HEAD: usize = 64 * 1024;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `host:port`.
    Tcp(String),
    Unix(PathBuf),
}

impl Address {
    /// `unix:///path` or `/path` is a unix socket; `tcp://host:port` or `host:port` is TCP.
    pub fn parse(s: &str) -> Result<Address, ClientError> {
        let bad = |why: &str| ClientError::Protocol(format!("invalid server address {s:?}: {why}"));
        if let Some(path) = s.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("unix socket path must be absolute"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if s.starts_with('/') {
            return Ok(Address::Unix(PathBuf::from(s)));
        }
        let hostport = s.strip_prefix("tcp://").unwrap_or(s);
        match hostport.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Address::Tcp(hostport.to_string()))
            }
            _ => Err(bad(
                "expected unix:///path, /path, tcp://host:port or host:port",
            )),
        }
    }
}

impl FromStr for Address {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(hostport) => write!(f, "tcp://{hostport}"),
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// A connected socket of either kind.
#[derive(Debug)]
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Open a fresh connection, giving up after [`DIAL_TIMEOUT`].
pub(crate) async fn dial(addr: &Address) -> Result<Stream, ClientError> {
    let context = || format!("connecting to {addr}");
    let connect = async {
        match addr {
            Address::Tcp(hostport) => {
                let s = TcpStream::connect(hostport.as_str()).await?;
                // Process messages are small and latency-sensitive; Go disables Nagle too.
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Address::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path).await?)),
        }
    };
    match tokio::time::timeout(DIAL_TIMEOUT, connect).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ClientError::io(context(), e)),
        Err(_) => Err(ClientError::io(
            context(),
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {DIAL_TIMEOUT:?}"),
            ),
        )),
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Serialise a request head. Every request carries `Host: api` and Go's user agent, as the Go
/// client's do; `headers` adds the rest.
pub(crate) fn request_head(method: &str, target: &str, headers: &[(&str, String)]) -> Vec<u8> {
    let mut out =
        format!("{method} {target} HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\n");
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read a response head. Returns it with the bytes that arrived after the blank line, which
/// belong to the body (or, on hijacked routes, to the raw stream).
pub(crate) async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    what: &str,
) -> Result<(Head, Vec<u8>), ClientError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = reader
            .read(&mut chunk)
            .await
            .map_err(|e| ClientError::io(format!("reading response head of {what}"), e))?;
        if n == 0 {
            return Err(ClientError::Protocol(if buf.is_empty() {
                format!("{what}: connection closed before a response")
            } else {
                format!("{what}: connection closed inside the response head")
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = Head {
                    status: resp.code.unwrap_or(0),
                    headers: resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).trim().to_string(),
                            )
                        })
                        .collect(),
                };
                return Ok((head, buf.split_off(len)));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(ClientError::Protocol(format!(
                    "{what}: response head larger than {MAX_HEAD} bytes"
                )))
            }
            Err(e) => {
                return Err(ClientError::Protocol(format!(
                    "{what}: malformed response head: {e}"
                )))
            }
        }
    }
}

/// A reader that first yields already-buffered bytes, then the rest of the socket.
pub(crate) type Prefixed<R> = tokio::io::Chain<io::Cursor<Vec<u8>>, R>;

pub(crate) fn prefixed<R: AsyncRead>(leftover: Vec<u8>, reader: R) -> Prefixed<R> {
    io::Cursor::new(leftover).chain(reader)
}

/// A response body, decoded according to the head's framing. Streams; never buffers the
/// whole body. A body cut short (by length or chunking) is an `UnexpectedEof` error.
pub(crate) struct Body<R> {
    inner: BufReader<Prefixed<R>>,
    framing: Framing,
}

enum Framing {
    Length(u64),
    Close,
    /// Decoded with the codec gardend uses too; `pending` is decoded body not yet handed out.
    Chunked {
        decoder: ChunkedDecoder,
        raw: BytesMut,
        pending: Bytes,
    },
    Done,
}

impl<R: AsyncRead + Unpin> Body<R> {
    pub fn new(head: &Head, leftover: Vec<u8>, reader: R) -> Result<Self, ClientError> {
        let chunked = head.header("Transfer-Encoding").is_some_and(|te| {
            te.rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
        });
        let framing =
            if head.status == 204 || head.status == 304 || (100..200).contains(&head.status) {
                Framing::Done
            } else if chunked {
                Framing::Chunked {
                    decoder: ChunkedDecoder::new(),
                    raw: BytesMut::new(),
                    pending: Bytes::new(),
                }
            } else if let Some(len) = head.header("Content-Length") {
                let len = len.parse::<u64>().map_err(|_| {
                    ClientError::Protocol(format!("invalid Content-Length {len:?} in response"))
                })?;
                Framing::Length(len)
            } else {
                Framing::Close
            };
        Ok(Body {
            inner: BufReader::new(prefixed(leftover, reader)),
            framing,
        })
    }

    /// Read the whole body (used for JSON replies and error bodies).
    pub async fn read_all(&mut self, what: &str) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.read_to_end(&mut out)
            .await
            .map_err(|e| ClientError::io(format!("reading response body of {what}"), e))?;
        Ok(out)
    }
}

fn eof(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("connection closed {what}"),
    )
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Read at most `limit` bytes from `inner` into `buf`; returns the count (0 only at EOF).
fn poll_limited<B: AsyncRead + Unpin>(
    inner: &mut B,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
    limit: u64,
) -> Poll<io::Result<usize>> {
    let max = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .min(buf.remaining());
    let mut sub = ReadBuf::new(buf.initialize_unfilled_to(max));
    ready!(Pin::new(inner).poll_read(cx, &mut sub))?;
    let n = sub.filled().len();
    buf.advance(n);
    Poll::Ready(Ok(n))
}

impl<R: AsyncRead + Unpin> AsyncRead for Body<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match &mut this.framing {
                Framing::Done => return Poll::Ready(Ok(())),
                Framing::Close => return Pin::new(&mut this.inner).poll_read(cx, buf),
                Framing::Length(0) => this.framing = Framing::Done,
                Framing::Length(left) => {
                    let n = ready!(poll_limited(&mut this.inner, cx, buf, *left))?;
                    if n == 0 {
                        return Poll::Ready(Err(eof("before the end of the response body")));
                    }
                    *left -= n as u64;
                    return Poll::Ready(Ok(()));
                }
                Framing::Chunked {
                    decoder,
                    raw,
                    pending,
                } => {
                    if !pending.is_empty() {
                        let n = pending.len().min(buf.remaining());
                        buf.put_slice(&pending.split_to(n));
                        return Poll::Ready(Ok(()));
                    }
                    let step = decoder
                        .decode(raw)
                        .map_err(|e| invalid(format!("malformed chunked response body: {e}")))?;
                    match step {
                        Decoded::Data(data) => *pending = data,
                        Decoded::Done => this.framing = Framing::Done,
                        Decoded::NeedMore => {
                            let available = ready!(Pin::new(&mut this.inner).poll_fill_buf(cx))?;
                            if available.is_empty() {
                                return Poll::Ready(Err(eof("inside the chunked response body")));
                            }
                            let n = available.len();
                            raw.extend_from_slice(available);
                            Pin::new(&mut this.inner).consume(n);
                        }
                    }
                }
            }
        }
    }
}

/// Turn a non-2xx reply into an error: the typed Garden error when the body is Garden's JSON
/// error body, otherwise a protocol error naming the status and body (e.g. a router's 404).
pub(crate) fn error_from_response(what: &str, status: u16, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(err) => ClientError::Garden(GardenError::from_body(err)),
        Err(_) => ClientError::Protocol(format!(
            "bad response to {what}: status {status}, body {:?}",
            String::from_utf8_lossy(body).trim_end()
        )),
    }
}

/// Property tests (proptest) of the response codec: any bytes from a server give a response
/// or an error, never a panic; a framed body reads back as sent. Bounded by `PROPTEST_CASES`.
#[cfg(test)]
mod props {
    use super::*;
    use garden_api::chunked::{encode_chunk, LAST_CHUNK};
    use proptest::prelude::*;

    fn config() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// A reader handing out `data` in pieces of the given sizes.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let size = self.sizes[self.turn % self.sizes.len()];
            self.turn += 1;
            let end = (self.at + size).min(self.data.len());
            let n = (end - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    fn read_response(wire: Vec<u8>, sizes: Vec<usize>) -> Result<(u16, Vec<u8>), ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut reader = Pieces {
                data: wire,
                at: 0,
                sizes,
                turn: 0,
            };
            let (head, leftover) = read_head(&mut reader, "test").await?;
            let mut body = Body::new(&head, leftover, reader)?;
            Ok((head.status, body.read_all("test").await?))
        })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn framed_bodies_read_back(
            status in 200u16..600,
            parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..5),
            chunked in any::<bool>(),
            sizes in prop::collection::vec(1usize..700, 1..6),
        ) {
            prop_assume!(status != 204 && status != 304);
            let body = parts.concat();
            let mut wire = format!("HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n").into_bytes();
            if chunked {
                wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for p in &parts {
                    wire.extend_from_slice(&encode_chunk(p));
                }
                wire.extend_from_slice(LAST_CHUNK);
            } else {
                wire.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                wire.extend_from_slice(&body);
            }
            let got = read_response(wire, sizes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, (status, body));
        }

        #[test]
        fn any_response_bytes_never_panic(
            noise in prop::collection::vec(any::<u8>(), 0..600),
            sizes in prop::collection::vec(1usize..100, 1..4),
        ) {
            let _ = read_response(noise, sizes);
        }

        #[test]
        fn response_heads_with_odd_framing_never_panic(
            status in "[0-9]{1,4}",
            te in "\\PC{0,12}",
            len in "[-+0-9a-f ]{0,22}",
            rest in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut wire = format!(
                "HTTP/1.1 {status} X\r\nTransfer-Encoding: {te}\r\nContent-Length: {len}\r\n\r\n"
            )
            .into_bytes();
            wire.extend_from_slice(&rest);
            let _ = read_response(wire, vec![64]);
        }
    }
}
