//! Peas: processes with their own root filesystem. A pea is served by a garden-init of its
//! own (`InitConfig::pea`) that joins the container's user, network, ipc, uts and pid
//! namespaces, builds the pea's image as its root in a new mount namespace, starts the one
//! process and leaves when it is gone, which takes the mount namespace (the pea's rootfs)
//! with it. It lives in the container's pid namespace, so destroying the container kills it.

use std::collections::HashMap;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::client::{InitClient, SpawnError};
use super::clone::{self, JoinedNamespaces};
use super::pidfd::PidFd;
use super::{
    io_err, monitor, processes_dir, shield_from_oom, InitIdentity, Mounts, Result, RunningProcess,
    Runtime, RuntimeError,
};
use crate::cgroups::{ContainerCgroup, Resources, Stats};
use crate::init::proto::{InitBindMount, InitConfig, PeaConfig, SpawnRequest};
use rootfs::IdMapping;

/// A pea as the core asks for it.
#[derive(Debug, Clone)]
pub struct PeaSpec {
    /// Overlay lower layers of its image, top first.
    pub lower_dirs: Vec<PathBuf>,
    pub bind_mounts: Vec<InitBindMount>,
    /// `Some`: a cgroup of its own with these limits (zero = unlimited); `None`: it counts
    /// against the container's.
    pub resources: Option<Resources>,
}

/// Name prefix of the cgroups peas with limits of their own get (beside the containers').
pub const PEA_CGROUP_PREFIX: &str = "pea-";

/// `<bundle>/peas`: the bundles of a container's peas.
pub(super) fn peas_dir(bundle: &Path) -> PathBuf {
    bundle.join("peas")
}

/// The own cgroups of a container's peas, as their records name them (the sweep of a
/// restarted gardend keeps them for adoption).
pub fn recorded_cgroups(bundle: &Path) -> Vec<String> {
    std::fs::read_dir(peas_dir(bundle))
        .map(|d| {
            d.flatten()
                .filter_map(|e| Record::read(&e.path())?.cgroup)
                .collect()
        })
        .unwrap_or_default()
}

/// What a restarted gardend needs to take a pea over: `<pea bundle>/pea.record`, plain
/// lines: `<init pid> <init start time> <mount ns dev> <mount ns inode>`, its own cgroup's
/// name or `-`, then its image layers.
struct Record {
    init: InitIdentity,
    mnt: MountNs,
    cgroup: Option<String>,
    layers: Vec<PathBuf>,
}

impl Record {
    fn path(bundle: &Path) -> PathBuf {
        bundle.join("pea.record")
    }

    fn write(&self, bundle: &Path) -> Result<()> {
        let mut text = format!(
            "{} {} {} {}\n{}\n",
            self.init.pid,
            self.init.start_time,
            self.mnt.0,
            self.mnt.1,
            self.cgroup.as_deref().unwrap_or("-")
        );
        for l in &self.layers {
            text.push_str(&l.display().to_string());
            text.push('\n');
        }
        let path = Record::path(bundle);
        std::fs::write(&path, text).map_err(io_err("write", &path))
    }

    fn read(bundle: &Path) -> Option<Record> {
        let text = std::fs::read_to_string(Record::path(bundle)).ok()?;
        let mut lines = text.lines();
        let nums: Vec<u64> = lines
            .next()?
            .split_whitespace()
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        let [pid, start_time, dev, ino] = nums.as_slice() else {
            return None;
        };
        let cgroup = match lines.next()? {
            "-" => None,
            name if name.starts_with(PEA_CGROUP_PREFIX) && !name.contains('/') => {
                Some(name.to_string())
            }
            _ => return None,
        };
        Some(Record {
            init: InitIdentity {
                pid: i32::try_from(*pid).ok()?,
                start_time: *start_time,
            },
            mnt: MountNs(*dev, *ino),
            cgroup,
            layers: lines.map(PathBuf::from).collect(),
        })
    }
}

/// The network files a pea gets from its container.
const SHARED_ETC: [&str; 2] = ["/etc/hosts", "/etc/resolv.conf"];

/// A container's peas and the container's exit channel they report into.
pub(super) struct Peas {
    runtime: Runtime,
    /// The container's bundle (it moves when a warm container is claimed); its peas' are in
    /// `peas/<id>`.
    bundle: Mutex<PathBuf>,
    live: Arc<Mutex<HashMap<String, Arc<Pea>>>>,
    /// Only a weak sender: the channel still closes when the container's init is gone.
    exits: mpsc::WeakUnboundedSender<(String, i32)>,
}

/// One running pea.
pub(super) struct Pea {
    pub(super) client: InitClient,
    cgroup: ContainerCgroup,
    /// Becomes true once the pea is gone and cleaned up (its exit is reported after that).
    gone: watch::Receiver<bool>,
}

/// The namespaces, root and owner of a container, which a pea joins.
pub(super) struct Container<'a> {
    pub init: &'a PidFd,
    pub cgroup: &'a ContainerCgroup,
    pub ids: Option<&'a IdMapping>,
}

impl Peas {
    /// Pass the init's exit events on through a channel the peas report into as well.
    pub(super) fn new(
        runtime: Runtime,
        bundle: &Path,
        mut init_exits: mpsc::UnboundedReceiver<(String, i32)>,
    ) -> (Peas, mpsc::UnboundedReceiver<(String, i32)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let weak = tx.downgrade();
        tokio::spawn(async move {
            while let Some(e) = init_exits.recv().await {
                let _ = tx.send(e);
            }
        });
        let peas = Peas {
            runtime,
            bundle: Mutex::new(bundle.to_path_buf()),
            live: Arc::default(),
            exits: weak,
        };
        (peas, rx)
    }

    fn bundle(&self) -> PathBuf {
        self.bundle.lock().expect("bundle lock").clone()
    }

    /// The container's bundle is now at `bundle`.
    pub(super) fn moved(&self, bundle: &Path) {
        *self.bundle.lock().expect("bundle lock") = bundle.to_path_buf();
    }

    /// The running pea `id`, if it is one.
    pub(super) fn get(&self, id: &str) -> Option<Arc<Pea>> {
        self.live.lock().expect("peas lock").get(id).cloned()
    }

    /// The statistics of the pea's cgroup (the container's when it has none of its own).
    pub(super) fn stats(&self, id: &str) -> Option<Stats> {
        self.get(id).map(|p| p.cgroup.stats())
    }

    /// Wait until every pea is gone and cleaned up (after the container was killed).
    pub(super) async fn wait_all(&self) {
        let gone: Vec<_> = self
            .live
            .lock()
            .expect("peas lock")
            .values()
            .map(|p| p.gone.clone())
            .collect();
        for mut g in gone {
            let _ = g.wait_for(|g| *g).await;
        }
    }

    /// Take over the peas a previous gardend started in this container: each whose init
    /// still runs is watched again and its process handed back (with its image layers, for
    /// the core to pin); what is left of the others is removed (their exit codes are in the
    /// container's `processes/`).
    pub(super) async fn adopt(&self, container_cgroup: &ContainerCgroup) -> Vec<RunningProcess> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(peas_dir(&self.bundle())) else {
            return out;
        };
        for e in entries.flatten() {
            let bundle = e.path();
            let id = e.file_name().to_string_lossy().into_owned();
            let record = Record::read(&bundle);
            let cgroup = match record.as_ref().and_then(|r| r.cgroup.as_deref()) {
                Some(name) => self.runtime.cgroups.container(name),
                None => container_cgroup.clone(),
            };
            let own = record.as_ref().is_some_and(|r| r.cgroup.is_some());
            let init = record.as_ref().and_then(|r| r.init.find());
            let (Some(record), Some(init)) = (record, init) else {
                tracing::info!(
                    process = id,
                    "a pea of the previous run is gone; removing it"
                );
                if let Some(r) = Record::read(&bundle) {
                    let cg = cgroup.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || kill_in_namespace(&cg, r.mnt)).await;
                }
                cleanup(&self.runtime, &bundle, own.then_some(cgroup)).await;
                continue;
            };
            let socket = super::socket_path(&bundle);
            let adopted = InitClient::adopt(&socket).await;
            let (client, exits, running) = match adopted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(process = id, error = %e, "cannot adopt a pea; killing it");
                    let _ = init.signal(libc::SIGKILL);
                    let mnt = record.mnt;
                    let cg = cgroup.clone();
                    let _ = tokio::task::spawn_blocking(move || kill_in_namespace(&cg, mnt)).await;
                    cleanup(&self.runtime, &bundle, own.then_some(cgroup)).await;
                    continue;
                }
            };
            let Ok(watched) = init.try_clone() else {
                continue;
            };
            let (exited_tx, exited) = watch::channel(false);
            // Not our child any more (its parent was the previous gardend): never reaped here.
            tokio::spawn(monitor(Arc::new(watched), exited_tx, false));
            let client = client.with_processes_dir(processes_dir(&self.bundle()));
            self.watch(id, client, bundle, cgroup, own, record.mnt, exits, exited);
            out.extend(running.into_iter().map(|mut r| {
                r.layers = record.layers.clone();
                r
            }));
        }
        out
    }

    /// Keep `client`'s pea among the live ones until it is gone, then clean up after it.
    #[allow(clippy::too_many_arguments)]
    fn watch(
        &self,
        id: String,
        client: InitClient,
        bundle: PathBuf,
        cgroup: ContainerCgroup,
        own: bool,
        mnt: MountNs,
        pea_exits: mpsc::UnboundedReceiver<(String, i32)>,
        exited: watch::Receiver<bool>,
    ) {
        let (gone_tx, gone) = watch::channel(false);
        let pea = Arc::new(Pea {
            client,
            cgroup: cgroup.clone(),
            gone,
        });
        self.live.lock().expect("peas lock").insert(id.clone(), pea);
        let left = Leftovers {
            runtime: self.runtime.clone(),
            bundle,
            cgroup,
            own,
            mnt,
        };
        tokio::spawn(watch_pea(
            id,
            left,
            pea_exits,
            exited,
            gone_tx,
            self.live.clone(),
            self.exits.clone(),
        ));
    }

    /// Build and start the pea `request.id`; its pid in the container.
    pub(super) async fn spawn(
        &self,
        container: Container<'_>,
        spec: PeaSpec,
        request: SpawnRequest,
        fds: &[RawFd],
    ) -> std::result::Result<i32, SpawnError> {
        let id = request.id.clone();
        let begun = std::time::Instant::now();
        let bundle = peas_dir(&self.bundle()).join(&id);
        if self.get(&id).is_some() || bundle.exists() {
            return Err(SpawnError::Failed(format!(
                "process ID '{id}' already in use"
            )));
        }
        let started = self
            .start(&container, &spec, &bundle)
            .await
            .map_err(|e| SpawnError::Failed(format!("start pea: {e}")));
        let (init, exited, cgroup, client, pea_exits, mnt) = match started {
            Ok(s) => s,
            Err(e) => {
                cleanup(&self.runtime, &bundle, None).await;
                return Err(e);
            }
        };
        let own = spec.resources.is_some().then(|| cgroup.clone());
        let pid = match client.spawn(request, fds).await {
            Ok(pid) => pid,
            Err(e) => {
                let _ = init.signal(libc::SIGKILL);
                let mut exited = exited;
                let _ = exited.wait_for(|e| *e).await;
                cleanup(&self.runtime, &bundle, own).await;
                return Err(e);
            }
        };
        tracing::info!(
            process = id,
            pid,
            own_cgroup = own.is_some(),
            elapsed_ms = begun.elapsed().as_secs_f64() * 1e3,
            "pea started"
        );
        let is_own = own.is_some();
        self.watch(id, client, bundle, cgroup, is_own, mnt, pea_exits, exited);
        Ok(pid)
    }

    /// The pea's bundle, cgroup and init, up to a connected client.
    async fn start(
        &self,
        c: &Container<'_>,
        spec: &PeaSpec,
        bundle: &Path,
    ) -> Result<(
        PidFd,
        watch::Receiver<bool>,
        ContainerCgroup,
        InitClient,
        mpsc::UnboundedReceiver<(String, i32)>,
        MountNs,
    )> {
        super::prepare_bundle(bundle, c.ids, self.runtime.layers.as_deref())?;
        let etc_files = container_etc(c.init);
        let lowers = self.runtime.lowers(&spec.lower_dirs, c.ids).await?;
        // Exit codes go where the container's go, for a restarted gardend to find.
        let exits_dir = processes_dir(&self.bundle());
        let (passed, mounts) = Mounts::plan(bundle, lowers, &spec.bind_mounts, Some(&exits_dir))?;
        let b = &mounts.bundle;
        let config = InitConfig {
            lower_dirs: mounts.lower_dirs,
            lower_mounts: mounts.lower_mounts,
            user_namespace: c.ids.is_some(),
            upper_dir: mounts.upper,
            work_dir: mounts.work,
            rootfs: b.join("rootfs"),
            hostname: String::new(),
            bind_mounts: mounts.bind_mounts,
            cgroup_procs: Vec::new(),
            socket: b.join("init.sock"),
            processes_dir: mounts.processes,
            privileged: c.ids.is_none(),
            devices_allowlisted: self.runtime.cgroups.layout().restricts_devices(),
            pea: Some(PeaConfig { etc_files }),
        };
        let init_json = bundle.join("init.json");
        std::fs::write(
            &init_json,
            serde_json::to_vec(&config).expect("init config serialises"),
        )
        .map_err(io_err("write", &init_json))?;
        let ns = |name: &str| {
            c.init
                .open_in_proc(&format!("ns/{name}"), nix::fcntl::OFlag::O_RDONLY)
                .map_err(io_err("open namespace", Path::new(name)))
        };
        let user = c.ids.map(|_| ns("user")).transpose()?;
        let (net, ipc, uts, pid) = (ns("net")?, ns("ipc")?, ns("uts")?, ns("pid")?);

        let cgroup_name = spec
            .resources
            .map(|_| format!("{PEA_CGROUP_PREFIX}{}", uuid::Uuid::new_v4()));
        let cgroup = match (&spec.resources, &cgroup_name) {
            (Some(r), Some(name)) => self.runtime.cgroups.create(name, r)?,
            _ => c.cgroup.clone(),
        };
        let own = spec.resources.is_some().then(|| cgroup.clone());
        let undo_cgroup = |e: RuntimeError| {
            if let Some(cg) = &own {
                let _ = cg.remove();
            }
            e
        };
        let (ready_r, ready_w) = super::ready::channel()
            .map_err(RuntimeError::Clone)
            .map_err(undo_cgroup)?;
        let log_path = bundle.join("init.log");
        let log: OwnedFd = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err("open", &log_path))
            .map_err(undo_cgroup)?
            .into();
        let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(RuntimeError::Clone)
            .map_err(undo_cgroup)?;
        let fds = clone::InitFds {
            ready: &ready_w,
            log: &log,
            opened: &passed.opened,
            passed: &passed.fds,
            go: &go_r,
        };
        let joined = JoinedNamespaces {
            user: user.as_ref(),
            net: &net,
            ipc: &ipc,
            uts: &uts,
            pid: &pid,
        };
        let (_, pid) = clone::spawn_pea_init(&self.runtime.init_bin, b, &fds, &joined)
            .map_err(RuntimeError::Clone)
            .map_err(undo_cgroup)?;
        drop((ready_w, log, go_r, passed));
        // Our unreaped child (CLONE_PARENT made it ours): the pid is still its own here.
        let init = PidFd::open(pid)
            .map_err(RuntimeError::Watch)
            .map_err(undo_cgroup)?;
        shield_from_oom(&init);
        let watched = init
            .try_clone()
            .map_err(RuntimeError::Watch)
            .map_err(undo_cgroup)?;
        let (exited_tx, exited) = watch::channel(false);
        tokio::spawn(monitor(Arc::new(watched), exited_tx, true));
        let started = async {
            nix::unistd::write(&go_w, b"g").map_err(RuntimeError::Clone)?;
            drop(go_w);
            super::ready::await_ready_in_time(
                ready_r,
                "the pea's init",
                pid,
                &log_path,
                super::join_cgroups(pid, &cgroup),
            )
            .await?;
            let mnt = MountNs::of(&init).map_err(io_err("stat", Path::new("ns/mnt")))?;
            let record = Record {
                init: InitIdentity {
                    pid,
                    start_time: init.start_time().unwrap_or(0),
                },
                mnt,
                cgroup: cgroup_name.clone(),
                layers: spec.lower_dirs.clone(),
            };
            record.write(bundle)?;
            let socket = super::socket_path(bundle);
            let (client, exits) =
                InitClient::connect(&socket)
                    .await
                    .map_err(|source| RuntimeError::Connect {
                        path: socket.clone(),
                        source,
                    })?;
            Ok((client.with_processes_dir(exits_dir.clone()), exits, mnt))
        };
        match started.await {
            Ok((client, exits, mnt)) => Ok((init, exited, cgroup, client, exits, mnt)),
            Err(e) => {
                let _ = init.signal(libc::SIGKILL);
                let mut exited = exited;
                let _ = exited.wait_for(|e| *e).await;
                Err(undo_cgroup(e))
            }
        }
    }
}

/// What is left of a pea once its init is gone.
struct Leftovers {
    runtime: Runtime,
    bundle: PathBuf,
    /// Where its processes are: its own cgroup or the container's.
    cgroup: ContainerCgroup,
    own: bool,
    mnt: MountNs,
}

/// A mount namespace, by the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MountNs(u64, u64);

impl MountNs {
    fn of(p: &PidFd) -> std::io::Result<MountNs> {
        let fd = p.open_in_proc("ns/mnt", nix::fcntl::OFlag::O_RDONLY)?;
        let st = nix::sys::stat::fstat(&fd)?;
        Ok(MountNs(st.st_dev, st.st_ino))
    }
}

/// Until the pea is gone: its exit status (137 if its init died without reporting one, as
/// when the container is killed), then whatever still runs in its mount namespace killed
/// (orphans of an init that was killed), its cgroup and bundle removed, then the exit
/// passed on.
async fn watch_pea(
    id: String,
    left: Leftovers,
    mut pea_exits: mpsc::UnboundedReceiver<(String, i32)>,
    mut exited: watch::Receiver<bool>,
    gone: watch::Sender<bool>,
    live: Arc<Mutex<HashMap<String, Arc<Pea>>>>,
    exits: mpsc::WeakUnboundedSender<(String, i32)>,
) {
    let mut status = None;
    while let Some((pid_id, s)) = pea_exits.recv().await {
        if pid_id == id {
            status = Some(s);
            break;
        }
    }
    // The pea's init leaves by itself once its process is reaped; the channel closed
    // without a status means it was killed.
    let _ = exited.wait_for(|e| *e).await;
    let (cgroup, mnt) = (left.cgroup.clone(), left.mnt);
    let _ = tokio::task::spawn_blocking(move || kill_in_namespace(&cgroup, mnt)).await;
    cleanup(&left.runtime, &left.bundle, left.own.then_some(left.cgroup)).await;
    live.lock().expect("peas lock").remove(&id);
    gone.send_replace(true);
    let status = status.unwrap_or(137);
    tracing::debug!(process = id, status, "pea gone");
    if let Some(tx) = exits.upgrade() {
        let _ = tx.send((id, status));
    }
}

/// SIGKILL every process of `cgroup` in the mount namespace `mnt` until none is left (5 s at
/// most). Each is pinned by pidfd before its namespace is read, so a reused pid is never hit.
fn kill_in_namespace(cgroup: &ContainerCgroup, mnt: MountNs) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut found = 0;
        for pid in cgroup.pids() {
            let Ok(p) = PidFd::open(pid) else { continue };
            if MountNs::of(&p).is_ok_and(|m| m == mnt) {
                found += 1;
                let _ = p.signal(libc::SIGKILL);
            }
        }
        if found == 0 || std::time::Instant::now() > deadline {
            if found > 0 {
                tracing::warn!(found, "processes of a pea survive SIGKILL");
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Remove a pea's cgroup (if its own) and its bundle: its writable layer.
async fn cleanup(runtime: &Runtime, bundle: &Path, cgroup: Option<ContainerCgroup>) {
    if let Some(cg) = cgroup {
        remove_patiently(cg).await;
    }
    let (runtime, bundle) = (runtime.clone(), bundle.to_path_buf());
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = runtime.remove_bundle(&bundle) {
            tracing::warn!(path = %bundle.display(), error = %e, "remove a pea's bundle");
        }
    })
    .await;
}

/// Remove a pea's own cgroup once its tasks are dead. On a loaded host the kernel can count
/// exiting tasks for longer than [`ContainerCgroup::remove`]'s second of retries (seen with
/// thousands of containers being torn down at once: the cgroup stayed behind for good), so a
/// failed removal is tried again, after 0.1 s doubling to 5 s, for a minute.
async fn remove_patiently(cg: ContainerCgroup) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut pause = Duration::from_millis(100);
    loop {
        let attempt = cg.clone();
        match tokio::task::spawn_blocking(move || attempt.remove()).await {
            Ok(Ok(())) | Err(_) => return,
            Ok(Err(e)) if std::time::Instant::now() >= deadline => {
                tracing::warn!(error = %e, "remove a pea's cgroup: giving up");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, retry_in_ms = pause.as_millis() as u64, "remove a pea's cgroup");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The container's `/etc/hosts` and `/etc/resolv.conf` (those it has), resolved inside its
/// root.
fn container_etc(init: &PidFd) -> Vec<(PathBuf, String)> {
    let Ok(root) = init.open_in_proc(
        "root",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
    ) else {
        return Vec::new();
    };
    SHARED_ETC
        .iter()
        .filter_map(|p| {
            let path = PathBuf::from(p);
            let content =
                rootfs::read_in_root(std::os::fd::AsFd::as_fd(&root), &path, 1 << 20).ok()?;
            Some((path, String::from_utf8_lossy(&content).into_owned()))
        })
        .collect()
}
