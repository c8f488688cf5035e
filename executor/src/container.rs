//! The container lifecycle a scheduling agent drives: allocate (resource accounting against
//! the cell's capacity) → run (create in Garden, then the setup/action/health tree) →
//! completed with a run result → delete. States move `reserved → initializing → created →
//! running → completed`; any state may jump to `completed`.
//!
//! Task vs LRP lives in the run info: a Task has a `result_file` (read after a successful
//! run, at most 50 KiB) and no health checks; an LRP has a `monitor` or `check_definition`
//! and counts as `running` only once its startup check passed.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use garden_api::{ContainerSpec, ImageRef, Limits};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{broadcast, watch};

use crate::action::{Action, EnvironmentVariable};
use crate::cache::DownloadCache;
use crate::garden::Garden;
use crate::health::{CheckDefinition, HealthConfig, HealthStep, Probe};
use crate::log::{LogConfig, LogSink, LogStreamer};
use crate::step::codependent::CodependentStep;
use crate::step::serial::SerialStep;
use crate::step::{self, CancellationToken, Ready, Step, StepConfig, StepEnv, StepError};

/// Largest task result file.
pub const MAX_RESULT_BYTES: u64 = 50 * 1024;
/// Largest failure reason; longer ones lose their middle.
pub const MAX_FAILURE_REASON: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutorError {
    #[error("insufficient resources available")]
    InsufficientResources,
    #[error("container guid not available: {0}")]
    GuidNotAvailable(String),
    #[error("container not found: {0}")]
    NotFound(String),
    #[error("invalid transition: container {guid} is {state:?}, {wanted}")]
    InvalidTransition {
        guid: String,
        state: State,
        wanted: &'static str,
    },
    #[error("invalid run info: {0}")]
    InvalidRunInfo(String),
    #[error("failed to destroy container {guid}: {message}")]
    Destroy { guid: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Reserved,
    Initializing,
    Created,
    Running,
    Completed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub containers: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationRequest {
    pub guid: String,
    #[serde(default)]
    pub memory_mb: u64,
    #[serde(default)]
    pub disk_mb: u64,
    #[serde(default)]
    pub max_pids: u64,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// What to run in an allocated container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunInfo {
    /// Image URI (`docker:///busybox`, `/path`, ...); empty = gardend's default rootfs.
    #[serde(default)]
    pub rootfs: String,
    #[serde(default)]
    pub env: Vec<EnvironmentVariable>,
    #[serde(default)]
    pub setup: Option<Action>,
    pub action: Option<Action>,
    #[serde(default)]
    pub monitor: Option<Action>,
    #[serde(default)]
    pub check_definition: Option<CheckDefinition>,
    #[serde(default)]
    pub start_timeout_ms: u64,
    /// 1..=100; 0 = no CPU shares set.
    #[serde(default)]
    pub cpu_weight: u64,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub log_config: LogConfig,
    /// Task only: file read after a successful run (first tar entry, <= 50 KiB).
    #[serde(default)]
    pub result_file: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    pub failed: bool,
    pub failure_reason: String,
    pub stopped: bool,
    /// Creation failures are worth retrying elsewhere.
    #[serde(default)]
    pub retryable: bool,
}

/// A container as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub guid: String,
    pub state: State,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub max_pids: u64,
    pub tags: BTreeMap<String, String>,
    pub run_result: RunResult,
    /// Task result file contents, once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "container", rename_all = "snake_case")]
pub enum Event {
    ContainerReserved(Container),
    ContainerRunning(Container),
    ContainerComplete(Container),
}

#[derive(Clone)]
pub struct ExecutorConfig {
    pub cell_id: String,
    pub capacity: Resources,
    pub step: StepConfig,
    pub health: HealthConfig,
    /// Shares for `cpu_weight` 100.
    pub max_cpu_shares: u64,
    /// Inode hard limit applied with a disk limit.
    pub inode_limit: u64,
    /// Garden properties set on every container this executor creates (besides
    /// `executor:owner`), so an embedding agent can find its containers after a restart.
    pub container_properties: BTreeMap<String, String>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            cell_id: "cell".into(),
            capacity: Resources {
                memory_mb: 8192,
                disk_mb: 65536,
                containers: 256,
            },
            step: StepConfig::default(),
            health: HealthConfig::default(),
            max_cpu_shares: 1024,
            inode_limit: 200_000,
            container_properties: BTreeMap::new(),
        }
    }
}

struct Record {
    view: Container,
    cancel: CancellationToken,
    /// True once the run task finished (or nothing will ever run).
    done: watch::Sender<bool>,
    /// A Garden container exists for this guid.
    created: bool,
}

/// The executor; share it as `Arc<Executor>`.
pub struct Executor {
    garden: Arc<dyn Garden>,
    cache: Arc<DownloadCache>,
    sink: Arc<dyn LogSink>,
    config: ExecutorConfig,
    // std mutex: never held across an await.
    containers: Mutex<HashMap<String, Record>>,
    events: broadcast::Sender<Event>,
}

impl Executor {
    pub fn new(
        garden: Arc<dyn Garden>,
        cache: Arc<DownloadCache>,
        sink: Arc<dyn LogSink>,
        config: ExecutorConfig,
    ) -> Arc<Executor> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Executor {
            garden,
            cache,
            sink,
            config,
            containers: Mutex::new(HashMap::new()),
            events,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The download cache the steps fetch through (an embedding agent seeds it with
    /// artifacts it made itself, e.g. a freshly staged droplet).
    pub fn cache(&self) -> &Arc<DownloadCache> {
        &self.cache
    }

    pub fn total_resources(&self) -> Resources {
        self.config.capacity
    }

    /// Capacity minus everything allocated.
    pub fn remaining_resources(&self) -> Resources {
        let c = self.containers.lock().unwrap();
        let mut r = self.config.capacity;
        for rec in c.values() {
            r.memory_mb = r.memory_mb.saturating_sub(rec.view.memory_mb);
            r.disk_mb = r.disk_mb.saturating_sub(rec.view.disk_mb);
            r.containers = r.containers.saturating_sub(1);
        }
        r
    }

    pub fn allocate(&self, req: AllocationRequest) -> Result<Container, ExecutorError> {
        if req.guid.is_empty() {
            return Err(ExecutorError::GuidNotAvailable("empty guid".into()));
        }
        let remaining = self.remaining_resources();
        let mut c = self.containers.lock().unwrap();
        if c.contains_key(&req.guid) {
            return Err(ExecutorError::GuidNotAvailable(req.guid));
        }
        if remaining.containers == 0
            || req.memory_mb > remaining.memory_mb
            || req.disk_mb > remaining.disk_mb
        {
            return Err(ExecutorError::InsufficientResources);
        }
        let view = Container {
            guid: req.guid.clone(),
            state: State::Reserved,
            memory_mb: req.memory_mb,
            disk_mb: req.disk_mb,
            max_pids: req.max_pids,
            tags: req.tags,
            run_result: RunResult::default(),
            result: None,
        };
        let (done, _) = watch::channel(false);
        c.insert(
            req.guid,
            Record {
                view: view.clone(),
                cancel: CancellationToken::new(),
                done,
                created: false,
            },
        );
        drop(c);
        let _ = self.events.send(Event::ContainerReserved(view.clone()));
        Ok(view)
    }

    pub fn get(&self, guid: &str) -> Result<Container, ExecutorError> {
        self.containers
            .lock()
            .unwrap()
            .get(guid)
            .map(|r| r.view.clone())
            .ok_or_else(|| ExecutorError::NotFound(guid.into()))
    }

    pub fn list(&self) -> Vec<Container> {
        let mut v: Vec<Container> = self
            .containers
            .lock()
            .unwrap()
            .values()
            .map(|r| r.view.clone())
            .collect();
        v.sort_by(|a, b| a.guid.cmp(&b.guid));
        v
    }

    /// Start a reserved container: create it in Garden and run its steps in the background.
    pub fn run(self: &Arc<Self>, guid: &str, info: RunInfo) -> Result<(), ExecutorError> {
        let Some(action) = info.action.clone() else {
            return Err(ExecutorError::InvalidRunInfo(
                "container cannot have empty action".into(),
            ));
        };
        for (name, a) in [
            ("setup", info.setup.as_ref()),
            ("action", Some(&action)),
            ("monitor", info.monitor.as_ref()),
        ] {
            if let Some(a) = a {
                a.validate()
                    .map_err(|e| ExecutorError::InvalidRunInfo(format!("{name}: {e}")))?;
            }
        }
        {
            let mut c = self.containers.lock().unwrap();
            let rec = c
                .get_mut(guid)
                .ok_or_else(|| ExecutorError::NotFound(guid.into()))?;
            if rec.view.state != State::Reserved {
                return Err(ExecutorError::InvalidTransition {
                    guid: guid.into(),
                    state: rec.view.state,
                    wanted: "run needs reserved",
                });
            }
            rec.view.state = State::Initializing;
        }
        let me = self.clone();
        let guid = guid.to_string();
        tokio::spawn(async move { me.run_container(guid, info, action).await });
        Ok(())
    }

    fn transition(&self, guid: &str, to: State) -> Option<Container> {
        let mut c = self.containers.lock().unwrap();
        let rec = c.get_mut(guid)?;
        if rec.view.state == State::Completed {
            return None;
        }
        rec.view.state = to;
        Some(rec.view.clone())
    }

    fn complete(&self, guid: &str, mut result: RunResult, task_result: Option<String>) {
        let view = {
            let mut c = self.containers.lock().unwrap();
            let Some(rec) = c.get_mut(guid) else { return };
            if rec.view.state == State::Completed {
                return;
            }
            result.stopped |= rec.cancel.is_cancelled();
            result.failure_reason = truncate_middle(&result.failure_reason);
            rec.view.state = State::Completed;
            rec.view.run_result = result;
            rec.view.result = task_result;
            rec.done.send_replace(true);
            rec.view.clone()
        };
        let _ = self.events.send(Event::ContainerComplete(view));
    }

    fn container_spec(&self, guid: &str, info: &RunInfo) -> ContainerSpec {
        let (memory_mb, disk_mb, max_pids) = {
            let c = self.containers.lock().unwrap();
            c.get(guid)
                .map(|r| (r.view.memory_mb, r.view.disk_mb, r.view.max_pids))
                .unwrap_or_default()
        };
        let mut limits = Limits::default();
        limits.memory_limits.limit_in_bytes = memory_mb << 20;
        limits.disk_limits.byte_hard = disk_mb << 20;
        if disk_mb > 0 {
            limits.disk_limits.inode_hard = self.config.inode_limit;
        }
        limits.pid_limits.max = max_pids;
        if info.cpu_weight > 0 {
            limits.cpu_limits.weight =
                (self.config.max_cpu_shares * info.cpu_weight.min(100) / 100).max(2);
        }
        ContainerSpec {
            handle: guid.to_string(),
            image: ImageRef {
                uri: info.rootfs.clone(),
                ..Default::default()
            },
            env: info
                .env
                .iter()
                .map(|e| format!("{}={}", e.name, e.value))
                .collect(),
            privileged: info.privileged,
            limits,
            properties: self
                .config
                .container_properties
                .clone()
                .into_iter()
                .chain([("executor:owner".to_string(), self.config.cell_id.clone())])
                .collect(),
            ..Default::default()
        }
    }

    async fn run_container(self: Arc<Self>, guid: String, info: RunInfo, action: Action) {
        let cell = &self.config.cell_id;
        let streamer = LogStreamer::new(self.sink.clone(), &info.log_config);
        streamer.out(&format!(
            "Cell {cell} creating container for instance {guid}"
        ));
        let cancel = match self.containers.lock().unwrap().get(&guid) {
            Some(r) => r.cancel.clone(),
            None => return,
        };
        let spec = self.container_spec(&guid, &info);
        let handle = match self.garden.create(&spec).await {
            Ok(h) => h,
            Err(e) => {
                streamer.err(&format!(
                    "Cell {cell} failed to create container for instance {guid}: {e}"
                ));
                let reason = format!("failed to create container: {e}");
                self.complete(
                    &guid,
                    RunResult {
                        failed: true,
                        failure_reason: reason,
                        stopped: false,
                        retryable: true,
                    },
                    None,
                );
                return;
            }
        };
        if let Some(r) = self.containers.lock().unwrap().get_mut(&guid) {
            r.created = true;
        }
        streamer.out(&format!(
            "Cell {cell} successfully created container for instance {guid}"
        ));
        if self.transition(&guid, State::Created).is_none() {
            return;
        }

        let env = Arc::new(StepEnv {
            garden: self.garden.clone(),
            handle: handle.clone(),
            cache: self.cache.clone(),
            config: self.config.step.clone(),
            instance_env: vec![
                "CF_INSTANCE_PORT=".into(),
                "CF_INSTANCE_ADDR=".into(),
                "CF_INSTANCE_PORTS=[]".into(),
            ],
        });
        let tree = self.build_tree(&env, &streamer, &info, &action);
        let me = self.clone();
        let g = guid.clone();
        let ready = Ready::new(move || {
            if let Some(view) = me.transition(&g, State::Running) {
                let _ = me.events.send(Event::ContainerRunning(view));
            }
        });
        let outcome = tree.perform(cancel.clone(), ready).await;
        let mut result = RunResult::default();
        let mut task_result = None;
        match outcome {
            Ok(()) => {
                if !info.result_file.is_empty() {
                    match self.read_result(&handle, &info.result_file).await {
                        Ok(text) => task_result = Some(text),
                        Err(e) => {
                            tracing::warn!(guid = %guid, error = %e, "reading the result file failed");
                            result.failed = true;
                            result.failure_reason = "failed to fetch result".into();
                        }
                    }
                }
            }
            Err(e) => {
                result.failed = true;
                result.failure_reason = e.to_string();
            }
        }
        self.complete(&guid, result, task_result);
    }

    fn build_tree(
        &self,
        env: &Arc<StepEnv>,
        streamer: &LogStreamer,
        info: &RunInfo,
        action: &Action,
    ) -> Box<dyn Step> {
        let main = step::build(action, env, streamer);
        let start_timeout = Duration::from_millis(info.start_timeout_ms);
        let probes = match (&info.check_definition, &info.monitor) {
            (Some(def), _) if !def.checks.is_empty() => Some((
                Probe::from_definition(def, &self.config.health),
                def.log_source.clone(),
            )),
            (_, Some(m)) => Some((vec![Probe::Action(Box::new(m.clone()))], String::new())),
            _ => None,
        };
        let long_running: Box<dyn Step> = match probes {
            None => main,
            Some((probes, source)) => {
                let health = HealthStep::new(
                    probes,
                    env.clone(),
                    streamer.clone(),
                    &source,
                    start_timeout,
                    self.config.health.clone(),
                );
                Box::new(CodependentStep::group(vec![main, Box::new(health)]))
            }
        };
        match &info.setup {
            Some(setup) => Box::new(SerialStep::new(vec![
                step::build(setup, env, streamer),
                long_running,
            ])),
            None => long_running,
        }
    }

    async fn read_result(&self, handle: &str, path: &str) -> Result<String, String> {
        let mut stream = self
            .garden
            .stream_out(handle, "root", path)
            .await
            .map_err(|e| e.to_string())?;
        let mut tar = Vec::new();
        // A tar holding a 50 KiB file is a little larger; read a bounded amount.
        (&mut stream)
            .take(MAX_RESULT_BYTES + 64 * 1024)
            .read_to_end(&mut tar)
            .await
            .map_err(|e| e.to_string())?;
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entries = archive.entries().map_err(|e| e.to_string())?;
        let mut entry = entries
            .next()
            .ok_or("empty tar stream")?
            .map_err(|e| e.to_string())?;
        if entry.header().size().unwrap_or(0) > MAX_RESULT_BYTES {
            return Err(format!(
                "result file {path} is larger than {MAX_RESULT_BYTES} bytes"
            ));
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).map_err(|e| e.to_string())?;
        Ok(text)
    }

    /// Run `action` in a Garden container the caller created and owns, with this executor's
    /// download cache (single flight per `cache_key`, checksums), log sink and step settings.
    /// For containers whose lifecycle outlives one executor (the agent's app instances, which
    /// a restarted agent re-adopts): no allocation, no events, nothing destroyed here.
    pub async fn perform_in(
        &self,
        handle: &str,
        action: &Action,
        log_config: &LogConfig,
        cancel: CancellationToken,
    ) -> Result<(), StepError> {
        action
            .validate()
            .map_err(|e| StepError::Other(format!("invalid action: {e}")))?;
        let env = Arc::new(StepEnv {
            garden: self.garden.clone(),
            handle: handle.to_string(),
            cache: self.cache.clone(),
            config: self.config.step.clone(),
            instance_env: Vec::new(),
        });
        let streamer = LogStreamer::new(self.sink.clone(), log_config);
        step::build(action, &env, &streamer)
            .perform(cancel, Ready::noop())
            .await
    }

    /// Ask a container to stop: cancel its steps, or complete it at once if nothing runs yet.
    pub fn stop(&self, guid: &str) -> Result<(), ExecutorError> {
        let (state, cancel) = {
            let c = self.containers.lock().unwrap();
            let rec = c
                .get(guid)
                .ok_or_else(|| ExecutorError::NotFound(guid.into()))?;
            (rec.view.state, rec.cancel.clone())
        };
        cancel.cancel();
        if state == State::Reserved {
            let result = RunResult {
                failed: true,
                failure_reason: "stopped-before-running".into(),
                stopped: true,
                retryable: false,
            };
            self.complete(guid, result, None);
        }
        Ok(())
    }

    /// Wait until the container completed and return it.
    pub async fn wait_completed(&self, guid: &str) -> Result<Container, ExecutorError> {
        let mut rx = {
            let c = self.containers.lock().unwrap();
            c.get(guid)
                .ok_or_else(|| ExecutorError::NotFound(guid.into()))?
                .done
                .subscribe()
        };
        let _ = rx.wait_for(|d| *d).await;
        self.get(guid)
    }

    /// Stop, wait for the steps to end, destroy the Garden container, release the resources.
    pub async fn delete(&self, guid: &str) -> Result<(), ExecutorError> {
        self.stop(guid)?;
        self.wait_completed(guid).await?;
        let created = self
            .containers
            .lock()
            .unwrap()
            .get(guid)
            .map(|r| r.created)
            .unwrap_or(false);
        if created {
            let streamer = LogStreamer::new(self.sink.clone(), &LogConfig::default());
            let cell = &self.config.cell_id;
            streamer.out(&format!(
                "Cell {cell} destroying container for instance {guid}"
            ));
            if let Err(e) = self.garden.destroy(guid).await {
                return Err(ExecutorError::Destroy {
                    guid: guid.into(),
                    message: e.to_string(),
                });
            }
            streamer.out(&format!(
                "Cell {cell} successfully destroyed container for instance {guid}"
            ));
        }
        self.containers.lock().unwrap().remove(guid);
        Ok(())
    }
}

/// Cut the middle out of an over-long failure reason.
fn truncate_middle(s: &str) -> String {
    if s.len() <= MAX_FAILURE_REASON {
        return s.to_string();
    }
    let marker = "\n... (truncated)\n";
    let keep = (MAX_FAILURE_REASON - marker.len()) / 2;
    let mut head = keep;
    while !s.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = s.len() - keep;
    while !s.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}{marker}{}", &s[..head], &s[tail..])
}

impl From<StepError> for RunResult {
    fn from(e: StepError) -> Self {
        RunResult {
            failed: true,
            failure_reason: e.to_string(),
            stopped: false,
            retryable: false,
        }
    }
}

#[cfg(test)]
mod tests;
