//! Bad input over raw sockets: malformed or mistyped JSON, huge bodies, garbage heads, unknown
//! routes and wrong methods each get a clear error status, and gardend stays healthy.

use std::time::Duration;

use e2e::Gardend;
use garden_api::ContainerSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use e2e::raw_http::{exchange, healthy, post, read_reply};

fn put(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = post(path, body);
    r.splice(0..4, *b"PUT ");
    r.remove(4);
    r
}

/// A Garden error body with a non-empty message.
#[track_caller]
fn assert_error_body(status: u16, head: &str, body: &[u8], want_status: u16) -> String {
    assert_eq!(
        status,
        want_status,
        "{head}{}",
        String::from_utf8_lossy(body)
    );
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "error body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        )
    });
    let msg = v["Message"].as_str().expect("Message").to_string();
    assert!(!msg.is_empty(), "{v}");
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_mistyped_json() {
    e2e::require_root!();
    let g = Gardend::start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", post("/containers", b"{\"handle\":")),
        ("not json", post("/containers", b"hello")),
        ("handle is a number", post("/containers", b"{\"handle\":5}")),
        (
            "grace_time is a string",
            post("/containers", b"{\"grace_time\":\"1s\"}"),
        ),
        (
            "negative grace_time",
            post("/containers", b"{\"grace_time\":-1}"),
        ),
        (
            "env is an object",
            post("/containers", b"{\"env\":{\"a\":1}}"),
        ),
        ("body is an array", post("/containers", b"[1,2]")),
        (
            "grace time not a number",
            put("/containers/x/grace_time", b"\"soon\""),
        ),
        (
            "stop body wrong",
            put("/containers/x/stop", b"{\"kill\":\"yes\"}"),
        ),
        (
            "property body wrong",
            put("/containers/x/properties/k", b"{\"value\":[]}"),
        ),
        (
            "run path wrong",
            post("/containers/x/processes", b"{\"path\":7}"),
        ),
        ("net out garbage", post("/containers/x/net/out", b"{{{")),
    ];
    for (what, req) in cases {
        let (status, head, body) = exchange(&g, &req).await;
        assert!(
            (400..600).contains(&status) && status != 404,
            "{what}: status {status}\n{head}{}",
            String::from_utf8_lossy(&body)
        );
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{what}: error body not JSON ({e}): {:?}",
                String::from_utf8_lossy(&body)
            )
        });
        assert!(
            !v["Message"].as_str().unwrap_or("").is_empty(),
            "{what}: {v}"
        );
    }
    healthy(&g).await;
    // No container came out of any of this.
    let all = g
        .client()
        .list(&[("garden.state".into(), "all".into())])
        .await
        .expect("list");
    assert!(all.is_empty(), "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_and_unknown_fields_are_accepted() {
    e2e::require_root!();
    let g = Gardend::start();
    // Go semantics: null for slices/maps/structs, unknown keys ignored, trailing newline.
    let body = br#"{"handle":"nully","env":null,"properties":null,"limits":null,"bind_mounts":null,"image":null,"whatever":{"x":1}}
"#;
    let (status, head, body) = exchange(&g, &post("/containers", body)).await;
    assert_eq!(status, 200, "{head}{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["Handle"], "nully");
    // A bare integer (nanoseconds) for the grace time, with Go's trailing newline.
    let (status, head, body) =
        exchange(&g, &put("/containers/nully/grace_time", b"3000000000\n")).await;
    assert_eq!(status, 200, "{head}{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"{}\n");
    let props = g.client().properties("nully").await.expect("properties");
    assert_eq!(
        props.get("garden.grace-time").map(String::as_str),
        Some("3000000000")
    );
    g.client().destroy("nully").await.expect("destroy");
    healthy(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_declared_body_is_refused_early() {
    e2e::require_root!();
    let g = Gardend::start();
    let mut s = TcpStream::connect(g.address()).await.expect("connect");
    let head = b"POST /containers HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n";
    s.write_all(head).await.expect("head");
    let _ = s.write_all(&[b' '; 4096]).await;
    let (status, head, body) = read_reply(&mut s).await;
    assert_error_body(status, &head, &body, 413);
    // A chunked JSON body that grows without end is cut off too.
    let mut s = TcpStream::connect(g.address()).await.expect("connect");
    s.write_all(b"POST /containers HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .expect("head");
    let chunk = [b"100000\r\n".as_slice(), &vec![b' '; 0x100000], b"\r\n"].concat();
    // Write in the background while waiting for the reply: the server may answer mid-body.
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        for _ in 0..40 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut buf)).await;
    let _ = writer.await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text:.300}");
    healthy(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_heads_and_framing() {
    e2e::require_root!();
    let g = Gardend::start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage request line", b"\x00\x01\x02 not http\r\n\r\n".to_vec()),
        ("bad content-length", b"POST /containers HTTP/1.1\r\nContent-Length: abc\r\n\r\n".to_vec()),
        (
            "both lengths",
            b"POST /containers HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}".to_vec(),
        ),
        ("bad chunk size", b"PUT /containers/x/grace_time HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n1\r\n0\r\n\r\n".to_vec()),
        ("too many headers", [b"GET /ping HTTP/1.1\r\n".to_vec(), b"X-A: b\r\n".repeat(500), b"\r\n".to_vec()].concat()),
    ];
    for (what, req) in cases {
        let (status, head, body) = exchange(&g, &req).await;
        assert!(
            (400..500).contains(&status),
            "{what}: {status}\n{head}{}",
            String::from_utf8_lossy(&body)
        );
    }
    // A head that never ends is cut off at a bounded size.
    let huge = [
        b"GET /ping HTTP/1.1\r\nX-Big: ".to_vec(),
        vec![b'a'; 200 * 1024],
    ]
    .concat();
    let (status, _, _) = exchange(&g, &huge).await;
    assert!((400..500).contains(&status), "{status}");
    // A client that connects and says nothing does not block others.
    let _idle = TcpStream::connect(g.address()).await.expect("connect");
    healthy(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods() {
    e2e::require_root!();
    let g = Gardend::start();
    let get = |p: &str| {
        format!("GET {p} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n").into_bytes()
    };
    for path in [
        "/nope",
        "/containers/h/info/extra",
        "/ping/",
        "/containers/h/limits/gpu",
        "/",
    ] {
        let (status, head, body) = exchange(&g, &get(path)).await;
        assert_eq!(status, 404, "{path}: {head}");
        assert!(
            String::from_utf8_lossy(&body).starts_with("404 page not found"),
            "{path}: {body:?}"
        );
    }
    for (method, path) in [
        ("DELETE", "/ping"),
        ("POST", "/capacity"),
        ("PATCH", "/containers"),
        ("PUT", "/containers/h/info"),
    ] {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: api\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let (status, head, _) = exchange(&g, req.as_bytes()).await;
        assert_eq!(status, 405, "{method} {path}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("\r\nallow: "),
            "{method} {path}: {head}"
        );
    }
    // Plain success replies carry a JSON body with a trailing newline.
    let (status, head, body) = exchange(&g, &get("/ping")).await;
    assert_eq!(
        (status, body.as_slice()),
        (200, b"{}\n".as_slice()),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let (status, _, body) = exchange(&g, &get("/containers")).await;
    assert_eq!(
        (status, body.as_slice()),
        (200, b"{\"Handles\":[]}\n".as_slice())
    );
    healthy(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_error_statuses_match_the_spec() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    c.create(&ContainerSpec {
        handle: "e2e-bad-dup".into(),
        ..Default::default()
    })
    .await
    .expect("create");
    let (status, head, body) =
        exchange(&g, &post("/containers", b"{\"handle\":\"e2e-bad-dup\"}\n")).await;
    let msg = assert_error_body(status, &head, &body, 500);
    assert_eq!(msg, "Handle 'e2e-bad-dup' already in use");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["Type"], "");
    let get = |p: &str| {
        format!("GET {p} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let (status, head, body) = exchange(&g, &get("/containers/ghost/info")).await;
    assert_error_body(status, &head, &body, 404);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"Type":"ContainerNotFoundError","Message":"unknown handle: ghost","Handle":"ghost","ProcessID":"","Binary":""})
    );
    let (status, head, body) = exchange(&g, &get("/containers/e2e-bad-dup/properties/none")).await;
    assert_eq!(
        assert_error_body(status, &head, &body, 500),
        "property does not exist: none"
    );
    // Percent-encoded path segments are decoded; '+' stays literal.
    c.set_property("e2e-bad-dup", "a+b c", "v")
        .await
        .expect("set");
    let (status, _, body) = exchange(&g, &get("/containers/e2e-bad-dup/properties/a+b%20c")).await;
    assert_eq!(
        (status, body.as_slice()),
        (200, b"{\"value\":\"v\"}\n".as_slice())
    );
    c.destroy("e2e-bad-dup").await.expect("destroy");
    healthy(&g).await;
}
