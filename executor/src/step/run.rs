//! run: start a process in the container, stream its output, and on cancel stop it for real:
//! SIGTERM, then SIGKILL after the graceful shutdown interval.

use std::sync::Arc;

use async_trait::async_trait;
use garden_api::{ProcessSpec, ResourceLimits, Signal};
use tokio::sync::oneshot;

use super::{go_duration, CancellationToken, Ready, Step, StepEnv, StepError, StepResult};
use crate::action::RunAction;
use crate::garden::{BackendResult, Io};
use crate::log::{LineWriter, LogStreamer, Stream};

pub struct RunStep {
    action: RunAction,
    env: Arc<StepEnv>,
    streamer: LogStreamer,
    /// Health checks and monitors run without the `Exit status N` line.
    exit_line: bool,
}

impl RunStep {
    pub fn new(action: RunAction, env: Arc<StepEnv>, streamer: LogStreamer) -> Self {
        RunStep {
            action,
            env,
            streamer,
            exit_line: true,
        }
    }

    pub fn without_exit_line(mut self) -> Self {
        self.exit_line = false;
        self
    }

    fn process_spec(&self) -> ProcessSpec {
        let a = &self.action;
        let mut env: Vec<String> = a
            .env
            .iter()
            .map(|e| format!("{}={}", e.name, e.value))
            .collect();
        env.extend(self.env.instance_env.iter().cloned());
        ProcessSpec {
            path: a.path.clone(),
            args: a.args.clone(),
            env,
            dir: a.dir.clone(),
            user: a.user.clone(),
            rlimits: ResourceLimits {
                nofile: a.resource_limits.and_then(|r| r.nofile),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    async fn out_of_memory(&self) -> bool {
        match self.env.garden.info(&self.env.handle).await {
            Ok(info) => info
                .events
                .unwrap_or_default()
                .iter()
                .any(|e| e.to_ascii_lowercase().contains("out of memory")),
            Err(e) => {
                tracing::debug!(error = %e, "info for out-of-memory check failed");
                false
            }
        }
    }
}

#[async_trait]
impl Step for RunStep {
    async fn perform(&self, cancel: CancellationToken, ready: Ready) -> StepResult {
        if cancel.is_cancelled() {
            return Err(StepError::Cancelled);
        }
        let suppress = self.action.suppress_log_output;
        let writers: Option<(LineWriter, LineWriter)> = (!suppress).then(|| {
            (
                self.streamer.writer(Stream::Out),
                self.streamer.writer(Stream::Err),
            )
        });
        let io = match &writers {
            Some((o, e)) => Io {
                stdout: Some(Box::new(o.clone())),
                stderr: Some(Box::new(e.clone())),
            },
            None => Io::default(),
        };
        let spec = self.process_spec();
        // The spawn is not raced against cancel: dropping it midway could leave an untracked
        // process behind. A cancel that arrived meanwhile is handled below like any other.
        let mut process = match self.env.garden.run(&self.env.handle, &spec, io).await {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("failed-creating-process: {e}");
                if !suppress {
                    self.streamer.out(&msg);
                }
                return Err(StepError::Other(msg));
            }
        };
        tracing::debug!(handle = %self.env.handle, process = %process.id(), path = %spec.path, "process started");
        ready.fire();

        let signaller = process.signaller();
        // Waiting happens on its own task so the wait is never dropped midway.
        let (tx, mut rx) = oneshot::channel::<BackendResult<i32>>();
        tokio::spawn(async move {
            let _ = tx.send(process.wait().await);
        });
        let vanished = || StepError::Other("process wait ended without a result".into());

        let mut cancelled = false;
        let mut killed = false;
        let status = tokio::select! {
            r = &mut rx => r.map_err(|_| vanished())?,
            _ = cancel.cancelled() => {
                cancelled = true;
                if let Err(e) = signaller.signal(Signal::Terminate).await {
                    tracing::info!(error = %e, "sending SIGTERM failed");
                }
                match tokio::time::timeout(self.env.config.graceful_shutdown, &mut rx).await {
                    Ok(r) => r.map_err(|_| vanished())?,
                    Err(_) => {
                        killed = true;
                        if let Err(e) = signaller.signal(Signal::Kill).await {
                            tracing::info!(error = %e, "sending SIGKILL failed");
                        }
                        match tokio::time::timeout(self.env.config.kill_timeout, &mut rx).await {
                            Ok(r) => r.map_err(|_| vanished())?,
                            Err(_) => return Err(StepError::ExitTimeout),
                        }
                    }
                }
            }
        };
        let status = status.map_err(|e| StepError::Other(e.to_string()))?;

        let oom = status != 0 && self.out_of_memory().await;
        if let Some((o, e)) = &writers {
            // The process's own unterminated last lines first, then the exit line on its own.
            o.flush_partial();
            e.flush_partial();
            if self.exit_line {
                let mut line = format!("Exit status {status}");
                if killed {
                    line.push_str(&format!(
                        " (exceeded {} graceful shutdown interval)",
                        go_duration(self.env.config.graceful_shutdown)
                    ));
                }
                if oom {
                    line.push_str(" (out of memory)");
                }
                self.streamer.out(&line);
            }
        }
        if killed {
            return Err(StepError::ExceededGracefulShutdownInterval);
        }
        if cancelled {
            return Err(StepError::Cancelled);
        }
        if status != 0 {
            let mut msg = format!("{}: Exited with status {status}", self.streamer.source());
            if oom {
                msg.push_str(" (out of memory)");
            }
            return Err(StepError::Emittable(msg));
        }
        Ok(())
    }
}
