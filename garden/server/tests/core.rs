//! The core service against the real kernel (root), without HTTP: create, run with output,
//! stdin, exit codes, signals, destroy, and nothing left behind.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use garden_api::*;
use garden_server::config::Config;
use garden_server::garden::Garden;
use garden_server::service::{Reply, Request, Service};

static NEXT: AtomicUsize = AtomicUsize::new(0);

async fn garden(tmp: &tempfile::TempDir) -> Arc<Garden> {
    let depot = tmp.path().join("depot");
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut config = Config {
        depot,
        // One instance name per Garden: it also names the network (pool, chains, bridges).
        cgroup_parent: format!("garden-core-{}-{n}", std::process::id()),
        init_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_garden-init"))),
        ..Config::default()
    };
    // A pool of its own (10.32.n.0/24 is outside the harness's 10.64.0.0/10) per instance.
    config.net.pool = format!("10.32.{}.0/24", (std::process::id() as usize * 7 + n) % 256)
        .parse()
        .expect("pool");
    Garden::new(config).await.expect("garden starts")
}

fn json_of<T: serde::de::DeserializeOwned>(r: Reply) -> T {
    match r {
        Reply::Json(b) => serde_json::from_slice(&b).expect("json"),
        other => panic!("expected json, got {other:?}"),
    }
}

async fn run(
    g: &Garden,
    handle: &str,
    path: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (i32, String, String) {
    let spec = ProcessSpec {
        path: path.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let reply = g
        .handle(Request::Run {
            handle: handle.into(),
            spec: Box::new(spec),
        })
        .await
        .expect("run");
    let Reply::Process(session) = reply else {
        panic!("expected a process session")
    };
    let out = g
        .handle(Request::Stdout {
            handle: handle.into(),
            process_id: session.process_id.clone(),
            stream_id: session.stream_id.clone(),
        })
        .await
        .unwrap();
    let err = g
        .handle(Request::Stderr {
            handle: handle.into(),
            process_id: session.process_id.clone(),
            stream_id: session.stream_id.clone(),
        })
        .await
        .unwrap();
    if let Some(data) = stdin {
        session
            .input
            .send(ProcessInput::Stdin(data.as_bytes().to_vec()))
            .unwrap();
        session.input.send(ProcessInput::StdinEof).unwrap();
    }
    let collect = |r: Reply| async move {
        let Reply::Output(mut o) = r else {
            panic!("expected output")
        };
        let mut v = Vec::new();
        while let Some(c) = o.chunks.recv().await {
            v.extend_from_slice(&c);
        }
        String::from_utf8_lossy(&v).into_owned()
    };
    let (o, e) = tokio::join!(collect(out), collect(err));
    let status = tokio::time::timeout(Duration::from_secs(20), session.exit)
        .await
        .expect("exit in time")
        .unwrap()
        .unwrap();
    (status, o, e)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_against_the_kernel() {
    test_support::require_root!();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_test_writer()
        .try_init();
    let tmp = tempfile::tempdir().unwrap();
    let g = garden(&tmp).await;
    let spec = ContainerSpec {
        handle: "core-1".into(),
        env: vec!["CONTAINER_ENV=1".into()],
        ..Default::default()
    };
    let h: HandleResponse = json_of(
        g.handle(Request::Create(Box::new(spec)))
            .await
            .expect("create"),
    );
    assert_eq!(h.handle, "core-1");

    eprintln!("created");
    let (status, out, err) = run(
        &g,
        "core-1",
        "sh",
        &["-c", "echo out; echo err >&2; hostname; exit 42"],
        None,
    )
    .await;
    assert_eq!(
        (status, out.as_str(), err.as_str()),
        (42, "out\ncore-1\n", "err\n")
    );

    let (status, out, _) = run(&g, "core-1", "cat", &[], Some("hello stdin")).await;
    assert_eq!((status, out.as_str()), (0, "hello stdin"));

    let (_, out, _) = run(
        &g,
        "core-1",
        "sh",
        &["-c", "echo $$; env | sort; ls /proc | grep -c '^[0-9]'"],
        None,
    )
    .await;
    assert!(
        out.starts_with("1\n") || out.contains("CONTAINER_ENV=1"),
        "{out}"
    );
    assert!(out.contains("CONTAINER_ENV=1"), "{out}");

    let err = g
        .handle(Request::Run {
            handle: "core-1".into(),
            spec: Box::new(ProcessSpec {
                path: "nope".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, GardenError::ExecutableNotFound { .. }),
        "{err:?}"
    );

    g.handle(Request::Destroy {
        handle: "core-1".into(),
    })
    .await
    .expect("destroy");
    // Destroy answers once the processes are gone; the bundle goes in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tmp.path().join("depot/core-1").exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!tmp.path().join("depot/core-1").exists());
    let err = g
        .handle(Request::Info {
            handle: "core-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err, GardenError::container_not_found("core-1"));
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_root_is_confined() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let g = garden(&tmp).await;
    for (handle, privileged) in [("core-unpriv", false), ("core-priv", true)] {
        let spec = ContainerSpec {
            handle: handle.into(),
            privileged,
            ..Default::default()
        };
        g.handle(Request::Create(Box::new(spec)))
            .await
            .expect("create");
    }
    // Root may make device nodes (CAP_MKNOD, as in Guardian), but the devices cgroup lets it
    // open none but the standard ones.
    let probe = "mknod /sda b 8 0 && head -c 1 /sda >/dev/null 2>&1 && echo disk-read; \
                 (echo 1 > /proc/sys/vm/drop_caches) 2>/dev/null && echo procsys-ok; \
                 grep -q . /proc/kcore 2>/dev/null && echo kcore-ok; echo done";
    let (_, out, _) = run(&g, "core-unpriv", "sh", &["-c", probe], None).await;
    assert_eq!(out, "done\n", "unprivileged root escaped its limits");
    // No host descriptor reaches a process, and init's (a host directory among them) stay
    // out of reach through /proc/1.
    let probe = "ls /proc/self/fd; for p in /proc/1/root/ /proc/1/cwd/ /proc/1/fd/0 /proc/1/fd/1; do \
                 ls $p >/dev/null 2>&1 && echo reached $p; done; echo x >> /proc/1/fd/1 && echo wrote";
    let (_, out, _) = run(&g, "core-unpriv", "sh", &["-c", probe], None).await;
    assert_eq!(out, "0\n1\n2\n3\n");
    let (_, out, _) = run(
        &g,
        "core-priv",
        "sh",
        &["-c", "mknod /tmp/null c 1 3 && echo mknod-ok"],
        None,
    )
    .await;
    assert_eq!(out, "mknod-ok\n");
    for handle in ["core-unpriv", "core-priv"] {
        g.handle(Request::Destroy {
            handle: handle.into(),
        })
        .await
        .expect("destroy");
    }
    g.shutdown().await;
}

/// Processes must not depend on gardend: with gardend's ends of the pipes gone (as when it
/// dies), a process that keeps writing still runs, because garden-init holds the pipes open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_survive_their_readers() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let g = garden(&tmp).await;
    let spec = ContainerSpec {
        handle: "core-survive".into(),
        ..Default::default()
    };
    g.handle(Request::Create(Box::new(spec)))
        .await
        .expect("create");
    let script = "i=0; while [ $i -lt 50 ]; do echo line $i; i=$((i+1)); sleep 0.02; done; echo finished > /tmp/done";
    let spec = ProcessSpec {
        path: "sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    };
    let Reply::Process(session) = g
        .handle(Request::Run {
            handle: "core-survive".into(),
            spec: Box::new(spec),
        })
        .await
        .expect("run")
    else {
        panic!("expected a session")
    };
    // Nobody ever reads stdout, and the client goes away at once.
    drop(session.input);
    let status = tokio::time::timeout(Duration::from_secs(20), session.exit)
        .await
        .expect("exit in time")
        .unwrap();
    assert_eq!(status, Ok(0));
    let (_, out, _) = run(&g, "core-survive", "cat", &["/tmp/done"], None).await;
    assert_eq!(out, "finished\n");
    g.handle(Request::Destroy {
        handle: "core-survive".into(),
    })
    .await
    .expect("destroy");
    g.shutdown().await;
}

/// pid 1 is shielded from the container's OOM killer (by gardend); its processes are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_init_is_shielded_from_the_oom_killer() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let g = garden(&tmp).await;
    let spec = ContainerSpec {
        handle: "core-oom-adj".into(),
        ..Default::default()
    };
    g.handle(Request::Create(Box::new(spec)))
        .await
        .expect("create");
    let (_, out, _) = run(
        &g,
        "core-oom-adj",
        "sh",
        &["-c", "cat /proc/1/oom_score_adj /proc/self/oom_score_adj"],
        None,
    )
    .await;
    // Lowering a score needs CAP_SYS_RESOURCE; without it on this host init stays at 0.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim();
    let has_sys_resource = u64::from_str_radix(cap_eff, 16).unwrap() & (1 << 24) != 0;
    // Then its processes get the highest score, so the container's OOM killer still takes
    // them first.
    let expected = if has_sys_resource {
        "-1000\n0\n"
    } else {
        "0\n1000\n"
    };
    assert_eq!(out, expected);
    g.handle(Request::Destroy {
        handle: "core-oom-adj".into(),
    })
    .await
    .expect("destroy");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_handles_work() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let g = garden(&tmp).await;
    let handle = "h".repeat(200);
    let spec = ContainerSpec {
        handle: handle.clone(),
        ..Default::default()
    };
    g.handle(Request::Create(Box::new(spec)))
        .await
        .expect("create with a 200-character handle");
    let (_, out, _) = run(&g, &handle, "hostname", &[], None).await;
    assert_eq!(out, format!("{}\n", "h".repeat(49)));
    g.handle(Request::Destroy { handle })
        .await
        .expect("destroy");
    g.shutdown().await;
}
