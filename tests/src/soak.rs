//! The soak: for a while, several workers create containers, run processes, stream, and
//! destroy them, with faults mixed in (clients vanishing mid-stream, processes killed,
//! containers destroyed under running processes, malformed requests). Then it checks that
//! nothing leaked (mounts, cgroups, links, firewall chains, processes, depot dirs) and how
//! gardend's resident memory moved. Driven by the `soak` binary and by `tests/soak.rs`.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use garden_api::{ProcessSpec, Signal};
use garden_client::{Client, ProcessIo};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Gardend;

/// What a soak did and found.
#[derive(Debug, Default)]
pub struct Report {
    pub cycles: u64,
    pub faults: u64,
    /// Calls that failed where they should not have (listed in `errors`, first 20).
    pub unexpected: u64,
    pub errors: Vec<String>,
    pub leaks: Vec<String>,
    /// gardend's resident memory after the warm-up and at the end, in bytes.
    pub rss_start: u64,
    pub rss_end: u64,
    pub rss_peak: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "cycles {} faults {} unexpected errors {} leaks {}",
            self.cycles,
            self.faults,
            self.unexpected,
            self.leaks.len()
        )?;
        writeln!(
            f,
            "gardend RSS: {:.1} MiB after warm-up, {:.1} MiB at the end (peak {:.1} MiB)",
            mib(self.rss_start),
            mib(self.rss_end),
            mib(self.rss_peak)
        )?;
        for e in &self.errors {
            writeln!(f, "error: {e}")?;
        }
        for l in &self.leaks {
            writeln!(f, "leak: {l}")?;
        }
        Ok(())
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// xorshift64*: no dependency, and a run is reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// gardend's resident memory in bytes (0 when it cannot be read).
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// An output sink that accepts `budget` bytes, then fails like a closed socket: the client
/// side of a session goes away mid-stream.
struct FailAfter(u64);

impl AsyncWrite for FailAfter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.0 == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let n = (buf.len() as u64).min(self.0);
        self.0 -= n;
        Poll::Ready(Ok(n as usize))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        path: "sh".into(),
        args: vec!["-c".into(), script.into()],
        user: "root".into(),
        ..Default::default()
    }
}

fn io_to(stdout: Box<dyn AsyncWrite + Send + Unpin>) -> ProcessIo {
    ProcessIo {
        stdin: None,
        stdout: Some(stdout),
        stderr: Some(Box::new(tokio::io::sink())),
    }
}

struct Shared {
    errors: std::sync::Mutex<Vec<String>>,
    unexpected: AtomicU64,
    faults: AtomicU64,
    cycles: AtomicU64,
    peak: AtomicU64,
}

impl Shared {
    fn unexpected(&self, what: String) {
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < 20 {
            e.push(what);
        }
    }
}

/// Run the soak against `g` for `duration` with `workers` concurrent clients.
pub async fn run(g: &Gardend, duration: Duration, workers: usize, seed: u64) -> Report {
    let client = g.client();
    // Warm-up: one container through its whole life, so the baselines hold gardend's shared
    // chains and its steady memory.
    let probe = "soak-probe";
    let _ = client.destroy(probe).await;
    client
        .create(&crate::container_spec(probe))
        .await
        .expect("soak: first create");
    let props = client.properties(probe).await.expect("properties");
    let chain_prefix = props
        .get("kawasaki.iptable-prefix")
        .cloned()
        .unwrap_or_default();
    let link_prefix: String = props
        .get("kawasaki.bridge-interface")
        .map(|b| b.chars().take(6).collect())
        .unwrap_or_default();
    let mut p = client
        .run(probe, &sh("echo warm"), io_to(Box::new(tokio::io::sink())))
        .await
        .expect("soak: first run");
    let _ = p.wait().await;
    client.destroy(probe).await.expect("soak: first destroy");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let chains_before = matching(&["iptables-save"], &chain_prefix);
    let links_before = matching(&["ip", "-o", "link"], &link_prefix);
    let rss_start = rss(g.pid());

    let shared = Arc::new(Shared {
        errors: Default::default(),
        unexpected: AtomicU64::new(0),
        faults: AtomicU64::new(0),
        cycles: AtomicU64::new(0),
        peak: AtomicU64::new(rss_start),
    });
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, shared, addr) = (g.client(), shared.clone(), g.address());
        let pid = g.pid();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(w as u64 + 1)) | 1);
            let mut i = 0u64;
            let mut handles = Vec::new();
            while Instant::now() < deadline {
                let handle = format!("soak-{w}-{i}");
                i += 1;
                cycle(&client, &addr, &handle, &mut rng, &shared).await;
                handles.push(handle);
                shared.cycles.fetch_add(1, Ordering::Relaxed);
                shared.peak.fetch_max(rss(pid), Ordering::Relaxed);
            }
            handles
        }));
    }
    let mut handles = vec![probe.to_string()];
    for t in tasks {
        handles.extend(t.await.unwrap_or_default());
    }

    // Everything is destroyed: nothing of any container may be left.
    let mut leaks = Vec::new();
    match client.list(&[("garden.state".into(), "all".into())]).await {
        Ok(left) if left.is_empty() => {}
        Ok(left) => leaks.push(format!("containers still listed: {left:?}")),
        Err(e) => leaks.push(format!("list after the soak: {e}")),
    }
    for h in &handles {
        for l in crate::leaks_after(h, g, Duration::from_secs(5)) {
            leaks.push(format!("{h}: {l}"));
        }
    }
    let settle = Instant::now() + Duration::from_secs(5);
    let (chains, links) = loop {
        let chains = new_lines(&chains_before, matching(&["iptables-save"], &chain_prefix));
        let links = new_lines(&links_before, matching(&["ip", "-o", "link"], &link_prefix));
        if (chains.is_empty() && links.is_empty()) || Instant::now() > settle {
            break (chains, links);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    leaks.extend(chains.into_iter().map(|l| format!("firewall: {l}")));
    leaks.extend(links.into_iter().map(|l| format!("link: {l}")));
    for pid in crate::garden_inits_in(&g.cgroup_parent, None) {
        leaks.push(format!("garden-init {pid} still runs"));
    }
    let depot = g.depot.to_string_lossy().into_owned();
    for (pid, cmd) in crate::processes_mentioning(&depot) {
        if pid as u32 == g.pid() || is_spawner_of(pid, g.pid()) {
            continue; // gardend itself names its depot, and so does its program spawner
        }
        leaks.push(format!("process {pid} under the depot: {cmd}"));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // The depot's own tmpfs stays while gardend runs; anything under it is a container's.
    let own = format!(" {depot} ");
    for line in mountinfo.lines().filter(|l| {
        l.contains(&depot) && !(l.contains(&own) && l.contains(" - tmpfs gardend-depot "))
    }) {
        leaks.push(format!("mount: {line}"));
    }
    for layer in crate::writable_layers(g) {
        leaks.push(format!("writable layer: {layer}"));
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let parent = hierarchy.path().join(&g.cgroup_parent);
        for e in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                leaks.push(format!("cgroup: {}", e.path().display()));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(&g.depot) {
        for e in entries.flatten() {
            leaks.push(format!("depot entry: {}", e.path().display()));
        }
    }

    let errors = shared
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let rss_end = rss(g.pid());
    Report {
        cycles: shared.cycles.load(Ordering::Relaxed),
        faults: shared.faults.load(Ordering::Relaxed),
        unexpected: shared.unexpected.load(Ordering::Relaxed),
        errors,
        leaks,
        rss_start,
        rss_end,
        rss_peak: shared.peak.load(Ordering::Relaxed).max(rss_end),
    }
}

/// One container's life with one fault (or none).
async fn cycle(client: &Client, addr: &str, handle: &str, rng: &mut Rng, shared: &Shared) {
    let mut spec = crate::container_spec(handle);
    if rng.below(3) == 0 {
        spec.limits.memory_limits.limit_in_bytes = 64 << 20;
        spec.limits.pid_limits.max = 64;
    }
    if let Err(e) = client.create(&spec).await {
        shared.unexpected(format!("create {handle}: {e}"));
        return;
    }
    let fault = rng.below(7);
    if fault > 0 {
        shared.faults.fetch_add(1, Ordering::Relaxed);
    }
    match fault {
        // A clean run: output and exit status arrive whole.
        0 => {
            let out = crate::Capture::default();
            match client
                .run(
                    handle,
                    &sh("echo soak; exit 3"),
                    io_to(Box::new(out.clone())),
                )
                .await
            {
                Ok(mut p) => match p.wait().await {
                    Ok(3) if out.text() == "soak\n" => {}
                    other => shared.unexpected(format!(
                        "{handle}: clean run gave {other:?}, output {:?}",
                        out.text()
                    )),
                },
                Err(e) => shared.unexpected(format!("{handle}: run: {e}")),
            }
        }
        // The client vanishes in the middle of a flood of output.
        1 => {
            let budget = rng.below(4 << 20);
            match client
                .run(
                    handle,
                    &sh("cat /dev/zero"),
                    io_to(Box::new(FailAfter(budget))),
                )
                .await
            {
                Ok(mut p) => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), p.wait()).await;
                }
                Err(e) => shared.unexpected(format!("{handle}: run flood: {e}")),
            }
        }
        // The process is killed while a client streams it.
        2 => match client
            .run(handle, &sh("yes soak"), io_to(Box::new(tokio::io::sink())))
            .await
        {
            Ok(mut p) => {
                tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
                if let Err(e) = p.control().signal(Signal::Kill).await {
                    shared.unexpected(format!("{handle}: kill: {e}"));
                }
                match tokio::time::timeout(Duration::from_secs(10), p.wait()).await {
                    Ok(Ok(_)) => {}
                    other => shared.unexpected(format!("{handle}: wait after kill: {other:?}")),
                }
            }
            Err(e) => shared.unexpected(format!("{handle}: run yes: {e}")),
        },
        // Destroy under a running, attached process.
        3 => match client
            .run(
                handle,
                &sh("sleep 1000"),
                io_to(Box::new(tokio::io::sink())),
            )
            .await
        {
            Ok(p) => {
                tokio::time::sleep(Duration::from_millis(rng.below(100))).await;
                drop(p);
            }
            Err(e) => shared.unexpected(format!("{handle}: run sleep: {e}")),
        },
        // Malformed requests on raw connections.
        4 => {
            let bad: [&[u8]; 4] = [
                b"GARBAGE\r\n\r\n",
                b"POST /containers HTTP/1.1\r\nContent-Length: 9\r\n\r\n{\"handle\"",
                b"PUT /containers/x/files?destination=/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"GET /containers/%ff%00/info HTTP/1.1\r\n\r\n",
            ];
            let request = bad[rng.below(bad.len() as u64) as usize];
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                let _ = s.write_all(request).await;
                let mut buf = [0u8; 512];
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
                let status = String::from_utf8_lossy(&buf);
                if status.starts_with("HTTP/1.1 5") {
                    shared.unexpected(format!("{handle}: bad request answered {status:.40}"));
                }
            }
            // And one that is dropped half-way through its head.
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                let _ = s.write_all(b"GET /containers/x/in").await;
            }
        }
        // StreamOut read partly, then dropped.
        5 => match client.stream_out(handle, "root", "/bin").await {
            Ok(mut r) => {
                let mut buf = vec![0u8; 1 + rng.below(64 << 10) as usize];
                let _ = r.read(&mut buf).await;
            }
            Err(e) => shared.unexpected(format!("{handle}: stream out: {e}")),
        },
        // A process whose stdout nobody claims, left running and then killed by destroy.
        _ => match client
            .run(
                handle,
                &sh("head -c 3000000 /dev/zero; sleep 1000"),
                ProcessIo {
                    stdin: None,
                    stdout: None,
                    stderr: None,
                },
            )
            .await
        {
            Ok(p) => drop(p),
            Err(e) => shared.unexpected(format!("{handle}: run unattached: {e}")),
        },
    }
    if let Err(e) = client.destroy(handle).await {
        shared.unexpected(format!("destroy {handle}: {e}"));
    }
}

/// Output lines of `cmd` containing `needle` (none when `needle` is empty).
fn matching(cmd: &[&str], needle: &str) -> BTreeSet<String> {
    if needle.is_empty() {
        return BTreeSet::new();
    }
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains(needle))
                // Counters in iptables-save's `[packets:bytes]` change between runs.
                .map(|l| l.split(" [").next().unwrap_or(l).to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn new_lines(before: &BTreeSet<String>, after: BTreeSet<String>) -> Vec<String> {
    after.difference(before).cloned().collect()
}

/// Whether `pid` is gardend's program spawner: its child named `gardend-spawner`, a fork that
/// keeps gardend's command line and dies with it.
fn is_spawner_of(pid: i32, gardend: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The parent pid is the second field after the parenthesised command name.
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u32>().ok());
    comm.trim() == "gardend-spawner" && ppid == Some(gardend)
}
