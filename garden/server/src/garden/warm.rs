//! Warm containers: made ahead of demand (`--warm-containers N`), so that a Create asking for
//! nothing but defaults is answered without waiting for namespaces, a cgroup, the overlay,
//! garden-init's setup and the network (SOCK, USENIX ATC'18, pooled the same parts).
//!
//! A warm container is a whole unprivileged container on the default rootfs with an address
//! from the pool, made under a name of its own (`warm-<uuid>`: its bundle, cgroup and network
//! go by it). A Create that fits takes one: the bundle is renamed to the handle, the network
//! record moves to the handle, the host name is set, limits and NetOut/NetIn rules are applied
//! as they would be to any running container; the cgroup keeps its name (cgroup v2 cannot
//! rename one), which the record notes. Each is made for one tenant and never handed out
//! twice; a filler task makes another in the background. Warm containers do not count against
//! max-containers, but hold addresses: the filler stops while the pool would leave a Create
//! without one, and a Create that finds the address pool full evicts them first. They have no
//! record, so a restart sweeps those a previous run left; shutdown removes them.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use garden_api::ContainerSpec;

use super::depot::remove_bundle_blocking;
use super::{convert, Garden};
use crate::kernel::{Bandwidth, Exits, Sandbox};

/// The name prefix of warm containers (then a UUID).
pub(super) const PREFIX: &str = "warm-";

/// First pause after a warm container could not be made; doubled up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// One container made ahead of demand.
pub(super) struct Warm {
    /// `warm-<uuid>`: the name of its bundle, cgroup and network until it is claimed.
    pub name: String,
    pub bundle: PathBuf,
    pub sandbox: Arc<dyn Sandbox>,
    pub exits: Exits,
}

/// The ready warm containers and the filler's state.
#[derive(Default)]
pub(super) struct Pool {
    ready: Mutex<VecDeque<Warm>>,
    /// Being made by the filler (0 or 1).
    making: AtomicUsize,
    /// Wakes the filler: one was taken, room was freed, or shutdown began.
    wake: tokio::sync::Notify,
    closed: AtomicBool,
    filler: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Pool {
    /// Ready ones.
    pub(super) fn len(&self) -> usize {
        self.ready.lock().expect("warm lock").len()
    }

    /// Ready and being made: the addresses they hold.
    fn held(&self) -> usize {
        self.len() + self.making.load(Ordering::SeqCst)
    }

    /// The oldest ready one whose garden-init still runs; dead ones (killed by hand, say) are
    /// handed back for removal.
    fn take(&self) -> (Option<Warm>, Vec<Warm>) {
        let mut dead = Vec::new();
        let mut ready = self.ready.lock().expect("warm lock");
        let live = loop {
            match ready.pop_front() {
                Some(w) if w.sandbox.has_exited() => dead.push(w),
                other => break other,
            }
        };
        drop(ready);
        if live.is_some() || !dead.is_empty() {
            self.wake.notify_one();
        }
        (live, dead)
    }

    /// Kill the garden-init of the oldest ready one (tests: a warm container that died).
    #[cfg(test)]
    pub(super) async fn kill_oldest(&self) {
        let sandbox = self
            .ready
            .lock()
            .expect("warm lock")
            .front()
            .map(|w| w.sandbox.clone());
        if let Some(s) = sandbox {
            s.kill().await;
        }
    }

    /// Back to the front: a create could not use it after all.
    pub(super) fn put_back(&self, w: Warm) {
        self.ready.lock().expect("warm lock").push_front(w);
    }

    fn drain(&self) -> Vec<Warm> {
        self.ready.lock().expect("warm lock").drain(..).collect()
    }

    /// Room may have been freed (a destroyed container's resources are back).
    pub(super) fn poke(&self) {
        self.wake.notify_one();
    }
}

impl Garden {
    /// Whether a warm container can serve `spec`: nothing in it needs the sandbox or network
    /// made differently (image, bind mounts, privilege, a chosen network, bandwidth shaping or
    /// a disk layer of its own). Limits, NetIn/NetOut, properties, env and grace time are
    /// applied after the claim like on any container.
    pub(super) fn warm_fits(&self, spec: &ContainerSpec) -> bool {
        self.config.warm_containers > 0
            && spec.image.uri.is_empty()
            && spec.rootfs.is_empty()
            && spec.bind_mounts.is_empty()
            && spec.network.is_empty()
            && !spec.privileged
            && convert::bandwidth(&spec.limits.bandwidth_limits) == Bandwidth::default()
            && !self
                .kernel
                .disk_layer_needed(&convert::disk_limit(&spec.limits.disk_limits))
    }

    /// A ready warm container whose garden-init runs, if there is one (the filler makes
    /// another).
    pub(super) async fn take_warm(&self) -> Option<Warm> {
        let (live, dead) = self.warm.take();
        for w in dead {
            tracing::warn!(
                warm = w.name,
                "a warm container's garden-init died; removing it"
            );
            self.discard_warm(w, None).await;
        }
        live
    }

    /// Start the filler, if warm containers are wanted.
    pub(super) fn start_warming(&self) {
        if self.config.warm_containers == 0 {
            return;
        }
        let task = tokio::spawn(fill(self.me.clone(), self.warm.clone()));
        *self.warm.filler.lock().expect("filler lock") = Some(task);
    }

    /// Whether the filler should make one more now.
    fn warm_wanted(&self) -> bool {
        if self.warm.closed.load(Ordering::SeqCst) {
            return false;
        }
        let held = self.warm.held();
        if held >= self.config.warm_containers {
            return false;
        }
        let used = {
            let containers = self.containers.read().expect("containers lock");
            let reserved = self.reserved.lock().expect("reserved lock");
            containers.len() + reserved.len() + self.reclaiming.len()
        };
        // Leave an address for every container max-containers still allows.
        (used + held + 1) as u64 <= self.kernel.max_containers()
    }

    /// Make one warm container (everything a default Create makes, under a warm name).
    async fn make_warm(&self) -> Result<Warm, String> {
        let name = format!("{PREFIX}{}", uuid::Uuid::new_v4());
        let plan = self.default_rootfs.clone();
        self.images.pin(&plan.lower_dirs);
        let made = self.build_warm(&name, plan).await;
        if made.is_err() {
            self.release_image(self.default_rootfs.lower_dirs.clone())
                .await;
        }
        made
    }

    async fn build_warm(&self, name: &str, plan: rootfs::RootfsPlan) -> Result<Warm, String> {
        let made = self
            .make_sandbox(name, &ContainerSpec::default(), plan, false)
            .await
            .map_err(|e| e.to_string())?;
        let (bundle, sandbox, exits) = (made.bundle, made.sandbox, made.exits);
        let attached = self
            .kernel
            .attach_network(name, name, sandbox.as_ref(), &[], Bandwidth::default())
            .await;
        let warm = Warm {
            name: name.to_string(),
            bundle,
            sandbox,
            exits,
        };
        if let Err(e) = attached {
            self.discard_warm(warm, None).await;
            return Err(format!("network: {e}"));
        }
        Ok(warm)
    }

    /// Remove a warm container that will not be used (or whose claim failed before it was
    /// registered: `claimed_by` names the handle its network may have moved to).
    pub(super) async fn discard_warm(&self, w: Warm, claimed_by: Option<&str>) {
        w.sandbox.kill().await;
        let names = std::iter::once(w.name.as_str()).chain(claimed_by);
        for name in names {
            if let Err(e) = self.kernel.release_network(name).await {
                tracing::warn!(warm = w.name, error = %e, "release a warm container's network");
            }
        }
        if let Err(e) = w.sandbox.remove_cgroup().await {
            tracing::warn!(warm = w.name, error = %e, "remove a warm container's cgroup");
        }
        if let Err(e) = self.kernel.release_disk(&w.name).await {
            tracing::warn!(warm = w.name, error = %e, "release a warm container's disk");
        }
        if let Err(e) = remove_bundle_blocking(w.bundle.clone()).await {
            tracing::warn!(warm = w.name, error = %e, "remove a warm container's bundle");
        }
        self.release_image(self.default_rootfs.lower_dirs.clone())
            .await;
        self.warm.poke();
    }

    /// Remove every ready warm container (`why`: their addresses are wanted, or gardend
    /// stops).
    pub(super) async fn evict_warm(&self, why: &str) -> usize {
        let all = self.warm.drain();
        let n = all.len();
        for w in all {
            self.discard_warm(w, None).await;
        }
        if n > 0 {
            tracing::info!(removed = n, why, "removed warm containers");
        }
        n
    }

    /// Stop making warm containers and remove them (shutdown).
    pub(super) async fn close_warm(&self) {
        self.warm.closed.store(true, Ordering::SeqCst);
        self.warm.wake.notify_one();
        let filler = self.warm.filler.lock().expect("filler lock").take();
        if let Some(task) = filler {
            let _ = task.await;
        }
        self.evict_warm("gardend stops").await;
    }
}

/// The filler: keeps `--warm-containers` ready, one at a time, whenever there is room. It
/// holds the Garden only while it works, so it never keeps a dropped one alive.
async fn fill(me: Weak<Garden>, pool: Arc<Pool>) {
    let mut pause = RETRY_FIRST;
    loop {
        let wake = pool.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if pool.closed.load(Ordering::SeqCst) {
            return;
        }
        let Some(garden) = me.upgrade() else { return };
        if !garden.warm_wanted() {
            drop(garden);
            wake.await;
            continue;
        }
        pool.making.fetch_add(1, Ordering::SeqCst);
        let made = garden.make_warm().await;
        pool.making.fetch_sub(1, Ordering::SeqCst);
        match made {
            Ok(w) if pool.closed.load(Ordering::SeqCst) => {
                garden.discard_warm(w, None).await;
                return;
            }
            Ok(w) => {
                tracing::debug!(warm = w.name, "warm container ready");
                pool.ready.lock().expect("warm lock").push_back(w);
                pause = RETRY_FIRST;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "could not make a warm container");
                drop(garden);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}
