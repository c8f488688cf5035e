//! Processes: Run, Attach, and the stdout/stderr requests that claim a session's streams.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use garden_api::{GardenError, ProcessSpec, WindowSize};
use tokio::sync::mpsc;

use super::container::validate_name;
use super::grace::ActiveGuard;
use super::{convert, generic, Garden, Result};
use crate::init::proto::SpawnRequest;
use crate::kernel::{PeaSpec, SpawnError};
use crate::process::{Output, Process};
use crate::service::{ActivityGuard, OutputStream, ProcessSession, Reply};

impl Garden {
    pub(super) async fn run(&self, handle: &str, spec: ProcessSpec) -> Result<Reply> {
        let started = std::time::Instant::now();
        let c = self.lookup(handle)?;
        let guard = c.activity.guard();
        crate::service::bind_mounts_need_image(&spec.bind_mounts, &spec.image.uri)?;
        if !c.state.lock().expect("state lock").can_run() {
            return Err(GardenError::generic("container is being destroyed"));
        }
        let id = if spec.id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            spec.id.clone()
        };
        validate_name("process id", &id)?;
        if c.processes
            .lock()
            .expect("processes lock")
            .contains_key(&id)
        {
            return Err(GardenError::generic(format!(
                "process ID '{id}' already in use"
            )));
        }
        // A pea's image is resolved (and pinned) before anything else is made, so a bad
        // reference leaves nothing behind.
        let pea = match spec.image.uri.is_empty() {
            true => None,
            false => Some(self.pea_image(&spec).await?),
        };
        let made = {
            let mut processes = c.processes.lock().expect("processes lock");
            if processes.contains_key(&id) {
                Err(GardenError::generic(format!(
                    "process ID '{id}' already in use"
                )))
            } else {
                let tty = spec.tty.map(|t| {
                    t.window_size.unwrap_or(WindowSize {
                        columns: 80,
                        rows: 24,
                    })
                });
                Process::new(&id, tty, c.sandbox.clone())
                    .map_err(|e| generic(format!("create stdio: {e}")))
                    .inspect(|(p, _)| {
                        processes.insert(id.clone(), p.clone());
                    })
            }
        };
        let (process, child_fds) = match made {
            Ok(m) => m,
            Err(e) => {
                if let Some(plan) = pea {
                    self.release_image(plan.lower_dirs).await;
                }
                return Err(e);
            }
        };
        let mut request = SpawnRequest {
            id: id.clone(),
            path: spec.path.clone(),
            args: spec.args.clone(),
            env: Vec::new(),
            dir: spec.dir.clone(),
            user: spec.user.clone(),
            rlimits: convert::rlimits(&spec.rlimits),
            tty: spec.tty.is_some(),
            privileged: c.spec.privileged,
        };
        match &pea {
            // A pea is root of the container in `/` unless told otherwise, with its own
            // image's env; users are resolved against its own /etc/passwd.
            Some(plan) => {
                request.env = plan.env.clone();
                if request.dir.is_empty() {
                    request.dir = "/".into();
                }
            }
            None => {
                request.env = c.image_env.clone();
                request.env.extend(c.spec.env.iter().cloned());
                if request.dir.is_empty() {
                    request.dir = c.image_dir.clone();
                }
                if request.user.is_empty() {
                    request.user = c.image_user.clone();
                }
            }
        }
        request.env.extend(spec.env.iter().cloned());
        // Subscribe before the process starts, so its very first bytes reach this Run's streams.
        let stream_id = self.next_stream.fetch_add(1, Ordering::Relaxed).to_string();
        process.open_session(&stream_id);
        let raw: Vec<i32> = child_fds
            .iter()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .collect();
        let spawned = match &pea {
            Some(plan) => {
                let pea_spec = PeaSpec {
                    lower_dirs: plan.lower_dirs.clone(),
                    bind_mounts: convert::bind_mounts(&spec.bind_mounts),
                    resources: spec.limits.as_ref().map(convert::process_resources),
                };
                c.sandbox.spawn_pea(pea_spec, request, &raw).await
            }
            None => c.sandbox.spawn(request, &raw).await,
        };
        drop(child_fds);
        if let Some(plan) = pea {
            // The image stays pinned while the pea runs.
            self.release_image_when_done(&process, plan.lower_dirs);
        }
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
        crate::telemetry::metrics().process_started(started.elapsed());
        Ok(Reply::Process(session(process, guard, stream_id)))
    }

    /// Unpin a pea's image layers once its process is done (its rootfs is gone by then).
    pub(super) fn release_image_when_done(
        &self,
        p: &Arc<Process>,
        layers: Vec<std::path::PathBuf>,
    ) {
        let (garden, done) = (self.me.clone(), p.wait());
        tokio::spawn(async move {
            let _ = done.await;
            if let Some(g) = garden.upgrade() {
                g.release_image(layers).await;
            }
        });
    }

    /// Resolve (pulling if needed) and pin a pea's image.
    async fn pea_image(&self, spec: &ProcessSpec) -> Result<rootfs::RootfsPlan> {
        super::validate::bind_mounts(&spec.bind_mounts)?;
        if let Some(l) = &spec.limits {
            super::validate::limits(&garden_api::Limits {
                cpu_limits: l.cpu_limits,
                memory_limits: l.memory_limits,
                ..Default::default()
            })?;
        }
        self.resolve_image(&spec.image)
            .await
            .map_err(|e| GardenError::generic(format!("pea image: {e}")))
    }

    pub(super) fn attach(&self, handle: &str, process_id: &str) -> Result<Reply> {
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

    pub(super) fn output(
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
