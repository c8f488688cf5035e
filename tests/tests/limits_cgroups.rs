//! Resource limits against the real kernel: memory (OOM kill + event), pids (fork bomb),
//! cpu shares / quota in the cgroup files, metrics after work, bulk endpoints.
//!
//! Each test starts its own gardend; a lock keeps them one at a time (memory pressure and
//! fork bombs should not overlap with other tests of this binary).

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use e2e::{Client, Gardend};
use garden_api::{ContainerSpec, Limits};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `sh -c script` as root; (exit status, stdout, stderr).
async fn sh(client: &Client, handle: &str, script: &str) -> (i32, String, String) {
    e2e::sh_root(client, handle, script, Duration::from_secs(120)).await
}

fn spec(handle: &str, limits: Limits) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        limits,
        ..Default::default()
    }
}

use e2e::rt;

/// The v1 controller directory of a container, or the v2 one.
fn cgroup_file(g: &Gardend, controller: &str, handle: &str, file: &str) -> PathBuf {
    let v1 = PathBuf::from("/sys/fs/cgroup")
        .join(controller)
        .join(&g.cgroup_parent)
        .join(handle);
    if v1.exists() {
        v1.join(file)
    } else {
        PathBuf::from("/sys/fs/cgroup")
            .join(&g.cgroup_parent)
            .join(handle)
            .join(file)
    }
}

fn is_v2() -> bool {
    !PathBuf::from("/sys/fs/cgroup/memory").exists()
}

#[test]
fn memory_limit_oom_kills_and_records_event() {
    e2e::require_root!();
    let _s = serial();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        let mut limits = Limits::default();
        limits.memory_limits.limit_in_bytes = 64 << 20;
        c.create(&spec("oom", limits)).await.unwrap();
        c.create(&spec("neighbour", Limits::default()))
            .await
            .unwrap();
        assert_eq!(
            c.current_memory_limits("oom").await.unwrap().limit_in_bytes,
            64 << 20
        );
        let limit_file = if is_v2() {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        let set = std::fs::read_to_string(cgroup_file(&g, "memory", "oom", limit_file)).unwrap();
        assert_eq!(set.trim(), (64u64 << 20).to_string());

        assert_eq!(
            c.info("oom").await.unwrap().events,
            None,
            "no event before any OOM"
        );
        // tail keeps the whole newline-free input in memory: 200 MiB > 64 MiB.
        let (status, _, stderr) = sh(&c, "oom", "head -c 200m /dev/zero | tail >/dev/null").await;
        assert_ne!(status, 0, "the allocation must be killed; stderr: {stderr}");

        let events = c.info("oom").await.unwrap().events.unwrap_or_default();
        assert!(
            events.iter().any(|e| e == "Out of memory"),
            "events: {events:?}"
        );
        // The container stays usable, and the neighbour never saw the OOM.
        assert_eq!(
            sh(&c, "oom", "exit 7").await.0,
            7,
            "runs processes after the OOM"
        );
        let (status, _, stderr) =
            sh(&c, "neighbour", "head -c 100m /dev/zero | tail >/dev/null").await;
        assert_eq!(
            status, 0,
            "the neighbour allocates 100 MiB freely: {stderr}"
        );
        assert_eq!(c.info("neighbour").await.unwrap().events, None);
        c.destroy("oom").await.unwrap();
        c.destroy("neighbour").await.unwrap();
    });
    for h in ["oom", "neighbour"] {
        e2e::assert_no_leaks(h, &g);
    }
}

#[test]
fn pid_limit_contains_a_fork_bomb() {
    e2e::require_root!();
    let _s = serial();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        let mut limits = Limits::default();
        limits.pid_limits.max = 50;
        c.create(&spec("bomb", limits)).await.unwrap();
        c.create(&spec("free", Limits::default())).await.unwrap();
        let set = std::fs::read_to_string(cgroup_file(&g, "pids", "bomb", "pids.max")).unwrap();
        assert_eq!(set.trim(), "50");

        // 100 sleepers against a cap of 50 tasks: the shell runs out of pids.
        let (_, _, stderr) = sh(
            &c,
            "bomb",
            "for i in $(seq 1 100); do sleep 30 & done; echo spawned",
        )
        .await;
        assert!(stderr.contains("can't fork"), "stderr: {stderr}");
        let m = c.metrics("bomb").await.unwrap();
        assert_eq!(m.pid_stat.max, 50);
        assert!(
            m.pid_stat.current > 0 && m.pid_stat.current <= 50,
            "pids: {:?}",
            m.pid_stat
        );

        // The host and other containers are fine, and an unlimited container reports Max 0.
        c.ping().await.unwrap();
        let (status, out, _) = sh(
            &c,
            "free",
            "for i in $(seq 1 60); do sleep 2 & done; echo ok",
        )
        .await;
        assert_eq!(status, 0, "{out}");
        let m = c.metrics("free").await.unwrap();
        assert_eq!(m.pid_stat.max, 0);
        assert!(m.pid_stat.current > 50, "pids: {:?}", m.pid_stat);

        c.stop("bomb", true).await.unwrap();
        c.destroy("bomb").await.unwrap();
        c.destroy("free").await.unwrap();
    });
    e2e::assert_no_leaks("bomb", &g);
}

#[test]
fn cpu_shares_reach_the_cgroup_and_the_getter() {
    e2e::require_root!();
    let _s = serial();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        let mut limits = Limits::default();
        limits.cpu_limits.limit_in_shares = 512;
        c.create(&spec("shares", limits)).await.unwrap();
        let mut limits = Limits::default();
        limits.cpu_limits.limit_in_shares = 512;
        limits.cpu_limits.weight = 300;
        c.create(&spec("weight", limits)).await.unwrap();

        let (file, expect_shares, expect_weight) = if is_v2() {
            ("cpu.weight", "59", "39")
        } else {
            ("cpu.shares", "512", "300")
        };
        let read = |h: &str| {
            std::fs::read_to_string(cgroup_file(&g, "cpu", h, file))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(read("shares"), expect_shares);
        assert_eq!(
            read("weight"),
            expect_weight,
            "weight wins over limit_in_shares"
        );
        let got = c.current_cpu_limits("shares").await.unwrap();
        assert_eq!(
            (got.limit_in_shares.to_string(), got.weight),
            (expect_shares.to_string(), 0)
        );
        let got = c.current_cpu_limits("weight").await.unwrap();
        assert_eq!(got.limit_in_shares.to_string(), expect_weight);
        // No quota is configured: the container may use whole CPUs.
        if !is_v2() {
            let quota =
                std::fs::read_to_string(cgroup_file(&g, "cpu", "shares", "cpu.cfs_quota_us"))
                    .unwrap();
            assert_eq!(quota.trim(), "-1");
        }
    });
}

#[test]
fn cpu_quota_per_share_caps_the_container() {
    e2e::require_root!();
    let _s = serial();
    // 10 µs per share per 100 ms period: 512 shares -> 5120 µs, about 5% of one CPU.
    // 0.5% of a CPU per share: 512 shares are entitled to 2.56 CPU-ns per ns of age.
    let g = Gardend::start_with(&[
        "--cpu-quota-per-share",
        "10",
        "--cpu-entitlement-per-share",
        "0.5",
    ]);
    rt().block_on(async {
        let c = g.client();
        let mut limits = Limits::default();
        limits.cpu_limits.limit_in_shares = 512;
        c.create(&spec("capped", limits)).await.unwrap();
        c.create(&spec("unshared", Limits::default()))
            .await
            .unwrap();
        if is_v2() {
            let max = std::fs::read_to_string(cgroup_file(&g, "cpu", "capped", "cpu.max")).unwrap();
            assert_eq!(max.trim(), "5120 100000");
        } else {
            let q = std::fs::read_to_string(cgroup_file(&g, "cpu", "capped", "cpu.cfs_quota_us"))
                .unwrap();
            assert_eq!(q.trim(), "5120");
            let q = std::fs::read_to_string(cgroup_file(&g, "cpu", "unshared", "cpu.cfs_quota_us"))
                .unwrap();
            assert_eq!(q.trim(), "-1", "no shares, no quota");
        }
        // Two seconds of spinning get at most ~5% of a CPU (allow generous slack).
        let (status, _, _) = sh(&c, "capped", "timeout 2 sh -c 'while :; do :; done'; true").await;
        assert_eq!(status, 0);
        let m = c.metrics("capped").await.unwrap();
        let used = m.cpu_stat.usage;
        assert!(
            used > 0 && used < 600_000_000,
            "cpu ns used under a 5% quota: {used}"
        );
        let entitled = m.age as f64 * 2.56;
        assert!(
            (m.cpu_entitlement as f64 - entitled).abs() < entitled * 0.01,
            "entitlement {} for age {}",
            m.cpu_entitlement,
            m.age
        );
        let m = c.metrics("unshared").await.unwrap();
        assert_eq!(m.cpu_entitlement, 0, "no shares, no entitlement");
    });
}

#[test]
fn metrics_after_work_and_bulk_endpoints() {
    e2e::require_root!();
    let _s = serial();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        c.create(&spec("busy", Limits::default())).await.unwrap();
        let (status, _, _) = sh(
            &c,
            "busy",
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; head -c 8m /dev/urandom > /root.bin; \
             dd if=/dev/zero of=/data.bin bs=1M count=4 2>/dev/null; sleep 60 & true",
        )
        .await;
        assert_eq!(status, 0);
        let m = c.metrics("busy").await.unwrap();
        assert!(m.cpu_stat.usage > 0, "{:?}", m.cpu_stat);
        assert!(m.cpu_stat.user + m.cpu_stat.system > 0, "{:?}", m.cpu_stat);
        assert!(m.memory_stat.total_usage_toward_limit > 0, "{:?}", m.memory_stat);
        assert!(m.pid_stat.current >= 1, "{:?}", m.pid_stat);
        assert_eq!(m.pid_stat.max, 0);
        assert!(m.age > 0);
        assert!(m.disk_stat.exclusive_bytes_used >= 4 << 20, "{:?}", m.disk_stat);
        assert!(m.disk_stat.total_bytes_used > m.disk_stat.exclusive_bytes_used, "{:?}", m.disk_stat);
        assert!(m.disk_stat.total_inodes_used > m.disk_stat.exclusive_inodes_used, "{:?}", m.disk_stat);
        let m2 = c.metrics("busy").await.unwrap();
        assert!(m2.age > m.age);

        let handles = vec!["busy".to_string(), "missing".to_string()];
        let bulk = c.bulk_metrics(&handles).await.unwrap();
        assert!(bulk["busy"].err.is_none());
        assert!(bulk["busy"].metrics.cpu_stat.usage > 0);
        let err = bulk["missing"].err.as_ref().expect("missing handle has an error");
        assert!(err.message.contains("missing"), "{err:?}");
        let info = c.bulk_info(&handles).await.unwrap();
        assert!(info["busy"].err.is_none());
        assert_eq!(info["busy"].info.state, "active");
        assert!(info["missing"].err.as_ref().expect("error").message.contains("unknown handle: missing"));

        let cap = c.capacity().await.unwrap();
        assert!(cap.memory_in_bytes > 0 && cap.disk_in_bytes > 0 && cap.max_containers > 0, "{cap:?}");
        c.destroy("busy").await.unwrap();
    });
    e2e::assert_no_leaks("busy", &g);
}

/// garden-init builds the container's root (the overlay's work directory, /etc/hosts, mount
/// points: writes to the host's disk) before gardend puts it in the container's cgroups. The
/// page cache those writes bring in is then not charged to the container, whose memory cgroup
/// would otherwise live on after the destroy, with its kernel tables, as long as one of those
/// pages stays cached: one left behind per destroyed container.
#[test]
fn setup_charges_no_page_cache_to_the_container() {
    e2e::require_root!();
    let _s = serial();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        for (handle, privileged) in [("setup-userns", false), ("setup-privileged", true)] {
            let spec = ContainerSpec {
                handle: handle.into(),
                privileged,
                ..Default::default()
            };
            c.create(&spec).await.unwrap();
            let stat =
                std::fs::read_to_string(cgroup_file(&g, "memory", handle, "memory.stat")).unwrap();
            let field = |name: &str| {
                stat.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
            };
            // v1 counts page cache as `cache`, v2 as `file`.
            let cached = if is_v2() {
                field("file")
            } else {
                field("cache")
            };
            assert_eq!(
                cached,
                Some(0),
                "{handle}: page cache charged at create:\n{stat}"
            );
            c.destroy(handle).await.unwrap();
        }
    });
}
