//! Warm containers (`--warm-containers N`): made ahead of demand, each claimed by one Create
//! that asks for nothing they lack, which then gets its own host name, /etc/hosts, limits and
//! NetOut rules; never handed out twice; swept after a crash and removed at shutdown.

use std::path::Path;
use std::time::Duration;

use garden_api::{ContainerSpec, Limits, MemoryLimits, NetOutRule};
use garden_client::Client;

/// Names of the warm containers' bundles in the depot (ready or being made).
fn warm_bundles(depot: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(depot)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("warm-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Waits until `n` warm containers are ready: their bundles exist and their garden-inits run
/// in their cgroups.
fn wait_warm(g: &e2e::Gardend, n: usize) -> Vec<String> {
    let ready = |g: &e2e::Gardend| {
        let names = warm_bundles(&g.depot);
        let all_up = names
            .iter()
            .all(|w| !e2e::garden_inits_in(&g.cgroup_parent, Some(w)).is_empty());
        (names.len() == n && all_up).then_some(names)
    };
    for _ in 0..1500 {
        if let Some(names) = ready(g) {
            // The network comes last: give the filler a moment to finish it.
            std::thread::sleep(Duration::from_millis(200));
            return names;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{} warm containers, wanted {n}; log:\n{}",
        warm_bundles(&g.depot).len(),
        g.log()
    );
}

fn record(g: &e2e::Gardend, handle: &str) -> serde_json::Value {
    let text = std::fs::read(g.depot.join(handle).join("container.json")).expect("record");
    serde_json::from_slice(&text).expect("record is JSON")
}

fn memory_cgroup(g: &e2e::Gardend, name: &str) -> std::path::PathBuf {
    Path::new("/sys/fs/cgroup/memory")
        .join(&g.cgroup_parent)
        .join(name)
}

async fn sh(client: &Client, handle: &str, script: &str) -> String {
    let (status, out) = e2e::sh_combined(client, handle, script).await;
    assert_eq!(status, 0, "{script}: {out}");
    out
}

#[test]
fn a_create_claims_a_warm_container_and_makes_it_its_own() {
    e2e::require_root!();
    let g = e2e::Gardend::start_with(&["--warm-containers", "2"]);
    let warm = wait_warm(&g, 2);
    let client = g.client();
    let rt = e2e::rt();
    let handle = "claimed-a";
    rt.block_on(async {
        let spec = ContainerSpec {
            handle: handle.into(),
            limits: Limits {
                memory_limits: MemoryLimits {
                    limit_in_bytes: 64 << 20,
                },
                ..Default::default()
            },
            netout_rules: vec![serde_json::from_value::<NetOutRule>(serde_json::json!({
                "protocol": 1,
                "networks": [{"start": "10.9.9.9", "end": "10.9.9.9"}],
                "ports": [{"start": 8080, "end": 8080}],
                "log": true
            }))
            .unwrap()],
            properties: [("owner".to_string(), "warm-test".to_string())].into(),
            ..Default::default()
        };
        client.create(&spec).await.expect("create");
    });
    // It was one of the warm ones: its bundle took the handle's name, its cgroup kept its own.
    let rec = record(&g, handle);
    let cgroup = rec["cgroup"]
        .as_str()
        .expect("cgroup in the record")
        .to_string();
    assert!(warm.contains(&cgroup), "{cgroup} not among {warm:?}");
    assert!(
        !g.depot.join(&cgroup).exists(),
        "the warm bundle was renamed"
    );
    let limit = std::fs::read_to_string(memory_cgroup(&g, &cgroup).join("memory.limit_in_bytes"))
        .expect("memory limit");
    assert_eq!(limit.trim(), (64u64 << 20).to_string(), "limit applied");
    let rules = std::process::Command::new("iptables-save")
        .args(["-t", "filter"])
        .output()
        .expect("iptables-save");
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules
            .lines()
            .any(|l| l.contains("10.9.9.9") && l.contains("8080") && l.contains(handle)),
        "the create's NetOut rule (logged under the handle) is in its chain"
    );
    rt.block_on(async {
        let props = client.properties(handle).await.unwrap();
        assert_eq!(props["owner"], "warm-test");
        let ip = props["garden.network.container-ip"].clone();
        assert!(!ip.is_empty());
        assert_eq!(sh(&client, handle, "hostname").await.trim(), handle);
        let hosts = sh(&client, handle, "cat /etc/hosts").await;
        assert!(
            hosts
                .lines()
                .any(|l| l.contains(&ip) && l.split_whitespace().any(|w| w == handle)),
            "/etc/hosts names the container by its handle: {hosts}"
        );
        assert!(!hosts.contains("warm-"), "{hosts}");
        // Its own process table, writable root and network, like any container.
        sh(
            &client,
            handle,
            "echo hi > /tmp/x && cat /tmp/x && ip addr show eth0 | grep -q inet",
        )
        .await;
    });
    // Another is made in its place, fresh: not one that was handed out.
    let now = wait_warm(&g, 2);
    assert!(!now.contains(&cgroup), "{now:?}");
    // Destroy leaves nothing: not under the handle, nor under the warm name.
    rt.block_on(async { client.destroy(handle).await.expect("destroy") });
    e2e::assert_no_leaks(handle, &g);
    assert!(
        e2e::eventually_blocking(Duration::from_secs(5), || !memory_cgroup(&g, &cgroup)
            .exists()),
        "cgroup {cgroup} removed"
    );
    assert!(e2e::garden_inits_in(&g.cgroup_parent, Some(&cgroup)).is_empty());
}

#[test]
fn warm_containers_go_with_a_crash_and_at_shutdown_claimed_ones_stay() {
    e2e::require_root!();
    let mut g = e2e::Gardend::start_with(&["--warm-containers", "2"]);
    wait_warm(&g, 2);
    let client = g.client();
    let rt = e2e::rt();
    rt.block_on(async { client.create(&e2e::container_spec("kept")).await.unwrap() });
    let kept_cgroup = record(&g, "kept")["cgroup"].as_str().unwrap().to_string();
    let old = wait_warm(&g, 2);

    g.kill9();
    g.restart();
    // The claimed container is adopted, found by the cgroup its record names.
    rt.block_on(async {
        assert_eq!(sh(&client, "kept", "echo alive").await.trim(), "alive");
        let m = client.bulk_metrics(&["kept".to_string()]).await.unwrap();
        let usage = m["kept"].metrics.memory_stat.total_rss;
        assert!(usage > 0, "memory read from its cgroup");
    });
    assert!(memory_cgroup(&g, &kept_cgroup).exists());
    // The previous run's warm containers are swept: processes, cgroups and bundles.
    for w in &old {
        assert!(
            e2e::eventually_blocking(Duration::from_secs(10), || {
                e2e::garden_inits_in(&g.cgroup_parent, Some(w)).is_empty()
                    && !memory_cgroup(&g, w).exists()
                    && !g.depot.join(w).exists()
            }),
            "warm container {w} of the killed gardend left behind"
        );
    }
    // The new gardend makes its own.
    let new = wait_warm(&g, 2);
    assert!(new.iter().all(|w| !old.contains(w)));

    rt.block_on(async { client.destroy("kept").await.unwrap() });
    e2e::assert_no_leaks("kept", &g);
    g.stop();
    assert!(
        warm_bundles(&g.depot).is_empty(),
        "warm bundles removed at shutdown"
    );
    assert!(
        e2e::garden_inits_in(&g.cgroup_parent, None).is_empty(),
        "no garden-init left"
    );
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(&g.cgroup_parent)
            .exists(),
        "gardend's cgroups removed with the last container"
    );
}
