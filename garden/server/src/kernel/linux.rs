//! The real [`Kernel`]: garden-init clones (`runtime/`), cgroups (`cgroups/`), links and
//! firewall (`net/`), disk quotas (`quota/`).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use garden_api::{ContainerNetworkStat, NetOutRule};

use super::{
    Bandwidth, BoxFuture, DiskLimit, Exits, HostCapacity, Kernel, KernelError, NetInfo, Result,
    Sandbox, SandboxSpec, Signal, SpawnError, Stats, Usage,
};
use crate::cgroups::{Cgroups, Layout};
use crate::config::Config;
use crate::init::proto::SpawnRequest;
use crate::net::Network;
use crate::quota::Disk;
use crate::runtime::{self, pidfd::PidFd, Runtime};

/// This host, for real.
pub struct Linux {
    runtime: Runtime,
    network: Network,
    disk: Disk,
}

impl Linux {
    /// Probe cgroups, find garden-init, set up the disk quota backend and networking. Call
    /// [`Linux::remove_stale`] for what a previous run left before creating containers.
    pub async fn open(config: &Config, state_dir: &Path) -> anyhow::Result<Linux> {
        let layout = Layout::detect().context("detect cgroup layout")?;
        tracing::info!(?layout, "cgroups");
        let cgroups = Cgroups::new(layout, &config.cgroup_parent)
            .context("create parent cgroups")?
            .with_cpu_quota_per_share(config.cpu_quota_per_share);
        let init_bin = runtime::find_init_bin(config.init_bin.as_deref())?;
        let runtime = Runtime::new(cgroups, init_bin, state_dir);
        let (state_dir, store_size) = (state_dir.to_path_buf(), config.disk_store_size);
        let disk = tokio::task::spawn_blocking(move || Disk::open(&state_dir, store_size)).await?;
        let network = Network::new(config.net.clone(), &config.cgroup_parent)
            .await
            .context("set up container networking")?;
        Ok(Linux {
            runtime,
            network,
            disk,
        })
    }

    /// A previous run's container: SIGKILL its garden-init (if `init_pid` still names one),
    /// wait for its cgroup to empty (5 s at most) and remove it.
    pub fn remove_stale(&self, handle: &str, init_pid: Option<i32>) {
        if let Some(pid) = init_pid {
            kill_stale_init(pid);
        }
        let cg = self.runtime.cgroups().container(handle);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cg.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Err(e) = cg.remove() {
            tracing::warn!(handle, error = %e, "remove stale cgroup");
        }
    }
}

/// SIGKILL a previous run's garden-init by its recorded pid, if that pid still names a
/// garden-init: the pidfd is opened before the name is checked, so the signal can only reach
/// the process whose name was read (or nothing, if it has gone since).
fn kill_stale_init(pid: i32) {
    let Ok(process) = PidFd::open(pid) else {
        return;
    };
    let comm = process
        .open_in_proc("comm", nix::fcntl::OFlag::O_RDONLY)
        .ok()
        .and_then(|fd| std::io::read_to_string(std::fs::File::from(fd)).ok())
        .unwrap_or_default();
    if comm.trim() == "garden-init" {
        let _ = process.signal(libc::SIGKILL);
    }
}

/// Run blocking host work (file systems, loop devices) off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KernelError::Other(e.to_string()))?
}

impl Kernel for Linux {
    fn create_sandbox(
        &self,
        spec: SandboxSpec,
    ) -> BoxFuture<'_, Result<(Arc<dyn Sandbox>, Exits)>> {
        Box::pin(async move {
            let (sandbox, exits) = self.runtime.create(&spec).await?;
            let sandbox: Arc<dyn Sandbox> = Arc::new(sandbox);
            Ok((sandbox, exits))
        })
    }

    fn reports_cpu_weight(&self) -> bool {
        self.runtime.cgroups().layout().is_v2()
    }

    fn capacity(&self, depot: &Path) -> HostCapacity {
        let memory_kb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let disk = nix::sys::statvfs::statvfs(depot)
            .map(|s| s.blocks() * s.fragment_size())
            .unwrap_or(0);
        HostCapacity {
            memory_bytes: memory_kb * 1024,
            disk_bytes: disk,
        }
    }

    fn max_containers(&self) -> u64 {
        self.network.max_containers()
    }

    fn validate_network(
        &self,
        handle: &str,
        netout: &[NetOutRule],
        bandwidth: Bandwidth,
    ) -> Result<()> {
        Ok(self.network.validate(handle, netout, bandwidth)?)
    }

    fn allocate_network(&self, handle: &str, network: &str) -> Result<()> {
        Ok(self.network.allocate(handle, network)?)
    }

    fn attach_network<'a>(
        &'a self,
        handle: &'a str,
        hostname: &'a str,
        sandbox: &'a dyn Sandbox,
        netout: &'a [NetOutRule],
        bandwidth: Bandwidth,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let open = |what: &str, r: std::io::Result<OwnedFd>| {
                r.map_err(|e| KernelError::Other(format!("open container {what}: {e}")))
            };
            let root = open("root", sandbox.open_root())?;
            let netns = open("network namespace", sandbox.open_netns())?;
            self.network
                .setup(
                    handle,
                    hostname,
                    netns.as_fd(),
                    crate::net::hosts::ContainerRoot {
                        fd: root.as_fd(),
                        owner: sandbox.root_owner(),
                    },
                    netout,
                    bandwidth,
                )
                .await?;
            Ok(())
        })
    }

    fn release_network<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Ok(self.network.release(handle).await?) })
    }

    fn net_in<'a>(
        &'a self,
        handle: &'a str,
        host_port: u32,
        container_port: u32,
    ) -> BoxFuture<'a, Result<(u32, u32)>> {
        Box::pin(async move {
            Ok(self
                .network
                .net_in(handle, host_port, container_port)
                .await?)
        })
    }

    fn net_out<'a>(
        &'a self,
        handle: &'a str,
        rules: &'a [NetOutRule],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Ok(self.network.net_out(handle, rules).await?) })
    }

    fn network_info(&self, handle: &str) -> Option<NetInfo> {
        self.network.info(handle)
    }

    fn network_properties(&self, handle: &str) -> BTreeMap<String, String> {
        self.network.properties(handle)
    }

    fn network_stats(&self, handle: &str) -> Option<ContainerNetworkStat> {
        self.network.stats(handle)
    }

    fn attach_disk<'a>(
        &'a self,
        handle: &'a str,
        bundle: &'a Path,
        limit: DiskLimit,
        image: Usage,
    ) -> BoxFuture<'a, Result<()>> {
        let (disk, handle, bundle) = (self.disk.clone(), handle.to_string(), bundle.to_path_buf());
        Box::pin(blocking(move || {
            Ok(disk.attach(&handle, &bundle, &limit, image)?)
        }))
    }

    fn release_disk<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<()>> {
        let (disk, handle) = (self.disk.clone(), handle.to_string());
        Box::pin(blocking(move || Ok(disk.release(&handle)?)))
    }

    fn disk_usage(&self, handle: &str) -> Option<Usage> {
        self.disk.usage(handle)
    }

    fn shutdown(&self, empty: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if empty {
                self.network.remove_all().await;
                // Nothing of ours is left in the parent cgroups either.
                self.runtime.cgroups().remove_parent();
            }
            self.disk.shutdown();
        })
    }
}

fn signal_number(signal: Signal) -> i32 {
    match signal {
        Signal::Terminate => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    }
}

impl Sandbox for runtime::Sandbox {
    fn init_pid(&self) -> i32 {
        runtime::Sandbox::init_pid(self)
    }

    fn has_exited(&self) -> bool {
        runtime::Sandbox::has_exited(self)
    }

    fn kill(&self) -> BoxFuture<'_, ()> {
        Box::pin(runtime::Sandbox::kill(self))
    }

    fn is_idle(&self) -> bool {
        self.other_pids().is_empty()
    }

    fn open_root(&self) -> std::io::Result<OwnedFd> {
        runtime::Sandbox::open_root(self)
    }

    fn root_owner(&self) -> (u32, u32) {
        self.ids.as_ref().map_or((0, 0), |ids| ids.root())
    }

    fn open_netns(&self) -> std::io::Result<OwnedFd> {
        runtime::Sandbox::open_netns(self)
    }

    fn open_ptmx(&self) -> std::io::Result<OwnedFd> {
        runtime::Sandbox::open_ptmx(self)
    }

    fn spawn<'a>(
        &'a self,
        request: SpawnRequest,
        fds: &'a [RawFd],
    ) -> BoxFuture<'a, std::result::Result<i32, SpawnError>> {
        Box::pin(self.init.spawn(request, fds))
    }

    fn signal<'a>(
        &'a self,
        process_id: &'a str,
        signal: Signal,
    ) -> BoxFuture<'a, std::io::Result<()>> {
        Box::pin(self.init.signal(process_id, signal_number(signal)))
    }

    fn signal_all(&self, signal: Signal) -> BoxFuture<'_, std::io::Result<()>> {
        Box::pin(self.init.signal_all(signal_number(signal)))
    }

    fn stats(&self) -> Stats {
        self.cgroup.stats()
    }

    fn oom_kills(&self) -> u64 {
        self.cgroup.oom_kills()
    }

    fn remove_cgroup(&self) -> BoxFuture<'_, Result<()>> {
        let cgroup = self.cgroup.clone();
        Box::pin(blocking(move || Ok(cgroup.remove()?)))
    }
}
