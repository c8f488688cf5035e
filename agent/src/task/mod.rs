//! One-off tasks (`task.<uuid>.run`, `task.status`, `task.terminate`, `task.completed`): a
//! container per task, queued as `waiting` while there is no capacity.
//!
//! A task reserves its memory and disk in the cell's [`Resources`](crate::resources) under its
//! task id before its container is allocated; tasks that do not fit wait in one FIFO queue
//! (a later small task never overtakes an earlier big one) that is retried whenever anything
//! gives resources back. The container runs the droplet download, the install script and the
//! command (see [`spec`]); its output is captured from the executor's log messages
//! ([`output`]), and when it completes the container is destroyed, the reservation released
//! and `task.completed` published. Final states stay queryable until `task.status` has
//! returned them, then for `tasks.retention_secs` more.

pub mod output;
pub mod spec;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use executor::container::{AllocationRequest, Container};
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::bus::BusError;
use crate::cell::Cell;
use crate::protocol::{subject, ErrorReply, TaskRef, TaskReply, TaskRun, TaskState, TaskStatus};
use output::Output;

/// Finished tasks kept without ever being retrieved; the oldest go first beyond this.
pub const MAX_UNRETRIEVED: usize = 10_000;
/// An agent that does not know a task id answers `task.status`/`task.terminate` after this
/// delay, so on a bus with several agents the owner's answer is the one a requester gets.
pub const UNKNOWN_REPLY_DELAY: Duration = Duration::from_millis(250);
/// How long shutdown waits for running tasks to end and their containers to go.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(60);

struct Task {
    run: TaskRun,
    state: TaskState,
    exit_status: Option<i64>,
    error: Option<String>,
    output: Output,
    /// `task.terminate` (or shutdown) asked for it.
    terminate: bool,
    timed_out: bool,
    /// A final status was returned by `task.status`; removal is scheduled.
    retrieved: bool,
    /// Tells apart two tasks that had the same id one after the other.
    seq: u64,
}

impl Task {
    fn status(&self) -> TaskStatus {
        TaskStatus {
            task_id: self.run.task_id.clone(),
            state: self.state,
            exit_status: self.exit_status,
            stdout: self.output.stdout.text(),
            stderr: self.output.stderr.text(),
            result: None,
            error: self.error.clone(),
        }
    }
}

#[derive(Default)]
struct Registry {
    tasks: HashMap<String, Task>,
    waiting: VecDeque<String>,
    /// Final, not yet retrieved: (id, seq), oldest first.
    unretrieved: VecDeque<(String, u64)>,
    next_seq: u64,
}

/// The task registry of one agent.
pub struct Tasks {
    cell: Arc<Cell>,
    // std mutex: never held across an await.
    reg: Mutex<Registry>,
    /// Tasks that hold a container (started and not yet cleaned up).
    active: watch::Sender<usize>,
    closing: AtomicBool,
}

/// Why a run request was refused, as its `error` reply says.
type Refusal = String;

impl Tasks {
    pub fn new(cell: Arc<Cell>) -> Arc<Tasks> {
        Arc::new(Tasks {
            cell,
            reg: Mutex::new(Registry::default()),
            active: watch::Sender::new(0),
            closing: AtomicBool::new(false),
        })
    }

    /// (state as the wire names it, how many tasks are in it), for the metrics.
    pub fn state_counts(&self) -> Vec<(String, u64)> {
        let reg = self.reg.lock().unwrap();
        crate::metrics::count_states(reg.tasks.values().map(|t| t.state))
    }

    /// Subscribe to `task.<id>.run`, `task.status` and `task.terminate`.
    pub async fn serve(self: &Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, BusError> {
        let mut handles = Vec::new();
        let me = self.clone();
        handles.push(
            self.serve_raw(&subject::task_run(&self.cell.id), move |payload| {
                let me = me.clone();
                async move { Some(json(&me.handle_run(&payload))) }
            })
            .await?,
        );
        let me = self.clone();
        handles.push(
            self.serve_raw(subject::TASK_STATUS, move |payload| {
                let me = me.clone();
                async move { me.handle_status(&payload).await }
            })
            .await?,
        );
        let me = self.clone();
        handles.push(
            self.serve_raw(subject::TASK_TERMINATE, move |payload| {
                let me = me.clone();
                async move { me.handle_terminate(&payload).await }
            })
            .await?,
        );
        // Anything given back (a task or an instance ending) may let waiting tasks start.
        let me = self.clone();
        let mut freed = self.cell.resources.freed();
        handles.push(tokio::spawn(async move {
            while freed.changed().await.is_ok() {
                me.pump();
            }
        }));
        Ok(handles)
    }

    /// Subscribe to `subject` and answer each request with what `handler` returns (`None`:
    /// no answer). Unlike [`Bus::serve`](crate::bus::Bus::serve), the handler also sees
    /// payloads that are not valid JSON, so it can answer them with an error.
    async fn serve_raw<F, Fut>(
        &self,
        subject: &str,
        handler: F,
    ) -> Result<tokio::task::JoinHandle<()>, BusError>
    where
        F: Fn(Vec<u8>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Option<Vec<u8>>> + Send + 'static,
    {
        let client = self.cell.bus.client().clone();
        let mut sub =
            client
                .subscribe(subject.to_string())
                .await
                .map_err(|e| BusError::Subscribe {
                    subject: subject.into(),
                    message: e.to_string(),
                })?;
        Ok(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let fut = handler(msg.payload.to_vec());
                let client = client.clone();
                tokio::spawn(async move {
                    let answer = fut.await;
                    if let (Some(reply), Some(answer)) = (msg.reply, answer) {
                        if let Err(e) = client.publish(reply, answer.into()).await {
                            tracing::warn!(subject = %msg.subject, error = %e, "reply failed");
                        }
                    }
                });
            }
        }))
    }

    /// `task.<uuid>.run`.
    fn handle_run(self: &Arc<Self>, payload: &[u8]) -> TaskReply {
        let run: TaskRun = match parse(payload) {
            Ok(r) => r,
            Err(e) => {
                let task_id = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v.get("task_id")?.as_str().map(str::to_string))
                    .unwrap_or_default();
                tracing::warn!(task_id = %task_id, error = %e, "refusing task.run");
                return refused(task_id, format!("invalid task.run message: {e}"));
            }
        };
        let task_id = run.task_id.clone();
        match self.accept(run) {
            Ok(state) => {
                tracing::info!(task_id = %task_id, state = ?state, "task accepted");
                TaskReply {
                    task_id,
                    state,
                    error: None,
                }
            }
            Err(e) => {
                tracing::warn!(task_id = %task_id, error = %e, "refusing task.run");
                refused(task_id, e)
            }
        }
    }

    fn accept(self: &Arc<Self>, run: TaskRun) -> Result<TaskState, Refusal> {
        let config = &self.cell.config;
        let stack = config.stack(&run.stack);
        spec::validate(&run, stack.is_some(), self.cell.resources.capacity())?;
        let mut reg = self.reg.lock().unwrap();
        if self.closing.load(Ordering::SeqCst) {
            return Err("the agent is shutting down".into());
        }
        if reg.tasks.contains_key(&run.task_id) {
            return Err(format!("task {} already exists", run.task_id));
        }
        let id = run.task_id.clone();
        let seq = reg.next_seq;
        reg.next_seq += 1;
        let task = Task {
            output: Output::new(
                &[spec::SOURCE_INSTALL, spec::SOURCE_COMMAND],
                config.tasks.max_output_bytes as usize,
            ),
            run,
            state: TaskState::Waiting,
            exit_status: None,
            error: None,
            terminate: false,
            timed_out: false,
            retrieved: false,
            seq,
        };
        let fits = reg.waiting.is_empty()
            && self
                .cell
                .resources
                .reserve(&id, spec::amount(&task.run))
                .is_ok();
        if fits {
            if let Err(e) = self.start(&task.run) {
                self.cell.resources.release(&id);
                return Err(e);
            }
            reg.tasks.insert(
                id,
                Task {
                    state: TaskState::Running,
                    ..task
                },
            );
            return Ok(TaskState::Running);
        }
        if reg.waiting.len() >= config.tasks.max_waiting {
            return Err(format!(
                "no capacity and already {} tasks waiting",
                reg.waiting.len()
            ));
        }
        reg.waiting.push_back(id.clone());
        reg.tasks.insert(id, task);
        Ok(TaskState::Waiting)
    }

    /// Allocate and run the task's container (its resources are already reserved) and
    /// watch it to the end. Called with the registry locked: nothing here awaits.
    fn start(self: &Arc<Self>, run: &TaskRun) -> Result<(), Refusal> {
        let cell = &self.cell;
        let id = run.task_id.clone();
        let guid = spec::container_guid(&id);
        let rootfs = cell
            .config
            .stack(&run.stack)
            .map(|s| s.package_path.clone())
            .ok_or_else(|| format!("unknown stack {:?}", run.stack))?;
        let mut logs = cell.logs.route(&guid);
        let allocated = cell.executor.allocate(AllocationRequest {
            guid: guid.clone(),
            memory_mb: run.limits.mem,
            disk_mb: run.limits.disk,
            max_pids: cell.config.instance.nproc_limit,
            tags: [("task_id".to_string(), id.clone())].into(),
        });
        if let Err(e) = allocated {
            cell.logs.unroute(&guid);
            return Err(format!("cannot allocate a container: {e}"));
        }
        if let Err(e) = cell.executor.run(&guid, spec::run_info(run, &rootfs)) {
            cell.logs.unroute(&guid);
            let executor = cell.executor.clone();
            let g = guid.clone();
            tokio::spawn(async move {
                if let Err(e) = executor.delete(&g).await {
                    tracing::warn!(guid = %g, error = %e, "deleting an unused allocation failed");
                }
            });
            return Err(format!("cannot run the task's container: {e}"));
        }
        tracing::info!(task_id = %id, guid = %guid, "task container started");

        let me = self.clone();
        let task_id = id.clone();
        let collector = tokio::spawn(async move {
            while let Some(msg) = logs.recv().await {
                if let Some(t) = me.reg.lock().unwrap().tasks.get_mut(&task_id) {
                    t.output.push(&msg);
                }
            }
        });

        self.active.send_modify(|n| *n += 1);
        let me = self.clone();
        let timeout = run.timeout.map(Duration::from_secs_f64);
        tokio::spawn(async move {
            let executor = me.cell.executor.clone();
            let waited = match timeout {
                None => executor.wait_completed(&guid).await,
                Some(t) => tokio::select! {
                    c = executor.wait_completed(&guid) => c,
                    _ = tokio::time::sleep(t) => {
                        tracing::info!(task_id = %id, timeout = ?t, "task timed out");
                        if let Some(task) = me.reg.lock().unwrap().tasks.get_mut(&id) {
                            task.timed_out = true;
                        }
                        let _ = executor.stop(&guid);
                        executor.wait_completed(&guid).await
                    }
                },
            };
            // Dropping the route ends the collector once it has read every message.
            me.cell.logs.unroute(&guid);
            let _ = collector.await;
            if let Err(e) = executor.delete(&guid).await {
                tracing::error!(task_id = %id, guid = %guid, error = %e, "destroying the task's container failed");
            }
            me.cell.resources.release(&id);
            let status = me.finish(&id, waited);
            if let Some(status) = status {
                tracing::info!(task_id = %id, state = ?status.state, exit_status = ?status.exit_status, "task ended");
                me.cell.bus.publish(subject::TASK_COMPLETED, &status).await;
            }
            me.active.send_modify(|n| *n -= 1);
            me.pump();
        });
        Ok(())
    }

    /// Settle a task's final state from its container's run result and its output.
    fn finish(
        &self,
        id: &str,
        completed: Result<Container, executor::container::ExecutorError>,
    ) -> Option<TaskStatus> {
        let mut reg = self.reg.lock().unwrap();
        let task = reg.tasks.get_mut(id)?;
        let command = task.output.exit_status(spec::SOURCE_COMMAND);
        let install = task.output.exit_status(spec::SOURCE_INSTALL);
        let any_exit = command.or(install);
        let (state, exit_status, error) = match completed {
            Err(e) => (TaskState::Error, None, Some(e.to_string())),
            Ok(c) => {
                let rr = c.run_result;
                if task.terminate && rr.stopped {
                    (TaskState::Terminated, any_exit, None)
                } else if task.timed_out && rr.stopped {
                    let t = task.run.timeout.unwrap_or_default();
                    (
                        TaskState::Failed,
                        any_exit,
                        Some(format!("exceeded the timeout of {t}s")),
                    )
                } else if !rr.failed {
                    (TaskState::Finished, Some(command.unwrap_or(0)), None)
                } else if let Some(n) = install.filter(|n| *n != 0) {
                    (
                        TaskState::Failed,
                        Some(n),
                        Some(format!("install script exited with status {n}")),
                    )
                } else if let Some(n) = command.filter(|n| *n != 0) {
                    (TaskState::Failed, Some(n), None)
                } else {
                    (TaskState::Error, any_exit, Some(rr.failure_reason))
                }
            }
        };
        task.state = state;
        task.exit_status = exit_status;
        task.error = error;
        let status = task.status();
        let key = (id.to_string(), task.seq);
        reg.unretrieved.push_back(key);
        self.evict_unretrieved(&mut reg);
        Some(status)
    }

    fn evict_unretrieved(&self, reg: &mut Registry) {
        while reg.unretrieved.len() > MAX_UNRETRIEVED {
            let Some((id, seq)) = reg.unretrieved.pop_front() else {
                break;
            };
            let stale = reg
                .tasks
                .get(&id)
                .is_some_and(|t| t.seq == seq && !t.retrieved);
            if stale {
                reg.tasks.remove(&id);
            }
        }
    }

    /// Start waiting tasks, oldest first, while they fit.
    fn pump(self: &Arc<Self>) {
        let mut ended = Vec::new();
        {
            let mut reg = self.reg.lock().unwrap();
            if self.closing.load(Ordering::SeqCst) {
                return;
            }
            while let Some(id) = reg.waiting.front().cloned() {
                let Some(run) = reg.tasks.get(&id).map(|t| t.run.clone()) else {
                    reg.waiting.pop_front();
                    continue;
                };
                if self
                    .cell
                    .resources
                    .reserve(&id, spec::amount(&run))
                    .is_err()
                {
                    break;
                }
                reg.waiting.pop_front();
                let started = self.start(&run);
                let task = reg.tasks.get_mut(&id).expect("checked above");
                match started {
                    Ok(()) => {
                        tracing::info!(task_id = %id, "waiting task started");
                        task.state = TaskState::Running;
                    }
                    Err(e) => {
                        tracing::warn!(task_id = %id, error = %e, "waiting task could not start");
                        self.cell.resources.release(&id);
                        task.state = TaskState::Error;
                        task.error = Some(e);
                        let (status, seq) = (task.status(), task.seq);
                        reg.unretrieved.push_back((id.clone(), seq));
                        ended.push(status);
                    }
                }
            }
            self.evict_unretrieved(&mut reg);
        }
        self.publish_all(ended);
    }

    fn publish_all(&self, statuses: Vec<TaskStatus>) {
        if statuses.is_empty() {
            return;
        }
        let bus = self.cell.bus.clone();
        tokio::spawn(async move {
            for s in statuses {
                bus.publish(subject::TASK_COMPLETED, &s).await;
            }
        });
    }

    /// `task.status`: the status with the output so far; `None` for an unknown id here.
    async fn handle_status(self: &Arc<Self>, payload: &[u8]) -> Option<Vec<u8>> {
        let r: TaskRef = match parse(payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "invalid task.status message");
                return Some(json(&ErrorReply {
                    error: format!("invalid task.status message: {e}"),
                }));
            }
        };
        let found = {
            let mut reg = self.reg.lock().unwrap();
            reg.tasks.get_mut(&r.task_id).map(|t| {
                let first = t.state.is_final() && !t.retrieved;
                if first {
                    t.retrieved = true;
                }
                (t.status(), first.then_some(t.seq))
            })
        };
        match found {
            Some((status, retrieved_seq)) => {
                if let Some(seq) = retrieved_seq {
                    self.forget_later(r.task_id.clone(), seq);
                }
                Some(json(&status))
            }
            None => Some(unknown(&r.task_id).await),
        }
    }

    /// Drop a retrieved task after the retention period.
    fn forget_later(self: &Arc<Self>, id: String, seq: u64) {
        let me = self.clone();
        let keep = Duration::from_secs(self.cell.config.tasks.retention_secs);
        tokio::spawn(async move {
            tokio::time::sleep(keep).await;
            let mut reg = me.reg.lock().unwrap();
            if reg.tasks.get(&id).is_some_and(|t| t.seq == seq) {
                reg.tasks.remove(&id);
                tracing::debug!(task_id = %id, "retrieved task forgotten");
            }
        });
    }

    /// `task.terminate`: a waiting task ends at once, a running one is stopped (SIGTERM, then
    /// SIGKILL after the grace period) and reported `terminated` on `task.completed`.
    async fn handle_terminate(self: &Arc<Self>, payload: &[u8]) -> Option<Vec<u8>> {
        let r: TaskRef = match parse(payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "invalid task.terminate message");
                return Some(json(&ErrorReply {
                    error: format!("invalid task.terminate message: {e}"),
                }));
            }
        };
        let found = {
            let mut reg = self.reg.lock().unwrap();
            match reg.tasks.get_mut(&r.task_id) {
                None => None,
                Some(task) => Some(match task.state {
                    TaskState::Waiting => {
                        task.state = TaskState::Terminated;
                        let (status, seq) = (task.status(), task.seq);
                        reg.waiting.retain(|w| w != &r.task_id);
                        reg.unretrieved.push_back((r.task_id.clone(), seq));
                        (TaskState::Terminated, Some(status))
                    }
                    TaskState::Running => {
                        task.terminate = true;
                        let guid = spec::container_guid(&r.task_id);
                        if let Err(e) = self.cell.executor.stop(&guid) {
                            tracing::warn!(task_id = %r.task_id, error = %e, "stopping the task failed");
                        }
                        (TaskState::Running, None)
                    }
                    s => (s, None),
                }),
            }
        };
        let Some((state, ended)) = found else {
            return Some(unknown(&r.task_id).await);
        };
        tracing::info!(task_id = %r.task_id, "task terminate requested");
        self.publish_all(ended.into_iter().collect());
        // A waiting task leaving the head of the queue may let the next one start.
        self.pump();
        Some(json(&TaskReply {
            task_id: r.task_id,
            state,
            error: None,
        }))
    }

    /// Terminate every task and destroy its container (agent shutdown).
    pub async fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        let ended = {
            let mut reg = self.reg.lock().unwrap();
            let waiting: Vec<String> = reg.waiting.drain(..).collect();
            let mut ended = Vec::new();
            for id in waiting {
                if let Some(t) = reg.tasks.get_mut(&id) {
                    t.state = TaskState::Terminated;
                    ended.push(t.status());
                }
            }
            for (id, t) in reg.tasks.iter_mut() {
                if t.state == TaskState::Running {
                    t.terminate = true;
                    if let Err(e) = self.cell.executor.stop(&spec::container_guid(id)) {
                        tracing::warn!(task_id = %id, error = %e, "stopping the task failed");
                    }
                }
            }
            ended
        };
        for s in ended {
            self.cell.bus.publish(subject::TASK_COMPLETED, &s).await;
        }
        let mut active = self.active.subscribe();
        if tokio::time::timeout(SHUTDOWN_WAIT, active.wait_for(|n| *n == 0))
            .await
            .is_err()
        {
            tracing::error!("tasks still running after {SHUTDOWN_WAIT:?} of shutdown");
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec())
}

fn refused(task_id: String, error: String) -> TaskReply {
    TaskReply {
        task_id,
        state: TaskState::Error,
        error: Some(error),
    }
}

async fn unknown(task_id: &str) -> Vec<u8> {
    tokio::time::sleep(UNKNOWN_REPLY_DELAY).await;
    json(&ErrorReply {
        error: format!(
            "task {task_id} does not exist, its result has already been retrieved or it expired"
        ),
    })
}
