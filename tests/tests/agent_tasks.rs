//! One-off tasks end to end: `task.<uuid>.run`, `task.status`, `task.terminate` and
//! `task.completed` against a real nats-server, gardend and agent.

use std::time::Duration;

use agent::bus::Bus;
use e2e::agent::*;
use e2e::Gardend;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const ASK: Duration = Duration::from_secs(5);

struct Setup {
    gardend: Gardend,
    _nats: Nats,
    agent: Agent,
    bus: Bus,
    id: String,
    completed: Watch,
}

async fn setup(extra: &str) -> Setup {
    let gardend = Gardend::start();
    let nats = Nats::start();
    let bus = bus(&nats).await;
    let adverts = watch(&bus, "dea.advertise").await;
    let completed = watch(&bus, "task.completed").await;
    let agent = Agent::start(&gardend, &nats, extra);
    let ad = adverts
        .wait_for(WAIT, |_| true)
        .await
        .unwrap_or_else(|| panic!("no advertisement; agent log:\n{}", agent.log()));
    let id = ad["id"].as_str().unwrap().to_string();
    Setup {
        gardend,
        _nats: nats,
        agent,
        bus,
        id,
        completed,
    }
}

impl Setup {
    async fn run(&self, msg: Value) -> Value {
        self.run_raw(serde_json::to_vec(&msg).unwrap()).await
    }

    async fn run_raw(&self, payload: Vec<u8>) -> Value {
        let reply = tokio::time::timeout(
            ASK,
            self.bus
                .client()
                .request(format!("task.{}.run", self.id), payload.into()),
        )
        .await
        .expect("task.run answered in time")
        .expect("task.run request");
        serde_json::from_slice(&reply.payload).unwrap()
    }

    async fn ask(&self, subject: &str, task_id: &str) -> Value {
        self.bus
            .request(subject, &json!({ "task_id": task_id }), ASK)
            .await
            .unwrap_or_else(|e| panic!("{subject} {task_id}: {e}"))
    }

    async fn completion(&self, task_id: &str) -> Value {
        self.completed
            .wait_for(WAIT, |v| v["task_id"] == task_id)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "task {task_id} did not complete; agent log:\n{}",
                    self.agent.log()
                )
            })
    }

    /// gardend holds no container of this agent's tasks.
    async fn no_containers(&self) {
        let client = self.gardend.client();
        let empty = e2e::eventually(Duration::from_secs(10), || async {
            client
                .list(&[])
                .await
                .map(|l| l.is_empty())
                .unwrap_or(false)
        })
        .await;
        assert!(
            empty,
            "containers left in gardend: {:?}",
            client.list(&[]).await
        );
    }
}

fn task(id: &str, command: &str) -> Value {
    json!({"task_id": id, "stack": "busybox", "command": command, "limits": {"mem": 64, "disk": 256}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_report_exit_status_and_output() {
    e2e::require_root!();
    let s = setup("").await;
    let droplet = droplet(&[("data.txt", "from the droplet\n", 0o644)], "unused");
    let sha1 = sha1_hex(&droplet);
    let files = FileServer::start(vec![("/d.tgz".into(), droplet)]).await;

    // A droplet, an install script, env and input: everything runs as vcap in /home/vcap.
    let mut ok = task(
        "ok-1",
        "echo \"$(whoami) $(pwd) $1 $TASK_INPUT $GREETING\"; cat app/data.txt; cat installed; echo to-stderr >&2",
    );
    ok["install_script"] = json!("echo installing; echo yes > installed");
    ok["input"] = json!("the-input");
    ok["env"] = json!(["GREETING=hello=there"]);
    ok["droplet_uri"] = json!(format!("{}/d.tgz", files.base));
    ok["sha1"] = json!(sha1);
    let reply = s.run(ok).await;
    assert_eq!(reply, json!({"task_id": "ok-1", "state": "running"}));

    let failing = s
        .run(task("fail-1", "echo partial; echo broken >&2; exit 3"))
        .await;
    assert_eq!(failing["state"], "running", "{failing}");

    let done = s.completion("ok-1").await;
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(done["exit_status"], 0);
    assert_eq!(
        done["stdout"],
        "installing\nvcap /home/vcap the-input the-input hello=there\nfrom the droplet\nyes\n"
    );
    assert_eq!(done["stderr"], "to-stderr\n");
    assert_eq!(files.hits("/d.tgz"), 1);

    let failed = s.completion("fail-1").await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["exit_status"], 3);
    assert_eq!(failed["stdout"], "partial\n");
    assert_eq!(failed["stderr"], "broken\n");

    // The output stays retrievable after completion, the container is gone.
    let status = s.ask("task.status", "fail-1").await;
    assert_eq!(status, failed);
    s.no_containers().await;
    e2e::assert_no_leaks("task-ok-1", &s.gardend);

    let unknown = s.ask("task.status", "no-such-task").await;
    assert!(
        unknown["error"].as_str().unwrap().contains("no-such-task"),
        "{unknown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_terminated_on_request_and_fail_on_timeout() {
    e2e::require_root!();
    let s = setup("").await;
    let reply = s
        .run(task(
            "long-1",
            "echo started; echo warming >&2; exec sleep 300",
        ))
        .await;
    assert_eq!(reply["state"], "running", "{reply}");

    // While it runs, task.status shows the output so far.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let st = s.ask("task.status", "long-1").await;
        if st["stdout"] == "started\n" && st["stderr"] == "warming\n" {
            assert_eq!(st["state"], "running", "{st}");
            assert_eq!(st["exit_status"], Value::Null);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no output: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ack = s.ask("task.terminate", "long-1").await;
    assert_eq!(ack["task_id"], "long-1", "{ack}");
    let done = s.completion("long-1").await;
    assert_eq!(done["state"], "terminated", "{done}");
    assert_eq!(done["stdout"], "started\n");
    e2e::assert_no_leaks("task-long-1", &s.gardend);

    let mut slow = task("slow-1", "echo begun; sleep 300");
    slow["timeout"] = json!(1.5);
    assert_eq!(s.run(slow).await["state"], "running");
    let done = s.completion("slow-1").await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["error"].as_str().unwrap().contains("timeout"),
        "{done}"
    );
    assert_eq!(done["stdout"], "begun\n");
    s.no_containers().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_wait_for_capacity_in_order() {
    e2e::require_root!();
    let s =
        setup("resources: {memory_mb: 100}\ntasks: {max_output_bytes: 64, retention_secs: 1}\n")
            .await;
    let big = |id: &str, cmd: &str| {
        let mut t = task(id, cmd);
        t["limits"]["mem"] = json!(80);
        t
    };
    let small = |id: &str| {
        let mut t = task(id, "echo small");
        t["limits"]["mem"] = json!(10);
        t
    };
    assert_eq!(
        s.run(big("hold", "exec sleep 300")).await["state"],
        "running"
    );
    // Waits: 80 + 80 > 100.
    assert_eq!(s.run(big("next", "echo next")).await["state"], "waiting");
    // Would fit (80 + 10), but does not overtake the waiting one.
    assert_eq!(s.run(small("after")).await["state"], "waiting");
    // More than the agent could ever give: refused, not queued.
    let mut huge = task("huge", "true");
    huge["limits"]["mem"] = json!(101);
    let r = s.run(huge).await;
    assert_eq!(r["state"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("capacity"), "{r}");
    let st = s.ask("task.status", "next").await;
    assert_eq!(st["state"], "waiting", "{st}");

    // Terminating a waiting task ends it at once.
    assert_eq!(
        s.ask("task.terminate", "after").await["state"],
        "terminated"
    );
    assert_eq!(s.completion("after").await["state"], "terminated");
    assert_eq!(s.run(small("later")).await["state"], "waiting");

    s.ask("task.terminate", "hold").await;
    assert_eq!(s.completion("hold").await["state"], "terminated");
    let next = s.completion("next").await;
    assert_eq!(
        (next["state"].clone(), next["stdout"].clone()),
        (json!("finished"), json!("next\n"))
    );
    assert_eq!(s.completion("later").await["state"], "finished");
    // `later` fitted beside `hold` all along, yet ran only after `hold` let `next` start.
    let all = s.completed.all();
    let pos = |id: &str| all.iter().position(|v| v["task_id"] == id).unwrap();
    assert!(pos("hold") < pos("later"), "{all:#?}");
    s.no_containers().await;

    // Output is bounded to its last max_output_bytes per stream.
    let mut t = task(
        "chatty",
        "i=0; while [ $i -lt 100 ]; do echo line-$i; i=$((i+1)); done",
    );
    t["limits"]["mem"] = json!(10);
    assert_eq!(s.run(t).await["state"], "running");
    let done = s.completion("chatty").await;
    let out = done["stdout"].as_str().unwrap();
    assert!(
        out.len() <= 64 && out.ends_with("line-98\nline-99\n"),
        "{out:?}"
    );

    // A finished task is kept until retrieved, then for retention_secs (1 s here).
    assert_eq!(s.ask("task.status", "chatty").await["state"], "finished");
    let forgotten = e2e::eventually(WAIT, || async {
        s.ask("task.status", "chatty").await.get("error").is_some()
    })
    .await;
    assert!(
        forgotten,
        "a retrieved task was not forgotten after its retention"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_task_requests_get_an_error_and_leak_nothing() {
    e2e::require_root!();
    let s = setup("").await;
    let r = s.run_raw(b"{not json".to_vec()).await;
    assert_eq!(r["state"], "error", "{r}");
    let r = s
        .run(json!({"task_id": "typed", "stack": "busybox", "command": 5}))
        .await;
    assert_eq!(r["task_id"], "typed");
    assert_eq!(r["state"], "error");
    assert!(r["error"].as_str().unwrap().contains("command"), "{r}");

    let mut unknown_stack = task("stack-1", "true");
    unknown_stack["stack"] = json!("cflinuxfs9");
    let r = s.run(unknown_stack).await;
    assert!(r["error"].as_str().unwrap().contains("stack"), "{r}");

    for (limits, word) in [
        (json!({"mem": 0}), "limits.mem"),
        (json!({"mem": 1u64 << 40}), "limits.mem"),
        (json!({"mem": 64, "disk": -1}), "limits.disk"),
    ] {
        let mut t = task("limits-1", "true");
        t["limits"] = limits;
        let r = s.run(t).await;
        assert_eq!(r["state"], "error", "{r}");
        assert!(r["error"].as_str().unwrap().contains(word), "{r}");
    }
    let mut t = task("escape/..", "true");
    t["task_id"] = json!("../escape");
    assert_eq!(s.run(t).await["state"], "error");

    // A duplicate id is refused while the first one is known.
    assert_eq!(
        s.run(task("dup-1", "exec sleep 300")).await["state"],
        "running"
    );
    let r = s.run(task("dup-1", "true")).await;
    assert!(r["error"].as_str().unwrap().contains("already"), "{r}");

    // A droplet that cannot be downloaded: accepted, then `error` with the reason.
    let mut t = task("nodroplet-1", "true");
    t["droplet_uri"] = json!("http://127.0.0.1:1/missing.tgz");
    assert_eq!(s.run(t).await["state"], "running");
    let done = s.completion("nodroplet-1").await;
    assert_eq!(done["state"], "error", "{done}");
    assert!(
        done["error"].as_str().unwrap().contains("Downloading"),
        "{done}"
    );

    // Invalid task.status / task.terminate bodies are answered with an error too.
    let r: Value = s
        .bus
        .request("task.status", &json!({"task": 1}), ASK)
        .await
        .unwrap();
    assert!(r["error"].as_str().unwrap().contains("task_id"), "{r}");
    let r = s.ask("task.terminate", "never-was").await;
    assert!(r["error"].is_string(), "{r}");

    s.ask("task.terminate", "dup-1").await;
    s.completion("dup-1").await;
    s.no_containers().await;
    assert!(!s.agent.log().contains("panicked"), "{}", s.agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_terminates_running_and_waiting_tasks() {
    e2e::require_root!();
    let mut s = setup("resources: {memory_mb: 100}\n").await;
    let mut t = task("running-1", "exec sleep 300");
    t["limits"]["mem"] = json!(80);
    assert_eq!(s.run(t.clone()).await["state"], "running");
    t["task_id"] = json!("waiting-1");
    assert_eq!(s.run(t).await["state"], "waiting");
    let status = s.agent.terminate().expect("agent exits after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(s.completion("running-1").await["state"], "terminated");
    assert_eq!(s.completion("waiting-1").await["state"], "terminated");
    s.no_containers().await;
}
