//! The seam between Garden's semantics (`garden/`) and the host: every privileged thing the core
//! asks for — sandboxes (garden-init in new namespaces, with a cgroup), processes in them,
//! network attach and release, disk quotas — goes through [`Kernel`] and [`Sandbox`].
//!
//! [`linux::Linux`] does the real work through `runtime/`, `cgroups/`, `net/` and `quota/`;
//! `fake::Fake` (tests only) records every call and can be told to fail, so the lifecycle, grace
//! time and stream retention of `garden/` are unit-tested without root. Modelled on youki's
//! `Syscall` trait. The traits are object-safe (boxed futures) so that `Garden` holds an
//! `Arc<dyn Kernel>` and nothing above it is generic.

#[cfg(test)]
pub mod fake;
pub mod linux;

use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::{OwnedFd, RawFd};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;

pub use crate::cgroups::{Resources, Stats};
use crate::init::proto::SpawnRequest;
pub use crate::net::{Bandwidth, EgressRule, NetInfo, Traffic};
pub use crate::quota::{DiskLimit, Usage};
pub use crate::runtime::{InitIdentity, PeaSpec, RunningProcess, SandboxSpec, SpawnError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Exit events of a sandbox's processes: (process id, status), from garden-init.
pub type Exits = mpsc::UnboundedReceiver<(String, i32)>;

/// Why the host refused. The message is what a client sees (after the core's context).
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error(transparent)]
    Disk(#[from] crate::quota::QuotaError),
    #[error("{0}")]
    Other(String),
}

impl KernelError {
    /// The caller's input was refused (not a failure of the host).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            KernelError::Net(crate::net::NetError::Invalid(_))
                | KernelError::Disk(
                    crate::quota::QuotaError::BeyondStore { .. }
                        | crate::quota::QuotaError::ImageTooLarge { .. }
                )
        )
    }
}

pub type Result<T> = std::result::Result<T, KernelError>;

/// The two signals the core sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Terminate,
    Kill,
}

/// What the host offers, for Capacity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCapacity {
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// The host, as the core uses it.
pub trait Kernel: Send + Sync + 'static {
    /// Make the cgroup, clone garden-init into new namespaces and wait until it is ready. On
    /// error nothing is left but the bundle directory, which the caller owns.
    fn create_sandbox(&self, spec: SandboxSpec)
        -> BoxFuture<'_, Result<(Arc<dyn Sandbox>, Exits)>>;
    /// cgroup v2 reports CPU as a weight rather than shares.
    fn reports_cpu_weight(&self) -> bool;
    fn capacity(&self, depot: &Path) -> HostCapacity;

    /// How many containers the address pool can hold.
    fn max_containers(&self) -> u64;
    /// Check a create's network settings before anything is made.
    fn validate_network(&self, bandwidth: Bandwidth) -> Result<()>;
    /// Reserve an address (`network`: a subnet or address from the spec, or empty for the pool).
    fn allocate_network(&self, handle: &str, network: &str) -> Result<()>;
    /// Links, firewall, bandwidth and /etc files for an allocated container's sandbox.
    fn attach_network<'a>(
        &'a self,
        handle: &'a str,
        hostname: &'a str,
        sandbox: &'a dyn Sandbox,
        netout: &'a [EgressRule],
        bandwidth: Bandwidth,
    ) -> BoxFuture<'a, Result<()>>;
    /// Undo whatever allocate and attach did.
    fn release_network<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<()>>;
    fn net_in<'a>(
        &'a self,
        handle: &'a str,
        host_port: u32,
        container_port: u32,
    ) -> BoxFuture<'a, Result<(u32, u32)>>;
    fn net_out<'a>(&'a self, handle: &'a str, rules: &'a [EgressRule])
        -> BoxFuture<'a, Result<()>>;
    fn network_info(&self, handle: &str) -> Option<NetInfo>;
    /// The `garden.network.*` properties of a container.
    fn network_properties(&self, handle: &str) -> BTreeMap<String, String>;
    fn network_stats(&self, handle: &str) -> Option<Traffic>;

    /// Put a container's writable layer under its disk limit (`image`: what the image uses).
    fn attach_disk<'a>(
        &'a self,
        handle: &'a str,
        bundle: &'a Path,
        limit: DiskLimit,
        image: Usage,
    ) -> BoxFuture<'a, Result<()>>;
    fn release_disk<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<()>>;
    /// What the writable layer uses, when the quota backend can tell.
    fn disk_usage(&self, handle: &str) -> Option<Usage>;
    /// Whether a container with `limit` needs a disk layer of its own ([`Kernel::attach_disk`]
    /// does something): a warm container (made ahead of demand) has none, so it cannot serve
    /// such a create.
    fn disk_layer_needed(&self, limit: &DiskLimit) -> bool {
        let _ = limit;
        true
    }

    /// Hand a warm container, made under the name `warm` (its network, disk layer and
    /// sandbox), to `handle`: its network and disk are known by `handle` from now on, and its
    /// host name (UTS name and /etc/hosts) becomes `hostname`.
    fn claim_warm<'a>(
        &'a self,
        warm: &'a str,
        handle: &'a str,
        hostname: &'a str,
        sandbox: &'a dyn Sandbox,
    ) -> BoxFuture<'a, Result<()>> {
        let _ = (warm, handle, hostname, sandbox);
        Box::pin(std::future::ready(Err(KernelError::Other(
            "this kernel keeps no warm containers".into(),
        ))))
    }

    /// gardend stops; `empty`: no container is left, so shared host state may go too.
    fn shutdown(&self, empty: bool) -> BoxFuture<'_, ()>;

    /// Take over the sandbox of a container a previous gardend made, whose garden-init is
    /// `init`: with its exit events and its live processes' stdio (see `ToInit::Adopt`). `ids`:
    /// its user namespace's mapping (`None` when privileged), as create gave it; `cgroup`: the
    /// name of its cgroup (the handle, or the warm name it was made under).
    fn adopt_sandbox<'a>(
        &'a self,
        handle: &'a str,
        cgroup: &'a str,
        bundle: &'a Path,
        init: InitIdentity,
        ids: Option<rootfs::IdMapping>,
    ) -> BoxFuture<'a, Result<Adopted>> {
        let _ = (handle, cgroup, bundle, init, ids);
        Box::pin(std::future::ready(Err(KernelError::Other(
            "this kernel cannot adopt containers".into(),
        ))))
    }

    /// Remove whatever is left of a container that could not be adopted: its processes,
    /// cgroup (named `cgroup`), network and disk layer.
    fn discard<'a>(&'a self, handle: &'a str, cgroup: &'a str) -> BoxFuture<'a, ()> {
        let _ = (handle, cgroup);
        Box::pin(std::future::ready(()))
    }
}

/// An adopted sandbox, its exit events and its live processes.
pub type Adopted = (Arc<dyn Sandbox>, Exits, Vec<RunningProcess>);

/// One container at the host level: garden-init, its namespaces and its cgroup.
pub trait Sandbox: Send + Sync + 'static {
    /// garden-init's host pid when it started (for the record; never signalled by pid).
    fn init_pid(&self) -> i32;
    /// garden-init's pid and start time, recorded so a restart finds this very process again.
    fn identity(&self) -> InitIdentity {
        InitIdentity {
            pid: self.init_pid(),
            start_time: 0,
        }
    }
    /// garden-init (and so every process of the container) is gone.
    fn has_exited(&self) -> bool;
    /// Kill every process of the container and wait until init is gone.
    fn kill(&self) -> BoxFuture<'_, ()>;
    /// As [`kill`](Sandbox::kill), but the container's mounts outlive its processes: the
    /// returned fd holds its mount namespace, and closing it unmounts them. Destroy answers
    /// without waiting for file systems to shut down; its background reclamation closes it.
    fn kill_keeping_mounts(&self) -> BoxFuture<'_, Option<OwnedFd>> {
        Box::pin(async {
            self.kill().await;
            None
        })
    }
    /// No process but init left in the container.
    fn is_idle(&self) -> bool;
    /// An fd of the container's root directory, for path resolution inside it.
    fn open_root(&self) -> std::io::Result<OwnedFd>;
    /// Container root's host uid and gid (host root's unless it has a user namespace).
    fn root_owner(&self) -> (u32, u32) {
        (0, 0)
    }
    /// An fd of the container's network namespace.
    fn open_netns(&self) -> std::io::Result<OwnedFd>;
    /// Name the container's host (its UTS namespace's hostname).
    fn set_hostname(&self, name: &str) -> std::io::Result<()> {
        let _ = name;
        Ok(())
    }
    /// The container's own `/dev/pts/ptmx`, for a process with a tty.
    fn open_ptmx(&self) -> std::io::Result<OwnedFd>;
    /// Start a process with the given stdio fds; its pid inside the container.
    fn spawn<'a>(
        &'a self,
        request: SpawnRequest,
        fds: &'a [RawFd],
    ) -> BoxFuture<'a, std::result::Result<i32, SpawnError>>;
    /// Start a pea: a process in a new mount namespace whose root is `pea`'s image, sharing
    /// the container's other namespaces (and its cgroup unless `pea.resources` is set). Its
    /// signals, stdin and exit go by process id like any process's; its root filesystem (and
    /// its own cgroup) are removed when it exits or the container is killed.
    fn spawn_pea<'a>(
        &'a self,
        pea: PeaSpec,
        request: SpawnRequest,
        fds: &'a [RawFd],
    ) -> BoxFuture<'a, std::result::Result<i32, SpawnError>> {
        let _ = (pea, request, fds);
        Box::pin(std::future::ready(Err(SpawnError::Failed(
            "this sandbox cannot run peas".into(),
        ))))
    }
    /// The cgroup statistics of a running pea (BulkMetrics takes pea ids as handles).
    fn pea_stats(&self, process_id: &str) -> Option<Stats> {
        let _ = process_id;
        None
    }
    fn signal<'a>(
        &'a self,
        process_id: &'a str,
        signal: Signal,
    ) -> BoxFuture<'a, std::io::Result<()>>;
    /// gardend closed a process's stdin: garden-init drops the copy it holds, so the process
    /// sees EOF.
    fn close_stdin<'a>(&'a self, process_id: &'a str) -> BoxFuture<'a, std::io::Result<()>> {
        let _ = process_id;
        Box::pin(std::future::ready(Ok(())))
    }
    /// Every process of the container but init.
    fn signal_all(&self, signal: Signal) -> BoxFuture<'_, std::io::Result<()>>;
    fn stats(&self) -> Stats;
    fn oom_kills(&self) -> u64;
    /// Remove the cgroup (after [`Sandbox::kill`]), once its peas are cleaned up.
    fn remove_cgroup(&self) -> BoxFuture<'_, Result<()>>;
    /// The name of its cgroup under gardend's parent (recorded, for a restart to find it).
    fn cgroup_name(&self) -> String;
    /// Set cgroup limits on the running sandbox (a warm container claimed by a create with
    /// limits).
    fn apply_resources(&self, resources: &Resources) -> Result<()> {
        let _ = resources;
        Ok(())
    }
    /// Its bundle directory was renamed to `bundle` (a warm container claimed under its
    /// handle): where its peas go from now on.
    fn moved(&self, bundle: &Path) {
        let _ = bundle;
    }
}

/// Raise the soft open-file limit to the hard one (no privilege needed): gardend holds two
/// descriptors per container, so the soft limit, often 1024, would cap the container count
/// long before memory does. The limits after the change, (soft, hard).
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok((hard, hard))
}
