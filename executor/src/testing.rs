//! Test support shared by the unit and end-to-end tests: a tiny HTTP/1.1 file server on
//! 127.0.0.1:0 that serves registered files (with ETag and conditional GET), counts requests
//! and body bytes sent, and records POSTed uploads. [`FileServer::start_tls`] serves the same
//! over TLS with a caller-made certificate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
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
    uploads: Vec<Upload>,
    /// Status codes to answer POSTs with, consumed one per request (then 200).
    upload_statuses: Vec<u16>,
}

/// The server; dropped = stopped.
pub struct FileServer {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<State>>,
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
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = match tls {
                        None => serve(sock, st).await,
                        Some(acceptor) => match acceptor.accept(sock).await {
                            Ok(s) => serve(s, st).await,
                            Err(e) => {
                                tracing::debug!(error = %e, "test server: tls handshake failed");
                                Ok(())
                            }
                        },
                    };
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
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), file);
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

    /// GET requests seen for `path`.
    pub fn requests(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .requests
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// 304 answers sent for `path`.
    pub fn not_modified(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .not_modified
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Body bytes sent for `path`.
    pub fn body_bytes(&self, path: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .body_bytes
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.state.lock().unwrap().uploads.clone()
    }

    /// The next POSTs are answered with these statuses, in order.
    pub fn fail_uploads(&self, statuses: &[u16]) {
        self.state.lock().unwrap().upload_statuses = statuses.to_vec();
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    sock: S,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(sock);
    let mut raw = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut raw).await?;
        if n == 0 || raw.ends_with(b"\r\n\r\n") {
            break;
        }
    }
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut hdrs);
    if req.parse(&raw).is_err() {
        return Ok(());
    }
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("/").to_string();
    let path = target.split('?').next().unwrap_or("/").to_string();
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).to_string(),
            )
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };

    let (status, mut extra, body, chunked): (u16, Vec<String>, Vec<u8>, bool) = if method == "POST"
    {
        let len: usize = get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await?;
        let mut st = state.lock().unwrap();
        let status = if st.upload_statuses.is_empty() {
            200
        } else {
            st.upload_statuses.remove(0)
        };
        st.uploads.push(Upload {
            path: path.clone(),
            headers: headers.clone(),
            body,
        });
        (status, vec![], Vec::new(), false)
    } else {
        let mut st = state.lock().unwrap();
        *st.requests.entry(path.clone()).or_default() += 1;
        match st.files.get(&path).cloned() {
            None => (404, vec![], b"not found".to_vec(), false),
            Some(f) if f.status.is_some() => (f.status.unwrap_or(500), vec![], Vec::new(), false),
            Some(f) => {
                let mut extra = Vec::new();
                if let Some(e) = &f.etag {
                    extra.push(format!("ETag: {e}"));
                }
                if let Some(lm) = &f.last_modified {
                    extra.push(format!("Last-Modified: {lm}"));
                }
                let etag_match = f.etag.is_some() && get("if-none-match") == f.etag;
                let lm_match = f.etag.is_none()
                    && f.last_modified.is_some()
                    && get("if-modified-since") == f.last_modified;
                if etag_match || lm_match {
                    *st.not_modified.entry(path.clone()).or_default() += 1;
                    (304, extra, Vec::new(), false)
                } else {
                    *st.body_bytes.entry(path.clone()).or_default() += f.body.len() as u64;
                    (200, extra, f.body, f.chunked)
                }
            }
        }
    };
    let reason = match status {
        200 => "OK",
        304 => "Not Modified",
        404 => "Not Found",
        _ => "Status",
    };
    let mut head = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    if status != 304 {
        if chunked {
            extra.push("Transfer-Encoding: chunked".into());
        } else {
            extra.push(format!("Content-Length: {}", body.len()));
        }
    }
    for h in extra {
        head.push_str(&h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let sock = reader.get_mut();
    sock.write_all(head.as_bytes()).await?;
    if chunked {
        for piece in body.chunks(1000) {
            sock.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                .await?;
            sock.write_all(piece).await?;
            sock.write_all(b"\r\n").await?;
        }
        sock.write_all(b"0\r\n\r\n").await?;
    } else {
        sock.write_all(&body).await?;
    }
    sock.shutdown().await
}
