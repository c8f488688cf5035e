//! crun and runc driven through their command lines, as a user would.
//!
//! Each peer keeps its state under a private `--root` so that nothing we do touches (or is
//! confused by) other containers on the host. crun 1.8 refuses a cgroup v1 "hybrid" host whose
//! unified hierarchy carries controllers; for it every invocation runs in a private mount
//! namespace with `/sys/fs/cgroup/unified` detached (done in `pre_exec`, so no extra process
//! is timed).

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Which OCI runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Crun,
    Runc,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Crun => "crun",
            Kind::Runc => "runc",
        }
    }
}

/// A runtime binary ready to use, with its private state directory.
#[derive(Debug, Clone)]
pub struct Peer {
    pub kind: Kind,
    pub bin: PathBuf,
    pub version: String,
    /// `--root`: where the runtime keeps container state.
    pub state: PathBuf,
    /// Detach the cgroup2 mount at /sys/fs/cgroup/unified before exec (crun on hybrid hosts).
    pub hide_unified: bool,
}

/// Look `name` up in `PATH` (plus the sbin directories root usually has).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether `/sys/fs/cgroup/unified` is a cgroup2 mount point (the hybrid layout).
pub fn hybrid_unified_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| mountinfo_has(l, "/sys/fs/cgroup/unified", "cgroup2"))
        })
        .unwrap_or(false)
}

/// Whether a mountinfo line mounts `fstype` at `mount_point`.
fn mountinfo_has(line: &str, mount_point: &str, fstype: &str) -> bool {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let Some(sep) = fields.iter().position(|f| *f == "-") else {
        return false;
    };
    fields.get(4) == Some(&mount_point) && fields.get(sep + 1) == Some(&fstype)
}

/// Runs in the forked child before exec: a private mount namespace without the unified mount.
pub fn detach_unified() -> std::io::Result<()> {
    // SAFETY: unshare(2), mount(2) and umount2(2) are plain syscalls on constant, NUL-terminated
    // strings; they allocate nothing, as required between fork and exec.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        if libc::umount2(c"/sys/fs/cgroup/unified".as_ptr(), libc::MNT_DETACH) != 0 {
            let err = std::io::Error::last_os_error();
            // EINVAL: not a mount point (any more); nothing to hide.
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// Capture of a child's stderr in an anonymous file: a pipe would keep `output()` waiting for
/// as long as a detached container inherits it.
struct ErrFile(std::fs::File);

impl ErrFile {
    fn new() -> Result<ErrFile> {
        Ok(ErrFile(
            tempfile::tempfile().context("create stderr capture file")?,
        ))
    }
    fn stdio(&self) -> Result<Stdio> {
        Ok(Stdio::from(
            self.0.try_clone().context("clone stderr capture file")?,
        ))
    }
    fn read(mut self) -> String {
        let mut s = String::new();
        let _ = self.0.rewind();
        let _ = self.0.read_to_string(&mut s);
        s.trim().to_string()
    }
}

impl Peer {
    /// Find `kind` on this host; `Err` says why it cannot be used.
    pub fn detect(kind: Kind, state_parent: &Path) -> Result<Peer> {
        let Some(bin) = which(kind.name()) else {
            bail!("{} not installed (scripts/bench-deps.sh)", kind.name());
        };
        let out = std::process::Command::new(&bin)
            .arg("--version")
            .output()
            .with_context(|| format!("run {} --version", bin.display()))?;
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let state = state_parent.join(format!("{}-state", kind.name()));
        std::fs::create_dir_all(&state).with_context(|| format!("create {}", state.display()))?;
        let hide_unified = kind == Kind::Crun && hybrid_unified_mounted();
        Ok(Peer {
            kind,
            bin,
            version,
            state,
            hide_unified,
        })
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--root")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd.kill_on_drop(true);
        if self.hide_unified {
            // SAFETY: detach_unified only makes async-signal-safe syscalls.
            unsafe {
                cmd.pre_exec(detach_unified);
            }
        }
        cmd
    }

    /// Run `args` to completion; the wall time from spawn to reaped exit.
    async fn timed(&self, args: &[&str]) -> Result<Duration> {
        let err = ErrFile::new()?;
        let mut cmd = self.command(args);
        cmd.stderr(err.stdio()?);
        let start = Instant::now();
        let status = cmd
            .status()
            .await
            .with_context(|| format!("spawn {} {}", self.name(), args.join(" ")))?;
        let elapsed = start.elapsed();
        if !status.success() {
            bail!(
                "{} {} failed ({status}): {}",
                self.name(),
                args.join(" "),
                err.read()
            );
        }
        Ok(elapsed)
    }

    /// `run` in the foreground (the runtime deletes the container when it exits).
    pub async fn run(&self, bundle: &Path, id: &str) -> Result<Duration> {
        let b = bundle.to_string_lossy();
        self.timed(&["run", "--bundle", &b, id]).await
    }

    /// `create`: the container's init waits (on exec.fifo) for `start`.
    pub async fn create(&self, bundle: &Path, id: &str) -> Result<Duration> {
        let b = bundle.to_string_lossy();
        self.timed(&["create", "--bundle", &b, id]).await
    }

    /// `run --detach`: a container left running (for `exec`).
    pub async fn run_detached(&self, bundle: &Path, id: &str) -> Result<Duration> {
        let b = bundle.to_string_lossy();
        self.timed(&["run", "--detach", "--bundle", &b, id]).await
    }

    /// `delete --force`.
    pub async fn delete(&self, id: &str) -> Result<Duration> {
        self.timed(&["delete", "--force", id]).await
    }

    /// `exec` of `args` in a running container, waiting for it to exit.
    pub async fn exec(&self, id: &str, args: &[&str]) -> Result<Duration> {
        let mut all = vec!["exec", id];
        all.extend_from_slice(args);
        self.timed(&all).await
    }

    /// `run` a bundle whose process writes to stdout; count the bytes read from the pipe.
    pub async fn run_reading_stdout(&self, bundle: &Path, id: &str) -> Result<(u64, Duration)> {
        let b = bundle.to_string_lossy();
        let err = ErrFile::new()?;
        let mut cmd = self.command(&["run", "--bundle", &b, id]);
        cmd.stdout(Stdio::piped()).stderr(err.stdio()?);
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {} run", self.name()))?;
        let mut stdout = child.stdout.take().context("child stdout")?;
        let bytes = drain(&mut stdout).await?;
        let status = child.wait().await.context("wait for runtime")?;
        let elapsed = start.elapsed();
        if !status.success() {
            bail!("{} run failed ({status}): {}", self.name(), err.read());
        }
        Ok((bytes, elapsed))
    }

    /// Ids of the containers this peer knows about in its private state dir.
    pub async fn list(&self) -> Result<Vec<String>> {
        let out = self
            .command(&["list", "--quiet"])
            .stdout(Stdio::piped())
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "{} list failed: {}",
                self.name(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// Force-delete every container left in the private state dir.
    pub async fn cleanup(&self) {
        match self.list().await {
            Ok(ids) => {
                for id in ids {
                    if let Err(e) = self.delete(&id).await {
                        tracing::warn!("cleanup of {} container {id}: {e:#}", self.name());
                    }
                }
            }
            Err(e) => tracing::warn!("cleanup: {e:#}"),
        }
    }
}

/// Read `r` to EOF, counting bytes (256 KiB reads, so the reader is not the bottleneck).
pub async fn drain<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.context("read stream")?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// Run a host command writing to stdout (the ceiling for a process's stdout); bytes and time.
pub async fn host_reading_stdout(
    program: &Path,
    args: &[&str],
    stdin: Option<&Path>,
) -> Result<(u64, Duration)> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    match stdin {
        Some(path) => {
            let f =
                std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
            cmd.stdin(Stdio::from(f));
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", program.display()))?;
    let mut stdout = child.stdout.take().context("child stdout")?;
    let bytes = drain(&mut stdout).await?;
    let status = child.wait().await.context("wait for host command")?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("{} {} failed: {status}", program.display(), args.join(" "));
    }
    Ok((bytes, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_line_for_the_unified_hierarchy() {
        let line = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        assert!(mountinfo_has(line, "/sys/fs/cgroup/unified", "cgroup2"));
        let v1 = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu";
        assert!(!mountinfo_has(v1, "/sys/fs/cgroup/unified", "cgroup2"));
        // Optional fields before the separator shift its position.
        let shared =
            "41 31 0:38 / /sys/fs/cgroup/unified rw shared:9 master:2 - cgroup2 cgroup2 rw";
        assert!(mountinfo_has(shared, "/sys/fs/cgroup/unified", "cgroup2"));
        assert!(!mountinfo_has(
            "garbage",
            "/sys/fs/cgroup/unified",
            "cgroup2"
        ));
    }
}
