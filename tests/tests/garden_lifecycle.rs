//! Container lifecycle edge cases against a real gardend: root filesystems, limits enforced by
//! the kernel, stop escalation, destroy under load, concurrency, max containers, large
//! transfers.

use std::time::{Duration, Instant};

use e2e::{assert_no_leaks as no_leaks, container_spec as spec, run_output, sh, Gardend};
use garden_api::{ContainerSpec, GardenError, ImageRef, Limits, MemoryLimits, PidLimits};
use garden_client::{Client, ClientError, ProcessIo};
use tokio::io::AsyncReadExt;

/// The default rootfs gardend prepared next to its depot.
fn default_rootfs(g: &Gardend) -> std::path::PathBuf {
    let p = g.depot.parent().expect("state dir").join("rootfs");
    assert!(
        p.join("bin").exists(),
        "no default rootfs at {}",
        p.display()
    );
    p
}

fn tree_snapshot(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_uris_and_the_image_is_never_written() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let base = default_rootfs(&g);
    let before = tree_snapshot(&base);
    let uris = [
        format!("raw://{}", base.display()),
        base.display().to_string(),
    ];
    for (i, uri) in uris.iter().enumerate() {
        let h = format!("e2e-img-{i}");
        let s = ContainerSpec {
            image: ImageRef {
                uri: uri.clone(),
                ..Default::default()
            },
            ..spec(&h)
        };
        c.create(&s)
            .await
            .unwrap_or_else(|e| panic!("create with {uri}: {e}"));
        let out = run_output(
            &c,
            &h,
            &sh("echo changed > /etc/e2e-new; rm -f /bin/true; echo ok"),
            None,
        )
        .await
        .expect("run");
        assert_eq!(out.stdout_text(), "ok\n", "{out:?}");
        c.destroy(&h).await.expect("destroy");
        no_leaks(&h, &g);
    }
    assert_eq!(tree_snapshot(&base), before, "the image was modified");
    // The legacy rootfs field works too, and both together are refused.
    let s = ContainerSpec {
        rootfs: format!("raw://{}", base.display()),
        ..spec("e2e-img-legacy")
    };
    c.create(&s).await.expect("legacy rootfs");
    c.destroy("e2e-img-legacy").await.expect("destroy");
    let s = ContainerSpec {
        rootfs: base.display().to_string(),
        image: ImageRef {
            uri: base.display().to_string(),
            ..Default::default()
        },
        ..spec("e2e-img-both")
    };
    let err = c.create(&s).await.expect_err("both rootfs and image");
    assert_eq!(
        err.garden(),
        Some(&GardenError::generic(
            "Cannot provide both Image.URI and RootFSPath"
        ))
    );
    let s = ContainerSpec {
        image: ImageRef {
            uri: "raw:///nonexistent/e2e/rootfs".into(),
            ..Default::default()
        },
        ..spec("e2e-img-missing")
    };
    assert!(c.create(&s).await.is_err());
    no_leaks("e2e-img-missing", &g);
    assert!(c
        .list(&[("garden.state".into(), "all".into())])
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_and_reports_oom() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = "e2e-oom";
    let s = ContainerSpec {
        limits: Limits {
            memory_limits: MemoryLimits {
                limit_in_bytes: 32 << 20,
            },
            ..Default::default()
        },
        ..spec(h)
    };
    c.create(&s).await.expect("create");
    let out = run_output(
        &c,
        h,
        &sh("x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}"),
        None,
    )
    .await
    .expect("run");
    assert_ne!(
        out.status, 0,
        "allocating 200 MB under a 32 MB limit succeeded: {out:?}"
    );
    assert!(!out.stdout_text().contains("survived"), "{out:?}");
    let ok = e2e::eventually(Duration::from_secs(5), || async {
        c.info(h)
            .await
            .expect("info")
            .events
            .unwrap_or_default()
            .iter()
            .any(|e| e == "Out of memory")
    })
    .await;
    assert!(ok, "no 'Out of memory' event: {:?}", c.info(h).await);
    c.destroy(h).await.expect("destroy");
    no_leaks(h, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_limit_is_enforced() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = "e2e-pids";
    let s = ContainerSpec {
        limits: Limits {
            pid_limits: PidLimits { max: 8 },
            ..Default::default()
        },
        ..spec(h)
    };
    c.create(&s).await.expect("create");
    let out = run_output(
        &c,
        h,
        &sh("for i in $(seq 1 20); do sleep 30 & done; echo all-forked"),
        None,
    )
    .await
    .expect("run");
    assert!(
        !out.stdout_text().contains("all-forked"),
        "20 forks under pids.max=8: {out:?}"
    );
    assert!(out.stderr_text().contains("fork"), "{out:?}");
    let current = c.metrics(h).await.expect("metrics").pid_stat.current;
    assert!((1..=8).contains(&current), "pids: {current}");
    assert_eq!(c.metrics(h).await.expect("metrics").pid_stat.max, 8);
    c.destroy(h).await.expect("destroy");
    no_leaks(h, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_kill_after_ten_seconds() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = "e2e-stop-slow";
    c.create(&spec(h)).await.expect("create");
    let out = e2e::Capture::default();
    let io = ProcessIo {
        stdout: Some(Box::new(out.clone())),
        ..Default::default()
    };
    let mut p = c
        .run(
            h,
            &sh("trap '' TERM; echo ready; while true; do sleep 0.1; done"),
            io,
        )
        .await
        .expect("run");
    assert!(
        e2e::eventually(Duration::from_secs(10), || async {
            out.text().contains("ready")
        })
        .await
    );
    let started = Instant::now();
    c.stop(h, false).await.expect("stop");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9),
        "stop returned before escalating: {took:?}"
    );
    assert!(took < Duration::from_secs(20), "stop took {took:?}");
    let status = tokio::time::timeout(Duration::from_secs(5), p.wait())
        .await
        .expect("wait")
        .expect("status");
    assert_eq!(status, 137);
    c.destroy(h).await.expect("destroy");
    no_leaks(h, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_under_load_reports_137_to_clients() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = "e2e-destroy-busy";
    c.create(&spec(h)).await.expect("create");
    let mut procs = Vec::new();
    for _ in 0..3 {
        procs.push(
            c.run(h, &sh("sleep 100"), ProcessIo::default())
                .await
                .expect("run"),
        );
    }
    let mut bg = c
        .run(
            h,
            &sh("(sleep 100 &) ; (sleep 100 &); exit 0"),
            ProcessIo::default(),
        )
        .await
        .expect("bg");
    assert_eq!(bg.wait().await.expect("bg"), 0);
    // Two destroys at once: one does it, the other is refused or finds nothing.
    let (a, b) = tokio::join!(c.destroy(h), c.destroy(h));
    let outcomes = [&a, &b];
    assert!(outcomes.iter().any(|r| r.is_ok()), "{a:?} {b:?}");
    for r in outcomes {
        if let Err(e) = r {
            let ok = matches!(e.garden(), Some(GardenError::ContainerNotFound { .. }))
                || e.to_string().contains("already being destroyed");
            assert!(ok, "{e:?}");
        }
    }
    for mut p in procs {
        let r = tokio::time::timeout(Duration::from_secs(10), p.wait())
            .await
            .expect("wait after destroy");
        assert_eq!(r.expect("status"), 137);
    }
    no_leaks(h, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_creates_runs_and_destroys() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..8 {
        let c = c.clone();
        set.spawn(async move {
            let h = format!("e2e-par-{i}");
            c.create(&spec(&h)).await?;
            let out = run_output(&c, &h, &sh("hostname; echo $((6*7))"), None).await?;
            assert_eq!(out.stdout_text(), format!("{h}\n42\n"));
            c.destroy(&h).await?;
            Ok::<String, ClientError>(h)
        });
    }
    while let Some(r) = set.join_next().await {
        let h = r.expect("task").expect("cycle");
        no_leaks(&h, &g);
    }
}

/// Destroy answers before the container's file systems are shut down: gardend holds its
/// mount namespace and closes it in the background. Once that settles, nothing on the host
/// holds that namespace, so every mount of the container (the overlay over its writable
/// layer, /proc, /sys, /dev) is gone, for a user-namespace container and a privileged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_releases_the_mount_namespace() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    for (h, privileged) in [("e2e-mntns", false), ("e2e-mntns-priv", true)] {
        c.create(&ContainerSpec {
            privileged,
            ..spec(h)
        })
        .await
        .expect("create");
        let out = run_output(&c, h, &sh("echo data > /tmp/f && cat /tmp/f"), None)
            .await
            .expect("run");
        assert_eq!(out.stdout_text(), "data\n");
        let pid = g.init_pid(h);
        let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .expect("garden-init's mount namespace")
            .display()
            .to_string();
        assert!(e2e::namespace_holders(&ns).contains(&pid), "{ns}");
        c.destroy(h).await.expect("destroy");
        no_leaks(h, &g);
        let holders = e2e::namespace_holders(&ns);
        assert!(holders.is_empty(), "{h}: {ns} still held by {holders:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_containers_is_enforced() {
    e2e::require_root!();
    let g = Gardend::start_with(&["--max-containers", "2"]);
    let c = g.client();
    assert_eq!(c.capacity().await.expect("capacity").max_containers, 2);
    c.create(&spec("e2e-max-1")).await.expect("1");
    c.create(&spec("e2e-max-2")).await.expect("2");
    let err = c.create(&spec("e2e-max-3")).await.expect_err("third");
    assert_eq!(
        err.garden(),
        Some(&GardenError::generic("max containers reached"))
    );
    no_leaks("e2e-max-3", &g);
    c.destroy("e2e-max-1").await.expect("destroy");
    c.create(&spec("e2e-max-3"))
        .await
        .expect("room again after destroy");
    for h in ["e2e-max-2", "e2e-max-3"] {
        c.destroy(h).await.expect("destroy");
        no_leaks(h, &g);
    }
}

async fn sha_of(c: &Client, h: &str, path: &str) -> String {
    let out = run_output(
        c,
        h,
        &sh(&format!("sha256sum {path} | cut -d' ' -f1")),
        None,
    )
    .await
    .expect("sha");
    out.stdout_text().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_stream_both_ways_intact() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = "e2e-bigfile";
    c.create(&spec(h)).await.expect("create");
    // 8 MiB of pseudo-random bytes built in the container, streamed out and back in.
    let out = run_output(
        &c,
        h,
        &sh("head -c 8388608 /dev/urandom > /big.bin && ls -l /big.bin"),
        None,
    )
    .await
    .expect("make");
    assert_eq!(out.status, 0, "{out:?}");
    let mut r = c.stream_out(h, "", "/big.bin").await.expect("stream out");
    let mut tar_bytes = Vec::new();
    r.read_to_end(&mut tar_bytes).await.expect("read");
    assert!(tar_bytes.len() > 8 << 20);
    c.stream_in(h, "", "/copy", std::io::Cursor::new(tar_bytes))
        .await
        .expect("stream in");
    let a = sha_of(&c, h, "/big.bin").await;
    assert_eq!(a.len(), 64);
    assert_eq!(a, sha_of(&c, h, "/copy/big.bin").await);
    // As alice into a root-owned directory: permission denied.
    let mut r = c.stream_out(h, "", "/big.bin").await.expect("stream out");
    let mut tar_bytes = Vec::new();
    r.read_to_end(&mut tar_bytes).await.expect("read");
    let err = c
        .stream_in(h, "alice", "/root", std::io::Cursor::new(tar_bytes))
        .await
        .expect_err("alice in /root");
    assert!(err.to_string().contains("Permission denied"), "{err}");
    c.destroy(h).await.expect("destroy");
    no_leaks(h, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_resolves_inside() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = "e2e-hosts";
    c.create(&spec(h)).await.expect("create");
    let out = run_output(&c, h, &sh("grep -w \"$(hostname)\" /etc/hosts; grep -w localhost /etc/hosts | head -1; ip link show lo | grep -c UP"), None)
        .await
        .expect("run");
    let text = out.stdout_text();
    assert!(text.lines().next().is_some_and(|l| l.contains(h)), "{text}");
    assert!(text.contains("localhost"), "{text}");
    c.destroy(h).await.expect("destroy");
    no_leaks(h, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_handles_work() {
    e2e::require_root!();
    // Handles are opaque strings; a long one (well under NAME_MAX) must not break the
    // container's plumbing (e.g. unix socket paths, which are limited to 108 bytes).
    let g = Gardend::start();
    let c = g.client();
    let h = format!("e2e-long-{}", "0123456789".repeat(19));
    c.create(&spec(&h))
        .await
        .expect("create with a 199-character handle");
    let out = run_output(&c, &h, &sh("hostname"), None)
        .await
        .expect("run");
    assert_eq!(out.stdout_text().trim_end(), &h[h.len() - 49..]);
    c.destroy(&h).await.expect("destroy");
    no_leaks(&h, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_handles_get_a_valid_hostname() {
    e2e::require_root!();
    // The kernel limits hostnames to 64 bytes; Guardian keeps the last 49 *bytes* of the handle.
    let g = Gardend::start();
    let c = g.client();
    for h in ["ü".repeat(40), format!("e2e-{}", "€".repeat(30))] {
        c.create(&spec(&h))
            .await
            .unwrap_or_else(|e| panic!("create {h}: {e}"));
        let out = run_output(&c, &h, &sh("hostname"), None)
            .await
            .expect("run");
        let hostname = out.stdout_text().trim_end().to_string();
        assert!(
            h.ends_with(&hostname),
            "hostname {hostname:?} is not a suffix of {h:?}"
        );
        assert!(
            (47..=49).contains(&hostname.len()),
            "hostname {hostname:?} has {} bytes",
            hostname.len()
        );
        c.destroy(&h).await.expect("destroy");
        no_leaks(&h, &g);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_limited_container_leaves_nothing() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = "e2e-disk-limited";
    let s = ContainerSpec {
        limits: Limits {
            disk_limits: garden_api::DiskLimits {
                byte_hard: 64 << 20,
                ..Default::default()
            },
            ..Default::default()
        },
        ..spec(h)
    };
    c.create(&s).await.expect("create with a disk limit");
    let out = run_output(
        &c,
        h,
        &sh("head -c 1000000 /dev/zero > /f && echo ok"),
        None,
    )
    .await
    .expect("write");
    assert_eq!(out.stdout_text(), "ok\n", "{out:?}");
    c.destroy(h).await.expect("destroy");
    no_leaks(h, &g);
}
