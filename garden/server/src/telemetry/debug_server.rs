//! The debug listener: `GET /metrics` (Prometheus text format) and `GET /debug/vars`
//! (Guardian's expvar-style JSON). One request per connection, on gardend's own HTTP codec;
//! it never touches containers beyond the [`Census`] its caller supplies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use super::{metrics, Census, ProcessStats};
use crate::http::{Conn, ResponseHead};

/// Where the figures about the core come from at each scrape.
pub type CensusFn = Arc<dyn Fn() -> Census + Send + Sync>;

/// Bind the debug address; an error names it.
pub async fn bind(ip: &str, port: u16) -> std::io::Result<TcpListener> {
    let addr = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    TcpListener::bind(&addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("binding the debug address {addr}: {e}"))
    })
}

/// Serve until the task is dropped.
pub async fn serve(listener: TcpListener, census: CensusFn) {
    let started = Instant::now();
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let census = census.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_secs(30), answer(sock, &census, started)).await;
        });
    }
}

async fn answer(sock: TcpStream, census: &CensusFn, started: Instant) {
    let mut conn = Conn::new(sock);
    let Ok(Some(head)) = conn.read_head().await else {
        return;
    };
    let (status, kind, body) = match (head.method.as_str(), head.path()) {
        ("GET", "/metrics") => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics().render(census()),
        ),
        ("GET", "/debug/vars") => (
            200,
            "application/json; charset=utf-8",
            debug_vars(census(), started.elapsed()),
        ),
        ("GET", _) => (
            404,
            "text/plain; charset=utf-8",
            "404 page not found\n".into(),
        ),
        _ => (
            405,
            "text/plain; charset=utf-8",
            "method not allowed\n".into(),
        ),
    };
    let reply = ResponseHead::new(status)
        .header("Content-Type", kind)
        .close()
        .date()
        .with_body(body.as_bytes());
    let _ = conn.io.write_all(&reply).await;
    let _ = conn.io.shutdown().await;
}

/// Go's expvar layout as Guardian's debug server shows it: `cmdline`, `memstats` (the
/// counters clients read, from /proc/self), and liveness figures (`numGoRoutines` = the
/// runtime's live tasks).
fn debug_vars(census: Census, uptime: Duration) -> String {
    let p = ProcessStats::read().unwrap_or_default();
    let tasks = tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_alive_tasks())
        .unwrap_or(0);
    serde_json::json!({
        "cmdline": std::env::args().collect::<Vec<_>>(),
        "memstats": {
            "Alloc": p.resident_bytes,
            "HeapAlloc": p.resident_bytes,
            "Sys": p.virtual_bytes,
        },
        "numGoRoutines": tasks,
        "numThreads": p.threads,
        "numOpenFDs": p.open_fds,
        "containers": census.containers,
        "processes": census.processes,
        "uptimeSeconds": uptime.as_secs_f64(),
    })
    .to_string()
}
