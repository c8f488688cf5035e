//! Disk limits against the real kernel: a writer past `byte_hard` / `inode_hard` gets
//! ENOSPC / EDQUOT, scope total counts the image, metrics read the kernel's accounting, and
//! destroy leaves no image, mount or loop device behind.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use e2e::{Client, Gardend};
use garden_api::{
    ContainerSpec, DiskLimits, Limits, DISK_LIMIT_SCOPE_EXCLUSIVE, DISK_LIMIT_SCOPE_TOTAL,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `sh -c script` as root; (exit status, stdout, stderr).
async fn sh(client: &Client, handle: &str, script: &str) -> (i32, String, String) {
    e2e::sh_root(client, handle, script, Duration::from_secs(120)).await
}

fn disk(byte_hard: u64, inode_hard: u64, scope: u8) -> ContainerSpec {
    ContainerSpec {
        limits: Limits {
            disk_limits: DiskLimits {
                byte_hard,
                inode_hard,
                scope,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn named(handle: &str, mut spec: ContainerSpec) -> ContainerSpec {
    spec.handle = handle.into();
    spec
}

use e2e::rt;

/// Loop devices whose backing file lies under `dir`.
fn loop_devices_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return found;
    };
    for e in entries.flatten() {
        let backing = e.path().join("loop/backing_file");
        if let Ok(file) = std::fs::read_to_string(&backing) {
            if Path::new(file.trim()).starts_with(dir) {
                found.push(format!(
                    "{}: {}",
                    e.file_name().to_string_lossy(),
                    file.trim()
                ));
            }
        }
    }
    found
}

/// Mounts, images and loop devices of `handle` (waiting briefly: the loop device detaches
/// once the container's mount namespace is gone).
fn disk_leaks(g: &Gardend, handle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut found = e2e::leaks(handle, g);
        let state = g.tmp.path();
        for p in [
            state.join("disk").join(handle),
            state.join("disk").join(format!("{handle}.img")),
        ] {
            if p.exists() {
                found.push(format!("image: {}", p.display()));
            }
        }
        found.extend(
            loop_devices_under(state)
                .into_iter()
                .filter(|l| l.contains(&format!("/{handle}.img"))),
        );
        if found.is_empty() || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn byte_limit_stops_a_writer_and_metrics_follow() {
    e2e::require_root!();
    let _s = serial();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        c.create(&named(
            "bytes",
            disk(20 << 20, 0, DISK_LIMIT_SCOPE_EXCLUSIVE),
        ))
        .await
        .unwrap();
        assert_eq!(
            c.current_disk_limits("bytes").await.unwrap().byte_hard,
            20 << 20,
            "the getter echoes what was set"
        );
        let (status, stdout, stderr) =
            sh(&c, "bytes", "dd if=/dev/zero of=/big bs=1M count=30").await;
        assert_ne!(status, 0, "30 MiB into a 20 MiB limit must fail");
        assert!(
            stderr.contains("No space left") || stderr.contains("quota exceeded"),
            "status {status}, stdout {stdout:?}, stderr {stderr:?}"
        );
        let m = c.metrics("bytes").await.unwrap().disk_stat;
        assert!(
            m.exclusive_bytes_used > 18 << 20 && m.exclusive_bytes_used <= 21 << 20,
            "{m:?}"
        );
        // Freed space is usable again: the limit is on what the layer holds.
        let (status, _, stderr) = sh(
            &c,
            "bytes",
            "rm /big && dd if=/dev/zero of=/fits bs=1M count=15 2>/dev/null",
        )
        .await;
        assert_eq!(status, 0, "{stderr}");
        let m = c.metrics("bytes").await.unwrap().disk_stat;
        assert!(
            m.exclusive_bytes_used >= 15 << 20 && m.exclusive_bytes_used < 17 << 20,
            "{m:?}"
        );
        assert!(m.total_bytes_used > m.exclusive_bytes_used, "{m:?}");
        assert!(m.exclusive_inodes_used >= 1, "{m:?}");

        // A neighbour without limits is not bound by it.
        c.create(&named("unbound", ContainerSpec::default()))
            .await
            .unwrap();
        let (status, _, _) = sh(
            &c,
            "unbound",
            "dd if=/dev/zero of=/big bs=1M count=30 2>/dev/null",
        )
        .await;
        assert_eq!(status, 0);
        assert!(
            c.metrics("unbound")
                .await
                .unwrap()
                .disk_stat
                .exclusive_bytes_used
                >= 30 << 20
        );

        c.destroy("bytes").await.unwrap();
        c.destroy("unbound").await.unwrap();
    });
    assert_eq!(disk_leaks(&g, "bytes"), Vec::<String>::new());
    assert_eq!(disk_leaks(&g, "unbound"), Vec::<String>::new());
}

#[test]
fn inode_limit_stops_creating_files() {
    e2e::require_root!();
    let _s = serial();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        c.create(&named("inode-cap", disk(0, 100, DISK_LIMIT_SCOPE_EXCLUSIVE)))
            .await
            .unwrap();
        let (status, out, stderr) = sh(
            &c,
            "inode-cap",
            "mkdir /many && i=0; while [ $i -lt 300 ]; do touch /many/f$i || break; i=$((i+1)); done; echo $i",
        )
        .await;
        assert_eq!(status, 0, "{stderr}");
        let made: u64 = out.trim().parse().expect("count");
        assert!(
            (80..=130).contains(&made),
            "created {made} files under a 100-inode limit; stderr: {stderr}"
        );
        assert!(stderr.contains("No space left") || stderr.contains("quota exceeded"), "{stderr}");
        let m = c.metrics("inode-cap").await.unwrap().disk_stat;
        assert!(m.exclusive_inodes_used >= made, "{m:?}");
        c.destroy("inode-cap").await.unwrap();
    });
    assert_eq!(disk_leaks(&g, "inode-cap"), Vec::<String>::new());
}

#[test]
fn total_scope_counts_the_image() {
    e2e::require_root!();
    let _s = serial();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        // Far below any rootfs: Create fails, saying why, and leaves nothing behind.
        let err = c
            .create(&named("tiny", disk(64 << 10, 0, DISK_LIMIT_SCOPE_TOTAL)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("image"), "{err}");
        assert!(c.list(&[]).await.unwrap().is_empty());

        c.create(&named("total", disk(30 << 20, 0, DISK_LIMIT_SCOPE_TOTAL)))
            .await
            .unwrap();
        c.create(&named(
            "exclusive",
            disk(30 << 20, 0, DISK_LIMIT_SCOPE_EXCLUSIVE),
        ))
        .await
        .unwrap();
        let write = "dd if=/dev/zero of=/f bs=1M count=40 2>/dev/null; true";
        sh(&c, "total", write).await;
        sh(&c, "exclusive", write).await;
        let total = c.metrics("total").await.unwrap().disk_stat;
        let exclusive = c.metrics("exclusive").await.unwrap().disk_stat;
        let image = total.total_bytes_used - total.exclusive_bytes_used;
        assert!(image > 0, "{total:?}");
        // Under scope total, image + writes stay within the limit; exclusive gets it all.
        assert!(
            total.total_bytes_used <= (30 << 20) + (512 << 10),
            "{total:?}"
        );
        assert!(
            exclusive.exclusive_bytes_used > total.exclusive_bytes_used + image / 2,
            "exclusive {exclusive:?} vs total {total:?}"
        );
    });
    assert_eq!(disk_leaks(&g, "tiny"), Vec::<String>::new());
}

#[test]
fn nothing_is_left_after_destroy_or_shutdown() {
    e2e::require_root!();
    let _s = serial();
    let mut g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        for h in ["leak-a", "leak-b"] {
            c.create(&named(h, disk(10 << 20, 1000, DISK_LIMIT_SCOPE_EXCLUSIVE)))
                .await
                .unwrap();
            sh(&c, h, "echo data > /file").await;
        }
        assert_eq!(
            loop_devices_under(g.tmp.path()).len(),
            2,
            "one image per limited container"
        );
        c.destroy("leak-a").await.unwrap();
    });
    assert_eq!(disk_leaks(&g, "leak-a"), Vec::<String>::new());
    // Containers gardend's drop destroys, and gardend's own shutdown, leave nothing either.
    let dir = g.tmp.path().to_path_buf();
    rt().block_on(async { g.client().destroy("leak-b").await.unwrap() });
    g.stop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !loop_devices_under(&dir).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(loop_devices_under(&dir), Vec::<String>::new());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&*dir.to_string_lossy()), "{mounts}");
}

/// /tmp is part of the writable layer, so the disk limit covers it (a tmpfs would escape it
/// and take host memory instead); it stays world-writable and sticky, owned by container
/// root, in unprivileged and privileged containers alike.
#[test]
fn tmp_is_under_the_disk_limit() {
    e2e::require_root!();
    let _s = serial();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        c.create(&named(
            "tmp-cap",
            disk(100 << 20, 0, DISK_LIMIT_SCOPE_EXCLUSIVE),
        ))
        .await
        .unwrap();
        let (status, stdout, stderr) =
            sh(&c, "tmp-cap", "dd if=/dev/zero of=/tmp/big bs=1M count=300").await;
        assert_ne!(
            status, 0,
            "300 MiB into /tmp under a 100 MiB limit must fail"
        );
        assert!(
            stderr.contains("No space left") || stderr.contains("quota exceeded"),
            "status {status}, stdout {stdout:?}, stderr {stderr:?}"
        );
        let m = c.metrics("tmp-cap").await.unwrap().disk_stat;
        assert!(
            m.exclusive_bytes_used > 90 << 20 && m.exclusive_bytes_used <= 101 << 20,
            "/tmp's bytes count against the layer: {m:?}"
        );
        let (_, mounts, _) = sh(&c, "tmp-cap", "cat /proc/self/mountinfo").await;
        assert!(
            !mounts
                .lines()
                .any(|l| l.split_whitespace().nth(4) == Some("/tmp")),
            "/tmp must not be a mount of its own: {mounts}"
        );

        let privileged = ContainerSpec {
            privileged: true,
            ..named("tmp-priv", ContainerSpec::default())
        };
        c.create(&privileged).await.unwrap();
        for h in ["tmp-cap", "tmp-priv"] {
            let (status, out, err) = sh(&c, h, "stat -c '%a %u %g' /tmp").await;
            assert_eq!((status, out.trim()), (0, "1777 0 0"), "{h}: {err}");
            // An unprivileged user can write there and cannot remove root's files.
            let spec = garden_api::ProcessSpec {
                path: "sh".into(),
                args: vec![
                    "-c".into(),
                    "echo mine > /tmp/user-file && cat /tmp/user-file && rm -f /tmp/root-file; \
                     test -e /tmp/root-file && echo kept"
                        .into(),
                ],
                user: "alice".into(),
                ..Default::default()
            };
            sh(&c, h, "echo root > /tmp/root-file").await;
            let out = e2e::run_output(&c, h, &spec, None).await.unwrap();
            assert_eq!(out.stdout_text(), "mine\nkept\n", "{h}: {out:?}");
        }
        c.destroy("tmp-cap").await.unwrap();
        c.destroy("tmp-priv").await.unwrap();
    });
    assert_eq!(disk_leaks(&g, "tmp-cap"), Vec::<String>::new());
    assert_eq!(disk_leaks(&g, "tmp-priv"), Vec::<String>::new());
}

/// The XFS store asked for with `--disk-store-size`: where it works, Capacity is the store's
/// size; where it cannot (this host's kernel has no XFS quota support), gardend says so at
/// start, reports the fallback in /metrics and the fallback's real capacity in Capacity, and
/// still refuses limits beyond it.
#[test]
fn the_disk_backend_in_use_is_reported_truthfully() {
    e2e::require_root!();
    let _s = serial();
    let debug_port = e2e::free_port().to_string();
    let g = Gardend::start_with(&["--disk-store-size", "1G", "--debug-bind-port", &debug_port]);
    rt().block_on(async {
        let (status, metrics) =
            e2e::agent::http_get(&format!("127.0.0.1:{debug_port}"), "/metrics")
                .await
                .expect("scrape");
        assert_eq!(status, 200);
        let line = metrics
            .lines()
            .find(|l| l.starts_with("garden_disk_backend{"))
            .unwrap_or_else(|| panic!("no garden_disk_backend in\n{metrics}"));
        assert!(
            line.contains(r#"wanted="xfs""#) && line.ends_with(" 1"),
            "{line}"
        );
        let capacity = g.client().capacity().await.unwrap();
        let reported: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("garden_disk_capacity_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .expect("garden_disk_capacity_bytes");
        assert_eq!(capacity.disk_in_bytes, reported);
        assert_eq!(capacity.schedulable_disk_in_bytes, reported);
        if line.contains(r#"backend="xfs""#) {
            assert!(reported <= 1 << 30 && reported > 900 << 20, "{reported}");
        } else {
            assert!(line.contains(r#"backend="images""#), "{line}");
            let log = g.log();
            assert!(
                log.contains("XFS quota store unavailable") && log.contains("NOT in effect"),
                "the fallback is loud: {log}"
            );
            let fs = nix::sys::statvfs::statvfs(g.tmp.path()).unwrap();
            assert_eq!(reported, fs.blocks() * fs.fragment_size());
        }
        let err = g
            .client()
            .create(&named(
                "too-big",
                disk(reported + (1 << 30), 0, DISK_LIMIT_SCOPE_EXCLUSIVE),
            ))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exceeds the"), "{err}");
    });
    assert_eq!(disk_leaks(&g, "too-big"), Vec::<String>::new());
}
