//! Grace time: a container nobody has used for its grace time is destroyed. "Used" means a
//! request in flight or a Run/Attach session or output stream still open ([`ActiveGuard`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::Garden;

/// The grace timer's inputs: how many requests are in flight, and the grace time (the one
/// place it is kept; 0 = never reaped).
pub(super) struct Activity {
    active: AtomicUsize,
    grace_ns: AtomicU64,
    changed: Notify,
    cancelled: AtomicBool,
}

/// Holds the grace timer while alive.
pub(super) struct ActiveGuard(Arc<Activity>);

impl Activity {
    pub(super) fn new(grace_ns: u64) -> Arc<Activity> {
        Arc::new(Activity {
            active: AtomicUsize::new(0),
            grace_ns: AtomicU64::new(grace_ns),
            changed: Notify::new(),
            cancelled: AtomicBool::new(false),
        })
    }

    pub(super) fn guard(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
        ActiveGuard(self.clone())
    }

    pub(super) fn grace(&self) -> u64 {
        self.grace_ns.load(Ordering::SeqCst)
    }

    pub(super) fn set_grace(&self, grace_ns: u64) {
        self.grace_ns.store(grace_ns, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// The container is going away: the timer stops.
    pub(super) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.changed.notify_one();
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

/// Destroy the container once it has been idle for its grace time.
pub(super) async fn grace_timer(garden: Weak<Garden>, handle: String, a: Arc<Activity>) {
    loop {
        if a.cancelled.load(Ordering::SeqCst) {
            return;
        }
        let grace = a.grace();
        if grace == 0 || a.active.load(Ordering::SeqCst) > 0 {
            a.changed.notified().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_nanos(grace)) => {
                if a.active.load(Ordering::SeqCst) == 0 && !a.cancelled.load(Ordering::SeqCst) {
                    let Some(g) = garden.upgrade() else { return };
                    tracing::info!(handle, "grace time expired");
                    if let Err(e) = g.destroy(&handle).await {
                        tracing::warn!(handle, error = %e, "reap after grace time");
                    }
                    return;
                }
            }
            _ = a.changed.notified() => {}
        }
    }
}
