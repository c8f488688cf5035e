//! Behaviours that must match Guardian's (issue 16): what a container's processes see of
//! their OOM kills, stdio, groups, terminals and devices, and what Wait does when the
//! container's init dies.
//!
//! Tests that push a container into its memory limit take a lock so they never overlap.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use e2e::{Client, Gardend};
use garden_api::{ContainerSpec, Limits, ProcessSpec};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

use e2e::rt;

async fn sh(client: &Client, handle: &str, script: &str) -> (i32, String, String) {
    e2e::sh_root(client, handle, script, Duration::from_secs(60)).await
}

/// A process filling the container's /dev/shm (a tmpfs; /tmp is on disk) past the memory limit: the memory is not the
/// process's own, so the OOM killer's choice is by score, and it must never be garden-init.
#[test]
fn oom_kills_the_process_never_init() {
    e2e::require_root!();
    let _s = serial();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        let mut limits = Limits::default();
        limits.memory_limits.limit_in_bytes = 32 << 20;
        c.create(&ContainerSpec {
            handle: "oom-init".into(),
            limits,
            ..Default::default()
        })
        .await
        .unwrap();
        let started = Instant::now();
        let (status, _, stderr) = sh(
            &c,
            "oom-init",
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=60 2>/dev/null",
        )
        .await;
        assert_eq!(status, 137, "the filler is OOM-killed; stderr: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(30));
        let events = c.info("oom-init").await.unwrap().events.unwrap_or_default();
        assert!(
            events.iter().any(|e| e == "Out of memory"),
            "events: {events:?}"
        );
        // init survived: the container still runs processes.
        let (status, out, err) = sh(&c, "oom-init", "rm -f /dev/shm/fill; echo alive").await;
        assert_eq!((status, out.as_str()), (0, "alive\n"), "stderr: {err}");
        c.destroy("oom-init").await.unwrap();
    });
    e2e::assert_no_leaks("oom-init", &g);
}

/// If garden-init dies anyway, every pending Wait ends at once (with an error), and the
/// container can still be destroyed.
#[test]
fn wait_returns_when_init_dies() {
    e2e::require_root!();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        c.create(&e2e::container_spec("init-dies")).await.unwrap();
        let io = garden_client::ProcessIo::default();
        let spec = ProcessSpec {
            path: "sleep".into(),
            args: vec!["1000".into()],
            ..Default::default()
        };
        let mut p = c.run("init-dies", &spec, io).await.unwrap();
        let mut attached = c
            .attach("init-dies", p.id(), garden_client::ProcessIo::default())
            .await
            .unwrap();
        let pid = g.init_pid("init-dies");
        // SAFETY: kill(2) on a pid gardend recorded for this test's own container.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        let started = Instant::now();
        let waited = tokio::time::timeout(Duration::from_secs(10), p.wait())
            .await
            .expect("Wait returns once init is dead");
        assert!(waited.is_err(), "no exit status without init: {waited:?}");
        let attached = tokio::time::timeout(Duration::from_secs(10), attached.wait())
            .await
            .expect("an attached Wait returns too");
        assert!(attached.is_err(), "{attached:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        c.destroy("init-dies").await.unwrap();
    });
    e2e::assert_no_leaks("init-dies", &g);
}

/// `sh -c script` as `user`, optionally on a tty: (status, stdout + stderr).
async fn sh_as(c: &Client, handle: &str, user: &str, tty: bool, script: &str) -> (i32, String) {
    let spec = ProcessSpec {
        path: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        user: user.into(),
        tty: tty.then(garden_api::TtySpec::default),
        ..Default::default()
    };
    let out = e2e::run_output(c, handle, &spec, None).await.expect("run");
    (out.status, out.stdout_text() + &out.stderr_text())
}

/// 16.2 and 16.3: a user's stdio pipes are its own, and its supplementary groups are exactly
/// those /etc/group lists it in (alice: wheel), without the primary group.
#[test]
fn users_own_their_stdio_and_only_their_groups() {
    e2e::require_root!();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        c.create(&e2e::container_spec("stdio")).await.unwrap();
        let (code, out) = sh_as(
            &c,
            "stdio",
            "alice",
            false,
            "echo hi > /dev/stdout && echo err > /dev/stderr && stat -L -c '%u:%g' /proc/self/fd/0 /proc/self/fd/1",
        )
        .await;
        assert_eq!((code, out.as_str()), (0, "hi\n1000:1000\n1000:1000\nerr\n"));
        let (code, out) = sh_as(&c, "stdio", "alice", false, "grep ^Groups: /proc/self/status").await;
        assert_eq!((code, out.trim_end()), (0, "Groups:\t10"));
        let (code, out) = sh_as(&c, "stdio", "root", false, "grep ^Groups: /proc/self/status").await;
        assert_eq!((code, out.trim_end()), (0, "Groups:"));
        c.destroy("stdio").await.unwrap();
    });
    e2e::assert_no_leaks("stdio", &g);
}

/// 16.4 and 16.5: devpts gives terminals to the tty group, /dev/shm is a `tmpfs`, and the
/// host's firmware and kernel internals are masked; only the standard devices may be opened.
#[test]
fn mounts_and_devices_look_like_guardians() {
    e2e::require_root!();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        c.create(&e2e::container_spec("mounts")).await.unwrap();
        let (code, out) = sh_as(&c, "mounts", "root", false, "cat /proc/mounts").await;
        assert_eq!(code, 0);
        let devpts = out.lines().find(|l| l.contains(" /dev/pts ")).unwrap();
        for opt in ["gid=5", "mode=620", "ptmxmode=666"] {
            assert!(devpts.contains(opt), "{devpts}");
        }
        assert!(out.lines().any(|l| l.starts_with("tmpfs /dev/shm tmpfs ")), "{out}");
        let (code, out) = sh_as(&c, "mounts", "alice", true, "stat -c '%u:%g %a' $(tty)").await;
        assert_eq!((code, out.trim_end()), (0, "1000:5 620"));
        let (code, out) = sh_as(
            &c,
            "mounts",
            "root",
            false,
            "ls -A /sys/firmware; cat /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug 2>/dev/null | wc -c",
        )
        .await;
        assert_eq!((code, out.as_str()), (0, "0\n"), "{out}");
        for (user, path) in [("root", "/proc/sys/kernel/hostname"), ("root", "/proc/sysrq-trigger")] {
            let (code, _) = sh_as(&c, "mounts", user, false, &format!("echo x > {path}")).await;
            assert_ne!(code, 0, "{path} is writable");
        }
        let (code, out) = sh_as(
            &c,
            "mounts",
            "root",
            false,
            "test -e /dev/fuse && echo fuse; head -c 4 /dev/urandom | wc -c; echo ok > /dev/null && echo null",
        )
        .await;
        assert_eq!((code, out.as_str()), (0, "4\nnull\n"));
        let v1_devices = std::path::Path::new("/sys/fs/cgroup/devices")
            .join(&g.cgroup_parent)
            .join("mounts/devices.list");
        if v1_devices.exists() {
            let list = std::fs::read_to_string(&v1_devices).unwrap();
            assert!(!list.contains("a *:* rwm"), "{list}");
            for rule in ["c 1:3 rwm", "c 1:9 rwm", "c 136:* rwm", "c 10:229 rwm"] {
                assert!(list.contains(rule), "{list}");
            }
        }
        c.destroy("mounts").await.unwrap();
    });
    e2e::assert_no_leaks("mounts", &g);
}

/// 16.8: privileged containers have /dev/fuse.
#[test]
fn privileged_containers_have_fuse() {
    e2e::require_root!();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        c.create(&ContainerSpec {
            handle: "fuse".into(),
            privileged: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let (code, out) = sh_as(&c, "fuse", "root", false, "stat -c '%t:%T %a' /dev/fuse").await;
        assert_eq!((code, out.trim_end()), (0, "a:e5 666"));
        c.destroy("fuse").await.unwrap();
    });
    e2e::assert_no_leaks("fuse", &g);
}
