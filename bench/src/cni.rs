//! `crun+cni`: crun given the network gardend gives a container, the way containerd and podman
//! (CNI backend) do it: a pinned network namespace, CNI ADD of Debian's `bridge` (host-local
//! IPAM, gateway, masquerade) and `portmap` plugins on it before the container starts, CNI DEL
//! and removal of the namespace after it exits.
//!
//! The plugins are executed as libcni executes them: the binary from `CNI_PATH`, the `CNI_*`
//! variables in its environment, its configuration (network name, `cniVersion`, the previous
//! plugin's result as `prevResult`, the capabilities as `runtimeConfig`) on stdin, its result on
//! stdout; DEL runs the chain in reverse with the ADD result as `prevResult`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::peers::Peer;

/// Where Debian's containernetworking-plugins install the plugin binaries.
pub const DEBIAN_CNI_PATH: &str = "/usr/lib/cni";

/// crun plus a CNI network, with its own bundle whose network namespace is `netns`.
#[derive(Debug)]
pub struct CniPeer {
    pub crun: Peer,
    /// A bundle running /bin/true in the namespace pinned at `netns`.
    pub bundle: PathBuf,
    /// Where each round pins its fresh network namespace (rounds are sequential).
    pub netns: PathBuf,
    pub cni_path: PathBuf,
    /// The network configuration list: `name`, `cniVersion`, `plugins`.
    pub conflist: Value,
    /// The host bridge the `bridge` plugin creates (removed at the end).
    pub bridge: String,
}

impl CniPeer {
    /// Set up under `dir`: a bundle from `true_bundle` joining the namespace at `dir/netns`, a
    /// conflist for `bridge` on `subnet` with host-local state in `dir/ipam`.
    pub fn new(
        crun: Peer,
        true_bundle: &Path,
        dir: &Path,
        bridge: &str,
        subnet: &str,
    ) -> Result<CniPeer> {
        let cni_path = PathBuf::from(DEBIAN_CNI_PATH);
        for plugin in ["bridge", "host-local", "portmap"] {
            if !cni_path.join(plugin).is_file() {
                bail!(
                    "CNI plugin {plugin} not in {} (scripts/bench-deps.sh installs containernetworking-plugins)",
                    cni_path.display()
                );
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let netns = dir.join("netns");
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle)?;
        let config = std::fs::read_to_string(true_bundle.join("config.json"))
            .context("read the /bin/true bundle")?;
        let mut config: Value = serde_json::from_str(&config).context("parse config.json")?;
        join_netns(&mut config, &netns)?;
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )
        .context("write the crun+cni bundle")?;
        let conflist = conflist(
            &format!("bench-{}", std::process::id()),
            bridge,
            subnet,
            &dir.join("ipam"),
        );
        Ok(CniPeer {
            crun,
            bundle,
            netns,
            cni_path,
            conflist,
            bridge: bridge.to_string(),
        })
    }

    /// One lifecycle: namespace + ADD, `crun run`, DEL + namespace removal. Samples: total,
    /// network setup, run, network teardown.
    pub async fn lifecycle(&self, id: &str) -> Result<Vec<Duration>> {
        let start = Instant::now();
        pin_new_netns(&self.netns)?;
        let added = self.add(id).await;
        let setup = start.elapsed();
        let ran = match &added {
            Ok(_) => self.crun.run(&self.bundle, id).await.map(|_| ()),
            Err(_) => Ok(()),
        };
        let t = Instant::now();
        // DEL even after a failed ADD, as runtimes do: it releases whatever ADD got done.
        let deleted = self
            .del(id, added.as_ref().ok().cloned().unwrap_or(Value::Null))
            .await;
        let unpinned = unpin_netns(&self.netns);
        let teardown = t.elapsed();
        let run = t.duration_since(start + setup);
        added?;
        ran?;
        deleted?;
        unpinned?;
        Ok(vec![start.elapsed(), setup, run, teardown])
    }

    /// CNI ADD of every plugin in order; the last result, which must carry an address.
    async fn add(&self, id: &str) -> Result<Value> {
        let mut prev = Value::Null;
        for plugin in self.plugins() {
            let conf = plugin_config(&self.conflist, plugin, &prev);
            prev = self.exec("ADD", id, &conf).await?;
        }
        if prev["ips"].as_array().is_none_or(Vec::is_empty) {
            bail!("CNI ADD gave the container no address: {prev}");
        }
        Ok(prev)
    }

    /// CNI DEL of every plugin in reverse order, each given the ADD result.
    async fn del(&self, id: &str, added: Value) -> Result<()> {
        let mut first_err = None;
        for plugin in self.plugins().iter().rev() {
            let conf = plugin_config(&self.conflist, plugin, &added);
            if let Err(e) = self.exec("DEL", id, &conf).await {
                first_err = first_err.or(Some(e));
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn plugins(&self) -> &[Value] {
        self.conflist["plugins"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Execute one plugin with `conf` on stdin; its parsed stdout (`Null` when empty, as DEL's).
    async fn exec(&self, command: &str, id: &str, conf: &Value) -> Result<Value> {
        let kind = conf["type"].as_str().context("plugin without type")?;
        let mut child = Command::new(self.cni_path.join(kind))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", "")
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn CNI plugin {kind}"))?;
        let mut stdin = child.stdin.take().context("plugin stdin")?;
        stdin.write_all(&serde_json::to_vec(conf)?).await?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .with_context(|| format!("wait for CNI plugin {kind}"))?;
        if !out.status.success() {
            // Plugins report errors as {"code", "msg", "details"} on stdout.
            let msg = serde_json::from_slice::<Value>(&out.stdout)
                .ok()
                .and_then(|v| v["msg"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
            bail!("CNI {command} {kind} failed ({}): {msg}", out.status);
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("CNI {command} {kind}: result is not JSON"))
    }

    /// Remove what the plugins leave on the host after the last DEL: the bridge (the IPAM
    /// state lives in the scratch dir; shared chains are removed by the caller).
    pub fn cleanup(&self) {
        let _ = unpin_netns(&self.netns);
        if let Err(e) = crate::netclean::delete_link(&self.bridge) {
            tracing::warn!("remove bridge {}: {e:#}", self.bridge);
        }
    }
}

/// Point the spec's network namespace at `netns` (a path, as containerd writes it).
fn join_netns(config: &mut Value, netns: &Path) -> Result<()> {
    let namespaces = config["linux"]["namespaces"]
        .as_array_mut()
        .context("config.json has no linux.namespaces")?;
    namespaces.retain(|n| n["type"] != "network");
    namespaces.push(json!({"type": "network", "path": netns}));
    Ok(())
}

/// The network configuration list: a bridge with host-local IPAM, gateway and masquerade
/// (what gardend gives each container: veth, address, NAT), then portmap (gardend's NetIn).
fn conflist(name: &str, bridge: &str, subnet: &str, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    })
}

/// One plugin's stdin as libcni builds it: the plugin's object with the list's name and
/// version, `prevResult` when there is one, and `runtimeConfig` for its capabilities (no port
/// mappings here, as containerd passes them for a pod without ports).
fn plugin_config(list: &Value, plugin: &Value, prev: &Value) -> Value {
    let mut conf = plugin.clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    if !prev.is_null() {
        conf["prevResult"] = prev.clone();
    }
    if plugin["capabilities"]["portMappings"] == json!(true) {
        conf["runtimeConfig"] = json!({"portMappings": []});
    }
    conf
}

/// A fresh network namespace pinned by a bind mount at `path`, made on a thread of its own
/// that exits right after (a pooled thread must not keep a foreign namespace).
pub fn pin_new_netns(path: &Path) -> Result<()> {
    std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let target = CString::new(path.as_os_str().as_bytes())?;
    std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: unshare(2) on this thread only (it exits after the mount); mount(2) with
        // NUL-terminated strings that outlive the call.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                c"/proc/thread-self/ns/net".as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
    .with_context(|| format!("pin a new network namespace at {}", path.display()))
}

/// Unmount and remove a namespace pinned by `pin_new_netns` (nothing to do if absent).
pub fn unpin_netns(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let target = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: umount2(2) on a NUL-terminated path.
    if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(err).with_context(|| format!("unmount {}", path.display()));
        }
    }
    std::fs::remove_file(path).with_context(|| format!("remove {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_configs_are_built_as_libcni_does() {
        let list = conflist("n", "br0", "10.0.0.0/24", Path::new("/x"));
        let plugins = list["plugins"].as_array().unwrap();
        let first = plugin_config(&list, &plugins[0], &Value::Null);
        assert_eq!(first["name"], "n");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none());
        assert_eq!(first["ipam"]["ranges"][0][0]["subnet"], "10.0.0.0/24");
        let prev = json!({"ips": [{"address": "10.0.0.2/24"}]});
        let second = plugin_config(&list, &plugins[1], &prev);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["runtimeConfig"], json!({"portMappings": []}));
    }

    #[test]
    fn the_bundle_joins_the_pinned_namespace() {
        let mut config = json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}});
        join_netns(&mut config, Path::new("/tmp/ns")).unwrap();
        let ns = config["linux"]["namespaces"].as_array().unwrap();
        assert_eq!(ns.len(), 2);
        assert_eq!(ns[1], json!({"type": "network", "path": "/tmp/ns"}));
        assert!(join_netns(&mut json!({}), Path::new("/x")).is_err());
    }
}
