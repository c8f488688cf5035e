//! The agent's `/metrics` (issue 18): instances per state, reserved memory and the
//! start-to-running histogram move when an app starts.

use std::time::Duration;

use e2e::agent::*;
use e2e::Gardend;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_metrics_follow_an_instance_from_start_to_running() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let nats = Nats::start();
    let bus = bus(&nats).await;
    let adverts = watch(&bus, "dea.advertise").await;
    let registers = watch(&bus, "router.register").await;
    let metrics_port = e2e::free_port();
    let agent = Agent::start(
        &gardend,
        &nats,
        &format!("metrics_port: {metrics_port}\nresources: {{memory_mb: 1024, disk_mb: 4096}}\n"),
    );
    let ad = adverts
        .wait_for(WAIT, |_| true)
        .await
        .unwrap_or_else(|| panic!("no advertisement; log:\n{}", agent.log()));
    let id = ad["id"].as_str().unwrap().to_string();
    let scrape = || async {
        http_get_ok(metrics_port, "/metrics")
            .await
            .expect("agent /metrics")
    };
    let before = scrape().await;
    assert_eq!(
        value(&before, r#"agent_memory_mb{kind="reserved"}"#),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        value(&before, r#"agent_memory_mb{kind="capacity"}"#),
        Some(1024.0)
    );

    let app = droplet(
        &[("index.html", "hi", 0o644)],
        "exec httpd -f -p $PORT -h .",
    );
    let sha = sha1_hex(&app);
    let files = FileServer::start(vec![("/d.tgz".into(), app)]).await;
    let start = json!({
        "droplet": "app-m", "name": "app-m", "stack": "busybox", "uris": ["m.example.com"],
        "prod": false, "sha1": sha, "executableUri": format!("{}/d.tgz", files.base),
        "version": "v1", "services": [], "limits": {"mem": 64, "disk": 256, "fds": 1024},
        "env": [], "cc_partition": "default", "health_check_timeout": 30, "index": 0
    });
    bus.publish(format!("dea.{id}.start"), &start).await;
    bus.flush().await;
    registers
        .wait_for(WAIT, |m| m["app"] == "app-m")
        .await
        .unwrap_or_else(|| panic!("never running; log:\n{}", agent.log()));

    let running = scrape().await;
    assert_eq!(
        value(&running, r#"agent_instances{state="RUNNING"}"#),
        Some(1.0),
        "{running}"
    );
    assert_eq!(
        value(&running, r#"agent_memory_mb{kind="reserved"}"#),
        Some(64.0)
    );
    assert_eq!(
        value(&running, "agent_instance_start_to_running_seconds_count"),
        Some(1.0)
    );
    assert!(running.ends_with("# EOF\n"));
}
