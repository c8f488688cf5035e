//! Harness for the agent's end-to-end tests: a real `nats-server` on a free loopback port
//! (restartable on the same port), an `agent` daemon configured against a [`Gardend`], and a
//! test-side bus client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{binary, free_port, Gardend};

/// A nats-server on 127.0.0.1, stopped on drop.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub tmp: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        let tmp = tempfile::Builder::new()
            .prefix("nats-e2e-")
            .tempdir()
            .expect("tempdir");
        let mut n = Nats {
            child: None,
            port: free_port(),
            tmp,
        };
        n.restart();
        n
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("nats.log"))
            .expect("nats log");
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn nats-server (scripts/deps.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("nats-server did not listen within 10s");
    }

    /// Kill the server (clients see a disconnect and keep reconnecting).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running agent; SIGKILLed on drop if still running (tests that check a clean shutdown
/// call [`Agent::terminate`]).
pub struct Agent {
    child: Option<Child>,
    pub tmp: tempfile::TempDir,
    pub config_path: PathBuf,
    pub base_dir: PathBuf,
    /// The directory server's port.
    pub dir_port: u16,
}

/// The YAML config an agent test starts from; `extra` is appended (later keys must not
/// repeat earlier ones, so tests pass only keys absent here).
pub fn agent_config(base_dir: &Path, nats: &[String], garden: &str, dir_port: u16) -> String {
    let servers = nats
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "base_dir: {base}
index: 0
nats_servers: [{servers}]
garden_address: \"{garden}\"
domain: cell.test
local_ip: 127.0.0.1
stacks: [{{name: busybox, package_path: \"\"}}]
intervals: {{heartbeat: 1, advertise: 1, router_register_in_seconds: 1}}
directory_server: {{protocol: http, v2_port: {dir_port}}}
logging: {{level: debug}}
",
        base = base_dir.display()
    )
}

impl Agent {
    /// Start an agent against `gardend` and `nats` with the default test config plus `extra`
    /// YAML lines (top-level keys not in [`agent_config`]).
    pub fn start(gardend: &Gardend, nats: &Nats, extra: &str) -> Agent {
        Agent::start_with(gardend, &[nats.url()], extra)
    }

    /// Like [`Agent::start`] with the config's `index` set (several agents on one bus).
    pub fn start_indexed(gardend: &Gardend, nats: &Nats, index: u64, extra: &str) -> Agent {
        Agent::launch(gardend, &[nats.url()], index, extra)
    }

    pub fn start_with(gardend: &Gardend, nats: &[String], extra: &str) -> Agent {
        Agent::launch(gardend, nats, 0, extra)
    }

    fn launch(gardend: &Gardend, nats: &[String], index: u64, extra: &str) -> Agent {
        let tmp = tempfile::Builder::new()
            .prefix("agent-e2e-")
            .tempdir()
            .expect("tempdir");
        let base_dir = tmp.path().join("base");
        let dir_port = free_port();
        let config = agent_config(&base_dir, nats, &gardend.address(), dir_port).replacen(
            "index: 0\n",
            &format!("index: {index}\n"),
            1,
        ) + extra;
        let config_path = tmp.path().join("agent.yml");
        std::fs::write(&config_path, config).expect("write config");
        let mut a = Agent {
            child: None,
            tmp,
            config_path,
            base_dir,
            dir_port,
        };
        a.spawn();
        a
    }

    /// (Re)start the daemon with the same config (and so the same base_dir).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("agent.log"))
            .expect("agent log");
        let child = Command::new(binary("agent"))
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("agent.log")).unwrap_or_default()
    }

    /// Send `signal` and wait (up to `timeout`) for the exit status.
    pub fn signal_and_wait(
        &mut self,
        signal: i32,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGTERM and wait up to 60 s; `None` if it had to be killed.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.signal_and_wait(libc::SIGTERM, Duration::from_secs(60))
    }

    /// SIGKILL (a crash): instances are left in Garden for the next agent to resume.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A test-side bus client.
pub async fn bus(nats: &Nats) -> agent::bus::Bus {
    agent::bus::Bus::connect(&[nats.url()], "e2e")
        .await
        .expect("connect to nats")
}

/// Subscribe to `subject` and collect parsed JSON messages in the background.
pub async fn watch(bus: &agent::bus::Bus, subject: &str) -> Watch {
    use futures_util::StreamExt;
    let mut sub = bus
        .client()
        .subscribe(subject.to_string())
        .await
        .expect("subscribe");
    bus.client().flush().await.expect("flush");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.payload) {
                s.lock().unwrap().push(v);
            }
        }
    });
    Watch { seen }
}

/// Messages seen on one subject.
#[derive(Clone)]
pub struct Watch {
    seen: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Watch {
    pub fn all(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }

    /// Wait until a message satisfies `pred`; returns it.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.all().into_iter().find(|v| pred(v)) {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A droplet (DEA layout: `app/`, `logs/`, `tmp/`, `staging_info.yml`) as tgz bytes, whose
/// app is the given files (path relative to `app/`, contents, mode) and whose start command
/// is `start_command`.
pub fn droplet(files: &[(&str, &str, u32)], start_command: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let dir = |tar: &mut tar::Builder<_>, name: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        tar.append_data(&mut h, name, std::io::empty())
            .expect("dir");
    };
    let file = |tar: &mut tar::Builder<_>, name: &str, data: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, name, data.as_bytes())
            .expect("file");
    };
    for d in ["app/", "logs/", "tmp/"] {
        dir(&mut tar, d);
    }
    for (path, data, mode) in files {
        file(&mut tar, &format!("app/{path}"), data, *mode);
    }
    file(
        &mut tar,
        "staging_info.yml",
        &format!(
            "detected_buildpack: test\nstart_command: {}\n",
            serde_json::to_string(start_command).unwrap()
        ),
        0o644,
    );
    tar.into_inner().expect("tar").finish().expect("gzip")
}

/// Lowercase hex SHA-1 of `data`.
pub fn sha1_hex(data: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(data))
}

/// Serve `files` (URL path → bytes) over HTTP on a free loopback port until dropped; returns
/// the base URL (`http://127.0.0.1:<port>`). Counts requests per path.
pub struct FileServer {
    pub base: String,
    pub hits: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    pub async fn start(files: Vec<(String, Vec<u8>)>) -> FileServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files: std::sync::Arc<std::collections::HashMap<String, Vec<u8>>> =
            std::sync::Arc::new(files.into_iter().collect());
        let hits = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let h = hits.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let files = files.clone();
                let hits = h.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf);
                    let path = head
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("/")
                        .split('?')
                        .next()
                        .unwrap_or("/")
                        .to_string();
                    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let reply = match files.get(&path) {
                        Some(body) => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(body);
                            r
                        }
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = s.write_all(&reply).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        FileServer {
            base,
            hits,
            _task: task,
        }
    }

    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// What a `cellctl` run printed, and how it ended.
pub struct CellctlOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Run the `cellctl` binary against `nats` with `args`; fails the test if it runs past
/// `limit`.
pub async fn cellctl(nats: &Nats, args: &[&str], limit: Duration) -> CellctlOutput {
    let out = tokio::time::timeout(
        limit,
        tokio::process::Command::new(binary("cellctl"))
            .env("CELL_NATS", nats.url())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("cellctl {args:?} did not end"))
    .expect("run cellctl");
    CellctlOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// GET `path` from `addr` over plain HTTP/1.0: (status, body), or None if the server could
/// not be reached or answered nothing parseable (3 s to connect, 5 s to read).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((
        head.split_whitespace().nth(1)?.parse().ok()?,
        body.to_string(),
    ))
}

/// The body of a 200 from `GET path` on 127.0.0.1:`port`, else None.
pub async fn http_get_ok(port: u16, path: &str) -> Option<String> {
    match http_get(&format!("127.0.0.1:{port}"), path).await? {
        (200, body) => Some(body),
        _ => None,
    }
}
