//! The kernel side of a container: clone garden-init into new namespaces, talk to it, watch it
//! die. Nothing here knows about HTTP or Garden's wire types beyond limits.

mod client;
pub(crate) mod clone;
pub mod depot_fs;
mod pea;
pub mod pidfd;
mod ready;
pub mod spawner;
pub mod userns;

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

use crate::cgroups::{CgroupError, Cgroups, ContainerCgroup, Resources};
use crate::init::proto::{FdMount, InitBindMount, InitConfig};
pub use client::{InitClient, RunningProcess, SpawnError};
pub use pea::{recorded_cgroups as pea_cgroups, PeaSpec};
use pidfd::PidFd;
use rootfs::IdMapping;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("start garden-init: {0}")]
    Clone(nix::Error),
    #[error("watch garden-init: {0}")]
    Watch(std::io::Error),
    #[error("container setup failed: {0}")]
    Setup(String),
    /// `state` says where it was stuck (see [`stuck_state`]), for a failure that may not repeat.
    #[error("garden-init did not become ready within {timeout:?} ({state})")]
    NotReady { timeout: Duration, state: String },
    #[error("connect to garden-init at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where a garden-init that never said ready is: its command name (still gardend's before
/// the exec), the kernel function it sleeps in, its kernel stack's top frames and the end
/// of its log. Best effort: whatever cannot be read is left out.
fn stuck_state(pid: i32, log: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/{pid}/{name}")).ok();
    let mut parts = Vec::new();
    if let Some(comm) = read("comm") {
        parts.push(format!("command {}", comm.trim()));
    }
    if let Some(wchan) = read("wchan").filter(|w| !w.is_empty() && w != "0") {
        parts.push(format!("waiting in {wchan}"));
    }
    if let Some(stack) = read("stack") {
        let frames: Vec<&str> = stack
            .lines()
            .take(6)
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|f| f.split('+').next().unwrap_or(f))
            .collect();
        if !frames.is_empty() {
            parts.push(format!("stack {}", frames.join(" < ")));
        }
    }
    if let Ok(text) = std::fs::read_to_string(log) {
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
        if !tail.is_empty() {
            parts.push(format!("log: {tail}"));
        }
    }
    if parts.is_empty() {
        "no state readable".to_string()
    } else {
        parts.join("; ")
    }
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a new sandbox is made of, in the server's own terms.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub handle: String,
    pub bundle: PathBuf,
    /// Overlay lower layers, top first.
    pub lower_dirs: Vec<PathBuf>,
    pub hostname: String,
    pub bind_mounts: Vec<InitBindMount>,
    pub resources: Resources,
    pub privileged: bool,
    /// The user namespace's maps; `None` = no user namespace (privileged: host ids).
    pub ids: Option<IdMapping>,
}

/// Creates sandboxes: owns the cgroup parents and knows where garden-init lives. Cheap to
/// clone: each sandbox keeps one, to start its peas.
#[derive(Clone)]
pub struct Runtime {
    cgroups: Cgroups,
    init_bin: PathBuf,
    templates: Arc<userns::Templates>,
    /// Where chown'd copies of lower layers go when a filesystem cannot be id-mapped.
    mapped_layers: PathBuf,
    /// Where writable layers go when the depot is a tmpfs ([`depot_fs`]); `None`: in bundles.
    layers: Option<PathBuf>,
    /// What removal looks for layers in (`<state dir>/writable`, whichever the layout).
    layers_dir: PathBuf,
}

/// A running container at the kernel level: garden-init (pid 1) and its cgroup.
pub struct Sandbox {
    /// garden-init, by pidfd: signals and /proc lookups can never reach a later owner of its
    /// pid (gardend reaps it the moment it exits). Shared with its [`monitor`], so a
    /// container costs gardend one pidfd, not one per user (descriptors bound density).
    init_process: Arc<PidFd>,
    pub cgroup: ContainerCgroup,
    /// gardend's cgroups, for limits set on the running sandbox.
    cgroups: Cgroups,
    pub init: InitClient,
    /// Its user namespace's mapping; `None` without one.
    pub ids: Option<IdMapping>,
    /// Becomes true once garden-init (and so every process of the container) is gone.
    exited: watch::Receiver<bool>,
    /// When garden-init started (see [`PidFd::start_time`]), recorded against pid reuse.
    start_time: u64,
    /// Its peas (processes with their own root filesystem), by process id.
    peas: pea::Peas,
}

/// Which garden-init a record names: its host pid and start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitIdentity {
    pub pid: i32,
    pub start_time: u64,
}

impl InitIdentity {
    /// A pidfd for the garden-init this names, if that very process still runs (same pid,
    /// same start time, named garden-init); `None` if it is gone.
    pub fn find(&self) -> Option<PidFd> {
        let p = PidFd::open(self.pid).ok()?;
        let same = p.start_time().ok()? == self.start_time && p.comm().ok()? == "garden-init";
        (same && !p.is_zombie()).then_some(p)
    }
}

/// Directory layout of a bundle.
pub fn upper_dir(bundle: &Path) -> PathBuf {
    bundle.join("upper")
}
pub fn rootfs_dir(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}
pub fn processes_dir(bundle: &Path) -> PathBuf {
    bundle.join("processes")
}
pub fn socket_path(bundle: &Path) -> PathBuf {
    bundle.join("init.sock")
}

impl Runtime {
    /// `state_dir` holds the cache of chown'd lower layers (for filesystems that cannot be
    /// id-mapped).
    pub fn new(cgroups: Cgroups, init_bin: PathBuf, state_dir: &Path) -> Runtime {
        Runtime {
            cgroups,
            init_bin,
            templates: Arc::default(),
            mapped_layers: state_dir.join("mapped-layers"),
            layers: None,
            layers_dir: depot_fs::layers_dir(state_dir),
        }
    }

    /// Put writable layers in `layers` (the depot is a tmpfs) instead of in the bundles.
    pub fn with_layers(mut self, layers: Option<PathBuf>) -> Runtime {
        self.layers = layers;
        self
    }

    /// Remove a bundle and the writable layers it and its peas point to.
    pub fn remove_bundle(&self, bundle: &Path) -> std::io::Result<()> {
        depot_fs::remove_bundle(bundle, &self.layers_dir)
    }

    /// Remove the writable layers no bundle in `kept` points to.
    pub fn sweep_layers(&self, kept: &[PathBuf]) {
        depot_fs::sweep_layers(&self.layers_dir, kept)
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    /// Build the container and start its init. On error nothing is left behind but the bundle
    /// directory, which the caller owns.
    pub async fn create(
        &self,
        spec: &SandboxSpec,
    ) -> Result<(Sandbox, mpsc::UnboundedReceiver<(String, i32)>)> {
        let bundle = &spec.bundle;
        prepare_bundle(bundle, spec.ids.as_ref(), self.layers.as_deref())?;
        let lowers = self.lowers(&spec.lower_dirs, spec.ids.as_ref()).await?;
        let cgroup = self.cgroups.create(&spec.handle, &spec.resources)?;
        match self.start(spec, &cgroup, lowers).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let _ = cgroup.remove();
                Err(e)
            }
        }
    }

    /// The overlay's lower layers for this container: as they are without a user namespace;
    /// else an id-mapped clone of each (attached by garden-init inside the container), or,
    /// where the filesystem cannot be id-mapped, a chown'd copy cached per layer and mapping.
    async fn lowers(&self, lower_dirs: &[PathBuf], ids: Option<&IdMapping>) -> Result<Vec<Lower>> {
        let Some(ids) = ids else {
            return Ok(lower_dirs.iter().cloned().map(Lower::Dir).collect());
        };
        let mut out = Vec::new();
        for dir in lower_dirs {
            match self.templates.idmapped_tree(dir, ids) {
                Ok(fd) => out.push(Lower::Mapped(fd)),
                Err(e) => {
                    tracing::debug!(layer = %dir.display(), error = %e, "cannot id-map; using a chown'd copy");
                    let (dir, cache, ids) = (dir.clone(), self.mapped_layers.clone(), ids.clone());
                    let copy = tokio::task::spawn_blocking(move || {
                        rootfs::mapped_copy::ensure(&dir, &cache, &ids)
                    })
                    .await
                    .map_err(|e| RuntimeError::Setup(e.to_string()))?
                    .map_err(|e| RuntimeError::Setup(format!("map lower layer: {e}")))?;
                    out.push(Lower::Dir(copy));
                }
            }
        }
        Ok(out)
    }

    async fn start(
        &self,
        spec: &SandboxSpec,
        cgroup: &ContainerCgroup,
        lowers: Vec<Lower>,
    ) -> Result<(Sandbox, mpsc::UnboundedReceiver<(String, i32)>)> {
        let bundle = &spec.bundle;
        let (passed, mounts) = Mounts::plan(bundle, lowers, &spec.bind_mounts, None)?;
        let b = &mounts.bundle;
        let config = InitConfig {
            lower_dirs: mounts.lower_dirs,
            lower_mounts: mounts.lower_mounts,
            user_namespace: spec.ids.is_some(),
            upper_dir: mounts.upper,
            work_dir: mounts.work,
            rootfs: b.join("rootfs"),
            hostname: spec.hostname.clone(),
            bind_mounts: mounts.bind_mounts,
            // gardend puts garden-init in its cgroups when it asks (`ready`).
            cgroup_procs: Vec::new(),
            socket: b.join("init.sock"),
            processes_dir: mounts.processes,
            privileged: spec.privileged,
            devices_allowlisted: self.cgroups.layout().restricts_devices(),
            pea: None,
        };
        let init_json = bundle.join("init.json");
        std::fs::write(
            &init_json,
            serde_json::to_vec(&config).expect("init config serialises"),
        )
        .map_err(io_err("write", &init_json))?;

        let (ready_r, ready_w) = ready::channel().map_err(RuntimeError::Clone)?;
        let log_path = bundle.join("init.log");
        let log: OwnedFd = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err("open", &log_path))?
            .into();
        let (go_r, go_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(RuntimeError::Clone)?;
        let fds = clone::InitFds {
            ready: &ready_w,
            log: &log,
            opened: &passed.opened,
            passed: &passed.fds,
            go: &go_r,
        };
        let t0 = std::time::Instant::now();
        let pid = clone::spawn_init(&self.init_bin, b, &fds, spec.ids.is_some())
            .map_err(RuntimeError::Clone)?;
        drop((ready_w, log, go_r, passed));
        // Our unreaped child: the pid is still its own here.
        let init_process = Arc::new(PidFd::open(pid).map_err(RuntimeError::Watch)?);
        // Before init reports ready, so before any container process exists.
        shield_from_oom(&init_process);
        let (exited_tx, exited) = watch::channel(false);
        tokio::spawn(monitor(init_process.clone(), exited_tx, true));
        let start_time = init_process.start_time().unwrap_or(0);

        let abort = |e: RuntimeError| {
            // ESRCH (already reaped) is fine: it is gone either way.
            let _ = init_process.signal(libc::SIGKILL);
            e
        };
        if let Some(ids) = spec.ids.as_ref() {
            if let Err(e) = write_id_maps(&init_process, ids) {
                return Err(abort(e));
            }
        }
        // Let it exec (a write to our own fresh pipe; the child holds the read end).
        if let Err(e) = nix::unistd::write(&go_w, b"g") {
            return Err(abort(RuntimeError::Clone(e)));
        }
        drop(go_w);
        let execed = t0.elapsed();
        let mut joined = None;
        let pid = init_process.pid();
        let setup = ready::await_ready_in_time(ready_r, "garden-init", pid, &log_path, async {
            let r = join_cgroups(pid, cgroup).await;
            joined = Some(t0.elapsed());
            r
        });
        if let Err(e) = setup.await {
            return Err(abort(e));
        }
        tracing::debug!(
            handle = spec.handle,
            execed_ms = execed.as_secs_f64() * 1e3,
            joined_ms = joined.unwrap_or_default().as_secs_f64() * 1e3,
            ready_ms = t0.elapsed().as_secs_f64() * 1e3,
            "garden-init started (execed: id maps written; joined: its root built, in its cgroups)"
        );
        let socket = socket_path(bundle);
        let (init, exits) = InitClient::connect(&socket).await.map_err(|source| {
            abort(RuntimeError::Connect {
                path: socket.clone(),
                source,
            })
        })?;
        let (peas, exits) = pea::Peas::new(self.clone(), bundle, exits);
        Ok((
            Sandbox {
                init_process,
                cgroup: cgroup.clone(),
                cgroups: self.cgroups.clone(),
                init,
                ids: spec.ids.clone(),
                exited,
                start_time,
                peas,
            },
            exits,
        ))
    }

    /// Take over a container a previous gardend made: garden-init `init` (checked against pid
    /// reuse), its cgroup, its socket and its live processes' stdio.
    pub async fn adopt(
        &self,
        cgroup: &str,
        bundle: &Path,
        init: InitIdentity,
        ids: Option<IdMapping>,
    ) -> Result<(
        Sandbox,
        mpsc::UnboundedReceiver<(String, i32)>,
        Vec<RunningProcess>,
    )> {
        let gone = || {
            RuntimeError::Watch(std::io::Error::other(format!(
                "garden-init {} is gone",
                init.pid
            )))
        };
        let init_process = Arc::new(init.find().ok_or_else(gone)?);
        let (exited_tx, exited) = watch::channel(false);
        // Not our child (its parent was the previous gardend): watch it, never reap it.
        tokio::spawn(monitor(init_process.clone(), exited_tx, false));
        let socket = socket_path(bundle);
        let (client, exits, running) =
            InitClient::adopt(&socket)
                .await
                .map_err(|source| RuntimeError::Connect {
                    path: socket.clone(),
                    source,
                })?;
        let (peas, exits) = pea::Peas::new(self.clone(), bundle, exits);
        let cgroup = self.cgroups.container(cgroup);
        let mut running = running;
        running.extend(peas.adopt(&cgroup).await);
        Ok((
            Sandbox {
                init_process,
                cgroup,
                cgroups: self.cgroups.clone(),
                init: client,
                exited,
                start_time: init.start_time,
                ids,
                peas,
            },
            exits,
            running,
        ))
    }
}

impl Sandbox {
    pub fn has_exited(&self) -> bool {
        *self.exited.borrow()
    }

    /// Wait until garden-init is gone.
    pub async fn wait_exit(&self) {
        let mut rx = self.exited.clone();
        let _ = rx.wait_for(|e| *e).await;
    }

    /// Kill the whole container: SIGKILL to pid 1 makes the kernel kill every process of the
    /// pid namespace and wait for them before init itself is reaped; the mount namespace (and
    /// with it the overlay and every other mount) goes away with the last process.
    pub async fn kill(&self) {
        // ESRCH: already reaped, which is what we wait for anyway.
        let _ = self.init_process.signal(libc::SIGKILL);
        self.wait_exit().await;
    }

    /// [`kill`](Sandbox::kill), holding the mount namespace first: then garden-init's exit
    /// does not unmount the overlay, /proc, /sys, /dev and the rest (each file system's
    /// shutdown: its dentries and inodes freed, its shrinker and LRU lists unregistered);
    /// whoever closes the returned fd does. `None` if init is already gone.
    pub async fn kill_keeping_mounts(&self) -> Option<OwnedFd> {
        let mounts = self
            .init_process
            .open_in_proc("ns/mnt", nix::fcntl::OFlag::O_RDONLY)
            .ok();
        self.kill().await;
        mounts
    }

    /// garden-init's host pid when it started (for the record and logs; never signalled).
    pub fn init_pid(&self) -> i32 {
        self.init_process.pid()
    }

    /// garden-init's pid and start time, for the record.
    pub fn identity(&self) -> InitIdentity {
        InitIdentity {
            pid: self.init_pid(),
            start_time: self.start_time,
        }
    }

    /// Set cgroup limits while it runs (zero = leave as it is).
    pub fn apply_resources(&self, resources: &Resources) -> Result<()> {
        Ok(self.cgroups.apply(&self.cgroup, resources)?)
    }

    /// Its bundle directory is now `bundle` (a warm container claimed under its handle).
    pub fn moved(&self, bundle: &Path) {
        self.peas.moved(bundle);
    }

    /// Name the container's host `name` (its UTS namespace's hostname). A thread of our own
    /// joins the namespace, sets the name and ends, so no other work runs in it.
    pub fn set_hostname(&self, name: &str) -> std::io::Result<()> {
        let uts = self
            .init_process
            .open_in_proc("ns/uts", nix::fcntl::OFlag::O_RDONLY)?;
        let name = name.to_string();
        std::thread::spawn(move || -> std::io::Result<()> {
            nix::sched::setns(&uts, nix::sched::CloneFlags::CLONE_NEWUTS)?;
            nix::unistd::sethostname(&name)?;
            Ok(())
        })
        .join()
        .map_err(|_| std::io::Error::other("hostname thread panicked"))?
    }

    /// Host pids in the container other than init.
    pub fn other_pids(&self) -> Vec<i32> {
        let init = self.init_pid();
        self.cgroup
            .pids()
            .into_iter()
            .filter(|p| *p != init)
            .collect()
    }

    /// Start a pea: `request` in a root filesystem of its own (see `pea`).
    pub async fn spawn_pea(
        &self,
        spec: PeaSpec,
        request: crate::init::proto::SpawnRequest,
        fds: &[std::os::fd::RawFd],
    ) -> std::result::Result<i32, SpawnError> {
        if self.has_exited() {
            return Err(SpawnError::InitGone);
        }
        let container = pea::Container {
            init: &self.init_process,
            cgroup: &self.cgroup,
            ids: self.ids.as_ref(),
        };
        self.peas.spawn(container, spec, request, fds).await
    }

    /// Signal process `id`, through the init that started it.
    pub async fn signal(&self, id: &str, signal: i32) -> std::io::Result<()> {
        match self.peas.get(id) {
            Some(pea) => pea.client.signal(id, signal).await,
            None => self.init.signal(id, signal).await,
        }
    }

    /// gardend closed a process's stdin (see `ToInit::CloseStdin`).
    pub async fn close_stdin(&self, id: &str) -> std::io::Result<()> {
        match self.peas.get(id) {
            Some(pea) => pea.client.close_stdin(id).await,
            None => self.init.close_stdin(id).await,
        }
    }

    /// The cgroup statistics of pea `id` (its own cgroup's, or the container's).
    pub fn pea_stats(&self, id: &str) -> Option<crate::cgroups::Stats> {
        self.peas.stats(id)
    }

    /// Once the container is killed: wait for its peas' cleanup, then remove its cgroup.
    pub async fn remove_cgroup(&self) -> Result<()> {
        self.peas.wait_all().await;
        let cgroup = self.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.remove())
            .await
            .map_err(|e| RuntimeError::Setup(e.to_string()))??;
        Ok(())
    }

    /// An fd of the container's root directory, for path resolution inside it.
    pub fn open_root(&self) -> std::io::Result<OwnedFd> {
        self.init_process.open_in_proc(
            "root",
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
        )
    }

    /// An fd of the container's network namespace (for setns, `ip ... netns`, `nsenter`).
    pub fn open_netns(&self) -> std::io::Result<OwnedFd> {
        self.init_process
            .open_in_proc("ns/net", nix::fcntl::OFlag::O_RDONLY)
    }

    /// The container's own `/dev/pts/ptmx`, opened for a new pty. With a user namespace it is
    /// opened as container root, who then owns the new pty (devpts gives it the opener's
    /// fsuid), so garden-init may hand it to the process's user.
    pub fn open_ptmx(&self) -> std::io::Result<OwnedFd> {
        let open = || {
            self.init_process.open_in_proc(
                "root/dev/pts/ptmx",
                nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY,
            )
        };
        match &self.ids {
            Some(ids) => {
                let (uid, gid) = ids.root();
                rootfs::idmap::as_fs_ids(uid, gid, open)
            }
            None => open(),
        }
    }
}

/// One overlay lower layer as garden-init gets it.
enum Lower {
    /// A host directory it mounts by path.
    Dir(PathBuf),
    /// A detached id-mapped mount it attaches first.
    Mapped(OwnedFd),
}

/// Where garden-init finds its bundle, layers and bind mounts, as it names them.
struct Mounts {
    /// The bundle (its descriptor path).
    bundle: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    lower_dirs: Vec<PathBuf>,
    lower_mounts: Vec<FdMount>,
    bind_mounts: Vec<InitBindMount>,
    /// Where it records exit codes.
    processes: PathBuf,
}

impl Mounts {
    /// garden-init reaches its bundle, upper and work directories and lower layers through
    /// descriptors: container root in a user namespace may not be able to walk the host paths
    /// to them, and the overlay's options (in the container's mountinfo) name `/proc/self/fd/N`
    /// instead of the depot. Id-mapped layers and bind mount sources are detached mounts it
    /// attaches. `processes`: another directory for exit codes than the bundle's
    /// (a pea's init records them in its container's).
    fn plan(
        bundle: &Path,
        lowers: Vec<Lower>,
        bind_mounts: &[InitBindMount],
        processes: Option<&Path>,
    ) -> Result<(Passed, Mounts)> {
        let mut dirs = vec![bundle.to_path_buf(), upper_dir(bundle), bundle.join("work")];
        let processes = processes.map(|p| {
            dirs.push(p.to_path_buf());
            Passed::opened_path(dirs.len() - 1)
        });
        let mut lower_dirs = Vec::new();
        let mut mapped = Vec::new();
        for lower in lowers {
            match lower {
                // By descriptor in privileged containers too: overlay's options, which the
                // container reads in /proc/self/mountinfo, then name no host path.
                Lower::Dir(d) => {
                    lower_dirs.push(Passed::opened_path(dirs.len()));
                    dirs.push(d);
                }
                Lower::Mapped(fd) => {
                    lower_dirs.push(PathBuf::new()); // set below, once numbers are known
                    mapped.push((lower_dirs.len() - 1, fd));
                }
            }
        }
        let mut passed = Passed::new(&dirs)?;
        let [b, upper, work] = [0, 1, 2].map(Passed::opened_path);
        let mut lower_mounts = Vec::new();
        for (i, fd) in mapped {
            let name = format!("lower/{}", lower_mounts.len());
            let host = bundle.join(&name);
            std::fs::create_dir_all(&host).map_err(io_err("create", &host))?;
            let target = b.join(&name);
            lower_dirs[i] = target.clone();
            lower_mounts.push(FdMount {
                fd: passed.add(fd),
                target,
            });
        }
        let mut bind_mounts = bind_mounts.to_vec();
        for m in &mut bind_mounts {
            let meta = std::fs::metadata(&m.src).map_err(io_err("bind mount source", &m.src))?;
            let tree = userns::detached_clone(&m.src, m.read_only)
                .map_err(io_err("bind mount source", &m.src))?;
            m.src_is_dir = meta.is_dir();
            m.fd = Some(passed.add(tree));
        }
        let mounts = Mounts {
            processes: processes.unwrap_or_else(|| b.join("processes")),
            bundle: b,
            upper,
            work,
            lower_dirs,
            lower_mounts,
            bind_mounts,
        };
        Ok((passed, mounts))
    }
}

/// Descriptors garden-init starts with: the directories it opens itself (fds 4, 5, ...), then
/// the detached mounts gardend hands it.
struct Passed {
    opened: Vec<std::ffi::CString>,
    fds: Vec<OwnedFd>,
}

impl Passed {
    fn new(dirs: &[PathBuf]) -> Result<Passed> {
        let opened = dirs
            .iter()
            .map(|d| {
                std::ffi::CString::new(d.as_os_str().as_encoded_bytes())
                    .map_err(|_| io_err("open", d)(std::io::Error::from_raw_os_error(libc::EINVAL)))
            })
            .collect::<Result<_>>()?;
        Ok(Passed {
            opened,
            fds: Vec::new(),
        })
    }

    /// The `i`th opened directory as garden-init names it: its own descriptor, so no
    /// permission on the host path above it is needed.
    fn opened_path(i: usize) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", 4 + i))
    }

    /// Hand over `fd`; its number in garden-init.
    fn add(&mut self, fd: OwnedFd) -> i32 {
        self.fds.push(fd);
        3 + (self.opened.len() + self.fds.len()) as i32
    }
}

/// A user namespace's id maps, written before garden-init execs (it becomes container root
/// then, which must be mapped). The child is blocked until we release it and unreaped, so its
/// pid names it; its /proc files are opened through the pidfd all the same.
fn write_id_maps(init: &PidFd, ids: &IdMapping) -> Result<()> {
    let pid = init.pid();
    let write = |name: &str, text: &str| -> std::io::Result<()> {
        let fd = init.open_in_proc(name, nix::fcntl::OFlag::O_WRONLY)?;
        std::io::Write::write_all(&mut std::fs::File::from(fd), text.as_bytes())
    };
    for (name, ranges) in [("uid_map", &ids.uids), ("gid_map", &ids.gids)] {
        let path = PathBuf::from(format!("/proc/{pid}/{name}"));
        write(name, &IdMapping::map_file(ranges)).map_err(io_err("write", &path))?;
    }
    Ok(())
}

/// Move an init (our child, alive and waiting for the answer) into its cgroups, when it asks
/// (see [`ready`] for why not earlier). gardend does it: container root in a user namespace
/// may not write the host's cgroup files. In a blocking thread: each write migrates a task,
/// which can wait for an RCU grace period (several ms here, one per v1 hierarchy), and a
/// reactor thread held that long stalls every request it serves.
async fn join_cgroups(pid: i32, cgroup: &ContainerCgroup) -> Result<()> {
    let files = cgroup.procs_files();
    tokio::task::spawn_blocking(move || {
        let pid = pid.to_string();
        for procs in files {
            std::fs::write(&procs, &pid).map_err(io_err("join cgroup", &procs))?;
        }
        Ok(())
    })
    .await
    .map_err(|e| RuntimeError::Setup(format!("join cgroups: {e}")))?
}

/// The container's OOM killer must pick one of its processes, never pid 1 (which takes the
/// whole container down). Lowering a score needs CAP_SYS_RESOURCE, which garden-init lacks
/// inside a user namespace and some hosts withhold from gardend too: then init stays at 0 and
/// garden-init raises its processes' scores instead (`init/supervisor.rs`).
fn shield_from_oom(init: &PidFd) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    let written = init
        .open_in_proc("oom_score_adj", nix::fcntl::OFlag::O_WRONLY)
        .and_then(|fd| std::fs::File::from(fd).write_all(b"-1000"));
    if let Err(e) = written {
        WARNED.call_once(|| {
            tracing::warn!(error = %e, "cannot lower garden-init's OOM score (no CAP_SYS_RESOURCE?); container processes get a raised score instead");
        });
    }
}

/// A shared pidfd as the reactor polls it: the `Arc` keeps the descriptor open for as long as
/// it is registered, without a duplicate descriptor of its own.
struct Polled(Arc<PidFd>);

impl AsRawFd for Polled {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Reap garden-init (when `reap`: it is our child) as soon as its pidfd says it exited.
async fn monitor(init: Arc<PidFd>, exited: watch::Sender<bool>, reap: bool) {
    let pid = init.pid();
    let polled = Polled(init.clone());
    // SAFETY: `Polled` holds the `Arc`, so the pidfd stays open, and is the same descriptor,
    // for as long as the AsyncFd (which owns it) exists; nothing ever closes a PidFd's fd
    // but its drop.
    let registered =
        unsafe { AsyncFd::register_with_interest(polled, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1);
    match registered {
        Ok(fd) => {
            let _ = fd.readable().await;
            if !reap {
                // Someone else's child: exited is all we can know, and all we need.
            } else if let Err(e) = init.reap() {
                tracing::warn!(pid, error = %e, "reap garden-init");
            }
        }
        Err(e) => {
            tracing::warn!(pid, error = %e, "pidfd not pollable; reaping in a blocking thread");
            if reap {
                let _ = tokio::task::spawn_blocking(move || init.reap()).await;
            } else {
                while init.is_alive() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    let _ = exited.send(true);
}

/// Where garden-init is: an explicit path, or next to the running gardend.
pub fn find_init_bin(explicit: Option<&Path>) -> std::io::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("garden-init"),
    };
    if !path.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "garden-init not found at {} (build it, or pass --init-bin)",
                path.display()
            ),
        ));
    }
    Ok(path)
}

/// Shared handle to a sandbox.
pub type SandboxRef = Arc<Sandbox>;

/// The directories of a bundle (a container's or a pea's): the overlay's upper and work
/// directories, the root mount point and the process records. With a user namespace,
/// container root (garden-init in its namespace) binds its socket in the bundle, records
/// exits and builds the overlay: those directories are its own.
pub(crate) fn prepare_bundle(
    bundle: &Path,
    ids: Option<&IdMapping>,
    layers: Option<&Path>,
) -> Result<()> {
    depot_fs::make_layer(bundle, layers).map_err(io_err("create the writable layer of", bundle))?;
    for d in [rootfs_dir(bundle), processes_dir(bundle)] {
        std::fs::create_dir_all(&d).map_err(io_err("create", &d))?;
    }
    if let Some(ids) = ids {
        let (uid, gid) = ids.root();
        for d in [
            bundle.to_path_buf(),
            upper_dir(bundle),
            bundle.join("work"),
            processes_dir(bundle),
        ] {
            std::os::unix::fs::chown(&d, Some(uid), Some(gid)).map_err(io_err("chown", &d))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::stuck_state;

    #[test]
    fn stuck_state_names_the_process_and_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("init.log");
        std::fs::write(&log, "first\n\nmount /: busy\nlast line\n").unwrap();
        // A copy of this test that sleeps in pause(2), as a stuck garden-init would sleep.
        // SAFETY: the child only calls pause and _exit, async-signal-safe.
        let pid = match unsafe { nix::unistd::fork() }.unwrap() {
            // SAFETY: as above.
            nix::unistd::ForkResult::Child => unsafe {
                libc::pause();
                libc::_exit(0)
            },
            nix::unistd::ForkResult::Parent { child } => child,
        };
        // Until it sleeps, its wchan is empty.
        let mut state = String::new();
        for _ in 0..100 {
            state = stuck_state(pid.as_raw(), &log);
            if state.contains("waiting in") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        nix::sys::wait::waitpid(pid, None).unwrap();
        // The child is named after the thread that forked it.
        let own = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
        let expected = format!("command {}; waiting in ", own.trim());
        assert!(state.starts_with(&expected), "{state}");
        assert!(state.contains("pause"), "{state}");
        assert!(
            state.ends_with("log: first | mount /: busy | last line"),
            "{state}"
        );
        let gone = stuck_state(i32::MAX, &dir.path().join("missing"));
        assert_eq!(gone, "no state readable");
    }
}
