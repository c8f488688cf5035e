//! The plain container routes through the Rust client against a real gardend: create (handles,
//! env, properties, grace time, bind mounts, limits), list filters, info, properties, metrics,
//! bulk routes, stop, destroy, and the typed errors for unknown handles.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e::{
    assert_no_leaks as no_leaks, container_spec as spec, garden_err, run_output, sh, Gardend,
};
use garden_api::{
    BindMount, ContainerSpec, CpuLimits, GardenError, Limits, MemoryLimits, PidLimits, ProcessSpec,
    BIND_MOUNT_MODE_RW,
};
use garden_client::ProcessIo;

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_capacity() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    c.ping().await.expect("ping");
    let cap = c.capacity().await.expect("capacity");
    assert!(cap.memory_in_bytes > 0, "{cap:?}");
    assert!(cap.disk_in_bytes > 0, "{cap:?}");
    assert!(cap.schedulable_disk_in_bytes > 0, "{cap:?}");
    assert!(cap.max_containers > 0, "{cap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_given_generated_and_duplicate_handles() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = c.create(&spec("given-handle")).await.expect("create given");
    assert_eq!(h, "given-handle");
    let generated = c
        .create(&ContainerSpec::default())
        .await
        .expect("create generated");
    assert_ne!(generated, h);
    // Guardian generates UUIDv4 strings.
    let groups: Vec<usize> = generated.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "not a UUID: {generated}");
    assert!(
        generated
            .chars()
            .all(|ch| ch == '-' || ch.is_ascii_hexdigit()),
        "{generated}"
    );
    assert_eq!(&generated[14..15], "4", "not a version-4 UUID: {generated}");

    let err = garden_err(c.create(&spec("given-handle")).await);
    assert_eq!(
        err,
        GardenError::generic("Handle 'given-handle' already in use")
    );

    let mut listed = c.list(&[]).await.expect("list");
    listed.sort();
    let mut want = vec![h.clone(), generated.clone()];
    want.sort();
    assert_eq!(listed, want);

    for handle in [&h, &generated] {
        c.destroy(handle).await.expect("destroy");
        no_leaks(handle, &g);
    }
    assert!(c.list(&[]).await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_env_properties_and_grace_time() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let s = ContainerSpec {
        handle: "envy".into(),
        env: vec!["CONTAINER_ENV=1".into(), "TEST=hi".into()],
        properties: BTreeMap::from([
            ("owner".into(), "me".into()),
            ("team".into(), "blue".into()),
        ]),
        grace_time: 3_600_000_000_000,
        ..Default::default()
    };
    c.create(&s).await.expect("create");
    let out = run_output(&c, "envy", &sh("env"), None)
        .await
        .expect("run env");
    assert_eq!(out.status, 0, "{out:?}");
    let env = out.stdout_text();
    assert!(env.lines().any(|l| l == "CONTAINER_ENV=1"), "{env}");
    assert!(env.lines().any(|l| l == "TEST=hi"), "{env}");

    let props = c.properties("envy").await.expect("properties");
    assert_eq!(props.get("owner").map(String::as_str), Some("me"));
    assert_eq!(props.get("team").map(String::as_str), Some("blue"));
    assert_eq!(
        props.get("garden.state").map(String::as_str),
        Some("created")
    );
    assert_eq!(
        props.get("garden.grace-time").map(String::as_str),
        Some("3600000000000")
    );

    c.destroy("envy").await.expect("destroy");
    no_leaks("envy", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_mounts_ro_and_rw() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let ro = tempfile::tempdir().expect("tempdir");
    let rw = tempfile::tempdir().expect("tempdir");
    // Container root is not host root (user namespace): like any other user it writes into a
    // host directory only if the directory's mode lets it.
    std::fs::set_permissions(
        rw.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    std::fs::write(ro.path().join("given.txt"), "from host\n").expect("write");
    let s = ContainerSpec {
        handle: "binds".into(),
        bind_mounts: vec![
            BindMount {
                src_path: ro.path().display().to_string(),
                dst_path: "/mnt/ro".into(),
                ..Default::default()
            },
            BindMount {
                src_path: rw.path().display().to_string(),
                dst_path: "/mnt/rw".into(),
                mode: BIND_MOUNT_MODE_RW,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    c.create(&s).await.expect("create");

    let out = run_output(&c, "binds", &sh("cat /mnt/ro/given.txt"), None)
        .await
        .expect("cat");
    assert_eq!(
        (out.status, out.stdout_text().as_str()),
        (0, "from host\n"),
        "{out:?}"
    );

    let out = run_output(&c, "binds", &sh("echo written > /mnt/rw/out.txt"), None)
        .await
        .expect("write rw");
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(rw.path().join("out.txt")).expect("host file"),
        "written\n"
    );

    let out = run_output(&c, "binds", &sh("echo nope > /mnt/ro/new.txt"), None)
        .await
        .expect("write ro");
    assert_ne!(
        out.status, 0,
        "write to a read-only bind mount succeeded: {out:?}"
    );
    assert!(
        out.stderr_text().contains("Read-only file system"),
        "{out:?}"
    );
    assert!(!ro.path().join("new.txt").exists());

    c.destroy("binds").await.expect("destroy");
    no_leaks("binds", &g);
    // The host directories survive the container.
    assert!(rw.path().join("out.txt").exists());
    assert!(ro.path().join("given.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_mount_missing_source_fails_create_cleanly() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let s = ContainerSpec {
        handle: "badbind".into(),
        bind_mounts: vec![BindMount {
            src_path: "/nonexistent/e2e/source".into(),
            dst_path: "/mnt/x".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = garden_err(c.create(&s).await);
    assert!(matches!(err, GardenError::Generic { .. }), "{err:?}");
    assert!(c
        .list(&pairs(&[("garden.state", "all")]))
        .await
        .expect("list")
        .is_empty());
    no_leaks("badbind", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_applied_and_echoed() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let s = ContainerSpec {
        handle: "limited".into(),
        limits: Limits {
            memory_limits: MemoryLimits {
                limit_in_bytes: 64 * 1024 * 1024,
            },
            cpu_limits: CpuLimits {
                weight: 512,
                limit_in_shares: 0,
            },
            pid_limits: PidLimits { max: 50 },
            ..Default::default()
        },
        ..Default::default()
    };
    c.create(&s).await.expect("create");
    assert_eq!(
        c.current_memory_limits("limited")
            .await
            .expect("memory")
            .limit_in_bytes,
        64 * 1024 * 1024
    );
    assert_eq!(
        c.current_cpu_limits("limited")
            .await
            .expect("cpu")
            .limit_in_shares,
        512
    );
    assert_eq!(
        c.current_disk_limits("limited").await.expect("disk"),
        Default::default()
    );
    assert_eq!(
        c.current_bandwidth_limits("limited").await.expect("bw"),
        Default::default()
    );

    let m = c.metrics("limited").await.expect("metrics");
    assert_eq!(m.pid_stat.max, 50, "{m:?}");
    // The kernel enforces them: the cgroup files hold the values.
    let mem = format!(
        "/sys/fs/cgroup/memory/{}/limited/memory.limit_in_bytes",
        g.cgroup_parent
    );
    if std::path::Path::new(&mem).exists() {
        assert_eq!(
            std::fs::read_to_string(&mem).expect("read").trim(),
            "67108864"
        );
    }
    let pids = format!("/sys/fs/cgroup/pids/{}/limited/pids.max", g.cgroup_parent);
    if std::path::Path::new(&pids).exists() {
        assert_eq!(std::fs::read_to_string(&pids).expect("read").trim(), "50");
    }

    c.destroy("limited").await.expect("destroy");
    no_leaks("limited", &g);

    // The deprecated limit_in_shares alone is honoured and echoed.
    let s = ContainerSpec {
        handle: "limited-legacy".into(),
        limits: Limits {
            cpu_limits: CpuLimits {
                weight: 0,
                limit_in_shares: 256,
            },
            ..Default::default()
        },
        ..Default::default()
    };
    c.create(&s).await.expect("create legacy shares");
    assert_eq!(
        c.current_cpu_limits("limited-legacy")
            .await
            .expect("cpu")
            .limit_in_shares,
        256
    );
    // Without limits the getters answer empty objects.
    c.create(&spec("unlimited"))
        .await
        .expect("create unlimited");
    assert_eq!(
        c.current_memory_limits("unlimited").await.expect("memory"),
        Default::default()
    );
    for h in ["limited-legacy", "unlimited"] {
        c.destroy(h).await.expect("destroy");
        no_leaks(h, &g);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_filters_by_properties() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let with = |h: &str, p: &[(&str, &str)]| ContainerSpec {
        handle: h.into(),
        properties: p
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    c.create(&with("l1", &[("a", "1"), ("b", "2")]))
        .await
        .expect("l1");
    c.create(&with("l2", &[("a", "1"), ("b", "3")]))
        .await
        .expect("l2");
    c.create(&with("l3", &[("a", "9")])).await.expect("l3");

    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(c.list(&pairs(&[("a", "1")])).await.unwrap()),
        ["l1", "l2"]
    );
    assert_eq!(
        sorted(c.list(&pairs(&[("a", "1"), ("b", "3")])).await.unwrap()),
        ["l2"]
    );
    assert!(c
        .list(&pairs(&[("a", "9"), ("b", "2")]))
        .await
        .unwrap()
        .is_empty());
    assert!(c.list(&pairs(&[("nope", "x")])).await.unwrap().is_empty());
    // A missing property compares as "".
    assert_eq!(sorted(c.list(&pairs(&[("b", "")])).await.unwrap()), ["l3"]);
    assert_eq!(sorted(c.list(&[]).await.unwrap()), ["l1", "l2", "l3"]);
    assert_eq!(
        sorted(
            c.list(&pairs(&[("garden.state", "created")]))
                .await
                .unwrap()
        ),
        ["l1", "l2", "l3"]
    );
    assert_eq!(
        sorted(
            c.list(&pairs(&[("garden.state", "all"), ("a", "9")]))
                .await
                .unwrap()
        ),
        ["l3"]
    );
    // A container whose garden.state is not "created" is hidden unless garden.state=all.
    c.set_property("l3", "garden.state", "weird")
        .await
        .expect("set state");
    assert_eq!(sorted(c.list(&[]).await.unwrap()), ["l1", "l2"]);
    assert_eq!(
        sorted(c.list(&pairs(&[("garden.state", "all")])).await.unwrap()),
        ["l1", "l2", "l3"]
    );

    for h in ["l1", "l2", "l3"] {
        c.destroy(h).await.expect("destroy");
        no_leaks(h, &g);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_states_properties_and_path() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let s = ContainerSpec {
        handle: "inf".into(),
        properties: BTreeMap::from([("foo".into(), "bar".into())]),
        ..Default::default()
    };
    c.create(&s).await.expect("create");
    let info = c.info("inf").await.expect("info");
    assert_eq!(info.state, "active");
    assert_eq!(info.events, None, "Events is null without events");
    assert_eq!(
        info.mapped_ports,
        Some(vec![]),
        "MappedPorts is [] without mappings"
    );
    let props = info.properties.clone().unwrap_or_default();
    assert_eq!(
        props.get("foo").map(String::as_str),
        Some("bar"),
        "{info:?}"
    );
    assert_eq!(
        props.get("garden.state").map(String::as_str),
        Some("created"),
        "{info:?}"
    );
    assert_eq!(
        info.container_path,
        g.depot.join("inf").display().to_string()
    );
    assert!(std::path::Path::new(&info.container_path).is_dir());

    // A long-running process is killed by stop; its client sees a signal exit status.
    let mut p = c
        .run("inf", &sh("sleep 100"), ProcessIo::default())
        .await
        .expect("run sleep");
    c.stop("inf", false).await.expect("stop");
    let status = tokio::time::timeout(Duration::from_secs(15), p.wait())
        .await
        .expect("wait after stop")
        .expect("exit status");
    assert_eq!(status, 143, "sleep should die of SIGTERM");
    assert_eq!(c.info("inf").await.expect("info").state, "stopped");
    // The container persists after stop.
    assert_eq!(c.list(&[]).await.unwrap(), ["inf"]);

    c.destroy("inf").await.expect("destroy");
    no_leaks("inf", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kill_is_immediate() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    c.create(&spec("killer")).await.expect("create");
    let mut p = c
        .run(
            "killer",
            &sh("trap '' TERM; sleep 100"),
            ProcessIo::default(),
        )
        .await
        .expect("run");
    let started = std::time::Instant::now();
    c.stop("killer", true).await.expect("stop kill");
    let status = tokio::time::timeout(Duration::from_secs(5), p.wait())
        .await
        .expect("wait")
        .expect("status");
    assert_eq!(status, 137);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(c.info("killer").await.expect("info").state, "stopped");
    c.destroy("killer").await.expect("destroy");
    no_leaks("killer", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_crud() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    c.create(&spec("props")).await.expect("create");
    c.set_property("props", "k", "v1").await.expect("set");
    assert_eq!(c.property("props", "k").await.expect("get"), "v1");
    c.set_property("props", "k", "v2").await.expect("overwrite");
    assert_eq!(c.property("props", "k").await.expect("get"), "v2");
    // Keys and values with characters that need escaping survive the round trip.
    c.set_property("props", "a key/with", "välue & <x>")
        .await
        .expect("set odd");
    assert_eq!(
        c.property("props", "a key/with").await.expect("get odd"),
        "välue & <x>"
    );
    assert_eq!(
        c.properties("props")
            .await
            .unwrap()
            .get("k")
            .map(String::as_str),
        Some("v2")
    );

    c.remove_property("props", "k").await.expect("remove");
    let err = garden_err(c.property("props", "k").await);
    assert_eq!(err, GardenError::generic("property does not exist: k"));
    // Removing a missing key is fine.
    c.remove_property("props", "k").await.expect("remove again");
    assert!(!c.properties("props").await.unwrap().contains_key("k"));

    c.destroy("props").await.expect("destroy");
    no_leaks("props", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_bulk_routes() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    c.create(&spec("m1")).await.expect("create");
    let out = run_output(
        &c,
        "m1",
        &sh("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"),
        None,
    )
    .await
    .expect("busy");
    assert_eq!(out.status, 0);
    let mut p = c
        .run("m1", &sh("sleep 30"), ProcessIo::default())
        .await
        .expect("sleep");
    let m = c.metrics("m1").await.expect("metrics");
    assert!(m.cpu_stat.usage > 0, "{m:?}");
    assert!(m.age > 0, "{m:?}");
    assert!(m.pid_stat.current > 0, "{m:?}");
    assert_eq!(m.pid_stat.max, 0, "no pid limit was set: {m:?}");
    assert!(m.memory_stat.total_usage_toward_limit > 0, "{m:?}");

    let handles = vec!["m1".to_string(), "missing".to_string()];
    let bulk = c.bulk_info(&handles).await.expect("bulk info");
    assert_eq!(bulk.len(), 2, "{bulk:?}");
    assert!(bulk["m1"].err.is_none(), "{bulk:?}");
    assert_eq!(bulk["m1"].info.state, "active");
    let e = bulk["missing"]
        .err
        .clone()
        .expect("error for the missing handle");
    assert!(e.message.contains("missing"), "{e:?}");

    let bulk = c.bulk_metrics(&handles).await.expect("bulk metrics");
    assert_eq!(bulk.len(), 2, "{bulk:?}");
    assert!(bulk["m1"].err.is_none(), "{bulk:?}");
    assert!(bulk["m1"].metrics.age > 0);
    assert!(bulk["missing"].err.is_some(), "{bulk:?}");

    assert!(c.bulk_info(&[]).await.expect("empty bulk info").is_empty());

    c.destroy("m1").await.expect("destroy");
    let status = tokio::time::timeout(Duration::from_secs(10), p.wait())
        .await
        .expect("wait after destroy");
    // Destroy kills the process; its client gets 137 (or an error if the connection dropped).
    if let Ok(s) = status {
        assert_eq!(s, 137);
    }
    no_leaks("m1", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_handle_on_every_route() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = "no-such-handle";
    let nf = GardenError::container_not_found(h);
    assert_eq!(garden_err(c.info(h).await), nf, "info");
    assert_eq!(garden_err(c.destroy(h).await), nf, "destroy");
    assert_eq!(garden_err(c.stop(h, false).await), nf, "stop");
    assert_eq!(garden_err(c.metrics(h).await), nf, "metrics");
    assert_eq!(garden_err(c.properties(h).await), nf, "properties");
    assert_eq!(garden_err(c.property(h, "k").await), nf, "property");
    assert_eq!(
        garden_err(c.set_property(h, "k", "v").await),
        nf,
        "set_property"
    );
    assert_eq!(
        garden_err(c.remove_property(h, "k").await),
        nf,
        "remove_property"
    );
    assert_eq!(
        garden_err(c.set_grace_time(h, Duration::from_secs(1)).await),
        nf,
        "grace"
    );
    assert_eq!(
        garden_err(c.current_memory_limits(h).await),
        nf,
        "memory limits"
    );
    assert_eq!(garden_err(c.current_cpu_limits(h).await), nf, "cpu limits");
    assert_eq!(
        garden_err(c.current_disk_limits(h).await),
        nf,
        "disk limits"
    );
    assert_eq!(
        garden_err(c.current_bandwidth_limits(h).await),
        nf,
        "bandwidth limits"
    );
    assert_eq!(garden_err(c.net_in(h, 0, 8080).await), nf, "net_in");
    assert_eq!(
        garden_err(c.net_out(h, &Default::default()).await),
        nf,
        "net_out"
    );
    assert_eq!(garden_err(c.bulk_net_out(h, &[]).await), nf, "bulk_net_out");
    assert_eq!(
        garden_err(c.stream_out(h, "", "/etc").await.map(drop)),
        nf,
        "stream_out"
    );
    let tar = std::io::Cursor::new(vec![0u8; 1024]);
    assert_eq!(
        garden_err(c.stream_in(h, "", "/tmp", tar).await),
        nf,
        "stream_in"
    );
    let run = c.run(h, &sh("true"), ProcessIo::default()).await.map(drop);
    assert_eq!(garden_err(run), nf, "run");
    let attach = c.attach(h, "p1", ProcessIo::default()).await.map(drop);
    assert_eq!(
        garden_err(attach),
        GardenError::process_not_found("p1"),
        "attach"
    );

    // The server is still fine, and an unknown process in a known container is typed too.
    c.create(&spec("known")).await.expect("create");
    let attach = c
        .attach("known", "nope", ProcessIo::default())
        .await
        .map(drop);
    assert_eq!(garden_err(attach), GardenError::process_not_found("nope"));
    c.destroy("known").await.expect("destroy");
    assert_eq!(
        garden_err(c.destroy("known").await),
        GardenError::container_not_found("known")
    );
    no_leaks("known", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_run_destroy_cycles_leave_nothing() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    for i in 0..20 {
        let h = format!("cycle-{i}");
        c.create(&spec(&h)).await.expect("create");
        let p = ProcessSpec {
            path: "/bin/sh".into(),
            args: vec![
                "-c".into(),
                "echo $0; sleep 100 >/dev/null 2>&1 & exit 3".into(),
                h.clone(),
            ],
            ..Default::default()
        };
        let out = run_output(&c, &h, &p, None).await.expect("run");
        assert_eq!((out.status, out.stdout_text()), (3, format!("{h}\n")));
        c.destroy(&h).await.expect("destroy");
        no_leaks(&h, &g);
    }
    assert!(c
        .list(&pairs(&[("garden.state", "all")]))
        .await
        .unwrap()
        .is_empty());
    // Nothing left in the depot either.
    let left: Vec<_> = std::fs::read_dir(&g.depot)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "depot not empty: {left:?}");
}
