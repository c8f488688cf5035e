//! A private gardend for the run: started from the same target directory as the bench binary,
//! on a free loopback port, with a temporary depot and its own cgroup parent; stopped at the end.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use garden_client::{Address, Client};
use tokio::process::{Child, Command};

/// Where gardend should be: next to the running bench binary.
pub fn default_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the bench executable")?;
    let dir = exe.parent().context("bench executable has no directory")?;
    Ok(dir.join("gardend"))
}

/// A free TCP port on 127.0.0.1 (bound then released; good enough for a private run).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0 to find a free port")?;
    Ok(l.local_addr().context("local address")?.port())
}

/// A running gardend owned by the bench.
pub struct Gardend {
    child: Option<Child>,
    pub pid: u32,
    pub port: u16,
    /// Its debug listener (`/metrics`), for [`Gardend::idle`].
    pub debug_port: u16,
    pub log: PathBuf,
    pub cgroup_parent: String,
    /// The binary and its arguments, for [`Gardend::kill_and_restart`].
    bin: PathBuf,
    args: Vec<std::ffi::OsString>,
}

impl Gardend {
    /// Start `bin` with its depot under `dir` and wait until it answers Ping.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        log_level: &str,
        extra_args: &[String],
    ) -> Result<Gardend> {
        if !bin.is_file() {
            bail!(
                "gardend not found at {} (build it first: cargo build --release --workspace --bins)",
                bin.display()
            );
        }
        let depot = dir.join("depot");
        std::fs::create_dir_all(&depot).with_context(|| format!("create {}", depot.display()))?;
        let port = free_port()?;
        let debug_port = free_port()?;
        let cgroup_parent = format!("bench-{}", std::process::id());
        let log = dir.join("gardend.log");
        std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        for a in [
            "--bind-ip",
            "127.0.0.1",
            "--bind-port",
            &port.to_string(),
            "--depot",
        ] {
            args.push(a.into());
        }
        args.push(depot.into_os_string());
        args.push(format!("--debug-bind-port={debug_port}").into());
        for a in ["--cgroup-parent", &cgroup_parent, "--log-level", log_level] {
            args.push(a.into());
        }
        // The agent scenario reaches its apps' NetIn ports on 127.0.0.1, which gardend only
        // forwards when asked to (a single-host cell, as in the e2e harness).
        args.push("--netin-loopback".into());
        args.extend(extra_args.iter().map(Into::into));
        let mut g = Gardend {
            child: None,
            pid: 0,
            port,
            debug_port,
            log,
            cgroup_parent,
            bin: bin.to_path_buf(),
            args,
        };
        g.spawn()?;
        if let Err(e) = g.wait_ready().await {
            let log = g.log_tail();
            g.stop().await;
            bail!("{e:#}; gardend log:\n{log}");
        }
        Ok(g)
    }

    /// Start the binary with the stored arguments, its output appended to the log.
    fn spawn(&mut self) -> Result<()> {
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("clone log file")?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        self.pid = child.id().context("gardend exited at once")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL gardend (its containers keep running), start it again with the same flags and
    /// wait until it answers Ping; how long that took from the new start.
    pub async fn kill_and_restart(&mut self) -> Result<Duration> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        let t = Instant::now();
        self.spawn()?;
        self.wait_ready().await?;
        Ok(t.elapsed())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("poll gardend")? {
                    bail!("gardend exited during startup ({status})");
                }
            }
            match client.ping().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => {
                    bail!("gardend did not answer Ping within 30 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// A handle for [`Idle::wait`].
    pub fn idle(&self, warm: usize) -> Idle {
        Idle {
            debug_port: self.debug_port,
            warm,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(Address::Tcp(format!("127.0.0.1:{}", self.port)))
    }

    /// The last lines of gardend's log (for error messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Destroy every container, then SIGTERM (SIGKILL after 10 s) and reap.
    pub async fn stop(&mut self) {
        let client = self.client();
        if let Ok(handles) = client.list(&[]).await {
            for h in handles {
                if let Err(e) = client.destroy(&h).await {
                    tracing::warn!("destroy {h} at shutdown: {e}");
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
            unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
            match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("gardend ignored SIGTERM for 10 s; killing it");
                    let _ = child.kill().await;
                }
            }
        }
    }
}

/// The resident set of process `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in {path}"))
}

/// Wait until no container cgroup but warm ones is left under `parent` in any hierarchy
/// (gardend reclaims destroyed containers in the background); false if some are still there
/// after `patience`.
pub async fn wait_cgroups_gone(parent: &str, patience: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + patience;
    let left = || {
        std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|h| h.path().join(parent))
            .filter_map(|p| std::fs::read_dir(p).ok())
            // gardend's warm containers (made ahead of demand) are not the destroyed ones.
            .any(|entries| {
                entries.flatten().any(|e| {
                    e.path().is_dir() && !e.file_name().to_string_lossy().starts_with("warm-")
                })
            })
    };
    while left() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}

/// Processes in every cgroup under `parent` (any hierarchy that has it: memory first) and
/// the sum of their proportional set sizes in KiB: the container side of density (each
/// container's init and whatever runs in it), shared pages counted once.
pub fn cgroup_pss(parent: &str) -> (usize, u64) {
    let Some(root) = [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(|r| Path::new(r).join(parent))
    .find(|p| p.is_dir()) else {
        return (0, 0);
    };
    let mut pids = vec![];
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    let pss = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok())
        .filter_map(|s| parse_kib_field(&s, "Pss:"))
        .sum();
    (pids.len(), pss)
}

/// Remove the cgroup parent gardend leaves in each hierarchy once its containers are gone
/// (rmdir only: a cgroup that still has tasks stays). Returns where it is still present.
pub fn remove_cgroup_parent(parent: &str) -> Vec<String> {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return vec![];
    };
    let mut left = vec![];
    for h in hierarchies.flatten() {
        let dir = h.path().join(parent);
        if !dir.is_dir() {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(&dir) {
            for c in children.flatten().filter(|c| c.path().is_dir()) {
                let _ = std::fs::remove_dir(c.path());
            }
        }
        if std::fs::remove_dir(&dir).is_err() {
            left.push(h.file_name().to_string_lossy().into_owned());
        }
    }
    left
}

/// The number of KiB after `field` in a /proc status-like text (`VmRSS:`, `Pss:`).
fn parse_kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The VmRSS figure (KiB) of a /proc/<pid>/status text.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    parse_kib_field(status, "VmRSS:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tgardend\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert_eq!(parse_vm_rss("VmRSS: lots kB\n"), None);
    }

    #[test]
    fn pss_is_read_from_smaps_rollup() {
        let rollup = "55d0-7ffe ---p 00000000 00:00 0 [rollup]\nRss:  2048 kB\nPss:  1024 kB\nPss_Anon: 512 kB\n";
        assert_eq!(parse_kib_field(rollup, "Pss:"), Some(1024));
        assert_eq!(parse_kib_field(rollup, "Swap:"), None);
    }

    #[test]
    fn no_cgroup_parent_means_no_processes() {
        assert_eq!(cgroup_pss("bench-no-such-parent-for-tests"), (0, 0));
        assert!(remove_cgroup_parent("bench-no-such-parent-for-tests").is_empty());
    }

    #[test]
    fn our_own_status_has_a_vm_rss() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}

/// Waits until gardend does nothing in the background: its warm containers all made and no
/// destroyed container still being reclaimed. Every measured round starts from there, so no
/// runtime's round pays for gardend's background work (nor gardend's round for a refill).
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    debug_port: u16,
    /// `--warm-containers`.
    warm: usize,
}

impl Idle {
    /// Poll `/metrics` (every 2 ms, 10 s at most) until gardend is idle; whether it got there.
    pub async fn wait(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(text) = self.metrics().await {
                let value = |name: &str| {
                    text.lines()
                        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
                        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                };
                let warm = value("garden_warm_containers").unwrap_or(0.0) as usize;
                let reclaiming = value("garden_reclaiming_containers").unwrap_or(0.0);
                if warm >= self.warm && reclaiming == 0.0 {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        false
    }

    async fn metrics(&self) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.debug_port)).await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        Ok(text)
    }
}
