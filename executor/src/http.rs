//! A small HTTP/1.1 client for downloads and uploads: one request per connection
//! (`Connection: close`), bodies framed by `Content-Length`, chunked encoding or EOF.
//! `http://` and `https://` are supported; TLS is rustls (ring provider) with the server
//! certificate verified against the system roots plus any extra CAs in [`TlsOptions`], and SNI
//! taken from the URL's host.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("unsupported scheme {0:?} (only http and https are supported)")]
    UnsupportedScheme(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake was refused by rustls (bad certificate, protocol mismatch, alert from
    /// the server). Retrying does not help.
    #[error("tls handshake with {addr}: {source}")]
    Tls {
        addr: String,
        #[source]
        source: rustls::Error,
    },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("CA certificate {path}: {reason}")]
    CaCert { path: PathBuf, reason: String },
    #[error("tls setup: {0}")]
    TlsSetup(String),
    #[error("bad HTTP response: {0}")]
    Protocol(String),
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
}

impl HttpError {
    /// Errors that will not go away on a retry (bad URL, certificate rejected, bad setup).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            HttpError::InvalidUrl(_)
                | HttpError::UnsupportedScheme(_)
                | HttpError::Tls { .. }
                | HttpError::ServerName(_)
                | HttpError::CaCert { .. }
                | HttpError::TlsSetup(_)
        )
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HttpError {
    let context = context.into();
    move |source| HttpError::Io { context, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The parts of an `http://` or `https://` URL needed to send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// Path plus query, starting with `/`.
    pub target: String,
}

impl Url {
    /// Parse `http[s]://host[:port]/path?query`. Error messages never echo the URL (it may hold
    /// credentials in its query).
    pub fn parse(s: &str) -> Result<Url, HttpError> {
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| HttpError::InvalidUrl("missing scheme".into()))?;
        let scheme = if scheme.eq_ignore_ascii_case("http") {
            Scheme::Http
        } else if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else {
            return Err(HttpError::UnsupportedScheme(scheme.to_ascii_lowercase()));
        };
        let default_port = scheme.default_port();
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
                None if rest.is_empty() => default_port,
                None => return Err(HttpError::InvalidUrl("bad IPv6 host".into())),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .map_err(|_| HttpError::InvalidUrl("bad port".into()))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(HttpError::InvalidUrl("missing host".into()));
        }
        Ok(Url {
            scheme,
            host,
            port,
            target,
        })
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
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

/// How https servers are verified.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM files of extra CA certificates trusted besides the system roots (a private CA for
    /// a blobstore, say).
    pub ca_certs: Vec<PathBuf>,
    /// Accept any server certificate. Testing only: anyone on the path can then read and
    /// change the traffic.
    pub insecure_skip_verify: bool,
}

/// TLS client settings shared by every https request; cheap to clone. `Tls::default()` trusts
/// the system roots only and loads them on the first https request, so plain-http users never
/// touch the certificate store.
#[derive(Clone)]
pub struct Tls {
    config: Arc<OnceLock<Arc<rustls::ClientConfig>>>,
    handshake_timeout: Duration,
}

/// Like Go's `http.Transport` default: a peer that is not speaking TLS (a plain HTTP port)
/// would otherwise stall the request until the caller's overall timeout.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for Tls {
    fn default() -> Self {
        Tls {
            config: Arc::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("loaded", &self.config.get().is_some())
            .finish()
    }
}

/// The system's CA bundle (`SSL_CERT_FILE`/`SSL_CERT_DIR` or the distribution's
/// `/etc/ssl/certs/ca-certificates.crt`). Unreadable entries are logged and skipped: an empty
/// store just makes every handshake fail with `UnknownIssuer`.
fn system_roots(roots: &mut rustls::RootCertStore) {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "loading system CA certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(ignored, "unusable system CA certificates skipped");
    }
    if added == 0 {
        tracing::warn!("no system CA certificates found; https needs --ca-cert");
    }
}

fn extra_roots(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), HttpError> {
    let err = |reason: String| HttpError::CaCert {
        path: path.to_path_buf(),
        reason,
    };
    // Read first so a missing file is reported as such rather than as bad PEM.
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| err(format!("bad PEM: {e}")))?;
        roots.add(cert).map_err(|e| err(e.to_string()))?;
        n += 1;
    }
    if n == 0 {
        return Err(err("no certificates in the file".into()));
    }
    Ok(())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_config(opts: &TlsOptions) -> Result<rustls::ClientConfig, HttpError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::TlsSetup(e.to_string()))?;
    let mut config = if opts.insecure_skip_verify {
        tracing::warn!("https server certificates are NOT verified (--insecure-skip-verify)");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        system_roots(&mut roots);
        for path in &opts.ca_certs {
            extra_roots(&mut roots, path)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Tls {
    /// Build the settings now, so a missing or malformed CA file is reported at startup.
    pub fn new(opts: &TlsOptions) -> Result<Tls, HttpError> {
        let config = build_config(opts)?;
        let lock = OnceLock::new();
        let _ = lock.set(Arc::new(config));
        Ok(Tls {
            config: Arc::new(lock),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        })
    }

    /// Give up on a handshake after `timeout` (default 10 s); retried like other network errors.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Tls {
        self.handshake_timeout = timeout;
        self
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.config
            .get_or_init(|| {
                // Only the system roots: nothing here can fail but the protocol-version check
                // of the built-in provider.
                let config = build_config(&TlsOptions::default())
                    .expect("ring provider supports the default TLS versions");
                Arc::new(config)
            })
            .clone()
    }
}

/// `--insecure-skip-verify`: accepts any certificate but still checks the handshake
/// signatures, so the connection is at least to whoever holds the presented key.
#[derive(Debug)]
struct SkipVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A plain or TLS connection.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

async fn connect(tls: &Tls, url: &Url) -> Result<Box<dyn Conn>, HttpError> {
    let addr = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(io_err(format!("connecting to {addr}")))?;
    let _ = stream.set_nodelay(true);
    if url.scheme == Scheme::Http {
        return Ok(Box::new(stream));
    }
    let name = ServerName::try_from(url.host.clone())
        .map_err(|_| HttpError::ServerName(url.host.clone()))?;
    let connector = tokio_rustls::TlsConnector::from(tls.client_config());
    let handshake = tokio::time::timeout(tls.handshake_timeout, connector.connect(name, stream));
    match handshake.await {
        Err(_) => Err(HttpError::Io {
            context: format!("tls handshake with {addr}"),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("timed out after {:?}", tls.handshake_timeout),
            ),
        }),
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => {
            // rustls reports its own failures as an io::Error wrapping a rustls::Error; anything
            // else (reset, EOF) is a network error and worth a retry.
            let tls_error = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .cloned();
            Err(match tls_error {
                Some(source) => HttpError::Tls { addr, source },
                None => HttpError::Io {
                    context: format!("tls handshake with {addr}"),
                    source: e,
                },
            })
        }
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
    reader: BufReader<Box<dyn Conn>>,
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

/// Send one request and read the response head; `https://` servers are verified against the
/// system roots only (see [`request_with`]).
pub async fn request(
    method: &str,
    url: &Url,
    headers: &[(&str, String)],
    body: Option<Body>,
) -> Result<Response, HttpError> {
    static SYSTEM: OnceLock<Tls> = OnceLock::new();
    request_with(SYSTEM.get_or_init(Tls::default), method, url, headers, body).await
}

/// Send one request and read the response head; `tls` verifies `https://` servers.
pub async fn request_with(
    tls: &Tls,
    method: &str,
    url: &Url,
    headers: &[(&str, String)],
    body: Option<Body>,
) -> Result<Response, HttpError> {
    let stream = connect(tls, url).await?;
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
                scheme: Scheme::Http,
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
            matches!(Url::parse("ftp://h/x"), Err(HttpError::UnsupportedScheme(s)) if s == "ftp")
        );
        assert!(Url::parse("nope").is_err());
        assert!(Url::parse("http://h:notaport/").is_err());
        assert!(Url::parse("https://[::1]x/").is_err());
    }

    #[test]
    fn https_urls_default_to_443_and_keep_the_host_for_sni() {
        let u = Url::parse("HTTPS://blobs.example.com/droplets/app.tgz?sig=abc").unwrap();
        assert_eq!(
            u,
            Url {
                scheme: Scheme::Https,
                host: "blobs.example.com".into(),
                port: 443,
                target: "/droplets/app.tgz?sig=abc".into()
            }
        );
        assert_eq!(u.host_header(), "blobs.example.com");
        assert_eq!(u.file_name().as_deref(), Some("app.tgz"));
        let u = Url::parse("https://localhost:8443").unwrap();
        assert_eq!((u.port, u.target.as_str()), (8443, "/"));
        assert_eq!(u.host_header(), "localhost:8443");
        // The default port of the *other* scheme is not elided.
        assert_eq!(Url::parse("https://h:80/").unwrap().host_header(), "h:80");
        assert_eq!(Url::parse("http://h:443/").unwrap().host_header(), "h:443");
        assert_eq!(Url::parse("http://h:80/").unwrap().host_header(), "h");
        let u = Url::parse("https://[::1]/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 443));
        assert_eq!(u.host_header(), "[::1]");
        let err = Url::parse("gopher://h/").unwrap_err().to_string();
        assert_eq!(
            err,
            "unsupported scheme \"gopher\" (only http and https are supported)"
        );
        // Neither the scheme error nor any other parse error echoes the URL (credentials).
        let err = Url::parse("https://user:secret@h/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        assert!(HttpError::UnsupportedScheme("ftp".into()).is_permanent());
        assert!(HttpError::Tls {
            addr: "h:443".into(),
            source: rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        }
        .is_permanent());
        assert!(!HttpError::Protocol("x".into()).is_permanent());
        assert!(!HttpError::Timeout(Duration::from_secs(1)).is_permanent());
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

#[cfg(test)]
mod tls_tests;
