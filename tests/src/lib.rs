//! Shared helpers for end-to-end tests: build the binaries once, start a real `gardend` on a
//! free port with a temporary depot, and check that nothing of a container is left behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use garden_client::{Address, Client};
/// Root-only tests start with `e2e::require_root!();` (see the `test-support` crate):
/// skipped unless `CELL_ROOT_TESTS=1`, failed if that is set without root.
pub use test_support::{require_root, root_tests};

pub mod agent;
pub mod raw_http;
pub mod security;
pub mod soak;

/// The target directory the test binary runs from (`target/debug`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test>-<hash> -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Path of a workspace binary, building its package once per test process so that
/// `cargo test -p e2e` works on its own (gardend also needs garden-init, from the same package).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let package = match name {
        "gardend" | "garden-init" => "garden-server",
        "gardenctl" => "gardenctl",
        "executor" => "executor",
        "bench" => "bench",
        "agent" | "cellctl" => "agent",
        other => panic!("unknown workspace binary {other}"),
    };
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(&package) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let dir = bin_dir();
        let target = dir.parent().expect("target root").to_path_buf();
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--bins", "--quiet", "-p", package])
            .env("CARGO_TARGET_DIR", &target);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p {package} --bins failed");
        built.push(package);
    }
    let path = bin_dir().join(name);
    assert!(path.exists(), "binary {} missing", path.display());
    path
}

/// A NetIn host-port range of its own (100 ports) for each gardend, so two gardends of one
/// test run never hand out the same host port (the second DNAT would steal the first's
/// traffic). Taken from 63000..65000, away from the default pool (61001) that tests naming
/// explicit ports use.
pub fn port_pool_start() -> u16 {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let slot = next.unwrap_or((std::process::id() % 20) as u16);
    *next = Some((slot + 1) % 20);
    63000 + slot * 100
}

/// A /22 of its own for each gardend, so parallel instances never hand out the same subnets
/// (their bridges would clash). Taken from 10.64.0.0/10, skipping ranges with host addresses.
pub fn network_pool() -> String {
    static USED: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let addrs = Command::new("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let seed = std::process::id().wrapping_mul(2654435761) >> 20;
    for i in 0..4096u32 {
        let index = (seed + i) % 4096;
        if used.contains(&index) {
            continue;
        }
        let (b, c) = (64 + (index >> 6), (index & 63) << 2);
        let prefix = format!("inet 10.{b}.{c}.");
        let taken = (0..4).any(|k| addrs.contains(&format!("inet 10.{b}.{}.", c + k)));
        if taken || addrs.contains(&prefix) {
            continue;
        }
        used.push(index);
        return format!("10.{b}.{c}.0/22");
    }
    panic!("no free /22 left in 10.64.0.0/10");
}

/// A two-worker runtime for plain `#[test]` functions (those that serialise on a lock or
/// must drop gardend outside the runtime).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running gardend with its own depot and cgroup parent; killed (and its containers
/// destroyed) on drop.
pub struct Gardend {
    child: Option<Child>,
    pub port: u16,
    pub tmp: tempfile::TempDir,
    pub depot: PathBuf,
    /// Name of the cgroup gardend owns at each hierarchy's root.
    pub cgroup_parent: String,
    /// gardend's arguments, for [`Gardend::restart`].
    args: Vec<std::ffi::OsString>,
    /// Killed by [`Gardend::kill9`] and not started again: drop restarts it to clean up.
    killed: bool,
}

impl Gardend {
    /// Start gardend on a free loopback port with default flags.
    pub fn start() -> Gardend {
        Gardend::start_with(&[])
    }

    /// Start gardend with extra flags (e.g. `["--default-grace-time", "1s"]`).
    pub fn start_with(extra: &[&str]) -> Gardend {
        assert!(
            root_tests(),
            "gardend needs root: begin the test with e2e::require_root!()"
        );
        let tmp = tempfile::Builder::new()
            .prefix("gardend-e2e-")
            .tempdir()
            .expect("tempdir");
        let depot = tmp.path().join("depot");
        std::fs::create_dir_all(&depot).expect("depot");
        let port = free_port();
        let cgroup_parent = format!("garden-e2e-{port}");
        let mut cmd = Command::new(binary("gardend"));
        cmd.args(["--bind-ip", "127.0.0.1", "--bind-port", &port.to_string()])
            .arg("--depot")
            .arg(&depot)
            .args(["--cgroup-parent", &cgroup_parent, "--log-level", "debug"])
            .args(extra);
        if let Ok(rootfs) = std::env::var("GARDEN_TEST_ROOTFS") {
            cmd.args(["--default-rootfs", &rootfs]);
        }
        if !extra.contains(&"--network-pool") {
            cmd.args(["--network-pool", &network_pool()]);
        }
        if !extra.contains(&"--port-pool-start") {
            let start = port_pool_start().to_string();
            cmd.args(["--port-pool-start", &start, "--port-pool-size", "100"]);
        }
        // Tests (the agent's above all) reach NetIn ports on 127.0.0.1, which gardend only
        // forwards when asked to.
        if !extra.iter().any(|a| a.starts_with("--netin-loopback")) {
            cmd.arg("--netin-loopback");
        }
        let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut g = Gardend {
            child: None,
            port,
            tmp,
            depot,
            cgroup_parent,
            args,
            killed: false,
        };
        g.spawn();
        g.wait_ready();
        g
    }

    /// Start gardend with the arguments it was first started with, its output appended to
    /// the log.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("gardend.log"))
            .expect("log file");
        let child = Command::new(binary("gardend"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn gardend");
        self.child = Some(child);
        self.killed = false;
    }

    /// gardend's pid (0 when it is not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The host pid of `handle`'s garden-init, from the container's record in the depot (in
    /// a user namespace garden-init's argument is a descriptor, not the bundle's path).
    pub fn init_pid(&self, handle: &str) -> i32 {
        let path = self.depot.join(handle).join("container.json");
        let record = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("no record for {handle} at {}: {e}", path.display()));
        let record: serde_json::Value = serde_json::from_slice(&record).expect("record is JSON");
        record["init_pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("no init_pid in {handle}'s record: {record}")) as i32
    }

    /// gardend's arguments (to start another one on the same depot, say).
    pub fn args(&self) -> &[std::ffi::OsString] {
        &self.args
    }

    /// SIGKILL gardend: it cleans up nothing. Its containers keep running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.killed = true;
        }
    }

    /// Start gardend again with the same flags (after [`Gardend::kill9`] or
    /// [`Gardend::stop`]) and wait until it listens.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gardend did not listen within 30s; log:\n{}", self.log());
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> Client {
        Client::new(Address::Tcp(self.address()))
    }

    /// gardend's log so far (stderr and stdout).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("gardend.log")).unwrap_or_default()
    }

    /// Stop gardend (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Gardend {
    fn drop(&mut self) {
        if self.killed {
            // A test that failed between kill9 and restart: a new gardend adopts what the
            // killed one left, so it can be destroyed below.
            self.spawn();
            let deadline = Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.child.is_some() {
            // Best effort: destroy what the test left, so no container outlives the test.
            let addr = self.address();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let c = Client::new(Address::Tcp(addr));
                    if let Ok(handles) = c.list(&[("garden.state".into(), "all".into())]).await {
                        for h in handles {
                            let _ = c.destroy(&h).await;
                        }
                    }
                });
                Some(())
            })
            .join();
        }
        self.stop();
        // gardend unmounts the depot's tmpfs when it stops with no container left; a test
        // that failed may have left some, and the temporary directory must go.
        if let Ok(depot) = std::ffi::CString::new(self.depot.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 with a valid C string; failure (not a mount) is ignored.
            unsafe { libc::umount2(depot.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Everything of a container that could leak on the host, for leak checks after destroy.
pub fn leaks(handle: &str, gardend: &Gardend) -> Vec<String> {
    let mut found = Vec::new();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines().filter(|l| l.contains(handle)) {
        found.push(format!("mount: {line}"));
    }
    for root in [
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids",
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/unified",
    ] {
        let dir = Path::new(root).join(&gardend.cgroup_parent).join(handle);
        if dir.exists() {
            found.push(format!("cgroup: {}", dir.display()));
        }
    }
    let bundle = gardend.depot.join(handle);
    if bundle.exists() {
        found.push(format!("depot dir: {}", bundle.display()));
    }
    // A destroyed container's mounts live on in its mount namespace until gardend closes its
    // descriptor of it (in the background reclamation); the host's mount table never shows
    // them. gardend holds no other mount namespace.
    for ns in namespaces_held(gardend.pid() as i32, "mnt") {
        found.push(format!("mount namespace held by gardend: {ns}"));
    }
    // Its writable layer, `<state>/writable/<handle>.<stamp>.<n>`.
    let prefix = format!("{handle}.");
    let layers = std::fs::read_dir(gardend.tmp.path().join("writable"));
    for e in layers.into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            found.push(format!("writable layer: {}", e.path().display()));
        }
    }
    found
}

/// The namespaces of `kind` (`mnt`, `net`, ...) that process `pid` holds descriptors of, as
/// their links read (`mnt:[4026532840]`).
pub fn namespaces_held(pid: i32, kind: &str) -> Vec<String> {
    let prefix = format!("{kind}:[");
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.display().to_string())
        .filter(|l| l.starts_with(&prefix))
        .collect()
}

/// Every process's pid on the host (the numeric entries of /proc).
fn host_pids() -> Vec<i32> {
    let dir = std::fs::read_dir("/proc");
    dir.into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .collect()
}

/// Host processes that hold the namespace `ns` (a link such as `mnt:[4026532840]`): as
/// their own or through a descriptor.
pub fn namespace_holders(ns: &str) -> Vec<i32> {
    let kind = ns.split(':').next().unwrap_or_default();
    host_pids()
        .into_iter()
        .filter(|pid| {
            let own = std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
                .map(|l| l.display().to_string() == ns)
                .unwrap_or(false);
            own || namespaces_held(*pid, kind).iter().any(|l| l == ns)
        })
        .collect()
}

/// The writable layers on disk (`<state>/writable/`) of every container and pea of `gardend`.
pub fn writable_layers(gardend: &Gardend) -> Vec<String> {
    let dir = std::fs::read_dir(gardend.tmp.path().join("writable"));
    dir.into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Host pids of processes whose command line mentions `needle` (e.g. a container's bundle
/// path, which is garden-init's only argument). The test process itself is skipped.
pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    for pid in host_pids() {
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline.trim_end().to_string()));
        }
    }
    found
}

/// Host pids of garden-init processes in a cgroup of `cgroup_parent` (all of them, or only
/// `handle`'s). In a user namespace garden-init's argument is a descriptor, not the bundle's
/// path, so its cgroup is what ties it to a gardend and a container.
pub fn garden_inits_in(cgroup_parent: &str, handle: Option<&str>) -> Vec<i32> {
    let suffix = match handle {
        Some(h) => format!("/{cgroup_parent}/{h}"),
        None => format!("/{cgroup_parent}/"),
    };
    host_pids()
        .into_iter()
        .filter_map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            if comm.trim() != "garden-init" {
                return None;
            }
            let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
            let member = cgroups.lines().any(|l| match handle {
                Some(_) => l.ends_with(&suffix),
                None => l.contains(&suffix),
            });
            member.then_some(pid)
        })
        .collect()
}

/// Like `leaks`, but mounts only count when they lie under gardend's state directory and name
/// the handle as a whole path component (a handle such as `env` would otherwise match
/// unrelated host mounts), plus any process still naming the bundle (garden-init's argument).
pub fn all_leaks(handle: &str, gardend: &Gardend) -> Vec<String> {
    let bundle = gardend.depot.join(handle);
    let state = gardend.tmp.path().display().to_string();
    let component = format!("/{handle}");
    let names_handle = |line: &str| {
        line.match_indices(&component)
            .any(|(i, m)| matches!(line.as_bytes().get(i + m.len()), None | Some(b'/' | b' ')))
    };
    let mut found: Vec<String> = leaks(handle, gardend)
        .into_iter()
        .filter(|l| !l.starts_with("mount: ") || (l.contains(&state) && names_handle(l)))
        .collect();
    let needle = format!("garden-init {}", bundle.display());
    for (pid, cmdline) in processes_mentioning(&needle) {
        found.push(format!("process {pid}: {cmdline}"));
    }
    for pid in garden_inits_in(&gardend.cgroup_parent, Some(handle)) {
        found.push(format!("garden-init {pid} in the container's cgroup"));
    }
    found
}

/// A NetOut rule that allows everything to one address.
pub fn net_out_to(ip: &str) -> garden_api::NetOutRule {
    garden_api::NetOutRule {
        networks: vec![garden_api::IpRange {
            start: ip.into(),
            end: ip.into(),
        }],
        ..Default::default()
    }
}

/// A container spec with only a handle.
pub fn container_spec(handle: &str) -> garden_api::ContainerSpec {
    garden_api::ContainerSpec {
        handle: handle.into(),
        ..Default::default()
    }
}

/// Nothing of `handle` is left on the host within 5 s of its destroy.
#[track_caller]
pub fn assert_no_leaks(handle: &str, gardend: &Gardend) {
    let left = leaks_after(handle, gardend, Duration::from_secs(5));
    assert!(left.is_empty(), "{handle} leaked after destroy: {left:#?}");
}

/// The typed Garden error of a failed call; fails on success or on any other error.
#[track_caller]
pub fn garden_err<T: std::fmt::Debug>(
    r: Result<T, garden_client::ClientError>,
) -> garden_api::GardenError {
    match r {
        Err(garden_client::ClientError::Garden(e)) => e,
        other => panic!("expected a typed Garden error, got {other:?}"),
    }
}

/// Poll `leaks` until it is empty or `timeout` passes; returns what is still there.
pub fn leaks_after(handle: &str, gardend: &Gardend, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = all_leaks(handle, gardend);
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An `AsyncWrite` collecting everything written into a shared buffer.
#[derive(Clone, Default)]
pub struct Capture(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Capture {
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().expect("capture lock").clone()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

impl tokio::io::AsyncWrite for Capture {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Run `sh -c script` as root in `handle`; (exit status, stdout, stderr) once the output is
/// drained. Panics if the process runs longer than `limit`.
pub async fn sh_root(
    client: &Client,
    handle: &str,
    script: &str,
    limit: Duration,
) -> (i32, String, String) {
    let spec = garden_api::ProcessSpec {
        path: "sh".into(),
        args: vec!["-c".into(), script.into()],
        user: "root".into(),
        ..Default::default()
    };
    let (out, err) = (Capture::default(), Capture::default());
    let io = garden_client::ProcessIo {
        stdin: None,
        stdout: Some(Box::new(out.clone())),
        stderr: Some(Box::new(err.clone())),
    };
    let mut p = client.run(handle, &spec, io).await.expect("run");
    let status = tokio::time::timeout(limit, p.wait())
        .await
        .expect("process timed out")
        .expect("wait");
    // Output is drained before the exit status is published.
    (status, out.text(), err.text())
}

/// A process spec running `sh -c script` as root.
pub fn sh(script: &str) -> garden_api::ProcessSpec {
    garden_api::ProcessSpec {
        path: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..Default::default()
    }
}

/// What a finished process produced.
#[derive(Debug)]
pub struct Output {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Run `spec` in `handle`, feed `stdin` (then EOF) if given, and wait for the exit status with
/// both output streams drained; fails after 30 s.
pub async fn run_output(
    client: &Client,
    handle: &str,
    spec: &garden_api::ProcessSpec,
    stdin: Option<Vec<u8>>,
) -> Result<Output, garden_client::ClientError> {
    let out = Capture::default();
    let err = Capture::default();
    let io = garden_client::ProcessIo {
        stdin: stdin.map(|data| {
            Box::new(std::io::Cursor::new(data)) as Box<dyn tokio::io::AsyncRead + Send + Unpin>
        }),
        stdout: Some(Box::new(out.clone())),
        stderr: Some(Box::new(err.clone())),
    };
    let mut process = client.run(handle, spec, io).await?;
    let status = tokio::time::timeout(Duration::from_secs(30), process.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "process {} in {handle} did not finish within 30s",
                process.id()
            )
        })?;
    Ok(Output {
        status,
        stdout: out.bytes(),
        stderr: err.bytes(),
    })
}

/// `sh -c script` through Garden: (exit status, stdout followed by stderr).
pub async fn sh_combined(client: &Client, handle: &str, script: &str) -> (i32, String) {
    let out = run_output(client, handle, &sh(script), None)
        .await
        .expect("garden run");
    (out.status, out.stdout_text() + &out.stderr_text())
}

/// What the executor end-to-end tests stand on: a gardend, an executor driving it through the
/// Garden client, the executor's log sink, and its download cache directory (removed on drop).
pub struct ExecutorCell {
    pub gardend: Gardend,
    pub exec: std::sync::Arc<executor::container::Executor>,
    pub sink: executor::log::MemorySink,
    pub cache_dir: tempfile::TempDir,
}

/// Start an [`ExecutorCell`]; steps get a 1 s graceful shutdown, and `adjust` tunes the cache
/// and executor settings before the executor starts.
pub fn start_executor(
    adjust: impl FnOnce(&mut executor::cache::CacheConfig, &mut executor::container::ExecutorConfig),
) -> ExecutorCell {
    use std::sync::Arc;
    let gardend = Gardend::start();
    let cache_dir = tempfile::tempdir().expect("cache dir");
    let mut cache = executor::cache::CacheConfig::new(cache_dir.path());
    let mut config = executor::container::ExecutorConfig::default();
    config.step.graceful_shutdown = Duration::from_secs(1);
    adjust(&mut cache, &mut config);
    let cache = Arc::new(executor::cache::DownloadCache::open(cache).expect("cache"));
    let sink = executor::log::MemorySink::default();
    let exec = executor::container::Executor::new(
        Arc::new(gardend.client()),
        cache,
        Arc::new(sink.clone()),
        config,
    );
    ExecutorCell {
        gardend,
        exec,
        sink,
        cache_dir,
    }
}

/// Run an executor action `script` (JSON or YAML) in a new container `guid` and wait (60 s at
/// most, then fail with gardend's log) until it completes. The container is kept for
/// inspection.
pub async fn run_action(
    exec: &std::sync::Arc<executor::container::Executor>,
    gardend: &Gardend,
    guid: &str,
    script: &str,
) -> executor::container::Container {
    use executor::container::{AllocationRequest, RunInfo};
    let action =
        executor::Action::from_yaml(script).unwrap_or_else(|e| panic!("bad script: {e}\n{script}"));
    exec.allocate(AllocationRequest {
        guid: guid.into(),
        ..Default::default()
    })
    .expect("allocate");
    let info = RunInfo {
        action: Some(action),
        log_config: executor::log::LogConfig {
            guid: guid.into(),
            index: 0,
            source_name: "TEST".into(),
        },
        ..Default::default()
    };
    exec.run(guid, info).expect("run");
    tokio::time::timeout(Duration::from_secs(60), exec.wait_completed(guid))
        .await
        .unwrap_or_else(|_| panic!("{guid} did not complete; gardend log:\n{}", gardend.log()))
        .expect("completed")
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes; whether it held.
pub fn eventually_blocking(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Poll an async condition every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
