//! The registry client against a scripted registry on loopback: the bearer-token dance from a
//! `WWW-Authenticate` challenge (docker-registry in the e2e tests only does basic auth), and
//! a blob redirect to another host that must not receive the token.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::RawTar;
use rootfs::digest::Digest;
use rootfs::{Credentials, RootfsError, Store, StoreConfig};

/// base64("alice:pw")
const BASIC: &str = "Basic YWxpY2U6cHc=";
const TOKEN: &str = "tok-123";

struct Request {
    path: String,
    auth: Option<String>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut auth = None;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
        }
    }
    Some(Request { path, auth })
}

fn respond(mut s: &TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

/// Serves `blobs` (by digest) and the manifest `v1` behind bearer auth; blob reads are
/// redirected to `localhost` (another host name), which refuses any Authorization header.
fn serve(blobs: HashMap<String, Vec<u8>>, manifest: Vec<u8>) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let Some(req) = read_request(&stream) else {
                continue;
            };
            log.lock().unwrap().push(format!(
                "{} {}",
                req.path,
                req.auth.clone().unwrap_or_default()
            ));
            let bearer = req.auth.as_deref() == Some(&format!("Bearer {TOKEN}"));
            if req.path.starts_with("/token?") {
                if req.auth.as_deref() == Some(BASIC)
                    && req.path.contains("scope=repository%3Aapp%3Apull")
                    && req.path.contains("service=e2e")
                {
                    respond(
                        &stream,
                        "200 OK",
                        &[],
                        format!(r#"{{"token":"{TOKEN}"}}"#).as_bytes(),
                    );
                } else {
                    respond(&stream, "401 Unauthorized", &[], b"{}");
                }
            } else if let Some(d) = req.path.strip_prefix("/storage/") {
                match (req.auth, blobs.get(d)) {
                    (None, Some(b)) => respond(&stream, "200 OK", &[], b),
                    _ => respond(&stream, "400 Bad Request", &[], b"credentials leaked"),
                }
            } else if !bearer {
                let challenge = format!(
                    r#"Bearer realm="http://127.0.0.1:{port}/token",service="e2e",scope="repository:app:pull""#
                );
                respond(
                    &stream,
                    "401 Unauthorized",
                    &[("WWW-Authenticate", challenge)],
                    b"{}",
                );
            } else if req.path == "/v2/app/manifests/v1" {
                respond(
                    &stream,
                    "200 OK",
                    &[(
                        "Content-Type",
                        "application/vnd.docker.distribution.manifest.v2+json".into(),
                    )],
                    &manifest,
                );
            } else if let Some(d) = req.path.strip_prefix("/v2/app/blobs/") {
                let to = format!("http://localhost:{port}/storage/{d}");
                respond(&stream, "307 Temporary Redirect", &[("Location", to)], b"");
            } else {
                respond(&stream, "404 Not Found", &[], b"{}");
            }
        }
    });
    (port, seen)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn image() -> (HashMap<String, Vec<u8>>, Vec<u8>) {
    let tar = RawTar::new().file("hello", 0o644, b"world").finish();
    let layer = gzip(&tar);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&tar).to_string()]}
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": Digest::of(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": Digest::of(&layer).to_string(), "size": layer.len()}]
    }))
    .unwrap();
    let blobs = HashMap::from([
        (Digest::of(&layer).to_string(), layer),
        (Digest::of(&config).to_string(), config),
    ]);
    (blobs, manifest)
}

fn store(root: &Path, port: u16) -> Store {
    Store::open(
        &root.join("images"),
        &root.join("layers"),
        StoreConfig {
            insecure_registries: vec![format!("127.0.0.1:{port}"), "localhost".into()],
            gc_threshold: None,
        },
    )
    .unwrap()
}

#[test]
fn bearer_token_and_cross_host_redirect() {
    test_support::require_root!();
    let (blobs, manifest) = image();
    let (port, seen) = serve(blobs, manifest);
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path(), port);
    let uri = format!("docker://127.0.0.1:{port}/app#v1");

    let creds = |p: &str| Credentials {
        username: "alice".into(),
        password: p.into(),
    };
    let err = s
        .resolve(&uri, &creds("wrong"), Path::new("/"))
        .unwrap_err();
    assert!(
        matches!(&err, RootfsError::Unauthorized { reason, .. } if reason.contains("refused")),
        "{err}"
    );

    let plan = s.resolve(&uri, &creds("pw"), Path::new("/")).unwrap();
    assert_eq!(
        std::fs::read(plan.lower_dirs[0].join("hello")).unwrap(),
        b"world"
    );
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|l| l.starts_with("/storage/") && l.ends_with(' ')),
        "blobs came from the redirect target, without credentials: {seen:#?}"
    );
    assert!(!seen.iter().any(|l| l.contains("pw")), "{seen:#?}");
}
