//! Durability: gardend may be killed (SIGKILL) at any moment and restarted with the same flags.
//! Whole containers are adopted with everything they had (properties, limits, network with its
//! NetIn forwarding, grace time, bind mounts, disk quota, processes and their stdio); what a
//! crash left half-made is removed; and only one gardend may own a depot or an instance.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{container_spec, leaks_after, sh, Capture, Gardend};
use garden_api::{
    BindMount, ContainerSpec, DiskLimits, Limits, MemoryLimits, ProcessSpec, TtySpec,
};
use garden_client::{Client, ProcessIo};

use e2e::rt;

/// What a TCP server at `addr` says, or "" if nothing answers within 5 s.
fn read_from(addr: (Ipv4Addr, u16)) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if !out.is_empty() {
                return out;
            }
        }
        if Instant::now() > deadline {
            return String::new();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILL a container's garden-init (as a reboot or the OOM killer would) and wait until it
/// is dead.
fn kill_init(init: i32) {
    // SAFETY: plain kill(2) of the container init the record names.
    unsafe { libc::kill(init, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{init}/stat"))
        .is_ok_and(|s| s.contains("garden-init") && !s.contains(") Z "))
    {
        assert!(Instant::now() < deadline, "init {init} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start a process in the background (its output is not read).
async fn spawn(c: &Client, handle: &str, id: &str, script: &str) {
    let spec = ProcessSpec {
        id: id.into(),
        ..sh(script)
    };
    c.run(handle, &spec, ProcessIo::default())
        .await
        .expect("run");
}

/// The firewall lines of a chain prefix.
fn chains(prefix: &str) -> Vec<String> {
    let saved = Command::new("iptables-save").output().unwrap();
    String::from_utf8_lossy(&saved.stdout)
        .lines()
        .filter(|l| l.contains(prefix))
        .map(String::from)
        .collect()
}

/// Destroy every container, check each leaves nothing, stop gardend and check that no chain of
/// its instance and no garden-init of its depot is left.
async fn destroy_all_and_check(g: &mut Gardend, also: &[String]) {
    let c = g.client();
    let all = [("garden.state".to_string(), "all".to_string())];
    let handles = c.list(&all).await.expect("list");
    let prefix = match handles.first() {
        Some(h) => c.properties(h).await.expect("properties")["kawasaki.iptable-prefix"].clone(),
        None => String::new(),
    };
    for h in &handles {
        c.destroy(h).await.expect("destroy");
    }
    let mut every: Vec<String> = handles.clone();
    every.extend(also.iter().cloned());
    for h in &every {
        let left = leaks_after(h, g, Duration::from_secs(5));
        assert!(left.is_empty(), "{h} leaked: {left:#?}\n{}", g.log());
    }
    let mut inits = e2e::processes_mentioning(&format!("garden-init {}/", g.depot.display()));
    inits.extend(
        e2e::garden_inits_in(&g.cgroup_parent, None)
            .into_iter()
            .map(|pid| (pid, "garden-init".to_string())),
    );
    assert!(inits.is_empty(), "garden-init left: {inits:?}");
    g.stop();
    if !prefix.is_empty() {
        let left = chains(&prefix);
        assert!(left.is_empty(), "firewall rules left: {left:#?}");
    }
}

#[test]
fn a_second_gardend_on_the_same_depot_or_instance_refuses_to_start() {
    e2e::require_root!();
    let mut g = Gardend::start();
    let rt = rt();
    let c = g.client();
    rt.block_on(c.create(&container_spec("first")))
        .expect("create");
    let prefix = rt.block_on(c.properties("first")).unwrap()["kawasaki.iptable-prefix"].clone();
    let chains_before = chains(&prefix).len();

    // Same depot, another instance name and port; then another depot, same instance name.
    let other = tempfile::tempdir().unwrap();
    let other_depot = other.path().join("depot");
    for (depot, parent, expect) in [
        (g.depot.clone(), "garden-e2e-second", "already owns depot"),
        (
            other_depot,
            g.cgroup_parent.as_str(),
            "already owns instance",
        ),
    ] {
        let out = Command::new(e2e::binary("gardend"))
            .args(["--bind-ip", "127.0.0.1", "--bind-port"])
            .arg(e2e::free_port().to_string())
            .arg("--depot")
            .arg(&depot)
            .args(["--cgroup-parent", parent, "--network-pool", "10.63.0.0/22"])
            .stdin(Stdio::null())
            .output()
            .expect("run a second gardend");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "second gardend started: {stderr}");
        assert!(stderr.contains(expect), "{stderr}");
        assert!(
            stderr.contains(&format!("pid {}", g.pid())),
            "names the owner: {stderr}"
        );
    }
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/memory/garden-e2e-second").exists(),
        "the refused gardend made its cgroup parent"
    );

    // The first one is untouched: its chains are all there and it still creates containers
    // that reach each other's network and run processes.
    assert_eq!(chains(&prefix).len(), chains_before, "chains changed");
    rt.block_on(async {
        c.create(&container_spec("second")).await.expect("create");
        let ip = c.info("first").await.unwrap().container_ip;
        let (status, out) = e2e::sh_combined(&c, "second", &format!("ping -c1 -W2 {ip}")).await;
        assert_eq!(status, 0, "{out}");
        destroy_all_and_check(&mut g, &[]).await;
    });
}

fn full_spec(handle: &str, shared: &std::path::Path) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        properties: BTreeMap::from([("owner".to_string(), "durable".to_string())]),
        grace_time: 3600 * 1_000_000_000,
        netin: vec![garden_api::NetIn {
            host_port: 0,
            container_port: 8080,
        }],
        netout_rules: vec![e2e::net_out_to("10.9.9.9")],
        bind_mounts: vec![BindMount {
            src_path: shared.display().to_string(),
            dst_path: "/mnt/shared".into(),
            mode: garden_api::BIND_MOUNT_MODE_RO,
            ..Default::default()
        }],
        limits: Limits {
            memory_limits: MemoryLimits {
                limit_in_bytes: 256 << 20,
            },
            disk_limits: DiskLimits {
                byte_hard: 64 << 20,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn kill9_while_idle_adopts_every_container_whole() {
    e2e::require_root!();
    let mut g = Gardend::start();
    let rt = rt();
    let c = g.client();
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("hello"), "from the host").unwrap();
    let (info, props, port, metrics_before) = rt.block_on(async {
        c.create(&full_spec("whole", shared.path()))
            .await
            .expect("create");
        c.create(&container_spec("plain")).await.expect("create");
        c.set_property("whole", "later", "set after create")
            .await
            .unwrap();
        c.net_out("whole", &e2e::net_out_to("10.8.8.8"))
            .await
            .unwrap();
        let port = c.net_in("whole", 0, 8081).await.unwrap().host_port;
        spawn(
            &c,
            "whole",
            "server",
            "while true; do echo hello-netin | nc -l -p 8081; done",
        )
        .await;
        let (status, out) = e2e::sh_combined(
            &c,
            "whole",
            "echo data > /tmp/kept && cat /mnt/shared/hello",
        )
        .await;
        assert_eq!((status, out.as_str()), (0, "from the host"));
        let metrics = c.metrics("whole").await.unwrap();
        (
            c.info("whole").await.unwrap(),
            c.properties("whole").await.unwrap(),
            port,
            metrics,
        )
    });
    assert_eq!(
        read_from((Ipv4Addr::LOCALHOST, port as u16)).trim(),
        "hello-netin"
    );

    g.kill9();
    g.restart();
    let log = g.log();
    assert!(
        log.contains("adopted a container of the previous run"),
        "{log}"
    );

    rt.block_on(async {
        assert_eq!(c.list(&[]).await.unwrap(), ["plain", "whole"]);
        let after = c.info("whole").await.expect("info");
        assert_eq!(after.container_ip, info.container_ip);
        assert_eq!(after.host_ip, info.host_ip);
        assert_eq!(after.container_path, info.container_path);
        let mapped = |i: &garden_api::ContainerInfo| {
            i.mapped_ports
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|m| (m.host_port, m.container_port))
                .collect::<Vec<_>>()
        };
        assert_eq!(mapped(&after), mapped(&info));
        assert_eq!(mapped(&after).len(), 2);
        assert_eq!(c.properties("whole").await.unwrap(), props);
        assert_eq!(props["garden.grace-time"], (3600u64 * 1_000_000_000).to_string());
        assert_eq!(props["later"], "set after create");
        assert_eq!(
            c.current_memory_limits("whole").await.unwrap().limit_in_bytes,
            256 << 20
        );
        assert_eq!(
            c.current_disk_limits("whole").await.unwrap().byte_hard,
            64 << 20
        );
        let metrics = c.metrics("whole").await.expect("metrics");
        assert!(
            metrics.age >= metrics_before.age,
            "age went back: {} < {}",
            metrics.age,
            metrics_before.age
        );
        assert!(metrics.memory_stat.total_rss > 0 || metrics.memory_stat.rss > 0 || metrics.memory_stat.cache > 0);
        // The server kept running, NetIn still forwards.
        let port16 = port as u16;
        let said = tokio::task::spawn_blocking(move || read_from((Ipv4Addr::LOCALHOST, port16)))
            .await
            .unwrap();
        assert_eq!(said.trim(), "hello-netin");
        // Files, bind mounts and the disk quota are still there.
        let (status, out) = e2e::sh_combined(
            &c,
            "whole",
            "cat /tmp/kept /mnt/shared/hello; dd if=/dev/zero of=/big bs=1M count=100 2>&1; echo rc=$?",
        )
        .await;
        assert_eq!(status, 0, "{out}");
        assert!(out.starts_with("data\nfrom the host"), "{out}");
        assert!(!out.contains("rc=0"), "the disk limit no longer holds: {out}");
        // NetIn and NetOut keep working on it (its nat chain exists already).
        let more = c.net_in("whole", 0, 8082).await.expect("net_in after restart");
        assert!(!mapped(&after).iter().any(|(h, _)| *h == more.host_port));
        c.net_out(
            "whole",
            &e2e::net_out_to("10.7.7.7"),
        )
        .await
        .expect("net_out after restart");
        // Nothing is handed out twice: a new container gets another address and NetIn port.
        c.create(&container_spec("new")).await.expect("create after restart");
        let new = c.info("new").await.unwrap();
        for old in [&after, &c.info("plain").await.unwrap()] {
            assert_ne!(new.container_ip, old.container_ip);
        }
        let p = c.net_in("new", 0, 80).await.unwrap().host_port;
        assert!(!mapped(&after).iter().any(|(h, _)| *h == p), "port {p} twice");
        // StreamOut and StreamIn work on an adopted container.
        let mut tar = Vec::new();
        let mut reader = c.stream_out("whole", "", "/tmp/kept").await.expect("stream out");
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut tar)
            .await
            .unwrap();
        assert!(!tar.is_empty());
        c.stream_in("plain", "", "/tmp", std::io::Cursor::new(tar))
            .await
            .expect("stream in");
        let (_, out) = e2e::sh_combined(&c, "plain", "cat /tmp/kept").await;
        assert_eq!(out, "data\n");
        destroy_all_and_check(&mut g, &[]).await;
    });
}

/// Collects a process's stdout through an attach.
async fn attach(
    c: &Client,
    handle: &str,
    id: &str,
    stdin: Option<&'static [u8]>,
) -> (garden_client::Process, Capture) {
    let out = Capture::default();
    let io = ProcessIo {
        stdin: stdin.map(|s| {
            Box::new(std::io::Cursor::new(s)) as Box<dyn tokio::io::AsyncRead + Send + Unpin>
        }),
        stdout: Some(Box::new(out.clone())),
        stderr: None,
    };
    let p = c.attach(handle, id, io).await.expect("attach");
    (p, out)
}

/// The numbers of `line N` lines in `text`.
fn numbers(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("line ")?.trim().parse().ok())
        .collect()
}

#[test]
fn processes_outlive_a_killed_gardend_and_are_reattached() {
    e2e::require_root!();
    let mut g = Gardend::start();
    let rt = rt();
    let c = g.client();
    let seen_before = rt.block_on(async {
        c.create(&container_spec("procs")).await.expect("create");
        // Streams output all along; reads stdin; exits 7 while gardend is down; has a tty.
        spawn(
            &c,
            "procs",
            "ticker",
            "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.05; done",
        )
        .await;
        spawn(&c, "procs", "reader", "read x; echo got $x").await;
        spawn(&c, "procs", "quitter", "sleep 1; echo bye; exit 7").await;
        let tty = ProcessSpec {
            id: "tty".into(),
            tty: Some(TtySpec::default()),
            ..sh("while true; do tty; sleep 0.1; done")
        };
        c.run("procs", &tty, ProcessIo::default())
            .await
            .expect("tty");
        let (_p, out) = attach(&c, "procs", "ticker", None).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        numbers(&out.text())
    });
    assert!(!seen_before.is_empty(), "no output before the kill");

    g.kill9();
    std::thread::sleep(Duration::from_secs(2));
    g.restart();

    rt.block_on(async {
        // Still streaming, from where it is now.
        let (_p, out) = attach(&c, "procs", "ticker", None).await;
        let ok = e2e::eventually(Duration::from_secs(5), || {
            let n = numbers(&out.text());
            async move { n.len() >= 45 }
        })
        .await;
        let after = numbers(&out.text());
        assert!(
            ok,
            "no output after the restart: {:?}\n{}",
            out.text(),
            g.log()
        );
        // What the ticker wrote while no gardend ran (40 lines in 2 s) waited in its pipe and
        // comes first (a few lines may have been read by the old gardend, never delivered).
        let last = *seen_before.last().unwrap();
        assert!(
            after[0] > last && after[0] <= last + 20,
            "{after:?} after {seen_before:?}"
        );
        assert!(
            after.len() >= 40,
            "the 2 s without gardend are missing: {after:?}"
        );
        assert!(
            after.windows(2).all(|w| w[1] == w[0] + 1),
            "gaps: {after:?}"
        );

        // Stdin works for a new attach.
        let (mut p, out) = attach(&c, "procs", "reader", Some(b"hello\n")).await;
        let status = tokio::time::timeout(Duration::from_secs(10), p.wait())
            .await
            .expect("reader exits")
            .expect("wait");
        assert_eq!((status, out.text().as_str()), (0, "got hello\n"));

        // The exit while gardend was down is reported, after the output nobody read.
        let (mut p, out) = attach(&c, "procs", "quitter", None).await;
        assert_eq!(p.wait().await.expect("wait"), 7);
        assert_eq!(out.text(), "bye\n");

        // The tty process is back too.
        let (_p, out) = attach(&c, "procs", "tty", None).await;
        assert!(
            e2e::eventually(Duration::from_secs(5), || {
                let t = out.text();
                async move { t.contains("/dev/pts/") }
            })
            .await,
            "tty output: {:?}",
            out.text()
        );

        // Run and Attach of new processes, and ids stay unique.
        let (status, out) = e2e::sh_combined(&c, "procs", "echo new").await;
        assert_eq!((status, out.as_str()), (0, "new\n"));
        let again = ProcessSpec {
            id: "ticker".into(),
            ..sh("true")
        };
        assert!(c.run("procs", &again, ProcessIo::default()).await.is_err());
        destroy_all_and_check(&mut g, &[]).await;
    });
}

#[test]
fn kill9_during_concurrent_creates_leaves_whole_containers_or_nothing() {
    e2e::require_root!();
    let mut g = Gardend::start();
    let rt = rt();
    let c = g.client();
    let handles: Vec<String> = (0..24).map(|i| format!("burst-{i:02}")).collect();
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let pid = g.pid() as i32;
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for h in &handles {
            let (c, h, done) = (c.clone(), h.clone(), done.clone());
            set.spawn(async move {
                if c.create(&container_spec(&h)).await.is_ok() {
                    let mut done = done.lock().unwrap();
                    if done.is_empty() {
                        // Kill the moment the first create completes (creates take a couple
                        // of milliseconds: a poll would come too late): the others are at
                        // every stage.
                        // SAFETY: plain kill(2) of the gardend this test started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    done.push(h);
                }
            });
        }
        while set.join_next().await.is_some() {}
        assert!(!done.lock().unwrap().is_empty(), "no create completed");
        g.kill9();
    });
    g.restart();
    let log = g.log();
    rt.block_on(async {
        let listed = c.list(&[]).await.expect("list");
        eprintln!(
            "{} of {} creates complete at the kill",
            listed.len(),
            handles.len()
        );
        assert!(
            listed.len() < handles.len(),
            "the kill came after every create"
        );
        for h in done.lock().unwrap().iter() {
            assert!(listed.contains(h), "{h} was created, and lost\n{log}");
        }
        for h in &handles {
            if listed.contains(h) {
                let (status, out) = e2e::sh_combined(&c, h, "echo alive").await;
                assert_eq!((status, out.as_str()), (0, "alive\n"), "{h}");
                assert!(!c.info(h).await.unwrap().container_ip.is_empty());
            } else {
                let left = leaks_after(h, &g, Duration::from_secs(5));
                assert!(left.is_empty(), "half-made {h} left: {left:#?}\n{log}");
            }
        }
        // A complete set of new containers fits: no address is held by a ghost.
        c.create(&container_spec("after")).await.expect("create");
        destroy_all_and_check(&mut g, &handles).await;
    });
}

#[test]
fn kill9_during_destroys_completes_them_after_restart() {
    e2e::require_root!();
    let mut g = Gardend::start();
    let rt = rt();
    let c = g.client();
    let handles: Vec<String> = (0..6).map(|i| format!("doomed-{i}")).collect();
    rt.block_on(async {
        for h in &handles {
            c.create(&container_spec(h)).await.expect("create");
            spawn(&c, h, "sleeper", "sleep 1000").await;
        }
        let mut set = tokio::task::JoinSet::new();
        for h in &handles {
            let (c, h) = (c.clone(), h.clone());
            set.spawn(async move {
                let _ = c.destroy(&h).await;
            });
        }
        // Kill once every destroy has begun (its bundle says so, or is gone already).
        let depot = g.depot.clone();
        let begun = e2e::eventually(Duration::from_secs(30), || {
            let all = handles.iter().all(|h| {
                let b = depot.join(h);
                !b.exists() || b.join("destroying").exists()
            });
            async move { all }
        })
        .await;
        assert!(begun, "the destroys did not begin");
        g.kill9();
        while set.join_next().await.is_some() {}
    });
    g.restart();
    rt.block_on(async {
        // Every destroy that began is finished by the restart.
        assert_eq!(c.list(&[]).await.expect("list"), Vec::<String>::new());
        for h in &handles {
            let left = leaks_after(h, &g, Duration::from_secs(5));
            assert!(left.is_empty(), "{h}: {left:#?}\n{}", g.log());
        }
        destroy_all_and_check(&mut g, &handles).await;
    });
}

#[test]
fn grace_timers_restart_with_gardend_and_streams_in_survive_a_kill() {
    e2e::require_root!();
    let mut g = Gardend::start();
    let rt = rt();
    let c = g.client();
    rt.block_on(async {
        let mut spec = container_spec("graceful");
        spec.grace_time = 3_000_000_000;
        c.create(&spec).await.expect("create");
        c.create(&container_spec("streamed")).await.expect("create");
        // A StreamIn that never ends: gardend is killed in the middle of it.
        let (mut w, r) = tokio::io::duplex(64 * 1024);
        let c2 = c.clone();
        let upload = tokio::spawn(async move { c2.stream_in("streamed", "", "/tmp", r).await });
        tokio::io::AsyncWriteExt::write_all(&mut w, &[0u8; 4096])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        g.kill9();
        drop(w);
        let _ = upload.await;
    });
    // Longer than the grace time: counted from the restart, not from before the kill.
    std::thread::sleep(Duration::from_secs(4));
    let restarted = Instant::now();
    g.restart();
    rt.block_on(async {
        assert_eq!(c.list(&[]).await.unwrap(), ["graceful", "streamed"]);
        assert_eq!(
            c.properties("graceful").await.unwrap()["garden.grace-time"],
            "3000000000"
        );
        let (status, out) = e2e::sh_combined(&c, "streamed", "echo ok").await;
        assert_eq!((status, out.as_str()), (0, "ok\n"));
        // The adopted container is reaped once idle for its grace time after the restart.
        let gone = e2e::eventually(Duration::from_secs(10), || {
            let c = c.clone();
            async move { !c.list(&[]).await.unwrap().contains(&"graceful".to_string()) }
        })
        .await;
        assert!(gone, "grace time never expired\n{}", g.log());
        assert!(
            restarted.elapsed() >= Duration::from_secs(3),
            "reaped before its grace time after the restart"
        );
        destroy_all_and_check(&mut g, &["graceful".to_string()]).await;
    });
}

/// 20 kill -9 / restart cycles under a create / run / destroy load: every container whose create
/// returned (and that was not destroyed) is there after each restart, every destroyed one is
/// gone, and after destroying everything nothing of any of them is left.
#[test]
fn restart_soak_under_load_loses_and_leaks_nothing() {
    e2e::require_root!();
    let mut g = Gardend::start();
    let rt = rt();
    let c = g.client();
    type Log = std::sync::Arc<std::sync::Mutex<Vec<(String, &'static str)>>>;
    let events: Log = Default::default();
    let mut used = Vec::new();
    let mut restarts = Vec::new();
    let mut adopted_counts = Vec::new();
    for round in 0..20u32 {
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..3u32 {
            let (c, events) = (c.clone(), events.clone());
            let _guard = rt.enter();
            workers.spawn(async move {
                for i in 0.. {
                    let h = format!("soak-{round:02}-{w}-{i:03}");
                    events.lock().unwrap().push((h.clone(), "tried"));
                    if c.create(&container_spec(&h)).await.is_err() {
                        return;
                    }
                    events.lock().unwrap().push((h.clone(), "created"));
                    match e2e::run_output(&c, &h, &sh("echo hi"), None).await {
                        // The kill may cut the stdout connection after the exit status
                        // arrived: what came is a prefix.
                        Ok(out) => assert!("hi\n".starts_with(&out.stdout_text())),
                        Err(_) => return,
                    }
                    if i % 3 != 0 {
                        events.lock().unwrap().push((h.clone(), "destroying"));
                        if c.destroy(&h).await.is_err() {
                            return;
                        }
                        events.lock().unwrap().push((h.clone(), "destroyed"));
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300 + (round as u64 * 137) % 700));
        g.kill9();
        rt.block_on(async {
            // Requests in flight fail with the connection; no worker outlives the round.
            while let Some(r) = workers.join_next().await {
                if let Err(e) = r {
                    assert!(!e.is_panic(), "a worker failed before the kill");
                }
            }
        });
        let t = Instant::now();
        g.restart();
        restarts.push(t.elapsed());
        let listed = rt.block_on(c.list(&[])).expect("list");
        adopted_counts.push(listed.len());
        let log = events.lock().unwrap().clone();
        let last = |h: &str| log.iter().rev().find(|(x, _)| x == h).map(|(_, e)| *e);
        for (h, _) in &log {
            match last(h) {
                Some("created") => {
                    assert!(listed.contains(h), "round {round}: {h} lost\n{}", g.log())
                }
                Some("destroyed") => assert!(!listed.contains(h), "round {round}: {h} back"),
                _ => {}
            }
            if !used.contains(h) {
                used.push(h.clone());
            }
        }
        for h in &used {
            if !listed.contains(h) {
                let left = leaks_after(h, &g, Duration::from_secs(5));
                assert!(
                    left.is_empty(),
                    "round {round}: {h} left {left:#?}\n{}",
                    g.log()
                );
            }
        }
    }
    rt.block_on(async {
        for h in c.list(&[]).await.unwrap() {
            let (status, out) = e2e::sh_combined(&c, &h, "echo alive").await;
            assert_eq!((status, out.as_str()), (0, "alive\n"), "{h}");
        }
        destroy_all_and_check(&mut g, &used).await;
    });
    let ms: Vec<u128> = restarts.iter().map(|d| d.as_millis()).collect();
    eprintln!(
        "soak: 20 restarts, {} containers made, adopted per restart {adopted_counts:?}, restart to listening ms {ms:?} (max {})",
        used.len(),
        ms.iter().max().unwrap()
    );
}

/// What changed while no gardend ran is not adopted blindly: a container whose garden-init died
/// and one whose firewall chain was removed by hand are removed completely, with a log line.
/// ("fine" has no chain of its own: without NetOut rules it needs none.)
#[test]
fn containers_broken_while_gardend_was_down_are_removed() {
    e2e::require_root!();
    let mut g = Gardend::start();
    let rt = rt();
    let c = g.client();
    let (prefix, chain) = rt.block_on(async {
        for h in ["dead", "unchained", "fine"] {
            c.create(&container_spec(h)).await.expect("create");
        }
        // Its first NetOut rule makes its chain.
        c.net_out("unchained", &e2e::net_out_to("10.8.8.9"))
            .await
            .unwrap();
        let p = c.properties("unchained").await.unwrap();
        (
            p["kawasaki.iptable-prefix"].clone(),
            format!(
                "{}{}",
                p["kawasaki.iptable-prefix"], p["kawasaki.iptable-inst"]
            ),
        )
    });
    g.kill9();
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(g.depot.join("dead/container.json")).expect("record"),
    )
    .unwrap();
    let init = record["init_pid"].as_i64().unwrap() as i32;
    kill_init(init);
    let fwd = format!("{prefix}fwd");
    let rules = Command::new("iptables")
        .args(["-S", &fwd])
        .output()
        .unwrap();
    for rule in String::from_utf8_lossy(&rules.stdout).lines() {
        if rule.contains(&chain) {
            let delete = rule.replacen("-A ", "-D ", 1);
            let ok = Command::new("iptables")
                .args(delete.split_whitespace())
                .status()
                .unwrap();
            assert!(ok.success(), "{delete}");
        }
    }
    for flag in ["-F", "-X"] {
        let ok = Command::new("iptables")
            .args([flag, &chain])
            .status()
            .unwrap();
        assert!(ok.success(), "iptables {flag} {chain}");
    }
    g.restart();
    let log = g.log();
    assert!(log.contains("its garden-init is gone"), "{log}");
    assert!(
        log.contains("firewall chain of a kept container is gone"),
        "{log}"
    );
    rt.block_on(async {
        assert_eq!(c.list(&[]).await.unwrap(), ["fine"]);
        for h in ["dead", "unchained"] {
            let left = leaks_after(h, &g, Duration::from_secs(5));
            assert!(left.is_empty(), "{h} left: {left:#?}\n{log}");
        }
        // Their addresses are free again: two new containers fit and work.
        for h in ["new-1", "new-2"] {
            c.create(&container_spec(h)).await.expect("create");
            let (status, _) = e2e::sh_combined(&c, h, "true").await;
            assert_eq!(status, 0);
        }
        destroy_all_and_check(&mut g, &["dead".into(), "unchained".into()]).await;
    });
}

/// A graceful stop (SIGTERM, as an upgrade does) keeps containers too, and the next gardend
/// adopts them just the same.
#[test]
fn a_stopped_gardend_leaves_its_containers_to_the_next() {
    e2e::require_root!();
    let mut g = Gardend::start();
    let rt = rt();
    let c = g.client();
    rt.block_on(async {
        c.create(&container_spec("upgraded")).await.expect("create");
        spawn(&c, "upgraded", "sleeper", "sleep 1000").await;
    });
    g.stop();
    g.restart();
    rt.block_on(async {
        assert_eq!(c.list(&[]).await.unwrap(), ["upgraded"]);
        let (p, _) = attach(&c, "upgraded", "sleeper", None).await;
        p.control()
            .signal(garden_api::Signal::Kill)
            .await
            .expect("signal");
        let mut p = p;
        assert_eq!(p.wait().await.expect("wait"), 137);
        destroy_all_and_check(&mut g, &[]).await;
    });
}

/// The depot is a tmpfs gardend mounts (bundles never touch the disk) and writable layers are
/// on disk: after a reboot (here: every garden-init killed and the tmpfs gone) the next
/// gardend finds no record and removes the layers nobody names.
#[test]
fn after_a_reboot_the_layers_left_on_disk_are_swept() {
    e2e::require_root!();
    let mut g = Gardend::start();
    let rt = rt();
    let c = g.client();
    let fs_type = |dir: &std::path::Path| {
        let out = Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(fs_type(&g.depot), "tmpfs");
    rt.block_on(async {
        c.create(&container_spec("rebooted")).await.expect("create");
        let (status, _) = e2e::sh_combined(&c, "rebooted", "echo kept > /data").await;
        assert_eq!(status, 0);
    });
    let layers = e2e::writable_layers(&g);
    assert_eq!(layers.len(), 1, "{layers:?}");
    let upper = std::fs::canonicalize(g.depot.join("rebooted/upper")).expect("upper");
    assert!(
        upper.starts_with(g.tmp.path().join("writable")),
        "{upper:?}"
    );
    assert_eq!(
        fs_type(&upper),
        fs_type(g.tmp.path()),
        "layer off the depot's tmpfs"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("data")).unwrap(),
        "kept\n"
    );
    g.kill9();
    let init = g.init_pid("rebooted");
    kill_init(init);
    let ok = Command::new("umount").arg(&g.depot).status().unwrap();
    assert!(ok.success(), "umount the depot");
    g.restart();
    let log = g.log();
    assert!(
        log.contains("removed a writable layer no container names"),
        "{log}"
    );
    assert_eq!(fs_type(&g.depot), "tmpfs");
    assert!(
        e2e::writable_layers(&g).is_empty(),
        "{:?}",
        e2e::writable_layers(&g)
    );
    rt.block_on(async {
        assert!(c.list(&[]).await.unwrap().is_empty());
        let left = leaks_after("rebooted", &g, Duration::from_secs(5));
        assert!(left.is_empty(), "{left:#?}\n{log}");
        c.create(&container_spec("after")).await.expect("create");
        let (status, out) = e2e::sh_combined(&c, "after", "cat /data 2>&1; true").await;
        assert_eq!(status, 0);
        assert!(!out.contains("kept"), "{out}");
        destroy_all_and_check(&mut g, &["rebooted".into()]).await;
    });
}
