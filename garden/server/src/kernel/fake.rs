//! A recording [`Kernel`] for unit tests of the core: no namespaces, no cgroups, no root.
//!
//! Every call is appended to [`Fake::calls`]; [`Fake::fail_next`] makes the next calls of one
//! kind fail. A fake sandbox runs "processes" itself, on the real stdio pipes the core hands
//! over: `echo ARGS...` writes its arguments to stdout and exits 0; `exit N` exits N; any other
//! path runs until it is signalled (143 for Terminate, 137 for Kill) or the sandbox is killed.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use super::{
    Adopted, Bandwidth, BoxFuture, DiskLimit, EgressRule, Exits, HostCapacity, InitIdentity,
    Kernel, KernelError, NetInfo, PeaSpec, Resources, Result, Sandbox, SandboxSpec, Signal,
    SpawnError, Stats, Traffic, Usage,
};
use crate::init::proto::SpawnRequest;

/// One recorded call: its kind and the container (and process) it was about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    CreateSandbox(String),
    AdoptSandbox(String),
    AllocateNetwork(String),
    AttachNetwork(String),
    ReleaseNetwork(String),
    AttachDisk(String),
    ReleaseDisk(String),
    Spawn(String, String),
    /// A pea: container, what garden-init was asked to start, and whether it gets a cgroup of
    /// its own (with these limits).
    SpawnPea {
        handle: String,
        request: PeaRequest,
        resources: Option<Resources>,
        layers: usize,
    },
    Signal(String, String, Signal),
    SignalAll(String, Signal),
    Kill(String),
    RemoveCgroup(String),
    /// A warm container (by its warm name) went to a handle.
    ClaimWarm {
        warm: String,
        handle: String,
        hostname: String,
    },
    /// Limits set on a running sandbox (by the name it was made under).
    ApplyResources(String, Resources),
}

/// The parts of a pea's spawn request the core decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeaRequest {
    pub id: String,
    pub dir: String,
    pub user: String,
    pub env: Vec<String>,
}

/// Call kinds that [`Fake::fail_next`] can make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    CreateSandbox,
    AllocateNetwork,
    AttachNetwork,
    ReleaseNetwork,
    AttachDisk,
    ReleaseDisk,
}

#[derive(Default)]
pub struct Fake {
    calls: Arc<Mutex<Vec<Call>>>,
    failures: Mutex<HashMap<Kind, usize>>,
    /// How long each network release takes (none: at once).
    release_delay: Mutex<Option<std::time::Duration>>,
    /// Network releases under way, and the most there ever were at once.
    releasing: Arc<std::sync::atomic::AtomicUsize>,
    most_releasing: Arc<std::sync::atomic::AtomicUsize>,
}

impl Fake {
    pub fn new() -> Arc<Fake> {
        Arc::new(Fake::default())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }

    /// Each network release takes `delay` from now on.
    pub fn slow_releases(&self, delay: std::time::Duration) {
        *self.release_delay.lock().expect("delay lock") = Some(delay);
    }

    /// The most network releases that ran at once.
    pub fn most_concurrent_releases(&self) -> usize {
        self.most_releasing
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The next `n` calls of `kind` fail.
    pub fn fail_next(&self, kind: Kind, n: usize) {
        self.failures.lock().expect("failures lock").insert(kind, n);
    }

    fn record(&self, call: Call, kind: Option<Kind>) -> Result<()> {
        self.calls.lock().expect("calls lock").push(call.clone());
        let Some(kind) = kind else { return Ok(()) };
        let mut failures = self.failures.lock().expect("failures lock");
        match failures.get_mut(&kind) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(KernelError::Other(format!("fake failure of {call:?}")))
            }
            _ => Ok(()),
        }
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl Kernel for Fake {
    fn create_sandbox(
        &self,
        spec: SandboxSpec,
    ) -> BoxFuture<'_, Result<(Arc<dyn Sandbox>, Exits)>> {
        let r = self.record(
            Call::CreateSandbox(spec.handle.clone()),
            Some(Kind::CreateSandbox),
        );
        let calls = self.calls.clone();
        ready(r.map(|()| {
            let (exits_tx, exits) = mpsc::unbounded_channel();
            let (gone, _) = watch::channel(false);
            let sandbox: Arc<dyn Sandbox> = Arc::new(FakeSandbox {
                handle: spec.handle,
                calls,
                exits: exits_tx,
                running: Mutex::default(),
                gone,
            });
            (sandbox, exits)
        }))
    }

    fn reports_cpu_weight(&self) -> bool {
        false
    }

    fn capacity(&self, _depot: &Path) -> HostCapacity {
        HostCapacity {
            memory_bytes: 1 << 30,
            disk_bytes: 10 << 30,
        }
    }

    fn max_containers(&self) -> u64 {
        256
    }

    fn validate_network(&self, _: Bandwidth) -> Result<()> {
        Ok(())
    }

    fn allocate_network(&self, handle: &str, _network: &str) -> Result<()> {
        self.record(
            Call::AllocateNetwork(handle.into()),
            Some(Kind::AllocateNetwork),
        )
    }

    fn attach_network<'a>(
        &'a self,
        handle: &'a str,
        _hostname: &'a str,
        _sandbox: &'a dyn Sandbox,
        _netout: &'a [EgressRule],
        _bandwidth: Bandwidth,
    ) -> BoxFuture<'a, Result<()>> {
        ready(self.record(
            Call::AttachNetwork(handle.into()),
            Some(Kind::AttachNetwork),
        ))
    }

    fn release_network<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<()>> {
        let delay = *self.release_delay.lock().expect("delay lock");
        Box::pin(async move {
            use std::sync::atomic::Ordering::SeqCst;
            let now = self.releasing.fetch_add(1, SeqCst) + 1;
            self.most_releasing.fetch_max(now, SeqCst);
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            self.releasing.fetch_sub(1, SeqCst);
            self.record(
                Call::ReleaseNetwork(handle.into()),
                Some(Kind::ReleaseNetwork),
            )
        })
    }

    fn net_in<'a>(
        &'a self,
        _: &'a str,
        host: u32,
        container: u32,
    ) -> BoxFuture<'a, Result<(u32, u32)>> {
        ready(Ok((host, container)))
    }

    fn net_out<'a>(&'a self, _: &'a str, _: &'a [EgressRule]) -> BoxFuture<'a, Result<()>> {
        ready(Ok(()))
    }

    fn network_info(&self, _: &str) -> Option<NetInfo> {
        None
    }

    fn network_properties(&self, _: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("garden.network.container-ip".into(), "10.0.0.2".into())])
    }

    fn network_stats(&self, _: &str) -> Option<Traffic> {
        None
    }

    fn attach_disk<'a>(
        &'a self,
        handle: &'a str,
        _bundle: &'a Path,
        _limit: DiskLimit,
        _image: Usage,
    ) -> BoxFuture<'a, Result<()>> {
        ready(self.record(Call::AttachDisk(handle.into()), Some(Kind::AttachDisk)))
    }

    fn release_disk<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<()>> {
        ready(self.record(Call::ReleaseDisk(handle.into()), Some(Kind::ReleaseDisk)))
    }

    fn disk_usage(&self, _: &str) -> Option<Usage> {
        None
    }

    fn shutdown(&self, _empty: bool) -> BoxFuture<'_, ()> {
        ready(())
    }

    fn disk_layer_needed(&self, limit: &DiskLimit) -> bool {
        limit.limits_anything()
    }

    fn claim_warm<'a>(
        &'a self,
        warm: &'a str,
        handle: &'a str,
        hostname: &'a str,
        _sandbox: &'a dyn Sandbox,
    ) -> BoxFuture<'a, Result<()>> {
        let call = Call::ClaimWarm {
            warm: warm.into(),
            handle: handle.into(),
            hostname: hostname.into(),
        };
        ready(self.record(call, None))
    }

    /// A sandbox like a new one, with no live process (they all exited while "down").
    fn adopt_sandbox<'a>(
        &'a self,
        handle: &'a str,
        _cgroup: &'a str,
        _bundle: &'a Path,
        _init: InitIdentity,
        _ids: Option<rootfs::IdMapping>,
    ) -> BoxFuture<'a, Result<Adopted>> {
        let _ = self.record(Call::AdoptSandbox(handle.into()), None);
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let (gone, _) = watch::channel(false);
        let sandbox: Arc<dyn Sandbox> = Arc::new(FakeSandbox {
            handle: handle.into(),
            calls: self.calls.clone(),
            exits: exits_tx,
            running: Mutex::default(),
            gone,
        });
        ready(Ok((sandbox, exits, Vec::new())))
    }
}

struct FakeSandbox {
    handle: String,
    calls: Arc<Mutex<Vec<Call>>>,
    exits: mpsc::UnboundedSender<(String, i32)>,
    /// Processes that run until signalled, with the stdio they hold.
    running: Mutex<HashMap<String, Vec<OwnedFd>>>,
    gone: watch::Sender<bool>,
}

impl FakeSandbox {
    /// Run a "process" (see the module's doc) on the stdio the core handed over.
    fn start<'a>(
        &'a self,
        request: SpawnRequest,
        fds: &'a [RawFd],
    ) -> BoxFuture<'a, std::result::Result<i32, SpawnError>> {
        if self.has_exited() {
            return ready(Err(SpawnError::InitGone));
        }
        // Our own copies of the child's ends: [stdin, stdout, stderr] (the rest are the
        // reading ends garden-init would hold; not needed here).
        let owned: std::io::Result<Vec<OwnedFd>> = fds
            .iter()
            .take(3)
            // SAFETY: the caller keeps these fds open for the duration of the call.
            .map(|fd| unsafe { BorrowedFd::borrow_raw(*fd) }.try_clone_to_owned())
            .collect();
        let owned = match owned {
            Ok(o) => o,
            Err(e) => return ready(Err(SpawnError::Failed(e.to_string()))),
        };
        let id = request.id.clone();
        match request.path.as_str() {
            "echo" => {
                let line = format!("{}\n", request.args.join(" "));
                let _ = nix::unistd::write(&owned[1], line.as_bytes());
                drop(owned);
                let _ = self.exits.send((id, 0));
            }
            "exit" => {
                drop(owned);
                let status = request
                    .args
                    .first()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(0);
                let _ = self.exits.send((id, status));
            }
            _ => {
                self.running.lock().expect("running lock").insert(id, owned);
            }
        }
        ready(Ok(100))
    }

    fn record(&self, call: Call) {
        self.calls.lock().expect("calls lock").push(call);
    }

    /// The process ends: its stdio closes, then garden-init would report the status.
    fn end(&self, id: &str, status: i32) {
        if self
            .running
            .lock()
            .expect("running lock")
            .remove(id)
            .is_some()
        {
            let _ = self.exits.send((id.to_string(), status));
        }
    }
}

impl Sandbox for FakeSandbox {
    fn init_pid(&self) -> i32 {
        1
    }

    fn cgroup_name(&self) -> String {
        self.handle.clone()
    }

    fn apply_resources(&self, resources: &Resources) -> Result<()> {
        self.record(Call::ApplyResources(self.handle.clone(), *resources));
        Ok(())
    }

    fn has_exited(&self) -> bool {
        *self.gone.borrow()
    }

    fn kill(&self) -> BoxFuture<'_, ()> {
        self.record(Call::Kill(self.handle.clone()));
        // Like the kernel: every process dies with init, garden-init reports nothing.
        self.running.lock().expect("running lock").clear();
        self.gone.send_replace(true);
        ready(())
    }

    fn is_idle(&self) -> bool {
        self.running.lock().expect("running lock").is_empty()
    }

    fn open_root(&self) -> std::io::Result<OwnedFd> {
        Err(std::io::Error::other("the fake sandbox has no root"))
    }

    fn open_netns(&self) -> std::io::Result<OwnedFd> {
        Err(std::io::Error::other(
            "the fake sandbox has no network namespace",
        ))
    }

    fn open_ptmx(&self) -> std::io::Result<OwnedFd> {
        Err(std::io::Error::other("the fake sandbox has no ptys"))
    }

    fn spawn<'a>(
        &'a self,
        request: SpawnRequest,
        fds: &'a [RawFd],
    ) -> BoxFuture<'a, std::result::Result<i32, SpawnError>> {
        self.record(Call::Spawn(self.handle.clone(), request.id.clone()));
        self.start(request, fds)
    }

    fn spawn_pea<'a>(
        &'a self,
        pea: PeaSpec,
        request: SpawnRequest,
        fds: &'a [RawFd],
    ) -> BoxFuture<'a, std::result::Result<i32, SpawnError>> {
        self.record(Call::SpawnPea {
            handle: self.handle.clone(),
            request: PeaRequest {
                id: request.id.clone(),
                dir: request.dir.clone(),
                user: request.user.clone(),
                env: request.env.clone(),
            },
            resources: pea.resources,
            layers: pea.lower_dirs.len(),
        });
        self.start(request, fds)
    }

    fn signal<'a>(
        &'a self,
        process_id: &'a str,
        signal: Signal,
    ) -> BoxFuture<'a, std::io::Result<()>> {
        self.record(Call::Signal(
            self.handle.clone(),
            process_id.to_string(),
            signal,
        ));
        self.end(process_id, exit_status(signal));
        ready(Ok(()))
    }

    fn signal_all(&self, signal: Signal) -> BoxFuture<'_, std::io::Result<()>> {
        self.record(Call::SignalAll(self.handle.clone(), signal));
        let ids: Vec<String> = self
            .running
            .lock()
            .expect("running lock")
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.end(&id, exit_status(signal));
        }
        ready(Ok(()))
    }

    fn stats(&self) -> Stats {
        Stats::default()
    }

    fn oom_kills(&self) -> u64 {
        0
    }

    fn remove_cgroup(&self) -> BoxFuture<'_, Result<()>> {
        self.record(Call::RemoveCgroup(self.handle.clone()));
        ready(Ok(()))
    }
}

fn exit_status(signal: Signal) -> i32 {
    match signal {
        Signal::Terminate => 143,
        Signal::Kill => 137,
    }
}
