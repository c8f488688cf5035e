//! The HTTP layer end to end over real loopback sockets, against a fake core, checking the
//! bytes a Go client would see.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use garden_api::{to_wire, GardenError, HandlesResponse, ProcessInput, Signal, WindowSize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::server::{serve_with, Listener, ServeOptions};
use crate::service::{ActivityGuard, OutputStream, ProcessSession, Reply, Request, Service};

/// What the fake process of a Run saw, for assertions.
#[derive(Default)]
struct ProcessLog {
    inputs: Vec<ProcessInput>,
    detached: bool,
}

/// A core that answers from fixed rules and records what it was asked.
#[derive(Default)]
struct Fake {
    requests: Mutex<Vec<String>>,
    /// Tests wait on this watch instead of sleeping until the fake has seen something.
    process: Arc<watch::Sender<ProcessLog>>,
}

fn json<T: serde::Serialize>(value: &T) -> Result<Reply, GardenError> {
    Ok(Reply::Json(to_wire(value)))
}

impl Service for Fake {
    async fn handle(&self, request: Request) -> Result<Reply, GardenError> {
        self.requests.lock().unwrap().push(format!("{request:?}"));
        match request {
            Request::Ping => json(&garden_api::Empty {}),
            Request::List { filter } => json(&HandlesResponse {
                handles: filter
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            }),
            Request::Info { handle } if handle == "missing" => {
                Err(GardenError::container_not_found(handle))
            }
            Request::Create(spec) => json(&garden_api::HandleResponse {
                handle: spec.handle,
            }),
            Request::StreamIn { mut body, .. } => {
                let (mut len, mut sum) = (0u64, 0u64);
                while let Some(piece) = body.recv().await {
                    let piece = piece
                        .map_err(|e| GardenError::generic(format!("error streaming in: {e}")))?;
                    len += piece.len() as u64;
                    sum = piece
                        .iter()
                        .fold(sum, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
                }
                json(&serde_json::json!({ "len": len, "sum": sum }))
            }
            Request::StreamOut { source, .. } => {
                let (tx, rx) = mpsc::channel(4);
                tokio::spawn(async move {
                    let _ = tx.send(Ok(Bytes::from_static(b"tar-part-1;"))).await;
                    let _ = tx.send(Ok(Bytes::new())).await;
                    if source == "fail" {
                        let _ = tx.send(Err(io::Error::other("disk on fire"))).await;
                    } else {
                        let _ = tx.send(Ok(Bytes::from_static(b"tar-part-2"))).await;
                    }
                });
                Ok(Reply::Tar(rx))
            }
            Request::Run { spec, .. } if spec.path == "fail" => {
                Err(GardenError::ExecutableNotFound {
                    message: "executable file not found in $PATH".into(),
                })
            }
            Request::Run { spec, .. } => Ok(Reply::Process(self.start_process(spec.id))),
            Request::Attach { process_id, .. } if process_id == "unknown" => {
                Err(GardenError::process_not_found(process_id))
            }
            Request::Attach { process_id, .. } => {
                let (input, _) = mpsc::unbounded_channel();
                let (tx, exit) = oneshot::channel();
                let _ = tx.send(Ok(42));
                Ok(Reply::Process(ProcessSession {
                    process_id,
                    stream_id: "9".into(),
                    input,
                    exit,
                    guard: ActivityGuard::none(),
                }))
            }
            Request::Stdout { .. } => {
                let (tx, chunks) = mpsc::channel(2);
                tokio::spawn(async move {
                    for part in [&b"hello "[..], b"\x00\xffbinary ", b"world"] {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let _ = tx.send(Bytes::from_static(part)).await;
                    }
                });
                Ok(Reply::Output(OutputStream {
                    chunks,
                    guard: ActivityGuard::none(),
                }))
            }
            Request::Stderr { .. } => Ok(Reply::Output(OutputStream {
                chunks: mpsc::channel(1).1,
                guard: ActivityGuard::none(),
            })),
            // A core bug: a JSON reply to a hijacked route.
            Request::Metrics { handle } if handle == "confused" => {
                Ok(Reply::Json(b"{}\n".to_vec()))
            }
            _ => json(&garden_api::Empty {}),
        }
    }
}

impl Fake {
    /// A process that records its inputs and exits 143 on SIGTERM.
    fn start_process(&self, id: String) -> ProcessSession {
        let (input, mut inputs) = mpsc::unbounded_channel();
        let (exit_tx, exit) = oneshot::channel();
        let log = Arc::clone(&self.process);
        tokio::spawn(async move {
            let mut exit_tx = Some(exit_tx);
            while let Some(msg) = inputs.recv().await {
                let term = msg == ProcessInput::Signal(Signal::Terminate);
                log.send_modify(|l| l.inputs.push(msg));
                if term {
                    if let Some(tx) = exit_tx.take() {
                        let _ = tx.send(Ok(143));
                    }
                }
            }
            log.send_modify(|l| l.detached = true);
        });
        let process_id = if id.is_empty() {
            "generated".to_string()
        } else {
            id
        };
        ProcessSession {
            process_id,
            stream_id: "1".into(),
            input,
            exit,
            guard: ActivityGuard::none(),
        }
    }
}

struct Server {
    addr: SocketAddr,
    fake: Arc<Fake>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_with(options: ServeOptions) -> Server {
    let fake = Arc::new(Fake::default());
    let listener = Listener::tcp("127.0.0.1", 0).await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_port().unwrap()));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(listener, Arc::clone(&fake), options, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        fake,
        stop: Some(stop),
        task,
    }
}

async fn start() -> Server {
    start_with(ServeOptions::default()).await
}

impl Server {
    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// Send `request` and read the whole reply until the server closes.
    async fn exchange(&self, request: &[u8]) -> String {
        let mut s = self.connect().await;
        s.write_all(request).await.unwrap();
        read_to_close(&mut s).await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server stops")
            .unwrap();
    }
}

async fn read_to_close<R: AsyncRead + Unpin>(s: &mut R) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("server closes")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Read until `needle` has arrived; return everything read.
async fn read_until<R: AsyncRead + Unpin>(s: &mut R, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains(needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("data arrives")
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}; got {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replace the `Date` header's value (it changes) after checking it looks like an HTTP date.
fn scrub_date(reply: &str) -> String {
    reply
        .split("\r\n")
        .map(|line| match line.strip_prefix("Date: ") {
            Some(date) => {
                assert!(
                    date.ends_with(" GMT") && date.len() == 29,
                    "bad date {date:?}"
                );
                "Date: X"
            }
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn plain(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nDate: X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

const GO_HEAD: &str = "Host: api\r\nUser-Agent: Go-http-client/1.1\r\n";

#[tokio::test]
async fn ping_answers_exact_bytes() {
    let server = start().await;
    let reply = server
        .exchange(
            format!(
                "GET /ping HTTP/1.1\r\n{GO_HEAD}Connection: close\r\nAccept-Encoding: gzip\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    assert_eq!(scrub_date(&reply), plain("200 OK", "{}\n"));
    server.stop().await;
}

#[tokio::test]
async fn plain_routes_reach_the_core_parsed() {
    let server = start().await;
    let reply = server
        .exchange(b"GET /containers?b=2&a=1&b=3 HTTP/1.1\r\nHost: api\r\n\r\n")
        .await;
    assert_eq!(
        scrub_date(&reply),
        plain("200 OK", "{\"Handles\":[\"b=2\",\"a=1\"]}\n")
    );
    let body = r#"{"handle":"h1","image":{},"limits":{"bandwidth_limits":{},"cpu_limits":{},"disk_limits":{},"memory_limits":{},"pid_limits":{}}}"#;
    let req = format!("POST /containers HTTP/1.1\r\n{GO_HEAD}Content-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}\n", body.len() + 1);
    assert_eq!(
        scrub_date(&server.exchange(req.as_bytes()).await),
        plain("200 OK", "{\"Handle\":\"h1\"}\n")
    );
    let reply = server
        .exchange(
            b"PUT /containers/h1/grace_time HTTP/1.1\r\nContent-Length: 11\r\n\r\n3000000000\n",
        )
        .await;
    assert_eq!(scrub_date(&reply), plain("200 OK", "{}\n"));
    let reply = server
        .exchange(b"GET /containers/bulk_info HTTP/1.1\r\n\r\n")
        .await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    let requests = server.fake.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|r| r.contains("SetGraceTime { handle: \"h1\", grace_time: 3000000000 }")),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|r| r == "BulkInfo { handles: [] }"),
        "{requests:?}"
    );
    drop(requests);
    server.stop().await;
}

#[tokio::test]
async fn garden_errors_and_routing_errors() {
    let server = start().await;
    let reply = server
        .exchange(b"GET /containers/missing/info HTTP/1.1\r\nHost: api\r\n\r\n")
        .await;
    let body = "{\"Type\":\"ContainerNotFoundError\",\"Message\":\"unknown handle: missing\",\"Handle\":\"missing\",\"ProcessID\":\"\",\"Binary\":\"\"}\n";
    assert_eq!(scrub_date(&reply), plain("404 Not Found", body));

    let reply = server
        .exchange(b"POST /containers HTTP/1.1\r\nContent-Length: 12\r\n\r\n{\"handle\":7}")
        .await;
    let reply = scrub_date(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"),
        "{reply}"
    );
    let (_, body) = reply.split_once("\r\n\r\n").unwrap();
    let err: garden_api::ErrorBody = serde_json::from_str(body).unwrap();
    assert_eq!(err.kind, "");
    assert!(
        err.message
            .starts_with("invalid Create request body: invalid type: integer `7`"),
        "{}",
        err.message
    );

    let reply = server.exchange(b"GET /nope HTTP/1.1\r\n\r\n").await;
    assert!(
        reply.starts_with("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n"),
        "{reply}"
    );
    assert!(reply.ends_with("\r\n\r\n404 page not found\n"), "{reply}");
    let reply = server
        .exchange(b"POST /containers/h/info HTTP/1.1\r\n\r\n")
        .await;
    assert!(
        reply.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n"),
        "{reply}"
    );
    let reply = server.exchange(b"DELETE /ping HTTP/1.1\r\n\r\n").await;
    assert!(reply.contains("Allow: GET\r\n"), "{reply}");

    let reply = server.exchange(b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    let reply = server
        .exchange(b"POST /containers HTTP/1.1\r\nContent-Length: x\r\n\r\n")
        .await;
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    let reply = server
        .exchange(b"POST /containers HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
        .await;
    assert!(
        reply.starts_with("HTTP/1.1 501 Not Implemented\r\n"),
        "{reply}"
    );
    let mut huge_head = b"GET /ping HTTP/1.1\r\n".to_vec();
    huge_head.extend_from_slice(format!("X-Big: {}\r\n\r\n", "a".repeat(70 * 1024)).as_bytes());
    let reply = server.exchange(&huge_head).await;
    assert!(
        reply.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{reply}"
    );

    // The core answering a hijacked route with JSON is its bug, reported as a Garden error.
    let reply = server
        .exchange(b"GET /containers/confused/metrics HTTP/1.1\r\n\r\n")
        .await;
    assert!(
        reply.starts_with("HTTP/1.1 200 OK\r\n"),
        "metrics is a plain route: {reply}"
    );
    server.stop().await;
}

#[tokio::test]
async fn huge_content_length_is_refused_without_reading_the_body() {
    let server = start().await;
    let mut s = server.connect().await;
    s.write_all(b"POST /containers HTTP/1.1\r\nContent-Length: 1099511627776\r\n\r\n{\"handle\":")
        .await
        .unwrap();
    // Only the head (and a few bytes) were sent: the reply must come without the body.
    let reply = scrub_date(&read_until(&mut s, "\"Binary\":\"\"}\n").await);
    let body = "{\"Type\":\"\",\"Message\":\"request body exceeds 16777216 bytes\",\"Handle\":\"\",\"ProcessID\":\"\",\"Binary\":\"\"}\n";
    assert_eq!(reply, plain("413 Request Entity Too Large", body));
    assert!(server.fake.requests.lock().unwrap().is_empty());
    drop(s);
    server.stop().await;
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_refused() {
    let server = start_with(ServeOptions {
        conn: super::ConnOptions {
            max_json_body: 64,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut s = server.connect().await;
    s.write_all(b"PUT /containers/h/properties/k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..100 {
        if s.write_all(b"10\r\n0123456789abcdef\r\n").await.is_err() {
            break;
        }
    }
    let reply = read_until(&mut s, "}\n").await;
    assert!(
        reply.starts_with("HTTP/1.1 413 Request Entity Too Large\r\n"),
        "{reply}"
    );
    assert!(reply.contains("request body exceeds 64 bytes"), "{reply}");
    drop(s);
    server.stop().await;
}

#[tokio::test]
async fn stream_in_decodes_chunks_split_across_writes() {
    let server = start().await;
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut framed = Vec::new();
    for piece in data.chunks(7_777) {
        framed.extend_from_slice(&crate::http::encode_chunk(piece));
    }
    framed.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
    let mut s = server.connect().await;
    let head = format!("PUT /containers/h/files?user=alice&destination=%2Ftmp%2Fx HTTP/1.1\r\n{GO_HEAD}Transfer-Encoding: chunked\r\nContent-Type: application/x-tar\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // Uneven writes so that size lines, CRLFs and data are split at many points.
    for (i, piece) in framed.chunks(1_001).enumerate() {
        s.write_all(piece).await.unwrap();
        if i % 50 == 0 {
            s.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
    }
    let reply = read_to_close(&mut s).await;
    let sum = data
        .iter()
        .fold(0u64, |s, b| s.wrapping_mul(31).wrapping_add(u64::from(*b)));
    assert_eq!(
        scrub_date(&reply),
        plain("200 OK", &format!("{{\"len\":200000,\"sum\":{sum}}}\n"))
    );
    let requests = server.fake.requests.lock().unwrap().clone();
    assert!(
        requests[0]
            .starts_with("StreamIn { handle: \"h\", user: \"alice\", destination: \"/tmp/x\""),
        "{requests:?}"
    );
    drop(s);
    server.stop().await;
}

#[tokio::test]
async fn stream_in_bad_framing_reaches_the_core_as_an_error() {
    let server = start().await;
    let reply = server.exchange(b"PUT /containers/h/files?user=&destination=%2F HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY").await;
    let reply = scrub_date(&reply);
    assert!(
        reply.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
        "{reply}"
    );
    assert!(
        reply.contains(
            "error streaming in: malformed chunked encoding: missing CRLF after chunk data"
        ),
        "{reply}"
    );
    // A client that vanishes mid-body: the core sees an unexpected EOF.
    let mut s = server.connect().await;
    s.write_all(b"PUT /containers/h/files HTTP/1.1\r\nContent-Length: 100\r\n\r\nshort")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let reply = read_to_close(&mut s).await;
    assert!(
        reply.contains("error streaming in: connection closed in the middle of the request body"),
        "{reply}"
    );
    drop(s);
    server.stop().await;
}

#[tokio::test]
async fn expect_continue_is_honoured() {
    let server = start().await;
    let mut s = server.connect().await;
    s.write_all(
        b"PUT /containers/h/stop HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let interim = read_until(&mut s, "\r\n\r\n").await;
    assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"{\"kill\":true}").await.unwrap();
    let reply = read_to_close(&mut s).await;
    assert_eq!(scrub_date(&reply), plain("200 OK", "{}\n"));
    drop(s);
    server.stop().await;
}

fn run_request(spec: &str) -> String {
    format!("POST /containers/h/processes HTTP/1.1\r\n{GO_HEAD}Content-Length: {}\r\nContent-Type: application/json\r\n\r\n{spec}\n", spec.len() + 1)
}

/// Wait (5 s at most) until the fake process's log satisfies `cond`.
async fn wait_for_log(fake: &Fake, what: &str, cond: impl FnMut(&ProcessLog) -> bool) {
    let mut log = fake.process.subscribe();
    if tokio::time::timeout(Duration::from_secs(5), log.wait_for(cond))
        .await
        .is_err()
    {
        panic!("{what}; inputs so far: {:?}", fake.process.borrow().inputs);
    }
}

async fn wait_for_inputs(fake: &Fake, n: usize) -> Vec<ProcessInput> {
    wait_for_log(fake, "too few inputs", |l| l.inputs.len() >= n).await;
    let inputs = fake.process.borrow().inputs.clone();
    inputs
}

#[tokio::test]
async fn run_hijacks_the_connection() {
    let server = start().await;
    let mut s = server.connect().await;
    // The first stdin message rides in the same write as the request body.
    let mut first = run_request(r#"{"id":"p1","path":"/bin/cat","rlimits":{},"image":{}}"#);
    first.push_str("{\"process_id\":\"p1\",\"source\":0,\"data\":\"hello\"}\n");
    s.write_all(first.as_bytes()).await.unwrap();
    let head = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nDate: X\r\nTransfer-Encoding: chunked\r\n\r\n";
    let got = scrub_date(&read_until(&mut s, "\"stream_id\":\"1\"}\n").await);
    assert_eq!(
        got,
        format!("{head}{{\"process_id\":\"p1\",\"stream_id\":\"1\"}}\n")
    );
    // A message split byte by byte, then several merged in one write; input after stdin EOF
    // is still honoured.
    for b in b"{\"process_id\":\"p1\",\"source\":0,\"data\":\" world\"}" {
        s.write_all(&[*b]).await.unwrap();
        s.flush().await.unwrap();
    }
    s.write_all(b"\n{\"process_id\":\"p1\",\"source\":0}\n{\"process_id\":\"p1\",\"tty\":{\"window_size\":{\"columns\":100,\"rows\":50}}}\n{\"process_id\":\"p1\",\"si")
        .await
        .unwrap();
    let inputs = wait_for_inputs(&server.fake, 4).await;
    assert_eq!(
        inputs,
        [
            ProcessInput::Stdin(b"hello".to_vec()),
            ProcessInput::Stdin(b" world".to_vec()),
            ProcessInput::StdinEof,
            ProcessInput::Resize(WindowSize {
                columns: 100,
                rows: 50
            }),
        ]
    );
    s.write_all(b"gnal\":0}\n").await.unwrap();
    let rest = read_to_close(&mut s).await;
    assert_eq!(rest, "{\"process_id\":\"p1\",\"exit_status\":143}\n");
    assert_eq!(
        wait_for_inputs(&server.fake, 5).await[4],
        ProcessInput::Signal(Signal::Terminate)
    );
    drop(s);
    server.stop().await;
}

#[tokio::test]
async fn run_failure_is_a_keep_alive_style_error() {
    let server = start().await;
    let reply = server
        .exchange(run_request(r#"{"path":"fail","rlimits":{},"image":{}}"#).as_bytes())
        .await;
    let body = "{\"Type\":\"ExecutableNotFoundError\",\"Message\":\"executable file not found in $PATH\",\"Handle\":\"\",\"ProcessID\":\"\",\"Binary\":\"\"}\n";
    let want = format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nDate: X\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(scrub_date(&reply), want);
    // A malformed spec fails with the same framing (a 400), before the core is asked.
    let reply = scrub_date(
        &server
            .exchange(run_request(r#"{"path":7}"#).as_bytes())
            .await,
    );
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(!reply.contains("Connection"), "{reply}");
    assert!(reply.contains("invalid Run request body"), "{reply}");
    server.stop().await;
}

#[tokio::test]
async fn client_disconnect_detaches_the_process() {
    let server = start().await;
    let mut s = server.connect().await;
    s.write_all(run_request(r#"{"id":"p2","path":"sleep","rlimits":{},"image":{}}"#).as_bytes())
        .await
        .unwrap();
    read_until(&mut s, "\"stream_id\":\"1\"}\n").await;
    drop(s);
    wait_for_log(&server.fake, "input sender was not dropped", |l| l.detached).await;
    server.stop().await;
}

#[tokio::test]
async fn attach_to_an_exited_process_and_to_an_unknown_one() {
    let server = start().await;
    let reply = server
        .exchange(format!("GET /containers/h/processes/p9 HTTP/1.1\r\n{GO_HEAD}\r\n").as_bytes())
        .await;
    assert_eq!(
        scrub_date(&reply),
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nDate: X\r\nTransfer-Encoding: chunked\r\n\r\n\
         {\"process_id\":\"p9\",\"stream_id\":\"9\"}\n{\"process_id\":\"p9\",\"exit_status\":42}\n"
    );
    let reply = server
        .exchange(b"GET /containers/h/processes/unknown HTTP/1.1\r\n\r\n")
        .await;
    let body = "{\"Type\":\"ProcessNotFoundError\",\"Message\":\"unknown process: unknown\",\"Handle\":\"\",\"ProcessID\":\"unknown\",\"Binary\":\"\"}\n";
    assert_eq!(
        scrub_date(&reply),
        format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nDate: X\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    );
    server.stop().await;
}

#[tokio::test]
async fn output_streams_are_raw_bytes_until_close() {
    let server = start().await;
    let reply = server
        .exchange(format!("GET /containers/h/processes/p/attaches/1/stdout HTTP/1.1\r\n{GO_HEAD}Content-Type: application/json\r\n\r\n").as_bytes())
        .await;
    assert_eq!(
        scrub_date(&reply),
        "HTTP/1.1 200 OK\r\nDate: X\r\nTransfer-Encoding: chunked\r\n\r\nhello \u{0}\u{fffd}binary world"
    );
    let reply = server
        .exchange(b"GET /containers/h/processes/p/attaches/1/stderr HTTP/1.1\r\n\r\n")
        .await;
    assert_eq!(
        scrub_date(&reply),
        "HTTP/1.1 200 OK\r\nDate: X\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    server.stop().await;
}

#[tokio::test]
async fn stream_out_is_chunked_and_truncated_on_error() {
    let server = start().await;
    let reply = server
        .exchange(b"GET /containers/h/files?user=&source=%2Fetc HTTP/1.1\r\n\r\n")
        .await;
    assert_eq!(
        scrub_date(&reply),
        "HTTP/1.1 200 OK\r\nContent-Type: application/x-tar\r\nDate: X\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         b\r\ntar-part-1;\r\na\r\ntar-part-2\r\n0\r\n\r\n"
    );
    let reply = server
        .exchange(b"GET /containers/h/files?source=fail HTTP/1.1\r\n\r\n")
        .await;
    assert!(
        scrub_date(&reply).ends_with("\r\n\r\nb\r\ntar-part-1;\r\n"),
        "no last chunk: {reply:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn connection_limit_holds_back_extra_clients() {
    let server = start_with(ServeOptions {
        max_connections: 1,
        ..Default::default()
    })
    .await;
    // The first client holds the only slot with a body it never finishes; once the core has
    // its request, the slot is certainly taken.
    let mut idle = server.connect().await;
    idle.write_all(b"PUT /containers/h/files HTTP/1.1\r\nContent-Length: 10\r\n\r\nx")
        .await
        .unwrap();
    while server.fake.requests.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    let mut second = server.connect().await;
    second
        .write_all(b"GET /ping HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "second connection was served while the first held the only slot"
    );
    drop(idle);
    let reply = read_to_close(&mut second).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    drop(second);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_detaches_process_sessions() {
    let server = start().await;
    let mut s = server.connect().await;
    s.write_all(run_request(r#"{"id":"p3","path":"sleep","rlimits":{},"image":{}}"#).as_bytes())
        .await
        .unwrap();
    read_until(&mut s, "\"stream_id\":\"1\"}\n").await;
    let fake = Arc::clone(&server.fake);
    server.stop().await;
    assert_eq!(
        read_to_close(&mut s).await,
        "",
        "closed without an exit status"
    );
    wait_for_log(&fake, "session was not detached on shutdown", |l| {
        l.detached
    })
    .await;
}

#[tokio::test]
async fn idle_connections_do_not_delay_shutdown() {
    let server = start().await;
    let mut idle = server.connect().await;
    idle.write_all(b"GET /pi").await.unwrap();
    // Connections are accepted in order: once a later one is answered, `idle` is being served.
    let reply = server.exchange(b"GET /ping HTTP/1.1\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(read_to_close(&mut idle).await, "");
}

#[tokio::test]
async fn unix_socket_listener() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("gardend-http-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("garden.sock");
    // A stale socket from a dead server is replaced; a regular file is not.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let listener = Listener::unix(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o777
    );
    assert!(matches!(
        Listener::unix(&path),
        Err(crate::server::BindError::SocketInUse { .. })
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve_with(
        listener,
        Arc::new(Fake::default()),
        ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        scrub_date(&read_to_close(&mut s).await),
        plain("200 OK", "{}\n")
    );
    stop.send(()).unwrap();
    task.await.unwrap();
    assert!(!path.exists(), "socket removed on stop");
    std::fs::write(&path, b"not a socket").unwrap();
    assert!(matches!(
        Listener::unix(&path),
        Err(crate::server::BindError::NotASocket { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Every byte string we could think of, sent raw: the server must answer or close, never hang
/// or die.
#[tokio::test]
async fn hostile_inputs_never_break_the_server() {
    let server = start().await;
    let inputs: Vec<Vec<u8>> = vec![
        b"\r\n\r\n".to_vec(),
        b"GET\r\n\r\n".to_vec(),
        b"GET /ping HTTP/9.9\r\n\r\n".to_vec(),
        b"GET /containers/%ff%fe/info HTTP/1.1\r\n\r\n".to_vec(),
        b"GET /containers/bulk_info?handles=%zz HTTP/1.1\r\n\r\n".to_vec(),
        b"POST /containers HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
        b"POST /containers/h/processes HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}garbage\xff\xfe{".to_vec(),
        b"PUT /containers/h/grace_time HTTP/1.1\r\nContent-Length: 30\r\n\r\n999999999999999999999999999999".to_vec(),
        b"GET /containers/h/processes/p HTTP/1.1\r\nContent-Length: 5\r\n\r\nxxxxx]]]".to_vec(),
        vec![0u8; 1000],
        (0..=255u8).cycle().take(5000).collect(),
    ];
    for input in inputs {
        let mut s = server.connect().await;
        let _ = s.write_all(&input).await;
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("answered or closed")
            .ok();
    }
    let reply = server.exchange(b"GET /ping HTTP/1.1\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    server.stop().await;
}

/// Connection driver used directly over an in-memory pipe (no sockets), to show it is generic.
#[tokio::test]
async fn serves_any_async_stream() {
    async fn drive<IO: AsyncRead + AsyncWrite + Unpin + Send>(io: IO) {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        super::serve_connection(io, &Fake::default(), &super::ConnOptions::default(), rx).await;
    }
    let (mut client, server) = tokio::io::duplex(4096);
    let task = tokio::spawn(drive(server));
    client
        .write_all(b"GET /capacity HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let reply = read_to_close(&mut client).await;
    assert!(reply.ends_with("\r\n\r\n{}\n"), "{reply}");
    task.await.unwrap();
}
