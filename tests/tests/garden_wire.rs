//! The hijacked routes (Run, Attach, stdout/stderr streams) over raw TCP with hand-written
//! bytes, checking exactly what gardend sends (spec §5.3-§5.7).

use std::time::Duration;

use e2e::{leaks_after, Gardend};
use garden_api::ContainerSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A raw connection with a read buffer.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(g: &Gardend) -> Raw {
        Raw {
            s: TcpStream::connect(g.address()).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
        self.s.flush().await.expect("flush");
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(IO_TIMEOUT, self.s.read(&mut chunk))
            .await
            .expect("read timed out")
            .expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The response head, up to and including the blank line.
    async fn head(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return String::from_utf8(head).expect("utf-8 head");
            }
            assert!(
                self.fill().await > 0,
                "EOF before the end of the head: {:?}",
                self.buf
            );
        }
    }

    /// One `\n`-terminated line, newline included.
    async fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return self.buf.drain(..=i).collect();
            }
            assert!(
                self.fill().await > 0,
                "EOF before a full line: {:?}",
                self.buf
            );
        }
    }

    async fn exactly(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(
                self.fill().await > 0,
                "EOF after {} of {n} bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Everything until the peer closes.
    async fn read_to_eof(&mut self) -> Vec<u8> {
        while self.fill().await > 0 {}
        std::mem::take(&mut self.buf)
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[track_caller]
fn assert_hijack_head(head: &str, status_line: &str) {
    assert!(head.starts_with(&format!("{status_line}\r\n")), "{head:?}");
    assert_eq!(
        header(head, "Transfer-Encoding"),
        Some("chunked"),
        "{head:?}"
    );
    assert!(
        header(head, "Connection").is_none_or(|v| !v.eq_ignore_ascii_case("close")),
        "{head:?}"
    );
    assert!(header(head, "Content-Length").is_none(), "{head:?}");
}

fn run_request(handle: &str, body: &str) -> Vec<u8> {
    let body = format!("{body}\n");
    format!(
        "POST /containers/{handle}/processes HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\n\
         Content-Length: {}\r\nContent-Type: application/json\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get_request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api\r\nUser-Agent: Go-http-client/1.1\r\nContent-Type: application/json\r\n\r\n")
        .into_bytes()
}

/// The first message; returns the stream id after checking the exact bytes.
async fn first_message(main: &mut Raw, pid: &str) -> String {
    let line = main.line().await;
    let v: serde_json::Value = serde_json::from_slice(&line).expect("first message is JSON");
    let sid = v["stream_id"].as_str().expect("stream_id").to_string();
    assert!(!sid.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&line),
        format!("{{\"process_id\":\"{pid}\",\"stream_id\":\"{sid}\"}}\n")
    );
    sid
}

async fn open_stream(g: &Gardend, handle: &str, pid: &str, sid: &str, which: &str) -> Raw {
    let mut r = Raw::connect(g).await;
    r.send(&get_request(&format!(
        "/containers/{handle}/processes/{pid}/attaches/{sid}/{which}"
    )))
    .await;
    let head = r.head().await;
    assert_hijack_head(&head, "HTTP/1.1 200 OK");
    r
}

async fn setup(handle: &str) -> Gardend {
    let g = Gardend::start();
    g.client()
        .create(&ContainerSpec {
            handle: handle.into(),
            ..Default::default()
        })
        .await
        .expect("create");
    g
}

async fn teardown(g: &Gardend, handle: &str) {
    g.client().destroy(handle).await.expect("destroy");
    let left = leaks_after(handle, g, Duration::from_secs(5));
    assert!(left.is_empty(), "{handle} leaked: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exact_bytes() {
    e2e::require_root!();
    let h = "e2e-wire-run";
    let g = setup(h).await;
    let mut main = Raw::connect(&g).await;
    main.send(&run_request(
        h,
        r#"{"id":"p1","path":"/bin/sh","args":["-c","printf 'out\\000\\377'; echo err >&2; exit 3"],"rlimits":{},"image":{}}"#,
    ))
    .await;
    let head = main.head().await;
    assert_hijack_head(&head, "HTTP/1.1 201 Created");
    let sid = first_message(&mut main, "p1").await;

    let mut out = open_stream(&g, h, "p1", &sid, "stdout").await;
    let mut err = open_stream(&g, h, "p1", &sid, "stderr").await;
    assert_eq!(
        out.read_to_eof().await,
        b"out\0\xff",
        "stdout is raw, not chunk-framed"
    );
    assert_eq!(err.read_to_eof().await, b"err\n");
    assert_eq!(
        main.line().await,
        br#"{"process_id":"p1","exit_status":3}"#
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>()
    );
    assert_eq!(
        main.read_to_eof().await,
        b"",
        "nothing after the exit message"
    );

    // Attach to the finished process: 200, a new stream id, the saved exit status at once.
    let mut att = Raw::connect(&g).await;
    att.send(&get_request(&format!("/containers/{h}/processes/p1")))
        .await;
    let head = att.head().await;
    assert_hijack_head(&head, "HTTP/1.1 200 OK");
    let sid2 = first_message(&mut att, "p1").await;
    assert_ne!(sid2, sid, "every attach gets its own stream id");
    let mut out = open_stream(&g, h, "p1", &sid2, "stdout").await;
    assert_eq!(out.read_to_eof().await, b"");
    assert_eq!(
        att.line().await,
        b"{\"process_id\":\"p1\",\"exit_status\":3}\n"
    );

    // An unknown stream id: the 200 head, then an empty stream.
    let mut r = open_stream(&g, h, "p1", "no-such-stream", "stdout").await;
    assert_eq!(r.read_to_eof().await, b"");
    teardown(&g, h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_on_hijacked_routes_are_length_delimited() {
    e2e::require_root!();
    let h = "e2e-wire-err";
    let g = setup(h).await;
    let check = |head: &str, status: &str| {
        assert!(head.starts_with(&format!("HTTP/1.1 {status}")), "{head:?}");
        assert!(
            header(head, "Connection").is_none_or(|v| !v.eq_ignore_ascii_case("close")),
            "{head:?}"
        );
        assert_eq!(
            header(head, "Content-Type"),
            Some("application/json"),
            "{head:?}"
        );
        header(head, "Content-Length")
            .expect("Content-Length")
            .parse::<usize>()
            .expect("length")
    };

    // Run on an unknown handle.
    let mut r = Raw::connect(&g).await;
    r.send(&run_request(
        "nope",
        r#"{"path":"true","rlimits":{},"image":{}}"#,
    ))
    .await;
    let head = r.head().await;
    let len = check(&head, "404 ");
    let body: serde_json::Value = serde_json::from_slice(&r.exactly(len).await).expect("json");
    assert_eq!(body["Type"], "ContainerNotFoundError");
    assert_eq!(body["Handle"], "nope");
    assert_eq!(body["Message"], "unknown handle: nope");

    // Attach to an unknown process.
    let mut r = Raw::connect(&g).await;
    r.send(&get_request(&format!("/containers/{h}/processes/ghost")))
        .await;
    let len = check(&r.head().await, "404 ");
    let body: serde_json::Value = serde_json::from_slice(&r.exactly(len).await).expect("json");
    assert_eq!(body["Type"], "ProcessNotFoundError");
    assert_eq!(body["ProcessID"], "ghost");
    assert_eq!(body["Message"], "unknown process: ghost");
    for key in ["Type", "Message", "Handle", "ProcessID", "Binary"] {
        assert!(body.get(key).is_some(), "{key} missing in {body}");
    }

    // Executable not found: 500 typed error, not hijacked.
    let mut r = Raw::connect(&g).await;
    r.send(&run_request(
        h,
        r#"{"path":"/no/such/bin","rlimits":{},"image":{}}"#,
    ))
    .await;
    let len = check(&r.head().await, "500 ");
    let body: serde_json::Value = serde_json::from_slice(&r.exactly(len).await).expect("json");
    assert_eq!(body["Type"], "ExecutableNotFoundError", "{body}");
    teardown(&g, h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_messages_split_and_merged() {
    e2e::require_root!();
    let h = "e2e-wire-stdin";
    let g = setup(h).await;
    let mut main = Raw::connect(&g).await;
    // The request and the first stdin bytes in one write: the surplus after Content-Length
    // belongs to the message stream.
    let mut req = run_request(h, r#"{"id":"cat","path":"cat","rlimits":{},"image":{}}"#);
    req.extend_from_slice(br#"{"process_id":"cat","source":0,"data":"one\n"}"#);
    req.extend_from_slice(b"\n{\"process_id\":\"cat\",\"sou");
    main.send(&req).await;
    let head = main.head().await;
    assert_hijack_head(&head, "HTTP/1.1 201 Created");
    let sid = first_message(&mut main, "cat").await;
    let mut out = open_stream(&g, h, "cat", &sid, "stdout").await;
    // The rest of the split message, then two merged ones (the last is EOF), byte by byte for
    // a stretch so every split point inside a JSON value is exercised.
    let rest = b"rce\":0,\"data\":\"two \\u00e9\\n\"} {\"process_id\":\"cat\",\"source\":0,\"data\":\"three\\n\"}\n{\"process_id\":\"cat\",\"source\":0}\n";
    for (i, b) in rest.iter().enumerate() {
        main.send(std::slice::from_ref(b)).await;
        if i % 7 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(
        String::from_utf8(out.read_to_eof().await).unwrap(),
        "one\ntwo é\nthree\n"
    );
    assert_eq!(
        main.line().await,
        b"{\"process_id\":\"cat\",\"exit_status\":0}\n"
    );
    teardown(&g, h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_resize_and_output_buffered_before_attach() {
    e2e::require_root!();
    let h = "e2e-wire-sig";
    let g = setup(h).await;
    let mut main = Raw::connect(&g).await;
    main.send(&run_request(
        h,
        r#"{"id":"s","path":"/bin/sh","args":["-c","trap 'stty size' WINCH; echo early; while true; do sleep 0.05; done"],"rlimits":{},"tty":{"window_size":{"columns":80,"rows":24}},"image":{}}"#,
    ))
    .await;
    assert_hijack_head(&main.head().await, "HTTP/1.1 201 Created");
    let sid = first_message(&mut main, "s").await;
    let mut out = open_stream(&g, h, "s", &sid, "stdout").await;
    // Output written before the stream attached is delivered.
    while !String::from_utf8_lossy(&out.buf).contains("early\r\n") {
        assert!(out.fill().await > 0, "stdout closed early: {:?}", out.buf);
    }
    main.send(b"{\"process_id\":\"s\",\"tty\":{\"window_size\":{\"columns\":91,\"rows\":19}}}\n")
        .await;
    while !String::from_utf8_lossy(&out.buf).contains("19 91\r\n") {
        assert!(out.fill().await > 0, "stdout closed early: {:?}", out.buf);
    }
    main.send(b"{\"process_id\":\"s\",\"signal\":1}\n").await;
    assert_eq!(
        main.line().await,
        b"{\"process_id\":\"s\",\"exit_status\":137}\n"
    );
    out.read_to_eof().await;
    teardown(&g, h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_detaches_without_killing() {
    e2e::require_root!();
    let h = "e2e-wire-detach";
    let g = setup(h).await;
    let mut main = Raw::connect(&g).await;
    main.send(&run_request(
        h,
        r#"{"id":"d","path":"/bin/sh","args":["-c","read x; echo got $x; exit 4"],"rlimits":{},"image":{}}"#,
    ))
    .await;
    assert_hijack_head(&main.head().await, "HTTP/1.1 201 Created");
    first_message(&mut main, "d").await;
    drop(main);
    // The process is still there: a new attach gets its exit status once it ends. It waits on
    // stdin, which the disconnect closed (EOF), so it finishes by itself.
    let c = g.client();
    let mut p = c
        .attach(h, "d", Default::default())
        .await
        .expect("re-attach");
    let status = tokio::time::timeout(IO_TIMEOUT, p.wait())
        .await
        .expect("wait")
        .expect("status");
    assert_eq!(status, 4);
    teardown(&g, h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_messages_close_stdin_but_keep_the_session() {
    e2e::require_root!();
    let h = "e2e-wire-unknown";
    let g = setup(h).await;
    for (i, msg) in [
        r#"{"process_id":"u","signal":9}"#,
        r#"{"process_id":"u"}"#,
        r#"{"process_id":"u","source":0,"data":5}"#,
    ]
    .iter()
    .enumerate()
    {
        let id = format!("u{i}");
        let mut main = Raw::connect(&g).await;
        let body = format!(
            r#"{{"id":"{id}","path":"sh","args":["-c","cat; echo cat-done"],"rlimits":{{}},"image":{{}}}}"#
        );
        main.send(&run_request(h, &body)).await;
        assert_hijack_head(&main.head().await, "HTTP/1.1 201 Created");
        let sid = first_message(&mut main, &id).await;
        let mut out = open_stream(&g, h, &id, &sid, "stdout").await;
        main.send(
            format!("{{\"process_id\":\"{id}\",\"source\":0,\"data\":\"x\\n\"}}\n").as_bytes(),
        )
        .await;
        main.send(format!("{msg}\n").as_bytes()).await;
        assert_eq!(
            String::from_utf8(out.read_to_eof().await).unwrap(),
            "x\ncat-done\n",
            "{msg} should close stdin"
        );
        assert_eq!(
            main.line().await,
            format!("{{\"process_id\":\"{id}\",\"exit_status\":0}}\n").into_bytes(),
            "{msg}"
        );
    }
    teardown(&g, h).await;
}
