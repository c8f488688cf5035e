//! The core: Garden's semantics on top of the runtime. Containers by handle, their
//! properties, grace timers, processes and streams. The only door from the HTTP layer in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use garden_api::*;
use tokio::sync::{mpsc, Notify};

use crate::cgroups::{Cgroups, Layout};
use crate::config::Config;
use crate::init::proto::{InitBindMount, SpawnRequest};
use crate::init::user;
use crate::process::{Output, Process};
use crate::runtime::{self, Runtime, Sandbox, SandboxSpec, SpawnError};
use crate::service::{ActivityGuard, OutputStream, ProcessSession, Reply, Request, Service};

type Result<T> = std::result::Result<T, GardenError>;

/// How long Stop waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn generic(e: impl std::fmt::Display) -> GardenError {
    GardenError::generic(e.to_string())
}

fn json<T: serde::Serialize>(v: &T) -> Reply {
    Reply::Json(to_wire(v))
}

/// A container's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Active,
    Stopped,
    Destroying,
}

impl State {
    fn can_run(self) -> bool {
        self != State::Destroying
    }
}

/// The grace timer's inputs: how many requests are in flight, and the grace time.
struct Activity {
    active: AtomicUsize,
    grace_ns: AtomicU64,
    changed: Notify,
    cancelled: AtomicBool,
}

struct ActiveGuard(Arc<Activity>);

impl Activity {
    fn guard(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
        ActiveGuard(self.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

struct Container {
    handle: String,
    bundle: PathBuf,
    spec: ContainerSpec,
    image_env: Vec<String>,
    /// Image layers, for disk usage.
    lower_dirs: Vec<PathBuf>,
    created: Instant,
    sandbox: Arc<Sandbox>,
    state: Mutex<State>,
    properties: Mutex<BTreeMap<String, String>>,
    processes: Mutex<HashMap<String, Arc<Process>>>,
    activity: Arc<Activity>,
}

impl Container {
    /// The client's properties plus those gardend reports: `garden.grace-time` comes from the
    /// grace timer's own setting, so the grace time is held in one place.
    fn properties(&self) -> BTreeMap<String, String> {
        let mut props = self.properties.lock().expect("properties lock").clone();
        match self.activity.grace_ns.load(Ordering::SeqCst) {
            0 => props.remove("garden.grace-time"),
            ns => props.insert("garden.grace-time".into(), ns.to_string()),
        };
        props
    }
}

/// On-disk record of a container, `<bundle>/container.json`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    handle: String,
    init_pid: i32,
    created_unix_ns: u128,
    spec: ContainerSpec,
}

/// The Garden service.
pub struct Garden {
    me: Weak<Garden>,
    config: Config,
    runtime: Runtime,
    default_rootfs: rootfs::RootfsPlan,
    layer_cache: PathBuf,
    containers: RwLock<HashMap<String, Arc<Container>>>,
    /// Handles whose Create is under way.
    reserved: Mutex<HashSet<String>>,
    next_stream: AtomicU64,
    image_sizes: Mutex<HashMap<PathBuf, (u64, u64)>>,
    /// Disk quotas on the containers' writable layers (or why there are none).
    disk: crate::quota::Disk,
    /// Addresses, links and firewall rules of the containers.
    network: crate::net::Network,
}

impl Garden {
    /// Probe cgroups, prepare the default rootfs, clean up what a previous run left in the
    /// depot, and return the service.
    pub async fn new(config: Config) -> anyhow::Result<Arc<Garden>> {
        use anyhow::Context;
        std::fs::create_dir_all(&config.depot)
            .with_context(|| format!("create depot {}", config.depot.display()))?;
        let state_dir = config.depot.parent().unwrap_or(&config.depot).to_path_buf();
        let layer_cache = state_dir.join("layers");
        std::fs::create_dir_all(&layer_cache)
            .with_context(|| format!("create {}", layer_cache.display()))?;
        let default_rootfs = match &config.default_rootfs {
            Some(uri) if !uri.is_empty() => {
                let uri = uri.clone();
                let cache = layer_cache.clone();
                tokio::task::spawn_blocking(move || rootfs::resolve(&uri, Path::new("/"), &cache))
                    .await?
                    .context("resolve --default-rootfs")?
            }
            _ => {
                let dir = state_dir.join("rootfs");
                let dir = tokio::task::spawn_blocking(move || rootfs::ensure_busybox_rootfs(&dir))
                    .await?
                    .context("build the embedded busybox rootfs")?;
                rootfs::RootfsPlan {
                    lower_dirs: vec![dir],
                    env: Vec::new(),
                }
            }
        };
        let layout = Layout::detect().context("detect cgroup layout")?;
        tracing::info!(?layout, "cgroups");
        let cgroups = Cgroups::new(layout, &config.cgroup_parent)
            .context("create parent cgroups")?
            .with_cpu_quota_per_share(config.cpu_quota_per_share);
        let init_bin = runtime::find_init_bin(config.init_bin.as_deref())?;
        let runtime = Runtime::new(cgroups, init_bin);
        cleanup_depot(&config.depot, runtime.cgroups());
        let store_size = config.disk_store_size;
        let disk =
            tokio::task::spawn_blocking(move || crate::quota::Disk::open(&state_dir, store_size))
                .await?;
        let network = crate::net::Network::new(config.net.clone(), &config.cgroup_parent)
            .await
            .context("set up container networking")?;
        Ok(Arc::new_cyclic(|me| Garden {
            me: me.clone(),
            config,
            runtime,
            default_rootfs,
            layer_cache,
            containers: RwLock::default(),
            reserved: Mutex::default(),
            next_stream: AtomicU64::new(1),
            image_sizes: Mutex::default(),
            disk,
            network,
        }))
    }

    /// Containers keep running without gardend; nothing to stop here.
    pub async fn shutdown(&self) {
        tracing::info!(
            containers = self.containers.read().expect("containers lock").len(),
            "shutting down"
        );
        let empty = self.containers.read().expect("containers lock").is_empty();
        if empty {
            self.network.remove_all().await;
            // Nothing of ours is left in the parent cgroups either.
            self.runtime.cgroups().remove_parent();
        }
        self.disk.shutdown();
    }

    fn max_containers(&self) -> u64 {
        let pool = self.network.max_containers();
        if self.config.max_containers > 0 {
            self.config.max_containers.min(pool)
        } else {
            pool
        }
    }

    fn lookup(&self, handle: &str) -> Result<Arc<Container>> {
        self.containers
            .read()
            .expect("containers lock")
            .get(handle)
            .cloned()
            .ok_or_else(|| GardenError::container_not_found(handle))
    }

    async fn dispatch(&self, request: Request) -> Result<Reply> {
        match request {
            Request::Ping => Ok(json(&Empty {})),
            Request::Capacity => Ok(json(&self.capacity())),
            Request::List { filter } => Ok(json(&HandlesResponse {
                handles: self.list(&filter),
            })),
            Request::Create(spec) => self
                .create(*spec)
                .await
                .map(|handle| json(&HandleResponse { handle })),
            Request::Info { handle } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                Ok(json(&info(&c, &self.network)))
            }
            Request::BulkInfo { handles } => Ok(json(&self.bulk_info(&handles))),
            Request::BulkMetrics { handles } => Ok(json(&self.bulk_metrics(&handles).await)),
            Request::Destroy { handle } => self.destroy(&handle).await.map(|_| json(&Empty {})),
            Request::Stop { handle, kill } => {
                self.stop(&handle, kill).await.map(|_| json(&Empty {}))
            }
            Request::StreamIn {
                handle,
                user,
                destination,
                body,
            } => self
                .stream_in(&handle, &user, &destination, body)
                .await
                .map(|_| json(&Empty {})),
            Request::StreamOut {
                handle,
                user,
                source,
            } => self.stream_out(&handle, &user, &source).await,
            Request::CurrentBandwidthLimits { handle } => {
                let c = self.lookup(&handle)?;
                Ok(json(&c.spec.limits.bandwidth_limits))
            }
            Request::CurrentCpuLimits { handle } => {
                let c = self.lookup(&handle)?;
                let shares = c.spec.limits.cpu_limits.shares();
                let reported = if self.runtime.cgroups().layout().is_v2() {
                    crate::cgroups::shares_to_weight(shares)
                } else {
                    shares
                };
                Ok(json(&CpuLimits {
                    limit_in_shares: reported,
                    weight: 0,
                }))
            }
            Request::CurrentDiskLimits { handle } => {
                let c = self.lookup(&handle)?;
                Ok(json(&c.spec.limits.disk_limits))
            }
            Request::CurrentMemoryLimits { handle } => {
                let c = self.lookup(&handle)?;
                Ok(json(&c.spec.limits.memory_limits))
            }
            Request::NetIn { handle, request } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                let (host_port, container_port) = self
                    .net_in(&c, request.host_port, request.container_port)
                    .await?;
                Ok(json(&NetInResponse {
                    host_port,
                    container_port,
                }))
            }
            Request::NetOut { handle, rule } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                self.network
                    .net_out(&handle, std::slice::from_ref(&rule))
                    .await
                    .map_err(generic)?;
                Ok(json(&Empty {}))
            }
            Request::BulkNetOut { handle, rules } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                self.network
                    .net_out(&handle, &rules)
                    .await
                    .map_err(generic)?;
                Ok(json(&Empty {}))
            }
            Request::SetGraceTime { handle, grace_time } => {
                let c = self.lookup(&handle)?;
                c.activity.grace_ns.store(grace_time, Ordering::SeqCst);
                c.activity.changed.notify_one();
                Ok(json(&Empty {}))
            }
            Request::Properties { handle } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                Ok(json(&c.properties()))
            }
            Request::Property { handle, key } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                let value = c.properties().remove(&key);
                match value {
                    Some(value) => Ok(json(&PropertyValue { value })),
                    None => Err(GardenError::generic(format!(
                        "property does not exist: {key}"
                    ))),
                }
            }
            Request::SetProperty { handle, key, value } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                self.set_properties(&c, |p| {
                    p.insert(key, value);
                });
                Ok(json(&Empty {}))
            }
            Request::RemoveProperty { handle, key } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                self.set_properties(&c, |p| {
                    p.remove(&key);
                });
                Ok(json(&Empty {}))
            }
            Request::Metrics { handle } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                Ok(json(&self.metrics(&c).await))
            }
            Request::Run { handle, spec } => self.run(&handle, *spec).await,
            Request::Attach { handle, process_id } => self.attach(&handle, &process_id),
            Request::Stdout {
                handle,
                process_id,
                stream_id,
            } => self.output(&handle, &process_id, &stream_id, Output::Stdout),
            Request::Stderr {
                handle,
                process_id,
                stream_id,
            } => self.output(&handle, &process_id, &stream_id, Output::Stderr),
        }
    }

    fn capacity(&self) -> Capacity {
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .unwrap_or(0)
            * 1024;
        let disk = nix::sys::statvfs::statvfs(&self.config.depot)
            .map(|s| s.blocks() * s.fragment_size())
            .unwrap_or(0);
        Capacity {
            memory_in_bytes: memory,
            disk_in_bytes: disk,
            schedulable_disk_in_bytes: disk,
            max_containers: self.max_containers(),
        }
    }

    fn list(&self, filter: &[(String, String)]) -> Vec<String> {
        let all = filter
            .iter()
            .any(|(k, v)| k == "garden.state" && v == "all");
        let mut filter: Vec<(String, String)> = filter
            .iter()
            .filter(|(k, v)| !(k == "garden.state" && v == "all"))
            .cloned()
            .collect();
        if !all && !filter.iter().any(|(k, _)| k == "garden.state") {
            filter.push(("garden.state".into(), "created".into()));
        }
        let containers = self.containers.read().expect("containers lock");
        let mut handles: Vec<String> = containers
            .values()
            .filter(|c| {
                let props = c.properties();
                filter
                    .iter()
                    .all(|(k, v)| props.get(k).map(String::as_str).unwrap_or("") == v)
            })
            .map(|c| c.handle.clone())
            .collect();
        handles.sort();
        handles
    }

    fn set_properties(&self, c: &Container, f: impl FnOnce(&mut BTreeMap<String, String>)) {
        f(&mut c.properties.lock().expect("properties lock"));
    }

    async fn create(&self, spec: ContainerSpec) -> Result<String> {
        let handle = if spec.handle.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            spec.handle.clone()
        };
        validate_name("handle", &handle)?;
        if !spec.image.uri.is_empty() && !spec.rootfs.is_empty() {
            return Err(GardenError::generic(
                "Cannot provide both Image.URI and RootFSPath",
            ));
        }
        self.network
            .validate(&handle, &spec.netout_rules, &spec.limits.bandwidth_limits)
            .map_err(generic)?;
        for b in &spec.bind_mounts {
            if !Path::new(&b.src_path).is_absolute() || !Path::new(&b.dst_path).is_absolute() {
                return Err(GardenError::generic(format!(
                    "bind mount paths must be absolute: {} -> {}",
                    b.src_path, b.dst_path
                )));
            }
        }
        {
            let containers = self.containers.read().expect("containers lock");
            let mut reserved = self.reserved.lock().expect("reserved lock");
            if containers.contains_key(&handle) || reserved.contains(&handle) {
                return Err(GardenError::generic(format!(
                    "Handle '{handle}' already in use"
                )));
            }
            if (containers.len() + reserved.len()) as u64 >= self.max_containers() {
                return Err(GardenError::generic("max containers reached"));
            }
            reserved.insert(handle.clone());
        }
        let result = self.create_reserved(&handle, spec).await;
        self.reserved.lock().expect("reserved lock").remove(&handle);
        result.map(|()| handle)
    }

    async fn create_reserved(&self, handle: &str, spec: ContainerSpec) -> Result<()> {
        let started = Instant::now();
        let uri = if spec.image.uri.is_empty() {
            spec.rootfs.clone()
        } else {
            spec.image.uri.clone()
        };
        let plan = if uri.is_empty() {
            self.default_rootfs.clone()
        } else {
            let cache = self.layer_cache.clone();
            tokio::task::spawn_blocking(move || rootfs::resolve(&uri, Path::new("/"), &cache))
                .await
                .map_err(generic)?
                .map_err(generic)?
        };
        let bundle = self.config.depot.join(handle);
        if bundle.exists() {
            return Err(GardenError::generic(format!(
                "Handle '{handle}' already in use"
            )));
        }
        std::fs::create_dir_all(&bundle)
            .map_err(|e| generic(format!("create {}: {e}", bundle.display())))?;
        if let Err(e) = self
            .attach_disk(handle, &bundle, &spec.limits.disk_limits, &plan.lower_dirs)
            .await
        {
            let _ = remove_dir_all_blocking(bundle.clone()).await;
            return Err(e);
        }
        // Guardian keeps the last 49 bytes; start at a char boundary so it stays UTF-8 and
        // within the kernel's 64-byte limit.
        let hostname = {
            let mut start = handle.len().saturating_sub(49);
            while !handle.is_char_boundary(start) {
                start += 1;
            }
            handle[start..].to_string()
        };
        let sandbox_spec = SandboxSpec {
            handle,
            bundle: &bundle,
            lower_dirs: plan.lower_dirs.clone(),
            hostname,
            bind_mounts: spec
                .bind_mounts
                .iter()
                .map(|b| InitBindMount {
                    src: b.src_path.clone().into(),
                    dst: b.dst_path.clone().into(),
                    read_only: b.mode == BIND_MOUNT_MODE_RO,
                })
                .collect(),
            limits: &spec.limits,
            privileged: spec.privileged,
        };
        let created = match self.network.allocate(handle, &spec.network) {
            Ok(()) => self.runtime.create(sandbox_spec).await.map_err(generic),
            Err(e) => Err(generic(e)),
        };
        let (sandbox, mut exits) = match created {
            Ok(s) => s,
            Err(e) => {
                let _ = self.release_disk(handle).await;
                let _ = remove_dir_all_blocking(bundle.clone()).await;
                let _ = self.network.release(handle).await;
                return Err(e);
            }
        };
        let grace_ns = match spec.grace_time {
            0 => self.config.default_grace_time.as_nanos() as u64,
            g => g,
        };
        let mut properties = spec.properties.clone();
        properties.insert("garden.state".into(), "created".into());
        let record = Record {
            handle: handle.to_string(),
            init_pid: sandbox.init_pid(),
            created_unix_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            spec: spec.clone(),
        };
        let _ = std::fs::write(
            bundle.join("container.json"),
            serde_json::to_vec(&record).expect("record serialises"),
        );
        let activity = Arc::new(Activity {
            active: AtomicUsize::new(0),
            grace_ns: AtomicU64::new(grace_ns),
            changed: Notify::new(),
            cancelled: AtomicBool::new(false),
        });
        let container = Arc::new(Container {
            handle: handle.to_string(),
            bundle,
            image_env: plan.env.clone(),
            lower_dirs: plan.lower_dirs.clone(),
            spec,
            created: Instant::now(),
            sandbox: Arc::new(sandbox),
            state: Mutex::new(State::Active),
            properties: Mutex::new(BTreeMap::new()),
            processes: Mutex::default(),
            activity: activity.clone(),
        });
        self.set_properties(&container, |p| *p = properties);
        // Route garden-init's exit events to the processes they belong to.
        let router = Arc::downgrade(&container);
        tokio::spawn(async move {
            while let Some((id, status)) = exits.recv().await {
                let Some(c) = router.upgrade() else { break };
                let p = c
                    .processes
                    .lock()
                    .expect("processes lock")
                    .get(&id)
                    .cloned();
                if let Some(p) = p {
                    p.on_exit(status);
                }
            }
        });
        tokio::spawn(grace_timer(self.me.clone(), handle.to_string(), activity));
        self.containers
            .write()
            .expect("containers lock")
            .insert(handle.to_string(), container);
        if let Err(e) = self.net_setup(handle).await {
            if let Err(d) = self.destroy(handle).await {
                tracing::warn!(handle, error = %d, "clean up after failed network setup");
            }
            return Err(e);
        }
        tracing::info!(
            handle,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "created"
        );
        Ok(())
    }

    async fn destroy(&self, handle: &str) -> Result<()> {
        let c = self.lookup(handle)?;
        let previous = {
            let mut state = c.state.lock().expect("state lock");
            if *state == State::Destroying {
                return Err(GardenError::generic("container already being destroyed"));
            }
            std::mem::replace(&mut *state, State::Destroying)
        };
        c.activity.cancelled.store(true, Ordering::SeqCst);
        c.activity.changed.notify_one();
        let t = Instant::now();
        c.sandbox.kill().await;
        tracing::debug!(
            handle,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "processes gone"
        );
        if let Err(e) = self.network.release(handle).await {
            *c.state.lock().expect("state lock") = previous;
            return Err(GardenError::generic(format!("destroy {handle}: {e}")));
        }
        tracing::debug!(
            handle,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "network released"
        );
        for p in c.processes.lock().expect("processes lock").values() {
            p.on_exit(137);
        }
        let cgroup = c.sandbox.cgroup.clone();
        let removed = tokio::task::spawn_blocking(move || cgroup.remove())
            .await
            .map_err(generic)?;
        tracing::debug!(
            handle,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "cgroups removed"
        );
        let removed = match removed {
            Ok(()) => self.release_disk(handle).await,
            Err(e) => Err(e.to_string()),
        };
        let removed = match removed {
            Ok(()) => remove_dir_all_blocking(c.bundle.clone()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            // Keep the container so Destroy can be retried.
            *c.state.lock().expect("state lock") = previous;
            return Err(GardenError::generic(format!("destroy {handle}: {e}")));
        }
        self.containers
            .write()
            .expect("containers lock")
            .remove(handle);
        tracing::info!(handle, "destroyed");
        Ok(())
    }

    async fn stop(&self, handle: &str, kill: bool) -> Result<()> {
        let c = self.lookup(handle)?;
        let _g = c.activity.guard();
        if !kill {
            let _ = c.sandbox.init.signal_all(libc::SIGTERM).await;
            wait_until_empty(&c.sandbox, STOP_GRACE).await;
        }
        let _ = c.sandbox.init.signal_all(libc::SIGKILL).await;
        wait_until_empty(&c.sandbox, STOP_GRACE).await;
        let mut state = c.state.lock().expect("state lock");
        if *state == State::Active {
            *state = State::Stopped;
        }
        Ok(())
    }

    /// Resolve a user inside the container and a path relative to its home.
    fn user_and_path(
        root: &std::os::fd::OwnedFd,
        user_spec: &str,
        path: &str,
    ) -> std::result::Result<(user::User, PathBuf), String> {
        let read = |p: &str| -> String {
            let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
            match rootfs::open_in_root(
                root.as_fd(),
                Path::new(p),
                flags,
                nix::sys::stat::Mode::empty(),
            ) {
                Ok(fd) => {
                    let mut s = String::new();
                    let _ = std::fs::File::from(fd).take(4 << 20).read_to_string(&mut s);
                    s
                }
                Err(_) => String::new(),
            }
        };
        let u = user::resolve(user_spec, &read("/etc/passwd"), &read("/etc/group"))?;
        let path = if path.is_empty() {
            PathBuf::from(&u.home)
        } else if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            Path::new(&u.home).join(path)
        };
        Ok((u, path))
    }

    async fn stream_in(
        &self,
        handle: &str,
        user_spec: &str,
        destination: &str,
        body: crate::service::Body,
    ) -> Result<()> {
        let c = self.lookup(handle)?;
        let _g = c.activity.guard();
        let root = c
            .sandbox
            .open_root()
            .map_err(|e| generic(format!("error streaming in: open container root: {e}")))?;
        let user_spec = user_spec.to_string();
        let destination = destination.to_string();
        tokio::task::spawn_blocking(move || {
            let (u, dest) = Garden::user_and_path(&root, &user_spec, &destination)
                .map_err(|e| format!("error streaming in: {e}"))?;
            let reader = ChannelReader {
                rx: body,
                current: Bytes::new(),
            };
            let owner = rootfs::Owner {
                uid: u.uid,
                gid: u.gid,
            };
            // Root may write anywhere; anyone else only where their permissions allow, as
            // Guardian's `tar` running as that user would.
            let extracted = if u.uid == 0 {
                rootfs::extract(root.as_fd(), &dest, reader, owner)
            } else {
                rootfs::safe_tar::extract_as_user(root.as_fd(), &dest, reader, owner, &u.groups)
            };
            extracted
                .map(|_| ())
                .map_err(|e| format!("error streaming in: {e}"))
        })
        .await
        .map_err(generic)?
        .map_err(GardenError::generic)
    }

    async fn stream_out(&self, handle: &str, user_spec: &str, source: &str) -> Result<Reply> {
        let c = self.lookup(handle)?;
        let guard = c.activity.guard();
        let root = c
            .sandbox
            .open_root()
            .map_err(|e| generic(format!("error streaming out: open container root: {e}")))?;
        let (u, src) = Garden::user_and_path(&root, user_spec, source)
            .map_err(|e| generic(format!("error streaming out: {e}")))?;
        // Anyone but root reads only what their permissions allow, as Guardian's `tar`
        // running as that user would; an unreadable source is an error reply, not a stream.
        let owner = rootfs::Owner {
            uid: u.uid,
            gid: u.gid,
        };
        if u.uid != 0 {
            rootfs::safe_tar::check_readable_as_user(root.as_fd(), &src, owner, &u.groups)
                .map_err(|e| generic(format!("error streaming out: {e}")))?;
        }
        // Report a missing source as an error reply, before any byte is sent.
        let probe = rootfs::open_in_root(
            root.as_fd(),
            &src,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_CLOEXEC
                | nix::fcntl::OFlag::O_NOFOLLOW,
            nix::sys::stat::Mode::empty(),
        );
        if let Err(e) = probe {
            return Err(generic(format!(
                "error streaming out: {}: {e}",
                src.display()
            )));
        }
        let (tx, rx) = mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let mut w = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHANNEL_CHUNK),
            };
            let packed = if u.uid == 0 {
                rootfs::pack(root.as_fd(), &src, &mut w)
            } else {
                rootfs::safe_tar::pack_as_user(root.as_fd(), &src, &mut w, owner, &u.groups)
            };
            let result = packed
                .map_err(std::io::Error::other)
                .and_then(|_| w.flush());
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(Reply::Tar(rx))
    }

    async fn run(&self, handle: &str, spec: ProcessSpec) -> Result<Reply> {
        let c = self.lookup(handle)?;
        let guard = c.activity.guard();
        crate::service::bind_mounts_need_image(&spec.bind_mounts, &spec.image.uri)?;
        if !spec.image.uri.is_empty() {
            return Err(GardenError::generic(
                "processes with their own image (peas) are not supported yet",
            ));
        }
        if !c.state.lock().expect("state lock").can_run() {
            return Err(GardenError::generic("container is being destroyed"));
        }
        let id = if spec.id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            spec.id.clone()
        };
        validate_name("process id", &id)?;
        let (process, child_fds) = {
            let mut processes = c.processes.lock().expect("processes lock");
            if processes.contains_key(&id) {
                return Err(GardenError::generic(format!(
                    "process ID '{id}' already in use"
                )));
            }
            let tty = spec.tty.map(|t| {
                t.window_size.unwrap_or(WindowSize {
                    columns: 80,
                    rows: 24,
                })
            });
            let (p, fds) = Process::new(&id, tty, c.sandbox.clone())
                .map_err(|e| generic(format!("create stdio: {e}")))?;
            processes.insert(id.clone(), p.clone());
            (p, fds)
        };
        let mut env = c.image_env.clone();
        env.extend(c.spec.env.iter().cloned());
        env.extend(spec.env.iter().cloned());
        let request = SpawnRequest {
            id: id.clone(),
            path: spec.path.clone(),
            args: spec.args.clone(),
            env,
            dir: spec.dir.clone(),
            user: spec.user.clone(),
            rlimits: rlimits(&spec.rlimits),
            tty: spec.tty.is_some(),
            privileged: c.spec.privileged,
        };
        // Subscribe before the process starts, so its very first bytes reach this Run's streams.
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed).to_string();
        process.open_session(&stream_id);
        let raw: Vec<i32> = child_fds
            .iter()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .collect();
        let spawned = c.sandbox.init.spawn(request, &raw).await;
        drop(child_fds);
        if let Err(e) = spawned {
            c.processes.lock().expect("processes lock").remove(&id);
            process.on_exit(-1);
            return Err(match e {
                SpawnError::ExecutableNotFound(message) => {
                    GardenError::ExecutableNotFound { message }
                }
                SpawnError::Failed(m) => GardenError::generic(m),
                SpawnError::InitGone => GardenError::generic("container is not running"),
            });
        }
        Ok(Reply::Process(session(process, guard, stream_id)))
    }

    fn attach(&self, handle: &str, process_id: &str) -> Result<Reply> {
        let c = self
            .lookup(handle)
            .map_err(|_| GardenError::process_not_found(process_id))?;
        let guard = c.activity.guard();
        let p = c
            .processes
            .lock()
            .expect("processes lock")
            .get(process_id)
            .cloned()
            .ok_or_else(|| GardenError::process_not_found(process_id))?;
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed).to_string();
        p.open_session(&stream_id);
        Ok(Reply::Process(session(p, guard, stream_id)))
    }

    fn output(
        &self,
        handle: &str,
        process_id: &str,
        stream_id: &str,
        which: Output,
    ) -> Result<Reply> {
        let c = self.lookup(handle)?;
        let guard = c.activity.guard();
        // Stream ids are unique across processes: the URL's process id is only a shortcut.
        let pending = {
            let processes = c.processes.lock().expect("processes lock");
            processes
                .get(process_id)
                .and_then(|p| p.claim(stream_id, which))
                .or_else(|| processes.values().find_map(|p| p.claim(stream_id, which)))
        };
        let chunks = match pending {
            Some(p) => {
                p.link.connect();
                p.rx
            }
            // Unknown stream: an empty stream, as Go answers.
            None => mpsc::channel(1).1,
        };
        Ok(Reply::Output(OutputStream {
            chunks,
            guard: ActivityGuard(Some(Box::new(guard))),
        }))
    }

    fn bulk_info(&self, handles: &[String]) -> BulkInfo {
        handles
            .iter()
            .map(|h| {
                let entry = match self.lookup(h) {
                    Ok(c) => ContainerInfoEntry {
                        info: info(&c, &self.network),
                        err: None,
                    },
                    Err(e) => ContainerInfoEntry {
                        info: ContainerInfo::default(),
                        err: Some(flat_error(&e)),
                    },
                };
                (h.clone(), entry)
            })
            .collect()
    }

    async fn bulk_metrics(&self, handles: &[String]) -> BulkMetrics {
        let mut out = BTreeMap::new();
        for h in handles {
            let entry = match self.lookup(h) {
                Ok(c) => ContainerMetricsEntry {
                    metrics: self.metrics(&c).await,
                    err: None,
                },
                Err(e) => ContainerMetricsEntry {
                    metrics: Metrics::default(),
                    err: Some(flat_error(&e)),
                },
            };
            out.insert(h.clone(), entry);
        }
        out
    }

    async fn metrics(&self, c: &Arc<Container>) -> Metrics {
        let stats = c.sandbox.cgroup.stats();
        let (ex_bytes, ex_inodes) = match self.disk.usage(&c.handle) {
            Some(u) => (u.bytes, u.inodes),
            None => {
                let upper = runtime::upper_dir(&c.bundle);
                tokio::task::spawn_blocking(move || du(&upper))
                    .await
                    .unwrap_or((0, 0))
            }
        };
        let (img_bytes, img_inodes) = self.image_size(&c.lower_dirs).await;
        Metrics {
            memory_stat: stats.memory,
            cpu_stat: stats.cpu,
            disk_stat: ContainerDiskStat {
                total_bytes_used: ex_bytes + img_bytes,
                total_inodes_used: ex_inodes + img_inodes,
                exclusive_bytes_used: ex_bytes,
                exclusive_inodes_used: ex_inodes,
            },
            network_stat: self.network.stats(&c.handle),
            pid_stat: stats.pids,
            age: c.created.elapsed().as_nanos() as u64,
            cpu_entitlement: cpu_entitlement(
                c.spec.limits.cpu_limits.shares(),
                self.config.cpu_entitlement_per_share,
                c.created.elapsed(),
            ),
        }
    }

    /// Put the container's writable layer under its disk limits (see `quota`).
    async fn attach_disk(
        &self,
        handle: &str,
        bundle: &Path,
        limits: &DiskLimits,
        layers: &[PathBuf],
    ) -> Result<()> {
        let (bytes, inodes) = self.image_size(layers).await;
        let image = crate::quota::Usage { bytes, inodes };
        let (disk, handle, bundle, limits) = (
            self.disk.clone(),
            handle.to_string(),
            bundle.to_path_buf(),
            *limits,
        );
        tokio::task::spawn_blocking(move || disk.attach(&handle, &bundle, &limits, image))
            .await
            .map_err(generic)?
            .map_err(generic)
    }

    async fn release_disk(&self, handle: &str) -> std::result::Result<(), String> {
        let (disk, handle) = (self.disk.clone(), handle.to_string());
        tokio::task::spawn_blocking(move || disk.release(&handle).map_err(|e| e.to_string()))
            .await
            .map_err(|e| e.to_string())?
    }

    async fn image_size(&self, layers: &[PathBuf]) -> (u64, u64) {
        let mut total = (0, 0);
        for l in layers {
            let known = self.image_sizes.lock().expect("sizes lock").get(l).copied();
            let size = match known {
                Some(s) => s,
                None => {
                    let dir = l.clone();
                    let s = tokio::task::spawn_blocking(move || du(&dir))
                        .await
                        .unwrap_or((0, 0));
                    self.image_sizes
                        .lock()
                        .expect("sizes lock")
                        .insert(l.clone(), s);
                    s
                }
            };
            total = (total.0 + size.0, total.1 + size.1);
        }
        total
    }
}

/// Networking glue: what the network module needs from a container, and the properties it sets.
impl Garden {
    /// Links, firewall, /etc files, create-time NetIn and the network properties.
    async fn net_setup(&self, handle: &str) -> Result<()> {
        let c = self.lookup(handle)?;
        // The hostname create gave the container: the last 49 bytes, from a char boundary.
        let mut start = handle.len().saturating_sub(49);
        while !handle.is_char_boundary(start) {
            start += 1;
        }
        let hostname = &handle[start..];
        let root = c
            .sandbox
            .open_root()
            .map_err(|e| generic(format!("network setup: open container root: {e}")))?;
        let netns = c
            .sandbox
            .open_netns()
            .map_err(|e| generic(format!("network setup: open network namespace: {e}")))?;
        self.network
            .setup(
                handle,
                hostname,
                netns.as_fd(),
                root.as_fd(),
                &c.spec.netout_rules,
                &c.spec.limits.bandwidth_limits,
            )
            .await
            .map_err(|e| generic(format!("network setup: {e}")))?;
        for m in &c.spec.netin {
            self.network
                .net_in(handle, m.host_port, m.container_port)
                .await
                .map_err(generic)?;
        }
        let props = self.network.properties(handle);
        self.set_properties(&c, |p| p.extend(props));
        Ok(())
    }

    async fn net_in(
        &self,
        c: &Container,
        host_port: u32,
        container_port: u32,
    ) -> Result<(u32, u32)> {
        let ports = self
            .network
            .net_in(&c.handle, host_port, container_port)
            .await
            .map_err(generic)?;
        let props = self.network.properties(&c.handle);
        self.set_properties(c, |p| {
            if let Some(v) = props.get("garden.network.mapped-ports") {
                p.insert("garden.network.mapped-ports".into(), v.clone());
            }
        });
        Ok(ports)
    }
}

impl Service for Garden {
    async fn handle(&self, request: Request) -> Result<Reply> {
        self.dispatch(request).await
    }
}

fn info(c: &Container, network: &crate::net::Network) -> ContainerInfo {
    let net = network.info(&c.handle);
    let state = match *c.state.lock().expect("state lock") {
        State::Active => "active",
        State::Stopped | State::Destroying => "stopped",
    };
    let events = if c.sandbox.cgroup.oom_kills() > 0 {
        Some(vec!["Out of memory".to_string()])
    } else {
        None
    };
    ContainerInfo {
        state: state.into(),
        events,
        container_path: c.bundle.display().to_string(),
        properties: Some(c.properties()),
        host_ip: net.as_ref().map(|n| n.host_ip.clone()).unwrap_or_default(),
        container_ip: net
            .as_ref()
            .map(|n| n.container_ip.clone())
            .unwrap_or_default(),
        external_ip: net
            .as_ref()
            .map(|n| n.external_ip.clone())
            .unwrap_or_default(),
        mapped_ports: Some(net.map(|n| n.mapped_ports).unwrap_or_default()),
        ..Default::default()
    }
}

/// A Run or Attach session on `p`, whose streams `p.open_session(stream_id)` opened.
fn session(p: Arc<Process>, guard: ActiveGuard, stream_id: String) -> ProcessSession {
    let (input, rx) = mpsc::unbounded_channel();
    tokio::spawn(p.clone().serve_input(stream_id.clone(), rx));
    ProcessSession {
        process_id: p.id.clone(),
        stream_id,
        input,
        exit: p.wait(),
        guard: ActivityGuard(Some(Box::new(guard))),
    }
}

/// Nanoseconds of CPU a container with `shares` was entitled to over `age`, at
/// `per_share` percent of a CPU per share (Guardian's CPUEntitlement).
fn cpu_entitlement(shares: u64, per_share: f64, age: Duration) -> u64 {
    (shares as f64 * (per_share / 100.0) * age.as_nanos() as f64) as u64
}

/// Bulk entries carry flattened (generic) errors, as Guardian's do.
fn flat_error(e: &GardenError) -> ErrorBody {
    ErrorBody {
        message: e.to_string(),
        ..Default::default()
    }
}

/// Handles and process ids name directories and cgroups: no separators, no dot names.
fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.contains(['/', '\0'])
    {
        return Err(GardenError::generic(format!("invalid {what}: {name:?}")));
    }
    Ok(())
}

fn rlimits(r: &ResourceLimits) -> Vec<(i32, u64)> {
    let pairs = [
        (libc::RLIMIT_AS, r.as_),
        (libc::RLIMIT_CORE, r.core),
        (libc::RLIMIT_CPU, r.cpu),
        (libc::RLIMIT_DATA, r.data),
        (libc::RLIMIT_FSIZE, r.fsize),
        (libc::RLIMIT_LOCKS, r.locks),
        (libc::RLIMIT_MEMLOCK, r.memlock),
        (libc::RLIMIT_MSGQUEUE, r.msgqueue),
        (libc::RLIMIT_NICE, r.nice),
        (libc::RLIMIT_NOFILE, r.nofile),
        (libc::RLIMIT_NPROC, r.nproc),
        (libc::RLIMIT_RSS, r.rss),
        (libc::RLIMIT_RTPRIO, r.rtprio),
        (libc::RLIMIT_SIGPENDING, r.sigpending),
        (libc::RLIMIT_STACK, r.stack),
    ];
    pairs
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k as i32, v)))
        .collect()
}

async fn wait_until_empty(sandbox: &Sandbox, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !sandbox.other_pids().is_empty() && !sandbox.has_exited() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Destroy the container once it has been idle for its grace time.
async fn grace_timer(garden: Weak<Garden>, handle: String, a: Arc<Activity>) {
    loop {
        if a.cancelled.load(Ordering::SeqCst) {
            return;
        }
        let grace = a.grace_ns.load(Ordering::SeqCst);
        if grace == 0 || a.active.load(Ordering::SeqCst) > 0 {
            a.changed.notified().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_nanos(grace)) => {
                if a.active.load(Ordering::SeqCst) == 0 && !a.cancelled.load(Ordering::SeqCst) {
                    let Some(g) = garden.upgrade() else { return };
                    tracing::info!(handle, "grace time expired");
                    if let Err(e) = g.destroy(&handle).await {
                        tracing::warn!(handle, error = %e, "reap after grace time");
                    }
                    return;
                }
            }
            _ = a.changed.notified() => {}
        }
    }
}

async fn remove_dir_all_blocking(dir: PathBuf) -> std::result::Result<(), String> {
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Bytes (allocated blocks) and inodes under `dir`, not crossing into other filesystems.
fn du(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    let dev = std::fs::symlink_metadata(dir).map(|m| m.dev()).unwrap_or(0);
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            inodes += 1;
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

/// Remove what a previous gardend left: containers cannot be restored yet, so each bundle's
/// init is killed and its cgroups and directory are removed.
fn cleanup_depot(depot: &Path, cgroups: &Cgroups) {
    let Ok(entries) = std::fs::read_dir(depot) else {
        return;
    };
    for e in entries.flatten() {
        let bundle = e.path();
        let handle = e.file_name().to_string_lossy().into_owned();
        if let Ok(bytes) = std::fs::read(bundle.join("container.json")) {
            if let Ok(record) = serde_json::from_slice::<Record>(&bytes) {
                kill_stale_init(record.init_pid);
            }
        }
        let cg = cgroups.container(&handle);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cg.pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Err(e) = cg.remove() {
            tracing::warn!(handle, error = %e, "remove stale cgroup");
        }
        match std::fs::remove_dir_all(&bundle) {
            Ok(()) => tracing::info!(handle, "removed container left by a previous run"),
            Err(e) => tracing::warn!(handle, error = %e, "remove stale bundle"),
        }
    }
}

/// SIGKILL a previous run's garden-init by its recorded pid, if that pid still names a
/// garden-init: the pidfd is opened before the name is checked, so the signal can only reach
/// the process whose name was read (or nothing, if it has gone since).
fn kill_stale_init(pid: i32) {
    let Ok(process) = runtime::pidfd::PidFd::open(pid) else {
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

/// Adapts StreamIn's body channel to `Read` for the blocking tar extractor.
struct ChannelReader {
    rx: crate::service::Body,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => self.current = b,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

const CHANNEL_CHUNK: usize = 256 * 1024;

/// Adapts StreamOut's channel to `Write` for the blocking tar packer.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHANNEL_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHANNEL_CHUNK),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}
