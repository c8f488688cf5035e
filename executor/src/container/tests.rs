use std::time::Duration;

use super::*;
use crate::cache::CacheConfig;
use crate::garden::fake::{FakeGarden, Script};
use crate::log::MemorySink;

struct Fx {
    exec: Arc<Executor>,
    garden: FakeGarden,
    sink: MemorySink,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fx {
    let garden = FakeGarden::new();
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(DownloadCache::open(CacheConfig::new(dir.path())).unwrap());
    let sink = MemorySink::default();
    let mut config = ExecutorConfig {
        cell_id: "cell-1".into(),
        capacity: Resources {
            memory_mb: 1024,
            disk_mb: 2048,
            containers: 3,
        },
        container_properties: [("agent:base_dir".to_string(), "/var/agent".to_string())].into(),
        ..Default::default()
    };
    config.step.graceful_shutdown = Duration::from_millis(100);
    config.health.startup_interval = Duration::from_millis(20);
    config.health.liveness_interval = Duration::from_millis(50);
    let exec = Executor::new(
        Arc::new(garden.clone()),
        cache,
        Arc::new(sink.clone()),
        config,
    );
    Fx {
        exec,
        garden,
        sink,
        _dir: dir,
    }
}

fn alloc(guid: &str, memory_mb: u64) -> AllocationRequest {
    AllocationRequest {
        guid: guid.into(),
        memory_mb,
        disk_mb: 10,
        ..Default::default()
    }
}

fn run_action(path: &str) -> Action {
    Action::from_json(&format!(r#"{{"run":{{"path":"{path}","user":"root"}}}}"#)).unwrap()
}

#[tokio::test]
async fn allocation_accounts_for_resources() {
    let fx = fixture();
    fx.exec.allocate(alloc("a", 600)).unwrap();
    assert_eq!(
        fx.exec.remaining_resources(),
        Resources {
            memory_mb: 424,
            disk_mb: 2038,
            containers: 2
        }
    );
    assert_eq!(
        fx.exec.allocate(alloc("b", 600)),
        Err(ExecutorError::InsufficientResources)
    );
    assert_eq!(
        fx.exec.allocate(alloc("a", 1)),
        Err(ExecutorError::GuidNotAvailable("a".into()))
    );
    fx.exec.allocate(alloc("b", 100)).unwrap();
    fx.exec.allocate(alloc("c", 100)).unwrap();
    assert_eq!(
        fx.exec.allocate(alloc("d", 1)),
        Err(ExecutorError::InsufficientResources)
    );
    fx.exec.delete("a").await.unwrap();
    assert_eq!(fx.exec.remaining_resources().memory_mb, 824);
    assert_eq!(fx.exec.list().len(), 2);
}

#[tokio::test]
async fn task_runs_and_returns_its_result_file() {
    let fx = fixture();
    let mut events = fx.exec.subscribe();
    fx.garden.script(
        "/bin/task",
        Script {
            stdout: "working\n".into(),
            ..Default::default()
        },
    );
    fx.exec
        .allocate(AllocationRequest {
            guid: "t1".into(),
            memory_mb: 64,
            max_pids: 10,
            ..Default::default()
        })
        .unwrap();
    fx.garden
        .put_file("t1", "/tmp/result.json", b"{\"answer\":42}");
    let info = RunInfo {
        action: Some(run_action("/bin/task")),
        result_file: "/tmp/result.json".into(),
        env: vec![EnvironmentVariable {
            name: "K".into(),
            value: "v".into(),
        }],
        cpu_weight: 50,
        ..Default::default()
    };
    fx.exec.run("t1", info).unwrap();
    let c = fx.exec.wait_completed("t1").await.unwrap();
    assert_eq!(c.state, State::Completed);
    assert!(!c.run_result.failed, "{:?}", c.run_result);
    assert_eq!(c.result.as_deref(), Some("{\"answer\":42}"));
    let spec = fx.garden.container_spec("t1").unwrap();
    assert_eq!(spec.env, vec!["K=v"]);
    assert_eq!(spec.limits.memory_limits.limit_in_bytes, 64 << 20);
    assert_eq!(spec.limits.pid_limits.max, 10);
    assert_eq!(spec.limits.cpu_limits.weight, 512);
    assert_eq!(spec.properties["agent:base_dir"], "/var/agent");
    assert_eq!(spec.properties["executor:owner"], "cell-1");
    let texts = fx.sink.texts();
    assert!(texts.contains(&"Cell cell-1 creating container for instance t1".to_string()));
    assert!(texts.contains(&"working".to_string()));
    let kinds: Vec<String> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| {
            serde_json::to_value(&e).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            "container_reserved",
            "container_running",
            "container_complete"
        ]
    );
    fx.exec.delete("t1").await.unwrap();
    assert!(fx.garden.containers().is_empty());
}

#[tokio::test]
async fn failures_and_missing_result() {
    let fx = fixture();
    fx.garden.script("/bin/false", Script::exit(1));
    fx.exec.allocate(alloc("f", 1)).unwrap();
    fx.exec
        .run(
            "f",
            RunInfo {
                action: Some(run_action("/bin/false")),
                ..Default::default()
            },
        )
        .unwrap();
    let c = fx.exec.wait_completed("f").await.unwrap();
    assert_eq!(c.run_result.failure_reason, "LOG: Exited with status 1");
    assert!(c.run_result.failed && !c.run_result.stopped);

    fx.exec.allocate(alloc("r", 1)).unwrap();
    let info = RunInfo {
        action: Some(run_action("/bin/true")),
        result_file: "/nope".into(),
        ..Default::default()
    };
    fx.exec.run("r", info).unwrap();
    let c = fx.exec.wait_completed("r").await.unwrap();
    assert_eq!(c.run_result.failure_reason, "failed to fetch result");

    // Creation failure is retryable.
    fx.garden
        .create(&ContainerSpec {
            handle: "dup".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    fx.exec.allocate(alloc("dup", 1)).unwrap();
    fx.exec
        .run(
            "dup",
            RunInfo {
                action: Some(run_action("/bin/true")),
                ..Default::default()
            },
        )
        .unwrap();
    let c = fx.exec.wait_completed("dup").await.unwrap();
    assert!(c.run_result.retryable);
    assert!(
        c.run_result
            .failure_reason
            .starts_with("failed to create container: "),
        "{}",
        c.run_result.failure_reason
    );

    assert!(matches!(
        fx.exec.run("f", RunInfo::default()),
        Err(ExecutorError::InvalidRunInfo(_))
    ));
}

#[tokio::test]
async fn lrp_with_monitor_runs_until_stopped() {
    let fx = fixture();
    fx.garden
        .script("/bin/server", Script::sleep(Duration::from_secs(60)));
    fx.garden.script("/bin/check", Script::exit(0));
    fx.exec.allocate(alloc("lrp", 1)).unwrap();
    let mut events = fx.exec.subscribe();
    let info = RunInfo {
        action: Some(run_action("/bin/server")),
        monitor: Some(run_action("/bin/check")),
        start_timeout_ms: 1000,
        ..Default::default()
    };
    fx.exec.run("lrp", info).unwrap();
    let running = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::ContainerRunning(c)) = events.recv().await {
                return c;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(running.state, State::Running);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fx.exec.get("lrp").unwrap().state, State::Running);
    fx.exec.stop("lrp").unwrap();
    let c = fx.exec.wait_completed("lrp").await.unwrap();
    assert!(c.run_result.stopped);
    assert!(fx
        .sink
        .texts()
        .contains(&"Container became healthy".to_string()));
}

#[tokio::test]
async fn lrp_that_never_becomes_healthy_fails() {
    let fx = fixture();
    fx.garden
        .script("/bin/server", Script::sleep(Duration::from_secs(60)));
    fx.garden.script(
        "/bin/check",
        Script {
            stdout: "port 8080 closed\n".into(),
            exit: 1,
            ..Default::default()
        },
    );
    fx.exec.allocate(alloc("sick", 1)).unwrap();
    let info = RunInfo {
        action: Some(run_action("/bin/server")),
        monitor: Some(run_action("/bin/check")),
        start_timeout_ms: 100,
        ..Default::default()
    };
    fx.exec.run("sick", info).unwrap();
    let c = fx.exec.wait_completed("sick").await.unwrap();
    assert!(
        c.run_result
            .failure_reason
            .starts_with("Instance never healthy after "),
        "{}",
        c.run_result.failure_reason
    );
    assert!(
        c.run_result.failure_reason.ends_with(": port 8080 closed"),
        "{}",
        c.run_result.failure_reason
    );
}

#[tokio::test]
async fn stop_before_running() {
    let fx = fixture();
    fx.exec.allocate(alloc("s", 1)).unwrap();
    fx.exec.stop("s").unwrap();
    let c = fx.exec.get("s").unwrap();
    assert_eq!(
        (
            c.state,
            c.run_result.failure_reason.as_str(),
            c.run_result.stopped
        ),
        (State::Completed, "stopped-before-running", true)
    );
}

#[test]
fn long_failure_reasons_lose_their_middle() {
    let s = "a".repeat(6000) + &"b".repeat(6000);
    let t = truncate_middle(&s);
    assert!(t.len() <= MAX_FAILURE_REASON);
    assert!(t.starts_with("aaa") && t.ends_with("bbb") && t.contains("\n... (truncated)\n"));
}

#[tokio::test]
async fn perform_in_runs_an_action_in_a_caller_owned_container() {
    let fx = fixture();
    let handle = fx
        .garden
        .create(&garden_api::ContainerSpec {
            handle: "mine".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    fx.garden.script("/bin/false", Script::exit(3));
    let log = LogConfig {
        guid: "g".into(),
        ..Default::default()
    };
    fx.exec
        .perform_in(
            &handle,
            &run_action("/bin/true"),
            &log,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    let err = fx
        .exec
        .perform_in(
            &handle,
            &run_action("/bin/false"),
            &log,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Exited with status 3"), "{err}");
    assert!(fx.exec.list().is_empty(), "no executor container was made");
    assert_eq!(fx.garden.containers(), vec!["mine".to_string()]);
    let bad = Action::Run(Default::default());
    assert!(fx
        .exec
        .perform_in(&handle, &bad, &log, CancellationToken::new())
        .await
        .is_err());
}
