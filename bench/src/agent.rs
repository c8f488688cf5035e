//! The agent scenario: how long a start message takes to become a RUNNING instance that
//! answers on its port (the agent's `router.register` is sent on entering RUNNING, after the
//! TCP health check passed), one at a time and as a burst of N; and how long `dea.stop` of
//! the burst takes until gardend holds no container of it.
//!
//! Staging: a staging request for `agent/examples/static-site` with the example static
//! buildpack, to the completion reply (droplet built, uploaded, SHA1 known).
//!
//! A private nats-server and an `agent` (from the same target directory) run against the
//! bench's gardend; droplets, packages and buildpacks are served (and uploads received) by
//! the executor's test file server.

use std::collections::HashSet;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use agent::bus::Bus;
use agent::protocol::{subject, InstanceFilter, Limits, StartMessage};
use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use garden_client::Client;
use tokio::process::{Child, Command};

use crate::stats::Summary;

/// What the agent scenario measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgentFigures {
    /// Start to RUNNING, one instance at a time (droplet already cached).
    pub single: Summary,
    /// Instances started at once.
    pub burst: usize,
    /// Start to RUNNING of each instance of the burst.
    pub burst_latency: Summary,
    /// First start message to the last instance RUNNING.
    pub burst_wall_ms: f64,
    /// `dea.stop` of the burst until gardend lists none of its containers.
    pub stop_all_ms: f64,
    /// Staging request to completion reply (buildpack already cached).
    pub staging: Summary,
}

/// A child killed on drop.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

async fn wait_listening(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{what} did not listen on port {port} within 20 s")
}

/// The droplet: busybox httpd serving one page on `$PORT`.
fn droplet() -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let mut add = |name: &str, data: &[u8], dir: bool| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        if dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
        } else {
            h.set_mode(0o644);
        }
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, name, data)
            .with_context(|| format!("add {name} to the droplet"))
    };
    for d in ["app/", "logs/", "tmp/"] {
        add(d, b"", true)?;
    }
    add("app/index.html", b"hello from the bench\n", false)?;
    add(
        "staging_info.yml",
        b"detected_buildpack: bench\nstart_command: \"exec httpd -f -p $PORT -h /home/vcap/app\"\n",
        false,
    )?;
    Ok(tar.into_inner()?.finish()?)
}

/// Zip every file under `dir` (relative names, modes kept) into memory.
fn zip_dir(dir: &Path) -> Result<Vec<u8>> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let path = entry?.path();
            let meta = std::fs::metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.strip_prefix(dir)?.to_string_lossy().into_owned();
            let options = zip::write::SimpleFileOptions::default()
                .unix_permissions(meta.permissions().mode() & 0o777);
            zip.start_file(name, options)?;
            zip.write_all(&std::fs::read(&path)?)?;
        }
    }
    Ok(zip.finish()?.into_inner())
}

/// Stage the example static site `rounds` times (plus one that fills the buildpack cache);
/// each sample is the request to its completion reply.
async fn staging(
    bus: &Bus,
    files: &executor::testing::FileServer,
    agent_id: &str,
    rounds: usize,
) -> Result<Summary> {
    use agent::protocol::{AdminBuildpack, StagingReply, StagingRequest};
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    files.put_bytes(
        "/static-buildpack.zip",
        &zip_dir(&repo.join("agent/buildpacks/static"))?,
    );
    files.put_bytes(
        "/static-site.zip",
        &zip_dir(&repo.join("agent/examples/static-site"))?,
    );
    let mut samples = Vec::new();
    for round in 0..=rounds {
        let request = StagingRequest {
            app_id: "bench-staging".into(),
            task_id: format!("bench-staging-{round}"),
            stack: "busybox".into(),
            download_uri: files.url("/static-site.zip"),
            upload_uri: files.url("/upload/droplet"),
            buildpack_cache_download_uri: None,
            buildpack_cache_upload_uri: None,
            properties: Default::default(),
            start_message: None,
            admin_buildpacks: vec![AdminBuildpack {
                key: "static".into(),
                url: files.url("/static-buildpack.zip"),
            }],
            egress_network_rules: vec![],
            memory_limit: None,
            disk_limit: None,
            accepts_http: false,
        };
        let t = Instant::now();
        let mut replies = bus
            .send_request(&agent::protocol::subject::staging_start(agent_id), &request)
            .await?;
        // The setup reply, then the completion reply.
        let mut completion = None;
        for _ in 0..2 {
            let m = tokio::time::timeout(Duration::from_secs(120), replies.next())
                .await
                .context("no staging reply within 120 s")?
                .context("nats closed")?;
            let reply: StagingReply =
                serde_json::from_slice(&m.payload).context("decode the staging reply")?;
            if let Some(e) = &reply.error {
                bail!("staging failed: {e}");
            }
            completion = Some(reply);
        }
        if completion.and_then(|c| c.droplet_sha1).is_none() {
            bail!("the completion reply has no droplet_sha1");
        }
        if round > 0 {
            samples.push(t.elapsed());
        }
    }
    Summary::from_durations(&samples).context("no staging samples")
}

fn sha1_hex(data: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(data))
}

fn start_message(app: &str, index: u64, uri: &str, sha1: &str) -> StartMessage {
    StartMessage {
        droplet: app.into(),
        name: app.into(),
        stack: "busybox".into(),
        uris: vec![uri.into()],
        prod: false,
        sha1: Some(sha1.into()),
        executable_file: None,
        executable_uri: Some(uri.into()),
        version: "v1".into(),
        services: vec![],
        limits: Limits {
            mem: 64,
            disk: 0,
            fds: 1024,
        },
        env: vec![],
        cc_partition: "default".into(),
        console: false,
        debug: None,
        start_command: None,
        health_check_timeout: Some(30.0),
        vcap_application: serde_json::json!({}),
        index,
        egress_network_rules: vec![],
    }
}

/// Containers gardend holds (the bench's gardend runs nothing else during this scenario).
async fn container_count(garden: &Client) -> Result<usize> {
    Ok(garden.list(&[]).await.context("list containers")?.len())
}

/// Run the scenario against the gardend at `garden_addr`; `bin_dir` holds the `agent` binary.
pub async fn measure(
    garden: &Client,
    garden_addr: &str,
    bin_dir: &Path,
    scratch: &Path,
    rounds: usize,
    burst: usize,
) -> Result<AgentFigures> {
    let agent_bin = bin_dir.join("agent");
    if !agent_bin.is_file() {
        bail!(
            "agent not found at {} (cargo build --release --workspace --bins)",
            agent_bin.display()
        );
    }
    let nats_port = free_port()?;
    let nats = Daemon(
        Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &nats_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn nats-server (scripts/deps.sh installs it)")?,
    );
    wait_listening(nats_port, "nats-server").await?;
    let nats_url = format!("nats://127.0.0.1:{nats_port}");

    let dir = scratch.join("agent");
    let dir_port = free_port()?;
    std::fs::create_dir_all(&dir).context("agent scratch dir")?;
    let config = format!(
        "base_dir: {base}\nnats_servers: [\"{nats_url}\"]\ngarden_address: \"{garden_addr}\"\n\
         stacks: [{{name: busybox, package_path: \"\"}}]\n\
         intervals: {{heartbeat: 60, advertise: 1, router_register_in_seconds: 3600}}\n\
         directory_server: {{v2_port: {dir_port}}}\nlogging: {{level: warn}}\n",
        base = dir.join("base").display()
    );
    let config_path = dir.join("agent.yml");
    std::fs::write(&config_path, config).context("write agent config")?;
    let log = std::fs::File::create(dir.join("agent.log")).context("agent log")?;
    let bus = Bus::connect(&[nats_url], "bench").await?;
    let mut adverts = bus
        .client()
        .subscribe(subject::ADVERTISE.to_string())
        .await
        .context("subscribe dea.advertise")?;
    let mut registers = bus
        .client()
        .subscribe(subject::ROUTER_REGISTER.to_string())
        .await
        .context("subscribe router.register")?;
    let agent = Daemon(
        Command::new(&agent_bin)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn agent")?,
    );
    let advert = tokio::time::timeout(Duration::from_secs(30), adverts.next())
        .await
        .context("no dea.advertise within 30 s")?
        .context("nats closed")?;
    let agent_id = serde_json::from_slice::<agent::protocol::Advertise>(&advert.payload)
        .context("decode dea.advertise")?
        .id;

    let files = executor::testing::FileServer::start().await;
    let droplet = droplet()?;
    let sha1 = sha1_hex(&droplet);
    files.put_bytes("/droplet.tgz", &droplet);
    let uri = files.url("/droplet.tgz");
    let start_subject = subject::start(&agent_id);

    // Waits for `n` new RUNNING registrations of `app`; returns when each arrived.
    async fn running(
        registers: &mut async_nats::Subscriber,
        app: &str,
        n: usize,
    ) -> Result<Vec<Instant>> {
        let mut seen = HashSet::new();
        let mut at = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while seen.len() < n {
            let msg = tokio::time::timeout_at(deadline, registers.next())
                .await
                .with_context(|| format!("{app}: {} of {n} RUNNING within 120 s", seen.len()))?
                .context("nats closed")?;
            let reg: agent::protocol::RouterRegister = match serde_json::from_slice(&msg.payload) {
                Ok(r) => r,
                Err(_) => continue,
            };
            if reg.app.as_deref() == Some(app) {
                if let Some(id) = reg.private_instance_id {
                    if seen.insert(id) {
                        at.push(Instant::now());
                    }
                }
            }
        }
        Ok(at)
    }

    async fn stop_and_drain(bus: &Bus, garden: &Client, app: &str) -> Result<Duration> {
        let t = Instant::now();
        bus.publish(
            subject::STOP,
            &InstanceFilter {
                droplet: app.into(),
                ..Default::default()
            },
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(120);
        while container_count(garden).await? > 0 {
            if Instant::now() > deadline {
                bail!("{app}: containers left 120 s after dea.stop");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(t.elapsed())
    }

    // Warm-up: the first start downloads and caches the droplet.
    let mut single = Vec::new();
    for round in 0..=rounds {
        let app = format!("bench-single-{round}");
        let t = Instant::now();
        bus.publish(start_subject.clone(), &start_message(&app, 0, &uri, &sha1))
            .await;
        running(&mut registers, &app, 1).await?;
        if round > 0 {
            single.push(t.elapsed());
        }
        stop_and_drain(&bus, garden, &app).await?;
    }

    let app = "bench-burst";
    let t = Instant::now();
    let mut sent = Vec::new();
    for i in 0..burst {
        sent.push(Instant::now());
        bus.publish(
            start_subject.clone(),
            &start_message(app, i as u64, &uri, &sha1),
        )
        .await;
    }
    let mut at = running(&mut registers, app, burst).await?;
    let burst_wall = t.elapsed();
    at.sort();
    // Registrations arrive in completion order, not start order: pair the k-th completion
    // with the k-th start (a lower bound on no instance, an honest distribution overall).
    let latencies: Vec<Duration> = at.iter().zip(&sent).map(|(a, s)| *a - *s).collect();
    let stop_all = stop_and_drain(&bus, garden, app).await?;
    let staging = staging(&bus, &files, &agent_id, rounds).await?;

    // SIGTERM: the agent's clean shutdown (dea.shutdown, nothing left in gardend).
    let mut agent = agent;
    if let Some(pid) = agent.0.id() {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let _ = tokio::time::timeout(Duration::from_secs(30), agent.0.wait()).await;
    }
    drop(nats);
    Ok(AgentFigures {
        single: Summary::from_durations(&single).context("no single-start samples")?,
        burst,
        burst_latency: Summary::from_durations(&latencies).context("no burst samples")?,
        burst_wall_ms: crate::stats::ms(burst_wall),
        stop_all_ms: crate::stats::ms(stop_all),
        staging,
    })
}
