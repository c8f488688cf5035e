//! Destroy: kill every process and take the handle out of List, then answer; the mounts, the
//! network, the cgroup, the disk quota and the bundle are reclaimed in the background, in that
//! order.
//!
//! The background half is strictly accounted: until it is done the handle stays reserved (a
//! Create of the same handle waits for it, and it counts against max-containers), the address
//! stays leased (the network releases it last), a failing step is logged and retried, and
//! shutdown waits for all of it. The `destroying` mark in the bundle makes a restarted gardend
//! finish what a crash interrupted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use garden_api::GardenError;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::container::{Container, State};
use super::depot::{mark_destroying, remove_bundle_blocking};
use super::{Garden, Result};

/// First pause before a failed reclamation is retried; doubled up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Destroyed containers whose mounts are unmounted at once.
const UNMOUNT_CONCURRENCY: usize = 8;

/// Handles whose resources are still being reclaimed, each with a flag set when it is done.
pub(super) struct Reclaiming {
    pending: std::sync::Mutex<std::collections::HashMap<String, watch::Receiver<bool>>>,
    /// Woken whenever a reclamation ends (room for a Create waiting on max-containers).
    ended: tokio::sync::Notify,
    /// Reclamations that may run at once (`--reclaim-concurrency`).
    slots: tokio::sync::Semaphore,
    /// Unmountings that may run at once: each holds a blocking thread, which other work
    /// (file streaming, creates) shares.
    unmount_slots: Arc<tokio::sync::Semaphore>,
}

impl Reclaiming {
    /// At most `concurrency` reclamations run at once.
    pub(super) fn new(concurrency: u32) -> Reclaiming {
        Reclaiming {
            pending: Default::default(),
            ended: Default::default(),
            slots: tokio::sync::Semaphore::new(concurrency.max(1) as usize),
            unmount_slots: Arc::new(tokio::sync::Semaphore::new(UNMOUNT_CONCURRENCY)),
        }
    }
}

impl Reclaiming {
    pub(super) fn contains(&self, handle: &str) -> bool {
        self.pending
            .lock()
            .expect("reclaiming lock")
            .contains_key(handle)
    }

    pub(super) fn len(&self) -> usize {
        self.pending.lock().expect("reclaiming lock").len()
    }

    /// Wait until `handle`'s reclamation (if any) is done.
    pub(super) async fn wait_for(&self, handle: &str) {
        let rx = self
            .pending
            .lock()
            .expect("reclaiming lock")
            .get(handle)
            .cloned();
        if let Some(mut rx) = rx {
            let _ = rx.wait_for(|done| *done).await;
        }
    }

    /// A future resolving when the next reclamation ends; `enable` it before checking.
    pub(super) fn next_end(&self) -> tokio::sync::futures::Notified<'_> {
        self.ended.notified()
    }

    /// Wait until every reclamation under way (and any begun meanwhile) is done.
    pub(super) async fn wait_all(&self) {
        loop {
            let rxs: Vec<_> = self
                .pending
                .lock()
                .expect("reclaiming lock")
                .values()
                .cloned()
                .collect();
            if rxs.is_empty() {
                return;
            }
            for mut rx in rxs {
                let _ = rx.wait_for(|done| *done).await;
            }
        }
    }

    fn begin(&self, handle: &str) -> watch::Sender<bool> {
        let (tx, rx) = watch::channel(false);
        self.pending
            .lock()
            .expect("reclaiming lock")
            .insert(handle.to_string(), rx);
        tx
    }

    fn end(&self, handle: &str, done: watch::Sender<bool>) {
        self.pending.lock().expect("reclaiming lock").remove(handle);
        let _ = done.send(true);
        self.ended.notify_waiters();
    }
}

impl Garden {
    pub(super) async fn destroy(&self, handle: &str) -> Result<()> {
        let c = self.lookup(handle)?;
        {
            let mut state = c.state.lock().expect("state lock");
            if *state == State::Destroying {
                return Err(GardenError::generic("container already being destroyed"));
            }
            *state = State::Destroying;
        }
        c.activity.cancel();
        // From here a restart finishes the destroy instead of adopting the container.
        let bundle = c.bundle.clone();
        tokio::task::spawn_blocking(move || mark_destroying(&bundle, true))
            .await
            .map_err(|e| GardenError::generic(e.to_string()))?;
        let t = Instant::now();
        let mounts = c.sandbox.kill_keeping_mounts().await;
        // Unmounting starts now, beside the answer, not in a reclamation slot: it is most of
        // a reclamation's time, and garden-init's exits (which did it before) ran unbounded.
        let unmounting = mounts.map(|m| {
            let slots = self.reclaiming.unmount_slots.clone();
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                tokio::task::spawn_blocking(move || {
                    let t = Instant::now();
                    drop(m);
                    t.elapsed()
                })
                .await
                .unwrap_or_default()
            })
        });
        tracing::debug!(
            handle,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "processes gone"
        );
        for p in c.processes.lock().expect("processes lock").values() {
            p.on_exit(137);
        }
        // Out of List and reserved for the reclamation in one step: a Create of this handle
        // either sees the container or waits for the reclamation.
        let done = {
            let mut containers = self.containers.write().expect("containers lock");
            containers.remove(handle);
            self.reclaiming.begin(handle)
        };
        let Some(me) = self.me.upgrade() else {
            // Shutting down: reclaim in line.
            self.reclaim(&c, t, unmounting).await;
            self.reclaiming.end(handle, done);
            self.warm.poke();
            return Ok(());
        };
        let handle = handle.to_string();
        tokio::spawn(async move {
            let _slot = me.reclaiming.slots.acquire().await;
            me.reclaim(&c, t, unmounting).await;
            me.reclaiming.end(&handle, done);
            me.warm.poke();
        });
        Ok(())
    }

    /// Free a destroyed container's network, cgroup, disk and bundle once `unmounting` (the
    /// close of its mount namespace) is done, retrying a failed step until it succeeds (each
    /// step is idempotent), then unpin its image.
    async fn reclaim(
        &self,
        c: &Arc<Container>,
        started: Instant,
        unmounting: Option<JoinHandle<Duration>>,
    ) {
        let handle = c.handle.as_str();
        let unmounted = match unmounting {
            Some(task) => task.await.ok(),
            None => None,
        };
        if let Some(took) = unmounted {
            tracing::debug!(
                handle,
                ms = started.elapsed().as_secs_f64() * 1e3,
                took_ms = took.as_secs_f64() * 1e3,
                "unmounted"
            );
        }
        let mut pause = RETRY_FIRST;
        let mut attempt = 1u32;
        while let Err(e) = self.reclaim_once(c, started).await {
            tracing::warn!(handle, attempt, error = %e, retry_in_ms = pause.as_millis() as u64, "reclaiming a destroyed container failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_MAX);
            attempt += 1;
        }
        self.release_image(c.lower_dirs.clone()).await;
        tracing::info!(
            handle,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "destroyed"
        );
    }

    async fn reclaim_once(&self, c: &Container, t: Instant) -> std::result::Result<(), String> {
        let handle = c.handle.as_str();
        self.kernel
            .release_network(handle)
            .await
            .map_err(|e| format!("release network: {e}"))?;
        tracing::debug!(
            handle,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "network released"
        );
        c.sandbox
            .remove_cgroup()
            .await
            .map_err(|e| format!("remove cgroup: {e}"))?;
        tracing::debug!(
            handle,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "cgroups removed"
        );
        self.kernel
            .release_disk(handle)
            .await
            .map_err(|e| format!("release disk: {e}"))?;
        remove_bundle_blocking(c.bundle.clone()).await
    }
}
