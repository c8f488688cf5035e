//! The executor's HTTP API for controllers other than an in-process agent. JSON in and out,
//! one request per connection (`Connection: close`):
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
//! Errors are `{"error": "<message>"}` with 400/404/409/503/500.

use std::future::Future;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::container::{AllocationRequest, Executor, ExecutorError, RunInfo};

/// Serve until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    exec: Arc<Executor>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (sock, _) = r?;
                let exec = exec.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(sock, exec).await {
                        tracing::debug!(error = %e, "api connection failed");
                    }
                });
            }
            _ = &mut shutdown => return Ok(()),
        }
    }
}

struct Reply {
    status: u16,
    body: Vec<u8>,
}

fn json<T: Serialize>(status: u16, v: &T) -> Reply {
    Reply {
        status,
        body: serde_json::to_vec(v).unwrap_or_default(),
    }
}

fn error(status: u16, msg: impl std::fmt::Display) -> Reply {
    json(status, &serde_json::json!({ "error": msg.to_string() }))
}

fn exec_error(e: ExecutorError) -> Reply {
    let status = match &e {
        ExecutorError::NotFound(_) => 404,
        ExecutorError::InsufficientResources => 503,
        ExecutorError::GuidNotAvailable(_) | ExecutorError::InvalidTransition { .. } => 409,
        ExecutorError::InvalidRunInfo(_) => 400,
        ExecutorError::Destroy { .. } => 500,
    };
    error(status, e)
}

async fn handle(sock: TcpStream, exec: Arc<Executor>) -> std::io::Result<()> {
    let mut reader = BufReader::new(sock);
    let mut raw = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut raw).await?;
        if n == 0 {
            return Ok(());
        }
        if raw.ends_with(b"\r\n\r\n") || raw.ends_with(b"\n\n") {
            break;
        }
        if raw.len() > 64 * 1024 {
            return write_reply(reader.get_mut(), error(431, "request head too large")).await;
        }
    }
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut hdrs);
    if !matches!(req.parse(&raw), Ok(httparse::Status::Complete(_))) {
        return write_reply(reader.get_mut(), error(400, "malformed request")).await;
    }
    let method = req.method.unwrap_or("").to_string();
    let path = req
        .path
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let len: usize = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0);
    if len > 16 << 20 {
        return write_reply(reader.get_mut(), error(413, "request body too large")).await;
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;

    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    if method == "GET" && segments == ["v1", "events"] {
        return stream_events(reader.into_inner(), &exec).await;
    }
    let reply = match (method.as_str(), segments.as_slice()) {
        ("GET", ["v1", "resources"]) => json(
            200,
            &serde_json::json!({"total": exec.total_resources(), "remaining": exec.remaining_resources()}),
        ),
        ("POST", ["v1", "containers"]) => {
            match serde_json::from_slice::<AllocationRequest>(&body) {
                Ok(req) => match exec.allocate(req) {
                    Ok(c) => json(201, &c),
                    Err(e) => exec_error(e),
                },
                Err(e) => error(400, format!("bad allocation request: {e}")),
            }
        }
        ("GET", ["v1", "containers"]) => json(200, &exec.list()),
        ("GET", ["v1", "containers", guid]) => match exec.get(guid) {
            Ok(c) => json(200, &c),
            Err(e) => exec_error(e),
        },
        ("POST", ["v1", "containers", guid, "run"]) => {
            match serde_json::from_slice::<RunInfo>(&body) {
                Ok(info) => match exec.run(guid, info) {
                    Ok(()) => json(202, &serde_json::json!({})),
                    Err(e) => exec_error(e),
                },
                Err(e) => error(400, format!("bad run info: {e}")),
            }
        }
        ("POST", ["v1", "containers", guid, "stop"]) => match exec.stop(guid) {
            Ok(()) => json(202, &serde_json::json!({})),
            Err(e) => exec_error(e),
        },
        ("DELETE", ["v1", "containers", guid]) => match exec.delete(guid).await {
            Ok(()) => Reply {
                status: 204,
                body: Vec::new(),
            },
            Err(e) => exec_error(e),
        },
        _ => error(404, format!("no route for {method} {path}")),
    };
    write_reply(reader.get_mut(), reply).await
}

async fn write_reply(sock: &mut TcpStream, reply: Reply) -> std::io::Result<()> {
    let reason = match reply.status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nConnection: close\r\n",
        reply.status
    );
    if reply.status != 204 {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            reply.body.len()
        ));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(&reply.body).await?;
    sock.shutdown().await
}

async fn stream_events(mut sock: TcpStream, exec: &Executor) -> std::io::Result<()> {
    let mut events = exec.subscribe();
    sock.write_all(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/x-ndjson\r\n\r\n",
    )
    .await?;
    sock.flush().await?;
    loop {
        match events.recv().await {
            Ok(ev) => {
                let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                line.push(b'\n');
                sock.write_all(&line).await?;
                sock.flush().await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "event stream lagged");
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheConfig, DownloadCache};
    use crate::container::ExecutorConfig;
    use crate::garden::fake::{FakeGarden, Script};
    use crate::http::{request, Body, Url};
    use crate::log::NullSink;

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

        let mut events = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        events
            .write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut events = BufReader::new(events);
        let mut line = String::new();
        while line != "\r\n" {
            line.clear();
            events.read_line(&mut line).await.unwrap();
        }

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
            line.clear();
            events.read_line(&mut line).await.unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            kinds.push(v["type"].as_str().unwrap().to_string());
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
