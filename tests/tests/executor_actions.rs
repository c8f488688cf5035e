//! The executor's actions against a real gardend and a real HTTP server on 127.0.0.1:0:
//! every action's success and failure path, nested trees, timeouts that really kill the
//! process inside the container, download cache hits without a body, checksum mismatches and
//! hostile archives rejected by StreamIn.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use e2e::{run_output, sh, Gardend};
use executor::container::{AllocationRequest, Container, Executor, RunInfo};
use executor::log::{MemorySink, Stream};
use executor::testing::FileServer;
use executor::Action;
use sha2::Digest;

struct Cell {
    gardend: Gardend,
    exec: Arc<Executor>,
    sink: MemorySink,
    srv: FileServer,
    _cache: tempfile::TempDir,
}

impl Cell {
    async fn start() -> Cell {
        let e2e::ExecutorCell {
            gardend,
            exec,
            sink,
            cache_dir,
        } = e2e::start_executor(|cache, _| cache.backoff_base = Duration::from_millis(10));
        let srv = FileServer::start().await;
        Cell {
            gardend,
            exec,
            sink,
            srv,
            _cache: cache_dir,
        }
    }

    /// Run `script` (JSON or YAML) in a new container; the container is kept for inspection.
    async fn run(&self, guid: &str, script: &str) -> Container {
        e2e::run_action(&self.exec, &self.gardend, guid, script).await
    }

    /// `sh -c script` directly through Garden (not the executor); stdout.
    async fn sh(&self, guid: &str, script: &str) -> (i32, String) {
        e2e::sh_combined(&self.gardend.client(), guid, script).await
    }

    fn lines(&self) -> Vec<(Stream, String, String)> {
        self.sink.lines()
    }

    fn texts(&self) -> Vec<String> {
        self.sink.texts()
    }
}

#[track_caller]
fn ok(c: &Container) {
    assert!(
        !c.run_result.failed,
        "{} failed: {}",
        c.guid, c.run_result.failure_reason
    );
}

#[track_caller]
fn failed_with(c: &Container, reason: &str) {
    assert!(c.run_result.failed, "{} unexpectedly succeeded", c.guid);
    assert_eq!(c.run_result.failure_reason, reason);
}

fn tgz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        b.append_data(&mut h, name, *data).expect("tar entry");
    }
    gzip(&b.into_inner().expect("tar"))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

fn zip_archive(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data, mode) in entries {
        z.start_file(
            *name,
            zip::write::SimpleFileOptions::default().unix_permissions(*mode),
        )
        .expect("zip entry");
        z.write_all(data).expect("zip data");
    }
    z.finish().expect("zip").into_inner()
}

/// A tar whose single entry has a raw (unchecked) name, as an attacker would write it.
fn raw_tar(name: &str, data: &[u8], kind: tar::EntryType, link: &str) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

fn sha256(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_success_failure_env_user_and_logs() {
    e2e::require_root!();
    let cell = Cell::start().await;
    let c = cell
        .run(
            "run-ok",
            r#"{"run": {"path": "/bin/sh", "args": ["-c", "echo out-$GREETING; echo err-line >&2; id -un; pwd; printf no-newline"],
                 "user": "vcap", "dir": "/tmp", "env": [{"name": "GREETING", "value": "hi"}], "log_source": "APP/PROC/WEB",
                 "resource_limits": {"nofile": 77}}}"#,
        )
        .await;
    ok(&c);
    let lines = cell.lines();
    for want in ["out-hi", "vcap", "/tmp", "no-newline", "Exit status 0"] {
        assert!(
            lines.contains(&(Stream::Out, "APP/PROC/WEB".into(), want.into())),
            "missing {want}: {lines:#?}"
        );
    }
    assert!(lines.contains(&(Stream::Err, "APP/PROC/WEB".into(), "err-line".into())));

    let c = cell.run("run-nofile", r#"{"run": {"path": "/bin/sh", "args": ["-c", "ulimit -n"], "user": "root", "resource_limits": {"nofile": 77}}}"#).await;
    ok(&c);
    assert!(cell.texts().contains(&"77".to_string()));

    let c = cell
        .run(
            "run-fail",
            r#"{"run": {"path": "/bin/sh", "args": ["-c", "exit 7"], "user": "root"}}"#,
        )
        .await;
    failed_with(&c, "TEST: Exited with status 7");
    assert!(cell.texts().contains(&"Exit status 7".to_string()));

    let c = cell
        .run(
            "run-missing",
            r#"{"run": {"path": "/no/such/binary", "user": "root"}}"#,
        )
        .await;
    assert!(c.run_result.failed);
    assert!(
        c.run_result
            .failure_reason
            .starts_with("failed-creating-process: ")
            || c.run_result.failure_reason == "TEST: Exited with status 127",
        "{}",
        c.run_result.failure_reason
    );

    let c = cell.run("run-quiet", r#"{"run": {"path": "/bin/sh", "args": ["-c", "echo secret-output"], "user": "root", "suppress_log_output": true}}"#).await;
    ok(&c);
    assert!(!cell.texts().iter().any(|t| t.contains("secret-output")));
    for guid in [
        "run-ok",
        "run-nofile",
        "run-fail",
        "run-missing",
        "run-quiet",
    ] {
        cell.exec.delete(guid).await.expect("delete");
    }
    assert!(cell
        .gardend
        .client()
        .list(&[])
        .await
        .expect("list")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_sleeping_process_in_the_container() {
    e2e::require_root!();
    let cell = Cell::start().await;
    let c = cell
        .run("to", r#"{"timeout": {"timeout_ms": 500, "action": {"run": {"path": "/bin/sleep", "args": ["1001"], "user": "root"}}}}"#)
        .await;
    failed_with(&c, "exceeded 500ms timeout");
    let (_, ps) = cell.sh("to", "ps -o pid,args").await;
    assert!(
        !ps.contains("sleep 1001"),
        "sleep survived the timeout:\n{ps}"
    );
    assert!(
        cell.texts().contains(&"Exit status 143".to_string()),
        "{:#?}",
        cell.texts()
    );

    // A process that ignores SIGTERM is SIGKILLed after the grace period.
    let started = std::time::Instant::now();
    let c = cell
        .run(
            "stubborn",
            r#"{"timeout": {"timeout_ms": 300, "action": {"run": {"path": "/bin/sh", "args": ["-c", "trap '' TERM; exec sleep 1002"], "user": "root"}}}}"#,
        )
        .await;
    failed_with(&c, "exceeded 300ms timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "the grace period was skipped"
    );
    let (_, ps) = cell.sh("stubborn", "ps -o pid,args").await;
    assert!(!ps.contains("sleep 1002"), "sleep survived SIGKILL:\n{ps}");
    assert!(
        cell.texts()
            .iter()
            .any(|t| t.starts_with("Exit status 137 (exceeded 1s graceful shutdown interval)")),
        "{:#?}",
        cell.texts()
    );

    // Stopping a running container kills its process too.
    cell.exec
        .allocate(AllocationRequest {
            guid: "stopme".into(),
            ..Default::default()
        })
        .unwrap();
    let action =
        Action::from_json(r#"{"run": {"path": "/bin/sleep", "args": ["1003"], "user": "root"}}"#)
            .unwrap();
    cell.exec
        .run(
            "stopme",
            RunInfo {
                action: Some(action),
                ..Default::default()
            },
        )
        .unwrap();
    let client = cell.gardend.client();
    let seen = e2e::eventually(Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            run_output(&client, "stopme", &sh("ps -o args"), None)
                .await
                .map(|o| o.stdout_text().contains("sleep 1003"))
                .unwrap_or(false)
        }
    })
    .await;
    assert!(seen, "sleep never started");
    cell.exec.stop("stopme").unwrap();
    let c = cell.exec.wait_completed("stopme").await.unwrap();
    assert!(
        c.run_result.stopped && c.run_result.failed,
        "{:?}",
        c.run_result
    );
    assert_eq!(c.run_result.failure_reason, "cancelled");
    let (_, ps) = cell.sh("stopme", "ps -o args").await;
    assert!(!ps.contains("sleep 1003"), "{ps}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_trees_serial_parallel_codependent_try_emit_progress() {
    e2e::require_root!();
    let cell = Cell::start().await;
    let c = cell
        .run(
            "tree",
            r#"
serial:
  actions:
    - emit_progress:
        start_message: "Starting work"
        success_message: "Work done"
        failure_message_prefix: "Work failed"
        log_source: STG
        action:
          parallel:
            actions:
              - run: {path: /bin/sh, args: ["-c", "echo a > /tmp/a"], user: root}
              - run: {path: /bin/sh, args: ["-c", "echo b > /tmp/b"], user: root}
    - try:
        action:
          run: {path: /bin/false, user: root}
    - codependent:
        actions:
          - run: {path: /bin/sleep, args: ["1004"], user: root}
          - run: {path: /bin/sh, args: ["-c", "cat /tmp/a /tmp/b"], user: root, log_source: CAT}
"#,
        )
        .await;
    // codependent: the cat exiting (successfully) ends the group and cancels the sleep.
    failed_with(&c, "Codependent step exited");
    let lines = cell.lines();
    assert!(lines.contains(&(Stream::Out, "STG".into(), "Starting work".into())));
    assert!(lines.contains(&(Stream::Out, "STG".into(), "Work done".into())));
    assert!(lines.contains(&(Stream::Out, "CAT".into(), "a".into())));
    assert!(lines.contains(&(Stream::Out, "CAT".into(), "b".into())));
    let (_, ps) = cell.sh("tree", "ps -o args").await;
    assert!(!ps.contains("sleep 1004"), "{ps}");

    let c = cell
        .run(
            "tree-fail",
            r#"
serial:
  actions:
    - emit_progress:
        failure_message_prefix: "Setup failed"
        action:
          parallel:
            actions:
              - run: {path: /bin/sh, args: ["-c", "exit 3"], user: root, log_source: ONE}
              - run: {path: /bin/sh, args: ["-c", "sleep 0.2; exit 4"], user: root, log_source: TWO}
    - run: {path: /bin/sh, args: ["-c", "echo never > /tmp/never"], user: root}
"#,
        )
        .await;
    failed_with(&c, "ONE: Exited with status 3; TWO: Exited with status 4");
    assert!(
        cell.texts().iter().any(|t| t == "Setup failed"),
        "aggregates are not emittable: plain prefix"
    );
    let (status, _) = cell.sh("tree-fail", "test -e /tmp/never").await;
    assert_ne!(status, 0, "serial ran past the failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_tgz_zip_and_plain_files_with_cache_hits() {
    e2e::require_root!();
    let cell = Cell::start().await;
    let app = tgz(&[
        ("bin/hello.sh", b"#!/bin/sh\necho hello-from-tgz\n", 0o755),
        ("README", b"read me", 0o644),
    ]);
    cell.srv.put_bytes("/app.tgz", &app);
    cell.srv.put_bytes(
        "/data.zip",
        &zip_archive(&[
            ("conf/settings.txt", b"zipped=1", 0o600),
            ("run.sh", b"echo zip-run", 0o755),
        ]),
    );
    cell.srv.put_bytes("/tool", b"#!/bin/sh\necho plain-tool\n");
    let script = format!(
        r#"
serial:
  actions:
    - download: {{from: "{app}", to: /home/vcap/app, user: vcap, artifact: app, cache_key: app-v1, checksum_algorithm: sha256, checksum_value: "{sum}"}}
    - download: {{from: "{zip}", to: /tmp/zip, user: vcap, artifact: data}}
    - download: {{from: "{tool}", to: /usr/local/bin, user: root}}
    - run: {{path: /bin/sh, args: ["-c", "/home/vcap/app/bin/hello.sh; sh /tmp/zip/run.sh; tool; cat /tmp/zip/conf/settings.txt; echo; stat -c '%U %a' /home/vcap/app/bin/hello.sh /tmp/zip/conf/settings.txt"], user: vcap}}
"#,
        app = cell.srv.url("/app.tgz"),
        sum = sha256(&app),
        zip = cell.srv.url("/data.zip"),
        tool = cell.srv.url("/tool"),
    );
    let c = cell.run("dl", &script).await;
    ok(&c);
    let texts = cell.texts();
    for want in [
        "hello-from-tgz",
        "zip-run",
        "plain-tool",
        "zipped=1",
        "vcap 755",
        "vcap 600",
        "Downloading app...",
    ] {
        assert!(
            texts.contains(&want.to_string()),
            "missing {want:?} in {texts:#?}"
        );
    }
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("Downloaded app (") && t.ends_with(")")),
        "{texts:#?}"
    );
    assert_eq!(cell.srv.body_bytes("/app.tgz"), app.len() as u64);

    // Second container, same cache key: revalidated with a 304, no body transferred.
    let c = cell.run("dl2", &script).await;
    ok(&c);
    assert_eq!(cell.srv.requests("/app.tgz"), 2);
    assert_eq!(cell.srv.not_modified("/app.tgz"), 1);
    assert_eq!(
        cell.srv.body_bytes("/app.tgz"),
        app.len() as u64,
        "a cache hit must not transfer the body"
    );
    assert!(
        cell.texts().contains(&"Downloaded app".to_string()),
        "cache hit is logged without a size"
    );
    let (_, out) = cell.sh("dl2", "/home/vcap/app/bin/hello.sh").await;
    assert_eq!(out.trim(), "hello-from-tgz");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_failures_checksum_status_and_hostile_archives() {
    e2e::require_root!();
    let cell = Cell::start().await;
    let body = tgz(&[("payload", b"bytes", 0o644)]);
    cell.srv.put_bytes("/p.tgz", &body);
    let bad_sum = format!(
        r#"{{"download": {{"from": "{}", "to": "/tmp/p", "user": "root", "checksum_algorithm": "sha256", "checksum_value": "{}"}}}}"#,
        cell.srv.url("/p.tgz"),
        "0".repeat(64)
    );
    let c = cell.run("sum", &bad_sum).await;
    failed_with(
        &c,
        &format!("Downloading failed: Checksum failed: sha256 checksum mismatch: expected '{}', got '{}'", "0".repeat(64), sha256(&body)),
    );
    let (status, _) = cell.sh("sum", "test -e /tmp/p").await;
    assert_ne!(
        status, 0,
        "nothing may reach the container on a checksum mismatch"
    );

    let c = cell.run("404", &format!(r#"{{"download": {{"from": "{}", "to": "/tmp/x", "user": "root", "artifact": "gone"}}}}"#, cell.srv.url("/missing"))).await;
    failed_with(
        &c,
        "Downloading gone failed: Download failed: Status code 404",
    );
    assert!(cell.lines().contains(&(
        Stream::Err,
        "TEST".into(),
        "Downloading gone failed: Download failed: Status code 404".into()
    )));

    let escape = format!("escape-{}", std::process::id());
    let hostile = [
        (
            "dotdot",
            gzip(&raw_tar(
                &format!("../../../../../../tmp/{escape}"),
                b"pwned",
                tar::EntryType::Regular,
                "",
            )),
        ),
        (
            "absolute",
            raw_tar(
                &format!("/tmp/{escape}"),
                b"pwned",
                tar::EntryType::Regular,
                "",
            ),
        ),
        (
            "symlink",
            gzip(&raw_tar(
                "up",
                b"",
                tar::EntryType::Symlink,
                "../../../../../../../../etc",
            )),
        ),
    ];
    for (name, archive) in hostile {
        cell.srv.put_bytes(&format!("/{name}"), &archive);
        let script = format!(
            r#"{{"download": {{"from": "{}", "to": "/tmp/h", "user": "root"}}}}"#,
            cell.srv.url(&format!("/{name}"))
        );
        let c = cell.run(&format!("hostile-{name}"), &script).await;
        assert!(c.run_result.failed, "{name} archive was accepted");
        assert!(
            c.run_result
                .failure_reason
                .starts_with("Copying into the container failed: "),
            "{name}: {}",
            c.run_result.failure_reason
        );
        assert!(
            !std::path::Path::new(&format!("/tmp/{escape}")).exists(),
            "{name} escaped to the host"
        );
    }

    let c = cell.run("https", r#"{"download": {"from": "https://127.0.0.1:1/x.tgz", "to": "/tmp/x", "user": "root"}}"#).await;
    assert!(
        c.run_result
            .failure_reason
            .starts_with("Downloading failed: connecting to 127.0.0.1:1"),
        "{}",
        c.run_result.failure_reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_success_retry_and_failure() {
    e2e::require_root!();
    let cell = Cell::start().await;
    let script = format!(
        r#"
serial:
  actions:
    - run: {{path: /bin/sh, args: ["-c", "printf 'droplet-bytes' > /tmp/droplet"], user: vcap}}
    - upload: {{from: /tmp/droplet, to: "{}", user: vcap, artifact: droplet}}
"#,
        cell.srv.url("/droplets/abc?token=s3cret")
    );
    cell.srv.fail_uploads(&[503]);
    let c = cell.run("up", &script).await;
    ok(&c);
    let ups = cell.srv.uploads();
    assert_eq!(ups.len(), 2, "one retry after the 503");
    assert_eq!(ups[1].path, "/droplets/abc");
    assert_eq!(ups[1].body, b"droplet-bytes");
    assert_eq!(ups[1].header("content-length"), Some("13"));
    assert!(ups[1].header("content-md5").is_some());
    assert!(ups[1]
        .header("content-digest")
        .is_some_and(|d| d.starts_with("sha-256=:")));
    assert!(
        cell.texts().contains(&"Uploaded droplet (13B)".to_string()),
        "{:#?}",
        cell.texts()
    );

    cell.srv.fail_uploads(&[500, 500, 500]);
    let c = cell.run("up-fail", &script).await;
    failed_with(&c, "Upload failed: Status code 500");
    assert!(!cell.texts().iter().any(|t| t.contains("s3cret")));

    let c = cell
        .run(
            "up-missing",
            &format!(
                r#"{{"upload": {{"from": "/tmp/nope", "to": "{}", "user": "root"}}}}"#,
                cell.srv.url("/x")
            ),
        )
        .await;
    assert!(c.run_result.failed);
    let c = cell
        .run(
            "up-dir",
            &format!(
                r#"{{"upload": {{"from": "/tmp", "to": "{}", "user": "root"}}}}"#,
                cell.srv.url("/x")
            ),
        )
        .await;
    assert!(
        c.run_result
            .failure_reason
            .contains("is not a regular file"),
        "{}",
        c.run_result.failure_reason
    );
}
