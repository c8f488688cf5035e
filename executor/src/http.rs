//! The HTTP client for downloads and uploads: reqwest (hyper underneath) with pooled
//! keep-alive connections, redirects followed as Go's client does, proxies from the
//! environment and gzip decoding. TLS is our own rustls config (ring provider): the system
//! roots plus any extra CAs in [`TlsOptions`], or nothing verified when asked; SNI is the URL's
//! host. [`Url`] is our own small parser so that no error ever echoes a (signed) URL.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt};

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

    /// `host:port` (IPv6 in brackets), for error messages.
    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
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

/// The URL again, normalised (default ports elided). Not for error messages: it may carry
/// credentials in its query.
impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}{}", self.host_header(), self.target)
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
    client: Arc<OnceLock<reqwest::Client>>,
}

/// Like Go's `http.Transport` default: a peer that is not speaking TLS (a plain HTTP port)
/// would otherwise stall the request until the caller's overall timeout.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for Tls {
    fn default() -> Self {
        Tls {
            config: Arc::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            client: Arc::default(),
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
            client: Arc::default(),
        })
    }

    /// Give up on a handshake after `timeout` (default 10 s); retried like other network errors.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Tls {
        self.handshake_timeout = timeout;
        self.client = Arc::default();
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

/// The client for one [`Tls`]: built on first use, then shared by every request so that
/// keep-alive connections are reused.
fn client(tls: &Tls) -> Result<reqwest::Client, HttpError> {
    if let Some(c) = tls.client.get() {
        return Ok(c.clone());
    }
    let config = (*tls.client_config()).clone();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        // Covers the TCP connect and the TLS handshake: a peer that is not speaking TLS would
        // otherwise stall the request until the caller's overall timeout.
        .connect_timeout(tls.handshake_timeout)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .http1_only()
        .tcp_nodelay(true)
        .build()
        .map_err(|e| HttpError::TlsSetup(chain(&e)))?;
    Ok(tls.client.get_or_init(|| client).clone())
}

/// Like Go's `http.Client`: blobstores answer downloads with a redirect to a signed URL,
/// sometimes through a CDN, but never with long chains.
const MAX_REDIRECTS: usize = 10;

/// The causes of an error, `a: b: c`, without reqwest's and hyper's generic wrappers and
/// without any URL (signed URLs carry credentials).
fn chain(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for err in causes(e) {
        let part = err.to_string();
        let generic = part.starts_with("error sending request")
            || part.starts_with("client error (")
            || part.starts_with("builder error")
            || part.starts_with("request or response body error")
            || part.starts_with("error decoding response body");
        if !generic && !parts.iter().any(|p| p.contains(&part)) {
            parts.push(part);
        }
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// `e` and its causes. An `io::Error` wrapping another error reports only the inner one's
/// *source* as its own, so the wrapped error itself is yielded too (rustls's errors arrive
/// that way from tokio-rustls).
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        out.push(err);
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    out.into_iter()
}

/// The first cause of type `T` in `e`'s chain.
fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    causes(e).find_map(|err| err.downcast_ref::<T>())
}

/// Sort a reqwest failure into our kinds: a certificate rejected by rustls is permanent;
/// connect failures and timeouts are network errors (retried by the callers).
fn classify(e: reqwest::Error, url: &Url, context: &str, tls: &Tls) -> HttpError {
    let e = e.without_url();
    let addr = url.addr();
    if let Some(t) = find_cause::<rustls::Error>(&e) {
        return HttpError::Tls {
            addr,
            source: t.clone(),
        };
    }
    if e.is_redirect() {
        return HttpError::Protocol(format!("more than {MAX_REDIRECTS} redirects"));
    }
    if e.is_builder() {
        return HttpError::InvalidUrl(chain(&e));
    }
    if e.is_connect() && e.is_timeout() {
        return HttpError::Io {
            context: format!("connecting to {addr}"),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("timed out after {:?}", tls.handshake_timeout),
            ),
        };
    }
    let kind = find_cause::<std::io::Error>(&e)
        .map(|io| io.kind())
        .unwrap_or(std::io::ErrorKind::Other);
    let context = if e.is_connect() {
        format!("connecting to {addr}")
    } else {
        context.to_string()
    };
    HttpError::Io {
        context,
        source: std::io::Error::new(kind, chain(&e)),
    }
}

/// A request body of known length.
pub struct Body {
    pub len: u64,
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
}

/// A response whose body has not been read yet. Redirects have been followed: `status` is
/// the final one.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    inner: reqwest::Response,
    url: Url,
    tls: Tls,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next piece of the body (gzip content-encoding already decoded); `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, HttpError> {
        self.inner
            .chunk()
            .await
            .map_err(|e| classify(e, &self.url, "reading body", &self.tls))
    }

    /// Read the whole body, handing each piece to `sink`; returns the body length.
    pub async fn read_body(
        mut self,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, HttpError> {
        let mut total = 0u64;
        while let Some(piece) = self.chunk().await? {
            sink(&piece).map_err(io_err("storing body"))?;
            total += piece.len() as u64;
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
/// Redirects are followed (up to ten; credentials are dropped when one leaves the host),
/// proxies come from `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`, and gzip bodies are decoded.
pub async fn request_with(
    tls: &Tls,
    method: &str,
    url: &Url,
    headers: &[(&str, String)],
    body: Option<Body>,
) -> Result<Response, HttpError> {
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| HttpError::Protocol(format!("bad method {method:?}")))?;
    let target =
        reqwest::Url::parse(&url.to_string()).map_err(|e| HttpError::InvalidUrl(e.to_string()))?;
    let mut req = client(tls)?.request(method, target);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    if let Some(b) = body {
        let stream = tokio_util::io::ReaderStream::new(b.reader.take(b.len));
        req = req
            .header(reqwest::header::CONTENT_LENGTH, b.len)
            .body(reqwest::Body::wrap_stream(stream));
    }
    let inner = req
        .send()
        .await
        .map_err(|e| classify(e, url, "sending request", tls))?;
    let headers = inner
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).trim().to_string(),
            )
        })
        .collect();
    Ok(Response {
        status: inner.status().as_u16(),
        headers,
        inner,
        url: url.clone(),
        tls: tls.clone(),
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
        let err = r.read_body(|_| Ok(())).await.unwrap_err();
        assert!(!err.is_permanent(), "{err}");
        assert!(
            err.to_string().starts_with("reading body: ")
                && err
                    .to_string()
                    .contains("end of file before message length reached"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod tls_tests;
