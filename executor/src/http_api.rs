//! The executor's HTTP API for controllers other than an in-process agent (axum). JSON in
//! and out:
//!
//! | method | path | body | reply |
//! |---|---|---|---|
//! | GET | `/v1/resources` | — | `{"total":R,"remaining":R}` |
//! | POST | `/v1/containers` | AllocationRequest | 201 Container |
//! | GET | `/v1/containers` | — | [Container] |
//! | GET | `/v1/containers/:guid` | — | Container |
//! | POST | `/v1/containers/:guid/run` | RunInfo | 202 `{}` |
//! | POST | `/v1/containers/:guid/stop` | — | 202 `{}` |
//! | DELETE | `/v1/containers/:guid` | — | 204 (after the container is destroyed) |
//! | GET | `/v1/events` | — | NDJSON stream of events until the client leaves |
//!
//! Errors are `{"error": "<message>"}` with 400/404/409/413/503/500 (405 for a known path with
//! another method).

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::container::{AllocationRequest, Executor, ExecutorError, RunInfo};

/// Bodies are small JSON documents; anything bigger is refused with 413.
const MAX_BODY: usize = 16 << 20;

/// Serve until `shutdown` completes. Open event streams are not waited for: they end when
/// the process does.
pub async fn serve(
    listener: TcpListener,
    exec: Arc<Executor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let server = axum::serve(listener, router(exec));
    tokio::select! {
        r = server => r,
        _ = shutdown => Ok(()),
    }
}

/// The route table.
pub fn router(exec: Arc<Executor>) -> Router {
    Router::new()
        .route("/v1/resources", get(resources))
        .route("/v1/containers", post(allocate).get(list))
        .route("/v1/containers/{guid}", get(one).delete(delete))
        .route("/v1/containers/{guid}/run", post(run))
        .route("/v1/containers/{guid}/stop", post(stop))
        .route("/v1/events", get(events))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(exec)
}

type Exec = State<Arc<Executor>>;

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    (status, axum::Json(v)).into_response()
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Response {
    json(status, &serde_json::json!({ "error": msg.to_string() }))
}

fn exec_error(e: ExecutorError) -> Response {
    let status = match &e {
        ExecutorError::NotFound(_) => StatusCode::NOT_FOUND,
        ExecutorError::InsufficientResources => StatusCode::SERVICE_UNAVAILABLE,
        ExecutorError::GuidNotAvailable(_) | ExecutorError::InvalidTransition { .. } => {
            StatusCode::CONFLICT
        }
        ExecutorError::InvalidRunInfo(_) => StatusCode::BAD_REQUEST,
        ExecutorError::Destroy { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e)
}

/// Parse a JSON body ourselves so that a bad one gets our error shape, saying what was wrong.
fn parse<T: DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("bad {what}: {e}"))
}

fn accepted() -> Response {
    json(StatusCode::ACCEPTED, &serde_json::json!({}))
}

async fn resources(State(exec): Exec) -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({"total": exec.total_resources(), "remaining": exec.remaining_resources()}),
    )
}

async fn allocate(State(exec): Exec, body: Bytes) -> Response {
    match parse::<AllocationRequest>(&body, "allocation request") {
        Ok(req) => match exec.allocate(req) {
            Ok(c) => json(StatusCode::CREATED, &c),
            Err(e) => exec_error(e),
        },
        Err(msg) => error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn list(State(exec): Exec) -> Response {
    json(StatusCode::OK, &exec.list())
}

async fn one(State(exec): Exec, Path(guid): Path<String>) -> Response {
    match exec.get(&guid) {
        Ok(c) => json(StatusCode::OK, &c),
        Err(e) => exec_error(e),
    }
}

async fn run(State(exec): Exec, Path(guid): Path<String>, body: Bytes) -> Response {
    match parse::<RunInfo>(&body, "run info") {
        Ok(info) => match exec.run(&guid, info) {
            Ok(()) => accepted(),
            Err(e) => exec_error(e),
        },
        Err(msg) => error(StatusCode::BAD_REQUEST, msg),
    }
}

async fn stop(State(exec): Exec, Path(guid): Path<String>) -> Response {
    match exec.stop(&guid) {
        Ok(()) => accepted(),
        Err(e) => exec_error(e),
    }
}

async fn delete(State(exec): Exec, Path(guid): Path<String>) -> Response {
    match exec.delete(&guid).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => exec_error(e),
    }
}

async fn no_route(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

/// Every executor event as one JSON line, until the client leaves.
async fn events(State(exec): Exec) -> Response {
    use tokio::sync::broadcast::error::RecvError;
    let rx = exec.subscribe();
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(ev) => {
                    let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                    line.push(b'\n');
                    return Some((Ok::<_, std::io::Error>(Bytes::from(line)), rx));
                }
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "event stream lagged"),
                Err(RecvError::Closed) => return None,
            }
        }
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheConfig, DownloadCache};
    use crate::container::ExecutorConfig;
    use crate::garden::fake::{FakeGarden, Script};
    use crate::http::{request, Body, Url};
    use crate::log::NullSink;
    use tokio::net::TcpListener;

    async fn call(port: u16, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let url = Url::parse(&format!("http://127.0.0.1:{port}{path}")).unwrap();
        let b = (!body.is_empty()).then(|| Body {
            len: body.len() as u64,
            reader: Box::new(std::io::Cursor::new(body.as_bytes().to_vec())),
        });
        let r = request(
            method,
            &url,
            &[("Content-Type", "application/json".into())],
            b,
        )
        .await
        .unwrap();
        let status = r.status;
        let mut out = Vec::new();
        r.read_body(|c| {
            out.extend_from_slice(c);
            Ok(())
        })
        .await
        .unwrap();
        (
            status,
            serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn allocate_run_get_events_delete() {
        let garden = FakeGarden::new();
        garden.script("/bin/true", Script::exit(0));
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(DownloadCache::open(CacheConfig::new(dir.path())).unwrap());
        let exec = Executor::new(
            Arc::new(garden.clone()),
            cache,
            Arc::new(NullSink),
            ExecutorConfig::default(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve(listener, exec, std::future::pending()));

        let url = Url::parse(&format!("http://127.0.0.1:{port}/v1/events")).unwrap();
        let mut events = request("GET", &url, &[], None).await.unwrap();
        assert_eq!(events.header("content-type"), Some("application/x-ndjson"));
        let mut pending = Vec::new();

        let (s, c) = call(
            port,
            "POST",
            "/v1/containers",
            r#"{"guid":"g1","memory_mb":128}"#,
        )
        .await;
        assert_eq!((s, c["state"].as_str()), (201, Some("reserved")));
        let (s, _) = call(port, "POST", "/v1/containers", r#"{"guid":"g1"}"#).await;
        assert_eq!(s, 409);
        let (s, r) = call(port, "GET", "/v1/resources", "").await;
        assert_eq!(s, 200);
        assert_eq!(
            r["total"]["memory_mb"].as_u64().unwrap()
                - r["remaining"]["memory_mb"].as_u64().unwrap(),
            128
        );
        let (s, _) = call(
            port,
            "POST",
            "/v1/containers/g1/run",
            r#"{"action":{"run":{"path":"/bin/true","user":"root"}}}"#,
        )
        .await;
        assert_eq!(s, 202);
        let mut kinds = Vec::new();
        while kinds.last().map(String::as_str) != Some("container_complete") {
            while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
                kinds.push(v["type"].as_str().unwrap().to_string());
            }
            if kinds.last().map(String::as_str) == Some("container_complete") {
                break;
            }
            pending.extend_from_slice(&events.chunk().await.unwrap().unwrap());
        }
        assert_eq!(
            kinds,
            vec![
                "container_reserved",
                "container_running",
                "container_complete"
            ]
        );
        let (s, c) = call(port, "GET", "/v1/containers/g1", "").await;
        assert_eq!(
            (s, c["state"].as_str(), c["run_result"]["failed"].as_bool()),
            (200, Some("completed"), Some(false))
        );
        let (s, list) = call(port, "GET", "/v1/containers", "").await;
        assert_eq!((s, list.as_array().unwrap().len()), (200, 1));
        let (s, _) = call(port, "POST", "/v1/containers/g1/run", r#"{"action":null}"#).await;
        assert_eq!(s, 400);
        let (s, e) = call(port, "POST", "/v1/containers", "{not json").await;
        assert_eq!(s, 400);
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .starts_with("bad allocation request"),
            "{e}"
        );
        let (s, e) = call(port, "GET", "/v2/nothing", "").await;
        assert_eq!(
            (s, e["error"].as_str()),
            (404, Some("no route for GET /v2/nothing"))
        );
        let (s, _) = call(port, "DELETE", "/v1/containers/g1", "").await;
        assert_eq!(s, 204);
        let (s, e) = call(port, "GET", "/v1/containers/g1", "").await;
        assert_eq!(
            (s, e["error"].as_str()),
            (404, Some("container not found: g1"))
        );
        assert!(garden.containers().is_empty());
    }
}
