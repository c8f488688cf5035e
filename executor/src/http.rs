//! A small HTTP/1.1 client for downloads and uploads: one request per connection
//! (`Connection: close`), bodies framed by `Content-Length`, chunked encoding or EOF.
//! Only `http://` is supported; `https://` gives a clear `unsupported scheme` error.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("unsupported scheme {0:?} (only http is supported)")]
    UnsupportedScheme(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad HTTP response: {0}")]
    Protocol(String),
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HttpError {
    let context = context.into();
    move |source| HttpError::Io { context, source }
}

/// The parts of an `http://` URL needed to send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Path plus query, starting with `/`.
    pub target: String,
}

impl Url {
    /// Parse `http://host[:port]/path?query`. Error messages never echo the URL (it may hold
    /// credentials in its query).
    pub fn parse(s: &str) -> Result<Url, HttpError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| HttpError::InvalidUrl("missing scheme".into()))?;
        if !scheme.eq_ignore_ascii_case("http") {
            return Err(HttpError::UnsupportedScheme(scheme.to_ascii_lowercase()));
        }
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let target = target.split('#').next().unwrap_or("/").to_string();
        if authority.contains('@') {
            return Err(HttpError::InvalidUrl(
                "user info in URLs is not supported".into(),
            ));
        }
        let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
            let (h, rest) = stripped
                .split_once(']')
                .ok_or_else(|| HttpError::InvalidUrl("bad IPv6 host".into()))?;
            let port = match rest.strip_prefix(':') {
                Some(p) => p
                    .parse()
                    .map_err(|_| HttpError::InvalidUrl("bad port".into()))?,
                None => 80,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .map_err(|_| HttpError::InvalidUrl("bad port".into()))?,
                ),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() {
            return Err(HttpError::InvalidUrl("missing host".into()));
        }
        Ok(Url { host, port, target })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The last path segment (for naming a downloaded single file).
    pub fn file_name(&self) -> Option<String> {
        let path = self.target.split('?').next().unwrap_or("");
        path.rsplit('/')
            .find(|s| !s.is_empty())
            .map(|s| s.to_string())
    }
}

/// A request body of known length.
pub struct Body {
    pub len: u64,
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
}

enum Framing {
    None,
    Length(u64),
    Chunked,
    Eof,
}

/// A response whose body has not been read yet.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    framing: Framing,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Read the whole body, handing each piece to `sink`; returns the body length.
    pub async fn read_body(
        mut self,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, HttpError> {
        let mut total = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        match self.framing {
            Framing::None => {}
            Framing::Length(mut left) => {
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = self
                        .reader
                        .read(&mut buf[..want])
                        .await
                        .map_err(io_err("reading body"))?;
                    if n == 0 {
                        return Err(HttpError::Protocol(format!(
                            "body ended {left} bytes early"
                        )));
                    }
                    sink(&buf[..n]).map_err(io_err("storing body"))?;
                    left -= n as u64;
                    total += n as u64;
                }
            }
            Framing::Eof => loop {
                let n = self
                    .reader
                    .read(&mut buf)
                    .await
                    .map_err(io_err("reading body"))?;
                if n == 0 {
                    break;
                }
                sink(&buf[..n]).map_err(io_err("storing body"))?;
                total += n as u64;
            },
            Framing::Chunked => loop {
                let mut line = String::new();
                self.reader
                    .read_line(&mut line)
                    .await
                    .map_err(io_err("reading chunk size"))?;
                let size_text = line.trim().split(';').next().unwrap_or("");
                let mut left = u64::from_str_radix(size_text, 16).map_err(|_| {
                    HttpError::Protocol(format!("bad chunk size {:?}", line.trim()))
                })?;
                if left == 0 {
                    // Trailers until the empty line.
                    loop {
                        line.clear();
                        let n = self
                            .reader
                            .read_line(&mut line)
                            .await
                            .map_err(io_err("reading trailers"))?;
                        if n == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = self
                        .reader
                        .read(&mut buf[..want])
                        .await
                        .map_err(io_err("reading chunk"))?;
                    if n == 0 {
                        return Err(HttpError::Protocol("chunked body ended early".into()));
                    }
                    sink(&buf[..n]).map_err(io_err("storing body"))?;
                    left -= n as u64;
                    total += n as u64;
                }
                line.clear();
                self.reader
                    .read_line(&mut line)
                    .await
                    .map_err(io_err("reading chunk end"))?;
            },
        }
        Ok(total)
    }
}

/// Send one request and read the response head.
pub async fn request(
    method: &str,
    url: &Url,
    headers: &[(&str, String)],
    body: Option<Body>,
) -> Result<Response, HttpError> {
    let stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(io_err(format!("connecting to {}:{}", url.host, url.port)))?;
    let _ = stream.set_nodelay(true);
    let mut head = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        url.target,
        url.host_header()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = &body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len));
    }
    head.push_str("\r\n");
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(head.as_bytes())
        .await
        .map_err(io_err("sending request"))?;
    if let Some(mut b) = body {
        let sent = tokio::io::copy(&mut (&mut b.reader).take(b.len), reader.get_mut())
            .await
            .map_err(io_err("sending request body"))?;
        if sent != b.len {
            return Err(HttpError::Protocol(format!(
                "request body was {sent} bytes, expected {}",
                b.len
            )));
        }
    }
    reader
        .get_mut()
        .flush()
        .await
        .map_err(io_err("sending request"))?;

    let mut raw = Vec::new();
    loop {
        let n = reader
            .read_until(b'\n', &mut raw)
            .await
            .map_err(io_err("reading response head"))?;
        if n == 0 {
            return Err(HttpError::Protocol(
                "connection closed before the response head".into(),
            ));
        }
        if raw.ends_with(b"\r\n\r\n") || raw.ends_with(b"\n\n") {
            break;
        }
        if raw.len() > 64 * 1024 {
            return Err(HttpError::Protocol("response head too large".into()));
        }
    }
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hdrs);
    match resp.parse(&raw) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::Protocol("incomplete response head".into()))
        }
        Err(e) => return Err(HttpError::Protocol(e.to_string())),
    }
    let status = resp.code.unwrap_or(0);
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let framing =
        if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::None
        } else if get("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            Framing::Chunked
        } else if let Some(len) = get("content-length") {
            Framing::Length(
                len.parse()
                    .map_err(|_| HttpError::Protocol(format!("bad content-length {len:?}")))?,
            )
        } else {
            Framing::Eof
        };
    Ok(Response {
        status,
        headers,
        reader,
        framing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[test]
    fn parses_urls() {
        let u = Url::parse("http://127.0.0.1:8080/a/b.tgz?x=1#frag").unwrap();
        assert_eq!(
            u,
            Url {
                host: "127.0.0.1".into(),
                port: 8080,
                target: "/a/b.tgz?x=1".into()
            }
        );
        assert_eq!(u.file_name().as_deref(), Some("b.tgz"));
        assert_eq!(Url::parse("http://h").unwrap().target, "/");
        assert_eq!(Url::parse("http://h?q").unwrap().target, "/?q");
        assert_eq!(Url::parse("http://[::1]:9/x").unwrap().host, "::1");
        assert!(
            matches!(Url::parse("https://h/x"), Err(HttpError::UnsupportedScheme(s)) if s == "https")
        );
        assert!(Url::parse("nope").is_err());
        assert!(Url::parse("http://h:notaport/").is_err());
    }

    async fn serve_once(reply: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            s.write_all(reply).await.unwrap();
        });
        port
    }

    #[tokio::test]
    async fn reads_chunked_and_length_bodies() {
        let port = serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"x\"\r\n\r\n3\r\nabc\r\n2;ext\r\nde\r\n0\r\n\r\n").await;
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let r = request("GET", &url, &[], None).await.unwrap();
        assert_eq!(r.header("etag"), Some("\"x\""));
        let mut got = Vec::new();
        r.read_body(|b| {
            got.extend_from_slice(b);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(got, b"abcde");

        let port = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope").await;
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let r = request("GET", &url, &[], None).await.unwrap();
        assert_eq!(r.status, 404);
        assert_eq!(r.read_body(|_| Ok(())).await.unwrap(), 4);
    }

    #[tokio::test]
    async fn short_body_is_an_error() {
        let port = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").await;
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let r = request("GET", &url, &[], None).await.unwrap();
        assert!(r
            .read_body(|_| Ok(()))
            .await
            .unwrap_err()
            .to_string()
            .contains("early"));
    }
}
