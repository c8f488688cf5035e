//! App instances end to end (spec §3.4-3.13, §4, §6, §8): a real nats-server, gardend and
//! agent; droplets served over HTTP; apps reached through their host ports.

use std::time::Duration;

use agent::bus::Bus;
use e2e::agent::*;
use e2e::Gardend;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

/// A busybox httpd app serving `index.html` (and `env.txt`, written at start) on $PORT.
fn web_droplet(body: &str) -> Vec<u8> {
    droplet(
        &[
            ("index.html", body, 0o644),
            (
                ".profile.d/a.sh",
                "export FROM_PROFILE=\"set by $HOME\"\n",
                0o644,
            ),
        ],
        "env > env.txt; ulimit -n > nofile.txt; exec httpd -f -p $PORT -h .",
    )
}

/// Everything a test needs: gardend, nats, an agent (id known), a bus, a droplet server.
struct Fx {
    gardend: Gardend,
    nats: Nats,
    agent: Agent,
    id: String,
    bus: Bus,
    files: FileServer,
}

impl Fx {
    async fn start(extra: &str, files: Vec<(String, Vec<u8>)>) -> Fx {
        let gardend = Gardend::start();
        let nats = Nats::start();
        let bus = bus(&nats).await;
        let adverts = watch(&bus, "dea.advertise").await;
        let agent = Agent::start(&gardend, &nats, extra);
        let ad = adverts
            .wait_for(WAIT, |_| true)
            .await
            .unwrap_or_else(|| panic!("no advertisement; log:\n{}", agent.log()));
        let id = ad["id"].as_str().unwrap().to_string();
        let files = FileServer::start(files).await;
        Fx {
            gardend,
            nats,
            agent,
            id,
            bus,
            files,
        }
    }

    fn start_message(&self, app: &str, path: &str, sha1: &str, uris: &[&str]) -> Value {
        json!({
            "droplet": app, "name": format!("{app}-name"), "stack": "busybox",
            "uris": uris, "prod": false, "sha1": sha1,
            "executableUri": format!("{}{path}", self.files.base),
            "version": "v1", "services": [],
            "limits": {"mem": 64, "disk": 256, "fds": 1024},
            "env": ["GREETING=hello world"], "cc_partition": "default",
            "health_check_timeout": 30,
            "vcap_application": {"application_name": app},
            "index": 0
        })
    }

    async fn send_start(&self, msg: &Value) {
        self.bus
            .publish(format!("dea.{}.start", self.id), msg)
            .await;
        self.bus.flush().await;
    }

    async fn find(&self, body: Value) -> Vec<Value> {
        self.bus
            .gather("dea.find.droplet", &body, Duration::from_millis(1500))
            .await
            .unwrap()
    }

    /// The live Garden containers.
    async fn containers(&self) -> Vec<String> {
        self.gardend.client().list(&[]).await.unwrap()
    }

    fn log(&self) -> String {
        self.agent.log()
    }
}

/// GET `path` from 127.0.0.1:`port`; the body of a 200, else None.
async fn http_get(port: u64, path: &str) -> Option<String> {
    e2e::agent::http_get_ok(port as u16, path).await
}

async fn http_raw(port: u64, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port as u16)).await else {
        return "connect failed".into();
    };
    let _ = s
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    format!("{r:?} {}", String::from_utf8_lossy(&buf))
}

fn state_of(hb: &Value, instance: &str) -> Option<String> {
    hb["droplets"]
        .as_array()?
        .iter()
        .find(|d| d["instance"] == instance)
        .map(|d| d["state"].as_str().unwrap_or("").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_runs_is_routed_reports_stats_and_crashes_when_killed() {
    e2e::require_root!();
    let app = web_droplet("hello from the droplet");
    let sha = sha1_hex(&app);
    let fx = Fx::start("", vec![("/droplet.tgz".into(), app)]).await;
    let heartbeats = watch(&fx.bus, "dea.heartbeat").await;
    let registers = watch(&fx.bus, "router.register").await;
    let unregisters = watch(&fx.bus, "router.unregister").await;
    let exits = watch(&fx.bus, "droplet.exited").await;
    let adverts = watch(&fx.bus, "dea.advertise").await;

    fx.send_start(&fx.start_message("app-1", "/droplet.tgz", &sha, &["app1.example.com"]))
        .await;
    let reg = registers
        .wait_for(WAIT, |m| m["app"] == "app-1")
        .await
        .unwrap_or_else(|| panic!("no router.register; log:\n{}", fx.log()));
    assert_eq!(reg["dea"], fx.id.as_str());
    assert_eq!(reg["uris"], json!(["app1.example.com"]));
    assert_eq!(reg["host"], "127.0.0.1");
    assert_eq!(reg["tags"]["component"], "dea-0");
    assert_eq!(reg["private_instance_id"].as_str().unwrap().len(), 64);
    let port = reg["port"].as_u64().unwrap();
    assert!(port > 0);

    // The app answers on its host port, with the DEA environment.
    let body = http_get(port, "/index.html").await;
    assert_eq!(
        body.as_deref(),
        Some("hello from the droplet"),
        "raw: {:?}",
        http_raw(port, "/index.html").await
    );
    let env = http_get(port, "/env.txt").await.expect("env.txt");
    assert!(env.contains(&format!("PORT={port}")), "{env}");
    assert!(env.contains("GREETING=hello world"), "{env}");
    assert!(env.contains("MEMORY_LIMIT=64m"), "{env}");
    assert!(env.contains("HOME=/home/vcap/app"), "{env}");
    assert!(
        env.contains(&format!("CF_INSTANCE_ADDR=127.0.0.1:{port}")),
        "{env}"
    );
    assert!(env.contains("VCAP_APPLICATION={"), "{env}");
    assert!(env.contains("\"application_name\":\"app-1\""), "{env}");
    assert!(env.contains("FROM_PROFILE=set by /home/vcap/app"), "{env}");
    assert_eq!(
        http_get(port, "/nofile.txt").await.as_deref(),
        Some("1024\n")
    );

    // Limits, ownership and umask in the container.
    let garden = fx.gardend.client();
    let handle = fx.containers().await[0].clone();
    let mem = garden.current_memory_limits(&handle).await.unwrap();
    assert_eq!(mem.limit_in_bytes, 64 << 20);
    let cpu = garden.current_cpu_limits(&handle).await.unwrap();
    assert_eq!(cpu.weight.max(cpu.limit_in_shares), 64 / 8, "{cpu:?}");
    let disk = garden.current_disk_limits(&handle).await.unwrap();
    assert_eq!(disk.byte_hard, 256 << 20);
    assert_eq!(disk.inode_hard, 200_000);
    let (status, out, err) = e2e::sh_root(
        &garden,
        &handle,
        "stat -c '%U %a' /home/vcap/app/index.html /home/vcap/app/env.txt",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!((status, out.as_str()), (0, "vcap 644\nvcap 600\n"), "{err}");

    // RUNNING in the heartbeat, counted in the advertisement, with less memory available.
    let found = fx
        .find(json!({"droplet": "app-1", "include_stats": true, "path": "/logs"}))
        .await;
    assert_eq!(found.len(), 1, "{found:?}");
    let f = &found[0];
    let iid = f["instance"].as_str().unwrap().to_string();
    assert_eq!(iid.len(), 32);
    assert_eq!(f["state"], "RUNNING");
    assert_eq!(f["dea"], fx.id.as_str());
    assert_eq!(f["version"], "v1");
    let stats = &f["stats"];
    assert_eq!(stats["name"], "app-1-name");
    assert_eq!(stats["port"], port);
    assert_eq!(stats["mem_quota"], 64u64 << 20);
    assert_eq!(stats["disk_quota"], 256u64 << 20);
    assert_eq!(stats["fds_quota"], 1024);
    assert!(stats["usage"]["mem"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["usage"]["time"].as_str().unwrap().ends_with("+0000"));
    let uri = f["file_uri_v2"].as_str().unwrap();
    assert!(
        uri.contains(&format!("/instance_paths/{iid}?")) && uri.contains("cell.test"),
        "{uri}"
    );
    heartbeats
        .wait_for(WAIT, |h| state_of(h, &iid).as_deref() == Some("RUNNING"))
        .await
        .expect("RUNNING in a heartbeat");
    adverts
        .wait_for(WAIT, |a| {
            a["app_id_to_count"]["app-1"] == 1 && a["available_memory"] == 8192 - 64
        })
        .await
        .expect("advertised with the instance counted");
    let snapshot_path = fx.agent.base_dir.join("db/instances.json");
    let snapshot: Value = serde_json::from_slice(&std::fs::read(&snapshot_path).unwrap()).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&snapshot_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the snapshot holds credentials");
    assert_eq!(snapshot["instances"][0]["instance_id"], iid.as_str());
    assert_eq!(snapshot["instances"][0]["state"], "RUNNING");

    // Kill the app inside its container: CRASHED, droplet.exited, unregistered.
    let handles = fx.containers().await;
    assert_eq!(handles.len(), 1);
    let (status, out, err) = e2e::sh_root(
        &fx.gardend.client(),
        &handles[0],
        "kill -9 $(pidof httpd)",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status, 0, "{out}{err}");
    let exit = exits
        .wait_for(WAIT, |m| m["instance"] == iid.as_str())
        .await
        .unwrap_or_else(|| panic!("no droplet.exited; log:\n{}", fx.log()));
    assert_eq!(exit["reason"], "CRASHED");
    assert_eq!(exit["droplet"], "app-1");
    assert_eq!(exit["exit_status"], 137, "{exit}");
    assert_eq!(exit["exit_description"], "app instance exited");
    assert!(exit["crash_timestamp"].as_i64().unwrap() > 1_700_000_000);
    let unreg = unregisters
        .wait_for(WAIT, |m| m["app"] == "app-1")
        .await
        .expect("router.unregister");
    assert_eq!(unreg["port"], port);
    heartbeats
        .wait_for(WAIT, |h| state_of(h, &iid).as_deref() == Some("CRASHED"))
        .await
        .expect("CRASHED in a heartbeat");
    let found = fx.find(json!({"droplet": "app-1"})).await;
    assert_eq!(found[0]["state"], "CRASHED");
    // The crash keeps the app's logs and gives back the memory; the container is gone.
    let crash_dir = fx.agent.base_dir.join("crashes").join(&iid);
    assert!(
        crash_dir.join("logs").is_dir(),
        "crash logs kept in {crash_dir:?}"
    );
    assert!(
        e2e::eventually(WAIT, || async { fx.containers().await.is_empty() }).await,
        "crashed container destroyed"
    );
    adverts
        .wait_for(WAIT, |a| {
            a["available_memory"] == 8192 && a["app_id_to_count"].get("app-1").is_none()
        })
        .await
        .expect("memory given back");
    assert_eq!(fx.files.hits("/droplet.tgz"), 1);
}

/// Wait until `watch` saw a `droplet.exited` for `app`; returns it.
async fn exited(fx: &Fx, exits: &Watch, app: &str) -> Value {
    exits
        .wait_for(WAIT, |m| m["droplet"] == app)
        .await
        .unwrap_or_else(|| panic!("no droplet.exited for {app}; log:\n{}", fx.log()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_starts_crash_with_the_reason_and_leave_no_container() {
    e2e::require_root!();
    let app = web_droplet("x");
    let sha = sha1_hex(&app);
    let no_command = droplet(&[("index.html", "x", 0o644)], "");
    let no_command_sha = sha1_hex(&no_command);
    let fx = Fx::start(
        "resources: {memory_mb: 100}\n",
        vec![
            ("/droplet.tgz".into(), app),
            ("/nocmd.tgz".into(), no_command),
        ],
    )
    .await;
    let exits = watch(&fx.bus, "droplet.exited").await;

    // Over capacity: CRASHED at once, nothing downloaded or created.
    let mut m = fx.start_message("big", "/droplet.tgz", &sha, &[]);
    m["limits"]["mem"] = json!(200);
    fx.send_start(&m).await;
    let e = exited(&fx, &exits, "big").await;
    assert_eq!(
        e["exit_description"],
        "Not enough memory resource available."
    );
    assert_eq!(e["reason"], "CRASHED");
    let found = fx.find(json!({"droplet": "big"})).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["state"], "CRASHED");

    // SHA1 mismatch.
    let wrong = sha1_hex(b"something else");
    fx.send_start(&fx.start_message("badsha", "/droplet.tgz", &wrong, &[]))
        .await;
    let e = exited(&fx, &exits, "badsha").await;
    let d = e["exit_description"].as_str().unwrap();
    assert!(d.contains("droplet") && d.contains("mismatch"), "{e}");

    // No start command in the message or the droplet.
    fx.send_start(&fx.start_message("nocmd", "/nocmd.tgz", &no_command_sha, &[]))
        .await;
    let e = exited(&fx, &exits, "nocmd").await;
    assert_eq!(e["exit_description"], "missing start command");

    // Unknown stack.
    let mut m = fx.start_message("nostack", "/droplet.tgz", &sha, &[]);
    m["stack"] = json!("cflinuxfs9");
    fx.send_start(&m).await;
    let e = exited(&fx, &exits, "nostack").await;
    assert_eq!(e["exit_description"], "Stack cflinuxfs9 does not exist");

    // Health check timeout: the app listens on nothing.
    let mut m = fx.start_message("deaf", "/droplet.tgz", &sha, &["deaf.example.com"]);
    m["start_command"] = json!("sleep 600");
    m["health_check_timeout"] = json!(2);
    fx.send_start(&m).await;
    let e = exited(&fx, &exits, "deaf").await;
    assert_eq!(
        e["exit_description"],
        "failed to accept connections within health check timeout"
    );

    assert!(
        e2e::eventually(WAIT, || async { fx.containers().await.is_empty() }).await,
        "no container left: {:?}",
        fx.containers().await
    );
    // The crashed instances hold their disk but no memory: a 100 MB app still fits.
    let mut m = fx.start_message("fits", "/droplet.tgz", &sha, &[]);
    m["limits"]["mem"] = json!(100);
    m["start_command"] = json!("exec sleep 600");
    fx.send_start(&m).await;
    let found = loop_find(&fx, "fits", "RUNNING").await;
    assert_eq!(found["state"], "RUNNING");
}

/// Wait until `dea.find.droplet` reports an instance of `app` in `state`.
async fn loop_find(fx: &Fx, app: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = fx.find(json!({"droplet": app})).await;
        if let Some(f) = found.into_iter().find(|f| f["state"] == state) {
            return f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{app} never {state}; log:\n{}",
            fx.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_dropped_without_harm() {
    e2e::require_root!();
    let app = web_droplet("x");
    let sha = sha1_hex(&app);
    let fx = Fx::start("", vec![("/droplet.tgz".into(), app)]).await;
    let exits = watch(&fx.bus, "droplet.exited").await;
    let subject = format!("dea.{}.start", fx.id);
    for raw in [
        "not json".to_string(),
        "{}".into(),
        r#"{"droplet": 5}"#.into(),
        json!({"droplet": "a", "name": "n", "stack": "busybox", "version": "v", "index": "zero",
               "limits": {"mem": 64, "disk": 64, "fds": 10}})
        .to_string(),
        json!({"droplet": "a", "name": "n", "stack": "busybox", "version": "v", "index": 0,
               "limits": {"mem": 1u64 << 40, "disk": 64, "fds": 10}})
        .to_string(),
        json!({"droplet": "a", "name": "n", "stack": "busybox", "version": "v", "index": 0,
               "sha1": "xyz", "limits": {"mem": 64, "disk": 64, "fds": 10}})
        .to_string(),
    ] {
        fx.bus
            .client()
            .publish(subject.clone(), raw.into_bytes().into())
            .await
            .unwrap();
    }
    for s in ["dea.stop", "dea.update", "dea.find.droplet", "router.start"] {
        fx.bus
            .client()
            .publish(s, "[1,2".as_bytes().to_vec().into())
            .await
            .unwrap();
    }
    fx.bus.flush().await;
    // Still alive and serving: a good start after the bad ones runs.
    let mut m = fx.start_message("good", "/droplet.tgz", &sha, &[]);
    m["start_command"] = json!("exec sleep 600");
    fx.send_start(&m).await;
    loop_find(&fx, "good", "RUNNING").await;
    assert!(exits.all().is_empty(), "nothing crashed: {:?}", exits.all());
    assert_eq!(fx.containers().await.len(), 1);
    let found = fx.find(json!({"droplet": "a"})).await;
    assert!(
        found.is_empty(),
        "invalid starts never registered: {found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_filters_update_and_one_download_per_sha1() {
    e2e::require_root!();
    let app = web_droplet("v");
    let sha = sha1_hex(&app);
    let fx = Fx::start("", vec![("/droplet.tgz".into(), app)]).await;
    let registers = watch(&fx.bus, "router.register").await;
    let unregisters = watch(&fx.bus, "router.unregister").await;
    let exits = watch(&fx.bus, "droplet.exited").await;
    // Three instances of one droplet started at once.
    for index in 0..3 {
        let mut m = fx.start_message("multi", "/droplet.tgz", &sha, &["m.example.com"]);
        m["index"] = json!(index);
        fx.send_start(&m).await;
    }
    assert!(
        e2e::eventually(WAIT, || async {
            let f = fx
                .find(json!({"droplet": "multi", "states": ["RUNNING"]}))
                .await;
            f.len() == 3
        })
        .await,
        "three RUNNING; log:\n{}",
        fx.log()
    );
    assert_eq!(
        fx.files.hits("/droplet.tgz"),
        1,
        "one download for one sha1"
    );
    let all = fx.find(json!({"droplet": "multi"})).await;
    let id_of = |index: u64| {
        all.iter().find(|f| f["index"] == index).unwrap()["instance"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Filters that match nothing stop nothing.
    for f in [
        json!({"droplet": "multi", "version": "v9"}),
        json!({"droplet": "other"}),
        json!({"droplet": "multi", "states": ["CRASHED"]}),
        json!({"droplet": "multi", "instances": ["nope"]}),
    ] {
        fx.bus.publish("dea.stop", &f).await;
    }
    // Index 1 by index, index 2 by instance id.
    fx.bus
        .publish("dea.stop", &json!({"droplet": "multi", "indices": [1]}))
        .await;
    fx.bus
        .publish(
            "dea.stop",
            &json!({"droplet": "multi", "instance_ids": [id_of(2)], "version": "v1"}),
        )
        .await;
    fx.bus.flush().await;
    assert!(
        e2e::eventually(WAIT, || async {
            fx.find(json!({"droplet": "multi"})).await.len() == 1
        })
        .await,
        "two stopped"
    );
    let left = fx.find(json!({"droplet": "multi"})).await;
    assert_eq!(left[0]["instance"], id_of(0).as_str());
    assert!(
        e2e::eventually(WAIT, || async { fx.containers().await.len() == 1 }).await,
        "stopped containers destroyed"
    );
    assert!(exits.all().is_empty(), "a stop is not a crash");
    assert!(unregisters
        .wait_for(WAIT, |m| m["app"] == "multi")
        .await
        .is_some());

    // dea.update: new URIs registered, removed ones unregistered, a new version → new id.
    let n_unreg = unregisters.all().len();
    fx.bus
        .publish(
            "dea.update",
            &json!({"droplet": "multi", "uris": ["n.example.com"], "version": "v2"}),
        )
        .await;
    fx.bus.flush().await;
    registers
        .wait_for(WAIT, |m| m["uris"] == json!(["n.example.com"]))
        .await
        .expect("new uri registered");
    unregisters
        .wait_for(WAIT, |m| m["uris"] == json!(["m.example.com"]))
        .await
        .expect("old uri unregistered");
    assert!(unregisters.all().len() > n_unreg);
    let now = fx.find(json!({"droplet": "multi"})).await;
    assert_eq!(now[0]["version"], "v2");
    assert_ne!(now[0]["instance"], id_of(0).as_str(), "new version, new id");
    let stats = fx
        .find(json!({"droplet": "multi", "include_stats": true}))
        .await;
    assert_eq!(stats[0]["stats"]["uris"], json!(["n.example.com"]));

    // Stopping by app id alone stops the rest.
    fx.bus
        .publish("dea.stop", &json!({"droplet": "multi"}))
        .await;
    fx.bus.flush().await;
    assert!(
        e2e::eventually(WAIT, || async { fx.containers().await.is_empty() }).await,
        "all stopped"
    );
    assert!(fx.find(json!({"droplet": "multi"})).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_resumes_running_instances() {
    e2e::require_root!();
    let app = web_droplet("still here");
    let sha = sha1_hex(&app);
    let mut fx = Fx::start("", vec![("/droplet.tgz".into(), app)]).await;
    let registers = watch(&fx.bus, "router.register").await;
    fx.send_start(&fx.start_message("keep", "/droplet.tgz", &sha, &["keep.example.com"]))
        .await;
    let reg = registers
        .wait_for(WAIT, |m| m["app"] == "keep")
        .await
        .unwrap_or_else(|| panic!("not running; log:\n{}", fx.log()));
    let port = reg["port"].as_u64().unwrap();
    let iid = fx.find(json!({"droplet": "keep"})).await[0]["instance"]
        .as_str()
        .unwrap()
        .to_string();

    fx.agent.kill();
    assert_eq!(
        http_get(port, "/index.html").await.as_deref(),
        Some("still here")
    );
    let heartbeats = watch(&fx.bus, "dea.heartbeat").await;
    let exits = watch(&fx.bus, "droplet.exited").await;
    fx.agent.spawn();
    let hb = heartbeats
        .wait_for(WAIT, |h| state_of(h, &iid).as_deref() == Some("RUNNING"))
        .await
        .unwrap_or_else(|| panic!("not resumed; log:\n{}", fx.log()));
    let new_id = hb["dea"].as_str().unwrap().to_string();
    assert_ne!(new_id, fx.id, "a new agent id per boot");
    assert!(fx.log().contains("RESUMING"), "went through RESUMING");
    assert_eq!(
        http_get(port, "/index.html").await.as_deref(),
        Some("still here")
    );
    assert_eq!(fx.containers().await.len(), 1);

    // The resumed agent watches the process: killing it is a crash it reports.
    let handle = fx.containers().await[0].clone();
    e2e::sh_root(
        &fx.gardend.client(),
        &handle,
        "kill -9 $(pidof httpd)",
        Duration::from_secs(10),
    )
    .await;
    let e = exits
        .wait_for(WAIT, |m| m["instance"] == iid.as_str())
        .await
        .unwrap_or_else(|| panic!("no crash after resume; log:\n{}", fx.log()));
    assert_eq!(e["exit_status"], 137);
    assert!(
        e2e::eventually(WAIT, || async { fx.containers().await.is_empty() }).await,
        "crashed container destroyed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_container_and_unknown_containers_after_restart() {
    e2e::require_root!();
    let app = web_droplet("x");
    let sha = sha1_hex(&app);
    let mut fx = Fx::start("", vec![("/droplet.tgz".into(), app)]).await;
    let mut m = fx.start_message("gone", "/droplet.tgz", &sha, &[]);
    m["start_command"] = json!("exec sleep 600");
    fx.send_start(&m).await;
    let iid = loop_find(&fx, "gone", "RUNNING").await["instance"]
        .as_str()
        .unwrap()
        .to_string();
    fx.agent.kill();
    let handle = fx.containers().await[0].clone();
    let garden = fx.gardend.client();
    garden.destroy(&handle).await.unwrap();
    // Left over from the last run (say a task's), another agent's, and nobody's.
    let owned = |owner: &str, handle: &str| garden_api::ContainerSpec {
        handle: handle.into(),
        properties: [("agent:base_dir".to_string(), owner.to_string())].into(),
        ..Default::default()
    };
    let base = fx.agent.base_dir.display().to_string();
    garden.create(&owned(&base, "leftover")).await.unwrap();
    garden
        .create(&owned("/elsewhere", "foreign"))
        .await
        .unwrap();
    garden
        .create(&e2e::container_spec("unowned"))
        .await
        .unwrap();
    let exits = watch(&fx.bus, "droplet.exited").await;
    fx.agent.spawn();
    let e = exits
        .wait_for(WAIT, |m| m["instance"] == iid.as_str())
        .await
        .unwrap_or_else(|| panic!("no crash for the vanished container; log:\n{}", fx.log()));
    assert_eq!(e["exit_description"], "container vanished");
    let sorted = || async {
        let mut l = fx.containers().await;
        l.sort();
        l
    };
    assert!(
        e2e::eventually(WAIT, || async { sorted().await == ["foreign", "unowned"] }).await,
        "only its own leftovers destroyed: {:?}",
        sorted().await
    );
    let left = sorted().await;
    for h in left {
        garden.destroy(&h).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_keeps_instances_and_re_advertises() {
    e2e::require_root!();
    let app = web_droplet("x");
    let sha = sha1_hex(&app);
    let mut fx = Fx::start("", vec![("/droplet.tgz".into(), app)]).await;
    let mut m = fx.start_message("steady", "/droplet.tgz", &sha, &[]);
    m["start_command"] = json!("exec sleep 600");
    fx.send_start(&m).await;
    let iid = loop_find(&fx, "steady", "RUNNING").await["instance"]
        .as_str()
        .unwrap()
        .to_string();
    fx.nats.stop();
    tokio::time::sleep(Duration::from_millis(300)).await;
    fx.nats.restart();
    let bus = bus(&fx.nats).await;
    let adverts = watch(&bus, "dea.advertise").await;
    let heartbeats = watch(&bus, "dea.heartbeat").await;
    adverts
        .wait_for(WAIT, |a| a["app_id_to_count"]["steady"] == 1)
        .await
        .unwrap_or_else(|| panic!("no advertisement after restart; log:\n{}", fx.log()));
    heartbeats
        .wait_for(WAIT, |h| state_of(h, &iid).as_deref() == Some("RUNNING"))
        .await
        .expect("instance kept across the NATS restart");
    fx.bus = bus;
    let found = fx.find(json!({"droplet": "steady"})).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["instance"], iid.as_str());
    // Subscriptions came back: a new start runs.
    let mut m = fx.start_message("after", "/droplet.tgz", &sha, &[]);
    m["start_command"] = json!("exec sleep 600");
    fx.send_start(&m).await;
    loop_find(&fx, "after", "RUNNING").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_everything_and_sigusr2_evacuates() {
    e2e::require_root!();
    let app = web_droplet("x");
    let sha = sha1_hex(&app);
    let mut fx = Fx::start("", vec![("/droplet.tgz".into(), app.clone())]).await;
    let goodbyes = watch(&fx.bus, "dea.shutdown").await;
    let unregisters = watch(&fx.bus, "router.unregister").await;
    fx.send_start(&fx.start_message("bye", "/droplet.tgz", &sha, &["bye.example.com"]))
        .await;
    loop_find(&fx, "bye", "RUNNING").await;
    let status = fx.agent.terminate().expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "log:\n{}", fx.log());
    let bye = goodbyes
        .wait_for(WAIT, |_| true)
        .await
        .expect("dea.shutdown");
    assert_eq!(bye["app_id_to_count"]["bye"], 1);
    assert!(unregisters
        .wait_for(WAIT, |m| m["app"] == "bye")
        .await
        .is_some());
    assert!(
        unregisters
            .wait_for(WAIT, |m| m["tags"]["component"] == "directory-server-0")
            .await
            .is_some(),
        "directory server unregistered"
    );
    assert!(fx.containers().await.is_empty(), "nothing left in Garden");

    // Evacuation: EVACUATING in a heartbeat, stopped by dea.stop, then exit 0.
    fx.agent.spawn();
    let heartbeats = watch(&fx.bus, "dea.heartbeat").await;
    let hb = heartbeats
        .wait_for(WAIT, |_| true)
        .await
        .expect("heartbeat");
    let id = hb["dea"].as_str().unwrap().to_string();
    fx.id = id;
    fx.send_start(&fx.start_message("evac", "/droplet.tgz", &sha, &["evac.example.com"]))
        .await;
    let iid = loop_find(&fx, "evac", "RUNNING").await["instance"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = fx.agent.pid().unwrap();
    // SAFETY: kill(2) on the agent we started.
    unsafe { libc::kill(pid as i32, libc::SIGUSR2) };
    heartbeats
        .wait_for(WAIT, |h| state_of(h, &iid).as_deref() == Some("EVACUATING"))
        .await
        .unwrap_or_else(|| panic!("no EVACUATING; log:\n{}", fx.log()));
    // Still serving while evacuating, and no new starts accepted.
    let found = fx.find(json!({"droplet": "evac"})).await;
    assert_eq!(found[0]["state"], "EVACUATING");
    fx.send_start(&fx.start_message("late", "/droplet.tgz", &sha, &[]))
        .await;
    let late = fx.find(json!({"droplet": "late"})).await;
    assert!(late.is_empty(), "no start while evacuating: {late:?}");
    fx.bus
        .publish("dea.stop", &json!({"droplet": "evac"}))
        .await;
    fx.bus.flush().await;
    let status = fx
        .agent
        .signal_and_wait(0, Duration::from_secs(60))
        .expect("agent exits once evacuated");
    assert_eq!(status.code(), Some(0), "log:\n{}", fx.log());
    assert!(fx.containers().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_are_reaped_after_their_lifetime() {
    e2e::require_root!();
    let app = droplet(&[], "exit 3");
    let sha = sha1_hex(&app);
    let fx = Fx::start("crash_lifetime_secs: 3\n", vec![("/d.tgz".into(), app)]).await;
    let exits = watch(&fx.bus, "droplet.exited").await;
    fx.send_start(&fx.start_message("short", "/d.tgz", &sha, &[]))
        .await;
    let e = exited(&fx, &exits, "short").await;
    assert_eq!(e["exit_status"], 3);
    let iid = e["instance"].as_str().unwrap().to_string();
    let dir = fx.agent.base_dir.join("crashes").join(&iid);
    assert!(dir.join("logs").is_dir(), "logs kept before droplet.exited");
    assert!(
        e2e::eventually(WAIT, || async {
            fx.find(json!({"droplet": "short"})).await.is_empty() && !dir.exists()
        })
        .await,
        "crash reaped"
    );
}

/// GET a directory-server URL (whatever its host name) from 127.0.0.1:`port`.
async fn dir_get(port: u16, url: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let path = &url[url.find("/instance_paths/").expect("instance path")..];
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_bind_mounts_files_and_out_of_memory() {
    e2e::require_root!();
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let hooks = tempfile::tempdir().unwrap();
    let mut hook_conf = String::from("hooks: {");
    for name in ["before_start", "after_start", "before_stop", "after_stop"] {
        let path = hooks.path().join(format!("{name}.sh"));
        std::fs::write(
            &path,
            format!("echo {name} $PORT >> /mnt/shared/hooks.log\n"),
        )
        .unwrap();
        hook_conf.push_str(&format!("{name}: {}, ", path.display()));
    }
    hook_conf.push_str("}\n");
    let extra = format!(
        "{hook_conf}bind_mounts: [{{src_path: {}, dst_path: /mnt/shared, mode: rw}}]\n",
        shared.path().display()
    );
    let app = web_droplet("files!");
    let sha = sha1_hex(&app);
    let fx = Fx::start(&extra, vec![("/droplet.tgz".into(), app)]).await;
    let exits = watch(&fx.bus, "droplet.exited").await;

    let mut m = fx.start_message("hooked", "/droplet.tgz", &sha, &["h.example.com"]);
    m["egress_network_rules"] = json!([
        {"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "80,443"},
        {"protocol": "all", "destination": "192.168.0.1-192.168.0.9"}
    ]);
    fx.send_start(&m).await;
    let f = loop_find(&fx, "hooked", "RUNNING").await;
    let iid = f["instance"].as_str().unwrap().to_string();
    let log = shared.path().join("hooks.log");
    assert!(
        e2e::eventually(WAIT, || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("after_start")
        })
        .await,
        "after_start ran; log:\n{}",
        fx.log()
    );

    // The directory server serves the instance's files behind the signed URL.
    let found = fx
        .find(json!({"droplet": "hooked", "path": "/app/index.html"}))
        .await;
    let url = found[0]["file_uri_v2"].as_str().unwrap();
    let (status, body) = dir_get(fx.agent.dir_port, url).await;
    assert_eq!((status, body.as_str()), (200, "files!"), "{url}");

    fx.bus
        .publish("dea.stop", &json!({"droplet": "hooked"}))
        .await;
    fx.bus.flush().await;
    assert!(
        e2e::eventually(WAIT, || async { fx.containers().await.is_empty() }).await,
        "stopped"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let order: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        order,
        ["before_start", "after_start", "before_stop", "after_stop"],
        "{text}"
    );
    assert!(
        text.lines()
            .all(|l| l.split(' ').nth(1).is_some_and(|p| !p.is_empty())),
        "{text}"
    );
    assert_eq!(iid.len(), 32);

    // An app that outgrows its memory limit crashes with `out of memory`.
    let mut m = fx.start_message("hungry", "/droplet.tgz", &sha, &[]);
    m["limits"]["mem"] = json!(16);
    m["start_command"] = json!("x=$(head -c 100000000 /dev/zero | tr '\\0' a); sleep 600");
    fx.send_start(&m).await;
    let e = exited(&fx, &exits, "hungry").await;
    assert_eq!(e["exit_description"], "out of memory", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_that_died_while_the_agent_was_down_is_a_crash_without_a_route() {
    e2e::require_root!();
    let app = web_droplet("x");
    let sha = sha1_hex(&app);
    let mut fx = Fx::start("", vec![("/droplet.tgz".into(), app)]).await;
    let registers = watch(&fx.bus, "router.register").await;
    fx.send_start(&fx.start_message("dies", "/droplet.tgz", &sha, &["d.example.com"]))
        .await;
    registers
        .wait_for(WAIT, |m| m["app"] == "dies")
        .await
        .unwrap_or_else(|| panic!("not running; log:\n{}", fx.log()));
    let iid = fx.find(json!({"droplet": "dies"})).await[0]["instance"]
        .as_str()
        .unwrap()
        .to_string();
    fx.agent.kill();
    let handle = fx.containers().await[0].clone();
    e2e::sh_root(
        &fx.gardend.client(),
        &handle,
        "kill -9 $(pidof httpd)",
        Duration::from_secs(10),
    )
    .await;
    let registers = watch(&fx.bus, "router.register").await;
    let exits = watch(&fx.bus, "droplet.exited").await;
    fx.agent.spawn();
    let e = exits
        .wait_for(WAIT, |m| m["instance"] == iid.as_str())
        .await
        .unwrap_or_else(|| panic!("no crash; log:\n{}", fx.log()));
    assert_eq!(e["exit_status"], 137);
    // Give the new agent a few register rounds: the dead app is never announced.
    registers
        .wait_for(WAIT, |m| m["tags"]["component"] == "directory-server-0")
        .await
        .expect("agent registering");
    assert!(
        registers.all().iter().all(|m| m["app"] != "dies"),
        "{:?}",
        registers.all()
    );
    assert!(
        e2e::eventually(WAIT, || async { fx.containers().await.is_empty() }).await,
        "container destroyed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_newest_crash_of_an_app_is_kept() {
    e2e::require_root!();
    let app = droplet(&[], "exit 4");
    let sha = sha1_hex(&app);
    let fx = Fx::start("", vec![("/d.tgz".into(), app)]).await;
    let exits = watch(&fx.bus, "droplet.exited").await;
    fx.send_start(&fx.start_message("twice", "/d.tgz", &sha, &[]))
        .await;
    let first = exited(&fx, &exits, "twice").await;
    let mut m = fx.start_message("twice", "/d.tgz", &sha, &[]);
    m["index"] = json!(1);
    fx.send_start(&m).await;
    let second = exits
        .wait_for(WAIT, |e| e["droplet"] == "twice" && e["index"] == 1)
        .await
        .expect("second crash");
    assert!(
        e2e::eventually(WAIT, || async {
            let f = fx.find(json!({"droplet": "twice"})).await;
            f.len() == 1 && f[0]["instance"] == second["instance"]
        })
        .await,
        "older crash reaped"
    );
    let crashes = fx.agent.base_dir.join("crashes");
    assert!(!crashes.join(first["instance"].as_str().unwrap()).exists());
    assert!(crashes.join(second["instance"].as_str().unwrap()).exists());
}

/// A hostile app turns its `logs` directory into a symlink to a root-only directory before
/// crashing: nothing vcap could not read reaches the host's crash directory (or the
/// directory server that serves it). Two layers hold this: StreamOut packs the link, not
/// its target, and the agent copies crash logs out as vcap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_logs_never_copy_what_the_app_could_not_read() {
    e2e::require_root!();
    let app = droplet(
        &[],
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; cd /home/vcap && rm -rf logs && ln -s /secret logs && exit 3",
    );
    let sha = sha1_hex(&app);
    let fx = Fx::start("", vec![("/d.tgz".into(), app)]).await;
    let exits = watch(&fx.bus, "droplet.exited").await;
    fx.send_start(&fx.start_message("sneaky", "/d.tgz", &sha, &[]))
        .await;
    let running = loop_find(&fx, "sneaky", "RUNNING").await;
    let handle = running["instance"].as_str().unwrap().to_string();
    let garden = fx.gardend.client();
    let (status, out) = e2e::sh_combined(
        &garden,
        &handle,
        "mkdir -m 700 /secret && echo topsecret > /secret/key && chmod 600 /secret/key && touch /tmp/go",
    )
    .await;
    assert_eq!(status, 0, "{out}");
    let e = exited(&fx, &exits, "sneaky").await;
    assert_eq!(e["exit_status"], 3);
    let dir = fx.agent.base_dir.join("crashes").join(&handle);
    assert!(dir.is_dir(), "crash dir kept");
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    !text.contains("topsecret"),
                    "{} holds the root-only file",
                    path.display()
                );
            }
        }
    }
}
