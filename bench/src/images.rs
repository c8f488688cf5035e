//! The images scenario: Create from a registry image whose layers are already in gardend's
//! store, from a plain directory (the default rootfs), and a cold pull (the store emptied by
//! GC before each round). The image is the busybox rootfs plus a layer of incompressible
//! bytes, built with umoci and pushed by skopeo to a docker-registry on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use garden_api::{ContainerSpec, ImageRef};
use garden_client::Client;

use crate::stats::Summary;

/// What the scenario measured.
#[derive(Debug, Clone)]
pub struct ImageFigures {
    pub directory: Summary,
    pub cached: Summary,
    pub cold: Summary,
    pub image_mib: u64,
    pub layers: usize,
}

/// A running loopback registry holding the bench image; killed on drop.
pub struct Fixture {
    child: Child,
    pub host: String,
    pub uri: String,
    pub image_mib: u64,
    _dir: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Starts the registry and pushes `busybox` + `mib` MiB of noise as `bench/image:latest`.
pub fn prepare(rootfs: &Path, mib: u64) -> Result<Fixture> {
    let dir = tempfile::Builder::new()
        .prefix("gardend-bench-registry-")
        .tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let host = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        ),
    )?;
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start /usr/bin/docker-registry (scripts/deps.sh installs it)")?;
    let fixture = Fixture {
        child,
        host: host.clone(),
        uri: format!("docker://{host}/bench/image#latest"),
        image_mib: mib,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&host).is_err() {
        if Instant::now() > deadline {
            bail!("docker-registry did not listen on {host}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let layout = fixture._dir.path().join("layout");
    let img = format!("{}:latest", layout.display());
    let bundle: PathBuf = fixture._dir.path().join("bundle");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout))?;
    run(Command::new("umoci").args(["new", "--image", &img]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&bundle))?;
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", rootfs.display()))
        .arg(bundle.join("rootfs")))?;
    run(Command::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&bundle))?;
    // A second layer of noise, so a pull moves real bytes (a fresh unpack: repack diffs
    // against the manifest the bundle was unpacked from).
    std::fs::remove_dir_all(&bundle)?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&bundle))?;
    let mut noise = vec![0u8; (mib as usize) << 20];
    let mut x: u64 = 0x2545f4914f6cdd1d;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(bundle.join("rootfs/noise"), noise)?;
    run(Command::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&bundle))?;
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{img}"))
        .arg(format!("docker://{host}/bench/image:latest")))?;
    Ok(fixture)
}

fn spec(handle: &str, uri: &str) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        image: ImageRef {
            uri: uri.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn timed_create(client: &Client, handle: &str, uri: &str) -> Result<Duration> {
    let t = Instant::now();
    client
        .create(&spec(handle, uri))
        .await
        .with_context(|| format!("create from {uri:?}"))?;
    let d = t.elapsed();
    client.destroy(handle).await.context("destroy")?;
    Ok(d)
}

fn layer_count(store: &Path) -> usize {
    std::fs::read_dir(store.join("layers"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `rounds` creates of each kind against a gardend started with the fixture's registry as
/// insecure and a GC threshold of 0; `store` is its `<state>/images`.
pub async fn measure(
    client: &Client,
    fixture: &Fixture,
    store: &Path,
    rounds: usize,
) -> Result<ImageFigures> {
    let tag = std::process::id();
    let mut cold = Vec::new();
    for i in 0..rounds {
        if layer_count(store) != 0 {
            bail!("the layer store is not empty before a cold pull: is GC at threshold 0?");
        }
        cold.push(timed_create(client, &format!("bench-img-cold-{tag}-{i}"), &fixture.uri).await?);
    }
    // A holder pins the image, so the rounds below find every layer stored.
    let holder = format!("bench-img-holder-{tag}");
    client.create(&spec(&holder, &fixture.uri)).await?;
    let layers = layer_count(store);
    let mut cached = Vec::new();
    let mut directory = Vec::new();
    for i in 0..rounds {
        cached.push(
            timed_create(client, &format!("bench-img-cached-{tag}-{i}"), &fixture.uri).await?,
        );
        directory.push(timed_create(client, &format!("bench-img-dir-{tag}-{i}"), "").await?);
    }
    client.destroy(&holder).await?;
    let summary = |s: &[Duration]| Summary::from_durations(s).context("no samples");
    Ok(ImageFigures {
        directory: summary(&directory)?,
        cached: summary(&cached)?,
        cold: summary(&cold)?,
        image_mib: fixture.image_mib,
        layers,
    })
}
