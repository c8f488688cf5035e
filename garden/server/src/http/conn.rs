//! A connection's read side: the request head, then the body, with every byte that follows the
//! body kept in the buffer (a hijacked Run's inbound messages may arrive in the same read).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::HttpError;
use garden_api::chunked::{ChunkedDecoder, Decoded};

/// Largest request head accepted (request line plus headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted.
pub const MAX_HEADERS: usize = 100;
/// How much to ask the socket for at a time.
const READ_SIZE: usize = 64 * 1024;

/// A body that stopped arriving is answered 408; other read errors close the connection.
fn body_read_error(e: std::io::Error) -> HttpError {
    if e.kind() == std::io::ErrorKind::TimedOut {
        HttpError::BodyTimeout
    } else {
        HttpError::Io(e)
    }
}

/// A parsed request line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target in origin form (`/path?query`), as sent.
    pub target: String,
    /// Minor HTTP version: 0 or 1.
    pub version: u8,
    /// Header names as sent, values as raw bytes.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Empty,
    Length(u64),
    Chunked,
}

impl RequestHead {
    /// First value of a header (names compare case-insensitively).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The path part of the target, for logs.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Whether the client asked for `100 Continue` before sending its body.
    pub fn expects_continue(&self) -> bool {
        self.header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"))
    }

    /// Body framing per RFC 9112 §6.3: `Transfer-Encoding: chunked` wins over `Content-Length`;
    /// any other transfer coding is refused; differing `Content-Length` values are an error.
    pub fn body_kind(&self) -> Result<BodyKind, HttpError> {
        let codings: Vec<String> = self
            .header_values("transfer-encoding")
            .flat_map(|v| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
            .filter(|c| !c.is_empty())
            .collect();
        if !codings.is_empty() {
            return match codings.as_slice() {
                [only] if only == "chunked" => Ok(BodyKind::Chunked),
                _ => Err(HttpError::UnsupportedTransferEncoding(codings.join(", "))),
            };
        }
        let mut length: Option<u64> = None;
        for value in self.header_values("content-length") {
            for part in String::from_utf8_lossy(value).split(',') {
                let part = part.trim();
                let n = (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| part.parse::<u64>().ok())
                    .flatten()
                    .ok_or_else(|| HttpError::BadContentLength(part.to_string()))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HttpError::BadContentLength(format!(
                        "conflicting values {} and {n}",
                        length.unwrap_or(0)
                    )));
                }
                length = Some(n);
            }
        }
        Ok(match length {
            None | Some(0) => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
        })
    }
}

/// Reading state of one request body.
#[derive(Debug, Clone)]
pub struct BodyReader {
    state: BodyState,
}

#[derive(Debug, Clone)]
enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    Done,
}

impl BodyReader {
    pub fn new(kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::Empty | BodyKind::Length(0) => BodyState::Done,
            BodyKind::Length(n) => BodyState::Length(n),
            BodyKind::Chunked => BodyState::Chunked(ChunkedDecoder::new()),
        };
        BodyReader { state }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }
}

/// A socket plus the bytes read from it but not yet consumed.
pub struct Conn<IO> {
    pub io: IO,
    pub buf: BytesMut,
    /// Longest wait for the client's next bytes before a read fails with `TimedOut` (a
    /// slowloris client must not hold a connection); none on hijacked streams.
    read_idle: Option<Duration>,
}

impl<IO: AsyncRead + Unpin> Conn<IO> {
    pub fn new(io: IO) -> Self {
        Conn {
            io,
            read_idle: None,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// Read more bytes into the buffer; `Ok(0)` at end of stream.
    pub async fn fill(&mut self, max: usize) -> std::io::Result<usize> {
        self.buf.reserve(max.min(READ_SIZE));
        let mut limited = (&mut self.io).take(max as u64);
        let read = limited.read_buf(&mut self.buf);
        match self.read_idle {
            None => read.await,
            Some(idle) => tokio::time::timeout(idle, read).await.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("client sent nothing for {idle:?}"),
                ))
            }),
        }
    }

    /// Fail reads that wait longer than `idle` for the client.
    pub fn with_read_idle(mut self, idle: Duration) -> Self {
        self.read_idle = Some(idle);
        self
    }

    /// Read and parse the request head. `Ok(None)`: the peer closed the connection before
    /// sending anything (not an error).
    pub async fn read_head(&mut self) -> Result<Option<RequestHead>, HttpError> {
        loop {
            if !self.buf.is_empty() {
                if let Some((head, len)) = parse_head(&self.buf)? {
                    let _ = self.buf.split_to(len);
                    return Ok(Some(head));
                }
                if self.buf.len() >= MAX_HEAD_BYTES {
                    return Err(HttpError::HeadTooLarge {
                        limit: MAX_HEAD_BYTES,
                    });
                }
            }
            // Never read past the head limit, so an endless head cannot grow the buffer.
            let room = MAX_HEAD_BYTES - self.buf.len();
            let filled = self.fill(room).await.map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut => HttpError::HeadTimeout,
                _ => HttpError::Io(e),
            });
            if filled? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(HttpError::UnexpectedEof("head"))
                };
            }
        }
    }

    /// The next piece of the body, `Ok(None)` once it is complete. Bytes after the body stay in
    /// the buffer.
    pub async fn read_body_chunk(
        &mut self,
        body: &mut BodyReader,
    ) -> Result<Option<Bytes>, HttpError> {
        loop {
            match &mut body.state {
                BodyState::Done => return Ok(None),
                BodyState::Length(remaining) => {
                    if !self.buf.is_empty() {
                        let take = usize::try_from(*remaining)
                            .unwrap_or(usize::MAX)
                            .min(self.buf.len());
                        *remaining -= take as u64;
                        if *remaining == 0 {
                            body.state = BodyState::Done;
                        }
                        return Ok(Some(self.buf.split_to(take).freeze()));
                    }
                    let want = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(READ_SIZE);
                    if self.fill(want).await.map_err(body_read_error)? == 0 {
                        return Err(HttpError::UnexpectedEof("body"));
                    }
                }
                BodyState::Chunked(decoder) => match decoder.decode(&mut self.buf)? {
                    Decoded::Data(data) => return Ok(Some(data)),
                    Decoded::Done => body.state = BodyState::Done,
                    Decoded::NeedMore => {
                        if self.fill(READ_SIZE).await.map_err(body_read_error)? == 0 {
                            return Err(HttpError::UnexpectedEof("body"));
                        }
                    }
                },
            }
        }
    }

    /// Read the whole body, refusing (before reading it, when the length is declared) anything
    /// longer than `limit`.
    pub async fn read_body_to_end(
        &mut self,
        kind: BodyKind,
        limit: u64,
    ) -> Result<Vec<u8>, HttpError> {
        if let BodyKind::Length(n) = kind {
            if n > limit {
                return Err(HttpError::BodyTooLarge { limit });
            }
        }
        let mut reader = BodyReader::new(kind);
        let mut out = Vec::new();
        while let Some(piece) = self.read_body_chunk(&mut reader).await? {
            if (out.len() + piece.len()) as u64 > limit {
                return Err(HttpError::BodyTooLarge { limit });
            }
            out.extend_from_slice(&piece);
        }
        Ok(out)
    }
}

/// Parse a complete head from the front of `buf`, returning it and its length in bytes.
fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::TooManyHeaders { limit: MAX_HEADERS })
        }
        Err(e) => return Err(HttpError::BadHead(e)),
    };
    if len > MAX_HEAD_BYTES {
        return Err(HttpError::HeadTooLarge {
            limit: MAX_HEAD_BYTES,
        });
    }
    let head = RequestHead {
        method: req.method.unwrap_or_default().to_string(),
        target: origin_form(req.path.unwrap_or_default()).to_string(),
        version: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
    };
    Ok(Some((head, len)))
}

/// Reduce an absolute-form target (`http://host/path`) to origin form, as Go's server does.
fn origin_form(target: &str) -> &str {
    let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    else {
        return target;
    };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        Some(_) | None => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> RequestHead {
        parse_head(raw).unwrap().unwrap().0
    }

    #[test]
    fn parses_a_go_client_request() {
        let raw = b"PUT /containers/h/files?user=&destination=%2F HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-tar\r\n\r\n5\r\n";
        let (h, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(&raw[len..], b"5\r\n");
        assert_eq!(
            (h.method.as_str(), h.target.as_str(), h.path()),
            (
                "PUT",
                "/containers/h/files?user=&destination=%2F",
                "/containers/h/files"
            )
        );
        assert_eq!(h.body_kind().unwrap(), BodyKind::Chunked);
        assert_eq!(h.header("content-type"), Some(&b"application/x-tar"[..]));
    }

    #[test]
    fn body_framing_rules() {
        assert_eq!(
            head(b"GET / HTTP/1.1\r\n\r\n").body_kind().unwrap(),
            BodyKind::Empty
        );
        assert_eq!(
            head(b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n")
                .body_kind()
                .unwrap(),
            BodyKind::Length(12)
        );
        assert_eq!(
            head(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
                .body_kind()
                .unwrap(),
            BodyKind::Empty
        );
        assert_eq!(
            head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
                .body_kind()
                .unwrap(),
            BodyKind::Length(3)
        );
        assert_eq!(
            head(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: Chunked\r\n\r\n")
                .body_kind()
                .unwrap(),
            BodyKind::Chunked
        );
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ] {
            assert!(matches!(
                head(bad).body_kind(),
                Err(HttpError::BadContentLength(_))
            ));
        }
        let err = head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .body_kind()
            .unwrap_err();
        assert_eq!(err.status(), Some(501));
    }

    #[test]
    fn head_errors() {
        assert!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
            Err(HttpError::BadHead(_))
        ));
        let many: Vec<u8> = [
            b"GET / HTTP/1.1\r\n".to_vec(),
            b"a: b\r\n".repeat(MAX_HEADERS + 1),
            b"\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(parse_head(&many).unwrap_err().status(), Some(431));
    }

    #[test]
    fn absolute_form_targets() {
        assert_eq!(origin_form("http://api/ping?x=1"), "/ping?x=1");
        assert_eq!(origin_form("http://api"), "/");
        assert_eq!(origin_form("/ping"), "/ping");
    }

    #[tokio::test]
    async fn endless_head_is_refused_without_unbounded_buffering() {
        let (mut client, server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = client.write_all(b"GET / HTTP/1.1\r\n").await;
            let line =
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            while client.write_all(line).await.is_ok() {}
        });
        let mut conn = Conn::new(server);
        let err = conn.read_head().await.unwrap_err();
        assert!(
            matches!(
                err,
                HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders { .. }
            ),
            "{err}"
        );
        assert_eq!(err.status(), Some(431));
        assert!(conn.buf.len() <= MAX_HEAD_BYTES);
        drop(conn);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn length_body_keeps_the_surplus() {
        let data = b"POST /x HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody{\"next\":1}".to_vec();
        let mut conn = Conn::new(&data[..]);
        let h = conn.read_head().await.unwrap().unwrap();
        let body = conn
            .read_body_to_end(h.body_kind().unwrap(), 100)
            .await
            .unwrap();
        assert_eq!(body, b"body");
        assert_eq!(&conn.buf[..], b"{\"next\":1}");
    }

    #[tokio::test]
    async fn body_limits() {
        let data = b"POST /x HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\n".to_vec();
        let mut conn = Conn::new(&data[..]);
        let h = conn.read_head().await.unwrap().unwrap();
        let err = conn
            .read_body_to_end(h.body_kind().unwrap(), 10)
            .await
            .unwrap_err();
        assert!(matches!(err, HttpError::BodyTooLarge { limit: 10 }));
        let data = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n".to_vec();
        let mut conn = Conn::new(&data[..]);
        let h = conn.read_head().await.unwrap().unwrap();
        assert!(matches!(
            conn.read_body_to_end(h.body_kind().unwrap(), 10).await,
            Err(HttpError::BodyTooLarge { .. })
        ));
        let data = b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort".to_vec();
        let mut conn = Conn::new(&data[..]);
        let h = conn.read_head().await.unwrap().unwrap();
        assert!(matches!(
            conn.read_body_to_end(h.body_kind().unwrap(), 100).await,
            Err(HttpError::UnexpectedEof(_))
        ));
    }

    #[tokio::test]
    async fn clean_eof_before_a_request() {
        let mut conn = Conn::new(&b""[..]);
        assert!(conn.read_head().await.unwrap().is_none());
        let mut conn = Conn::new(&b"GET / HT"[..]);
        assert!(matches!(
            conn.read_head().await,
            Err(HttpError::UnexpectedEof(_))
        ));
    }
}

/// Property tests (proptest) of the request codec: any bytes give a head, a body or an
/// error, never a panic or an unbounded buffer; a well-formed request reads back as sent.
/// Bounded for CI by `PROPTEST_CASES` (default below).
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

    /// Read one request (head and whole body, at most 1 MiB) from `wire`.
    fn read_request(wire: Vec<u8>) -> Result<Option<(RequestHead, Vec<u8>)>, HttpError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut conn = Conn::new(std::io::Cursor::new(wire));
            let Some(head) = conn.read_head().await? else {
                return Ok(None);
            };
            let kind = head.body_kind()?;
            let body = conn.read_body_to_end(kind, 1 << 20).await?;
            Ok(Some((head, body)))
        })
    }

    fn header() -> impl Strategy<Value = (String, String)> {
        ("[A-Za-z][A-Za-z0-9-]{0,15}", "[!-~]([ -~]{0,30}[!-~])?").prop_filter(
            "framing headers are generated apart",
            |(n, _)| {
                !n.eq_ignore_ascii_case("content-length")
                    && !n.eq_ignore_ascii_case("transfer-encoding")
            },
        )
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn requests_read_back_as_sent(
            method in "[A-Z]{1,7}",
            target in "/[A-Za-z0-9/_.%=&?-]{0,60}",
            headers in prop::collection::vec(header(), 0..8),
            parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..200), 0..4),
            chunked in any::<bool>(),
        ) {
            let body = parts.concat();
            let mut wire = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
            for (n, v) in &headers {
                wire.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
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
            let (head, got) = read_request(wire)
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .expect("a request");
            prop_assert_eq!(&head.method, &method);
            prop_assert_eq!(&head.target, &target);
            for (n, v) in &headers {
                prop_assert!(
                    head.headers.iter().any(|(hn, hv)| hn == n && hv == v.as_bytes()),
                    "header {}: {} lost", n, v
                );
            }
            prop_assert_eq!(got, body);
        }

        #[test]
        fn any_bytes_never_panic(noise in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_head(&noise);
            let _ = read_request(noise);
        }

        #[test]
        fn odd_framing_never_panics(
            te in "\\PC{0,16}",
            len in "[-+0-9a-fx, ]{0,24}",
            rest in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut wire = format!(
                "POST /containers HTTP/1.1\r\nTransfer-Encoding: {te}\r\nContent-Length: {len}\r\n\r\n"
            )
            .into_bytes();
            wire.extend_from_slice(&rest);
            let _ = read_request(wire);
        }

        #[test]
        fn odd_chunk_sizes_never_panic(size in "[0-9a-fA-F;= x-]{0,20}", rest in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut wire = b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            wire.extend_from_slice(size.as_bytes());
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(&rest);
            let _ = read_request(wire);
        }
    }
}
