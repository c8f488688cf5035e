//! Staging end to end (spec §3.5-3.7, §5): `staging.<uuid>.start` and the `staging` queue
//! against a real nats-server, gardend and agent, with small shell buildpacks made here,
//! an app package, buildpack cache and upload endpoints served by a test HTTP server.

use std::io::{Read, Write};
use std::time::Duration;

use agent::bus::Bus;
use e2e::agent::*;
use e2e::Gardend;
use executor::testing::FileServer;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// A zip of `files` (path, contents); scripts under `bin/` are executable.
fn zip(files: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (path, data) in files {
        let mode = if path.contains("bin/") { 0o755 } else { 0o644 };
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(mode);
        w.start_file(*path, opts).unwrap();
        w.write_all(data.as_bytes()).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// A buildpack whose detect succeeds when the app has `marker`, printing `name`; compile runs
/// `compile` (sh text with $1 = app dir, $2 = cache dir); release names `web`.
fn buildpack(name: &str, marker: &str, compile: &str, web: &str) -> Vec<u8> {
    zip(&[
        (
            "bin/detect",
            &format!("#!/bin/sh\n[ -f \"$1/{marker}\" ] || exit 1\necho {name}\n"),
        ),
        ("bin/compile", &format!("#!/bin/sh\n{compile}\n")),
        (
            "bin/release",
            &format!(
                "#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n  web: %s\\n' '{web}'\n"
            ),
        ),
    ])
}

/// The static-site buildpack the tests stage with: serves the app dir with busybox httpd.
fn static_buildpack() -> Vec<u8> {
    buildpack(
        "Static",
        "index.html",
        "echo \"-----> Static buildpack compiling $1\"\necho compiled > \"$1/compiled.txt\"\necho warm >> \"$2/cache.txt\"",
        "httpd -f -p $PORT -h .",
    )
}

struct Fx {
    gardend: Gardend,
    nats: Nats,
    agent: Agent,
    bus: Bus,
    id: String,
    files: FileServer,
}

async fn setup(extra: &str) -> Fx {
    let gardend = Gardend::start();
    let nats = Nats::start();
    let bus = bus(&nats).await;
    let adverts = watch(&bus, "dea.advertise").await;
    let agent = Agent::start(&gardend, &nats, extra);
    let ad = adverts
        .wait_for(WAIT, |_| true)
        .await
        .unwrap_or_else(|| panic!("no advertisement; agent log:\n{}", agent.log()));
    let id = ad["id"].as_str().unwrap().to_string();
    let files = FileServer::start().await;
    files.put_bytes(
        "/app.zip",
        &zip(&[("index.html", "<h1>hello from a staged app</h1>\n")]),
    );
    files.put_bytes("/bp/static.zip", &static_buildpack());
    files.put_bytes(
        "/bp/other.zip",
        &buildpack("Other", "other.marker", "exit 0", "true"),
    );
    Fx {
        gardend,
        nats,
        agent,
        bus,
        id,
        files,
    }
}

/// The replies to one staging request.
struct Staging {
    replies: Watch,
}

impl Staging {
    async fn setup_reply(&self, fx: &Fx) -> Value {
        self.replies
            .wait_for(WAIT, |v| v.get("task_streaming_log_url").is_some())
            .await
            .unwrap_or_else(|| panic!("no setup reply; agent log:\n{}", fx.agent.log()))
    }

    /// The completion reply (the one with `app_id`, or a lone error).
    async fn completion(&self, fx: &Fx) -> Value {
        self.replies
            .wait_for(WAIT, |v| {
                v.get("task_streaming_log_url").is_none()
                    && (v.get("app_id").is_some() || !v["error"].is_null())
            })
            .await
            .unwrap_or_else(|| panic!("no completion reply; agent log:\n{}", fx.agent.log()))
    }
}

impl Fx {
    fn request(&self, task_id: &str, app_id: &str) -> Value {
        json!({
            "app_id": app_id,
            "task_id": task_id,
            "stack": "busybox",
            "download_uri": self.files.url("/app.zip"),
            "upload_uri": self.files.url(&format!("/droplets/{app_id}")),
            "buildpack_cache_download_uri": self.files.url(&format!("/cache/{app_id}.tgz")),
            "buildpack_cache_upload_uri": self.files.url(&format!("/cache-upload/{app_id}")),
            "properties": {"services": [], "environment": ["GREETING=hi there"],
                           "meta": {"command": null}},
            "admin_buildpacks": [
                {"key": "other-bp", "url": self.files.url("/bp/other.zip")},
                {"key": "static-bp", "url": self.files.url("/bp/static.zip")}
            ],
            "egress_network_rules": [],
            "memory_limit": 128,
            "disk_limit": 512
        })
    }

    async fn stage_on(&self, subject: &str, msg: &Value) -> Staging {
        let inbox = self.bus.client().new_inbox();
        let replies = watch(&self.bus, &inbox).await;
        self.bus
            .client()
            .publish_with_reply(
                subject.to_string(),
                inbox,
                serde_json::to_vec(msg).unwrap().into(),
            )
            .await
            .unwrap();
        self.bus.flush().await;
        Staging { replies }
    }

    async fn stage(&self, msg: &Value) -> Staging {
        self.stage_on(&format!("staging.{}.start", self.id), msg)
            .await
    }

    /// Garden containers of this agent's stagings.
    async fn staging_containers(&self) -> Vec<String> {
        self.gardend
            .client()
            .list(&[("agent:kind".to_string(), "staging".to_string())])
            .await
            .unwrap()
    }

    async fn assert_no_staging_containers(&self) {
        let gone = e2e::eventually(Duration::from_secs(20), || async {
            self.staging_containers().await.is_empty()
        })
        .await;
        assert!(
            gone,
            "staging containers left: {:?}",
            self.staging_containers().await
        );
    }

    /// Memory the agent advertises as available.
    async fn available_memory(&self) -> u64 {
        let ads = watch(&self.bus, "dea.advertise").await;
        let ad = ads.wait_for(WAIT, |_| true).await.unwrap();
        ad["available_memory"].as_u64().unwrap()
    }
}

/// The file part of a multipart/form-data body: (field name, file name, bytes).
fn multipart_file(body: &[u8]) -> (String, String, Vec<u8>) {
    let text = String::from_utf8_lossy(body);
    let boundary_line = text.lines().next().unwrap().trim().to_string();
    let head_end = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&body[..head_end]).to_string();
    let field = head
        .split("name=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let filename = head
        .split("filename=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let rest = &body[head_end + 4..];
    let end_marker = format!("\r\n{boundary_line}");
    let end = rest
        .windows(end_marker.len())
        .position(|w| w == end_marker.as_bytes())
        .unwrap();
    (field, filename, rest[..end].to_vec())
}

/// Paths and contents of a tgz.
fn untgz(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (p, data)
        })
        .collect()
}

fn file<'a>(entries: &'a [(String, Vec<u8>)], path: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|(p, _)| p.trim_start_matches("./") == path)
        .map(|(_, d)| std::str::from_utf8(d).unwrap())
}

/// GET a directory-server URL from the agent's port; the tail stream is read until `until`
/// shows up in the de-chunked body (or the stream ends). Returns (status, body).
async fn dir_get(port: u16, url: &str, until: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pq = url.split_once("://").unwrap().1;
    let pq = &pq[pq.find('/').unwrap()..];
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {pq} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 8192];
    loop {
        let n = match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(u) = until {
            if decode(&raw).1.contains(u) {
                break;
            }
        }
    }
    decode(&raw)
}

fn decode(raw: &[u8]) -> (u16, String) {
    let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, String::new());
    };
    let head = String::from_utf8_lossy(&raw[..i]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = &raw[i + 4..];
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, String::from_utf8_lossy(body).to_string());
    }
    let mut out = Vec::new();
    while let Some(j) = body.windows(2).position(|w| w == b"\r\n") {
        let Ok(len) = usize::from_str_radix(std::str::from_utf8(&body[..j]).unwrap_or("x"), 16)
        else {
            break;
        };
        let start = j + 2;
        let end = (start + len).min(body.len());
        out.extend_from_slice(&body[start..end]);
        if end < start + len || len == 0 {
            break;
        }
        body = &body[(end + 2).min(body.len())..];
    }
    (status, String::from_utf8_lossy(&out).to_string())
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    e2e::agent::http_get_ok(port, path).await
}

/// The happy path: detection among two admin buildpacks, compile with the cache, release;
/// two replies; the droplet (DEA layout) uploaded as multipart, its SHA1 in the reply; the
/// build cache uploaded; the log readable and tail-able through the signed URL while the
/// buildpack runs; admin buildpacks downloaded once and stale ones dropped; no container left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_an_app_with_the_detected_buildpack_and_uploads_the_droplet() {
    e2e::require_root!();
    let fx = setup("staging: {environment: {FROM_CONFIG: config-value}}\n").await;
    // The compile waits for a while so the log can be tailed while it runs, and a little
    // after its last line: the tail polls every 0.2 s, and a staging that ends sooner than
    // that destroys the container (and the tail) before the line is read. Clients complete
    // the log from the droplet's copy then (cellctl does); this test wants it from the tail.
    fx.files.put_bytes(
        "/bp/static.zip",
        &buildpack(
            "Static",
            "index.html",
            "echo \"-----> Static buildpack compiling in $1 (GREETING=$GREETING)\"\necho \"env: $FROM_CONFIG $MEMORY_LIMIT $STAGING_TIMEOUT $CF_STACK $(id -un)\"\necho compiled > \"$1/compiled.txt\"\necho warm >> \"$2/cache.txt\"\nsleep 4\necho COMPILE-DONE\nsleep 1",
            "httpd -f -p $PORT -h .",
        ),
    );
    let before = fx.available_memory().await;
    let s = fx.stage(&fx.request("task-1", "app-1")).await;
    let first = s.setup_reply(&fx).await;
    assert_eq!(first["task_id"], "task-1");
    assert!(first["error"].is_null(), "{first}");
    let url = first["task_streaming_log_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        url.contains("/staging_tasks/task-1/file_path?") && url.contains("hmac="),
        "{url}"
    );
    // Staging memory is reserved: the configured minimum (1024) beats the 128 asked for.
    assert!(
        fx.available_memory().await <= before - 1024,
        "staging memory not reserved"
    );
    // Tail from the start while the buildpack runs.
    let (status, tailed) = dir_get(
        fx.agent.dir_port,
        &format!("{url}&tail=true&tail_offset=0"),
        Some("COMPILE-DONE"),
    )
    .await;
    assert_eq!(status, 200, "{tailed}");
    assert!(
        tailed.contains("-----> Downloaded app package (")
            && tailed.contains(
                "-----> Static buildpack compiling in /tmp/staged/app (GREETING=hi there)"
            )
            && tailed.contains("env: config-value 1024m 900 busybox vcap")
            && tailed.contains("COMPILE-DONE"),
        "{tailed}"
    );

    let done = s.completion(&fx).await;
    assert!(done["error"].is_null(), "{done}\n{}", fx.agent.log());
    assert_eq!(done["task_id"], "task-1");
    assert_eq!(done["app_id"], "app-1");
    assert_eq!(done["detected_buildpack"], "Static");
    assert_eq!(done["buildpack_key"], "static-bp");
    assert_eq!(done["detected_start_command"], "httpd -f -p $PORT -h .");
    assert_eq!(done["procfile"], json!({"web": "httpd -f -p $PORT -h ."}));

    let uploads = fx.files.uploads();
    let droplet_up = uploads
        .iter()
        .find(|u| u.path == "/droplets/app-1")
        .expect("droplet uploaded");
    assert!(droplet_up
        .header("content-type")
        .unwrap()
        .starts_with("multipart/form-data; boundary="));
    let (field, filename, droplet) = multipart_file(&droplet_up.body);
    assert_eq!(
        (field.as_str(), filename.as_str()),
        ("upload[droplet]", "droplet.tgz")
    );
    assert_eq!(done["droplet_sha1"], sha1_hex(&droplet));
    let entries = untgz(&droplet);
    assert!(
        file(&entries, "app/index.html")
            .unwrap()
            .contains("hello from a staged app"),
        "{:?}",
        entries.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    assert_eq!(file(&entries, "app/compiled.txt"), Some("compiled\n"));
    for dir in ["logs", "tmp"] {
        assert!(
            entries
                .iter()
                .any(|(p, _)| p.trim_start_matches("./").trim_end_matches('/') == dir),
            "no {dir}/ in the droplet"
        );
    }
    let info: serde_json::Value = yaml_top_level(file(&entries, "staging_info.yml").unwrap());
    assert_eq!(info["detected_buildpack"], "Static");
    assert_eq!(info["start_command"], "httpd -f -p $PORT -h .");
    let log = file(&entries, "logs/staging_task.log").unwrap();
    assert!(log.contains("-----> Downloaded app package ("), "{log}");
    assert!(log.contains("COMPILE-DONE"), "{log}");

    let cache_up = uploads
        .iter()
        .find(|u| u.path == "/cache-upload/app-1")
        .expect("build cache uploaded");
    let (field, _, cache) = multipart_file(&cache_up.body);
    assert_eq!(field, "upload[droplet]");
    assert_eq!(file(&untgz(&cache), "cache.txt"), Some("warm\n"));
    // The buildpack's output and the upload line reached the agent's log.
    e2e::eventually(Duration::from_secs(5), || async {
        fx.agent.log().contains("-----> Uploading droplet (")
    })
    .await;
    let agent_log = fx.agent.log();
    assert!(
        agent_log.contains("Static buildpack compiling"),
        "{agent_log}"
    );
    assert!(
        agent_log.contains("-----> Uploading droplet ("),
        "{agent_log}"
    );
    // The URL is dead once the task is gone.
    assert_eq!(dir_get(fx.agent.dir_port, &url, None).await.0, 404);
    fx.assert_no_staging_containers().await;

    // Again with the cache from the first staging, and only the static buildpack offered:
    // the buildpack is not downloaded again, the other one is dropped from the host.
    let cache_tgz = cache.clone();
    fx.files.put_bytes("/cache/app-1.tgz", &cache_tgz);
    let mut msg = fx.request("task-2", "app-1");
    msg["admin_buildpacks"] = json!([{"key": "static-bp", "url": fx.files.url("/bp/static.zip")}]);
    let s = fx.stage(&msg).await;
    let done = s.completion(&fx).await;
    assert!(done["error"].is_null(), "{done}");
    assert_eq!(fx.files.requests("/bp/static.zip"), 1);
    assert_eq!(fx.files.requests("/bp/other.zip"), 1);
    let admin = fx.agent.base_dir.join("admin_buildpacks");
    assert!(admin.join("static-bp").is_dir());
    assert!(!admin.join("other-bp").exists(), "stale buildpack kept");
    let second = fx
        .files
        .uploads()
        .into_iter()
        .filter(|u| u.path == "/cache-upload/app-1")
        .nth(1)
        .expect("second cache upload");
    let (_, _, cache2) = multipart_file(&second.body);
    assert_eq!(file(&untgz(&cache2), "cache.txt"), Some("warm\nwarm\n"));
    fx.assert_no_staging_containers().await;
    assert!(
        fx.available_memory().await >= before,
        "reservation not released"
    );
}

fn yaml_top_level(s: &str) -> Value {
    // staging_info.yml is simple `key: value` YAML with one nested map.
    let mut v = json!({});
    for line in s.lines() {
        if line.starts_with(' ') {
            continue;
        }
        if let Some((k, val)) = line.split_once(':') {
            let val = val.trim().trim_matches('\'').trim_matches('"');
            v[k.trim()] = json!(val);
        }
    }
    v
}

/// A start message for `app` (index 0, one URI, 64 MB) whose droplet URI is `uri`.
fn start_message(app: &str, uri: &str) -> Value {
    json!({
        "droplet": app, "name": format!("{app}-name"), "stack": "busybox",
        "uris": [format!("{app}.cell.test")], "prod": false, "sha1": null,
        "executableUri": uri,
        "version": "v1", "services": [],
        "limits": {"mem": 64, "disk": 256, "fds": 1024},
        "env": [], "cc_partition": "default", "health_check_timeout": 30,
        "vcap_application": {}, "index": 0
    })
}

/// A staging request with a start message: the app starts here from the new droplet (from
/// the droplet cache: its `executableUri` answers 404) and answers HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_message_runs_the_staged_app_here() {
    e2e::require_root!();
    let fx = setup("").await;
    let registers = watch(&fx.bus, "router.register").await;
    let mut msg = fx.request("task-s", "app-s");
    msg["start_message"] = start_message("app-s", &fx.files.url("/no-such-droplet.tgz"));
    let s = fx.stage(&msg).await;
    let done = s.completion(&fx).await;
    assert!(done["error"].is_null(), "{done}");
    let reg = registers
        .wait_for(WAIT, |v| v["app"] == "app-s")
        .await
        .unwrap_or_else(|| panic!("staged app never routed; log:\n{}", fx.agent.log()));
    let port = reg["port"].as_u64().unwrap() as u16;
    let body = http_get(port, "/index.html").await;
    assert!(
        body.as_deref()
            .is_some_and(|b| b.contains("hello from a staged app")),
        "{body:?}"
    );
    assert_eq!(
        fx.files.requests("/no-such-droplet.tgz"),
        0,
        "droplet downloaded"
    );
    let found = fx
        .bus
        .gather::<_, Value>(
            "dea.find.droplet",
            &json!({"droplet": "app-s"}),
            Duration::from_millis(1000),
        )
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["state"], "RUNNING");
    fx.bus
        .publish("dea.stop", &json!({"droplet": "app-s"}))
        .await;
    fx.bus.flush().await;
    fx.assert_no_staging_containers().await;
    let gone = e2e::eventually(Duration::from_secs(20), || async {
        fx.gardend.client().list(&[]).await.unwrap().is_empty()
    })
    .await;
    assert!(gone, "containers left");
}

/// Detection that finds nothing, a compile that fails (its output in the log), a missing
/// app package, an unknown stack: each a completion reply with the DEA's error; nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_stagings_report_the_deas_errors() {
    e2e::require_root!();
    let fx = setup("").await;
    fx.files.put_bytes(
        "/plain.zip",
        &zip(&[("README", "no marker any buildpack knows\n")]),
    );
    fx.files.put_bytes(
        "/bp/broken.zip",
        &buildpack(
            "Broken",
            "index.html",
            "echo 'compile output before failing'\necho 'compile is failing now' >&2\nexit 3",
            "true",
        ),
    );

    // No buildpack detects the app.
    let mut msg = fx.request("t-detect", "app-f");
    msg["download_uri"] = json!(fx.files.url("/plain.zip"));
    let done = fx.stage(&msg).await.completion(&fx).await;
    assert_eq!(done["error"], "Script exited with status 1", "{done}");
    assert_eq!(
        done["error_info"],
        json!({"type": "NoAppDetectedError",
               "message": "An application could not be detected by any available buildpack"})
    );

    // The compile fails; its output went to the staging log (and so the agent's log).
    let mut msg = fx.request("t-compile", "app-f");
    msg["admin_buildpacks"] = json!([{"key": "broken", "url": fx.files.url("/bp/broken.zip")}]);
    let done = fx.stage(&msg).await.completion(&fx).await;
    assert_eq!(done["error"], "Script exited with status 1", "{done}");
    assert_eq!(done["error_info"]["type"], "BuildpackCompileFailed");
    let log = fx.agent.log();
    assert!(
        log.contains("compile output before failing") && log.contains("compile is failing now"),
        "{log}"
    );

    // The app package is not there.
    let mut msg = fx.request("t-404", "app-f");
    msg["download_uri"] = json!(fx.files.url("/missing.zip"));
    let s = fx.stage(&msg).await;
    let first = s.setup_reply(&fx).await;
    assert_eq!(first["error"], "Error downloading: HTTP status: 404");
    let done = s.completion(&fx).await;
    assert_eq!(done["error"], "Error downloading: HTTP status: 404");

    // A stack this agent does not have.
    let mut msg = fx.request("t-stack", "app-f");
    msg["stack"] = json!("cflinuxfs9");
    let done = fx.stage(&msg).await.completion(&fx).await;
    assert_eq!(
        done["error"],
        "Error staging: Stack cflinuxfs9 does not exist"
    );

    // An egress rule that makes no sense.
    let mut msg = fx.request("t-egress", "app-f");
    msg["egress_network_rules"] = json!([{"protocol": "tcp", "destination": "not-an-ip"}]);
    let done = fx.stage(&msg).await.completion(&fx).await;
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .starts_with("Error staging: invalid egress rule"),
        "{done}"
    );

    // A git buildpack on a stack without git.
    let mut msg = fx.request("t-git", "app-f");
    msg["properties"]["buildpack"] = json!("https://example.com/bp.git#v1");
    let done = fx.stage(&msg).await.completion(&fx).await;
    assert!(
        done["error"].as_str().unwrap().contains("has no git"),
        "{done}"
    );

    assert!(fx.files.uploads().is_empty(), "a failed staging uploaded");
    fx.assert_no_staging_containers().await;
}

/// A custom zip buildpack from `properties.buildpack`, `buildpack_key` skipping detection,
/// `meta.command` and a Procfile overriding the release's start command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_buildpacks_keys_procfiles_and_commands() {
    e2e::require_root!();
    let fx = setup("").await;
    fx.files.put_bytes(
        "/procfile-app.zip",
        &zip(&[
            ("index.html", "hi\n"),
            ("Procfile", "web: ./serve --port $PORT\nworker: ./work\n"),
        ]),
    );
    // A zip whose buildpack sits in one top directory (as GitHub serves them).
    fx.files.put_bytes(
        "/custom.zip",
        &zip(&[
            ("bp-main/bin/detect", "#!/bin/sh\necho Custom\n"),
            ("bp-main/bin/compile", "#!/bin/sh\necho custom compile\n"),
            (
                "bp-main/bin/release",
                "#!/bin/sh\nprintf -- '---\\ndefault_process_types:\\n  web: ./from-release\\n'\n",
            ),
        ]),
    );
    let mut msg = fx.request("t-custom", "app-c");
    msg["download_uri"] = json!(fx.files.url("/procfile-app.zip"));
    msg["properties"]["buildpack"] = json!(fx.files.url("/custom.zip"));
    let done = fx.stage(&msg).await.completion(&fx).await;
    assert!(done["error"].is_null(), "{done}");
    assert_eq!(done["detected_buildpack"], "Custom");
    assert!(done["buildpack_key"].is_null());
    assert_eq!(done["detected_start_command"], "./serve --port $PORT");
    assert_eq!(
        done["procfile"],
        json!({"web": "./serve --port $PORT", "worker": "./work"})
    );

    // buildpack_key picks "other" although the app only matches "static"; meta.command wins.
    let mut msg = fx.request("t-key", "app-c");
    msg["properties"]["buildpack_key"] = json!("other-bp");
    msg["properties"]["meta"]["command"] = json!("./my-own-start");
    let done = fx.stage(&msg).await.completion(&fx).await;
    assert!(done["error"].is_null(), "{done}");
    assert_eq!(done["buildpack_key"], "other-bp");
    assert_eq!(done["detected_buildpack"], "other-bp");
    assert_eq!(done["detected_start_command"], "./my-own-start");
    assert_eq!(fx.files.requests("/bp/static.zip"), 0, "detection ran");
    fx.assert_no_staging_containers().await;
}

/// `max_staging_duration` ends a buildpack that runs too long; `staging.stop` ends another;
/// both with their containers destroyed and their reservations released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_staging_stop_end_the_container() {
    e2e::require_root!();
    let fx = setup("staging: {max_staging_duration: 5}\n").await;
    fx.files.put_bytes(
        "/bp/slow.zip",
        &buildpack("Slow", "index.html", "echo SLOW-STARTED\nsleep 600", "true"),
    );
    let slow = json!([{"key": "slow", "url": fx.files.url("/bp/slow.zip")}]);

    let mut msg = fx.request("t-timeout", "app-t");
    msg["admin_buildpacks"] = slow.clone();
    let started = std::time::Instant::now();
    let done = fx.stage(&msg).await.completion(&fx).await;
    assert_eq!(done["error"], "Staging in container timed out", "{done}");
    assert!(started.elapsed() < Duration::from_secs(30));
    fx.assert_no_staging_containers().await;

    let mut msg = fx.request("t-stop", "app-stop");
    msg["admin_buildpacks"] = slow.clone();
    msg["egress_network_rules"] = json!([
        {"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "80,443"},
        {"protocol": "all", "destination": "192.168.0.1-192.168.0.9"}
    ]);
    let mut msg2 = fx.request("t-dstop", "app-dstop");
    msg2["admin_buildpacks"] = slow;
    // The stops arrive while the buildpacks run; another app's staging is not touched.
    let other = fx.stage(&fx.request("t-other", "app-other")).await;
    let s = fx.stage(&msg).await;
    let s2 = fx.stage(&msg2).await;
    s.setup_reply(&fx).await;
    s2.setup_reply(&fx).await;
    // Once by the timed-out staging, then by these two.
    assert!(
        e2e::eventually(Duration::from_secs(20), || async {
            fx.agent.log().matches("SLOW-STARTED").count() >= 3
        })
        .await
    );
    // The staging limits: the configured minima (above what the request asks), the
    // configured CPU shares and inode limit; no inbound port.
    let garden = fx.gardend.client();
    let handle = "staging-t-stop";
    let mem = garden.current_memory_limits(handle).await.unwrap();
    assert_eq!(mem.limit_in_bytes, 1024 << 20);
    let cpu = garden.current_cpu_limits(handle).await.unwrap();
    assert_eq!(cpu.weight.max(cpu.limit_in_shares), 512, "{cpu:?}");
    let disk = garden.current_disk_limits(handle).await.unwrap();
    assert_eq!((disk.byte_hard, disk.inode_hard), (2048 << 20, 200_000));
    let info = garden.info(handle).await.unwrap();
    assert!(
        info.mapped_ports.clone().unwrap_or_default().is_empty(),
        "{:?}",
        info.mapped_ports
    );
    let props = info.properties.clone().unwrap_or_default();
    assert_eq!(props.get("agent:kind").map(String::as_str), Some("staging"));
    fx.bus
        .publish("staging.stop", &json!({"app_id": "app-stop"}))
        .await;
    // A `dea.stop` of exactly {"droplet": id} stops that app's stagings too.
    fx.bus
        .publish("dea.stop", &json!({"droplet": "app-dstop"}))
        .await;
    fx.bus.flush().await;
    let done = s.completion(&fx).await;
    assert_eq!(done["error"], "Error staging: task stopped");
    let done = s2.completion(&fx).await;
    assert_eq!(done["error"], "Error staging: task stopped");
    let done = other.completion(&fx).await;
    assert!(done["error"].is_null(), "{done}");
    fx.assert_no_staging_containers().await;
}

/// Two stagings at once (one through the `staging` queue group) both succeed with their own
/// droplets; an upload endpoint that answers 500 once is retried; one that keeps answering 500
/// fails the staging with the DEA's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stagings_and_upload_retries() {
    e2e::require_root!();
    let fx = setup("").await;
    fx.files.put_bytes(
        "/app2.zip",
        &zip(&[("index.html", "<h1>the second app</h1>\n")]),
    );
    fx.files.fail_uploads(&[500]);
    let a = fx.stage(&fx.request("t-a", "app-a")).await;
    let mut msg = fx.request("t-b", "app-b");
    msg["download_uri"] = json!(fx.files.url("/app2.zip"));
    let b = fx.stage_on("staging", &msg).await;
    let (da, db) = (a.completion(&fx).await, b.completion(&fx).await);
    assert!(da["error"].is_null(), "{da}");
    assert!(db["error"].is_null(), "{db}");
    assert_ne!(da["droplet_sha1"], db["droplet_sha1"]);
    let ups = fx.files.uploads();
    let droplet_posts = ups
        .iter()
        .filter(|u| u.path.starts_with("/droplets/"))
        .count();
    assert_eq!(droplet_posts, 3, "one 500 and a retry: {ups:?}");
    for (app, d) in [("app-a", &da), ("app-b", &db)] {
        let last = ups
            .iter()
            .rfind(|u| u.path == format!("/droplets/{app}"))
            .unwrap();
        assert_eq!(d["droplet_sha1"], sha1_hex(&multipart_file(&last.body).2));
    }

    fx.files.fail_uploads(&[500, 500, 500]);
    let done = fx
        .stage(&fx.request("t-fail", "app-a"))
        .await
        .completion(&fx)
        .await;
    assert_eq!(
        done["error"],
        "Error uploading: (Upload failed - status 500)"
    );
    fx.assert_no_staging_containers().await;
}

/// What is refused before anything is reserved: no capacity (disk first), invalid JSON,
/// bad fields; the agent keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_and_bad_input() {
    e2e::require_root!();
    let fx = setup("resources: {memory_mb: 2048, disk_mb: 4096}\n").await;
    let mut msg = fx.request("t-mem", "app-r");
    msg["memory_limit"] = json!(4096);
    let s = fx.stage(&msg).await;
    let r = s.replies.wait_for(WAIT, |_| true).await.unwrap();
    assert_eq!(
        r,
        json!({"task_id": "t-mem", "error": "Not enough memory resources available", "error_info": null})
    );
    let mut msg = fx.request("t-disk", "app-r");
    msg["memory_limit"] = json!(4096);
    msg["disk_limit"] = json!(8192);
    let r = fx
        .stage(&msg)
        .await
        .replies
        .wait_for(WAIT, |_| true)
        .await
        .unwrap();
    assert_eq!(r["error"], "Not enough disk resources available");

    // Not JSON: dropped. Wrong types: answered with an error when the task id is readable.
    fx.stage_on(&format!("staging.{}.start", fx.id), &json!("not an object"))
        .await;
    let inbox = fx.bus.client().new_inbox();
    let replies = watch(&fx.bus, &inbox).await;
    fx.bus
        .client()
        .publish_with_reply(
            format!("staging.{}.start", fx.id),
            inbox,
            b"{not json".to_vec().into(),
        )
        .await
        .unwrap();
    let r = fx
        .stage(&json!({"task_id": "t-bad", "app_id": 7}))
        .await
        .replies
        .wait_for(WAIT, |_| true)
        .await
        .unwrap();
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid staging request"),
        "{r}"
    );
    let mut msg = fx.request("../../etc", "app-r");
    msg["download_uri"] = json!("file:///etc/passwd");
    let r = fx
        .stage(&msg)
        .await
        .replies
        .wait_for(WAIT, |_| true)
        .await
        .unwrap();
    assert!(r["error"].as_str().unwrap().contains("task_id"), "{r}");
    // `..` names the agent's base_dir from its staging dir (removed when a task ends).
    for id in ["..", "."] {
        let r = fx
            .stage(&fx.request(id, "app-r"))
            .await
            .replies
            .wait_for(WAIT, |_| true)
            .await
            .unwrap();
        assert!(
            r["error"].as_str().unwrap().contains("task_id"),
            "{id}: {r}"
        );
    }
    assert!(fx.agent.base_dir.join("db").is_dir(), "base_dir intact");

    // Still serving.
    let done = fx
        .stage(&fx.request("t-ok", "app-r"))
        .await
        .completion(&fx)
        .await;
    assert!(done["error"].is_null(), "{done}");
    assert!(replies.all().is_empty(), "invalid JSON answered");
    fx.assert_no_staging_containers().await;
}

/// A staging in flight is in the snapshot; after a SIGKILL the restarted agent destroys its
/// container and tells the waiting requester it failed. SIGTERM stops a staging cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_shutdown_fail_stagings_cleanly() {
    e2e::require_root!();
    let mut fx = setup("").await;
    fx.files.put_bytes(
        "/bp/slow.zip",
        &buildpack("Slow", "index.html", "echo SLOW-STARTED\nsleep 600", "true"),
    );
    let mut msg = fx.request("t-restart", "app-x");
    msg["admin_buildpacks"] = json!([{"key": "slow", "url": fx.files.url("/bp/slow.zip")}]);
    let s = fx.stage(&msg).await;
    s.setup_reply(&fx).await;
    let snapshot = fx.agent.base_dir.join("db/instances.json");
    let listed = e2e::eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&snapshot).is_ok_and(|t| t.contains("t-restart"))
    })
    .await;
    assert!(listed, "staging task not in the snapshot");
    assert_eq!(fx.staging_containers().await.len(), 1);
    fx.agent.kill();
    fx.agent.spawn();
    let done = s.completion(&fx).await;
    assert_eq!(
        done["error"],
        "Error staging: the agent restarted while staging"
    );
    fx.assert_no_staging_containers().await;

    // SIGTERM while staging: the requester hears `task stopped`, the agent exits cleanly.
    let adverts = watch(&fx.bus, "dea.advertise").await;
    let ad = adverts.wait_for(WAIT, |_| true).await.unwrap();
    fx.id = ad["id"].as_str().unwrap().to_string();
    let mut msg = fx.request("t-term", "app-x");
    msg["admin_buildpacks"] = json!([{"key": "slow", "url": fx.files.url("/bp/slow.zip")}]);
    let s = fx.stage(&msg).await;
    s.setup_reply(&fx).await;
    let status = fx.agent.terminate().expect("agent exited");
    assert!(status.success(), "{status:?}");
    let done = s.completion(&fx).await;
    assert_eq!(done["error"], "Error staging: task stopped");
    assert!(fx.staging_containers().await.is_empty());
    let _ = &fx.nats;
}

/// USR2 (evacuation) lets a staging in flight finish and upload, but its app is not started
/// here; then the agent exits cleanly with nothing left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuation_lets_a_staging_finish_without_starting_its_app() {
    e2e::require_root!();
    let mut fx = setup("").await;
    let registers = watch(&fx.bus, "router.register").await;
    fx.files.put_bytes(
        "/bp/static.zip",
        &buildpack(
            "Static",
            "index.html",
            "echo EVAC-COMPILE\nsleep 3",
            "httpd -f -p $PORT -h .",
        ),
    );
    let mut msg = fx.request("t-evac", "app-e");
    msg["start_message"] = start_message("app-e", &fx.files.url("/no-such-droplet.tgz"));
    let s = fx.stage(&msg).await;
    s.setup_reply(&fx).await;
    assert!(
        e2e::eventually(Duration::from_secs(20), || async {
            fx.agent.log().contains("EVAC-COMPILE")
        })
        .await
    );
    let status = fx
        .agent
        .signal_and_wait(libc::SIGUSR2, Duration::from_secs(60))
        .expect("agent exited");
    assert!(status.success(), "{status:?}");
    let done = s.completion(&fx).await;
    assert!(done["error"].is_null(), "{done}");
    assert!(fx
        .files
        .uploads()
        .iter()
        .any(|u| u.path == "/droplets/app-e"));
    assert!(
        registers.all().iter().all(|r| r["app"] != "app-e"),
        "the staged app was started while evacuating"
    );
    assert!(fx.gardend.client().list(&[]).await.unwrap().is_empty());
}

/// An agent with `staging.enabled: false` stays out of the `staging` queue group (another
/// agent on the bus takes every queued request) and refuses requests sent to it by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_does_not_stage_leaves_the_queue_to_others() {
    e2e::require_root!();
    let mut fx = setup("staging: {enabled: false}\n").await;
    let disabled = fx.id.clone();
    let adverts = watch(&fx.bus, "dea.advertise").await;
    let _stager = Agent::start_indexed(&fx.gardend, &fx.nats, 1, "");
    let ad = adverts
        .wait_for(WAIT, |a| a["id"] != disabled.as_str())
        .await
        .expect("second agent advertises");
    let stager = ad["id"].as_str().unwrap().to_string();

    let done = fx
        .stage(&fx.request("t-off", "app-q"))
        .await
        .completion(&fx)
        .await;
    assert_eq!(done["error"], "Staging is disabled");
    let mut queued = Vec::new();
    for i in 0..3 {
        let msg = fx.request(&format!("t-q{i}"), "app-q");
        queued.push(fx.stage_on("staging", &msg).await);
    }
    for s in &queued {
        let done = s.completion(&fx).await;
        assert!(done["error"].is_null(), "{done}");
    }
    fx.id = stager;
    fx.assert_no_staging_containers().await;
}
