//! `cellctl` end to end: the controller binary against real agents on one nats-server.

use std::time::Duration;

use e2e::agent::*;
use e2e::Gardend;

const WAIT: Duration = Duration::from_secs(30);

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn cellctl(nats: &Nats, args: &[&str]) -> Out {
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(e2e::binary("cellctl"))
            .env("CELL_NATS", nats.url())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("cellctl {args:?} did not end"))
    .expect("run cellctl");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The agent ids of `n` agents, from their advertisements.
async fn agent_ids(nats: &Nats, n: usize) -> Vec<String> {
    let bus = bus(nats).await;
    let ads = watch(&bus, "dea.advertise").await;
    let mut ids: Vec<String> = Vec::new();
    let found = e2e::eventually(WAIT, || {
        ids = ads
            .all()
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids.dedup();
        let enough = ids.len() >= n;
        async move { enough }
    })
    .await;
    assert!(found, "{n} agents did not advertise: {ids:?}");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_run_prints_the_output_and_exits_with_the_task_status() {
    let gardend = Gardend::start();
    let nats = Nats::start();
    let agent = Agent::start(&gardend, &nats, "");
    agent_ids(&nats, 1).await;

    let out = cellctl(
        &nats,
        &[
            "task",
            "run",
            "--stack",
            "busybox",
            "--memory",
            "64M",
            "--input",
            "x y",
            "--",
            "echo \"out $1\"; echo err >&2; exit 7",
        ],
    )
    .await;
    assert_eq!(
        out.code,
        Some(7),
        "stderr: {}\nagent log:\n{}",
        out.stderr,
        agent.log()
    );
    assert_eq!(out.stdout, "out x y\n");
    assert!(out.stderr.contains("err\n"), "{}", out.stderr);
    let id = out
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("task ")?.split_whitespace().next())
        .expect("task id printed")
        .to_string();

    // Several words are one argv, quoted for the shell.
    let out = cellctl(
        &nats,
        &[
            "task",
            "run",
            "--memory",
            "64M",
            "--",
            "sh",
            "-c",
            "echo \"$0\"",
            "it's",
        ],
    )
    .await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "it's\n"),
        "{}",
        out.stderr
    );

    let status = cellctl(&nats, &["task", "status", &id, "--json"]).await;
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    let v: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(v["state"], "failed");
    assert_eq!(v["exit_status"], 7);

    let status = cellctl(&nats, &["task", "status", "nope"]).await;
    assert_eq!(status.code, Some(1));
    assert!(status.stderr.contains("nope"), "{}", status.stderr);

    // A task no agent can take.
    let out = cellctl(&nats, &["task", "run", "--memory", "1T", "--", "true"]).await;
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("no agent can take"), "{}", out.stderr);
    let client = gardend.client();
    assert!(client.list(&[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertisements_lists_every_agent_on_the_bus() {
    let gardend = Gardend::start();
    let nats = Nats::start();
    let _a = Agent::start_indexed(
        &gardend,
        &nats,
        0,
        "resources: {memory_mb: 1000}\nplacement_properties: {zone: east}\n",
    );
    let _b = Agent::start_indexed(
        &gardend,
        &nats,
        1,
        "resources: {memory_mb: 2000}\nplacement_properties: {zone: west}\n",
    );
    let ids = agent_ids(&nats, 2).await;
    let out = cellctl(&nats, &["advertisements"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(lines[0].starts_with("AGENT"), "{}", out.stdout);
    for id in &ids {
        let row = lines
            .iter()
            .find(|l| l.starts_with(id.as_str()))
            .expect("row");
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols[1], "busybox");
        assert!(
            (cols[2], cols[3]) == ("east", "1000") || (cols[2], cols[3]) == ("west", "2000"),
            "{row}"
        );
    }
}
