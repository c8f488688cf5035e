//! The client against a scripted fake server that answers with exact bytes (spec §1, §2, §5),
//! over TCP and over a unix socket.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use garden_api::{ContainerSpec, GardenError, ProcessSpec, Signal, WindowSize};
use garden_client::{Address, Client, ClientError, ProcessIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A listener of either kind; the unix one lives in its own temp dir.
enum Server {
    Tcp(TcpListener),
    Unix(UnixListener, #[allow(dead_code)] tempfile::TempDir),
}

impl Server {
    async fn tcp() -> (Arc<Server>, Client) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = Address::parse(&l.local_addr().unwrap().to_string()).unwrap();
        (Arc::new(Server::Tcp(l)), Client::new(addr))
    }

    fn unix() -> (Arc<Server>, Client) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garden.sock");
        let l = UnixListener::bind(&path).unwrap();
        let addr = Address::parse(&format!("unix://{}", path.display())).unwrap();
        (Arc::new(Server::Unix(l, dir)), Client::new(addr))
    }

    async fn both() -> Vec<(Arc<Server>, Client)> {
        vec![Server::tcp().await, Server::unix()]
    }

    async fn accept(&self) -> Peer {
        let conn: Box<dyn Io> = match self {
            Server::Tcp(l) => Box::new(l.accept().await.unwrap().0),
            Server::Unix(l, _) => Box::new(l.accept().await.unwrap().0),
        };
        Peer {
            conn,
            buf: Vec::new(),
        }
    }

    /// Serve one connection: read the whole request, answer `response`, close. Returns the
    /// request head (as text) and its decoded body.
    fn serve_once(self: &Arc<Self>, response: &[u8]) -> tokio::task::JoinHandle<Request> {
        let server = self.clone();
        let response = response.to_vec();
        tokio::spawn(async move {
            let mut peer = server.accept().await;
            let req = peer.read_request().await;
            peer.conn.write_all(&response).await.unwrap();
            peer.conn.shutdown().await.unwrap();
            req
        })
    }
}

#[derive(Debug)]
struct Request {
    head: String,
    body: Vec<u8>,
    /// The body bytes as they were on the wire (chunk framing included).
    raw_body: Vec<u8>,
}

struct Peer {
    conn: Box<dyn Io>,
    buf: Vec<u8>,
}

impl Peer {
    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.conn.read(&mut chunk).await.unwrap();
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    async fn read_head(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return String::from_utf8(head).unwrap();
            }
            assert!(self.fill().await > 0, "eof before request head");
        }
    }

    async fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await > 0, "eof inside body");
        }
        self.buf.drain(..n).collect()
    }

    async fn read_line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return String::from_utf8(line).unwrap();
            }
            assert!(
                self.fill().await > 0,
                "eof before end of line: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    async fn read_request(&mut self) -> Request {
        let head = self.read_head().await;
        let lower = head.to_ascii_lowercase();
        let (mut body, mut raw_body) = (Vec::new(), Vec::new());
        if lower.contains("transfer-encoding: chunked\r\n") {
            // The workspace's one chunked codec; `raw_body` keeps the framing for assertions.
            let mut decoder = garden_api::chunked::ChunkedDecoder::new();
            let mut wire = bytes::BytesMut::new();
            loop {
                match decoder.decode(&mut wire).expect("valid chunked framing") {
                    garden_api::chunked::Decoded::Data(d) => body.extend_from_slice(&d),
                    garden_api::chunked::Decoded::Done => break,
                    garden_api::chunked::Decoded::NeedMore => {
                        if self.buf.is_empty() {
                            assert!(self.fill().await > 0, "eof inside chunked body");
                        }
                        raw_body.extend_from_slice(&self.buf);
                        wire.extend_from_slice(&std::mem::take(&mut self.buf));
                    }
                }
            }
            // Bytes after the body belong to the next read.
            raw_body.truncate(raw_body.len() - wire.len());
            self.buf = wire.to_vec();
        } else if let Some(rest) = lower.split("content-length: ").nth(1) {
            let n: usize = rest.split("\r\n").next().unwrap().parse().unwrap();
            body = self.read_exact(n).await;
            raw_body = body.clone();
        }
        Request {
            head,
            body,
            raw_body,
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.conn.write_all(bytes).await.unwrap();
        self.conn.flush().await.unwrap();
    }
}

/// An AsyncWrite that collects into a shared buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Fail instead of hanging when the client waits for something that never comes.
async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("timed out")
}

fn json_reply(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const HEAD_TAIL: &str = "Host: api\r\nUser-Agent: Go-http-client/1.1\r\n";

#[tokio::test]
async fn create_sends_go_client_bytes_over_tcp_and_unix() {
    for (server, client) in Server::both().await {
        let reply = server.serve_once(&json_reply("200 OK", "{\"Handle\":\"h1\"}\n"));
        let handle = client.create(&ContainerSpec::default()).await.unwrap();
        assert_eq!(handle, "h1");
        let req = reply.await.unwrap();
        let body = "{\"image\":{},\"limits\":{\"bandwidth_limits\":{},\"cpu_limits\":{},\"disk_limits\":{},\"memory_limits\":{},\"pid_limits\":{}}}\n";
        assert_eq!(
            req.head,
            format!(
                "POST /containers HTTP/1.1\r\n{HEAD_TAIL}Content-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n",
                body.len()
            )
        );
        assert_eq!(String::from_utf8(req.body).unwrap(), body);
    }
}

#[tokio::test]
async fn plain_routes_paths_bodies_and_response_framings() {
    let (server, client) = Server::tcp().await;

    // Ping, answered chunked.
    let reply = server.serve_once(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n1\r\n\n\r\n0\r\n\r\n",
    );
    client.ping().await.unwrap();
    assert_eq!(
        reply.await.unwrap().head,
        format!("GET /ping HTTP/1.1\r\n{HEAD_TAIL}Connection: close\r\n\r\n")
    );

    // Destroy, answered with the body framed by close.
    let reply = server.serve_once(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}\n");
    client.destroy("a b").await.unwrap();
    assert!(reply
        .await
        .unwrap()
        .head
        .starts_with("DELETE /containers/a%20b HTTP/1.1\r\n"));

    let reply = server.serve_once(&json_reply("200 OK", "{\"Handles\":[\"x\",\"y\"]}\n"));
    let handles = client
        .list(&[("owner".into(), "me too".into())])
        .await
        .unwrap();
    assert_eq!(handles, ["x", "y"]);
    assert!(reply
        .await
        .unwrap()
        .head
        .starts_with("GET /containers?owner=me+too HTTP/1.1\r\n"));

    let reply = server.serve_once(&json_reply("200 OK", "{}\n"));
    client.stop("h", true).await.unwrap();
    let req = reply.await.unwrap();
    assert!(req.head.starts_with("PUT /containers/h/stop HTTP/1.1\r\n"));
    assert_eq!(req.body, b"{\"kill\":true}\n");

    let reply = server.serve_once(&json_reply("200 OK", "{}\n"));
    client
        .set_grace_time("h", Duration::from_secs(3))
        .await
        .unwrap();
    let req = reply.await.unwrap();
    assert!(req
        .head
        .starts_with("PUT /containers/h/grace_time HTTP/1.1\r\n"));
    assert_eq!(req.body, b"3000000000\n");

    let reply = server.serve_once(&json_reply(
        "200 OK",
        "{\"a\":{\"Info\":{\"State\":\"active\"},\"Err\":null}}\n",
    ));
    let info = client.bulk_info(&["a".into(), "b".into()]).await.unwrap();
    assert_eq!(info["a"].info.state, "active");
    assert!(reply
        .await
        .unwrap()
        .head
        .starts_with("GET /containers/bulk_info?handles=a%2Cb HTTP/1.1\r\n"));

    // Guardian answers `null` for the properties of an unknown container.
    let reply = server.serve_once(&json_reply("200 OK", "null\n"));
    assert!(client.properties("h").await.unwrap().is_empty());
    reply.await.unwrap();

    let reply = server.serve_once(&json_reply("200 OK", "{\"value\":\"v\"}\n"));
    assert_eq!(client.property("h", "k").await.unwrap(), "v");
    assert!(reply
        .await
        .unwrap()
        .head
        .starts_with("GET /containers/h/properties/k HTTP/1.1\r\n"));

    let reply = server.serve_once(&json_reply("200 OK", "{}\n"));
    client.set_property("h", "k", "v2").await.unwrap();
    let req = reply.await.unwrap();
    assert!(req
        .head
        .starts_with("PUT /containers/h/properties/k HTTP/1.1\r\n"));
    assert_eq!(req.body, b"{\"value\":\"v2\"}\n");

    let reply = server.serve_once(&json_reply(
        "200 OK",
        "{\"host_port\":61001,\"container_port\":8080}\n",
    ));
    let r = client.net_in("h", 0, 8080).await.unwrap();
    assert_eq!((r.host_port, r.container_port), (61001, 8080));
    let req = reply.await.unwrap();
    assert!(req
        .head
        .starts_with("POST /containers/h/net/in HTTP/1.1\r\n"));
    assert_eq!(req.body, b"{\"handle\":\"h\",\"container_port\":8080}\n");

    let reply = server.serve_once(&json_reply("200 OK", "{}\n"));
    client
        .bulk_net_out("h", &[Default::default(), Default::default()])
        .await
        .unwrap();
    assert_eq!(reply.await.unwrap().body, b"[{},{}]\n");

    let reply = server.serve_once(&json_reply("200 OK", "{\"limit_in_bytes\":1048576}\n"));
    assert_eq!(
        client
            .current_memory_limits("h")
            .await
            .unwrap()
            .limit_in_bytes,
        1 << 20
    );
    assert!(reply
        .await
        .unwrap()
        .head
        .starts_with("GET /containers/h/limits/memory HTTP/1.1\r\n"));
}

#[tokio::test]
async fn error_replies() {
    let (server, client) = Server::unix();

    let body = r#"{"Type":"ContainerNotFoundError","Message":"unknown handle: foo","Handle":"foo","ProcessID":"","Binary":""}"#;
    let reply = server.serve_once(&json_reply("404 Not Found", &format!("{body}\n")));
    let err = client.info("foo").await.unwrap_err();
    assert_eq!(err.garden(), Some(&GardenError::container_not_found("foo")));
    assert_eq!(err.to_string(), "unknown handle: foo");
    reply.await.unwrap();

    // The status never selects the type: a 500 with a generic body is a generic error.
    let body = r#"{"Type":"","Message":"Handle 'h' already in use","Handle":"","ProcessID":"","Binary":""}"#;
    let reply = server.serve_once(&json_reply("500 Internal Server Error", body));
    let err = client
        .create(&ContainerSpec {
            handle: "h".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.garden(),
        Some(&GardenError::generic("Handle 'h' already in use"))
    );
    reply.await.unwrap();

    // A router's text 404 is not Garden's body.
    let reply = server.serve_once(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n\r\n404 page not found\n",
    );
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("404") && text.contains("404 page not found"),
        "{text}"
    );
    reply.await.unwrap();

    // Every 2xx must carry a JSON value.
    let reply = server.serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let err = client.ping().await.unwrap_err();
    assert!(err.to_string().contains("empty body"), "{err}");
    reply.await.unwrap();

    let reply = server.serve_once(&json_reply("200 OK", "nope"));
    let err = client.capacity().await.unwrap_err();
    assert!(
        err.to_string().starts_with("bad response to GET /capacity"),
        "{err}"
    );
    reply.await.unwrap();

    // A body shorter than its Content-Length.
    let reply = server.serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}");
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::Io { .. }), "{err:?}");
    reply.await.unwrap();
}

#[tokio::test]
async fn dial_failure_names_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.sock");
    let client = Client::new(Address::Unix(path.clone()));
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("connecting to unix://{}", path.display())),
        "{err}"
    );
}

#[tokio::test]
async fn stream_in_sends_chunked_tar_while_reading_it() {
    let (server, client) = Server::tcp().await;
    let (mut tar_w, tar_r) = tokio::io::duplex(1024);
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let srv = server.clone();
    let fake = tokio::spawn(async move {
        let mut peer = srv.accept().await;
        let head = peer.read_head().await;
        // The first chunk arrives while the caller has not finished the tar yet.
        assert_eq!(peer.read_line().await, "5\r\n");
        assert_eq!(peer.read_exact(7).await, b"hello\r\n");
        seen_tx.send(()).unwrap();
        let mut rest = Vec::new();
        loop {
            rest.append(&mut peer.buf);
            if rest.ends_with(b"0\r\n\r\n") {
                break;
            }
            assert!(peer.fill().await > 0, "eof inside the tar body");
        }
        peer.write(&json_reply("200 OK", "{}\n")).await;
        (head, rest)
    });
    let call = tokio::spawn(async move { client.stream_in("h", "vcap", "/tmp/x y", tar_r).await });
    tar_w.write_all(b"hello").await.unwrap();
    seen_rx.await.unwrap();
    tar_w.write_all(b" world!").await.unwrap();
    drop(tar_w);
    call.await.unwrap().unwrap();
    let (head, rest) = fake.await.unwrap();
    assert_eq!(
        head,
        format!(
            "PUT /containers/h/files?destination=%2Ftmp%2Fx+y&user=vcap HTTP/1.1\r\n{HEAD_TAIL}Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
    );
    assert_eq!(rest, b"7\r\n world!\r\n0\r\n\r\n");
}

#[tokio::test]
async fn stream_in_large_body_round_trips() {
    let (server, client) = Server::unix();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let reply = server.serve_once(&json_reply("200 OK", "{}\n"));
    client
        .stream_in("h", "", "/", std::io::Cursor::new(data.clone()))
        .await
        .unwrap();
    let req = reply.await.unwrap();
    assert_eq!(req.body, data);
    assert!(req.raw_body.starts_with(b"10000\r\n"), "chunk framing");
    assert!(req.raw_body.ends_with(b"\r\n0\r\n\r\n"));
}

#[tokio::test]
async fn stream_in_gets_early_error_without_finishing_the_tar() {
    let (server, client) = Server::tcp().await;
    let srv = server.clone();
    let fake = tokio::spawn(async move {
        let mut peer = srv.accept().await;
        peer.read_head().await;
        let body = r#"{"Type":"ContainerNotFoundError","Message":"unknown handle: gone","Handle":"gone","ProcessID":"","Binary":""}"#;
        peer.write(&json_reply("404 Not Found", body)).await;
        peer // keep the connection open: the client must not depend on a close
    });
    // An endless tar: only the early reply can end the call.
    let call = client.stream_in("gone", "", "/", tokio::io::repeat(b'x'));
    let err = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("stream_in hung")
        .unwrap_err();
    assert_eq!(
        err.garden(),
        Some(&GardenError::container_not_found("gone"))
    );
    drop(fake.await.unwrap());
}

#[tokio::test]
async fn stream_out_chunked_close_and_truncated() {
    let (server, client) = Server::tcp().await;

    // Chunked, with the framing split at awkward places across writes.
    let srv = server.clone();
    let fake = tokio::spawn(async move {
        let mut peer = srv.accept().await;
        let req = peer.read_request().await;
        for piece in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r"[..],
            b"\nhel",
            b"lo\r\n6;ext=1\r\n wor",
            b"ld\r\n0\r\n",
            b"Trailer: x\r\n\r\n",
        ] {
            peer.write(piece).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        req
    });
    let mut out = client.stream_out("h", "root", "/etc/").await.unwrap();
    let mut bytes = Vec::new();
    out.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(bytes, b"hello world");
    let req = fake.await.unwrap();
    assert_eq!(
        req.head,
        format!("GET /containers/h/files?source=%2Fetc%2F&user=root HTTP/1.1\r\n{HEAD_TAIL}Connection: close\r\n\r\n")
    );

    // Framed by close.
    let reply = server.serve_once(b"HTTP/1.1 200 OK\r\n\r\ntar bytes \x00\x01 until close");
    let mut bytes = Vec::new();
    client
        .stream_out("h", "", "f")
        .await
        .unwrap()
        .read_to_end(&mut bytes)
        .await
        .unwrap();
    assert_eq!(bytes, b"tar bytes \x00\x01 until close");
    reply.await.unwrap();

    // A chunked body cut short is an error, not a short tar.
    let reply =
        server.serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nonly part");
    let mut bytes = Vec::new();
    let err = client
        .stream_out("h", "", "f")
        .await
        .unwrap()
        .read_to_end(&mut bytes)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    reply.await.unwrap();

    let body = r#"{"Type":"","Message":"boom","Handle":"","ProcessID":"","Binary":""}"#;
    let reply = server.serve_once(&json_reply("500 Internal Server Error", body));
    let err = client.stream_out("h", "", "f").await.err().unwrap();
    assert_eq!(err.garden(), Some(&GardenError::generic("boom")));
    reply.await.unwrap();
}

const RUN_HEAD: &[u8] = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n";
const STREAM_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n";

#[tokio::test]
async fn run_with_stdin_stdout_stderr_and_exit_status() {
    for (server, client) in Server::both().await {
        let srv = server.clone();
        let fake = tokio::spawn(async move {
            let mut main = srv.accept().await;
            let req = main.read_request().await;
            // Head and first message in one write: the client must keep the surplus.
            let mut first = RUN_HEAD.to_vec();
            first.extend_from_slice(b"{\"process_id\":\"p1\",\"stream_id\":\"1\"}\n");
            main.write(&first).await;

            let mut out = srv.accept().await;
            let out_head = out.read_head().await;
            let mut head_and_data = STREAM_HEAD.to_vec();
            head_and_data.extend_from_slice(b"hello ");
            out.write(&head_and_data).await;
            let mut err = srv.accept().await;
            let err_head = err.read_head().await;
            err.write(STREAM_HEAD).await;

            let stdin = [main.read_line().await, main.read_line().await];
            // Exit status first; the output drains afterwards and wait must still see it all.
            main.write(b"{\"process_id\":\"p1\",").await;
            tokio::time::sleep(Duration::from_millis(10)).await;
            main.write(b"\"exit_status\":42}\n").await;
            drop(main);
            tokio::time::sleep(Duration::from_millis(50)).await;
            out.write(b"world").await;
            err.write(b"oops").await;
            (req, out_head, err_head, stdin)
        });

        let (stdout, stderr) = (Capture::default(), Capture::default());
        let spec = ProcessSpec {
            path: "cat".into(),
            ..Default::default()
        };
        let io = ProcessIo {
            stdin: Some(Box::new(std::io::Cursor::new(b"input".to_vec()))),
            stdout: Some(Box::new(stdout.clone())),
            stderr: Some(Box::new(stderr.clone())),
        };
        let mut process = client.run("h1", &spec, io).await.unwrap();
        assert_eq!(process.id(), "p1");
        assert_eq!(within(process.wait()).await.unwrap(), 42);
        assert_eq!(stdout.text(), "hello world");
        assert_eq!(stderr.text(), "oops");
        assert_eq!(within(process.wait()).await.unwrap(), 42, "cached");

        let (req, out_head, err_head, stdin) = fake.await.unwrap();
        let body = "{\"path\":\"cat\",\"rlimits\":{},\"image\":{}}\n";
        assert_eq!(
            req.head,
            format!(
                "POST /containers/h1/processes HTTP/1.1\r\n{HEAD_TAIL}Content-Length: {}\r\nContent-Type: application/json\r\n\r\n",
                body.len()
            )
        );
        assert_eq!(String::from_utf8(req.body).unwrap(), body);
        assert_eq!(
            out_head,
            format!(
                "GET /containers/h1/processes/p1/attaches/1/stdout HTTP/1.1\r\n{HEAD_TAIL}Content-Type: application/json\r\n\r\n"
            )
        );
        assert!(
            err_head.starts_with("GET /containers/h1/processes/p1/attaches/1/stderr HTTP/1.1\r\n")
        );
        assert_eq!(
            stdin,
            [
                "{\"process_id\":\"p1\",\"source\":0,\"data\":\"input\"}\n",
                "{\"process_id\":\"p1\",\"source\":0}\n"
            ]
        );
    }
}

#[tokio::test]
async fn attach_with_messages_split_across_writes_and_no_streams() {
    let (server, client) = Server::tcp().await;
    let srv = server.clone();
    let fake = tokio::spawn(async move {
        let mut main = srv.accept().await;
        let head = main.read_head().await;
        for piece in [
            &b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-"[..],
            b"Encoding: chunked\r\n\r\n{\"process_",
            b"id\":\"p9\",\"stream_id\":\"2\"}",
            b"\n{\"process_id\":\"p9\",\"source\":1,\"data\":\"legacy\"}{\"process_id\":\"p9\",\"exit_status\":0}\n",
        ] {
            main.write(piece).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Nothing may arrive from a client that gave no stdin.
        let mut rest = Vec::new();
        main.conn.read_to_end(&mut rest).await.unwrap();
        (head, rest)
    });
    let mut process = client
        .attach("h1", "p9", ProcessIo::default())
        .await
        .unwrap();
    assert_eq!(process.id(), "p9");
    assert_eq!(within(process.wait()).await.unwrap(), 0);
    let (head, rest) = fake.await.unwrap();
    assert_eq!(
        head,
        format!("GET /containers/h1/processes/p9 HTTP/1.1\r\n{HEAD_TAIL}\r\n")
    );
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

#[tokio::test]
async fn attach_unknown_process_is_typed() {
    let (server, client) = Server::unix();
    let body = r#"{"Type":"ProcessNotFoundError","Message":"unknown process: p2","Handle":"","ProcessID":"p2","Binary":""}"#;
    let reply = server.serve_once(&json_reply("404 Not Found", &format!("{body}\n")));
    let err = client
        .attach("h1", "p2", ProcessIo::default())
        .await
        .unwrap_err();
    assert_eq!(err.garden(), Some(&GardenError::process_not_found("p2")));
    reply.await.unwrap();
}

#[tokio::test]
async fn run_start_failure_is_returned_by_run() {
    let (server, client) = Server::tcp().await;
    let body = r#"{"Type":"ExecutableNotFoundError","Message":"exec: \"nope\": executable file not found in $PATH","Handle":"","ProcessID":"","Binary":""}"#;
    let reply = server.serve_once(&json_reply("500 Internal Server Error", body));
    let spec = ProcessSpec {
        path: "nope".into(),
        ..Default::default()
    };
    let err = client
        .run("h1", &spec, ProcessIo::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err.garden(), Some(GardenError::ExecutableNotFound { .. })),
        "{err:?}"
    );
    reply.await.unwrap();
}

#[tokio::test]
async fn signal_and_set_tty_while_waiting() {
    let (server, client) = Server::tcp().await;
    let srv = server.clone();
    let fake = tokio::spawn(async move {
        let mut main = srv.accept().await;
        main.read_head().await;
        main.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{\"process_id\":\"p1\",\"stream_id\":\"3\"}\n")
            .await;
        let lines = [main.read_line().await, main.read_line().await];
        main.write(b"{\"process_id\":\"p1\",\"exit_status\":137}\n")
            .await;
        lines
    });
    let mut process = client
        .attach("h1", "p1", ProcessIo::default())
        .await
        .unwrap();
    let control = process.control();
    let waiter = tokio::spawn(async move { within(process.wait()).await });
    control.signal(Signal::Kill).await.unwrap();
    control
        .set_tty(WindowSize {
            columns: 100,
            rows: 50,
        })
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 137);
    assert_eq!(
        fake.await.unwrap(),
        [
            "{\"process_id\":\"p1\",\"signal\":1}\n",
            "{\"process_id\":\"p1\",\"tty\":{\"window_size\":{\"columns\":100,\"rows\":50}}}\n"
        ]
    );
    // The connection is closed once the process finished.
    assert!(control.signal(Signal::Terminate).await.is_err());
}

#[tokio::test]
async fn process_error_and_early_close() {
    let (server, client) = Server::tcp().await;
    for (tail, expected) in [
        (
            &b"{\"process_id\":\"p1\",\"error\":\"wait failed\"}\n"[..],
            "process error: wait failed",
        ),
        (b"", "connection closed before the process's exit status"),
        (
            b"{\"process_id\":\"p1\",\"exit_st",
            "connection closed inside a message",
        ),
    ] {
        let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{\"process_id\":\"p1\",\"stream_id\":\"1\"}\n".to_vec();
        reply.extend_from_slice(tail);
        let served = server.serve_once(&reply);
        let mut process = client
            .attach("h1", "p1", ProcessIo::default())
            .await
            .unwrap();
        let err = within(process.wait()).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(
            within(process.wait()).await.unwrap_err().to_string(),
            err.to_string(),
            "cached"
        );
        served.await.unwrap();
    }
}

#[tokio::test]
async fn failed_stream_hijack_is_reported_by_wait() {
    let (server, client) = Server::tcp().await;
    let srv = server.clone();
    let fake = tokio::spawn(async move {
        let mut main = srv.accept().await;
        main.read_request().await;
        let mut first = RUN_HEAD.to_vec();
        first.extend_from_slice(b"{\"process_id\":\"p1\",\"stream_id\":\"1\"}\n");
        main.write(&first).await;
        // Not an HTTP response at all: the stream cannot be hijacked.
        let mut out = srv.accept().await;
        out.read_head().await;
        out.write(b"garbage\r\n\r\n").await;
        main
    });
    let io = ProcessIo {
        stdout: Some(Box::new(Capture::default())),
        ..Default::default()
    };
    let mut process = client.run("h1", &ProcessSpec::default(), io).await.unwrap();
    let err = within(process.wait()).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("failed to hijack stream stdout"),
        "{err}"
    );
    drop(fake.await.unwrap());
}

#[test]
fn address_parsing() {
    assert_eq!(
        Address::parse("/tmp/garden.sock").unwrap(),
        Address::Unix("/tmp/garden.sock".into())
    );
    assert_eq!(
        Address::parse("unix:///tmp/g.sock").unwrap(),
        Address::Unix("/tmp/g.sock".into())
    );
    assert_eq!(
        Address::parse("tcp://127.0.0.1:7777").unwrap(),
        Address::Tcp("127.0.0.1:7777".into())
    );
    assert_eq!(
        "localhost:7777".parse::<Address>().unwrap(),
        Address::Tcp("localhost:7777".into())
    );
    assert_eq!(
        Address::parse("[::1]:7777").unwrap(),
        Address::Tcp("[::1]:7777".into())
    );
    for bad in [
        "",
        "localhost",
        "tcp://h:notaport",
        "unix://relative",
        ":7777",
    ] {
        assert!(Address::parse(bad).is_err(), "{bad:?} accepted");
    }
    for s in ["unix:///tmp/g.sock", "tcp://127.0.0.1:7777"] {
        assert_eq!(Address::parse(s).unwrap().to_string(), s);
    }
}
