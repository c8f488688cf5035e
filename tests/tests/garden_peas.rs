//! Peas: processes run with an image of their own. Their root is that image (in a mount
//! namespace of their own), everything else is the container's: network, pid, ipc, uts and
//! user namespaces, /etc/hosts and /etc/resolv.conf, and its cgroup unless the process spec
//! gives limits. A pea's rootfs goes when it exits; Destroy kills it (137) and leaves nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{garden_err, run_output, sh, Capture, Gardend};
use garden_api::{
    ContainerSpec, GardenError, ImageRef, Limits, MemoryLimits, ProcessLimits, ProcessSpec,
};
use garden_client::{Client, ProcessIo};

/// The pea image: the busybox rootfs plus `/pea-only` and a user of its own, `peauser`
/// (4321:4321), that the container's image does not have.
fn pea_image(dir: &Path) -> PathBuf {
    let root = rootfs::ensure_busybox_rootfs(&dir.join("pea-image")).expect("busybox rootfs");
    std::fs::write(root.join("pea-only"), "from the pea image\n").unwrap();
    let add = |file: &str, line: &str| {
        let path = root.join("etc").join(file);
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        text.push_str(line);
        std::fs::write(&path, text).unwrap();
    };
    add("passwd", "peauser:x:4321:4321::/home/peauser:/bin/sh\n");
    add("group", "peagroup:x:4321:\n");
    root
}

fn pea(uri: &Path, script: &str) -> ProcessSpec {
    ProcessSpec {
        image: ImageRef {
            uri: uri.display().to_string(),
            ..Default::default()
        },
        ..sh(script)
    }
}

async fn output(c: &Client, handle: &str, spec: &ProcessSpec) -> e2e::Output {
    run_output(c, handle, spec, None).await.expect("run")
}

/// Host pids of the processes in the container's pid namespace (its init's included).
fn container_pids(init: i32) -> Vec<i32> {
    let ns = |pid: i32, which: &str| std::fs::read_link(format!("/proc/{pid}/ns/{which}")).ok();
    let target = ns(init, "pid");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| target.is_some() && ns(*p, "pid") == target)
        .collect()
}

/// Every process in the container's pid namespace is in its init's mount namespace: no pea's
/// mount namespace (its root filesystem) is left.
fn no_pea_mounts(init: i32) -> Result<(), String> {
    let mnt = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let init_mnt = mnt(init);
    let other: Vec<i32> = container_pids(init)
        .into_iter()
        .filter(|p| mnt(*p).is_some() && mnt(*p) != init_mnt)
        .collect();
    if other.is_empty() {
        Ok(())
    } else {
        Err(format!("processes in another mount namespace: {other:?}"))
    }
}

/// Pea cgroups (`pea-*`) left under gardend's cgroup parent.
fn pea_cgroups(g: &Gardend) -> Vec<String> {
    let mut found = Vec::new();
    for root in [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
    ] {
        let Ok(dir) = std::fs::read_dir(Path::new(root).join(&g.cgroup_parent)) else {
            continue;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("pea-") {
                found.push(format!("{root}/{name}"));
            }
        }
    }
    found
}

/// Whether the pea bundles of `handle` are all gone.
fn pea_bundles(g: &Gardend, handle: &str) -> Vec<String> {
    std::fs::read_dir(g.depot.join(handle).join("peas"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn eventually_clean(g: &Gardend, handle: &str, init: i32) {
    let clean = e2e::eventually(Duration::from_secs(15), || async {
        no_pea_mounts(init).is_ok()
            && pea_bundles(g, handle).is_empty()
            && pea_cgroups(g).is_empty()
    })
    .await;
    assert!(
        clean,
        "pea left: {:?} bundles {:?} cgroups {:?}",
        no_pea_mounts(init),
        pea_bundles(g, handle),
        pea_cgroups(g)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pea_has_its_own_root_and_the_container_s_everything_else() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let image = pea_image(work.path());
    let g = Gardend::start();
    let c = g.client();
    let handle = c
        .create(&ContainerSpec {
            handle: "peas-share".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let init = g.init_pid(&handle);
    let ok = |o: &e2e::Output, what: &str| {
        assert_eq!(o.status, 0, "{what}: {o:?}");
        o.stdout_text()
    };
    let setup = output(
        &c,
        &handle,
        &sh(
            "echo container > /container-only; mkdir -p /www; echo served > /www/x; \
             httpd -p 127.0.0.1:8080 -h /www",
        ),
    )
    .await;
    ok(&setup, "container setup");
    let ns = "for n in net pid ipc uts user mnt; do echo $n $(readlink /proc/self/ns/$n); done";
    let in_container = ok(&output(&c, &handle, &sh(ns)).await, "container namespaces");
    let in_pea = ok(
        &output(&c, &handle, &pea(&image, ns)).await,
        "pea namespaces",
    );
    for (a, b) in in_container.lines().zip(in_pea.lines()) {
        if a.starts_with("mnt") {
            assert_ne!(a, b, "a pea has a mount namespace of its own");
        } else {
            assert_eq!(a, b, "a pea shares the container's namespace");
        }
    }

    // Its own filesystem: the image's file, not the container's.
    let files = output(
        &c,
        &handle,
        &pea(
            &image,
            "cat /pea-only; test -e /container-only && echo LEAKED; \
             stat -c '%u:%g' /pea-only /bin/busybox; id -u; id -g; pwd",
        ),
    )
    .await;
    assert_eq!(
        ok(&files, "pea files"),
        "from the pea image\n0:0\n0:0\n0\n0\n/\n",
        "image files owned by container root, default user 0:0 and dir /"
    );
    let in_container = ok(
        &output(
            &c,
            &handle,
            &sh("test -e /pea-only && echo LEAKED; cat /container-only"),
        )
        .await,
        "container files",
    );
    assert_eq!(in_container, "container\n");

    // Network: the container's listener on its loopback.
    let fetched = output(
        &c,
        &handle,
        &pea(&image, "wget -qO- http://127.0.0.1:8080/x"),
    )
    .await;
    assert_eq!(
        ok(&fetched, "pea reaches the container's listener"),
        "served\n"
    );
    // Pid namespace: the container's httpd is visible.
    let ps = ok(&output(&c, &handle, &pea(&image, "ps -o comm")).await, "ps");
    assert!(
        ps.contains("httpd"),
        "pea sees the container's processes: {ps}"
    );

    // /etc/hosts and /etc/resolv.conf are the container's.
    let etc = "cat /etc/hosts; echo ---; cat /etc/resolv.conf";
    let want = ok(&output(&c, &handle, &sh(etc)).await, "container etc");
    assert_eq!(
        ok(&output(&c, &handle, &pea(&image, etc)).await, "pea etc"),
        want
    );

    // Users from the pea's own /etc/passwd, by name and by uid:gid.
    let user = ProcessSpec {
        user: "peauser".into(),
        ..pea(&image, "id -u; id -g; echo $USER")
    };
    assert_eq!(
        ok(&output(&c, &handle, &user).await, "peauser"),
        "4321\n4321\npeauser\n"
    );
    let by_id = ProcessSpec {
        user: "1000:1001".into(),
        ..pea(&image, "id -u; id -g")
    };
    assert_eq!(
        ok(&output(&c, &handle, &by_id).await, "uid:gid"),
        "1000\n1001\n"
    );

    // Seccomp and the reduced capabilities apply to peas as to the container's processes.
    let confined = "grep -E '^(Seccomp|CapEff|CapBnd|NoNewPrivs):' /proc/self/status";
    let want = ok(
        &output(&c, &handle, &sh(confined)).await,
        "container confinement",
    );
    assert!(want.contains("Seccomp:\t2"), "{want}");
    assert_eq!(
        ok(
            &output(&c, &handle, &pea(&image, confined)).await,
            "pea confinement"
        ),
        want
    );

    // A terminal.
    let tty = ProcessSpec {
        tty: Some(garden_api::TtySpec::default()),
        ..pea(&image, "test -t 0 && test -t 1 && echo tty")
    };
    assert_eq!(ok(&output(&c, &handle, &tty).await, "pea tty"), "tty\r\n");

    // Exit code and both streams.
    let streams = output(&c, &handle, &pea(&image, "echo out; echo err >&2; exit 7")).await;
    assert_eq!(streams.status, 7);
    assert_eq!(streams.stdout_text(), "out\n");
    assert_eq!(streams.stderr_text(), "err\n");

    // Gone with its exit: no mount namespace, bundle or cgroup left.
    eventually_clean(&g, &handle, init).await;

    // A missing executable.
    let missing = ProcessSpec {
        path: "no-such-program".into(),
        args: vec![],
        ..pea(&image, "")
    };
    let err = garden_err(run_output(&c, &handle, &missing, None).await);
    assert!(
        err.to_string()
            .contains("executable file not found in $PATH"),
        "{err:?}"
    );
    eventually_clean(&g, &handle, init).await;

    // A bad image: a clean error, nothing made.
    let bad = pea(Path::new("/no/such/image"), "true");
    let err = garden_err(run_output(&c, &handle, &bad, None).await);
    assert!(matches!(err, GardenError::Generic { .. }), "{err:?}");
    let err = garden_err(
        run_output(
            &c,
            &handle,
            &pea(Path::new("docker://127.0.0.1:1/nope#x"), "true"),
            None,
        )
        .await,
    );
    assert!(err.to_string().contains("pea image"), "{err:?}");
    eventually_clean(&g, &handle, init).await;

    c.destroy(&handle).await.expect("destroy");
    let left = e2e::leaks_after(&handle, &g, Duration::from_secs(5));
    assert!(left.is_empty(), "{left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peas_in_privileged_containers() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let image = pea_image(work.path());
    let g = Gardend::start();
    let c = g.client();
    let handle = c
        .create(&ContainerSpec {
            handle: "peas-priv".into(),
            privileged: true,
            ..Default::default()
        })
        .await
        .expect("create");
    let init = g.init_pid(&handle);
    let out = output(&c, &handle, &pea(&image, "cat /pea-only; id -u")).await;
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout_text(), "from the pea image\n0\n");
    eventually_clean(&g, &handle, init).await;
    c.destroy(&handle).await.expect("destroy");
    let left = e2e::leaks_after(&handle, &g, Duration::from_secs(10));
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_metrics_and_limits_of_peas() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let image = pea_image(work.path());
    let g = Gardend::start();
    let c = g.client();
    let handle = c
        .create(&ContainerSpec {
            handle: "peas-limits".into(),
            limits: Limits {
                memory_limits: MemoryLimits {
                    limit_in_bytes: 64 << 20,
                },
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .expect("create");
    let init = g.init_pid(&handle);

    // Attach by id, and BulkMetrics by the pea's id (its own cgroup: limits {}).
    let spec = ProcessSpec {
        id: "pea-attach".into(),
        limits: Some(ProcessLimits::default()),
        ..pea(
            &image,
            "head -c 8m /dev/zero > /tmp/fill; sleep 2; echo done; exit 3",
        )
    };
    let running = c
        .run(&handle, &spec, ProcessIo::default())
        .await
        .expect("run");
    assert_eq!(running.id(), "pea-attach");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let listed = c.bulk_metrics(&["pea-attach".to_string()]).await.unwrap();
    let entry = &listed["pea-attach"];
    assert!(entry.err.is_none(), "{entry:?}");
    assert!(
        entry.metrics.memory_stat.total_usage_toward_limit > 0,
        "{entry:?}"
    );
    let out = Capture::default();
    let io = ProcessIo {
        stdin: None,
        stdout: Some(Box::new(out.clone())),
        stderr: None,
    };
    let mut attached = c.attach(&handle, "pea-attach", io).await.expect("attach");
    let status = tokio::time::timeout(Duration::from_secs(20), attached.wait())
        .await
        .expect("attach wait")
        .expect("status");
    assert_eq!(status, 3);
    assert_eq!(out.text(), "done\n");

    // Signals reach the pea's process; Stop's SIGTERM to every process too, and the pea's
    // init (which ignores it) still reports the exit.
    let mut termed = c
        .run(&handle, &pea(&image, "sleep 600"), ProcessIo::default())
        .await
        .expect("run");
    termed
        .control()
        .signal(garden_api::Signal::Terminate)
        .await
        .expect("signal");
    let status = tokio::time::timeout(Duration::from_secs(10), termed.wait())
        .await
        .expect("wait")
        .expect("status");
    assert_eq!(status, 143);
    let mut stopped = c
        .run(&handle, &pea(&image, "sleep 600"), ProcessIo::default())
        .await
        .expect("run");
    c.stop(&handle, false).await.expect("stop");
    let status = tokio::time::timeout(Duration::from_secs(15), stopped.wait())
        .await
        .expect("wait")
        .expect("status");
    assert_eq!(status, 143);
    eventually_clean(&g, &handle, init).await;

    // Memory: a pea without limits counts against the container's 64 MiB; one with its own
    // (empty = unlimited) cgroup does not.
    let hog = "head -c 200m /dev/zero | tail > /dev/null && echo survived";
    let shared = output(&c, &handle, &pea(&image, hog)).await;
    assert_ne!(
        shared.status, 0,
        "a shared pea is held to the container's limit: {shared:?}"
    );
    let own = ProcessSpec {
        limits: Some(ProcessLimits::default()),
        ..pea(&image, hog)
    };
    let own = output(&c, &handle, &own).await;
    assert_eq!(own.status, 0, "own (unlimited) cgroup: {own:?}");
    assert_eq!(own.stdout_text(), "survived\n");
    // And its own limit is enforced in a container with room.
    let limited = ProcessSpec {
        limits: Some(ProcessLimits {
            memory_limits: MemoryLimits {
                limit_in_bytes: 32 << 20,
            },
            ..Default::default()
        }),
        ..pea(
            &image,
            "head -c 48m /dev/zero | tail > /dev/null && echo survived",
        )
    };
    let limited = output(&c, &handle, &limited).await;
    assert_ne!(limited.status, 0, "its own 32 MiB limit: {limited:?}");
    eventually_clean(&g, &handle, init).await;

    c.destroy(&handle).await.expect("destroy");
    let left = e2e::leaks_after(&handle, &g, Duration::from_secs(10));
    assert!(left.is_empty(), "{left:?}");
    assert!(pea_cgroups(&g).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_kills_running_peas_and_leaves_nothing() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let image = pea_image(work.path());
    let g = Gardend::start();
    let c = g.client();
    let handle = c
        .create(&ContainerSpec {
            handle: "peas-destroy".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let shared = c
        .run(&handle, &pea(&image, "sleep 600"), ProcessIo::default())
        .await
        .expect("run shared pea");
    let own = ProcessSpec {
        limits: Some(ProcessLimits::default()),
        ..pea(&image, "sleep 600")
    };
    let own = c
        .run(&handle, &own, ProcessIo::default())
        .await
        .expect("run pea with its own cgroup");
    assert_eq!(pea_bundles(&g, &handle).len(), 2);
    assert!(
        !pea_cgroups(&g).is_empty(),
        "the pea with limits has a cgroup"
    );
    c.destroy(&handle).await.expect("destroy");
    for mut p in [shared, own] {
        let status = tokio::time::timeout(Duration::from_secs(10), p.wait())
            .await
            .expect("wait after destroy")
            .expect("status");
        assert_eq!(status, 137);
    }
    let left = e2e::leaks_after(&handle, &g, Duration::from_secs(10));
    assert!(left.is_empty(), "{left:?}");
    assert!(pea_cgroups(&g).is_empty(), "{:?}", pea_cgroups(&g));
    assert!(e2e::garden_inits_in(&g.cgroup_parent, None).is_empty());
    // The peas' writable layers went with the container's.
    assert!(
        e2e::writable_layers(&g).is_empty(),
        "{:?}",
        e2e::writable_layers(&g)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_killing_its_peas_inits_leaves_nothing_behind() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let image = pea_image(work.path());
    let g = Gardend::start();
    let c = g.client();
    let handle = c
        .create(&ContainerSpec {
            handle: "peas-hostile".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let init = g.init_pid(&handle);
    let mut peas = Vec::new();
    for limits in [None, Some(ProcessLimits::default())] {
        let spec = ProcessSpec {
            limits,
            ..pea(&image, "sleep 600 & sleep 600")
        };
        peas.push(
            c.run(&handle, &spec, ProcessIo::default())
                .await
                .expect("run pea"),
        );
    }
    // Container root sees the peas' inits in its pid namespace and kills them (pid 1, its
    // own init, ignores the signal).
    let killed = output(
        &c,
        &handle,
        &sh(
            "for p in $(pidof garden-init); do [ $p = 1 ] || kill -9 $p; done; \
             cat /proc/[0-9]*/status 2>/dev/null | grep -c '^Name:.garden-init'",
        ),
    )
    .await;
    assert_eq!(killed.status, 0, "{killed:?}");
    for mut p in peas {
        let status = tokio::time::timeout(Duration::from_secs(10), p.wait())
            .await
            .expect("wait")
            .expect("status");
        assert_eq!(status, 137);
    }
    // Their processes (orphans now) went with them: no mount namespace, cgroup or bundle.
    eventually_clean(&g, &handle, init).await;
    let ps = output(&c, &handle, &sh("ps -o comm | grep -c sleep")).await;
    assert_eq!(ps.stdout_text(), "0\n", "{ps:?}");
    c.destroy(&handle).await.expect("destroy");
    let left = e2e::leaks_after(&handle, &g, Duration::from_secs(10));
    assert!(left.is_empty(), "{left:?}");
}

/// An OCI layout (umoci) tagged `pea`: the busybox rootfs without /etc/passwd or /etc/group,
/// a marker file, and `PEA_ENV=from-config` in its config.
fn oci_pea_image(dir: &Path) -> PathBuf {
    let busybox = rootfs::ensure_busybox_rootfs(&dir.join("busybox")).expect("busybox rootfs");
    let layout = dir.join("layout");
    let img = format!("{}:pea", layout.display());
    let bundle = dir.join("bundle");
    let umoci = |args: &[&str]| {
        let out = std::process::Command::new("umoci")
            .args(args)
            .output()
            .expect("umoci (scripts/deps.sh installs it)");
        assert!(out.status.success(), "umoci {args:?}: {out:?}");
    };
    umoci(&["init", "--layout", &layout.display().to_string()]);
    umoci(&["new", "--image", &img]);
    umoci(&["unpack", "--image", &img, &bundle.display().to_string()]);
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", busybox.display()))
        .arg(bundle.join("rootfs"))
        .status()
        .expect("cp");
    assert!(copied.success());
    let root = bundle.join("rootfs");
    let _ = std::fs::remove_file(root.join("etc/passwd"));
    let _ = std::fs::remove_file(root.join("etc/group"));
    std::fs::write(root.join("oci-pea"), "layered\n").unwrap();
    umoci(&["repack", "--image", &img, &bundle.display().to_string()]);
    umoci(&[
        "config",
        "--image",
        &img,
        "--config.env",
        "PEA_ENV=from-config",
    ]);
    layout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pea_from_the_layer_store_with_bind_mounts_and_no_passwd() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let layout = oci_pea_image(work.path());
    let shared = work.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("note"), "from the host\n").unwrap();
    let g = Gardend::start();
    let c = g.client();
    let handle = c
        .create(&ContainerSpec {
            handle: "peas-oci".into(),
            env: vec!["CONTAINER_ENV=1".into()],
            ..Default::default()
        })
        .await
        .expect("create");
    let init = g.init_pid(&handle);
    let uri = PathBuf::from(format!("oci://{}#pea", layout.display()));
    let spec = ProcessSpec {
        env: vec!["SPEC_ENV=1".into()],
        bind_mounts: vec![garden_api::BindMount {
            src_path: shared.display().to_string(),
            dst_path: "/mnt/shared".into(),
            mode: garden_api::BIND_MOUNT_MODE_RO,
            ..Default::default()
        }],
        ..pea(
            &uri,
            "cat /oci-pea /mnt/shared/note; echo $PEA_ENV ${CONTAINER_ENV:-none} $SPEC_ENV; \
             touch /mnt/shared/x 2>/dev/null || echo read-only; id -u; id -g",
        )
    };
    let out = output(&c, &handle, &spec).await;
    assert_eq!(out.status, 0, "{out:?}\n{}", g.log());
    assert_eq!(
        out.stdout_text(),
        "layered\nfrom the host\nfrom-config none 1\nread-only\n0\n0\n"
    );
    assert!(
        g.log().contains("pulling layer"),
        "the layer store unpacked it"
    );
    // Without /etc/passwd, a uid:gid still works.
    let by_id = ProcessSpec {
        user: "1000:1000".into(),
        ..pea(&uri, "id -u; id -g")
    };
    let out = output(&c, &handle, &by_id).await;
    assert_eq!(
        (out.status, out.stdout_text().as_str()),
        (0, "1000\n1000\n"),
        "{out:?}"
    );
    // A second pea of the same image pulls nothing.
    let again = output(&c, &handle, &pea(&uri, "cat /oci-pea")).await;
    assert_eq!(again.stdout_text(), "layered\n");
    assert_eq!(g.log().matches("pulling layer").count(), 1, "one unpack");
    eventually_clean(&g, &handle, init).await;
    c.destroy(&handle).await.expect("destroy");
    let left = e2e::leaks_after(&handle, &g, Duration::from_secs(10));
    assert!(left.is_empty(), "{left:?}");
}

/// A restarted gardend takes running peas over like any process (attach, signal, metrics by
/// id, their own cgroups kept); a pea that finished while no gardend ran has its exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peas_outlive_a_gardend_restart() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let image = pea_image(work.path());
    let mut g = Gardend::start();
    let c = g.client();
    let handle = c
        .create(&ContainerSpec {
            handle: "peas-restart".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    let init = g.init_pid(&handle);
    let peas = [
        (
            "shared",
            None,
            "trap 'echo bye; exit 9' TERM; while true; do sleep 0.1; done",
        ),
        ("own", Some(ProcessLimits::default()), "sleep 600"),
        ("brief", None, "sleep 1; exit 5"),
    ];
    for (id, limits, script) in peas {
        let spec = ProcessSpec {
            id: id.into(),
            limits,
            ..pea(&image, script)
        };
        c.run(&handle, &spec, ProcessIo::default())
            .await
            .expect("run pea");
    }
    g.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    g.restart();
    let c = g.client();
    assert!(!pea_cgroups(&g).is_empty(), "the own cgroup is kept");
    let metrics = c.bulk_metrics(&["own".to_string()]).await.unwrap();
    assert!(metrics["own"].err.is_none(), "{metrics:?}");

    let attach = |id: &'static str| {
        let c = c.clone();
        let handle = handle.clone();
        async move {
            let out = Capture::default();
            let io = ProcessIo {
                stdin: None,
                stdout: Some(Box::new(out.clone())),
                stderr: None,
            };
            (c.attach(&handle, id, io).await.expect("attach"), out)
        }
    };
    let (mut brief, _) = attach("brief").await;
    assert_eq!(brief.wait().await.expect("status"), 5);
    let (mut shared, out) = attach("shared").await;
    shared
        .control()
        .signal(garden_api::Signal::Terminate)
        .await
        .expect("signal");
    assert_eq!(shared.wait().await.expect("status"), 9);
    assert_eq!(out.text(), "bye\n");
    let (mut own, _) = attach("own").await;
    own.control()
        .signal(garden_api::Signal::Kill)
        .await
        .expect("signal");
    assert_eq!(own.wait().await.expect("status"), 137);
    eventually_clean(&g, &handle, init).await;
    c.destroy(&handle).await.expect("destroy");
    let left = e2e::leaks_after(&handle, &g, Duration::from_secs(10));
    assert!(left.is_empty(), "{left:?}");
    assert!(e2e::garden_inits_in(&g.cgroup_parent, None).is_empty());
}
