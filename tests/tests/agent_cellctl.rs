//! `cellctl` end to end: the controller binary against real agents on one nats-server.

use std::time::Duration;

use e2e::agent::*;
use e2e::Gardend;

const WAIT: Duration = Duration::from_secs(30);

async fn cellctl(nats: &Nats, args: &[&str]) -> CellctlOutput {
    e2e::agent::cellctl(nats, args, Duration::from_secs(180)).await
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
    e2e::require_root!();
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
    e2e::require_root!();
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

/// GET / from 127.0.0.1:`port`; the body of a 200.
async fn http_body(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1)? == "200").then(|| body.to_string())
}

/// `(app, index, state, address, agent)` rows of `cellctl apps`.
fn app_rows(stdout: &str) -> Vec<(String, u64, String, String, String)> {
    stdout
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (
                c[0].to_string(),
                c[1].parse().unwrap(),
                c[2].to_string(),
                c[3].to_string(),
                c[4].to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_places_across_two_agents_then_apps_files_and_stop() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let nats = Nats::start();
    let extra = "resources: {memory_mb: 512}\n";
    let a = Agent::start_indexed(&gardend, &nats, 0, extra);
    let a_id = agent_ids(&nats, 1).await.remove(0);
    let b = Agent::start_indexed(&gardend, &nats, 1, extra);
    let b_id = agent_ids(&nats, 2)
        .await
        .into_iter()
        .find(|i| i != &a_id)
        .unwrap();
    let logs = || format!("agent a:\n{}\nagent b:\n{}", a.log(), b.log());

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("web.tgz");
    std::fs::write(
        &file,
        droplet(
            &[("index.html", "served by cellctl's droplet", 0o644)],
            "exec httpd -f -p $PORT -h .",
        ),
    )
    .unwrap();
    let out = cellctl(
        &nats,
        &[
            "start",
            "web",
            "--droplet",
            file.to_str().unwrap(),
            "--instances",
            "2",
            "--memory",
            "64M",
            "--disk",
            "256M",
            "--route",
            "web.cell.test",
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, logs());
    // `web[i] RUNNING at HOST:PORT (agent ID, instance IID)`, one agent each (§7: the agent
    // with fewer instances of the app goes first).
    let mut agents = Vec::new();
    for i in 0..2 {
        let line = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("web[{i}] RUNNING at ")))
            .unwrap_or_else(|| panic!("no line for web[{i}]: {}", out.stdout));
        let addr = line.split_whitespace().nth(3).unwrap();
        assert_eq!(
            http_body(addr).await.as_deref(),
            Some("served by cellctl's droplet"),
            "{line}"
        );
        agents.push(
            line.split_whitespace()
                .nth(5)
                .unwrap()
                .trim_end_matches(',')
                .to_string(),
        );
    }
    agents.sort();
    let mut both = vec![a_id.clone(), b_id.clone()];
    both.sort();
    assert_eq!(agents, both, "{}", out.stdout);

    let apps = cellctl(&nats, &["apps"]).await;
    assert_eq!(apps.code, Some(0), "{}", apps.stderr);
    let rows = app_rows(&apps.stdout);
    assert_eq!(rows.len(), 2, "{}", apps.stdout);
    assert!(
        rows.iter().all(|r| r.0 == "web" && r.2 == "RUNNING"),
        "{}",
        apps.stdout
    );
    let on_b = rows.iter().find(|r| r.4 == b_id).unwrap().1.to_string();

    // Files through the signed URL: the directory server found by its router.register ...
    let f = cellctl(&nats, &["files", "web", "/app/index.html"]).await;
    assert_eq!(
        (f.code, f.stdout.as_str()),
        (Some(0), "served by cellctl's droplet"),
        "{}",
        f.stderr
    );
    // ... or given by address.
    let dir = format!("127.0.0.1:{}", b.dir_port);
    let f = cellctl(
        &nats,
        &[
            "files",
            "web",
            "/app/",
            "--index",
            &on_b,
            "--dir-server",
            &dir,
        ],
    )
    .await;
    assert_eq!(f.code, Some(0), "{}", f.stderr);
    assert!(f.stdout.contains("index.html"), "{}", f.stdout);
    let f = cellctl(&nats, &["files", "web", "/app/missing"]).await;
    assert_eq!(f.code, Some(1));
    assert!(f.stderr.contains("404"), "{}", f.stderr);

    // Stop one index, then the rest.
    let s = cellctl(&nats, &["stop", "web", "--index", "0"]).await;
    assert_eq!(s.code, Some(0), "{}", s.stderr);
    let apps = cellctl(&nats, &["apps"]).await;
    let running: Vec<u64> = app_rows(&apps.stdout)
        .into_iter()
        .filter(|r| r.2 == "RUNNING")
        .map(|r| r.1)
        .collect();
    assert_eq!(running, [1], "{}", apps.stdout);
    let s = cellctl(&nats, &["stop", "web"]).await;
    assert_eq!(s.code, Some(0), "{}", s.stderr);
    let client = gardend.client();
    let empty = e2e::eventually(WAIT, || async {
        client
            .list(&[])
            .await
            .map(|l| l.is_empty())
            .unwrap_or(false)
    })
    .await;
    assert!(
        empty,
        "containers left: {:?}\n{}",
        client.list(&[]).await,
        logs()
    );
    let s = cellctl(&nats, &["stop", "web"]).await;
    assert_eq!(s.code, Some(1), "nothing left to stop: {}", s.stdout);

    // A droplet by URL (fetched by the agents themselves), its start command overridden.
    let files = FileServer::start(vec![(
        "/web2.tgz".into(),
        droplet(&[("index.html", "second app", 0o644)], "exit 3"),
    )])
    .await;
    let url = format!("{}/web2.tgz", files.base);
    let out = cellctl(
        &nats,
        &[
            "start",
            "web2",
            "--droplet",
            &url,
            "--memory",
            "64M",
            "--disk",
            "256M",
            "--command",
            "exec httpd -f -p $PORT -h .",
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stderr, logs());
    let addr = out.stdout.split_whitespace().nth(3).unwrap().to_string();
    assert_eq!(http_body(&addr).await.as_deref(), Some("second app"));
    // cellctl fetched it once for the sha1, the agent once to run it.
    assert_eq!(files.hits("/web2.tgz"), 2);
    assert_eq!(cellctl(&nats, &["stop", "web2"]).await.code, Some(0));
}
