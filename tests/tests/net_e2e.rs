//! Container networking end to end: NetIn from the host, neighbours on a static subnet, the
//! NetOut firewall with deny-networks and host access, bandwidth shaping, concurrent creates,
//! and no link or rule left after many create/destroy cycles. Traffic stays on this machine.
//!
//! Every test runs its own gardend with its own address pool and port pool, so the tests can run
//! in parallel (and next to other gardends on the host) without sharing addresses or DNAT ports.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{container_spec as spec, run_output, sh, Gardend};
use garden_api::{
    BandwidthLimits, ContainerSpec, IpRange, Limits, NetOutRule, PortRange, PROTOCOL_TCP,
};
use garden_client::{Client, ProcessIo};

/// gardend with the `n`th test pool (10.231.n.0/24) and port pool (62000 + 20 n, 20 ports).
fn gardend(n: u32, extra: &[&str]) -> Gardend {
    let pool = format!("10.231.{n}.0/24");
    let ports = (62000 + 20 * n).to_string();
    let mut flags = vec![
        "--network-pool",
        &pool,
        "--port-pool-start",
        &ports,
        "--port-pool-size",
        "20",
    ];
    flags.extend_from_slice(extra);
    Gardend::start_with(&flags)
}

/// Start a process that keeps running (a server); its output is discarded.
async fn spawn(c: &Client, h: &str, script: &str) {
    let io = ProcessIo::default();
    drop(c.run(h, &sh(script), io).await.expect("start server"));
}

/// Run a script and return (exit status, stdout + stderr).
async fn run(c: &Client, h: &str, script: &str) -> (i32, String) {
    e2e::sh_combined(c, h, script).await
}

/// Everything a TCP server at `addr` sends, retrying until it listens.
fn read_from(addr: (Ipv4Addr, u16)) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(2)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if !out.is_empty() {
                return out;
            }
        }
        assert!(Instant::now() < deadline, "nothing served at {addr:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lines of `iptables-save` mentioning `needle`.
fn rules(needle: &str) -> Vec<String> {
    matching(Command::new("iptables-save"), needle)
}

/// Links (`ip -o link`) whose line mentions `needle`.
fn links(needle: &str) -> Vec<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["-o", "link"]);
    matching(cmd, needle)
}

fn matching(mut cmd: Command, needle: &str) -> Vec<String> {
    let out = cmd.output().expect("run a host tool");
    let mut found: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(needle))
        .map(String::from)
        .collect();
    found.sort();
    found
}

/// What gardend's properties say about the names it uses.
async fn names(c: &Client, h: &str) -> (String, String) {
    let p = c.properties(h).await.expect("properties");
    let chain_prefix = p["kawasaki.iptable-prefix"].clone();
    let bridge = p["kawasaki.bridge-interface"].clone();
    // g<tag>b<subnet>: the link prefix is everything before the `b`.
    let link_prefix = bridge[..6].to_string();
    (chain_prefix, link_prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netin_reaches_a_server_in_the_container() {
    e2e::require_root!();
    let g = gardend(1, &[]);
    let c = g.client();
    let mut s = spec("net-in");
    s.netin = vec![garden_api::NetIn {
        host_port: 0,
        container_port: 9090,
    }];
    c.create(&s).await.expect("create");
    let r = c.net_in("net-in", 0, 8080).await.expect("net_in");
    assert_eq!(
        (r.host_port, r.container_port),
        (62021, 8080),
        "second port of the pool"
    );
    let info = c.info("net-in").await.expect("info");
    assert_eq!(info.host_ip, "10.231.1.1");
    assert_eq!(info.container_ip, "10.231.1.2");
    let mapped: Vec<(u32, u32)> = info
        .mapped_ports
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|m| (m.host_port, m.container_port))
        .collect();
    assert_eq!(mapped, [(62020, 9090), (62021, 8080)]);
    let props = info.properties.clone().unwrap_or_default();
    assert_eq!(props["garden.network.container-ip"], "10.231.1.2");
    assert!(props["garden.network.mapped-ports"].contains("\"HostPort\":62021"));
    for key in [
        "kawasaki.host-interface",
        "kawasaki.bridge-interface",
        "kawasaki.mtu",
    ] {
        assert!(props.contains_key(key), "{key} missing: {props:?}");
    }

    spawn(
        &c,
        "net-in",
        "while true; do echo hello-netin | nc -l -p 8080; done",
    )
    .await;
    assert_eq!(
        read_from((Ipv4Addr::LOCALHOST, 62021)).trim(),
        "hello-netin"
    );
    let external: Ipv4Addr = info.external_ip.parse().expect("external ip");
    assert_eq!(read_from((external, 62021)).trim(), "hello-netin");

    let (status, out) = run(
        &c,
        "net-in",
        "ip -4 addr show eth0; ip route; cat /etc/hosts; stat -c '%u %a' /etc/hosts /etc/resolv.conf",
    )
    .await;
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("inet 10.231.1.2/30"), "{out}");
    assert!(out.contains("default via 10.231.1.1"), "{out}");
    assert!(out.contains("10.231.1.2 net-in"), "{out}");
    assert!(out.contains("0 644\n0 644"), "{out}");

    // The container resolves its own name; only root may change the files.
    let (status, out) = run(&c, "net-in", "ping -c 1 -W 2 net-in").await;
    assert_eq!(status, 0, "{out}");
    let alice = garden_api::ProcessSpec {
        user: "alice".into(),
        ..sh("echo x >> /etc/hosts || echo x >> /etc/resolv.conf")
    };
    let out = run_output(&c, "net-in", &alice, None).await.expect("run");
    assert_ne!(out.status, 0, "alice wrote: {}", out.stderr_text());
    let (status, out) = run(
        &c,
        "net-in",
        "echo '# root' >> /etc/hosts && echo '# root' >> /etc/resolv.conf",
    )
    .await;
    assert_eq!(status, 0, "{out}");

    let m = c.metrics("net-in").await.expect("metrics");
    let stat = m.network_stat.expect("network stats");
    assert!(stat.rx_bytes > 0 && stat.tx_bytes > 0, "{stat:?}");

    let (chains, link_prefix) = names(&c, "net-in").await;
    let before = rules(&chains).len();
    c.destroy("net-in").await.expect("destroy");
    // Destroy answers before the network is reclaimed; wait for the reclamation.
    e2e::assert_no_leaks("net-in", &g);
    assert!(links(&link_prefix).is_empty(), "{:#?}", links(&link_prefix));
    assert!(
        rules(&chains).len() < before && !rules(&chains).iter().any(|l| l.contains("10.231.1.2")),
        "{:#?}",
        rules(&chains)
    );
    // The ports went back to the pool (at its end): a new container gets the next ones.
    c.create(&spec("net-in-2")).await.expect("create");
    let r = c.net_in("net-in-2", 0, 0).await.expect("net_in");
    assert_eq!((r.host_port, r.container_port), (62022, 62022));
    let err = c
        .net_in("net-in-2", 62022, 1)
        .await
        .expect_err("port taken");
    assert!(err.to_string().contains("already acquired"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_on_a_static_subnet_reach_each_other() {
    e2e::require_root!();
    let g = gardend(2, &[]);
    let c = g.client();
    let shared = |h: &str| ContainerSpec {
        network: "10.253.1.0/24".into(),
        ..spec(h)
    };
    c.create(&shared("nb-a")).await.expect("create a");
    c.create(&shared("nb-b")).await.expect("create b");
    let a = c.info("nb-a").await.expect("info").container_ip;
    let b = c.info("nb-b").await.expect("info").container_ip;
    assert_eq!((a.as_str(), b.as_str()), ("10.253.1.2", "10.253.1.3"));
    let err = c
        .create(&ContainerSpec {
            network: "10.231.2.8/30".into(),
            ..spec("nb-overlap")
        })
        .await
        .expect_err("overlaps the pool");
    assert!(err.to_string().contains("overlaps"), "{err}");

    spawn(
        &c,
        "nb-a",
        "while true; do echo from-a | nc -l -p 8080; done",
    )
    .await;
    let (status, out) = run(&c, "nb-b", "sleep 0.3; nc -w 3 10.253.1.2 8080 </dev/null").await;
    assert_eq!((status, out.trim()), (0, "from-a"));

    // Destroying a neighbour keeps the subnet working, and its IP is handed out again.
    c.destroy("nb-a").await.expect("destroy a");
    // The address is handed out again once the destroyed container's network is reclaimed.
    e2e::assert_no_leaks("nb-a", &g);
    c.create(&shared("nb-c")).await.expect("create c");
    assert_eq!(
        c.info("nb-c").await.expect("info").container_ip,
        "10.253.1.2"
    );
    let (status, out) = run(&c, "nb-c", "ping -c 1 -W 3 10.253.1.3").await;
    assert_eq!(status, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_networks_and_netout_rules() {
    e2e::require_root!();
    let host = TcpListener::bind("0.0.0.0:0").expect("host listener");
    let host_port = host.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in host.incoming().flatten() {
            let _ = s.write_all(b"from-host\n");
        }
    });
    let g = gardend(3, &["--deny-network", "0.0.0.0/0"]);
    let c = g.client();
    c.create(&spec("fw-server")).await.expect("create");
    c.create(&spec("fw-client")).await.expect("create");
    let server_ip = c.info("fw-server").await.expect("info").container_ip;
    let host_ip = c.info("fw-client").await.expect("info").host_ip;
    spawn(
        &c,
        "fw-server",
        "while true; do echo from-server | nc -l -p 8080; done",
    )
    .await;
    // The server must be up before "unreachable" means anything: reach it from the host.
    let r = c.net_in("fw-server", 0, 8080).await.expect("net_in");
    assert_eq!(
        read_from((Ipv4Addr::LOCALHOST, r.host_port as u16)).trim(),
        "from-server"
    );

    let connect = format!("nc -w 3 {server_ip} 8080 </dev/null");
    let (_, out) = run(&c, "fw-client", &connect).await;
    assert!(
        !out.contains("from-server"),
        "denied by --deny-network: {out}"
    );
    let to_host = format!("nc -w 3 {host_ip} {host_port} </dev/null");
    let (_, out) = run(&c, "fw-client", &to_host).await;
    assert!(!out.contains("from-host"), "host access is off: {out}");

    let err = c
        .net_out(
            "fw-client",
            &NetOutRule {
                ports: vec![PortRange { start: 1, end: 2 }],
                ..Default::default()
            },
        )
        .await
        .expect_err("ports with protocol all");
    assert!(
        err.to_string()
            .contains("Ports cannot be specified for Protocol ALL"),
        "{err}"
    );
    let allow = NetOutRule {
        protocol: PROTOCOL_TCP,
        networks: vec![IpRange {
            start: server_ip.clone(),
            end: server_ip.clone(),
        }],
        ports: vec![PortRange {
            start: 8080,
            end: 8080,
        }],
        log: true,
        ..Default::default()
    };
    c.bulk_net_out("fw-client", &[allow])
        .await
        .expect("bulk_net_out");
    let (status, out) = run(&c, "fw-client", &connect).await;
    assert_eq!((status, out.trim()), (0, "from-server"));
    // The rule opened exactly that port: the host is still out of reach.
    let (_, out) = run(&c, "fw-client", &to_host).await;
    assert!(!out.contains("from-host"), "{out}");
    let p = c.properties("fw-client").await.expect("properties");
    let chain = format!(
        "{}{}",
        p["kawasaki.iptable-prefix"], p["kawasaki.iptable-inst"]
    );
    assert!(
        rules(&chain)
            .iter()
            .any(|l| l.contains("LOG") && l.contains("fw-client")),
        "logged rule: {:#?}",
        rules(&chain)
    );

    // ICMP: echo requests only once a rule lets them out.
    let ping = format!("ping -c 1 -W 2 {server_ip}");
    let (status, _) = run(&c, "fw-client", &ping).await;
    assert_ne!(status, 0, "ping got through --deny-network");
    let icmp = NetOutRule {
        protocol: garden_api::PROTOCOL_ICMP,
        icmps: Some(garden_api::IcmpControl {
            icmp_type: 8,
            code: None,
        }),
        ..Default::default()
    };
    c.net_out("fw-client", &icmp).await.expect("net_out icmp");
    let (status, out) = run(&c, "fw-client", &ping).await;
    assert_eq!(status, 0, "{out}");

    let g2 = gardend(6, &["--deny-network", "0.0.0.0/0", "--allow-host-access"]);
    let c2 = g2.client();
    c2.create(&spec("fw-host")).await.expect("create");
    let host_ip = c2.info("fw-host").await.expect("info").host_ip;
    let (status, out) = run(
        &c2,
        "fw-host",
        &format!("nc -w 3 {host_ip} {host_port} </dev/null"),
    )
    .await;
    assert_eq!((status, out.trim()), (0, "from-host"));
}

/// A tiny HTTP server on the host serving `size` bytes to every request.
fn http_server(size: usize) -> u16 {
    let l = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let head = format!("HTTP/1.0 200 OK\r\nContent-Length: {size}\r\n\r\n");
                let _ = s.write_all(head.as_bytes());
                let _ = s.write_all(&vec![b'x'; size]);
            });
        }
    });
    port
}

/// A host server that reads exactly `size` bytes from each connection, reports how long they
/// took from the first byte to the last, and closes (which ends the sender's `nc`).
fn sink_server(size: usize) -> (u16, std::sync::mpsc::Receiver<Duration>) {
    let l = TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0;
                let mut first = None;
                while got < size {
                    match s.read(&mut buf[..(size - got).min(64 * 1024)]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            first.get_or_insert_with(Instant::now);
                            got += n;
                        }
                    }
                }
                let _ = tx.send(first.map(|t| t.elapsed()).unwrap_or_default());
            });
        }
    });
    (port, rx)
}

/// `took` = [unlimited, limited] times for 1 MiB: at 512 KiB/s that takes ~2 s (less the
/// burst); unshaped it is a matter of milliseconds.
#[track_caller]
fn assert_shaped(what: &str, took: &[Duration]) {
    assert!(
        took[1] > Duration::from_millis(1200),
        "limited {what} took {:?}",
        took[1]
    );
    assert!(
        took[0] * 4 < took[1],
        "free {what} {:?} vs limited {:?}",
        took[0],
        took[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_limit_slows_a_transfer() {
    e2e::require_root!();
    let size = 1 << 20;
    let port = http_server(size);
    let g = gardend(4, &["--allow-host-access"]);
    let c = g.client();
    let limits = BandwidthLimits {
        rate: 512 * 1024,
        burst: 64 * 1024,
    };
    let limited = ContainerSpec {
        limits: Limits {
            bandwidth_limits: limits,
            ..Default::default()
        },
        ..spec("bw-limited")
    };
    c.create(&limited).await.expect("create limited");
    c.create(&spec("bw-free")).await.expect("create free");
    assert_eq!(
        c.current_bandwidth_limits("bw-limited")
            .await
            .expect("getter"),
        limits
    );
    let mut took = Vec::new();
    for h in ["bw-free", "bw-limited"] {
        let host_ip = c.info(h).await.expect("info").host_ip;
        let script = format!("wget -q -O /tmp/got http://{host_ip}:{port}/ && wc -c < /tmp/got");
        // The free time is the best of two: it is measured around a whole Run, where one lost
        // SYN (a 1 s retransmit) is enough to look like shaping.
        let tries = if h == "bw-free" { 2 } else { 1 };
        let mut best = Duration::MAX;
        for _ in 0..tries {
            let t = Instant::now();
            let (status, out) = run(&c, h, &script).await;
            best = best.min(t.elapsed());
            assert_eq!((status, out.trim()), (0, size.to_string().as_str()), "{h}");
        }
        took.push(best);
    }
    assert_shaped("download", &took);
    // The other direction: the container sends 1 MiB to the host.
    let (sink, took_rx) = sink_server(size);
    let mut took = Vec::new();
    for h in ["bw-free", "bw-limited"] {
        let host_ip = c.info(h).await.expect("info").host_ip;
        let script =
            format!("dd if=/dev/zero bs=1024 count=1024 2>/dev/null | nc {host_ip} {sink}");
        let (status, out) = run(&c, h, &script).await;
        assert_eq!(status, 0, "{h}: {out}");
        took.push(
            took_rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the sink got everything"),
        );
    }
    assert_shaped("upload", &took);
    let err = c
        .create(&ContainerSpec {
            limits: Limits {
                bandwidth_limits: BandwidthLimits {
                    rate: 1000,
                    burst: 0,
                },
                ..Default::default()
            },
            ..spec("bw-bad")
        })
        .await
        .expect_err("rate without burst");
    assert!(err.to_string().contains("burst"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_get_distinct_addresses() {
    e2e::require_root!();
    let g = gardend(5, &[]);
    let c = g.client();
    let creates = (0..12).map(|i| {
        let c = c.clone();
        async move { c.create(&spec(&format!("cc-{i}"))).await }
    });
    for r in futures_join(creates).await {
        r.expect("create");
    }
    let mut ips = Vec::new();
    for i in 0..12 {
        ips.push(c.info(&format!("cc-{i}")).await.expect("info").container_ip);
    }
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 12, "{ips:?}");
    assert_eq!(
        c.capacity().await.expect("capacity").max_containers,
        64,
        "/24 pool = 64 /30s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaks_after_100_create_destroy_cycles() {
    e2e::require_root!();
    let g = gardend(7, &["--deny-network", "10.0.0.0/8"]);
    let c = g.client();
    c.create(&spec("probe")).await.expect("create");
    let (chains, link_prefix) = names(&c, "probe").await;
    c.destroy("probe").await.expect("destroy");
    e2e::assert_no_leaks("probe", &g);
    let baseline = rules(&chains);
    assert!(links(&link_prefix).is_empty());
    let workers = (0..4).map(|w| {
        let c = c.clone();
        async move {
            for i in 0..25 {
                let h = format!("cycle-{w}-{i}");
                let mut s = spec(&h);
                s.netin = vec![garden_api::NetIn {
                    host_port: 0,
                    container_port: 8080,
                }];
                s.netout_rules = vec![NetOutRule {
                    protocol: PROTOCOL_TCP,
                    ports: vec![PortRange { start: 80, end: 81 }],
                    ..Default::default()
                }];
                if i % 2 == 0 {
                    s.network = format!("10.253.{}.0/24", 100 + w);
                }
                c.create(&s).await?;
                c.net_out(&h, &NetOutRule::default()).await?;
                c.destroy(&h).await?;
            }
            Ok::<(), garden_client::ClientError>(())
        }
    });
    for r in futures_join(workers).await {
        r.expect("cycle");
    }
    for w in 0..4 {
        for i in 0..25 {
            e2e::assert_no_leaks(&format!("cycle-{w}-{i}"), &g);
        }
    }
    assert!(links(&link_prefix).is_empty(), "{:#?}", links(&link_prefix));
    assert_eq!(rules(&chains), baseline, "only the shared chains remain");
    // Every address and port is back: the pool is whole again.
    let mut handles = Vec::new();
    for i in 0..20 {
        let h = format!("refill-{i}");
        c.create(&spec(&h)).await.expect("create");
        c.net_in(&h, 0, 1).await.expect("a port for each");
        handles.push(h);
    }
    drop(g);
    assert!(
        rules(&chains).is_empty(),
        "gardend removed its chains on shutdown"
    );
    assert!(links(&link_prefix).is_empty());
}

/// Await all futures concurrently (no extra dependency).
async fn futures_join<F: std::future::Future + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// A gardend we start and kill ourselves (the harness only stops gracefully).
struct Raw {
    child: std::process::Child,
    port: u16,
}

impl Raw {
    fn start(dir: &std::path::Path, port: u16, cgroup_parent: &str) -> Raw {
        let log = std::fs::File::create(dir.join(format!("gardend-{port}.log"))).expect("log");
        let child = Command::new(e2e::binary("gardend"))
            .args(["--bind-ip", "127.0.0.1", "--bind-port", &port.to_string()])
            .arg("--depot")
            .arg(dir.join("depot"))
            .args([
                "--cgroup-parent",
                cgroup_parent,
                "--network-pool",
                "10.231.8.0/24",
            ])
            .args(["--port-pool-start", "62160", "--port-pool-size", "20"])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn gardend");
        // Generous: the startup sweep waits for a previous run's processes to die, and the
        // host's pid 1 reaps orphans slowly; on a loaded CI machine this took over 30 s once.
        let deadline = Instant::now() + Duration::from_secs(90);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "gardend did not start; log:\n{}",
                std::fs::read_to_string(dir.join(format!("gardend-{port}.log")))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Raw { child, port }
    }

    fn client(&self) -> Client {
        Client::new(garden_client::Address::Tcp(format!(
            "127.0.0.1:{}",
            self.port
        )))
    }

    fn signal(mut self, sig: i32) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_removes_what_a_crashed_gardend_left() {
    e2e::require_root!();
    let dir = tempfile::Builder::new()
        .prefix("gardend-net-crash-")
        .tempdir()
        .expect("tmp");
    std::fs::create_dir_all(dir.path().join("depot")).expect("depot");
    let cgroup_parent = format!("garden-net-crash-{}", std::process::id());
    let g = Raw::start(dir.path(), e2e::free_port(), &cgroup_parent);
    let c = g.client();
    c.create(&spec("crashed")).await.expect("create");
    c.net_in("crashed", 0, 8080).await.expect("net_in");
    let (chains, link_prefix) = names(&c, "crashed").await;
    let ip = c.info("crashed").await.expect("info").container_ip;
    g.signal(libc::SIGKILL);
    assert!(
        rules(&chains).iter().any(|l| l.contains(&ip)),
        "the crash left the rules"
    );
    assert!(!links(&link_prefix).is_empty(), "the crash left the links");
    // The container dies too while no gardend runs: the next one cannot adopt it (a living
    // container is adopted, see garden_durable.rs) and removes its network.
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("depot/crashed/container.json")).expect("record"),
    )
    .expect("record is JSON");
    let init = record["init_pid"].as_i64().expect("init_pid") as i32;
    // SAFETY: plain kill(2) of the container's init, which the test just read from the record.
    unsafe { libc::kill(init, libc::SIGKILL) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{init}/comm"))
        .is_ok_and(|c| c.trim() == "garden-init")
        && std::fs::read_to_string(format!("/proc/{init}/stat")).is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "init {init} survived SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let g = Raw::start(dir.path(), e2e::free_port(), &cgroup_parent);
    assert!(
        !rules(&chains).iter().any(|l| l.contains(&ip)),
        "{:#?}",
        rules(&chains)
    );
    assert!(links(&link_prefix).is_empty(), "{:#?}", links(&link_prefix));
    // The address is free again.
    let c = g.client();
    c.create(&spec("after")).await.expect("create");
    assert_eq!(c.info("after").await.expect("info").container_ip, ip);
    c.destroy("after").await.expect("destroy");
    g.signal(libc::SIGTERM);
    assert!(rules(&chains).is_empty(), "{:#?}", rules(&chains));
}

/// A network namespace standing for "the outside world": a veth from the host with
/// `<net>.1/24` on the host end and `<net>.2` inside, `<net>` a documentation range the host
/// does not use. Removed on drop.
struct Outside {
    ns: String,
    net: &'static str,
}

impl Outside {
    fn new() -> Outside {
        let id = std::process::id() % 100_000;
        let ns = format!("gd-e2e-out-{id}");
        let host_if = format!("gdo{id}h");
        let routes = Command::new("ip")
            .args(["route", "show", "table", "all"])
            .output();
        let routes = String::from_utf8_lossy(&routes.expect("ip route").stdout).into_owned();
        let net = ["198.51.100", "203.0.113", "198.18.77"]
            .into_iter()
            .find(|n| !routes.contains(&format!("{n}.")))
            .expect("a documentation range unused on this host");
        let (host_addr, inside_addr) = (format!("{net}.1/24"), format!("{net}.2/24"));
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        for args in [
            vec!["netns", "add", &ns],
            vec![
                "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
            vec!["addr", "add", &host_addr, "dev", &host_if],
            vec!["link", "set", &host_if, "up"],
            vec!["-n", &ns, "addr", "add", &inside_addr, "dev", "eth0"],
            vec!["-n", &ns, "link", "set", "eth0", "up"],
        ] {
            let ok = Command::new("ip").args(&args).status().expect("ip");
            assert!(ok.success(), "ip {args:?}");
        }
        Outside { ns, net }
    }

    /// A TCP listener inside the namespace; reports the source address of the first
    /// connection.
    fn listen(&self) -> (u16, std::sync::mpsc::Receiver<Ipv4Addr>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{}", self.ns);
        let addr = self.inside();
        std::thread::spawn(move || {
            // Network namespaces are per thread: this one moves, the test's threads stay.
            let ns = std::fs::File::open(&path).expect("open netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let l = TcpListener::bind((addr, 0)).expect("bind outside");
            port_tx.send(l.local_addr().unwrap().port()).unwrap();
            if let Ok((_, std::net::SocketAddr::V4(peer))) = l.accept() {
                let _ = tx.send(*peer.ip());
            }
        });
        (port_rx.recv().expect("outside port"), rx)
    }
}

impl Outside {
    fn host(&self) -> Ipv4Addr {
        format!("{}.1", self.net).parse().expect("host address")
    }

    fn inside(&self) -> Ipv4Addr {
        format!("{}.2", self.net).parse().expect("inside address")
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// Traffic leaving the pool is masqueraded: the outside sees the host's address, both for a
/// container from the pool and for one of a static subnet outside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_traffic_is_masqueraded() {
    e2e::require_root!();
    let outside = Outside::new();
    let g = gardend(8, &[]);
    let c = g.client();
    let mut static_spec = spec("out-static");
    static_spec.network = "10.253.200.0/29".into();
    c.create(&spec("out-pool")).await.expect("create");
    c.create(&static_spec).await.expect("create static");
    for h in ["out-pool", "out-static"] {
        let (port, seen) = outside.listen();
        let script = format!("echo hi | nc -w 5 {} {port}", outside.inside());
        let (status, out) = run(&c, h, &script).await;
        assert_eq!(status, 0, "{h}: {out}");
        let source = seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the outside got a connection");
        assert_eq!(source, outside.host(), "{h}");
    }
}
