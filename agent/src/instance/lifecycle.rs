//! One instance's life (spec §6): container, droplet, start script, health check, exit
//! detection, crash handling, stop, and re-attachment after an agent restart.

use std::sync::Arc;
use std::time::Duration;

use executor::action::{Action, DownloadAction, RunAction};
use executor::log::LogConfig;
use garden_api::{ContainerSpec, ImageRef, Limits, ProcessSpec, ResourceLimits};
use garden_client::ProcessIo;
use tokio::io::AsyncReadExt;

use super::script::{self, EnvContext};
use super::{Instance, Instances, Record, INSTANCE_PROPERTY, OWNER_PROPERTY};
use crate::config::{secs, BindMode};
use crate::protocol::{now_timestamp, subject, DropletExited, InstanceState, Stats, Usage};
use crate::resources::Amount;

/// Where a droplet is unpacked and the start script runs.
const HOME: &str = "/home/vcap";
/// Largest crash log archive kept.
const MAX_CRASH_LOGS: u64 = 256 << 20;

/// Why a start failed: the `exit_description` the controller shows.
struct StartFailure(String);

impl Instances {
    /// BORN → STARTING → RUNNING, then watch the process until it exits.
    pub(super) async fn run_instance(self: Arc<Self>, inst: Arc<Instance>) {
        let started = std::time::Instant::now();
        if !self.transition(&inst, &[InstanceState::Born], InstanceState::Starting) {
            return;
        }
        self.save_snapshot();
        let process = match self.start_sequence(&inst).await {
            Ok(p) => p,
            Err(StartFailure(description)) => {
                if inst.cancel.is_cancelled() {
                    let handle = inst.rec.lock().unwrap().warden_handle.clone();
                    let _ = self.cell.garden.destroy(&handle).await;
                } else {
                    self.crash(&inst, -1, description).await;
                }
                return;
            }
        };
        let (tx, mut exited) = tokio::sync::oneshot::channel();
        tokio::spawn(wait_for(process, tx));
        let rec = inst.record();
        tokio::select! {
            healthy = self.health_check(&rec, &inst) => {
                match healthy {
                    Ok(()) => {
                        if self.transition(&inst, &[InstanceState::Starting], InstanceState::Running) {
                            crate::metrics::metrics().instance_running(started.elapsed());
                            self.on_running(&inst, true).await;
                        }
                    }
                    Err(StartFailure(description)) => {
                        if !inst.cancel.is_cancelled() {
                            tracing::warn!(instance = %rec.instance_id, "Instance (index {}) failed to start accepting connections", rec.start_message.index);
                            self.crash(&inst, -1, description).await;
                        }
                        return;
                    }
                }
            }
            status = &mut exited => {
                self.exited(&inst, status.unwrap_or(None)).await;
                return;
            }
        }
        let status = exited.await.unwrap_or(None);
        self.exited(&inst, status).await;
    }

    /// The process ended: a crash unless the instance is being stopped.
    async fn exited(self: &Arc<Self>, inst: &Arc<Instance>, status: Option<i32>) {
        if !matches!(
            inst.state(),
            InstanceState::Starting
                | InstanceState::Running
                | InstanceState::Evacuating
                | InstanceState::Resuming
        ) {
            return;
        }
        let handle = inst.rec.lock().unwrap().warden_handle.clone();
        let (status, description) = match status {
            Some(s) => {
                let events = match self.cell.garden.info(&handle).await {
                    Ok(info) => info.events.unwrap_or_default(),
                    Err(_) => Vec::new(),
                };
                // Garden says "Out of memory"; the DEA reported warden's "out of memory".
                let description = match events.into_iter().next() {
                    Some(e) if e.to_ascii_lowercase().contains("out of memory") => {
                        "out of memory".to_string()
                    }
                    Some(e) => e,
                    None => "app instance exited".into(),
                };
                (i64::from(s), description)
            }
            None => (-1, "unknown".into()),
        };
        self.crash(inst, status, description).await;
    }

    /// Container, network, droplet, start command, start script.
    async fn start_sequence(
        &self,
        inst: &Arc<Instance>,
    ) -> Result<garden_client::Process, StartFailure> {
        let rec = inst.record();
        let m = &rec.start_message;
        let config = &self.cell.config;
        let garden = &self.cell.garden;
        let stack = config
            .stack(&m.stack)
            .ok_or_else(|| StartFailure(format!("Stack {} does not exist", m.stack)))?;
        let handle = rec.warden_handle.clone();
        let egress = m
            .egress_network_rules
            .iter()
            .map(script::net_out_rule)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StartFailure(format!("invalid egress rule: {e}")))?;

        let mut limits = Limits::default();
        limits.memory_limits.limit_in_bytes = m.limits.mem << 20;
        limits.disk_limits.byte_hard = m.limits.disk << 20;
        limits.disk_limits.inode_hard = config.instance.disk_inode_limit;
        limits.cpu_limits.weight = (m.limits.mem / config.instance.memory_to_cpu_share_ratio)
            .clamp(
                config.instance.min_cpu_share_limit,
                config
                    .instance
                    .max_cpu_share_limit
                    .max(config.instance.min_cpu_share_limit),
            );
        let spec = ContainerSpec {
            handle: handle.clone(),
            image: ImageRef {
                uri: stack.package_path.clone(),
                ..Default::default()
            },
            bind_mounts: config
                .bind_mounts
                .iter()
                .map(|b| garden_api::BindMount {
                    src_path: b.src_path.display().to_string(),
                    dst_path: b
                        .dst_path
                        .as_ref()
                        .unwrap_or(&b.src_path)
                        .display()
                        .to_string(),
                    mode: match b.mode {
                        BindMode::Ro => garden_api::BIND_MOUNT_MODE_RO,
                        BindMode::Rw => garden_api::BIND_MOUNT_MODE_RW,
                    },
                    origin: garden_api::BIND_MOUNT_ORIGIN_HOST,
                })
                .collect(),
            limits,
            netout_rules: egress,
            properties: [
                (
                    OWNER_PROPERTY.to_string(),
                    config.base_dir.display().to_string(),
                ),
                (INSTANCE_PROPERTY.to_string(), rec.instance_id.clone()),
                ("agent:app".to_string(), m.droplet.clone()),
                (super::KIND_PROPERTY.to_string(), "instance".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        garden
            .create(&spec)
            .await
            .map_err(|e| StartFailure(format!("failed to create container: {e}")))?;
        self.check_cancel(inst)?;
        let ports = garden
            .net_in(&handle, 0, 0)
            .await
            .map_err(|e| StartFailure(format!("failed to map a port: {e}")))?;
        {
            let mut r = inst.rec.lock().unwrap();
            r.instance_host_port = ports.host_port as u16;
            r.instance_container_port = ports.container_port as u16;
        }

        let from = m
            .executable_uri
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| StartFailure("failed to start: no droplet URI".into()))?;
        let sha1 = m.sha1.clone().unwrap_or_default().to_ascii_lowercase();
        let download = Action::Download(DownloadAction {
            from: from.clone(),
            to: HOME.into(),
            cache_key: if sha1.is_empty() {
                String::new()
            } else {
                format!("droplet-{sha1}")
            },
            user: "vcap".into(),
            artifact: "droplet".into(),
            log_source: String::new(),
            checksum_algorithm: if sha1.is_empty() {
                String::new()
            } else {
                "sha1".into()
            },
            checksum_value: sha1,
        });
        self.cell
            .executor
            .perform_in(&handle, &download, &log_config(&rec), inst.cancel.clone())
            .await
            .map_err(|e| StartFailure(e.to_string()))?;
        self.check_cancel(inst)?;

        let command = match m.start_command.clone().filter(|c| !c.trim().is_empty()) {
            Some(c) => c,
            None => self
                .read_file(&handle, &format!("{HOME}/staging_info.yml"))
                .await
                .and_then(|y| script::staging_info_start_command(&y))
                .ok_or_else(|| StartFailure("missing start command".into()))?,
        };
        let rec = {
            let mut r = inst.rec.lock().unwrap();
            r.start_command = Some(command.clone());
            r.clone()
        };
        self.run_hook(
            &rec,
            self.cell.config.hooks.before_start.as_deref(),
            "before_start",
        )
        .await;
        self.check_cancel(inst)?;

        let ctx = env_context(&rec, &self.cell.config.local_ip);
        let text = script::start_script(&ctx, &command, config.post_setup_hook.as_deref());
        let process_id = format!("app-{}", rec.warden_handle);
        let process_spec = ProcessSpec {
            id: process_id.clone(),
            path: "/bin/sh".into(),
            args: vec!["-c".into(), text],
            dir: HOME.into(),
            user: "vcap".into(),
            rlimits: ResourceLimits {
                nofile: (m.limits.fds > 0).then_some(m.limits.fds),
                nproc: (config.instance.nproc_limit > 0).then_some(config.instance.nproc_limit),
                ..Default::default()
            },
            ..Default::default()
        };
        let process = garden
            .run(&handle, &process_spec, ProcessIo::default())
            .await
            .map_err(|e| StartFailure(format!("failed to start: {e}")))?;
        inst.rec.lock().unwrap().warden_job_id = Some(process_id);
        self.save_snapshot();
        Ok(process)
    }

    fn check_cancel(&self, inst: &Instance) -> Result<(), StartFailure> {
        if inst.cancel.is_cancelled() {
            return Err(StartFailure("stopped".into()));
        }
        Ok(())
    }

    /// A small file from the container, or None.
    async fn read_file(&self, handle: &str, path: &str) -> Option<String> {
        let mut stream = self
            .cell
            .garden
            .stream_out(handle, "vcap", path)
            .await
            .ok()?;
        let mut tar = Vec::new();
        (&mut stream)
            .take(1 << 20)
            .read_to_end(&mut tar)
            .await
            .ok()?;
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entry = archive.entries().ok()?.next()?.ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text).ok()?;
        Some(text)
    }

    /// TCP connect to `<local_ip>:<host port>` until it succeeds within the health check
    /// timeout (spec §6 step 4); healthy at once when the app has no URIs. The DEA polled
    /// every 0.5 s; here the pause starts at 10 ms and doubles up to 0.5 s, because most apps
    /// listen within a few milliseconds of starting and a flat 0.5 s poll made every start
    /// wait at least that long (bench: start to RUNNING p50 744 ms, debug build).
    async fn health_check(&self, rec: &Record, inst: &Instance) -> Result<(), StartFailure> {
        if rec.start_message.uris.is_empty() {
            return Ok(());
        }
        let timeout = secs(
            rec.start_message
                .health_check_timeout
                .unwrap_or(self.cell.config.default_health_check_timeout),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let addr = (self.cell.config.local_ip.clone(), rec.instance_host_port);
        let mut pause = Duration::from_millis(10);
        loop {
            if inst.cancel.is_cancelled() {
                return Err(StartFailure("stopped".into()));
            }
            let attempt = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr.clone()),
            )
            .await;
            if let Ok(Ok(_)) = attempt {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StartFailure(
                    "failed to accept connections within health check timeout".into(),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Entering RUNNING: heartbeat, routes, snapshot, stats sample, after_start hook.
    async fn on_running(self: &Arc<Self>, inst: &Arc<Instance>, started: bool) {
        let rec = inst.record();
        self.heartbeat().await;
        self.route(&rec, None, true).await;
        self.save_snapshot();
        self.sample_cpu(inst, &rec).await;
        if started {
            self.run_hook(
                &rec,
                self.cell.config.hooks.after_start.as_deref(),
                "after_start",
            )
            .await;
        }
    }

    /// CRASHED (spec §4): unregister, `droplet.exited`, keep the logs, destroy the container,
    /// give back the memory (the disk stays reserved until the crash is reaped).
    pub(super) async fn crash(
        self: &Arc<Self>,
        inst: &Arc<Instance>,
        exit_status: i64,
        description: String,
    ) {
        let prev = inst.state();
        if !self.transition(
            inst,
            &[
                InstanceState::Born,
                InstanceState::Starting,
                InstanceState::Running,
                InstanceState::Evacuating,
                InstanceState::Resuming,
            ],
            InstanceState::Crashed,
        ) {
            return;
        }
        let rec = {
            let mut r = inst.rec.lock().unwrap();
            r.exit_status = Some(exit_status);
            r.exit_description = Some(description.clone());
            r.clone()
        };
        tracing::warn!(instance = %rec.instance_id, app = %rec.start_message.droplet, exit_status, %description, "instance crashed");
        if matches!(prev, InstanceState::Running | InstanceState::Evacuating) {
            self.route(&rec, None, false).await;
        }
        // The logs are kept before the crash is announced, so whoever asks for them upon
        // `droplet.exited` finds them.
        if prev != InstanceState::Born {
            self.keep_crash_logs(&rec).await;
        }
        let msg = DropletExited {
            cc_partition: rec.start_message.cc_partition.clone(),
            droplet: rec.start_message.droplet.clone(),
            version: rec.start_message.version.clone(),
            instance: rec.instance_id.clone(),
            index: rec.start_message.index,
            reason: "CRASHED".into(),
            exit_status,
            exit_description: description,
            crash_timestamp: Some(now_timestamp() as i64),
        };
        self.cell.bus.publish(subject::DROPLET_EXITED, &msg).await;
        self.cell.resources.shrink(
            &rec.warden_handle,
            Amount {
                memory_mb: 0,
                disk_mb: u64::MAX,
            },
        );
        self.save_snapshot();
        if prev != InstanceState::Born {
            if let Err(e) = self.cell.garden.destroy(&rec.warden_handle).await {
                tracing::debug!(instance = %rec.instance_id, error = %e, "destroying crashed container");
            }
        }
    }

    /// Copy `/home/vcap/logs` to `crashes/<instance_id>/logs`.
    async fn keep_crash_logs(&self, rec: &Record) {
        let dir = self.cell.config.crashes_dir().join(&rec.instance_id);
        let result = async {
            let mut stream = self
                .cell
                .garden
                // As vcap: the app may have made `logs` a symlink to `/`; gardend packs only
                // what that user can read, so nothing beyond the app's own reach is copied out.
                .stream_out(&rec.warden_handle, "vcap", &format!("{HOME}/logs"))
                .await
                .map_err(|e| e.to_string())?;
            let mut tar = Vec::new();
            (&mut stream)
                .take(MAX_CRASH_LOGS)
                .read_to_end(&mut tar)
                .await
                .map_err(|e| e.to_string())?;
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::create_dir_all(&dir)?;
                let mut archive = tar::Archive::new(tar.as_slice());
                archive.set_preserve_permissions(false);
                archive.set_overwrite(true);
                archive.unpack(&dir)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(instance = %rec.instance_id, error = %e, "could not keep the crash logs");
            let _ = std::fs::create_dir_all(&dir);
        }
    }

    /// Stop (spec §6 step 6): STOPPING, hooks around Garden's stop, destroy, STOPPED.
    pub(super) async fn stop(self: &Arc<Self>, inst: &Arc<Instance>) {
        let prev = inst.state();
        if !self.transition(
            inst,
            &[
                InstanceState::Born,
                InstanceState::Starting,
                InstanceState::Running,
                InstanceState::Evacuating,
                InstanceState::Resuming,
            ],
            InstanceState::Stopping,
        ) {
            if inst.state() == InstanceState::Stopping {
                let _ = inst.stopped.subscribe().wait_for(|done| *done).await;
            }
            return;
        }
        inst.cancel.cancel();
        let rec = inst.record();
        tracing::info!(instance = %rec.instance_id, app = %rec.start_message.droplet, "Stopping app instance (index {}) with guid {}", rec.start_message.index, rec.start_message.droplet);
        if matches!(prev, InstanceState::Running | InstanceState::Evacuating) {
            self.route(&rec, None, false).await;
        }
        self.save_snapshot();
        let running = matches!(
            prev,
            InstanceState::Running | InstanceState::Evacuating | InstanceState::Resuming
        );
        if running {
            self.run_hook(
                &rec,
                self.cell.config.hooks.before_stop.as_deref(),
                "before_stop",
            )
            .await;
        }
        if prev != InstanceState::Born {
            if let Err(e) = self.cell.garden.stop(&rec.warden_handle, false).await {
                tracing::debug!(instance = %rec.instance_id, error = %e, "garden stop");
            }
            if running {
                self.run_hook(
                    &rec,
                    self.cell.config.hooks.after_stop.as_deref(),
                    "after_stop",
                )
                .await;
            }
            if let Err(e) = self.cell.garden.destroy(&rec.warden_handle).await {
                tracing::debug!(instance = %rec.instance_id, error = %e, "garden destroy");
            }
        }
        self.transition(inst, &[InstanceState::Stopping], InstanceState::Stopped);
        inst.stopped.send_replace(true);
        self.remove(&rec.warden_handle);
        self.cell.resources.release(&rec.warden_handle);
        self.save_snapshot();
        tracing::info!(instance = %rec.instance_id, app = %rec.start_message.droplet, "Stopped app instance (index {}) with guid {}", rec.start_message.index, rec.start_message.droplet);
    }

    /// Run a configured hook (host file) in the container as vcap; failures are logged only.
    async fn run_hook(&self, rec: &Record, path: Option<&std::path::Path>, name: &str) {
        let Some(path) = path else {
            return;
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(instance = %rec.instance_id, hook = name, path = %path.display(), error = %e, "hook file not readable");
                return;
            }
        };
        let ctx = env_context(rec, &self.cell.config.local_ip);
        let action = Action::Run(RunAction {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), script::hook_script(&ctx, &text)],
            dir: HOME.into(),
            user: "vcap".into(),
            log_source: format!("HOOK:{name}"),
            ..Default::default()
        });
        if let Err(e) = self
            .cell
            .executor
            .perform_in(
                &rec.warden_handle,
                &action,
                &log_config(rec),
                executor::CancellationToken::new(),
            )
            .await
        {
            tracing::warn!(instance = %rec.instance_id, hook = name, error = %e, "hook failed");
        }
    }

    async fn sample_cpu(&self, inst: &Instance, rec: &Record) {
        if let Ok(m) = self.cell.garden.metrics(&rec.warden_handle).await {
            let now = now_timestamp();
            let mut s = inst.cpu_sample.lock().unwrap();
            let rate = match *s {
                Some((t, _, rate)) if now - t < 0.05 => rate,
                Some((t, ns, _)) => m.cpu_stat.usage.saturating_sub(ns) as f64 / 1e9 / (now - t),
                None => 0.0,
            };
            *s = Some((now, m.cpu_stat.usage, rate));
        }
    }

    /// `stats` of `dea.find.droplet` (spec §3.10) from Garden's metrics.
    pub(super) async fn stats(&self, inst: &Instance, rec: &Record) -> Stats {
        let m = &rec.start_message;
        let metrics = self.cell.garden.metrics(&rec.warden_handle).await.ok();
        self.sample_cpu(inst, rec).await;
        let cpu = inst.cpu_sample.lock().unwrap().map(|s| s.2).unwrap_or(0.0);
        let (mem, disk) = match &metrics {
            Some(x) => {
                let s = &x.memory_stat;
                let (rss, cache, inactive) = if s.total_rss + s.total_cache > 0 {
                    (s.total_rss, s.total_cache, s.total_inactive_file)
                } else {
                    (s.rss, s.cache, s.inactive_file)
                };
                (
                    (rss + cache).saturating_sub(inactive),
                    x.disk_stat.total_bytes_used,
                )
            }
            None => (0, 0),
        };
        let running_since = rec
            .timestamps
            .get("state_running_timestamp")
            .copied()
            .unwrap_or(rec.state_timestamp);
        Stats {
            name: m.name.clone(),
            uris: m.uris.clone(),
            host: self.cell.config.local_ip.clone(),
            port: rec.instance_host_port,
            uptime: (now_timestamp() - running_since).max(0.0) as u64,
            mem_quota: m.limits.mem << 20,
            disk_quota: m.limits.disk << 20,
            fds_quota: m.limits.fds,
            usage: Usage {
                time: script::format_time(now_timestamp()),
                cpu,
                mem,
                disk,
            },
        }
    }

    /// Load the snapshot of a previous run (spec §4): RUNNING instances come back as RESUMING
    /// and re-attach to their processes; saved STARTING ones are CRASHED; containers of this
    /// agent that no instance owns are destroyed.
    pub async fn recover(self: &Arc<Self>) {
        let records = self.load_snapshot();
        let mut keep = Vec::new();
        for mut rec in records {
            let saved = rec.state;
            let amount = rec.amount();
            match saved {
                InstanceState::Crashed => {
                    let _ = self.cell.resources.reserve(
                        &rec.warden_handle,
                        Amount {
                            memory_mb: 0,
                            disk_mb: amount.disk_mb,
                        },
                    );
                    self.insert(super::Instance::new(rec));
                }
                InstanceState::Running
                | InstanceState::Evacuating
                | InstanceState::Stopping
                | InstanceState::Resuming => {
                    rec.state = InstanceState::Resuming;
                    let now = now_timestamp();
                    rec.state_timestamp = now;
                    rec.timestamps
                        .insert(super::timestamp_key(InstanceState::Resuming), now);
                    keep.push(rec.warden_handle.clone());
                    tracing::info!(instance = %rec.instance_id, app = %rec.start_message.droplet, state = "RESUMING", saved = saved.as_str(), "instance state");
                    if let Err(e) = self.cell.resources.reserve(&rec.warden_handle, amount) {
                        tracing::warn!(instance = %rec.instance_id, error = %e, "resumed instance exceeds capacity");
                    }
                    let inst = super::Instance::new(rec);
                    self.insert(inst.clone());
                    let me = self.clone();
                    tokio::spawn(async move { me.resume(inst, saved).await });
                }
                _ => {
                    // Saved while starting: the start cannot be resumed.
                    rec.state = InstanceState::Starting;
                    keep.push(rec.warden_handle.clone());
                    let _ = self.cell.resources.reserve(&rec.warden_handle, amount);
                    let inst = super::Instance::new(rec);
                    self.insert(inst.clone());
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.crash(&inst, -1, "failed to start".into()).await;
                    });
                }
            }
        }
        // Containers of the previous run that nothing resumes: instances that never made it
        // into the snapshot, and tasks (which do not survive a restart).
        self.destroy_orphans(&keep, false).await;
        self.save_snapshot();
    }

    /// A container's info; gardend being unreachable (as opposed to answering that the
    /// container does not exist) is retried for a minute, so a gardend restarting with the
    /// agent does not turn every instance into a crash.
    async fn container_info(&self, handle: &str) -> Result<garden_api::ContainerInfo, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.cell.garden.info(handle).await {
                Ok(i) => return Ok(i),
                Err(e) if e.garden().is_some() || tokio::time::Instant::now() >= deadline => {
                    return Err(e.to_string())
                }
                Err(e) => {
                    tracing::warn!(handle, error = %e, "gardend unreachable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// RESUMING: find the container, re-attach to the process, then RUNNING (or on to stop).
    async fn resume(self: Arc<Self>, inst: Arc<Instance>, saved: InstanceState) {
        let rec = inst.record();
        let info = self.container_info(&rec.warden_handle).await;
        let attached = match (&rec.warden_job_id, info) {
            (Some(job), Ok(_)) => self
                .cell
                .garden
                .attach(&rec.warden_handle, job, ProcessIo::default())
                .await
                .map_err(|e| e.to_string()),
            (None, _) => Err("no process recorded".into()),
            (_, Err(e)) => Err(format!("container vanished: {e}")),
        };
        let process = match attached {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(instance = %rec.instance_id, error = %e, "cannot resume instance");
                self.crash(&inst, -1, "container vanished".into()).await;
                return;
            }
        };
        tracing::info!(instance = %rec.instance_id, "re-attached to the app process");
        let (tx, mut exited) = tokio::sync::oneshot::channel();
        tokio::spawn(wait_for(process, tx));
        // A process that ended while no agent watched reports its status at once: a crash,
        // without a moment of RUNNING (and a route) first.
        if let Ok(status) = tokio::time::timeout(Duration::from_millis(300), &mut exited).await {
            if saved == InstanceState::Stopping {
                self.stop(&inst).await;
            } else {
                self.exited(&inst, status.unwrap_or(None)).await;
            }
            return;
        }
        if saved == InstanceState::Stopping {
            self.stop(&inst).await;
            return;
        }
        let to = if saved == InstanceState::Evacuating {
            InstanceState::Evacuating
        } else {
            InstanceState::Running
        };
        if self.transition(&inst, &[InstanceState::Resuming], to) {
            self.on_running(&inst, false).await;
        }
        let status = exited.await.unwrap_or(None);
        self.exited(&inst, status).await;
    }
}

async fn wait_for(
    mut process: garden_client::Process,
    tx: tokio::sync::oneshot::Sender<Option<i32>>,
) {
    let status = match process.wait().await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "lost the app process");
            None
        }
    };
    let _ = tx.send(status);
}

fn log_config(rec: &Record) -> LogConfig {
    LogConfig {
        guid: rec.start_message.droplet.clone(),
        index: rec.start_message.index as u32,
        source_name: "DEA".into(),
    }
}

fn env_context<'a>(rec: &'a Record, local_ip: &'a str) -> EnvContext<'a> {
    EnvContext {
        message: &rec.start_message,
        instance_id: &rec.instance_id,
        host_ip: local_ip,
        host_port: rec.instance_host_port,
        container_port: rec.instance_container_port,
        started_at: rec
            .timestamps
            .get("state_starting_timestamp")
            .copied()
            .unwrap_or(rec.state_timestamp),
    }
}
