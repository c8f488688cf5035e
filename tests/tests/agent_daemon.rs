//! The agent daemon end to end: configuration errors, advertisement, `dea.locate`, NATS
//! restarts, and a clean SIGTERM shutdown (spec §3.1, §3.3, §8).

use std::time::Duration;

use e2e::agent::*;
use e2e::Gardend;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn config_errors_exit_2_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let good = agent_config(&base, &["nats://127.0.0.1:1".into()], "127.0.0.1:1", 1);
    for (extra, key) in [
        ("resources: {memory_mb: lots}\n", "resources.memory_mb"),
        ("colour: blue\n", "colour"),
        (
            "instance: {memory_to_cpu_share_ratio: 0}\n",
            "instance.memory_to_cpu_share_ratio",
        ),
    ] {
        let path = tmp.path().join("agent.yml");
        std::fs::write(&path, format!("{good}{extra}")).unwrap();
        let out = std::process::Command::new(e2e::binary("agent"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra}: {stderr}");
        assert!(stderr.contains(key), "{extra}: {stderr}");
    }
    let out = std::process::Command::new(e2e::binary("agent"))
        .arg("--config")
        .arg(tmp.path().join("missing.yml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!base.exists(), "nothing is created for a bad config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertises_answers_locate_and_says_goodbye_on_sigterm() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let nats = Nats::start();
    let bus = bus(&nats).await;
    let adverts = watch(&bus, "dea.advertise").await;
    let goodbyes = watch(&bus, "dea.shutdown").await;
    let mut agent = Agent::start(
        &gardend,
        &nats,
        "resources: {memory_mb: 4096, memory_overcommit_factor: 2, disk_mb: 10000}\nplacement_properties: {zone: z9}\n",
    );
    let ad = adverts
        .wait_for(WAIT, |_| true)
        .await
        .unwrap_or_else(|| panic!("no advertisement; agent log:\n{}", agent.log()));
    let id = ad["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a dashed uuid: {ad}");
    assert_eq!(ad["stacks"], serde_json::json!(["busybox"]));
    assert_eq!(ad["available_memory"], 8192);
    assert_eq!(ad["available_disk"], 10000);
    assert_eq!(ad["app_id_to_count"], serde_json::json!({}));
    assert_eq!(ad["placement_properties"]["zone"], "z9");
    for sub in ["db", "droplets", "crashes", "tmp", "staging"] {
        assert!(agent.base_dir.join(sub).is_dir(), "{sub} created");
    }

    // dea.locate makes it advertise at once: five requests within half a second give five
    // advertisements more than the 1 s period could.
    let before = adverts.all().len();
    let t0 = std::time::Instant::now();
    for _ in 0..5 {
        bus.publish("dea.locate", &serde_json::json!({})).await;
        bus.flush().await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let answered = e2e::eventually(Duration::from_secs(5), || {
        let c = adverts.all().len();
        async move { c >= before + 5 }
    })
    .await;
    assert!(answered, "advertised after each dea.locate");
    let elapsed = t0.elapsed().as_secs_f64();
    let gained = adverts.all().len() - before;
    assert!(
        gained as f64 > elapsed.ceil() + 1.0,
        "{gained} advertisements in {elapsed:.2}s: more than the 1 s period alone explains"
    );

    let status = agent.terminate().expect("agent exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
    let bye = goodbyes
        .wait_for(WAIT, |m| m["id"] == id.as_str())
        .await
        .expect("dea.shutdown");
    assert_eq!(bye["ip"], "127.0.0.1");
    assert!(bye["version"].is_string());
    let handles = gardend.client().list(&[]).await.unwrap();
    assert!(handles.is_empty(), "nothing left in Garden: {handles:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_reconnects_and_re_advertises() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let mut nats = Nats::start();
    let mut agent = Agent::start(&gardend, &nats, "");
    {
        let bus = bus(&nats).await;
        let adverts = watch(&bus, "dea.advertise").await;
        adverts
            .wait_for(WAIT, |_| true)
            .await
            .unwrap_or_else(|| panic!("no advertisement; log:\n{}", agent.log()));
    }
    nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart();
    let bus = bus(&nats).await;
    let adverts = watch(&bus, "dea.advertise").await;
    adverts
        .wait_for(WAIT, |_| true)
        .await
        .unwrap_or_else(|| panic!("no advertisement after restart; log:\n{}", agent.log()));
    assert_eq!(agent.terminate().and_then(|s| s.code()), Some(0));
}

/// Publish `subject` five times within half a second and check `watch` got more messages
/// than its 1 s period explains.
async fn answers_at_once(bus: &agent::bus::Bus, subject: &str, watch: &Watch) {
    let before = watch.all().len();
    let t0 = std::time::Instant::now();
    for _ in 0..5 {
        bus.publish(subject, &serde_json::json!({})).await;
        bus.flush().await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let answered = e2e::eventually(Duration::from_secs(5), || {
        let c = watch.all().len();
        async move { c >= before + 5 }
    })
    .await;
    let elapsed = t0.elapsed().as_secs_f64();
    let gained = watch.all().len() - before;
    assert!(
        answered && gained as f64 > elapsed.ceil() + 1.0,
        "{subject}: {gained} answers in {elapsed:.2}s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthmanager_start_and_router_start_are_answered_at_once() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let nats = Nats::start();
    let bus = bus(&nats).await;
    let heartbeats = watch(&bus, "dea.heartbeat").await;
    let registers = watch(&bus, "router.register").await;
    let mut agent = Agent::start(&gardend, &nats, "");
    let hb = heartbeats
        .wait_for(WAIT, |_| true)
        .await
        .unwrap_or_else(|| panic!("no heartbeat; log:\n{}", agent.log()));
    assert_eq!(hb["droplets"], serde_json::json!([]));
    let reg = registers
        .wait_for(WAIT, |_| true)
        .await
        .expect("directory server registered");
    assert_eq!(reg["port"], agent.dir_port);
    assert_eq!(reg["host"], "127.0.0.1");
    assert_eq!(reg["tags"]["component"], "directory-server-0");
    let host = reg["uris"][0].as_str().unwrap();
    assert!(
        host.ends_with(".cell.test") && host.len() == 36 + 10,
        "{host}"
    );
    assert!(reg.get("dea").is_none() && reg.get("private_instance_id").is_none());
    answers_at_once(&bus, "healthmanager.start", &heartbeats).await;
    answers_at_once(&bus, "router.start", &registers).await;
    assert_eq!(agent.terminate().and_then(|s| s.code()), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usr1_says_goodbye_and_stops_advertising_and_the_pid_file_comes_and_goes() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let nats = Nats::start();
    let bus = bus(&nats).await;
    let adverts = watch(&bus, "dea.advertise").await;
    let goodbyes = watch(&bus, "dea.shutdown").await;
    let pid_dir = tempfile::tempdir().unwrap();
    let pid_file = pid_dir.path().join("agent.pid");
    let mut agent = Agent::start(
        &gardend,
        &nats,
        &format!("pid_filename: {}\n", pid_file.display()),
    );
    adverts
        .wait_for(WAIT, |_| true)
        .await
        .unwrap_or_else(|| panic!("no advertisement; log:\n{}", agent.log()));
    let pid = agent.pid().unwrap();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    // SAFETY: kill(2) on the agent we started.
    unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    goodbyes
        .wait_for(WAIT, |_| true)
        .await
        .expect("dea.shutdown after USR1");
    // Advertisements stop, even when asked (one sent before the goodbye arrived before it:
    // one connection keeps order).
    let n = adverts.all().len();
    bus.publish("dea.locate", &serde_json::json!({})).await;
    bus.flush().await;
    let heartbeats = watch(&bus, "dea.heartbeat").await;
    heartbeats
        .wait_for(WAIT, |_| true)
        .await
        .expect("still heartbeating");
    heartbeats
        .wait_for(WAIT, |_| heartbeats.all().len() >= 3)
        .await
        .expect("three more heartbeats");
    assert_eq!(adverts.all().len(), n, "no advertisement after USR1");
    assert_eq!(agent.terminate().and_then(|s| s.code()), Some(0));
    assert!(!pid_file.exists(), "pid file removed at exit");
}
