//! One staging task from its container to its completion reply (spec §5).
//!
//! Setup: container (stack rootfs, staging limits, egress rules, no inbound port), admin
//! buildpacks copied in from the host cache, then in parallel the app package, the build
//! cache (failure ignored), a custom zip buildpack and the empty staging log → first reply.
//! Staging, bounded by `staging.max_staging_duration`: the runner's build phase (detect,
//! compile, release), `staging_info.yml` written by the agent, the runner's package phase.
//! Then the droplet is copied out, hashed, put into the droplet cache and uploaded, the build
//! cache uploaded, the container destroyed, the reservation released, and the completion
//! reply sent; a start message then starts the app here with the new droplet.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use executor::action::{
    Action, DownloadAction, EnvironmentVariable, ParallelAction, RunAction, TryAction,
};
use executor::log::LogConfig;
use garden_api::{ContainerSpec, ImageRef, Limits};
use sha1::Digest;
use tokio::io::AsyncReadExt;

use super::{info, reservation_owner, upload, Phase, StagingTask, Stagings, KIND, LOG_PATH};
use super::{RUNNER, TASK_PROPERTY};
use crate::config::Stack;
use crate::instance::script;
use crate::protocol::{subject, AdminBuildpack, StagingErrorInfo, StagingReply};

/// Log source of everything the staging prints (the DEA's `STG`).
pub const SOURCE: &str = "STG";
/// Largest small file read back from the container (results, staging_info.yml, Procfile).
const MAX_SMALL_FILE: u64 = 1 << 20;

/// Why a staging failed: the completion reply's `error` and `error_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub error: String,
    pub info: Option<StagingErrorInfo>,
}

impl Failure {
    fn new(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            info: None,
        }
    }
}

/// A successful staging.
#[derive(Debug, Clone)]
pub(super) struct Success {
    detected_buildpack: String,
    buildpack_key: Option<String>,
    droplet_sha1: String,
    start_command: Option<String>,
    procfile: BTreeMap<String, String>,
}

/// Which buildpack stages the app.
#[derive(Debug, Clone)]
enum Choice {
    /// Detect among the admin buildpacks, in message order.
    Detect,
    /// `buildpack_key`: that admin buildpack, no detection.
    Admin(AdminBuildpack),
    /// `properties.buildpack`: a zip URL.
    Zip(String),
    /// `properties.buildpack`: a git URL (`#ref` allowed), cloned by the runner.
    Git(String),
}

/// Whether a custom buildpack URL names a git repository rather than a zip.
fn is_git(url: &str) -> bool {
    let base = url.split('#').next().unwrap_or(url);
    base.starts_with("git://")
        || base.starts_with("git@")
        || base.starts_with("ssh://")
        || base.ends_with(".git")
        || base.ends_with(".git/")
}

impl Choice {
    fn of(r: &crate::protocol::StagingRequest) -> Result<Choice, Failure> {
        let p = &r.properties;
        let custom = p
            .buildpack
            .clone()
            .or_else(|| p.buildpack_git_url.clone())
            .filter(|u| !u.trim().is_empty());
        if let Some(url) = custom {
            return Ok(if is_git(&url) {
                Choice::Git(url)
            } else {
                match url::Url::parse(&url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => Choice::Zip(url),
                    _ => {
                        return Err(Failure::new(format!(
                            "Error staging: buildpack {url:?} is neither a zip URL nor a git URL"
                        )))
                    }
                }
            });
        }
        if let Some(key) = p.buildpack_key.as_ref().filter(|k| !k.is_empty()) {
            return r
                .admin_buildpacks
                .iter()
                .find(|b| &b.key == key)
                .cloned()
                .map(Choice::Admin)
                .ok_or_else(|| {
                    Failure::new(format!(
                        "Error staging: buildpack_key {key} is not one of the admin buildpacks"
                    ))
                });
        }
        Ok(Choice::Detect)
    }

    /// The admin buildpacks copied into the container, in order.
    fn admin(&self, r: &crate::protocol::StagingRequest) -> Vec<AdminBuildpack> {
        match self {
            Choice::Detect => r.admin_buildpacks.clone(),
            Choice::Admin(b) => vec![b.clone()],
            _ => Vec::new(),
        }
    }
}

/// `Error downloading: HTTP status: 404` out of an executor download failure.
fn download_error(e: &str) -> String {
    if let Some(i) = e.find("Status code ") {
        let code: String = e[i + 12..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        if !code.is_empty() {
            return format!("Error downloading: HTTP status: {code}");
        }
    }
    format!("Error downloading: {e}")
}

/// `Script exited with status N` out of a run step failure.
fn script_error(e: &str) -> String {
    match e.rsplit_once("Exited with status ") {
        Some((_, rest)) => {
            let code: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '-')
                .collect();
            format!("Script exited with status {code}")
        }
        None => format!("Error staging: {e}"),
    }
}

fn var(name: &str, value: impl Into<String>) -> EnvironmentVariable {
    EnvironmentVariable {
        name: name.into(),
        value: value.into(),
    }
}

impl Stagings {
    /// Stage, clean up, reply, maybe start the app.
    pub(super) async fn run(self: Arc<Self>, task: Arc<StagingTask>) {
        let id = task.request.task_id.clone();
        let mut logs = self.cell.logs.route(&task.handle);
        let log_task = {
            let id = id.clone();
            tokio::spawn(async move {
                while let Some(m) = logs.recv().await {
                    tracing::info!(task_id = %id, source = %m.source_type, "{}", m.text);
                }
            })
        };
        let workspace = self.cell.config.staging_dir().join(&id);
        let setup_replied = AtomicBool::new(false);
        let outcome = tokio::select! {
            r = self.stage(&task, &workspace, &setup_replied) => r,
            _ = task.stop.cancelled() => Err(Failure::new("Error staging: task stopped")),
        };

        // Cleanup always: container, workspace, reservation, registry.
        let _ = task.create_settled.subscribe().wait_for(|s| *s).await;
        if let Err(e) = self.cell.garden.destroy(&task.handle).await {
            if task.container.load(Ordering::SeqCst) {
                tracing::warn!(task_id = %id, error = %e, "destroying the staging container failed");
            }
        }
        task.container.store(false, Ordering::SeqCst);
        self.cell.logs.unroute(&task.handle);
        let _ = log_task.await;
        let _ = tokio::fs::remove_dir_all(&workspace).await;
        self.tasks.lock().unwrap().remove(&id);
        self.cell.resources.release(&reservation_owner(&id));
        self.save_snapshot();

        let r = &task.request;
        crate::metrics::metrics().staging_finished(outcome.is_ok());
        let msg = match &outcome {
            Ok(s) => {
                tracing::info!(task_id = %id, app = %r.app_id, buildpack = %s.detected_buildpack, sha1 = %s.droplet_sha1, "staging completed");
                StagingReply {
                    task_id: id.clone(),
                    app_id: Some(r.app_id.clone()),
                    detected_buildpack: Some(s.detected_buildpack.clone()),
                    buildpack_key: s.buildpack_key.clone(),
                    droplet_sha1: Some(s.droplet_sha1.clone()),
                    detected_start_command: Some(s.start_command.clone().unwrap_or_default()),
                    procfile: Some(s.procfile.clone()),
                    error: None,
                    error_info: None,
                    ..Default::default()
                }
            }
            Err(f) => {
                tracing::warn!(task_id = %id, app = %r.app_id, error = %f.error, error_info = ?f.info, "staging failed");
                StagingReply {
                    task_id: id.clone(),
                    app_id: Some(r.app_id.clone()),
                    error: Some(f.error.clone()),
                    error_info: f.info.clone(),
                    ..Default::default()
                }
            }
        };
        if !setup_replied.load(Ordering::SeqCst) {
            // A failure before the setup reply: the setup reply carries it too, so a
            // requester waiting for either reply learns of it.
            let first = StagingReply {
                task_id: id.clone(),
                task_streaming_log_url: Some(self.log_url(&id)),
                error: msg.error.clone(),
                ..Default::default()
            };
            self.reply(task.reply_to.as_deref(), &first).await;
        }
        self.reply(task.reply_to.as_deref(), &msg).await;
        self.cell.bus.flush().await;

        if let (Ok(s), Some(start)) = (&outcome, &r.start_message) {
            if !self.closing.load(Ordering::SeqCst) {
                let mut start = start.clone();
                start.sha1 = Some(s.droplet_sha1.clone());
                if start.executable_uri.as_deref().is_none_or(str::is_empty) {
                    // The droplet is in the cache under its SHA1: this URL is never fetched
                    // unless the cache lost it.
                    start.executable_uri = Some(r.upload_uri.clone());
                }
                tracing::info!(task_id = %id, app = %r.app_id, "starting the staged app here");
                self.cell
                    .bus
                    .publish(subject::start(&self.cell.id), &start)
                    .await;
            }
        }
        self.active.send_modify(|n| *n -= 1);
    }

    fn log_url(&self, task_id: &str) -> String {
        self.cell
            .file_url(&format!("/staging_tasks/{task_id}/file_path"), LOG_PATH)
    }

    fn log_config(&self, task: &StagingTask) -> LogConfig {
        LogConfig {
            guid: task.handle.clone(),
            index: 0,
            source_name: SOURCE.into(),
        }
    }

    async fn perform(&self, task: &StagingTask, action: Action) -> Result<(), String> {
        self.cell
            .executor
            .perform_in(
                &task.handle,
                &action,
                &self.log_config(task),
                task.stop.child_token(),
            )
            .await
            .map_err(|e| e.to_string())
    }

    async fn stage(
        &self,
        task: &StagingTask,
        workspace: &Path,
        setup_replied: &AtomicBool,
    ) -> Result<Success, Failure> {
        let r = &task.request;
        let config = &self.cell.config;
        let stack = config.stack(&r.stack).ok_or_else(|| {
            Failure::new(format!("Error staging: Stack {} does not exist", r.stack))
        })?;
        let choice = Choice::of(r)?;
        tokio::fs::create_dir_all(workspace)
            .await
            .map_err(|e| Failure::new(format!("Error staging: workspace: {e}")))?;

        let admin = choice.admin(r);
        let (created, synced) = tokio::join!(
            self.create_container(task, stack),
            self.buildpacks.sync(&r.admin_buildpacks, &admin)
        );
        created?;
        let in_use = synced.map_err(Failure::new)?;
        for (i, bp) in admin.iter().enumerate() {
            self.copy_buildpack(task, bp, &format!("/tmp/buildpacks/{i:03}"))
                .await?;
        }
        drop(in_use);
        self.setup_downloads(task, &choice).await?;

        let first = StagingReply {
            task_id: r.task_id.clone(),
            task_streaming_log_url: Some(self.log_url(&r.task_id)),
            error: None,
            ..Default::default()
        };
        self.reply(task.reply_to.as_deref(), &first).await;
        setup_replied.store(true, Ordering::SeqCst);
        task.set_phase(Phase::Staging);
        self.save_snapshot();

        let limit = Duration::from_secs(config.staging.max_staging_duration);
        let staged = tokio::time::timeout(limit, self.build_and_package(task, &choice))
            .await
            .map_err(|_| Failure::new("Staging in container timed out"))??;

        task.set_phase(Phase::Uploading);
        self.save_snapshot();
        let droplet = workspace.join("droplet.tgz");
        let sha1 = self
            .copy_out(task, "/tmp/droplet.tgz", &droplet, true)
            .await
            .map_err(|e| Failure::new(format!("Error staging: copying the droplet out: {e}")))?
            .unwrap_or_default();
        if let Err(e) = self
            .cell
            .executor
            .cache()
            .insert(&format!("droplet-{sha1}"), &droplet, "droplet.tgz")
            .await
        {
            tracing::warn!(task_id = %r.task_id, error = %e, "could not put the droplet into the droplet cache");
        }
        upload::upload(&r.upload_uri, &droplet)
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        if let Some(uri) = &r.buildpack_cache_upload_uri {
            let cache = workspace.join("buildpack_cache.tgz");
            self.copy_out(task, "/tmp/buildpack_cache.tgz", &cache, false)
                .await
                .map_err(|e| {
                    Failure::new(format!("Error staging: copying the build cache out: {e}"))
                })?;
            upload::upload(uri, &cache)
                .await
                .map_err(|e| Failure::new(e.to_string()))?;
        }
        Ok(Success {
            detected_buildpack: staged.detected_buildpack,
            buildpack_key: match &choice {
                Choice::Admin(b) => Some(b.key.clone()),
                Choice::Detect => staged
                    .buildpack_path
                    .strip_prefix("/tmp/buildpacks/")
                    .and_then(|rest| rest.split('/').next())
                    .and_then(|n| n.parse::<usize>().ok())
                    .and_then(|i| admin.get(i))
                    .map(|b| b.key.clone()),
                _ => None,
            },
            droplet_sha1: sha1,
            start_command: staged.start_command,
            procfile: staged.effective_procfile,
        })
    }

    /// The staging container: stack rootfs, staging limits, egress rules, no inbound port.
    async fn create_container(&self, task: &StagingTask, stack: &Stack) -> Result<(), Failure> {
        let r = &task.request;
        let config = &self.cell.config;
        let egress = r
            .egress_network_rules
            .iter()
            .map(script::net_out_rule)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::new(format!("Error staging: invalid egress rule: {e}")))?;
        let mut limits = Limits::default();
        limits.memory_limits.limit_in_bytes = task.amount.memory_mb << 20;
        limits.disk_limits.byte_hard = task.amount.disk_mb << 20;
        limits.disk_limits.inode_hard = config.staging.disk_inode_limit;
        limits.cpu_limits.weight = config.staging.cpu_limit_shares;
        limits.pid_limits.max = config.instance.nproc_limit;
        let spec = ContainerSpec {
            handle: task.handle.clone(),
            image: ImageRef {
                uri: stack.package_path.clone(),
                ..Default::default()
            },
            limits,
            netout_rules: egress,
            properties: [
                (
                    crate::instance::OWNER_PROPERTY.to_string(),
                    config.base_dir.display().to_string(),
                ),
                (crate::instance::KIND_PROPERTY.to_string(), KIND.to_string()),
                (TASK_PROPERTY.to_string(), r.task_id.clone()),
                ("agent:app".to_string(), r.app_id.clone()),
            ]
            .into(),
            ..Default::default()
        };
        // The create runs to its end even if the staging is stopped meanwhile; cleanup waits
        // for it (`create_settled`) before destroying.
        task.create_settled.send_replace(false);
        let garden = self.cell.garden.clone();
        let settled = task.create_settled.clone();
        let created = tokio::spawn(async move {
            let r = garden.create(&spec).await;
            settled.send_replace(true);
            r
        });
        task.container.store(true, Ordering::SeqCst);
        match created.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Failure::new(format!(
                "Error staging: failed to create the container: {e}"
            ))),
            Err(e) => Err(Failure::new(format!(
                "Error staging: failed to create the container: {e}"
            ))),
        }
    }

    /// Copy an admin buildpack from the host cache to `dest` in the container.
    async fn copy_buildpack(
        &self,
        task: &StagingTask,
        bp: &AdminBuildpack,
        dest: &str,
    ) -> Result<(), Failure> {
        let dir = self.buildpacks.path(&bp.key);
        let tar = tokio::task::spawn_blocking(move || super::buildpacks::tar_dir(&dir))
            .await
            .map_err(|e| Failure::new(e.to_string()))?
            .map_err(|e| Failure::new(format!("Error staging: buildpack {}: {e}", bp.key)))?;
        let f = tokio::fs::File::from_std(
            tar.reopen()
                .map_err(|e| Failure::new(format!("Error staging: {e}")))?,
        );
        self.cell
            .garden
            .stream_in(&task.handle, "vcap", dest, f)
            .await
            .map_err(|e| {
                Failure::new(format!(
                    "Error staging: copying buildpack {} into the container: {e}",
                    bp.key
                ))
            })
    }

    /// App package, build cache (failure ignored), custom zip buildpack and the empty log,
    /// in parallel; a git buildpack needs git in the stack.
    async fn setup_downloads(&self, task: &StagingTask, choice: &Choice) -> Result<(), Failure> {
        let r = &task.request;
        let download = |from: &str, to: &str, artifact: &str| {
            Action::Download(DownloadAction {
                from: from.into(),
                to: to.into(),
                user: "vcap".into(),
                artifact: artifact.into(),
                ..Default::default()
            })
        };
        let shell = |script: &str| {
            Action::Run(RunAction {
                path: "/bin/sh".into(),
                args: vec!["-c".into(), script.into()],
                user: "vcap".into(),
                log_source: SOURCE.into(),
                suppress_log_output: true,
                ..Default::default()
            })
        };
        if let Choice::Git(url) = choice {
            if self.perform(task, shell("command -v git")).await.is_err() {
                return Err(Failure::new(format!(
                    "Error staging: the buildpack {url} is a git URL, and stack {} has no git to clone it",
                    r.stack
                )));
            }
        }
        let log_dir = LOG_PATH.rsplit_once('/').map(|(d, _)| d).unwrap_or("/tmp");
        let touch = shell(&format!(
            "mkdir -p {log_dir} /tmp/unstaged /tmp/cache && touch {LOG_PATH}"
        ));
        // The log first, so the URL of the setup reply always finds it.
        self.perform(task, touch)
            .await
            .map_err(|e| Failure::new(format!("Error staging: {e}")))?;
        let mut fetches = vec![download(&r.download_uri, "/tmp/unstaged", "app package")];
        if let Choice::Zip(url) = choice {
            fetches.push(download(url, "/tmp/buildpacks/custom", "buildpack"));
        }
        let app = Action::Parallel(ParallelAction {
            actions: fetches,
            log_source: String::new(),
        });
        let mut all = vec![app];
        if let Some(uri) = &r.buildpack_cache_download_uri {
            all.push(Action::Try(TryAction {
                action: Box::new(download(uri, "/tmp/cache", "build cache")),
                log_source: String::new(),
            }));
        }
        self.perform(
            task,
            Action::Parallel(ParallelAction {
                actions: all,
                log_source: String::new(),
            }),
        )
        .await
        .map_err(|e| Failure::new(download_error(&e)))
    }

    /// The environment of the runner (spec §5): system variables, the configured staging
    /// environment, then the user's.
    fn env(&self, task: &StagingTask) -> Vec<EnvironmentVariable> {
        let r = &task.request;
        let c = &self.cell.config;
        let mut env = vec![
            var("HOME", "/home/vcap"),
            var("TMPDIR", "/tmp"),
            var("MEMORY_LIMIT", format!("{}m", task.amount.memory_mb)),
            var(
                "STAGING_TIMEOUT",
                c.staging.max_staging_duration.to_string(),
            ),
            var("CF_STACK", r.stack.clone()),
            var(
                "VCAP_SERVICES",
                script::vcap_services(&r.properties.services).to_string(),
            ),
        ];
        if let Some(m) = &r.start_message {
            let mut app = match &m.vcap_application {
                serde_json::Value::Object(o) => serde_json::Value::Object(o.clone()),
                _ => serde_json::json!({}),
            };
            for (k, v) in [
                ("application_id", serde_json::json!(m.droplet)),
                ("application_name", serde_json::json!(m.name)),
                ("name", serde_json::json!(m.name)),
                ("application_uris", serde_json::json!(m.uris)),
                ("uris", serde_json::json!(m.uris)),
                ("application_version", serde_json::json!(m.version)),
                ("version", serde_json::json!(m.version)),
                (
                    "limits",
                    serde_json::json!({"mem": m.limits.mem, "disk": m.limits.disk, "fds": m.limits.fds}),
                ),
            ] {
                app[k] = v;
            }
            env.push(var("VCAP_APPLICATION", app.to_string()));
        }
        if let Some(db) = script::database_url(&r.properties.services) {
            env.push(var("DATABASE_URL", db));
        }
        env.extend(c.staging.environment.iter().map(|(k, v)| var(k, v.clone())));
        env.extend(
            r.properties
                .environment
                .iter()
                .filter_map(|e| e.split_once('='))
                .map(|(k, v)| var(k, v)),
        );
        env
    }

    fn runner(&self, task: &StagingTask, args: &[&str]) -> Action {
        let mut a = vec!["-c".to_string(), RUNNER.to_string(), "runner".to_string()];
        a.extend(args.iter().map(|s| s.to_string()));
        Action::Run(RunAction {
            path: "/bin/sh".into(),
            args: a,
            dir: "/tmp".into(),
            env: self.env(task),
            user: "vcap".into(),
            log_source: SOURCE.into(),
            ..Default::default()
        })
    }

    /// The runner's build phase, `staging_info.yml`, the runner's package phase.
    async fn build_and_package(
        &self,
        task: &StagingTask,
        choice: &Choice,
    ) -> Result<info::StagingInfo, Failure> {
        let args: Vec<&str> = match choice {
            Choice::Detect => vec!["build", "detect", ""],
            Choice::Admin(b) => vec!["build", "select", &b.key],
            Choice::Zip(_) => vec!["build", "select", "custom"],
            Choice::Git(url) => vec!["build", "git", url],
        };
        if let Err(e) = self.perform(task, self.runner(task, &args)).await {
            let info = self
                .read_file(task, "/tmp/staged/staging_info.yml")
                .await
                .and_then(|y| serde_yaml::from_str::<info::StagingErrorFile>(&y).ok())
                .map(|f| StagingErrorInfo {
                    kind: f.staging_error.kind,
                    message: f.staging_error.message,
                });
            return Err(Failure {
                error: script_error(&e),
                info,
            });
        }
        let results = self.read_dir(task, "/tmp/result").await.map_err(|e| {
            Failure::new(format!("Error staging: reading the runner's results: {e}"))
        })?;
        let get = |name: &str| results.get(name).cloned().unwrap_or_default();
        let procfile = self.read_file(task, "/tmp/staged/app/Procfile").await;
        let meta_command = task
            .request
            .properties
            .meta
            .as_ref()
            .and_then(|m| m.command.clone());
        let staging_info = info::staging_info(
            get("buildpack_path").trim(),
            get("detected_buildpack").trim(),
            &get("release.yml"),
            procfile.as_deref(),
            meta_command.as_deref(),
        )
        .map_err(|e| Failure {
            error: format!("Error staging: {e}"),
            info: Some(StagingErrorInfo {
                kind: "BuildpackReleaseFailed".into(),
                message: e.clone(),
            }),
        })?;
        let yaml = serde_yaml::to_string(&staging_info)
            .map_err(|e| Failure::new(format!("Error staging: {e}")))?;
        self.write_file(task, "/tmp/staged", "staging_info.yml", yaml.as_bytes())
            .await
            .map_err(|e| Failure::new(format!("Error staging: writing staging_info.yml: {e}")))?;
        self.perform(task, self.runner(task, &["package"]))
            .await
            .map_err(|e| Failure::new(script_error(&e)))?;
        Ok(staging_info)
    }

    /// A small file of the container, or None.
    async fn read_file(&self, task: &StagingTask, path: &str) -> Option<String> {
        let mut files = self.read_dir(task, path).await.ok()?;
        let name = path.rsplit('/').next()?;
        files.remove(name)
    }

    /// The regular files of a path (a file or a directory, not recursive into names: keyed by
    /// file name), each at most [`MAX_SMALL_FILE`].
    async fn read_dir(
        &self,
        task: &StagingTask,
        path: &str,
    ) -> Result<HashMap<String, String>, String> {
        let mut stream = self
            .cell
            .garden
            .stream_out(&task.handle, "vcap", path)
            .await
            .map_err(|e| e.to_string())?;
        let mut tar = Vec::new();
        (&mut stream)
            .take(16 * MAX_SMALL_FILE)
            .read_to_end(&mut tar)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = HashMap::new();
        let mut archive = tar::Archive::new(tar.as_slice());
        for entry in archive.entries().map_err(|e| e.to_string())? {
            let mut entry = entry.map_err(|e| e.to_string())?;
            if entry.header().entry_type() != tar::EntryType::Regular
                || entry.header().size().unwrap_or(0) > MAX_SMALL_FILE
            {
                continue;
            }
            let name = entry
                .path()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_default();
            let mut text = String::new();
            if entry.read_to_string(&mut text).is_ok() {
                out.insert(name, text);
            }
        }
        Ok(out)
    }

    /// Write one file into a directory of the container as vcap.
    async fn write_file(
        &self,
        task: &StagingTask,
        dir: &str,
        name: &str,
        data: &[u8],
    ) -> Result<(), String> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data)
            .map_err(|e| e.to_string())?;
        let bytes = b.into_inner().map_err(|e| e.to_string())?;
        self.cell
            .garden
            .stream_in(&task.handle, "vcap", dir, std::io::Cursor::new(bytes))
            .await
            .map_err(|e| e.to_string())
    }

    /// Copy one file out of the container to `to` on the host; with `sha1`, its SHA1.
    async fn copy_out(
        &self,
        task: &StagingTask,
        from: &str,
        to: &Path,
        sha1: bool,
    ) -> Result<Option<String>, String> {
        let mut stream = self
            .cell
            .garden
            .stream_out(&task.handle, "vcap", from)
            .await
            .map_err(|e| e.to_string())?;
        let tar_path = PathBuf::from(format!("{}.tar", to.display()));
        let mut f = tokio::fs::File::create(&tar_path)
            .await
            .map_err(|e| e.to_string())?;
        tokio::io::copy(&mut stream, &mut f)
            .await
            .map_err(|e| e.to_string())?;
        drop(f);
        let to = to.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
            let f = std::fs::File::open(&tar_path).map_err(|e| e.to_string())?;
            let mut archive = tar::Archive::new(f);
            let mut entry = archive
                .entries()
                .map_err(|e| e.to_string())?
                .next()
                .ok_or("empty stream")?
                .map_err(|e| e.to_string())?;
            let mut out = std::fs::File::create(&to).map_err(|e| e.to_string())?;
            let mut hasher = sha1::Sha1::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = entry.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                if sha1 {
                    hasher.update(&buf[..n]);
                }
                std::io::Write::write_all(&mut out, &buf[..n]).map_err(|e| e.to_string())?;
            }
            let _ = std::fs::remove_file(&tar_path);
            Ok(sha1.then(|| hex::encode(hasher.finalize())))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_like_the_deas() {
        assert_eq!(
            download_error("Downloading app package failed: Download failed: Status code 404"),
            "Error downloading: HTTP status: 404"
        );
        assert_eq!(
            download_error("Downloading app package failed: connection refused"),
            "Error downloading: Downloading app package failed: connection refused"
        );
        assert_eq!(
            script_error("STG: Exited with status 1"),
            "Script exited with status 1"
        );
        assert!(is_git("https://github.com/x/bp.git#v1.2"));
        assert!(is_git("git://host/bp"));
        assert!(!is_git("https://host/bp.zip"));
    }
}
