//! Staging (spec §3.5-3.7, §5): `staging.<uuid>.start` and the `staging` queue turn an app
//! package into a droplet with buildpacks, in a container of the requested stack.
//!
//! A request reserves the staging memory and disk in the cell's [`Resources`] under its task
//! id (or is answered with the insufficient-resources error), then gets two replies on its
//! inbox: one once the container is set up (with the signed URL of the staging log, which the
//! directory server serves and tails from inside the container while staging runs), one on
//! completion (see [`flow`]). The agent owns the container through garden-client (its egress
//! rules, limits and properties are not the executor's business) and drives everything in it
//! through executor actions (`Executor::perform_in`): downloads, the runner (`runner.sh`, a
//! POSIX sh script, so any stack with a busybox can stage), and reads its results back.

pub mod buildpacks;
mod flow;
pub mod info;
pub mod upload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use executor::CancellationToken;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::bus::BusError;
use crate::cell::Cell;
use crate::dirserver::{FileRoot, FileRoots, Lookup};
use crate::instance::Instances;
use crate::protocol::{now_timestamp, subject, StagingReply, StagingRequest, StagingStop};
use crate::resources::{Amount, Insufficient};

/// The text of the in-container runner.
pub const RUNNER: &str = include_str!("runner.sh");
/// Garden property `agent:kind` of staging containers.
pub const KIND: &str = "staging";
/// Garden property holding the staging task id of a container.
pub const TASK_PROPERTY: &str = "agent:staging_task";
/// Path of the staging log inside the container (what `task_streaming_log_url` serves).
pub const LOG_PATH: &str = "/tmp/staged/logs/staging_task.log";
/// How long shutdown waits for stagings to end and their containers to go.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(60);

/// Where a staging task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Container and downloads.
    Setup,
    /// The buildpack runs.
    Staging,
    /// Droplet and build cache go up.
    Uploading,
}

/// What the snapshot keeps of a staging task: enough to fail it after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotEntry {
    pub task_id: String,
    pub app_id: String,
    /// The request's inbox: the requester may still be waiting for the completion reply.
    #[serde(default)]
    pub reply_to: Option<String>,
    pub container_handle: String,
    pub phase: Phase,
    pub start_timestamp: f64,
}

/// One staging task in the registry.
pub struct StagingTask {
    pub request: StagingRequest,
    reply_to: Option<String>,
    handle: String,
    amount: Amount,
    phase: Mutex<Phase>,
    /// The container exists (the directory server may look inside).
    container: AtomicBool,
    /// False while a Garden create is in flight: cleanup waits for it before destroying, so
    /// a stop racing the create cannot leave a container behind.
    create_settled: Arc<watch::Sender<bool>>,
    /// `staging.stop` or shutdown.
    stop: CancellationToken,
    started: f64,
}

impl StagingTask {
    fn entry(&self) -> SnapshotEntry {
        SnapshotEntry {
            task_id: self.request.task_id.clone(),
            app_id: self.request.app_id.clone(),
            reply_to: self.reply_to.clone(),
            container_handle: self.handle.clone(),
            phase: *self.phase.lock().unwrap(),
            start_timestamp: self.started,
        }
    }

    fn set_phase(&self, p: Phase) {
        *self.phase.lock().unwrap() = p;
    }
}

/// The staging registry of one agent.
pub struct Stagings {
    cell: Arc<Cell>,
    instances: Arc<Instances>,
    tasks: Mutex<HashMap<String, Arc<StagingTask>>>,
    buildpacks: buildpacks::AdminBuildpacks,
    closing: AtomicBool,
    /// Tasks not yet cleaned up.
    active: watch::Sender<usize>,
}

/// The Garden handle of a staging task's container.
pub fn container_handle(task_id: &str) -> String {
    format!("staging-{task_id}")
}

impl Stagings {
    pub fn new(cell: Arc<Cell>, instances: Arc<Instances>) -> Arc<Stagings> {
        let dir = cell.config.base_dir.join("admin_buildpacks");
        Arc::new(Stagings {
            buildpacks: buildpacks::AdminBuildpacks::new(dir),
            cell,
            instances,
            tasks: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            active: watch::Sender::new(0),
        })
    }

    /// The staging tasks in flight, for the snapshot.
    /// Stagings not yet cleaned up (each holds or is about to hold a container).
    pub fn active_count(&self) -> u64 {
        *self.active.borrow() as u64
    }

    pub fn snapshot_entries(&self) -> Vec<SnapshotEntry> {
        let mut v: Vec<SnapshotEntry> = self
            .tasks
            .lock()
            .unwrap()
            .values()
            .map(|t| t.entry())
            .collect();
        v.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        v
    }

    /// Put the staging tasks into every snapshot the instance registry writes.
    pub fn install_snapshot(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        self.instances.set_staging_snapshot(Box::new(move || {
            me.upgrade()
                .map(|s| {
                    s.snapshot_entries()
                        .into_iter()
                        .filter_map(|e| serde_json::to_value(e).ok())
                        .collect()
                })
                .unwrap_or_default()
        }));
    }

    fn save_snapshot(&self) {
        self.instances.save_snapshot_now();
    }

    /// Subscribe to `staging.<uuid>.start`, the `staging` queue group and `staging.stop`.
    pub async fn serve(self: &Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, BusError> {
        let mut handles = Vec::new();
        let mut subjects = vec![(subject::staging_start(&self.cell.id), None)];
        // An agent that does not stage stays out of the queue group, so it takes nobody's
        // work; requests sent to it by id are answered with an error.
        if self.cell.config.staging.enabled {
            subjects.push((subject::STAGING.to_string(), Some(subject::STAGING)));
        }
        for (subject, queue) in subjects {
            let client = self.cell.bus.client().clone();
            let sub = match queue {
                None => client.subscribe(subject.clone()).await,
                Some(q) => client.queue_subscribe(subject.clone(), q.to_string()).await,
            }
            .map_err(|e| BusError::Subscribe {
                subject: subject.clone(),
                message: e.to_string(),
            })?;
            let me = self.clone();
            handles.push(tokio::spawn(async move {
                let mut sub = sub;
                while let Some(msg) = sub.next().await {
                    let reply = msg.reply.as_ref().map(|r| r.to_string());
                    me.clone().handle_request(&msg.payload, reply).await;
                }
            }));
        }
        let me = self.clone();
        handles.push(
            self.cell
                .bus
                .clone()
                .serve::<StagingStop, _, _>(subject::STAGING_STOP, None, move |m| {
                    let me = me.clone();
                    async move { me.stop_app(&m.body.app_id) }
                })
                .await?,
        );
        // `dea.stop` of exactly `{"droplet": id}` stops that app's stagings too (spec §3.7).
        let me = self.clone();
        handles.push(
            self.cell
                .bus
                .clone()
                .serve::<serde_json::Value, _, _>(subject::STOP, None, move |m| {
                    let me = me.clone();
                    async move {
                        if let Some(obj) = m.body.as_object() {
                            if obj.len() == 1 {
                                if let Some(id) = obj.get("droplet").and_then(|d| d.as_str()) {
                                    me.stop_app(id);
                                }
                            }
                        }
                    }
                })
                .await?,
        );
        Ok(handles)
    }

    async fn reply(&self, reply_to: Option<&str>, msg: &StagingReply) {
        match reply_to {
            Some(r) => self.cell.bus.publish(r.to_string(), msg).await,
            None => {
                tracing::warn!(task_id = %msg.task_id, "staging request without a reply inbox")
            }
        }
    }

    /// One staging request: validate, reserve, register, then stage in the background.
    async fn handle_request(self: Arc<Self>, payload: &[u8], reply_to: Option<String>) {
        let request: StagingRequest = match serde_json::from_slice::<serde_json::Value>(payload)
            .map_err(|e| e.to_string())
            .and_then(|v| serde_path_to_error::deserialize(v).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                let task_id = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v.get("task_id")?.as_str().map(str::to_string));
                tracing::warn!(task_id = ?task_id, error = %e, "dropping invalid staging request");
                if let Some(task_id) = task_id {
                    let msg = failed(&task_id, None, format!("invalid staging request: {e}"));
                    self.reply(reply_to.as_deref(), &msg).await;
                }
                return;
            }
        };
        let task_id = request.task_id.clone();
        if let Err(e) = validate(&request) {
            tracing::warn!(task_id = %task_id, error = %e, "refusing staging request");
            let msg = failed(&task_id, Some(&request.app_id), e);
            self.reply(reply_to.as_deref(), &msg).await;
            return;
        }
        if !self.cell.config.staging.enabled {
            let msg = failed(
                &task_id,
                Some(&request.app_id),
                "Staging is disabled".into(),
            );
            self.reply(reply_to.as_deref(), &msg).await;
            return;
        }
        let amount = self.amount(&request);
        let accepted: Result<Arc<StagingTask>, StagingReply> = {
            let mut tasks = self.tasks.lock().unwrap();
            let owner = reservation_owner(&task_id);
            if self.closing.load(Ordering::SeqCst) {
                Err(failed(
                    &task_id,
                    Some(&request.app_id),
                    "the agent is shutting down".into(),
                ))
            } else if tasks.contains_key(&task_id) {
                Err(failed(
                    &task_id,
                    Some(&request.app_id),
                    format!("staging task {task_id} already exists"),
                ))
            } else if let Err(e) = self.cell.resources.reserve(&owner, amount) {
                let error = match e {
                    Insufficient::Disk => "Not enough disk resources available",
                    Insufficient::Memory => "Not enough memory resources available",
                };
                tracing::warn!(task_id = %task_id, ?amount, error, "refusing staging request");
                Err(StagingReply {
                    task_id: task_id.clone(),
                    error: Some(error.into()),
                    ..Default::default()
                })
            } else {
                let task = Arc::new(StagingTask {
                    handle: container_handle(&task_id),
                    request,
                    reply_to: reply_to.clone(),
                    amount,
                    phase: Mutex::new(Phase::Setup),
                    container: AtomicBool::new(false),
                    create_settled: Arc::new(watch::Sender::new(true)),
                    stop: CancellationToken::new(),
                    started: now_timestamp(),
                });
                tasks.insert(task_id.clone(), task.clone());
                Ok(task)
            }
        };
        let task = match accepted {
            Ok(t) => t,
            Err(msg) => {
                self.reply(reply_to.as_deref(), &msg).await;
                return;
            }
        };
        self.active.send_modify(|n| *n += 1);
        tracing::info!(task_id = %task_id, app = %task.request.app_id, memory_mb = amount.memory_mb, disk_mb = amount.disk_mb,
            "Got staging request for app with id {}", task.request.app_id);
        self.save_snapshot();
        tokio::spawn(self.run(task));
    }

    /// Staging memory/disk: the larger of the configured minimum and what the app asks.
    fn amount(&self, r: &StagingRequest) -> Amount {
        let c = &self.cell.config.staging;
        let start = r.start_message.as_ref().map(|m| m.limits);
        let mem = r.memory_limit.or(start.map(|l| l.mem)).unwrap_or(0);
        let disk = r.disk_limit.or(start.map(|l| l.disk)).unwrap_or(0);
        Amount {
            memory_mb: c.memory_limit_mb.max(mem),
            disk_mb: c.disk_limit_mb.max(disk),
        }
    }

    /// `staging.stop`: stop every staging of the app.
    fn stop_app(&self, app_id: &str) {
        for t in self.tasks.lock().unwrap().values() {
            if t.request.app_id == app_id {
                tracing::info!(task_id = %t.request.task_id, app = %app_id, "stopping staging");
                t.stop.cancel();
            }
        }
    }

    /// Evacuation (spec §8): refuse new stagings and give the running ones until
    /// `evacuation_bail_out_time_in_seconds` to finish; their apps do not start here.
    pub async fn evacuate(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let limit = Duration::from_secs(self.cell.config.evacuation_bail_out_time_in_seconds);
        let mut rx = self.active.subscribe();
        if tokio::time::timeout(limit, rx.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::warn!("stagings still running at the evacuation bail-out time");
        }
    }

    /// Stop every staging (each gets `Error staging: task stopped`) and wait until their
    /// containers are gone.
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for t in self.tasks.lock().unwrap().values() {
            t.stop.cancel();
        }
        let mut rx = self.active.subscribe();
        let waited = tokio::time::timeout(SHUTDOWN_WAIT, rx.wait_for(|n| *n == 0)).await;
        if waited.is_err() {
            tracing::warn!("stagings did not end within {SHUTDOWN_WAIT:?}");
        }
    }

    /// The staging tasks of the previous run's snapshot (read before anything rewrites it).
    pub fn load_stale(&self) -> Vec<SnapshotEntry> {
        #[derive(Deserialize)]
        struct Snap {
            #[serde(default)]
            staging_tasks: Vec<serde_json::Value>,
        }
        let path = self.cell.config.db_dir().join("instances.json");
        let Ok(bytes) = std::fs::read(&path) else {
            return Vec::new();
        };
        match serde_json::from_slice::<Snap>(&bytes) {
            Ok(s) => s
                .staging_tasks
                .into_iter()
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Fail the stagings a previous run left unfinished: their containers are destroyed and
    /// a requester still waiting gets the completion reply with the error.
    pub async fn fail_stale(&self, stale: Vec<SnapshotEntry>) {
        for s in stale {
            tracing::warn!(task_id = %s.task_id, app = %s.app_id, phase = ?s.phase, "failing a staging interrupted by an agent restart");
            if let Err(e) = self.cell.garden.destroy(&s.container_handle).await {
                tracing::debug!(task_id = %s.task_id, error = %e, "destroying the staging container");
            }
            let msg = failed(
                &s.task_id,
                Some(&s.app_id),
                "Error staging: the agent restarted while staging".into(),
            );
            self.reply(s.reply_to.as_deref(), &msg).await;
        }
        // Containers of the last run that no snapshot entry named.
        let owner = self.cell.config.base_dir.display().to_string();
        let filter = vec![
            (crate::instance::OWNER_PROPERTY.to_string(), owner),
            (crate::instance::KIND_PROPERTY.to_string(), KIND.to_string()),
        ];
        if let Ok(handles) = self.cell.garden.list(&filter).await {
            for h in handles {
                tracing::info!(handle = %h, "destroying a leftover staging container");
                let _ = self.cell.garden.destroy(&h).await;
            }
        }
    }

    fn lookup(&self, task_id: &str) -> Lookup {
        let Some(t) = self.tasks.lock().unwrap().get(task_id).cloned() else {
            return Lookup::Unknown;
        };
        if !t.container.load(Ordering::SeqCst) {
            return Lookup::Unavailable;
        }
        Lookup::Root(FileRoot::Container {
            handle: t.handle.clone(),
            base: "/".into(),
        })
    }
}

/// The reservation owner id of a staging task (apart from instance handles and task ids).
fn reservation_owner(task_id: &str) -> String {
    format!("staging:{task_id}")
}

/// A reply with only an error.
fn failed(task_id: &str, app_id: Option<&str>, error: String) -> StagingReply {
    StagingReply {
        task_id: task_id.to_string(),
        app_id: app_id.map(str::to_string),
        error: Some(error),
        ..Default::default()
    }
}

/// What a request must satisfy before anything is reserved.
pub fn validate(r: &StagingRequest) -> Result<(), String> {
    let id = &r.task_id;
    crate::protocol::check_task_id(id)?;
    if r.app_id.is_empty() {
        return Err("app_id is empty".into());
    }
    for (name, uri) in [
        ("download_uri", Some(&r.download_uri)),
        ("upload_uri", Some(&r.upload_uri)),
        (
            "buildpack_cache_download_uri",
            r.buildpack_cache_download_uri.as_ref(),
        ),
        (
            "buildpack_cache_upload_uri",
            r.buildpack_cache_upload_uri.as_ref(),
        ),
    ] {
        let Some(uri) = uri else { continue };
        match url::Url::parse(uri) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => return Err(format!("{name} scheme {:?} is not http(s)", u.scheme())),
            Err(e) => return Err(format!("{name} {uri:?}: {e}")),
        }
    }
    for b in &r.admin_buildpacks {
        if !buildpacks::valid_key(&b.key) {
            return Err(format!("invalid admin buildpack key {:?}", b.key));
        }
    }
    for e in &r.properties.environment {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => return Err(format!("environment entry {e:?} is not NAME=value")),
        }
    }
    let too_big = |v: Option<u64>, max: u64| v.is_some_and(|v| v > max);
    if too_big(r.memory_limit, crate::protocol::MAX_MEMORY_MB)
        || too_big(r.disk_limit, crate::protocol::MAX_DISK_MB)
    {
        return Err("memory_limit or disk_limit out of range".into());
    }
    if let Some(m) = &r.start_message {
        m.validate()
            .map_err(|e| format!("invalid start_message: {e}"))?;
    }
    Ok(())
}

/// The directory server's view of an agent: instances from the instance registry, staging
/// tasks from the staging registry.
pub struct Roots {
    pub instances: Arc<Instances>,
    pub stagings: Arc<Stagings>,
}

impl FileRoots for Roots {
    fn instance(&self, instance_id: &str) -> Lookup {
        self.instances.instance(instance_id)
    }

    fn staging_task(&self, task_id: &str) -> Lookup {
        self.stagings.lookup(task_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(extra: serde_json::Value) -> Result<StagingRequest, serde_json::Error> {
        let mut v = serde_json::json!({
            "app_id": "app", "task_id": "t-1", "stack": "busybox",
            "download_uri": "http://127.0.0.1:1/app.zip",
            "upload_uri": "http://127.0.0.1:1/up",
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        serde_json::from_value(v)
    }

    #[test]
    fn an_empty_start_message_means_none() {
        for empty in [serde_json::json!({}), serde_json::Value::Null] {
            let r = request(serde_json::json!({ "start_message": empty })).unwrap();
            assert!(r.start_message.is_none());
        }
        assert!(request(serde_json::json!({"start_message": {"droplet": "x"}})).is_err());
        validate(&request(serde_json::json!({})).unwrap()).unwrap();
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let cases = [
            (serde_json::json!({"task_id": "../x"}), "task_id"),
            (serde_json::json!({"task_id": ""}), "task_id"),
            (serde_json::json!({"app_id": ""}), "app_id"),
            (
                serde_json::json!({"download_uri": "file:///etc/passwd"}),
                "download_uri",
            ),
            (serde_json::json!({"upload_uri": "nope"}), "upload_uri"),
            (
                serde_json::json!({"admin_buildpacks": [{"key": "../k", "url": "http://x/a.zip"}]}),
                "buildpack key",
            ),
            (
                serde_json::json!({"properties": {"environment": ["NOEQUALS"]}}),
                "environment",
            ),
            (
                serde_json::json!({"memory_limit": u64::MAX}),
                "memory_limit",
            ),
        ];
        for (extra, word) in cases {
            let e = validate(&request(extra.clone()).unwrap()).unwrap_err();
            assert!(e.contains(word), "{extra}: {e:?} should mention {word}");
        }
    }
}
