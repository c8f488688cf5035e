//! The directory server (spec §9): one HTTP listener on `directory_server.v2_port` serving
//! `/instance_paths/<instance_id>` and `/staging_tasks/<task_id>/file_path` behind signed
//! URLs. Files of a live container are read through Garden (never through host paths: a
//! container's root is mounted only in its own mount namespace); crash logs from the host.
//!
//! One listener does what the DEA split between its loopback file API and the Go directory
//! server: verify the signature, look the owner up, resolve the path inside the root, then
//! list, send (with Range) or tail.

pub mod container;
pub mod host;
pub mod listing;
pub mod range;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::mpsc;

use crate::cell::Cell;
use range::ByteRange;

/// Where the files of an instance or staging task are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileRoot {
    /// A live container; requests are confined to `base` (e.g. `/home/vcap`) inside it.
    Container { handle: String, base: String },
    /// A host directory (the logs kept after a crash).
    Host(PathBuf),
}

/// The answer to "whose files are these?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// 404 `Unknown instance` / unknown task.
    Unknown,
    /// 503 `Instance unavailable` (not RUNNING or CRASHED; container not made yet).
    Unavailable,
    Root(FileRoot),
}

/// Implemented by the instance registry and the staging registry.
pub trait FileRoots: Send + Sync + 'static {
    fn instance(&self, instance_id: &str) -> Lookup;
    fn staging_task(&self, task_id: &str) -> Lookup;
}

/// Why a path cannot be served; the message is the response's `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// 404: nothing at the path (or a dangling symlink).
    #[error("Entity not found")]
    NotFound,
    /// 403: the realpath is outside the root, or not a regular file or directory.
    #[error("Not accessible")]
    NotAccessible,
    /// 503: the container cannot be reached (destroyed meanwhile).
    #[error("Instance unavailable")]
    Unavailable,
    /// 500, logged.
    #[error("{0}")]
    Internal(String),
}

impl FileError {
    fn status(&self) -> StatusCode {
        match self {
            FileError::NotFound => StatusCode::NOT_FOUND,
            FileError::NotAccessible => StatusCode::FORBIDDEN,
            FileError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            FileError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What a resolved path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Dir(Vec<listing::Entry>),
    File { size: u64 },
}

/// A response body being produced: the producer stops as soon as the receiver is dropped;
/// an `Err` aborts the connection.
pub type Chunks = mpsc::Receiver<std::io::Result<Bytes>>;

struct Server {
    cell: Arc<Cell>,
    roots: Arc<dyn FileRoots>,
}

/// Serve signed file URLs on `listener` until the task is aborted.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cell: Arc<Cell>,
    roots: Arc<dyn FileRoots>,
) -> std::io::Result<()> {
    axum::serve(listener, router(cell, roots)).await
}

/// The directory server's routes, for embedding or tests.
pub fn router(cell: Arc<Cell>, roots: Arc<dyn FileRoots>) -> Router {
    Router::new()
        .route("/instance_paths/{id}", get(instance))
        .route("/staging_tasks/{id}/file_path", get(staging_task))
        .with_state(Arc::new(Server { cell, roots }))
}

async fn instance(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let lookup = || s.roots.instance(&id);
    handle(&s, &uri, &headers, "Unknown instance", lookup)
        .await
        .unwrap_or_else(|r| r)
}

async fn staging_task(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let lookup = || s.roots.staging_task(&id);
    handle(&s, &uri, &headers, "Unknown staging task", lookup)
        .await
        .unwrap_or_else(|r| r)
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn file_error(e: &FileError, uri: &Uri) -> Response {
    if let FileError::Internal(msg) = e {
        tracing::warn!(url = %uri.path(), error = %msg, "directory server failure");
    }
    error(e.status(), &e.to_string())
}

/// `base` joined with the request path: empty and `.` components dropped, `..` kept (the
/// realpath check decides about it, as the DEA's did).
pub fn join_path(base: &str, path: &str) -> String {
    let mut out = base.trim_end_matches('/').to_string();
    for c in path.split('/').filter(|c| !c.is_empty() && *c != ".") {
        out.push('/');
        out.push_str(c);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The request path relative to a host root (`.` for the root itself).
pub fn relative_path(path: &str) -> String {
    let rel = join_path("", path);
    match rel.trim_start_matches('/') {
        "" => ".".to_string(),
        r => r.to_string(),
    }
}

/// What the query asks beyond the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Tail(Option<u64>),
}

fn mode(params: &BTreeMap<String, String>) -> Result<Mode, ()> {
    if !params.contains_key("tail") {
        return Ok(Mode::Plain);
    }
    match params.get("tail_offset") {
        None => Ok(Mode::Tail(None)),
        // Negative or not an integer: 500, as the Go server.
        Some(o) => o
            .parse::<u64>()
            .map(|o| Mode::Tail(Some(o)))
            .map_err(|_| ()),
    }
}

async fn handle(
    s: &Server,
    uri: &Uri,
    headers: &HeaderMap,
    unknown: &str,
    lookup: impl FnOnce() -> Lookup,
) -> Result<Response, Response> {
    let params: BTreeMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    s.cell
        .signer
        .verify(uri.path(), &params, crate::signer::unix_now())
        .map_err(|e| {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            error(status, &e.to_string())
        })?;
    let path = params.get("path").map(String::as_str).unwrap_or("");
    if path.contains('\0') {
        return Err(error(StatusCode::BAD_REQUEST, "path contains NUL"));
    }
    let mode = mode(&params)
        .map_err(|()| error(StatusCode::INTERNAL_SERVER_ERROR, "Invalid tail_offset"))?;
    let root = match lookup() {
        Lookup::Unknown => return Err(error(StatusCode::NOT_FOUND, unknown)),
        Lookup::Unavailable => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Instance unavailable",
            ))
        }
        Lookup::Root(root) => root,
    };
    let idle = Duration::from_secs(s.cell.config.directory_server.streaming_timeout.max(1));
    serve_path(&s.cell, &root, path, mode, headers, idle)
        .await
        .map_err(|e| file_error(&e, uri))
}

async fn open(cell: &Cell, root: &FileRoot, path: &str) -> Result<Opened, FileError> {
    match root {
        FileRoot::Container { handle, base } => {
            container::open(&cell.garden, handle, base, &join_path(base, path)).await
        }
        FileRoot::Host(dir) => host::open(dir, &relative_path(path)).await,
    }
}

async fn serve_path(
    cell: &Cell,
    root: &FileRoot,
    path: &str,
    mode: Mode,
    headers: &HeaderMap,
    idle: Duration,
) -> Result<Response, FileError> {
    let size = match open(cell, root, path).await? {
        Opened::Dir(mut entries) => {
            return Ok((
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                listing::format(&mut entries),
            )
                .into_response())
        }
        Opened::File { size } => size,
    };
    if let Mode::Tail(offset) = mode {
        // "From the end" means the end as of this request: what is appended once the
        // response has started is never skipped, however slowly the helper starts.
        let offset = Some(offset.unwrap_or(size));
        let chunks = match root {
            FileRoot::Container { handle, base } => {
                container::tail(&cell.garden, handle, base, &join_path(base, path), offset).await?
            }
            FileRoot::Host(dir) => host::tail(dir, &relative_path(path), offset).await?,
        };
        let mut resp = Response::new(body(chunks, Some(idle)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(resp);
    }
    let range = ByteRange::parse(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let (status, start, len) = match range {
        ByteRange::Full => (StatusCode::OK, 0, size),
        ByteRange::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        ByteRange::Unsatisfiable => {
            let mut resp = error(StatusCode::RANGE_NOT_SATISFIABLE, "Range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let chunks = match root {
        FileRoot::Container { handle, base } => {
            container::read(
                &cell.garden,
                handle,
                base,
                &join_path(base, path),
                start,
                len,
            )
            .await?
        }
        FileRoot::Host(dir) => host::read(dir, &relative_path(path), start, len).await?,
    };
    let mut resp = Response::new(body(chunks, None));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", start + len - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

/// Text for what an app's directory usually holds (logs, scripts, config), bytes otherwise.
fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext {
        "log" | "txt" | "yml" | "yaml" | "sh" | "rb" | "py" | "js" | "md" | "cfg" | "conf"
        | "ini" | "properties" | "xml" | "csv" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "html" | "htm" => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A streamed body. With `idle`, going that long without data ends the response with an
/// error, which makes hyper drop the connection without the terminating chunk (spec §9).
fn body(rx: Chunks, idle: Option<Duration>) -> Body {
    let stream = futures_util::stream::unfold((rx, false), move |(mut rx, done)| async move {
        if done {
            return None;
        }
        let next = match idle {
            Some(d) => match tokio::time::timeout(d, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "tail idle");
                    return Some((Err(e), (rx, true)));
                }
            },
            None => rx.recv().await,
        };
        next.map(|item| (item, (rx, false)))
    });
    Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_joined_without_resolving_dotdot() {
        assert_eq!(join_path("/home/vcap", ""), "/home/vcap");
        assert_eq!(join_path("/home/vcap", "/"), "/home/vcap");
        assert_eq!(
            join_path("/home/vcap/", "/logs//x/./y/"),
            "/home/vcap/logs/x/y"
        );
        assert_eq!(join_path("/home/vcap", "../../etc"), "/home/vcap/../../etc");
        assert_eq!(join_path("/", "a/b"), "/a/b");
        assert_eq!(join_path("/", ""), "/");
        assert_eq!(relative_path("/"), ".");
        assert_eq!(relative_path("./logs//stdout.log"), "logs/stdout.log");
        assert_eq!(relative_path("/../x"), "../x");
    }

    #[test]
    fn tail_parameters() {
        let p = |q: &str| -> BTreeMap<String, String> {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        };
        assert_eq!(mode(&p("path=/a")), Ok(Mode::Plain));
        assert_eq!(mode(&p("path=/a&tail=true")), Ok(Mode::Tail(None)));
        assert_eq!(mode(&p("tail=&tail_offset=7")), Ok(Mode::Tail(Some(7))));
        assert_eq!(mode(&p("tail&tail_offset=-1")), Err(()));
        assert_eq!(mode(&p("tail&tail_offset=x")), Err(()));
        // tail_offset alone does not make a tail.
        assert_eq!(mode(&p("tail_offset=3")), Ok(Mode::Plain));
    }

    #[test]
    fn errors_map_to_the_spec_statuses() {
        assert_eq!(FileError::NotFound.status(), StatusCode::NOT_FOUND);
        assert_eq!(FileError::NotAccessible.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            FileError::Unavailable.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(FileError::NotAccessible.to_string(), "Not accessible");
    }
}
