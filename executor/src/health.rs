//! Health checks for long-running containers: declarative TCP/HTTP checks and the legacy
//! `monitor` action, each with a startup phase (retry until healthy or the start timeout
//! passes; then the container counts as ready) and a liveness phase (repeat every interval
//! until the first failure, which crashes the instance).
//!
//! Checks run *inside* the container as Garden processes (busybox `nc` for TCP, `wget` for
//! HTTP) against 127.0.0.1, because the app shares the container's network namespace and the
//! container's IP is not reachable from the host yet. Messages follow Diego's healthcheck.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use garden_api::ProcessSpec;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;

use crate::action::Action;
use crate::garden::Io;
use crate::log::{LogConfig, LogStreamer, MemorySink};
use crate::step::{
    self, go_duration, CancellationToken, Ready, Step, StepEnv, StepError, StepResult,
};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpCheck {
    pub port: u32,
    #[serde(default)]
    pub connect_timeout_ms: u64,
    #[serde(default)]
    pub interval_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCheck {
    pub port: u32,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub request_timeout_ms: u64,
    #[serde(default)]
    pub interval_ms: u64,
}

/// Exactly one of the two is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_check: Option<TcpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_check: Option<HttpCheck>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckDefinition {
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Parsed for compatibility; readiness (routing) is not implemented and they are ignored.
    #[serde(default)]
    pub readiness_checks: Vec<Check>,
    #[serde(default)]
    pub log_source: String,
}

/// Cell-wide health settings.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Time between startup attempts (Diego's unhealthy monitoring interval).
    pub startup_interval: Duration,
    /// Time between liveness attempts (Diego's healthy monitoring interval).
    pub liveness_interval: Duration,
    /// Check timeout when a check sets none.
    pub default_timeout: Duration,
    /// User the check processes run as.
    pub user: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            startup_interval: Duration::from_millis(500),
            liveness_interval: Duration::from_secs(30),
            default_timeout: Duration::from_secs(1),
            user: "root".into(),
        }
    }
}

/// One thing to probe.
#[derive(Clone)]
pub enum Probe {
    Tcp {
        port: u32,
        timeout: Duration,
    },
    Http {
        port: u32,
        path: String,
        timeout: Duration,
    },
    /// A legacy monitor action; its error text is the failure message.
    Action(Box<Action>),
}

impl Probe {
    /// The probes of a check definition; invalid checks are skipped (and logged).
    pub fn from_definition(def: &CheckDefinition, config: &HealthConfig) -> Vec<Probe> {
        let ms = |v: u64| {
            if v == 0 {
                config.default_timeout
            } else {
                Duration::from_millis(v)
            }
        };
        def.checks
            .iter()
            .filter_map(|c| match (&c.tcp_check, &c.http_check) {
                (Some(t), None) if (1..=65535).contains(&t.port) => Some(Probe::Tcp {
                    port: t.port,
                    timeout: ms(t.connect_timeout_ms),
                }),
                (None, Some(h)) if (1..=65535).contains(&h.port) => Some(Probe::Http {
                    port: h.port,
                    path: if h.path.is_empty() {
                        "/".into()
                    } else {
                        h.path.clone()
                    },
                    timeout: ms(h.request_timeout_ms),
                }),
                _ => {
                    tracing::warn!(check = ?c, "skipping invalid health check");
                    None
                }
            })
            .collect()
    }
}

/// Collects a process's output in memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl AsyncWrite for Capture {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut v = self.0.lock().unwrap();
        if v.len() < 64 * 1024 {
            v.extend_from_slice(buf);
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .trim()
            .to_string()
    }
}

/// Run `sh -c script` in the container; exit status plus combined output.
async fn run_captured(
    env: &StepEnv,
    user: &str,
    script: String,
    cancel: &CancellationToken,
) -> Result<(i32, String), String> {
    let out = Capture::default();
    let spec = ProcessSpec {
        path: "/bin/sh".into(),
        args: vec!["-c".into(), script],
        user: user.to_string(),
        ..Default::default()
    };
    let io = Io {
        stdout: Some(Box::new(out.clone())),
        stderr: Some(Box::new(out.clone())),
    };
    let mut p = env
        .garden
        .run(&env.handle, &spec, io)
        .await
        .map_err(|e| format!("Failed to invoke process: {e}"))?;
    let signaller = p.signaller();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = tx.send(p.wait().await);
    });
    tokio::pin!(rx);
    let status = tokio::select! {
        r = &mut rx => r,
        _ = cancel.cancelled() => {
            let _ = signaller.signal(garden_api::Signal::Kill).await;
            return Err("cancelled".into());
        }
    };
    match status {
        Ok(Ok(s)) => Ok((s, out.text())),
        Ok(Err(e)) => Err(format!("Failed to invoke process: {e}")),
        Err(_) => Err("Failed to invoke process: wait ended".into()),
    }
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// One attempt of one probe: `Ok` = healthy, `Err(message)` = unhealthy.
async fn attempt(
    probe: &Probe,
    env: &Arc<StepEnv>,
    user: &str,
    cancel: &CancellationToken,
) -> Result<(), String> {
    match probe {
        Probe::Tcp { port, timeout } => {
            let script = format!(
                "nc -w {} 127.0.0.1 {port} -e true </dev/null",
                secs_ceil(*timeout)
            );
            match tokio::time::timeout(*timeout + Duration::from_secs(2), run_captured(env, user, script, cancel)).await {
                Ok(Ok((0, _))) => Ok(()),
                Ok(Ok((_, out))) => {
                    let why = if out.is_empty() { "connection refused".to_string() } else { out };
                    Err(format!("failed to make TCP connection to 127.0.0.1:{port}: {why}"))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!(
                    "failed to make TCP connection to 127.0.0.1:{port}: timed out after {:.2} seconds",
                    timeout.as_secs_f64()
                )),
            }
        }
        Probe::Http {
            port,
            path,
            timeout,
        } => {
            let quoted = path.replace('\'', "'\\''");
            let script = format!(
                // busybox wget has no -T; `timeout` bounds the whole request instead.
                "timeout {} wget -q -S -O /dev/null -U diego-healthcheck --header 'X-Forwarded-Proto: https' 'http://127.0.0.1:{port}{quoted}' 2>&1",
                secs_ceil(*timeout)
            );
            let started = Instant::now();
            let prefix = format!("failed to make HTTP request to '{path}' on port {port}");
            match tokio::time::timeout(
                *timeout + Duration::from_secs(2),
                run_captured(env, user, script, cancel),
            )
            .await
            {
                Ok(Ok((code, out))) => {
                    // With -S busybox prints every response's status line; the last one counts.
                    let status = out
                        .lines()
                        .filter_map(|l| l.trim().strip_prefix("HTTP/"))
                        .filter_map(|l| l.split_whitespace().nth(1))
                        .filter_map(|s| s.parse::<u16>().ok())
                        .next_back();
                    match status {
                        Some(200) if code == 0 => Ok(()),
                        Some(s) => Err(format!(
                            "{prefix}: received status code {s} in {}ms",
                            started.elapsed().as_millis()
                        )),
                        None if out.contains("timed out") => Err(format!(
                            "{prefix}: timed out after {:.2} seconds",
                            timeout.as_secs_f64()
                        )),
                        None => Err(format!("{prefix}: connection refused")),
                    }
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!(
                    "{prefix}: timed out after {:.2} seconds",
                    timeout.as_secs_f64()
                )),
            }
        }
        Probe::Action(action) => {
            // Output goes into a private buffer whose text becomes the error message.
            let sink = MemorySink::default();
            let streamer = LogStreamer::new(Arc::new(sink.clone()), &LogConfig::default());
            let step = step::build(&force_logged(action), env, &streamer);
            match step.perform(cancel.clone(), Ready::noop()).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    let text: Vec<String> = sink
                        .texts()
                        .into_iter()
                        .filter(|t| !t.starts_with("Exit status"))
                        .collect();
                    Err(if text.is_empty() {
                        e.to_string()
                    } else {
                        text.join("\n")
                    })
                }
            }
        }
    }
}

/// Monitor runs log their output (into the private buffer), as the reference forces.
fn force_logged(action: &Action) -> Action {
    let mut a = action.clone();
    fn walk(a: &mut Action) {
        match a {
            Action::Run(r) => r.suppress_log_output = false,
            Action::Timeout(t) => walk(&mut t.action),
            Action::Try(t) => walk(&mut t.action),
            Action::EmitProgress(e) => walk(&mut e.action),
            Action::Serial(s) => s.actions.iter_mut().for_each(walk),
            Action::Parallel(s) => s.actions.iter_mut().for_each(walk),
            Action::Codependent(s) => s.actions.iter_mut().for_each(walk),
            Action::Download(_) | Action::Upload(_) => {}
        }
    }
    walk(&mut a);
    a
}

/// The health step of an LRP (see the module docs).
pub struct HealthStep {
    probes: Vec<Probe>,
    env: Arc<StepEnv>,
    /// Container-level source (e.g. `CELL`).
    cell: LogStreamer,
    /// Health source (`HEALTH`).
    health: LogStreamer,
    start_timeout: Duration,
    config: HealthConfig,
}

impl HealthStep {
    pub fn new(
        probes: Vec<Probe>,
        env: Arc<StepEnv>,
        cell: LogStreamer,
        health_source: &str,
        start_timeout: Duration,
        config: HealthConfig,
    ) -> Self {
        let health = cell.with_source(if health_source.is_empty() {
            "HEALTH"
        } else {
            health_source
        });
        HealthStep {
            probes,
            env,
            cell,
            health,
            start_timeout,
            config,
        }
    }

    async fn all(&self, cancel: &CancellationToken) -> Result<(), String> {
        let results = crate::step::parallel_join(
            self.probes
                .iter()
                .map(|p| attempt(p, &self.env, &self.config.user, cancel)),
        )
        .await;
        match results.into_iter().filter_map(Result::err).next() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

#[async_trait]
impl Step for HealthStep {
    async fn perform(&self, cancel: CancellationToken, ready: Ready) -> StepResult {
        self.cell.out("Starting health monitoring of container");
        let started = Instant::now();
        // Startup: check at once, then every startup interval until healthy or timed out.
        loop {
            let r = tokio::select! {
                r = self.all(&cancel) => r,
                _ = cancel.cancelled() => return Err(StepError::Cancelled),
            };
            match r {
                Ok(()) => break,
                Err(msg) => {
                    let elapsed = started.elapsed();
                    if cancel.is_cancelled() {
                        return Err(StepError::Cancelled);
                    }
                    if !self.start_timeout.is_zero() && elapsed >= self.start_timeout {
                        let dur = go_duration(Duration::from_millis(elapsed.as_millis() as u64));
                        self.health.err(&msg);
                        self.cell.err(&format!(
                            "Failed after {dur}: startup health check never passed."
                        ));
                        return Err(StepError::Emittable(format!(
                            "Instance never healthy after {dur}: {msg}"
                        )));
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.startup_interval) => {}
                _ = cancel.cancelled() => return Err(StepError::Cancelled),
            }
        }
        self.cell.out("Container became healthy");
        ready.fire();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.liveness_interval) => {}
                _ = cancel.cancelled() => return Err(StepError::Cancelled),
            }
            let r = tokio::select! {
                r = self.all(&cancel) => r,
                _ = cancel.cancelled() => return Err(StepError::Cancelled),
            };
            if let Err(msg) = r {
                if cancel.is_cancelled() {
                    return Err(StepError::Cancelled);
                }
                self.health.err(&msg);
                self.cell.err("Container became unhealthy");
                return Err(StepError::Emittable(format!(
                    "Instance became unhealthy: {msg}"
                )));
            }
        }
    }
}
