//! What a Cloud Controller does around a staging (spec §3.5-3.6, §5), for `cellctl push` and
//! `cellctl stage`: serve the app package and buildpacks, take the droplet and build-cache
//! uploads (multipart, field `upload[droplet]`), send `staging.<agent>.start` as a request,
//! read both replies on its inbox and stream the staging log from the agent's directory
//! server while it runs.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::bus::{Bus, BusError};
use crate::ctl::{multipart, CtlError};
use crate::protocol::{subject, StagingReply, StagingRequest, StagingStop};

/// The multipart field the agent puts a droplet (and a build cache) in.
pub const UPLOAD_FIELD: &str = "upload[droplet]";
/// Where an uploaded droplet is served from.
pub const DROPLET_PATH: &str = "/droplet.tgz";
/// Where an uploaded build cache is served from (404 until one was uploaded).
pub const CACHE_PATH: &str = "/buildpack_cache.tgz";
const DROPLET_UPLOAD: &str = "/upload/droplet";
const CACHE_UPLOAD: &str = "/upload/buildpack_cache";
/// Bodies above this are refused (a droplet is bounded by the staging disk limit anyway).
const MAX_UPLOAD: usize = 8 << 30;

/// What was uploaded so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uploads {
    pub droplets: u32,
    pub caches: u32,
}

struct Shared {
    files: RwLock<HashMap<String, Bytes>>,
    uploads: watch::Sender<Uploads>,
}

/// cellctl's HTTP server for one staging: files by path, and the two upload endpoints.
pub struct StageServer {
    /// `http://<ip>:<port>`.
    pub base: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl StageServer {
    pub async fn start(ip: IpAddr) -> Result<StageServer, CtlError> {
        let serve_err = |e: std::io::Error| CtlError::Serve {
            addr: ip.to_string(),
            message: e.to_string(),
        };
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .map_err(serve_err)?;
        let addr = listener.local_addr().map_err(serve_err)?;
        let shared = Arc::new(Shared {
            files: RwLock::new(HashMap::new()),
            uploads: watch::channel(Uploads::default()).0,
        });
        let state = shared.clone();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let state = state.clone();
            async move { handle(&state, req).await }
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "staging file server stopped");
            }
        });
        Ok(StageServer {
            base: format!("http://{addr}"),
            shared,
            task,
        })
    }

    /// Serve `bytes` at `path` (starting with `/`); the URL.
    pub fn serve(&self, path: &str, bytes: Vec<u8>) -> String {
        self.shared
            .files
            .write()
            .expect("lock")
            .insert(path.to_string(), Bytes::from(bytes));
        self.url(path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn droplet_upload_url(&self) -> String {
        self.url(DROPLET_UPLOAD)
    }

    pub fn cache_upload_url(&self) -> String {
        self.url(CACHE_UPLOAD)
    }

    /// What is served at `path`.
    pub fn file(&self, path: &str) -> Option<Bytes> {
        self.shared.files.read().expect("lock").get(path).cloned()
    }

    /// The latest uploaded droplet.
    pub fn droplet(&self) -> Option<Bytes> {
        self.file(DROPLET_PATH)
    }

    pub fn uploads(&self) -> Uploads {
        self.shared.uploads.borrow().clone()
    }
}

impl Drop for StageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(s: &Shared, req: Request<Body>) -> Response {
    let path = req.uri().path().to_string();
    match *req.method() {
        Method::GET | Method::HEAD => match s.files.read().expect("lock").get(&path) {
            Some(b) => b.clone().into_response(),
            None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        },
        Method::POST | Method::PUT if path == DROPLET_UPLOAD || path == CACHE_UPLOAD => {
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = match axum::body::to_bytes(req.into_body(), MAX_UPLOAD).await {
                Ok(b) => b,
                Err(e) => {
                    return (StatusCode::BAD_REQUEST, format!("reading the body: {e}\n"))
                        .into_response()
                }
            };
            let data = match multipart::field(&ct, &body, UPLOAD_FIELD) {
                Ok(Some(part)) => body.slice_ref(part.data),
                Ok(None) => {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!("no {UPLOAD_FIELD} field\n"),
                    )
                        .into_response()
                }
                Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
            };
            let is_droplet = path == DROPLET_UPLOAD;
            let served = if is_droplet { DROPLET_PATH } else { CACHE_PATH };
            s.files
                .write()
                .expect("lock")
                .insert(served.to_string(), data);
            s.uploads.send_modify(|u| {
                if is_droplet {
                    u.droplets += 1
                } else {
                    u.caches += 1
                }
            });
            // No `url` in the answer: the upload is done, nothing to poll (spec §5 step 6).
            (
                [(header::CONTENT_TYPE, "application/json")],
                "{}".to_string(),
            )
                .into_response()
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response(),
    }
}

/// How to wait for a staging.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// The directory server's address (found through `router.register` when absent).
    pub dir_server: Option<SocketAddr>,
    /// For the setup reply (container, downloads).
    pub setup_timeout: Duration,
    /// For the completion reply after the setup reply.
    pub timeout: Duration,
}

/// How a staging ended, and how the log went.
#[derive(Debug)]
pub struct StageOutcome {
    /// The completion reply (or the only reply, when the agent refused at once).
    pub reply: StagingReply,
    pub setup: Option<StagingReply>,
    /// Staging-log bytes streamed.
    pub log_bytes: u64,
    /// Why the log could not be streamed (the staging itself may have worked).
    pub log_error: Option<String>,
}

/// Send `req` to `staging.<agent_id>.start` and wait for its completion reply, streaming the
/// staging log into `log` from the setup reply on. Ctrl-C sends `staging.stop` for the app
/// (the agent then answers `Error staging: task stopped`).
pub async fn stage(
    bus: &Bus,
    agent_id: &str,
    req: &StagingRequest,
    opts: &StageOptions,
    log: Box<dyn Write + Send>,
) -> Result<StageOutcome, CtlError> {
    let subj = subject::staging_start(agent_id);
    let mut sub = bus.send_request(&subj, req).await?;
    bus.flush().await;

    let (done_tx, done_rx) = watch::channel(false);
    let mut log = Some(log);
    let mut streamer: Option<tokio::task::JoinHandle<(u64, Option<String>)>> = None;
    let mut setup: Option<StagingReply> = None;
    let mut deadline = tokio::time::Instant::now() + opts.setup_timeout;
    let mut stop_sent = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let reply = loop {
        tokio::select! {
            next = tokio::time::timeout_at(deadline, sub.next()) => {
                let msg = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err(BusError::Request {
                        subject: subj,
                        message: "the NATS subscription ended".into(),
                    }.into()),
                    Err(_) => match setup.take() {
                        // A failed setup with no completion after it: that was the end.
                        Some(s) if s.error.is_some() => break s,
                        Some(_) => return Err(CtlError::Staging(format!(
                            "agent {agent_id} did not complete the staging within {:?}",
                            opts.timeout
                        ))),
                        None => return Err(CtlError::Staging(format!(
                            "agent {agent_id} did not answer the staging request within {:?}",
                            opts.setup_timeout
                        ))),
                    },
                };
                let Some(r) = Bus::decode::<StagingReply>(&msg) else { continue };
                if r.task_id != req.task_id {
                    continue;
                }
                match (&r.task_streaming_log_url, &setup) {
                    (Some(url), None) => {
                        if r.error.is_some() {
                            // The completion reply follows soon, with the same error.
                            deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                        } else {
                            deadline = tokio::time::Instant::now() + opts.timeout;
                            if let Some(out) = log.take() {
                                streamer = Some(tokio::spawn(stream_log(
                                    bus.clone(),
                                    url.clone(),
                                    opts.dir_server,
                                    out,
                                    done_rx.clone(),
                                )));
                            }
                        }
                        setup = Some(r);
                    }
                    _ => break r,
                }
            }
            _ = &mut ctrl_c, if !stop_sent => {
                stop_sent = true;
                eprintln!("interrupted: stopping the staging of {}", req.app_id);
                bus.publish(subject::STAGING_STOP, &StagingStop { app_id: req.app_id.clone() }).await;
                bus.flush().await;
                deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            }
        }
    };
    let _ = done_tx.send(true);
    let (log_bytes, log_error) = match streamer {
        Some(h) => h.await.unwrap_or((0, Some("log streamer failed".into()))),
        None => (0, None),
    };
    Ok(StageOutcome {
        reply,
        setup,
        log_bytes,
        log_error,
    })
}

/// How long the log keeps streaming after the completion reply (the rest of the tail).
const LOG_GRACE: Duration = Duration::from_secs(2);

/// Tail the staging log from offset 0 into `out` until `done` (plus a short grace for what is
/// still on its way); a stream cut early (idle timeout) is resumed at the offset reached.
async fn stream_log(
    bus: Bus,
    url: String,
    dir_server: Option<SocketAddr>,
    mut out: Box<dyn Write + Send>,
    mut done: watch::Receiver<bool>,
) -> (u64, Option<String>) {
    let parsed = match url::Url::parse(&url) {
        Ok(u) => u,
        Err(e) => return (0, Some(format!("log URL {url:?}: {e}"))),
    };
    let Some(host) = parsed.host_str().map(str::to_string) else {
        return (0, Some(format!("log URL {url:?} has no host")));
    };
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if host.parse::<IpAddr>().is_err() && !host.starts_with('[') {
        // `<uuid>.<domain>` is for routers: reach the directory server that registered it.
        let addr = match dir_server {
            Some(a) => Some(a),
            None => crate::ctl::directory_server(&bus, &host, Duration::from_secs(5))
                .await
                .ok()
                .flatten(),
        };
        let Some(addr) = addr else {
            return (
                0,
                Some(format!(
                    "no directory server registered {host}: give it with --dir-server HOST:PORT"
                )),
            );
        };
        builder = builder.resolve(&host, addr);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return (0, Some(format!("HTTP client: {e}"))),
    };
    let mut received: u64 = 0;
    let mut last_error: Option<String> = None;
    let mut grace_until: Option<tokio::time::Instant> = None;
    let mut failures = 0u32;
    loop {
        if *done.borrow() && grace_until.is_none() {
            grace_until = Some(tokio::time::Instant::now() + LOG_GRACE);
        }
        if grace_until.is_some_and(|g| tokio::time::Instant::now() >= g) {
            break;
        }
        let tail_url = format!("{url}&tail=true&tail_offset={received}");
        let failure = match client.get(&tail_url).send().await {
            Ok(r) if r.status().is_success() => Ok(r),
            Ok(r) => Err(r.status().to_string()),
            Err(e) => Err(e.to_string()),
        };
        let resp = match failure {
            Ok(r) => r,
            Err(e) => {
                // Once the staging is over the task is gone (404): that is no error.
                if *done.borrow() {
                    break;
                }
                last_error = Some(format!("GET {}: {e}", parsed.path()));
                failures += 1;
                if failures > 20 {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(500), done.changed()).await;
                continue;
            }
        };
        failures = 0;
        last_error = None;
        let mut stream = resp.bytes_stream();
        loop {
            if *done.borrow() && grace_until.is_none() {
                grace_until = Some(tokio::time::Instant::now() + LOG_GRACE);
            }
            let next = match grace_until {
                Some(g) => match tokio::time::timeout_at(g, stream.next()).await {
                    Ok(n) => n,
                    Err(_) => break,
                },
                None => tokio::select! {
                    n = stream.next() => n,
                    _ = done.changed() => continue,
                },
            };
            match next {
                Some(Ok(chunk)) => {
                    received += chunk.len() as u64;
                    let _ = out.write_all(&chunk);
                    let _ = out.flush();
                }
                // Cut (idle timeout, container gone) or ended: resume or finish above.
                Some(Err(_)) | None => break,
            }
        }
        if grace_until.is_some() {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), done.changed()).await;
    }
    // The rest, if the agent kept the log after the container went.
    if let Ok(r) = client
        .get(&url)
        .header(header::RANGE, format!("bytes={received}-"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        if r.status() == StatusCode::PARTIAL_CONTENT {
            if let Ok(b) = r.bytes().await {
                received += b.len() as u64;
                let _ = out.write_all(&b);
                let _ = out.flush();
            }
        }
    }
    (received, last_error)
}

/// Where the runner writes the staging log, inside the droplet.
const DROPLET_LOG: &str = "logs/staging_task.log";

/// The staging log a droplet carries (`logs/staging_task.log`): what a tail cut short by the
/// container's end did not deliver.
pub fn droplet_log(droplet: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(droplet));
    for entry in ar.entries().ok()? {
        let mut e = entry.ok()?;
        let is_log = e
            .path()
            .ok()
            .is_some_and(|p| p.to_string_lossy().trim_start_matches("./") == DROPLET_LOG);
        if is_log {
            let mut out = Vec::new();
            e.read_to_end(&mut out).ok()?;
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_staging_log_is_read_from_a_droplet() {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, data) in [
            ("./app/index.html", &b"hi"[..]),
            (
                "./logs/staging_task.log",
                b"-----> Downloaded app package (4K)\n",
            ),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        }
        let tgz = b.into_inner().unwrap().finish().unwrap();
        assert_eq!(
            droplet_log(&tgz).unwrap(),
            b"-----> Downloaded app package (4K)\n"
        );
        assert_eq!(droplet_log(b"not a droplet"), None);
    }

    fn multipart_body(boundary: &str, field: &str, data: &[u8]) -> Vec<u8> {
        let mut b = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"droplet.tgz\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        b.extend_from_slice(data);
        b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        b
    }

    #[tokio::test]
    async fn uploads_are_received_and_served_back() {
        let server = StageServer::start("127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        let pkg = server.serve("/packages/app.zip", b"PK-zip".to_vec());
        let client = reqwest::Client::new();
        let got = client.get(&pkg).send().await.unwrap();
        assert_eq!(got.status(), 200);
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"PK-zip");
        assert_eq!(
            client
                .get(server.url(CACHE_PATH))
                .send()
                .await
                .unwrap()
                .status(),
            404
        );

        let droplet: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let resp = client
            .post(format!("{}?async=true", server.droplet_upload_url()))
            .header("content-type", "multipart/form-data; boundary=XX")
            .body(multipart_body("XX", UPLOAD_FIELD, &droplet))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(server.droplet().unwrap().as_ref(), &droplet[..]);
        let served = client.get(server.url(DROPLET_PATH)).send().await.unwrap();
        assert_eq!(served.bytes().await.unwrap().as_ref(), &droplet[..]);

        let resp = client
            .post(server.cache_upload_url())
            .header("content-type", "multipart/form-data; boundary=YY")
            .body(multipart_body("YY", UPLOAD_FIELD, b"cache"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            server.uploads(),
            Uploads {
                droplets: 1,
                caches: 1
            }
        );
        let cache = client.get(server.url(CACHE_PATH)).send().await.unwrap();
        assert_eq!(cache.bytes().await.unwrap().as_ref(), b"cache");

        // The wrong field, or not multipart: refused, nothing stored.
        for (ct, body) in [
            (
                "multipart/form-data; boundary=ZZ",
                multipart_body("ZZ", "file", b"x"),
            ),
            ("application/octet-stream", b"raw".to_vec()),
        ] {
            let resp = client
                .post(server.droplet_upload_url())
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 400);
        }
        assert_eq!(server.uploads().droplets, 1);
        assert_eq!(server.droplet().unwrap().as_ref(), &droplet[..]);
    }
}
