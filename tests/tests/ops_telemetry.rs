//! Operations: gardend's debug listener serves Prometheus metrics that move as containers come
//! and go, and Guardian's `/debug/vars`; `--log-format json` writes one JSON object per line
//! carrying the handle of the request it concerns.

use std::time::Duration;

use e2e::agent::http_get;
use e2e::{container_spec, sh_combined, Gardend};

/// The value of one series (`name{labels}`) in an exposition, if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn scrape(addr: &str) -> String {
    let (status, body) = http_get(addr, "/metrics").await.expect("scrape");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_containers_and_logs_are_json() {
    e2e::require_root!();
    let debug_port = e2e::free_port().to_string();
    let g = Gardend::start_with(&["--debug-bind-port", &debug_port, "--log-format", "json"]);
    let debug = format!("127.0.0.1:{debug_port}");
    let c = g.client();

    let before = scrape(&debug).await;
    assert_eq!(value(&before, "garden_containers"), Some(0.0), "{before}");
    assert!(value(&before, "process_resident_memory_bytes").unwrap_or(0.0) > 0.0);
    assert!(value(&before, "garden_network_pool_subnets").unwrap_or(0.0) >= 1.0);

    for h in ["tm-1", "tm-2"] {
        c.create(&container_spec(h)).await.expect("create");
    }
    // A plain create needs no firewall transaction; a container's first NetOut rule makes its
    // chain in one.
    c.net_out("tm-1", &e2e::net_out_to("10.8.8.8"))
        .await
        .expect("net_out");
    let (status, out) = sh_combined(&c, "tm-1", "echo hi").await;
    assert_eq!((status, out.as_str()), (0, "hi\n"));
    c.info("no-such-container")
        .await
        .expect_err("unknown handle");
    c.destroy("tm-2").await.expect("destroy");

    // Metrics of a request are recorded once it answered, and a destroyed container's address
    // returns to the pool once its reclamation (in the background) is done: scrape until both
    // show, then check everything on that scrape.
    let settled = |text: &str| {
        value(text, "garden_container_destroy_duration_seconds_count") == Some(1.0)
            && value(text, "garden_network_pool_addresses_in_use") == Some(1.0)
    };
    let mut after = scrape(&debug).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !settled(&after) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = scrape(&debug).await;
    }
    let get = |s: &str| value(&after, s);
    assert_eq!(get("garden_containers"), Some(1.0), "{after}");
    assert_eq!(
        get(r#"garden_api_requests_total{route="Create",status="200"}"#),
        Some(2.0)
    );
    assert_eq!(
        get("garden_container_create_duration_seconds_count"),
        Some(2.0)
    );
    assert_eq!(
        get("garden_container_destroy_duration_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        get("garden_process_start_duration_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        get(r#"garden_errors_total{kind="ContainerNotFoundError"}"#),
        Some(1.0)
    );
    let transactions = r#"garden_firewall_transactions_total{outcome="ok"}"#;
    assert!(
        get(transactions).unwrap_or(0.0) >= value(&before, transactions).unwrap_or(0.0) + 1.0,
        "{after}"
    );
    assert_eq!(get("garden_network_pool_addresses_in_use"), Some(1.0));

    // A long-running process shows in the processes gauge while it runs.
    let mut sleeper = c
        .run(
            "tm-1",
            &e2e::sh("sleep 30"),
            garden_client::ProcessIo::default(),
        )
        .await
        .expect("run sleep");
    let running = scrape(&debug).await;
    assert_eq!(value(&running, "garden_processes"), Some(1.0), "{running}");
    sleeper
        .control()
        .signal(garden_api::Signal::Kill)
        .await
        .expect("kill");
    let _ = tokio::time::timeout(Duration::from_secs(10), sleeper.wait()).await;

    let (status, vars) = http_get(&debug, "/debug/vars").await.expect("debug vars");
    assert_eq!(status, 200);
    let vars: serde_json::Value = serde_json::from_str(&vars).expect("vars are JSON");
    assert!(vars["numGoRoutines"].as_u64().unwrap_or(0) > 0, "{vars}");
    assert!(
        vars["memstats"]["Alloc"].as_u64().unwrap_or(0) > 0,
        "{vars}"
    );
    assert_eq!(vars["containers"], 1);
    let (status, _) = http_get(&debug, "/nope").await.expect("404");
    assert_eq!(status, 404);

    c.destroy("tm-1").await.expect("destroy");
    let log = g.log();
    let mut with_handle = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["span"]["handle"] == "tm-1" {
            with_handle += 1;
        }
    }
    assert!(with_handle > 0, "no event carries handle tm-1:\n{log}");
}
