//! The executor's container lifecycle against a real gardend: LRPs with declarative TCP/HTTP
//! health checks and a legacy monitor (pass, never healthy, becomes unhealthy), a Task with a
//! result file, and the `executor` CLI (run, validate) with the shipped examples.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use e2e::{run_output, sh, Gardend};
use executor::container::{AllocationRequest, Container, Event, Executor, RunInfo, State};
use executor::health::{Check, CheckDefinition, HttpCheck, TcpCheck};
use executor::log::{LogConfig, MemorySink, Stream};
use executor::Action;

struct Cell {
    gardend: Gardend,
    exec: Arc<Executor>,
    sink: MemorySink,
    _cache: tempfile::TempDir,
}

impl Cell {
    fn start() -> Cell {
        let e2e::ExecutorCell {
            gardend,
            exec,
            sink,
            cache_dir,
        } = e2e::start_executor(|_, config| {
            config.health.startup_interval = Duration::from_millis(200);
            config.health.liveness_interval = Duration::from_millis(300);
        });
        Cell {
            gardend,
            exec,
            sink,
            _cache: cache_dir,
        }
    }

    fn start_lrp(
        &self,
        guid: &str,
        action: &str,
        checks: Option<CheckDefinition>,
        monitor: Option<&str>,
        start_timeout_ms: u64,
    ) {
        self.exec
            .allocate(AllocationRequest {
                guid: guid.into(),
                memory_mb: 64,
                ..Default::default()
            })
            .expect("allocate");
        let info = RunInfo {
            action: Some(Action::from_yaml(action).expect("action")),
            check_definition: checks,
            monitor: monitor.map(|m| Action::from_yaml(m).expect("monitor")),
            start_timeout_ms,
            log_config: LogConfig {
                guid: guid.into(),
                index: 0,
                source_name: "CELL".into(),
            },
            ..Default::default()
        };
        self.exec.run(guid, info).expect("run");
    }

    async fn wait_state(&self, guid: &str, state: State) -> Container {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.exec.get(guid).expect("get");
            if c.state == state {
                return c;
            }
            assert!(
                c.state != State::Completed,
                "{guid} completed instead of reaching {state:?}: {:?}",
                c.run_result
            );
            assert!(
                std::time::Instant::now() < deadline,
                "{guid} stuck in {:?}; gardend log:\n{}",
                c.state,
                self.gardend.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn completed(&self, guid: &str) -> Container {
        tokio::time::timeout(Duration::from_secs(60), self.exec.wait_completed(guid))
            .await
            .expect("completion")
            .expect("get")
    }

    fn texts(&self) -> Vec<String> {
        self.sink.texts()
    }
}

const HTTPD: &str = r#"{"run": {"path": "/bin/sh", "args": ["-c", "mkdir -p /tmp/www && echo ok > /tmp/www/health && exec httpd -f -p 8080 -h /tmp/www"], "user": "root", "log_source": "APP/PROC/WEB"}}"#;

fn tcp(port: u32) -> Check {
    Check {
        tcp_check: Some(TcpCheck {
            port,
            connect_timeout_ms: 1000,
            interval_ms: 0,
        }),
        http_check: None,
    }
}

fn http(port: u32, path: &str) -> Check {
    Check {
        tcp_check: None,
        http_check: Some(HttpCheck {
            port,
            path: path.into(),
            request_timeout_ms: 1000,
            interval_ms: 0,
        }),
    }
}

fn checks(list: Vec<Check>) -> Option<CheckDefinition> {
    Some(CheckDefinition {
        checks: list,
        readiness_checks: vec![],
        log_source: String::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lrp_becomes_healthy_with_tcp_and_http_checks_and_stops() {
    e2e::require_root!();
    let cell = Cell::start();
    let mut events = cell.exec.subscribe();
    cell.start_lrp(
        "web",
        HTTPD,
        checks(vec![tcp(8080), http(8080, "/health")]),
        None,
        20_000,
    );
    let running = cell.wait_state("web", State::Running).await;
    assert!(!running.run_result.failed);
    let texts = cell.texts();
    assert!(
        texts.contains(&"Starting health monitoring of container".to_string()),
        "{texts:#?}"
    );
    assert!(
        texts.contains(&"Container became healthy".to_string()),
        "{texts:#?}"
    );
    // It stays running across several liveness rounds.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(cell.exec.get("web").unwrap().state, State::Running);

    cell.exec.stop("web").unwrap();
    let c = cell.completed("web").await;
    assert!(c.run_result.stopped, "{:?}", c.run_result);
    let (_, ps) = run_output(&cell.gardend.client(), "web", &sh("ps -o args"), None)
        .await
        .map(|o| (o.status, o.stdout_text()))
        .expect("ps");
    assert!(!ps.contains("httpd -f"), "httpd survived the stop:\n{ps}");
    let kinds: Vec<&'static str> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| match e {
            Event::ContainerReserved(_) => "reserved",
            Event::ContainerRunning(_) => "running",
            Event::ContainerComplete(_) => "complete",
        })
        .collect();
    assert_eq!(kinds, vec!["reserved", "running", "complete"]);
    cell.exec.delete("web").await.expect("delete");
    assert!(cell
        .gardend
        .client()
        .list(&[])
        .await
        .expect("list")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lrp_never_healthy_fails_with_the_check_message() {
    e2e::require_root!();
    let cell = Cell::start();
    cell.start_lrp("tcp-sick", HTTPD, checks(vec![tcp(8081)]), None, 1500);
    let c = cell.completed("tcp-sick").await;
    let reason = &c.run_result.failure_reason;
    assert!(c.run_result.failed);
    assert!(
        reason.starts_with("Instance never healthy after "),
        "{reason}"
    );
    assert!(
        reason.contains(": failed to make TCP connection to 127.0.0.1:8081: "),
        "{reason}"
    );
    assert!(cell
        .texts()
        .iter()
        .any(|t| t.ends_with(": startup health check never passed.")));
    assert!(cell
        .sink
        .lines()
        .iter()
        .any(|(s, src, _)| *s == Stream::Err && src == "HEALTH"));

    cell.start_lrp(
        "http-404",
        HTTPD,
        checks(vec![http(8080, "/missing")]),
        None,
        1500,
    );
    let c = cell.completed("http-404").await;
    let reason = &c.run_result.failure_reason;
    assert!(
        reason.contains(
            "failed to make HTTP request to '/missing' on port 8080: received status code 404 in "
        ),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lrp_that_becomes_unhealthy_crashes() {
    e2e::require_root!();
    let cell = Cell::start();
    let daemon = r#"{"run": {"path": "/bin/sh", "args": ["-c", "mkdir -p /tmp/www && httpd -p 8080 -h /tmp/www && exec sleep 1006"], "user": "root"}}"#;
    let monitor = r#"{"run": {"path": "/bin/sh", "args": ["-c", "nc -w 1 127.0.0.1 8080 -e true </dev/null || { echo port 8080 is closed; exit 1; }"], "user": "root"}}"#;
    cell.start_lrp("flaky", daemon, None, Some(monitor), 10_000);
    cell.wait_state("flaky", State::Running).await;
    let out = run_output(&cell.gardend.client(), "flaky", &sh("killall httpd"), None)
        .await
        .expect("killall");
    assert_eq!(out.status, 0, "{}", out.stderr_text());
    let c = cell.completed("flaky").await;
    // The monitor's whole output (nc's complaint and the script's, in either order) becomes
    // the message.
    let reason = &c.run_result.failure_reason;
    assert!(
        reason.starts_with("Instance became unhealthy: ") && reason.contains("port 8080 is closed"),
        "{reason}"
    );
    assert!(cell
        .texts()
        .contains(&"Container became unhealthy".to_string()));
    let (_, ps) = run_output(&cell.gardend.client(), "flaky", &sh("ps -o args"), None)
        .await
        .map(|o| (o.status, o.stdout_text()))
        .expect("ps");
    assert!(
        !ps.contains("sleep 1006"),
        "the crashed instance's action was not stopped:\n{ps}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_returns_its_result_file() {
    e2e::require_root!();
    let cell = Cell::start();
    cell.exec
        .allocate(AllocationRequest {
            guid: "task".into(),
            ..Default::default()
        })
        .unwrap();
    let info = RunInfo {
        setup: Some(Action::from_json(r#"{"run": {"path": "/bin/mkdir", "args": ["-p", "/tmp/out"], "user": "root"}}"#).unwrap()),
        action: Some(Action::from_json(r#"{"run": {"path": "/bin/sh", "args": ["-c", "echo '{\"staged\":true}' > /tmp/out/result.json"], "user": "root"}}"#).unwrap()),
        result_file: "/tmp/out/result.json".into(),
        ..Default::default()
    };
    cell.exec.run("task", info).unwrap();
    let c = cell.completed("task").await;
    assert!(!c.run_result.failed, "{:?}", c.run_result);
    assert_eq!(c.result.as_deref(), Some("{\"staged\":true}\n"));

    cell.exec
        .allocate(AllocationRequest {
            guid: "big".into(),
            ..Default::default()
        })
        .unwrap();
    let info = RunInfo {
        action: Some(Action::from_json(r#"{"run": {"path": "/bin/sh", "args": ["-c", "head -c 60000 /dev/zero > /tmp/big"], "user": "root"}}"#).unwrap()),
        result_file: "/tmp/big".into(),
        ..Default::default()
    };
    cell.exec.run("big", info).unwrap();
    let c = cell.completed("big").await;
    assert_eq!(c.run_result.failure_reason, "failed to fetch result");
}

fn examples_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../executor/examples")
}

#[test]
fn cli_validate_reports_the_bad_path() {
    let bin = e2e::binary("executor");
    for ex in [
        "fetch-and-run.yaml",
        "upload-result.yaml",
        "parallel-with-timeout.yaml",
    ] {
        let out = Command::new(&bin)
            .arg("validate")
            .arg(examples_dir().join(ex))
            .output()
            .expect("run executor");
        assert!(
            out.status.success(),
            "{ex}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "serial:\n  actions:\n    - run: {path: /bin/true, user: root}\n    - run: {user: root}\n",
    )
    .unwrap();
    let out = Command::new(&bin)
        .arg("validate")
        .arg(&bad)
        .output()
        .expect("run executor");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("serial.actions[1].run.path: required"),
        "{err}"
    );
}

#[test]
fn cli_runs_a_script_with_tagged_logs_and_exit_codes() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let bin = e2e::binary("executor");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("s.yaml");
    std::fs::write(
        &script,
        "serial:\n  actions:\n    - run: {path: /bin/sh, args: [-c, 'echo hello $WHO'], user: root, log_source: APP}\n",
    )
    .unwrap();
    let out = Command::new(&bin)
        .args([
            "run",
            script.to_str().unwrap(),
            "--garden",
            &gardend.address(),
            "--env",
            "WHO=world",
        ])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .output()
        .expect("run executor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[APP/0] hello world"), "{stdout}");
    assert!(
        stdout.contains(r#"{"failed":false,"failure_reason":"""#),
        "{stdout}"
    );

    let example = examples_dir().join("parallel-with-timeout.yaml");
    let out = Command::new(&bin)
        .args([
            "run",
            example.to_str().unwrap(),
            "--garden",
            &gardend.address(),
            "--grace",
            "1",
        ])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .output()
        .expect("run executor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("exceeded 2s timeout"), "{stdout}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let handles = rt.block_on(gardend.client().list(&[])).expect("list");
    assert!(
        handles.is_empty(),
        "the CLI left containers behind: {handles:?}"
    );
}

/// `executor serve`: allocate, run, poll, event stream and delete over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_drives_a_container_end_to_end() {
    e2e::require_root!();
    use executor::http::{request, Body, Url};

    let gardend = Gardend::start();
    let port = e2e::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(e2e::binary("executor"))
        .args([
            "serve",
            "--garden",
            &gardend.address(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--memory-mb",
            "512",
        ])
        .arg("--cache-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn executor serve");
    let up = e2e::eventually(Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "executor serve did not listen");

    async fn call(port: u16, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let url = Url::parse(&format!("http://127.0.0.1:{port}{path}")).unwrap();
        let b = (!body.is_empty()).then(|| Body {
            len: body.len() as u64,
            reader: Box::new(std::io::Cursor::new(body.as_bytes().to_vec())),
        });
        let r = request(method, &url, &[], b).await.expect("api request");
        let status = r.status;
        let mut out = Vec::new();
        r.read_body(|c| {
            out.extend_from_slice(c);
            Ok(())
        })
        .await
        .expect("api body");
        (
            status,
            serde_json::from_slice(&out).unwrap_or(serde_json::Value::Null),
        )
    }

    // Events arrive as NDJSON in a chunked body that never ends while the executor runs.
    let events_url = Url::parse(&format!("http://127.0.0.1:{port}/v1/events")).unwrap();
    let mut events = request("GET", &events_url, &[], None).await.unwrap();
    assert_eq!(events.header("content-type"), Some("application/x-ndjson"));
    let mut pending: Vec<u8> = Vec::new();

    let (s, _) = call(
        port,
        "POST",
        "/v1/containers",
        r#"{"guid":"api-1","memory_mb":600}"#,
    )
    .await;
    assert_eq!(s, 503, "over capacity");
    let (s, c) = call(
        port,
        "POST",
        "/v1/containers",
        r#"{"guid":"api-1","memory_mb":256}"#,
    )
    .await;
    assert_eq!((s, c["state"].as_str()), (201, Some("reserved")));
    let run = r#"{"action":{"run":{"path":"/bin/sh","args":["-c","echo 42 > /tmp/answer"],"user":"root"}},"result_file":"/tmp/answer"}"#;
    let (s, _) = call(port, "POST", "/v1/containers/api-1/run", run).await;
    assert_eq!(s, 202);
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("container_complete") {
        if let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let v: serde_json::Value = serde_json::from_slice(&line).expect("event json");
            kinds.push(v["type"].as_str().unwrap().to_string());
            continue;
        }
        let piece = tokio::time::timeout(Duration::from_secs(30), events.chunk())
            .await
            .expect("event")
            .unwrap()
            .expect("event stream ended");
        pending.extend_from_slice(&piece);
    }
    assert_eq!(
        kinds,
        vec![
            "container_reserved",
            "container_running",
            "container_complete"
        ]
    );
    let (s, c) = call(port, "GET", "/v1/containers/api-1", "").await;
    assert_eq!(s, 200);
    assert_eq!(c["run_result"]["failed"], false, "{c}");
    assert_eq!(c["result"], "42\n");
    assert_eq!(
        gardend.client().list(&[]).await.unwrap(),
        vec!["api-1".to_string()]
    );
    let (s, _) = call(port, "DELETE", "/v1/containers/api-1", "").await;
    assert_eq!(s, 204);
    assert!(gardend.client().list(&[]).await.unwrap().is_empty());
    let (s, _) = call(port, "GET", "/v1/containers/api-1", "").await;
    assert_eq!(s, 404);
    let _ = child.kill();
    let _ = child.wait();
}
