//! The step engine: every action becomes a [`Step`] that runs until it returns exactly one
//! result and can be cancelled at any time. Cancellation is cooperative: a parent cancels a
//! child's token and then waits for the child's result (nobody abandons a child).
//!
//! Entry point: [`build`] turns an [`Action`] into a step tree for one container.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
pub use tokio_util::sync::CancellationToken;

use crate::action::Action;
use crate::cache::DownloadCache;
use crate::garden::Garden;
use crate::log::LogStreamer;

pub mod codependent;
pub mod download;
pub mod emit_progress;
pub mod parallel;
pub mod run;
pub mod serial;
pub mod timeout;
pub mod r#try;
pub mod upload;

pub(crate) use parallel::futures_join_all as parallel_join;

/// How a step failed. Only `Emittable` messages are meant for the app's users as they are;
/// `Cancelled` and `ExceededGracefulShutdownInterval` are left out of aggregate messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("cancelled")]
    Cancelled,
    #[error("exceeded graceful shutdown interval")]
    ExceededGracefulShutdownInterval,
    #[error("process did not exit")]
    ExitTimeout,
    #[error("{0}")]
    Emittable(String),
    #[error("{0}")]
    Other(String),
}

impl StepError {
    /// Whether the message belongs in an aggregate (parallel/codependent) message.
    pub fn displayable(&self) -> bool {
        !matches!(
            self,
            StepError::Cancelled | StepError::ExceededGracefulShutdownInterval
        )
    }
}

/// Join the displayable child errors with `"; "` (always an error, possibly with an empty text).
pub fn aggregate(errors: &[StepError]) -> StepError {
    let parts: Vec<String> = errors
        .iter()
        .filter(|e| e.displayable())
        .map(|e| e.to_string())
        .filter(|m| !m.is_empty())
        .collect();
    StepError::Other(parts.join("; "))
}

pub type StepResult = Result<(), StepError>;

/// One-shot "I am up" signal; clones share it. Firing twice has no further effect.
#[derive(Clone)]
pub struct Ready(Option<Arc<ReadyInner>>);

struct ReadyInner {
    fired: AtomicBool,
    on_fire: Box<dyn Fn() + Send + Sync>,
}

impl Ready {
    pub fn new(on_fire: impl Fn() + Send + Sync + 'static) -> Self {
        Ready(Some(Arc::new(ReadyInner {
            fired: AtomicBool::new(false),
            on_fire: Box::new(on_fire),
        })))
    }

    /// A signal nobody listens to.
    pub fn noop() -> Self {
        Ready(None)
    }

    /// A signal plus a receiver that completes when it fires.
    pub fn channel() -> (Ready, tokio::sync::watch::Receiver<bool>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (
            Ready::new(move || {
                let _ = tx.send(true);
            }),
            rx,
        )
    }

    pub fn fire(&self) {
        if let Some(inner) = &self.0 {
            if !inner.fired.swap(true, Ordering::SeqCst) {
                (inner.on_fire)();
            }
        }
    }

    /// `n` signals; this one fires once all of them fired (at once when `n == 0`).
    pub fn all(&self, n: usize) -> Vec<Ready> {
        if n == 0 {
            self.fire();
            return Vec::new();
        }
        let left = Arc::new(AtomicUsize::new(n));
        (0..n)
            .map(|_| {
                let left = left.clone();
                let parent = self.clone();
                Ready::new(move || {
                    if left.fetch_sub(1, Ordering::SeqCst) == 1 {
                        parent.fire();
                    }
                })
            })
            .collect()
    }
}

/// A runnable piece of an action tree.
#[async_trait]
pub trait Step: Send + Sync {
    /// Run to completion; return early only after reacting to `cancel`.
    async fn perform(&self, cancel: CancellationToken, ready: Ready) -> StepResult;
}

/// Cell-wide knobs shared by every container's steps.
#[derive(Clone)]
pub struct StepConfig {
    /// Time between SIGTERM and SIGKILL when a run is cancelled.
    pub graceful_shutdown: Duration,
    /// Time to wait after SIGKILL before giving up with `process did not exit`.
    pub kill_timeout: Duration,
    pub download_slots: Arc<Semaphore>,
    pub upload_slots: Arc<Semaphore>,
    pub upload_attempts: u32,
    /// Verification of `https://` upload targets (downloads use the cache's `CacheConfig::tls`).
    pub tls: crate::http::Tls,
}

impl Default for StepConfig {
    fn default() -> Self {
        StepConfig {
            graceful_shutdown: Duration::from_secs(10),
            kill_timeout: Duration::from_secs(1),
            download_slots: Arc::new(Semaphore::new(5)),
            upload_slots: Arc::new(Semaphore::new(5)),
            upload_attempts: 3,
            tls: crate::http::Tls::default(),
        }
    }
}

/// Everything the steps of one container share.
pub struct StepEnv {
    pub garden: Arc<dyn Garden>,
    pub handle: String,
    pub cache: Arc<DownloadCache>,
    pub config: StepConfig,
    /// `NAME=value` pairs appended to every run's env (the `CF_INSTANCE_*` networking vars).
    pub instance_env: Vec<String>,
}

/// Build the step tree for `action`, logging through `streamer` (the parent's source).
///
/// Log sources: run/download/upload use their own `log_source` or inherit; every composite
/// step (including serial and emit_progress, see README "quirks") hands its children
/// `streamer.with_source(own log_source)`.
pub fn build(action: &Action, env: &Arc<StepEnv>, streamer: &LogStreamer) -> Box<dyn Step> {
    match action {
        Action::Run(a) => Box::new(run::RunStep::new(
            a.clone(),
            env.clone(),
            streamer.with_source(&a.log_source),
        )),
        Action::Download(a) => Box::new(download::DownloadStep::new(
            a.clone(),
            env.clone(),
            streamer.with_source(&a.log_source),
        )),
        Action::Upload(a) => Box::new(upload::UploadStep::new(
            a.clone(),
            env.clone(),
            streamer.with_source(&a.log_source),
        )),
        Action::Timeout(a) => {
            let child = build(&a.action, env, &streamer.with_source(&a.log_source));
            Box::new(timeout::TimeoutStep::new(
                child,
                Duration::from_millis(a.timeout_ms.max(0) as u64),
            ))
        }
        Action::Try(a) => Box::new(r#try::TryStep::new(build(
            &a.action,
            env,
            &streamer.with_source(&a.log_source),
        ))),
        Action::EmitProgress(a) => {
            let own = streamer.with_source(&a.log_source);
            Box::new(emit_progress::EmitProgressStep::new(
                build(&a.action, env, &own),
                own,
                a.start_message.clone(),
                a.success_message.clone(),
                a.failure_message_prefix.clone(),
            ))
        }
        Action::Serial(a) => {
            let s = streamer.with_source(&a.log_source);
            Box::new(serial::SerialStep::new(
                a.actions.iter().map(|c| build(c, env, &s)).collect(),
            ))
        }
        Action::Parallel(a) => {
            let s = streamer.with_source(&a.log_source);
            Box::new(parallel::ParallelStep::new(
                a.actions.iter().map(|c| build(c, env, &s)).collect(),
            ))
        }
        Action::Codependent(a) => {
            let s = streamer.with_source(&a.log_source);
            Box::new(codependent::CodependentStep::new(
                a.actions.iter().map(|c| build(c, env, &s)).collect(),
            ))
        }
    }
}

/// Go's `time.Duration.String()`: `500ms`, `10s`, `1m0s`, `1m30s`, `1h0m0s`, `1.5s`.
pub fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    fn frac(whole: u128, rem: u128, digits: u32) -> String {
        if rem == 0 {
            return whole.to_string();
        }
        let s = format!("{rem:0width$}", width = digits as usize);
        format!("{whole}.{}", s.trim_end_matches('0'))
    }
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return format!("{}µs", frac(nanos / 1_000, nanos % 1_000, 3));
    }
    if nanos < 1_000_000_000 {
        return format!("{}ms", frac(nanos / 1_000_000, nanos % 1_000_000, 6));
    }
    let total_secs = nanos / 1_000_000_000;
    let sub = nanos % 1_000_000_000;
    let (h, m, s) = (total_secs / 3600, (total_secs % 3600) / 60, total_secs % 60);
    let secs = frac(s, sub, 9);
    if h > 0 {
        format!("{h}h{m}m{secs}s")
    } else if m > 0 {
        format!("{m}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Short 1024-based size: `512B`, `1K`, `12.3M` (one decimal, `.0` dropped).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (size, unit) in UNITS {
        if bytes >= size {
            let v = format!("{:.1}", bytes as f64 / size as f64);
            return format!("{}{unit}", v.strip_suffix(".0").unwrap_or(&v));
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(500)), "500ms");
        assert_eq!(go_duration(ms(10_000)), "10s");
        assert_eq!(go_duration(ms(60_000)), "1m0s");
        assert_eq!(go_duration(ms(90_000)), "1m30s");
        assert_eq!(go_duration(ms(3_600_000)), "1h0m0s");
        assert_eq!(go_duration(ms(1_500)), "1.5s");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1024), "1K");
        assert_eq!(human_size(12_897_485), "12.3M");
        assert_eq!(human_size(3 << 30), "3G");
    }

    #[test]
    fn aggregate_skips_cancelled_and_empty() {
        let e = aggregate(&[
            StepError::Emittable("a".into()),
            StepError::Cancelled,
            StepError::Other(String::new()),
            StepError::ExceededGracefulShutdownInterval,
            StepError::ExitTimeout,
        ]);
        assert_eq!(e.to_string(), "a; process did not exit");
        assert_eq!(aggregate(&[StepError::Cancelled]).to_string(), "");
    }

    #[test]
    fn ready_all_fires_parent_after_every_child() {
        let (parent, rx) = Ready::channel();
        let kids = parent.all(2);
        kids[0].fire();
        kids[0].fire();
        assert!(!*rx.borrow());
        kids[1].fire();
        assert!(*rx.borrow());
    }
}

#[cfg(test)]
mod step_tests;
