//! Application instances (spec §4, §6): start messages become Garden containers, walk
//! BORN → STARTING → RUNNING (→ STOPPING → STOPPED, or CRASHED), and are announced to
//! routers, health managers and the snapshot.
//!
//! The agent owns each instance's container and main process itself (through garden-client)
//! rather than through `Executor::run`, because an instance outlives the agent process: a
//! restarted agent finds the container by handle and re-attaches to the process by its Garden
//! process id. The executor supplies the action engine (`Executor::perform_in`) for the
//! droplet download (cached, one fetch per SHA1, checksummed) and the hooks.

mod lifecycle;
pub mod script;
mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use executor::CancellationToken;
use serde::{Deserialize, Serialize};

use crate::bus::{BusError, Incoming};
use crate::cell::Cell;
use crate::config::secs;
use crate::dirserver::{FileRoot, FileRoots, Lookup};
use crate::protocol::{
    now_timestamp, subject, FindDroplet, FindDropletReply, Heartbeat, HeartbeatInstance,
    InstanceFilter, InstanceState, RouterRegister, StartMessage, Update,
};
use crate::resources::Amount;

/// Garden property naming the agent (by base_dir) that owns a container, so a restarted
/// agent finds its own containers and nobody else's.
pub const OWNER_PROPERTY: &str = "agent:base_dir";
/// Garden property holding the instance id a container was made for.
pub const INSTANCE_PROPERTY: &str = "agent:instance";
/// Garden property `agent:kind` = `instance` on instance containers (tasks' containers carry
/// only the owner property, set through the executor).
pub const KIND_PROPERTY: &str = "agent:kind";

/// Everything the agent knows about one instance; what the snapshot stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub instance_id: String,
    pub private_instance_id: String,
    /// The Garden container handle and reservation owner: the first instance id, kept when
    /// `dea.update` gives the instance a new id.
    pub warden_handle: String,
    /// The Garden process id of the app's start script.
    #[serde(default)]
    pub warden_job_id: Option<String>,
    pub start_message: StartMessage,
    pub state: InstanceState,
    pub state_timestamp: f64,
    /// `state_<name>_timestamp` of every state entered.
    #[serde(default)]
    pub timestamps: BTreeMap<String, f64>,
    #[serde(default)]
    pub instance_host_port: u16,
    #[serde(default)]
    pub instance_container_port: u16,
    #[serde(default)]
    pub start_command: Option<String>,
    #[serde(default)]
    pub exit_status: Option<i64>,
    #[serde(default)]
    pub exit_description: Option<String>,
}

impl Record {
    fn new(message: StartMessage) -> Record {
        let id = random_id();
        let now = now_timestamp();
        Record {
            instance_id: id.clone(),
            private_instance_id: format!("{}{}", random_id(), random_id()),
            warden_handle: id,
            warden_job_id: None,
            start_message: message,
            state: InstanceState::Born,
            state_timestamp: now,
            timestamps: [(timestamp_key(InstanceState::Born), now)].into(),
            instance_host_port: 0,
            instance_container_port: 0,
            start_command: None,
            exit_status: None,
            exit_description: None,
        }
    }

    fn matches(&self, f: &InstanceFilter) -> bool {
        f.matches(
            &self.start_message.droplet,
            &self.start_message.version,
            &self.instance_id,
            self.start_message.index,
            self.state,
        )
    }

    fn heartbeat_entry(&self) -> HeartbeatInstance {
        HeartbeatInstance {
            cc_partition: self.start_message.cc_partition.clone(),
            droplet: self.start_message.droplet.clone(),
            version: self.start_message.version.clone(),
            instance: self.instance_id.clone(),
            index: self.start_message.index,
            state: self.state,
            state_timestamp: self.state_timestamp,
        }
    }

    fn amount(&self) -> Amount {
        Amount {
            memory_mb: self.start_message.limits.mem,
            disk_mb: self.start_message.limits.disk,
        }
    }
}

fn timestamp_key(state: InstanceState) -> String {
    format!("state_{}_timestamp", state.as_str().to_ascii_lowercase())
}

/// 32 hex digits (a UUID without dashes), as the DEA's ids.
pub fn random_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// One instance in the registry.
pub struct Instance {
    pub rec: Mutex<Record>,
    /// Fired by a stop: ends a start in progress (download, health check).
    cancel: CancellationToken,
    /// Set once a stop has destroyed the container, so a second stop (shutdown after
    /// `dea.stop`) waits for the first instead of returning while its destroy is in flight.
    stopped: tokio::sync::watch::Sender<bool>,
    /// CPU usage sample (wall seconds, CPU nanoseconds) for `usage.cpu`.
    cpu_sample: Mutex<Option<(f64, u64, f64)>>,
}

impl Instance {
    fn new(rec: Record) -> Arc<Instance> {
        Arc::new(Instance {
            rec: Mutex::new(rec),
            cancel: CancellationToken::new(),
            stopped: tokio::sync::watch::Sender::new(false),
            cpu_sample: Mutex::new(None),
        })
    }

    pub fn record(&self) -> Record {
        self.rec.lock().unwrap().clone()
    }

    pub fn state(&self) -> InstanceState {
        self.rec.lock().unwrap().state
    }
}

/// The instance registry of one agent.
pub struct Instances {
    cell: Arc<Cell>,
    advertising: AtomicBool,
    /// False once evacuating or shutting down: start messages are ignored.
    accepting: AtomicBool,
    evacuating: AtomicBool,
    /// By container handle (stable across `dea.update`).
    registry: Mutex<HashMap<String, Arc<Instance>>>,
    /// Serializes snapshot writes.
    snapshot_lock: Mutex<()>,
    /// The snapshot's `staging_tasks`, supplied by the staging registry.
    staging_snapshot: std::sync::OnceLock<StagingSnapshot>,
}

/// Produces the snapshot's `staging_tasks` entries.
pub type StagingSnapshot = Box<dyn Fn() -> Vec<serde_json::Value> + Send + Sync>;

impl Instances {
    pub fn new(cell: Arc<Cell>) -> Arc<Instances> {
        Arc::new(Instances {
            cell,
            advertising: AtomicBool::new(true),
            accepting: AtomicBool::new(true),
            evacuating: AtomicBool::new(false),
            registry: Mutex::new(HashMap::new()),
            snapshot_lock: Mutex::new(()),
            staging_snapshot: std::sync::OnceLock::new(),
        })
    }

    /// Let the staging registry put its tasks into every snapshot (set once).
    pub fn set_staging_snapshot(&self, f: StagingSnapshot) {
        let _ = self.staging_snapshot.set(f);
    }

    /// Write the snapshot now (a staging task came or went).
    pub fn save_snapshot_now(&self) {
        self.save_snapshot();
    }

    pub fn cell(&self) -> &Arc<Cell> {
        &self.cell
    }

    pub fn all(&self) -> Vec<Arc<Instance>> {
        self.registry.lock().unwrap().values().cloned().collect()
    }

    /// (state as the wire names it, how many instances are in it), for the metrics.
    pub fn state_counts(&self) -> Vec<(String, u64)> {
        crate::metrics::count_states(self.all().iter().map(|i| i.state()))
    }

    fn by_instance_id(&self, id: &str) -> Option<Arc<Instance>> {
        self.all()
            .into_iter()
            .find(|i| i.rec.lock().unwrap().instance_id == id)
    }

    fn insert(&self, inst: Arc<Instance>) {
        let handle = inst.rec.lock().unwrap().warden_handle.clone();
        self.registry.lock().unwrap().insert(handle, inst);
    }

    fn remove(&self, handle: &str) {
        self.registry.lock().unwrap().remove(handle);
    }

    pub fn advertising(&self) -> bool {
        self.advertising.load(Ordering::SeqCst)
    }

    /// No more advertisements (USR1, evacuation, shutdown).
    pub fn stop_advertising(&self) {
        self.advertising.store(false, Ordering::SeqCst);
    }

    /// Instances per application that are (about to be) running here, as advertised.
    pub fn app_id_to_count(&self) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        for i in self.all() {
            let r = i.rec.lock().unwrap();
            if matches!(
                r.state,
                InstanceState::Born
                    | InstanceState::Starting
                    | InstanceState::Running
                    | InstanceState::Resuming
            ) {
                *counts.entry(r.start_message.droplet.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// `dea.heartbeat` now: instances STARTING, RUNNING, CRASHED or EVACUATING.
    pub async fn heartbeat(&self) {
        let mut droplets: Vec<HeartbeatInstance> = self
            .all()
            .iter()
            .map(|i| i.record())
            .filter(|r| {
                matches!(
                    r.state,
                    InstanceState::Starting
                        | InstanceState::Running
                        | InstanceState::Crashed
                        | InstanceState::Evacuating
                )
            })
            .map(|r| r.heartbeat_entry())
            .collect();
        droplets.sort_by(|a, b| a.instance.cmp(&b.instance));
        let msg = Heartbeat {
            dea: self.cell.id.clone(),
            droplets,
        };
        self.cell.bus.publish(subject::HEARTBEAT, &msg).await;
    }

    /// `router.register` (or unregister) of an instance's URIs (all of them, or `uris`).
    async fn route(&self, rec: &Record, uris: Option<Vec<String>>, register: bool) {
        let uris = uris.unwrap_or_else(|| rec.start_message.uris.clone());
        if uris.is_empty() || rec.instance_host_port == 0 {
            return;
        }
        let msg = RouterRegister {
            dea: Some(self.cell.id.clone()),
            app: Some(rec.start_message.droplet.clone()),
            uris,
            host: self.cell.config.local_ip.clone(),
            port: rec.instance_host_port,
            tags: [(
                "component".to_string(),
                format!("dea-{}", self.cell.config.index),
            )]
            .into(),
            private_instance_id: Some(rec.private_instance_id.clone()),
        };
        let subject = if register {
            subject::ROUTER_REGISTER
        } else {
            subject::ROUTER_UNREGISTER
        };
        self.cell.bus.publish(subject, &msg).await;
    }

    fn dir_server_route(&self) -> RouterRegister {
        RouterRegister {
            dea: None,
            app: None,
            uris: vec![self.cell.dir_server_host()],
            host: self.cell.config.local_ip.clone(),
            port: self.cell.config.directory_server.v2_port,
            tags: [(
                "component".to_string(),
                format!("directory-server-{}", self.cell.config.index),
            )]
            .into(),
            private_instance_id: None,
        }
    }

    /// Register the directory server and every RUNNING/EVACUATING instance with URIs.
    pub async fn register_routes(&self) {
        self.cell
            .bus
            .publish(subject::ROUTER_REGISTER, &self.dir_server_route())
            .await;
        for i in self.all() {
            let rec = i.record();
            if matches!(
                rec.state,
                InstanceState::Running | InstanceState::Evacuating
            ) {
                self.route(&rec, None, true).await;
            }
        }
    }

    /// Subscribe to the instance subjects and start the periodic work.
    pub async fn serve(self: &Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, BusError> {
        let bus = self.cell.bus.clone();
        let mut handles = Vec::new();
        let me = self.clone();
        handles.push(
            bus.serve::<StartMessage, _, _>(&subject::start(&self.cell.id), None, move |m| {
                let me = me.clone();
                async move { me.start(m.body) }
            })
            .await?,
        );
        let me = self.clone();
        handles.push(
            bus.serve::<InstanceFilter, _, _>(subject::STOP, None, move |m| {
                let me = me.clone();
                async move { me.stop_matching(&m.body).await }
            })
            .await?,
        );
        let me = self.clone();
        handles.push(
            bus.serve::<Update, _, _>(subject::UPDATE, None, move |m| {
                let me = me.clone();
                async move { me.update(m.body).await }
            })
            .await?,
        );
        let me = self.clone();
        handles.push(
            bus.serve::<FindDroplet, _, _>(subject::FIND_DROPLET, None, move |m| {
                let me = me.clone();
                async move { me.find_droplet(m).await }
            })
            .await?,
        );
        let me = self.clone();
        handles.push(
            bus.serve::<serde_json::Value, _, _>(subject::HEALTHMANAGER_START, None, move |_| {
                let me = me.clone();
                async move {
                    if !me.evacuating.load(Ordering::SeqCst) {
                        me.heartbeat().await
                    }
                }
            })
            .await?,
        );
        let me = self.clone();
        handles.push(
            bus.serve::<serde_json::Value, _, _>(subject::ROUTER_START, None, move |_| {
                let me = me.clone();
                async move { me.register_routes().await }
            })
            .await?,
        );

        let me = self.clone();
        handles.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(secs(me.cell.config.intervals.heartbeat));
            loop {
                tick.tick().await;
                if !me.evacuating.load(Ordering::SeqCst) {
                    me.heartbeat().await;
                }
            }
        }));
        let me = self.clone();
        handles.push(tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(secs(me.cell.config.intervals.router_register_in_seconds));
            loop {
                tick.tick().await;
                me.register_routes().await;
            }
        }));
        let me = self.clone();
        handles.push(tokio::spawn(async move {
            let period = secs(me.cell.config.intervals.heartbeat.min(10.0));
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                me.reap_crashes();
            }
        }));
        Ok(handles)
    }

    /// A start message (spec §6 step 1): validate, register BORN, reserve, start.
    fn start(self: &Arc<Self>, message: StartMessage) {
        if !self.accepting.load(Ordering::SeqCst) {
            tracing::info!(app = %message.droplet, "ignoring start: evacuating or shutting down");
            return;
        }
        if let Err(e) = message.validate() {
            tracing::warn!(app = %message.droplet, error = %e, "dropping invalid start message");
            return;
        }
        let rec = Record::new(message);
        let inst = Instance::new(rec.clone());
        tracing::info!(
            instance = %rec.instance_id,
            app = %rec.start_message.droplet,
            index = rec.start_message.index,
            "Starting app instance (index {}) with guid {}",
            rec.start_message.index,
            rec.start_message.droplet
        );
        self.insert(inst.clone());
        if let Err(e) = self
            .cell
            .resources
            .reserve(&rec.warden_handle, rec.amount())
        {
            let me = self.clone();
            tokio::spawn(async move { me.crash(&inst, -1, e.to_string()).await });
            return;
        }
        let me = self.clone();
        tokio::spawn(async move { me.run_instance(inst).await });
    }

    /// Set a new state (with its timestamps); false if the instance was not in one of `from`.
    fn transition(&self, inst: &Instance, from: &[InstanceState], to: InstanceState) -> bool {
        let mut r = inst.rec.lock().unwrap();
        if !from.contains(&r.state) {
            return false;
        }
        let now = now_timestamp();
        r.state = to;
        r.state_timestamp = now;
        r.timestamps.insert(timestamp_key(to), now);
        tracing::info!(instance = %r.instance_id, app = %r.start_message.droplet, state = to.as_str(), "instance state");
        true
    }

    /// `dea.stop` (spec §3.8).
    async fn stop_matching(self: &Arc<Self>, filter: &InstanceFilter) {
        let targets: Vec<Arc<Instance>> = self
            .all()
            .into_iter()
            .filter(|i| {
                let r = i.rec.lock().unwrap();
                r.matches(filter)
                    && !matches!(
                        r.state,
                        InstanceState::Resuming | InstanceState::Stopped | InstanceState::Crashed
                    )
            })
            .collect();
        let stops = targets.into_iter().map(|i| {
            let me = self.clone();
            async move { me.stop(&i).await }
        });
        futures_util::future::join_all(stops).await;
    }

    /// `dea.update` (spec §3.9).
    async fn update(self: &Arc<Self>, msg: Update) {
        let mut changed = false;
        for inst in self.all() {
            let (old, new_uris) = {
                let r = inst.rec.lock().unwrap();
                if r.start_message.droplet != msg.droplet
                    || !matches!(r.state, InstanceState::Running | InstanceState::Evacuating)
                {
                    continue;
                }
                (r.clone(), msg.uris.clone())
            };
            let added: Vec<String> = new_uris
                .iter()
                .filter(|u| !old.start_message.uris.contains(u))
                .cloned()
                .collect();
            let removed: Vec<String> = old
                .start_message
                .uris
                .iter()
                .filter(|u| !new_uris.contains(u))
                .cloned()
                .collect();
            let updated = {
                let mut r = inst.rec.lock().unwrap();
                r.start_message.uris = new_uris;
                if let Some(v) = &msg.version {
                    if *v != r.start_message.version {
                        r.start_message.version = v.clone();
                        r.instance_id = random_id();
                    }
                }
                r.clone()
            };
            if !added.is_empty() {
                self.route(&updated, Some(added), true).await;
            }
            if !removed.is_empty() {
                self.route(&old, Some(removed), false).await;
            }
            changed = true;
        }
        if changed {
            self.heartbeat().await;
            self.save_snapshot();
        }
    }

    /// `dea.find.droplet` (spec §3.10): one reply per matching instance.
    async fn find_droplet(self: &Arc<Self>, m: Incoming<FindDroplet>) {
        let Some(reply) = m.reply else {
            return;
        };
        for inst in self.all() {
            let rec = inst.record();
            if !rec.matches(&m.body.filter) {
                continue;
            }
            let stats = if m.body.include_stats && rec.state == InstanceState::Running {
                Some(self.stats(&inst, &rec).await)
            } else {
                None
            };
            let file_uri_v2 = m.body.path.as_deref().map(|p| {
                self.cell
                    .file_url(&format!("/instance_paths/{}", rec.instance_id), p)
            });
            let msg = FindDropletReply {
                dea: self.cell.id.clone(),
                droplet: rec.start_message.droplet.clone(),
                version: rec.start_message.version.clone(),
                instance: rec.instance_id.clone(),
                index: rec.start_message.index,
                state: rec.state,
                state_timestamp: rec.state_timestamp,
                staged: format!("/{}", rec.instance_id),
                file_uri_v2,
                stats,
            };
            self.cell.bus.publish(reply.clone(), &msg).await;
        }
    }

    /// Evacuate (spec §8): EVACUATING, one heartbeat, then wait until every instance was
    /// stopped by the health manager (or crashed), at most `evacuation_bail_out_time_in_seconds`.
    pub async fn evacuate(self: &Arc<Self>) {
        self.stop_advertising();
        self.accepting.store(false, Ordering::SeqCst);
        self.evacuating.store(true, Ordering::SeqCst);
        for inst in self.all() {
            if self.transition(
                &inst,
                &[
                    InstanceState::Born,
                    InstanceState::Starting,
                    InstanceState::Resuming,
                    InstanceState::Running,
                ],
                InstanceState::Evacuating,
            ) {
                // Evacuating instances hold no memory (spec §7); they keep their disk.
                let handle = inst.rec.lock().unwrap().warden_handle.clone();
                self.cell.resources.shrink(
                    &handle,
                    Amount {
                        memory_mb: 0,
                        disk_mb: u64::MAX,
                    },
                );
            }
        }
        self.save_snapshot();
        self.heartbeat().await;
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_secs(self.cell.config.evacuation_bail_out_time_in_seconds);
        let poll = secs(self.cell.config.intervals.heartbeat.min(5.0));
        loop {
            let pending = self.all().iter().any(|i| {
                !matches!(
                    i.state(),
                    InstanceState::Stopping | InstanceState::Stopped | InstanceState::Crashed
                )
            });
            if !pending {
                tracing::info!("evacuation complete");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!("evacuation bail-out time reached");
                return;
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Stop every instance and destroy every container this agent made (shutdown).
    pub async fn shutdown(self: &Arc<Self>) {
        self.stop_advertising();
        self.accepting.store(false, Ordering::SeqCst);
        self.cell
            .bus
            .publish(subject::ROUTER_UNREGISTER, &self.dir_server_route())
            .await;
        let stops = self.all().into_iter().map(|i| {
            let me = self.clone();
            async move { me.stop(&i).await }
        });
        futures_util::future::join_all(stops).await;
        // A start racing the stop may have created its container after the stop's destroy.
        self.destroy_orphans(&[], true).await;
        self.save_snapshot();
    }

    /// Destroy this agent's containers (only instance containers with `instances_only`,
    /// which leaves the tasks' to the task registry) except `keep`.
    async fn destroy_orphans(&self, keep: &[String], instances_only: bool) {
        let owner = self.cell.config.base_dir.display().to_string();
        let mut filter = vec![(OWNER_PROPERTY.to_string(), owner)];
        if instances_only {
            filter.push((KIND_PROPERTY.to_string(), "instance".to_string()));
        }
        let handles = match self.cell.garden.list(&filter).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers");
                return;
            }
        };
        for h in handles {
            if keep.contains(&h) {
                continue;
            }
            tracing::info!(handle = %h, "destroying orphaned container");
            if let Err(e) = self.cell.garden.destroy(&h).await {
                tracing::warn!(handle = %h, error = %e, "destroy failed");
            }
        }
    }

    /// Crash bookkeeping (spec §6.2): per app keep only the newest crash, drop crashes
    /// older than `crash_lifetime_secs`, and crash directories nobody owns.
    fn reap_crashes(&self) {
        let now = now_timestamp();
        let lifetime = self.cell.config.crash_lifetime_secs as f64;
        let mut crashed: Vec<Record> = self
            .all()
            .iter()
            .map(|i| i.record())
            .filter(|r| r.state == InstanceState::Crashed)
            .collect();
        crashed.sort_by(|a, b| b.state_timestamp.total_cmp(&a.state_timestamp));
        let mut newest_seen = std::collections::HashSet::new();
        let mut dropped = false;
        for r in &crashed {
            let newest = newest_seen.insert(r.start_message.droplet.clone());
            if newest && now - r.state_timestamp < lifetime {
                continue;
            }
            tracing::info!(instance = %r.instance_id, app = %r.start_message.droplet, "Removing crash for app with id {}", r.start_message.droplet);
            self.remove(&r.warden_handle);
            self.cell.resources.release(&r.warden_handle);
            let _ = std::fs::remove_dir_all(self.cell.config.crashes_dir().join(&r.instance_id));
            dropped = true;
        }
        let live: Vec<String> = self
            .all()
            .iter()
            .map(|i| i.rec.lock().unwrap().instance_id.clone())
            .collect();
        if let Ok(entries) = std::fs::read_dir(self.cell.config.crashes_dir()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !live.contains(&name) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        if dropped {
            self.save_snapshot();
        }
    }
}

impl FileRoots for Instances {
    fn instance(&self, instance_id: &str) -> Lookup {
        let Some(inst) = self.by_instance_id(instance_id) else {
            return Lookup::Unknown;
        };
        let r = inst.record();
        match r.state {
            InstanceState::Running | InstanceState::Evacuating => {
                Lookup::Root(FileRoot::Container {
                    handle: r.warden_handle,
                    base: "/home/vcap".into(),
                })
            }
            InstanceState::Crashed => Lookup::Root(FileRoot::Host(
                self.cell.config.crashes_dir().join(&r.instance_id),
            )),
            _ => Lookup::Unavailable,
        }
    }

    fn staging_task(&self, _task_id: &str) -> Lookup {
        Lookup::Unknown
    }
}
