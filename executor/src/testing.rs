//! Test support shared by the unit and end-to-end tests: a file server on 127.0.0.1:0 (axum
//! on hyper) that serves registered files (with ETag and conditional GET, redirects, gzip),
//! counts requests and body bytes sent, records POSTed uploads, and answers requests in
//! proxy form (`GET http://host/path`) as a forward proxy would, counting them.
//! [`FileServer::start_tls`] serves the same over TLS with a caller-made certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State as Shared};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

/// A file the server hands out.
#[derive(Debug, Clone, Default)]
pub struct ServedFile {
    pub body: Vec<u8>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Answer with this status (and an empty body) instead.
    pub status: Option<u16>,
    /// Send the body chunked instead of with Content-Length.
    pub chunked: bool,
    /// Answer with a redirect to this URL (status 302 unless `status` says otherwise).
    pub redirect: Option<String>,
    /// Send the body gzip-compressed with `Content-Encoding: gzip`.
    pub gzip: bool,
}

/// A recorded POST.
#[derive(Debug, Clone)]
pub struct Upload {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Upload {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    files: HashMap<String, ServedFile>,
    requests: HashMap<String, usize>,
    not_modified: HashMap<String, usize>,
    body_bytes: HashMap<String, u64>,
    /// Requests that arrived in proxy (absolute) form, by their full target.
    proxied: Vec<String>,
    uploads: Vec<Upload>,
    /// Status codes to answer POSTs with, consumed one per request (then 200).
    upload_statuses: Vec<u16>,
}

type SharedState = Arc<Mutex<State>>;

/// The server; dropped = stopped.
pub struct FileServer {
    addr: SocketAddr,
    scheme: &'static str,
    state: SharedState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileServer {
    pub async fn start() -> FileServer {
        Self::start_with(None).await
    }

    /// Serve over TLS with `config` (its certificate should cover `127.0.0.1` for
    /// [`FileServer::url`]). Connections whose handshake fails are dropped before any request
    /// is counted.
    pub async fn start_tls(config: Arc<rustls::ServerConfig>) -> FileServer {
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(config))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test server");
        let addr = listener.local_addr().expect("addr");
        let state = SharedState::default();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let app = app.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => serve_connection(sock, app).await,
                        Some(acceptor) => match acceptor.accept(sock).await {
                            Ok(s) => serve_connection(s, app).await,
                            Err(e) => {
                                tracing::debug!(error = %e, "test server: tls handshake failed")
                            }
                        },
                    }
                });
            }
        });
        FileServer {
            addr,
            scheme,
            state,
            task,
        }
    }

    /// `http[s]://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn put(&self, path: &str, file: ServedFile) {
        self.lock().files.insert(path.to_string(), file);
    }

    /// Serve `body` at `path` with a strong ETag derived from its length and a counter.
    pub fn put_bytes(&self, path: &str, body: &[u8]) {
        let etag = format!(
            "\"{}-{}\"",
            body.len(),
            body.iter().map(|b| *b as u64).sum::<u64>()
        );
        self.put(
            path,
            ServedFile {
                body: body.to_vec(),
                etag: Some(etag),
                ..Default::default()
            },
        );
    }

    /// Answer GETs of `path` with a 302 to `location`.
    pub fn put_redirect(&self, path: &str, location: &str) {
        self.put(
            path,
            ServedFile {
                redirect: Some(location.to_string()),
                ..Default::default()
            },
        );
    }

    /// GET requests seen for `path`.
    pub fn requests(&self, path: &str) -> usize {
        self.lock().requests.get(path).copied().unwrap_or(0)
    }

    /// 304 answers sent for `path`.
    pub fn not_modified(&self, path: &str) -> usize {
        self.lock().not_modified.get(path).copied().unwrap_or(0)
    }

    /// Body bytes sent for `path`.
    pub fn body_bytes(&self, path: &str) -> u64 {
        self.lock().body_bytes.get(path).copied().unwrap_or(0)
    }

    /// Full targets of the requests that came in proxy form (`http://host:port/path`).
    pub fn proxied(&self) -> Vec<String> {
        self.lock().proxied.clone()
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.lock().uploads.clone()
    }

    /// The next POSTs are answered with these statuses, in order.
    pub fn fail_uploads(&self, statuses: &[u16]) {
        self.lock().upload_statuses = statuses.to_vec();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One connection, HTTP/1.1 with keep-alive, served by the router.
async fn serve_connection<S>(io: S, app: axum::Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "test server: connection ended");
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn handle(Shared(state): Shared<SharedState>, req: Request) -> Response {
    let uri = req.uri().clone();
    let path = uri.path().to_string();
    let headers = req.headers().clone();
    if uri.authority().is_some() {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.proxied.push(uri.to_string());
    }
    if req.method() == Method::POST {
        let body = match axum::body::to_bytes(req.into_body(), 1 << 30).await {
            Ok(b) => b.to_vec(),
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        };
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        let code = if st.upload_statuses.is_empty() {
            200
        } else {
            st.upload_statuses.remove(0)
        };
        st.uploads.push(Upload {
            path,
            headers: header_pairs(&headers),
            body,
        });
        return status(code).into_response();
    }
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    *st.requests.entry(path.clone()).or_default() += 1;
    let Some(f) = st.files.get(&path).cloned() else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    if let Some(location) = &f.redirect {
        let code = status(f.status.unwrap_or(302));
        return (code, [(header::LOCATION, location.clone())]).into_response();
    }
    if let Some(code) = f.status {
        return status(code).into_response();
    }
    let mut out = Response::builder();
    if let Some(e) = &f.etag {
        out = out.header(header::ETAG, e);
    }
    if let Some(lm) = &f.last_modified {
        out = out.header(header::LAST_MODIFIED, lm);
    }
    let wanted = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let etag_match = f.etag.is_some() && wanted(header::IF_NONE_MATCH) == f.etag.as_deref();
    let lm_match = f.etag.is_none()
        && f.last_modified.is_some()
        && wanted(header::IF_MODIFIED_SINCE) == f.last_modified.as_deref();
    if etag_match || lm_match {
        *st.not_modified.entry(path).or_default() += 1;
        return out
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .unwrap_or_default();
    }
    *st.body_bytes.entry(path).or_default() += f.body.len() as u64;
    drop(st);
    let body = if f.gzip {
        out = out.header(header::CONTENT_ENCODING, "gzip");
        gzip(&f.body)
    } else {
        f.body
    };
    let body = if f.chunked {
        // A stream of unknown length: hyper sends it chunked.
        let pieces: Vec<Result<bytes::Bytes, std::io::Error>> = body
            .chunks(1000)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        Body::from_stream(futures_util::stream::iter(pieces))
    } else {
        Body::from(body)
    };
    out.status(StatusCode::OK).body(body).unwrap_or_default()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).to_string(),
            )
        })
        .collect()
}
