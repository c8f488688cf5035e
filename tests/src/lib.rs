//! Shared helpers for end-to-end tests: build the binaries once, start a real `gardend` on a
//! free port with a temporary depot, and check that nothing of a container is left behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use garden_client::{Address, Client};

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
}

impl Gardend {
    /// Start gardend on a free loopback port with default flags.
    pub fn start() -> Gardend {
        Gardend::start_with(&[])
    }

    /// Start gardend with extra flags (e.g. `["--default-grace-time", "1s"]`).
    pub fn start_with(extra: &[&str]) -> Gardend {
        let tmp = tempfile::Builder::new()
            .prefix("gardend-e2e-")
            .tempdir()
            .expect("tempdir");
        let depot = tmp.path().join("depot");
        std::fs::create_dir_all(&depot).expect("depot");
        let port = free_port();
        let cgroup_parent = format!("garden-e2e-{port}");
        let log = std::fs::File::create(tmp.path().join("gardend.log")).expect("log file");
        let mut cmd = Command::new(binary("gardend"));
        cmd.args(["--bind-ip", "127.0.0.1", "--bind-port", &port.to_string()])
            .arg("--depot")
            .arg(&depot)
            .args(["--cgroup-parent", &cgroup_parent, "--log-level", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Ok(rootfs) = std::env::var("GARDEN_TEST_ROOTFS") {
            cmd.args(["--default-rootfs", &rootfs]);
        }
        let child = cmd.spawn().expect("spawn gardend");
        let g = Gardend {
            child: Some(child),
            port,
            tmp,
            depot,
            cgroup_parent,
        };
        g.wait_ready();
        g
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
    found
}
