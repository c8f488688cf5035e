//! Restart: take over the containers a previous gardend left whole, so Garden's clients never
//! notice that gardend went away (even by SIGKILL).
//!
//! A container is whole when its bundle holds a readable `container.json` and
//! `properties.json` of this version (written only once create finished) and the garden-init
//! they name still runs (same pid and start time). Its links, chains, address, ports and disk
//! layer were kept by the kernel side; here its sandbox, processes (running ones with their
//! stdio, from garden-init; finished ones with the status garden-init recorded), properties
//! and grace timer come back. Everything else of the previous run is swept (`Linux::sweep`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::container::{Container, State};
use super::create::route_exits;
use super::depot::{self, Mutable, Record};
use super::grace::{grace_timer, Activity};
use super::Garden;
use crate::kernel::InitIdentity;
use crate::process::Process;

/// The depot's containers that can be adopted (`alive`: whether their garden-init still
/// runs), each with its state; what cannot is logged (and left to the sweep).
pub(super) fn survivors(
    depot: &Path,
    alive: impl Fn(InitIdentity) -> bool,
) -> Vec<(Record, Mutable)> {
    let Ok(entries) = std::fs::read_dir(depot) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let handle = e.file_name().to_string_lossy().into_owned();
        if depot::is_destroying(&e.path()) {
            tracing::info!(handle, "removing: its destroy was under way");
            continue;
        }
        match depot::read(&e.path()) {
            Ok((record, _)) if record.handle != handle => {
                tracing::info!(handle, "removing: its record names another handle")
            }
            Ok((record, _)) if !alive(record.init()) => tracing::info!(
                handle,
                pid = record.init_pid,
                "removing: its garden-init is gone"
            ),
            Ok(state) => found.push(state),
            Err(why) => tracing::info!(handle, why, "removing: not a complete container"),
        }
    }
    found
}

/// How many containers are adopted at once.
const ADOPT_AT_ONCE: usize = 8;

impl Garden {
    /// Adopt each survivor (a few at a time); one that fails is removed with everything it
    /// had.
    pub(super) async fn adopt_all(&self, survivors: Vec<(Record, Mutable)>) {
        let Some(me) = self.me.upgrade() else { return };
        let total = survivors.len();
        let t = Instant::now();
        let mut queue = survivors.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < ADOPT_AT_ONCE {
                let Some((record, mutable)) = queue.next() else {
                    break;
                };
                let me = me.clone();
                running.spawn(async move { me.adopt_one(record, mutable).await });
            }
            if running.join_next().await.is_none() {
                break;
            }
        }
        if total > 0 {
            tracing::info!(
                containers = total,
                ms = t.elapsed().as_secs_f64() * 1e3,
                "adoption done"
            );
        }
    }

    async fn adopt_one(&self, record: Record, mutable: Mutable) {
        let handle = record.handle.clone();
        let cgroup = record.cgroup().to_string();
        let t = Instant::now();
        match self.adopt(record, mutable).await {
            Ok(processes) => tracing::info!(
                handle,
                processes,
                ms = t.elapsed().as_secs_f64() * 1e3,
                "adopted a container of the previous run"
            ),
            Err(e) => {
                tracing::warn!(handle, error = %e, "could not adopt; removing the container");
                let bundle = self.config.depot.join(&handle);
                self.kernel.discard(&handle, &cgroup).await;
                let _ = depot::remove_bundle_blocking(bundle).await;
            }
        }
    }

    /// Take over one container; the number of processes it had.
    async fn adopt(&self, record: Record, mutable: Mutable) -> Result<usize, String> {
        let handle = record.handle.clone();
        let bundle = self.config.depot.join(&handle);
        // The mapping create gave it: none when privileged, else this gardend's (the same
        // flags as the run that made it, as a restart requires).
        let ids = (!record.spec.privileged).then(|| self.ids.clone());
        let (sandbox, exits, running) = self
            .kernel
            .adopt_sandbox(
                &handle,
                record.cgroup(),
                &bundle,
                record.init(),
                ids.clone(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut processes = HashMap::new();
        for r in running {
            let p = Process::adopt(&r.id, r.tty, r.fds, sandbox.clone())
                .map_err(|e| format!("process {}: {e}", r.id))?;
            if let Some(status) = r.exited {
                // Exited while no gardend ran: its last output is drained for the first Attach.
                p.on_exit(status);
            }
            if !r.layers.is_empty() {
                // A pea's image is in use again until it is done.
                self.images.pin(&r.layers);
                self.release_image_when_done(&p, r.layers);
            }
            processes.insert(r.id, p);
        }
        for (id, status) in depot::exit_codes(&bundle) {
            processes
                .entry(id.clone())
                .or_insert_with(|| Process::finished(&id, status, sandbox.clone()));
        }
        let count = processes.len();
        let mut properties: BTreeMap<String, String> = mutable.properties;
        // The grace timer holds the grace time; it starts afresh from this restart.
        let grace_ns = properties
            .remove("garden.grace-time")
            .and_then(|g| g.parse().ok())
            .unwrap_or(0);
        let age = depot::now_unix_ns().saturating_sub(record.created_unix_ns);
        let created = Instant::now()
            .checked_sub(Duration::from_nanos(age.min(u64::MAX as u128) as u64))
            .unwrap_or_else(Instant::now);
        let activity = Activity::new(grace_ns);
        // Its image layers are in use again: no garbage collection may take them.
        self.images.pin(&record.lower_dirs);
        let container = Arc::new(Container {
            handle: handle.clone(),
            bundle,
            spec: record.spec,
            image_env: record.image_env,
            ids,
            image_user: record.image_user,
            image_dir: record.image_dir,
            lower_dirs: record.lower_dirs,
            created,
            sandbox,
            state: Mutex::new(State::Active),
            properties: Mutex::new(properties),
            processes: Mutex::new(processes),
            activity: activity.clone(),
            net_out: Mutex::new(mutable.net_out),
        });
        route_exits(&container, exits);
        tokio::spawn(grace_timer(self.me.clone(), handle.clone(), activity));
        self.containers
            .write()
            .expect("containers lock")
            .insert(handle.clone(), container.clone());
        // NetIn mappings as the firewall holds them.
        let props = self.network_properties(&handle);
        self.set_properties(&container, |p| p.extend(props));
        Ok(count)
    }
}
