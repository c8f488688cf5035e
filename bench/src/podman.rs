//! `podman`: Debian's podman running /bin/true on the bench rootfs with its default bridge
//! network (netavark: a bridge, a veth, an address and NAT), deleted on exit:
//! `podman run --rm --network bridge --rootfs DIR /bin/true`.
//!
//! Everything podman keeps is private to the run: storage (`--root`, `--runroot`), its
//! containers.conf (`CONTAINERS_CONF`), its network definition (a bridge and subnet of the
//! bench's own, the default network). It runs in the same private mount namespace as crun
//! (crun 1.8 is its OCI runtime and needs the unified hierarchy hidden on hybrid hosts).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tokio::process::Command;

use crate::peers::{self, which};

/// The chains netavark creates and leaves after its last container (removed at the end).
pub const CHAIN_PREFIX: &str = "NETAVARK";

#[derive(Debug)]
pub struct Podman {
    pub bin: PathBuf,
    pub version: String,
    dir: PathBuf,
    rootfs: PathBuf,
    pub bridge: String,
    hide_unified: bool,
}

impl Podman {
    /// Find podman and write its private configuration under `dir`.
    pub fn detect(dir: &Path, rootfs: &Path, bridge: &str, subnet: &str) -> Result<Podman> {
        let Some(bin) = which("podman") else {
            bail!("podman not installed (scripts/bench-deps.sh)");
        };
        if which("netavark").is_none() && !Path::new("/usr/lib/podman/netavark").is_file() {
            bail!("netavark not installed (scripts/bench-deps.sh)");
        }
        let out = std::process::Command::new(&bin)
            .arg("--version")
            .output()
            .context("run podman --version")?;
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        std::fs::create_dir_all(dir.join("networks"))?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::write(dir.join("containers.conf"), containers_conf(dir)?)
            .context("write containers.conf")?;
        let (gateway, _) = subnet
            .split_once('/')
            .and_then(|(net, len)| {
                let mut octets: Vec<u8> = net.split('.').filter_map(|o| o.parse().ok()).collect();
                (octets.len() == 4).then(|| {
                    octets[3] = octets[3].wrapping_add(1);
                    let o: Vec<String> = octets.iter().map(u8::to_string).collect();
                    (o.join("."), len.to_string())
                })
            })
            .context("podman subnet is not an IPv4 CIDR")?;
        let network = json!({
            "name": NETWORK,
            "id": format!("{:064x}", u128::from(std::process::id()) + (1u128 << 100)),
            "driver": "bridge",
            "network_interface": bridge,
            "created": "2026-01-01T00:00:00Z",
            "subnets": [{"subnet": subnet, "gateway": gateway}],
            "ipv6_enabled": false,
            "internal": false,
            "dns_enabled": false,
            "ipam_options": {"driver": "host-local"},
        });
        std::fs::write(
            dir.join("networks").join(format!("{NETWORK}.json")),
            serde_json::to_vec_pretty(&network)?,
        )
        .context("write the podman network")?;
        Ok(Podman {
            bin,
            version,
            dir: dir.to_path_buf(),
            rootfs: rootfs.to_path_buf(),
            bridge: bridge.to_string(),
            hide_unified: peers::hybrid_unified_mounted(),
        })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("runroot"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if self.hide_unified {
            // SAFETY: detach_unified only makes async-signal-safe syscalls.
            unsafe {
                cmd.pre_exec(peers::detach_unified);
            }
        }
        cmd
    }

    /// `podman run --rm --network bridge --rootfs DIR /bin/true`; the wall time.
    pub async fn lifecycle(&self, id: &str) -> Result<Vec<Duration>> {
        let err = tempfile::tempfile().context("stderr capture")?;
        let mut cmd = self.command();
        cmd.args([
            "run",
            "--rm",
            "--network",
            "bridge",
            "--name",
            id,
            "--rootfs",
        ])
        .arg(&self.rootfs)
        .arg("/bin/true")
        .stderr(Stdio::from(err.try_clone()?));
        let start = Instant::now();
        let status = cmd.status().await.context("spawn podman run")?;
        let elapsed = start.elapsed();
        if !status.success() {
            bail!("podman run failed ({status}): {}", read_all(err));
        }
        Ok(vec![elapsed])
    }

    /// Remove any container left (a killed run) and the bridge.
    pub async fn cleanup(&self) {
        let _ = self
            .command()
            .args(["rm", "--all", "--force", "--time", "0"])
            .stderr(Stdio::null())
            .status()
            .await;
        if let Err(e) = crate::netclean::delete_link(&self.bridge) {
            tracing::warn!("remove bridge {}: {e:#}", self.bridge);
        }
    }
}

const NETWORK: &str = "benchnet";

/// podman's configuration: our network as the default, cgroupfs, no journald, and rlimits it
/// may set without CAP_SYS_RESOURCE (its defaults, nofile and nproc at 1048576, exceed the
/// hard limits of a host that caps them; podman itself falls back to nproc 32768).
fn containers_conf(dir: &Path) -> Result<String> {
    let nofile = hard_limit(libc::RLIMIT_NOFILE)?;
    let nproc = hard_limit(libc::RLIMIT_NPROC)?.min(32768);
    Ok(format!(
        "[containers]\n\
         default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
         [engine]\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"none\"\n\
         runtime = \"crun\"\n\
         tmp_dir = \"{tmp}\"\n\
         [network]\n\
         network_backend = \"netavark\"\n\
         network_config_dir = \"{net}\"\n\
         default_network = \"{NETWORK}\"\n",
        tmp = dir.join("tmp").display(),
        net = dir.join("networks").display(),
    ))
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct we own.
    if unsafe { libc::getrlimit(resource, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit");
    }
    Ok(lim.rlim_max)
}

fn read_all(mut f: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut s = String::new();
    let _ = f.rewind();
    let _ = f.read_to_string(&mut s);
    s.trim().to_string()
}
