//! The real [`Kernel`]: garden-init clones (`runtime/`), cgroups (`cgroups/`), links and
//! firewall (`net/`), disk quotas (`quota/`).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{
    Adopted, Bandwidth, BoxFuture, DiskLimit, EgressRule, Exits, HostCapacity, InitIdentity,
    Kernel, KernelError, NetInfo, PeaSpec, Result, Sandbox, SandboxSpec, Signal, SpawnError, Stats,
    Traffic, Usage,
};
use crate::cgroups::{Cgroups, Layout};
use crate::config::Config;
use crate::init::proto::SpawnRequest;
use crate::net::{KeptNetwork, Network};
use crate::quota::Disk;
use crate::runtime::{self, pidfd::PidFd, Runtime};

/// This host, for real.
pub struct Linux {
    /// Its tmpfs is unmounted when gardend stops with no container left.
    depot: PathBuf,
    runtime: Runtime,
    network: Network,
    disk: Disk,
}

/// A container of a previous run that this gardend takes over: its disk layer, links, chains
/// and address are kept.
#[derive(Debug, Clone)]
pub struct Survivor {
    pub handle: String,
    /// `a.b.c.d/n` and `a.b.c.d`, from the depot record.
    pub subnet: String,
    pub container_ip: String,
    /// It was given NetOut rules (at create or later).
    pub had_netout: bool,
}

/// What a restart adopts, which [`Linux::sweep`] leaves alone.
#[derive(Debug, Default)]
pub struct Kept {
    /// Bundle directories (handles) in the depot.
    pub bundles: std::collections::HashSet<String>,
    /// Container cgroups by name (the handle, or the warm name it was made under).
    pub cgroups: std::collections::HashSet<String>,
    /// garden-init host pids.
    pub inits: std::collections::HashSet<i32>,
}

impl Linux {
    /// Probe cgroups, find garden-init, set up the disk quota backend and networking, keeping
    /// what belongs to `survivors`. Call [`Linux::sweep`] for the rest a previous run left
    /// before creating containers.
    /// `layers`: where writable layers go, when the depot is a tmpfs.
    pub async fn open(
        config: &Config,
        state_dir: &Path,
        layers: Option<PathBuf>,
        survivors: &[Survivor],
    ) -> anyhow::Result<Linux> {
        let layout = Layout::detect().context("detect cgroup layout")?;
        tracing::info!(?layout, "cgroups");
        let cgroups = Cgroups::new(layout, &config.cgroup_parent)
            .context("create parent cgroups")?
            .with_cpu_quota_per_share(config.cpu_quota_per_share);
        let init_bin = runtime::find_init_bin(config.init_bin.as_deref())?;
        let runtime = Runtime::new(cgroups, init_bin, state_dir).with_layers(layers);
        let (state_dir, store_size) = (state_dir.to_path_buf(), config.disk_store_size);
        let keep: Vec<String> = survivors.iter().map(|s| s.handle.clone()).collect();
        let disk =
            tokio::task::spawn_blocking(move || Disk::open(&state_dir, store_size, &keep)).await?;
        let kept: Vec<KeptNetwork> = survivors
            .iter()
            .filter_map(|s| {
                let parsed = s.subnet.parse().ok().zip(s.container_ip.parse().ok());
                if parsed.is_none() {
                    tracing::warn!(
                        handle = s.handle,
                        subnet = s.subnet,
                        ip = s.container_ip,
                        "unreadable network record"
                    );
                }
                parsed.map(|(subnet, container_ip)| KeptNetwork {
                    handle: s.handle.clone(),
                    subnet,
                    container_ip,
                    had_netout: s.had_netout,
                })
            })
            .collect();
        let network = Network::new(config.net.clone(), &config.cgroup_parent, &kept)
            .await
            .context("set up container networking")?;
        Ok(Linux {
            depot: config.depot.clone(),
            runtime,
            network,
            disk,
        })
    }

    /// Whether the network of `handle` was kept (or allocated) here.
    pub fn has_network(&self, handle: &str) -> bool {
        self.network.has(handle)
    }

    /// Whether the garden-init `init` names still runs (same pid, start time and name).
    pub fn init_alive(init: InitIdentity) -> bool {
        init.find().is_some()
    }

    /// Remove what a previous run left and this one does not adopt (`keep`): garden-init
    /// processes of bundles in `depot`, container cgroups under the parent (their processes
    /// killed first) and depot directories. Each removal is logged.
    pub fn sweep(&self, depot: &Path, keep: &Kept) {
        for (pid, handle) in garden_inits(depot) {
            // A claimed warm container's garden-init names the bundle it was made in.
            if keep.bundles.contains(&handle) || keep.inits.contains(&pid) {
                continue;
            }
            if let Ok(p) = PidFd::open(pid) {
                if p.comm().is_ok_and(|c| c == "garden-init") {
                    tracing::info!(handle, pid, "killing a garden-init left by a previous run");
                    let _ = p.signal(libc::SIGKILL);
                }
            }
        }
        // Peas of kept containers keep their own cgroups, for adoption.
        let kept_peas: std::collections::HashSet<String> = keep
            .bundles
            .iter()
            .flat_map(|h| runtime::pea_cgroups(&depot.join(h)))
            .collect();
        for name in self.runtime.cgroups().children() {
            if !keep.cgroups.contains(&name) && !kept_peas.contains(&name) {
                self.remove_stale_cgroup(&name);
            }
        }
        let entries = std::fs::read_dir(depot).into_iter().flatten().flatten();
        for e in entries {
            let handle = e.file_name().to_string_lossy().into_owned();
            if keep.bundles.contains(&handle) || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match self.runtime.remove_bundle(&e.path()) {
                Ok(()) => {
                    tracing::info!(handle, "removed a depot directory left by a previous run")
                }
                Err(e) => tracing::warn!(handle, error = %e, "remove stale bundle"),
            }
        }
        let kept: Vec<_> = keep.bundles.iter().map(|h| depot.join(h)).collect();
        self.runtime.sweep_layers(&kept);
    }

    fn remove_stale_cgroup(&self, handle: &str) {
        remove_stale_cgroup(self.runtime.cgroups(), handle)
    }
}

/// A previous run's container cgroup: SIGKILL what is in it, wait for it to empty (5 s at
/// most) and remove it.
fn remove_stale_cgroup(cgroups: &crate::cgroups::Cgroups, handle: &str) {
    let cg = cgroups.container(handle);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pids = cg.pids();
    if !pids.is_empty() {
        tracing::info!(
            handle,
            processes = pids.len(),
            "killing processes of a cgroup left by a previous run"
        );
    }
    while !pids.is_empty() && Instant::now() < deadline {
        // Pin each process first, then check it is (still) in the cgroup: a pid reused
        // between reading cgroup.procs and pidfd_open is not in it.
        let pinned: Vec<PidFd> = pids.iter().filter_map(|p| PidFd::open(*p).ok()).collect();
        let members = cg.pids();
        for p in pinned.iter().filter(|p| members.contains(&p.pid())) {
            let _ = p.signal(libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
        pids = cg.pids();
    }
    match cg.remove() {
        Ok(()) => tracing::info!(handle, "removed a cgroup left by a previous run"),
        Err(e) => tracing::warn!(handle, error = %e, "remove stale cgroup"),
    }
}

/// Host pids of garden-init processes whose bundle is in `depot`, with the bundle's name.
fn garden_inits(depot: &Path) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() != "garden-init" {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let Some(bundle) = cmdline.split(|b| *b == 0).nth(1) else {
            continue;
        };
        let bundle = Path::new(std::ffi::OsStr::from_bytes(bundle));
        if bundle.parent() == Some(depot) {
            if let Some(name) = bundle.file_name() {
                found.push((pid, name.to_string_lossy().into_owned()));
            }
        }
    }
    found
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
        // Containers' writable layers live where the disk backend keeps them (the XFS store
        // is a filesystem of its own); without a backend, in the depot.
        let disk = match self.disk.backend() {
            "off" => nix::sys::statvfs::statvfs(depot)
                .map(|s| s.blocks() * s.fragment_size())
                .unwrap_or(0),
            _ => self.disk.capacity(),
        };
        HostCapacity {
            memory_bytes: memory_kb * 1024,
            disk_bytes: disk,
        }
    }

    fn max_containers(&self) -> u64 {
        self.network.max_containers()
    }

    fn validate_network(&self, bandwidth: Bandwidth) -> Result<()> {
        Ok(self.network.validate(bandwidth)?)
    }

    fn allocate_network(&self, handle: &str, network: &str) -> Result<()> {
        Ok(self.network.allocate(handle, network)?)
    }

    fn attach_network<'a>(
        &'a self,
        handle: &'a str,
        hostname: &'a str,
        sandbox: &'a dyn Sandbox,
        netout: &'a [EgressRule],
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
        rules: &'a [EgressRule],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { Ok(self.network.net_out(handle, rules).await?) })
    }

    fn network_info(&self, handle: &str) -> Option<NetInfo> {
        self.network.info(handle)
    }

    fn network_properties(&self, handle: &str) -> BTreeMap<String, String> {
        self.network.properties(handle)
    }

    fn network_stats(&self, handle: &str) -> Option<Traffic> {
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

    fn disk_layer_needed(&self, limit: &DiskLimit) -> bool {
        self.disk.layer_needed(limit)
    }

    fn claim_warm<'a>(
        &'a self,
        warm: &'a str,
        handle: &'a str,
        hostname: &'a str,
        sandbox: &'a dyn Sandbox,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let t = std::time::Instant::now();
            let ms = || t.elapsed().as_secs_f64() * 1e3;
            let root = sandbox
                .open_root()
                .map_err(|e| KernelError::Other(format!("open container root: {e}")))?;
            let opened_ms = ms();
            sandbox
                .set_hostname(hostname)
                .map_err(|e| KernelError::Other(format!("set the hostname: {e}")))?;
            let hostname_ms = ms();
            self.network.rename(warm, handle)?;
            let renamed_ms = ms();
            self.network.write_hosts(
                handle,
                hostname,
                crate::net::hosts::ContainerRoot {
                    fd: root.as_fd(),
                    owner: sandbox.root_owner(),
                },
            )?;
            tracing::debug!(
                handle,
                opened_ms,
                hostname_ms,
                renamed_ms,
                hosts_ms = ms(),
                "warm container renamed"
            );
            Ok(())
        })
    }

    fn adopt_sandbox<'a>(
        &'a self,
        _handle: &'a str,
        cgroup: &'a str,
        bundle: &'a Path,
        init: InitIdentity,
        ids: Option<rootfs::IdMapping>,
    ) -> BoxFuture<'a, Result<Adopted>> {
        Box::pin(async move {
            let (sandbox, exits, running) = self.runtime.adopt(cgroup, bundle, init, ids).await?;
            let sandbox: Arc<dyn Sandbox> = Arc::new(sandbox);
            Ok((sandbox, exits, running))
        })
    }

    fn discard<'a>(&'a self, handle: &'a str, cgroup: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let cgroups = self.runtime.cgroups().clone();
            let h = cgroup.to_string();
            let _ = tokio::task::spawn_blocking(move || remove_stale_cgroup(&cgroups, &h)).await;
            if let Err(e) = self.network.release(handle).await {
                tracing::warn!(handle, error = %e, "release network");
            }
            if let Err(e) = self.disk.release(handle) {
                tracing::warn!(handle, error = %e, "release disk");
            }
        })
    }

    fn shutdown(&self, empty: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if empty {
                self.network.remove_all().await;
                // Nothing of ours is left in the parent cgroups either.
                self.runtime.cgroups().remove_parent();
            }
            self.disk.shutdown();
            if empty {
                runtime::depot_fs::release(&self.depot);
            }
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

    fn identity(&self) -> InitIdentity {
        runtime::Sandbox::identity(self)
    }

    fn has_exited(&self) -> bool {
        runtime::Sandbox::has_exited(self)
    }

    fn close_stdin<'a>(&'a self, process_id: &'a str) -> BoxFuture<'a, std::io::Result<()>> {
        Box::pin(runtime::Sandbox::close_stdin(self, process_id))
    }

    fn kill(&self) -> BoxFuture<'_, ()> {
        Box::pin(runtime::Sandbox::kill(self))
    }

    fn kill_keeping_mounts(&self) -> BoxFuture<'_, Option<OwnedFd>> {
        Box::pin(runtime::Sandbox::kill_keeping_mounts(self))
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

    fn set_hostname(&self, name: &str) -> std::io::Result<()> {
        runtime::Sandbox::set_hostname(self, name)
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

    fn spawn_pea<'a>(
        &'a self,
        pea: PeaSpec,
        request: SpawnRequest,
        fds: &'a [RawFd],
    ) -> BoxFuture<'a, std::result::Result<i32, SpawnError>> {
        Box::pin(runtime::Sandbox::spawn_pea(self, pea, request, fds))
    }

    fn pea_stats(&self, process_id: &str) -> Option<Stats> {
        runtime::Sandbox::pea_stats(self, process_id)
    }

    fn signal<'a>(
        &'a self,
        process_id: &'a str,
        signal: Signal,
    ) -> BoxFuture<'a, std::io::Result<()>> {
        Box::pin(runtime::Sandbox::signal(
            self,
            process_id,
            signal_number(signal),
        ))
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
        Box::pin(async move { Ok(runtime::Sandbox::remove_cgroup(self).await?) })
    }

    fn cgroup_name(&self) -> String {
        self.cgroup.name()
    }

    fn apply_resources(&self, resources: &super::Resources) -> Result<()> {
        Ok(runtime::Sandbox::apply_resources(self, resources)?)
    }

    fn moved(&self, bundle: &Path) {
        runtime::Sandbox::moved(self, bundle)
    }
}
