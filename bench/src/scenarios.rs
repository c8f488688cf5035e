//! The five scenarios. Every latency scenario interleaves the runtimes (gardend, crun, runc,
//! gardend, ...), rotating which goes first each round, so machine noise hits all alike.
//! A runtime that fails is reported with its error and left out of the remaining rounds; the
//! others carry on.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use garden_api::{ContainerSpec, ProcessSpec};
use garden_client::{Client, ProcessIo};
use tokio::io::AsyncWrite;
use tokio::task::JoinSet;

use crate::cni::CniPeer;
use crate::cpu::TopWindow;
use crate::gardend;
use crate::peers::{self, Peer};
use crate::podman::Podman;
use crate::report::{
    Concurrent, ConcurrentLevel, Density, Outcome, PeerDensity, Row, Streaming, Throughput,
};
use crate::stats::{self, ms, Summary};

/// How much of each scenario to do.
#[derive(Debug, Clone)]
pub struct Counts {
    /// Unrecorded rounds before each latency scenario.
    pub warmup: usize,
    pub lifecycle: usize,
    /// Rounds of create/destroy and of run-in-existing-container.
    pub ops: usize,
    pub concurrency: Vec<usize>,
    pub concurrency_reps: usize,
    pub stdout_mib: u64,
    pub stream_mib: u64,
    pub stream_reps: usize,
    pub density: usize,
    pub density_parallelism: usize,
}

/// One side of the comparison.
#[derive(Clone)]
pub enum Target {
    Gardend(Client),
    Peer(Arc<Peer>),
    /// crun with a CNI bridge network (lifecycle only).
    CrunCni(Arc<CniPeer>),
    /// podman with its bridge network (lifecycle only).
    Podman(Arc<Podman>),
}

impl Target {
    /// Remove what a peer may have left (containers, bridges).
    pub async fn cleanup(&self) {
        match self {
            Target::Gardend(_) => {}
            Target::Peer(p) => p.cleanup().await,
            Target::CrunCni(p) => {
                p.crun.cleanup().await;
                p.cleanup();
            }
            Target::Podman(p) => p.cleanup().await,
        }
    }
}

/// The bundles the peers run; all share one rootfs.
#[derive(Debug, Clone)]
pub struct Bundles {
    /// `/bin/true`.
    pub true_: PathBuf,
    /// `sleep` for a long time: a container to `exec` into.
    pub sleep: PathBuf,
    /// `dd` of `stdout_mib` MiB of zeros to stdout.
    pub dd: PathBuf,
}

/// Everything the scenarios run against.
pub struct Env {
    /// gardend, crun, runc in that order; `Err` = unavailable, with the reason.
    pub targets: Vec<(String, Result<Target, String>)>,
    /// crun+cni and podman: measured in the lifecycle scenario only.
    pub lifecycle_only: Vec<(String, Result<Target, String>)>,
    pub bundles: Option<Bundles>,
    pub scratch: PathBuf,
    pub busybox: PathBuf,
    pub counts: Counts,
    next_id: AtomicU64,
    /// gardend's pid and cgroup parent, for the density scenario's memory figures.
    gardend_proc: Option<(u32, String)>,
    /// Waits for gardend's background work before each measured round.
    gardend_idle: Option<crate::gardend::Idle>,
}

fn true_spec() -> ProcessSpec {
    ProcessSpec {
        path: "/bin/true".into(),
        ..ProcessSpec::default()
    }
}

/// The arguments of the dd writing `mib` MiB of zeros to stdout.
pub fn dd_args(mib: u64) -> Vec<String> {
    vec![
        "if=/dev/zero".into(),
        "bs=1048576".into(),
        format!("count={mib}"),
    ]
}

/// Per runtime, its lifecycle split into phases (gardend: API calls; crun+cni: network
/// setup, run, network teardown).
pub type Phases = Vec<(String, Vec<(String, Summary)>)>;

/// Outcome of one target's rounds: samples per measured quantity, or the first error.
type Samples = Result<Vec<Vec<Duration>>, String>;

/// Outcome of one target's concurrency repetitions: (create, destroy) wall ms per repetition.
type Walls = Result<Vec<(f64, f64)>, String>;

#[derive(Debug, Clone, Copy)]
enum Op {
    /// create, run /bin/true and wait, destroy. Samples: total (+ gardend's three phases).
    Lifecycle,
    /// create then destroy. Samples: create, destroy.
    CreateDestroy,
    /// run /bin/true in the prepared container. Samples: run.
    Run,
}

impl Env {
    pub fn new(
        targets: Vec<(String, Result<Target, String>)>,
        bundles: Option<Bundles>,
        scratch: PathBuf,
        busybox: PathBuf,
        counts: Counts,
    ) -> Env {
        Env {
            targets,
            lifecycle_only: vec![],
            bundles,
            scratch,
            busybox,
            counts,
            next_id: AtomicU64::new(0),
            gardend_proc: None,
            gardend_idle: None,
        }
    }

    fn peer_id(&self) -> String {
        format!(
            "bench-{}-{}",
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn bundles(&self) -> Result<&Bundles> {
        self.bundles
            .as_ref()
            .context("no OCI bundle (no crun or runc to write its spec)")
    }

    /// Scenario 1: the whole lifecycle. Also returns gardend's lifecycle split by phase.
    pub async fn lifecycle(&self) -> (Vec<Row<Summary>>, Phases) {
        let results = self.interleave(Op::Lifecycle, self.counts.lifecycle).await;
        let mut phases = vec![];
        for (runtime, names) in [
            ("gardend", ["create", "run+wait", "destroy"]),
            ("crun+cni", ["netns+CNI ADD", "crun run", "CNI DEL+netns"]),
        ] {
            let Some((_, Ok(s))) = results.iter().find(|(n, _)| n == runtime) else {
                continue;
            };
            let split: Vec<(String, Summary)> = names
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let summary = Summary::from_durations(s.get(i + 1)?)?;
                    Some((name.to_string(), summary))
                })
                .collect();
            if !split.is_empty() {
                phases.push((runtime.to_string(), split));
            }
        }
        (rows_of(&results, 0), phases)
    }

    /// Scenario 2a: create alone and destroy alone.
    pub async fn create_destroy(&self) -> (Vec<Row<Summary>>, Vec<Row<Summary>>) {
        let results = self.interleave(Op::CreateDestroy, self.counts.ops).await;
        (rows_of(&results, 0), rows_of(&results, 1))
    }

    /// Scenario 2b: run /bin/true in an existing container (process start latency).
    pub async fn run_in_existing(&self) -> Vec<Row<Summary>> {
        let results = self.interleave(Op::Run, self.counts.ops).await;
        rows_of(&results, 0)
    }

    /// Run `op` `rounds` times (after the warm-up) on every available target, interleaved.
    async fn interleave(&self, op: Op, rounds: usize) -> Vec<(String, Samples)> {
        // The peers doing gardend's network work take part in the lifecycle only.
        let targets: Vec<&(String, Result<Target, String>)> = match op {
            Op::Lifecycle => self.targets.iter().chain(&self.lifecycle_only).collect(),
            _ => self.targets.iter().collect(),
        };
        let mut state: Vec<(String, Samples)> = targets
            .iter()
            .map(|(name, t)| {
                (
                    name.clone(),
                    t.as_ref().map(|_| vec![]).map_err(Clone::clone),
                )
            })
            .collect();
        // Containers prepared for Op::Run, one per target.
        let mut prepared: Vec<Option<String>> = vec![None; targets.len()];
        if let Op::Run = op {
            for (i, (name, target)) in targets.iter().enumerate() {
                let Ok(target) = target else { continue };
                match self.prepare_running(target).await {
                    Ok(id) => prepared[i] = Some(id),
                    Err(e) => {
                        state[i].1 = Err(format!("{name}: preparing a running container: {e:#}"))
                    }
                }
            }
        }
        let n = targets.len();
        let warmup = self.counts.warmup;
        for round in 0..warmup + rounds {
            for k in 0..n {
                let i = (round + k) % n;
                let Ok(target) = &targets[i].1 else {
                    continue;
                };
                if state[i].1.is_err() {
                    continue;
                }
                self.quiesce().await;
                let sample = self.once(target, op, prepared[i].as_deref()).await;
                match (sample, &mut state[i].1) {
                    (Ok(durations), Ok(acc)) => {
                        if round >= warmup {
                            if acc.is_empty() {
                                acc.resize(durations.len(), vec![]);
                            }
                            for (slot, d) in acc.iter_mut().zip(durations) {
                                slot.push(d);
                            }
                        }
                    }
                    (Err(e), slot) => {
                        tracing::warn!("{} {op:?} round {round}: {e:#}", targets[i].0);
                        *slot = Err(format!("round {round}: {e:#}"));
                    }
                    (Ok(_), Err(_)) => {}
                }
            }
        }
        for (i, id) in prepared.into_iter().enumerate() {
            if let (Some(id), Ok(target)) = (id, &targets[i].1) {
                if let Err(e) = teardown(target, &id).await {
                    tracing::warn!("{}: teardown of {id}: {e:#}", targets[i].0);
                }
            }
        }
        state
    }

    /// A container with something running in it, to run or exec processes in.
    async fn prepare_running(&self, target: &Target) -> Result<String> {
        match target {
            Target::Gardend(c) => Ok(c.create(&ContainerSpec::default()).await?),
            Target::Peer(p) => {
                let id = self.peer_id();
                p.run_detached(&self.bundles()?.sleep, &id).await?;
                Ok(id)
            }
            Target::CrunCni(_) | Target::Podman(_) => bail!("lifecycle only"),
        }
    }

    async fn once(&self, target: &Target, op: Op, prepared: Option<&str>) -> Result<Vec<Duration>> {
        match (target, op) {
            (Target::Gardend(c), Op::Lifecycle) => gardend_lifecycle(c).await,
            (Target::Peer(p), Op::Lifecycle) => {
                let id = self.peer_id();
                Ok(vec![p.run(&self.bundles()?.true_, &id).await?])
            }
            (Target::CrunCni(p), Op::Lifecycle) => p.lifecycle(&self.peer_id()).await,
            (Target::Podman(p), Op::Lifecycle) => p.lifecycle(&self.peer_id()).await,
            (Target::CrunCni(_) | Target::Podman(_), _) => bail!("lifecycle only"),
            (Target::Gardend(c), Op::CreateDestroy) => {
                let start = Instant::now();
                let h = c
                    .create(&ContainerSpec::default())
                    .await
                    .context("create")?;
                let created = start.elapsed();
                let start = Instant::now();
                c.destroy(&h)
                    .await
                    .with_context(|| format!("destroy {h}"))?;
                Ok(vec![created, start.elapsed()])
            }
            (Target::Peer(p), Op::CreateDestroy) => {
                let id = self.peer_id();
                let created = p.create(&self.bundles()?.true_, &id).await?;
                let deleted = p.delete(&id).await?;
                Ok(vec![created, deleted])
            }
            (Target::Gardend(c), Op::Run) => {
                let h = prepared.context("no prepared container")?;
                let start = Instant::now();
                let status = run_and_wait(c, h, &true_spec(), ProcessIo::default()).await?;
                let elapsed = start.elapsed();
                if status != 0 {
                    bail!("/bin/true exited {status}");
                }
                Ok(vec![elapsed])
            }
            (Target::Peer(p), Op::Run) => {
                let id = prepared.context("no prepared container")?;
                Ok(vec![p.exec(id, &["/bin/true"]).await?])
            }
        }
    }

    /// Scenario 3: `n` concurrent creates, then `n` concurrent destroys, for each level.
    pub async fn concurrency(&self) -> Vec<ConcurrentLevel> {
        let mut levels = vec![];
        for &n in &self.counts.concurrency {
            let mut rows: Vec<(String, Walls)> = self
                .targets
                .iter()
                .map(|(name, t)| {
                    (
                        name.clone(),
                        t.as_ref().map(|_| vec![]).map_err(Clone::clone),
                    )
                })
                .collect();
            for rep in 0..self.counts.concurrency_reps {
                for k in 0..rows.len() {
                    let i = (rep + k) % rows.len();
                    let Ok(target) = &self.targets[i].1 else {
                        continue;
                    };
                    let Ok(acc) = &mut rows[i].1 else { continue };
                    self.quiesce().await;
                    match self.concurrent_round(target, n).await {
                        Ok((c, d)) => acc.push((ms(c), ms(d))),
                        Err(e) => {
                            tracing::warn!("{} concurrency {n}: {e:#}", self.targets[i].0);
                            rows[i].1 = Err(format!("{e:#}"));
                        }
                    }
                }
            }
            let rows = rows
                .into_iter()
                .map(|(name, r)| {
                    let outcome = r.and_then(|reps| {
                        let c: Vec<f64> = reps.iter().map(|r| r.0).collect();
                        let d: Vec<f64> = reps.iter().map(|r| r.1).collect();
                        match (stats::median(&c), stats::median(&d)) {
                            (Some(c), Some(d)) => Ok(Concurrent {
                                reps: reps.len(),
                                create_wall_ms: c,
                                destroy_wall_ms: d,
                            }),
                            _ => Err("no repetitions".to_string()),
                        }
                    });
                    Row::new(name, outcome)
                })
                .collect();
            levels.push(ConcurrentLevel { n, rows });
        }
        levels
    }

    async fn concurrent_round(&self, target: &Target, n: usize) -> Result<(Duration, Duration)> {
        match target {
            Target::Gardend(c) => {
                let mut set = JoinSet::new();
                let start = Instant::now();
                for _ in 0..n {
                    let c = c.clone();
                    set.spawn(async move { c.create(&ContainerSpec::default()).await });
                }
                let mut handles = vec![];
                let mut first_err = None;
                while let Some(r) = set.join_next().await {
                    match r {
                        Ok(Ok(h)) => handles.push(h),
                        Ok(Err(e)) => first_err = first_err.or(Some(format!("create: {e}"))),
                        Err(e) => first_err = first_err.or(Some(format!("create task: {e}"))),
                    }
                }
                let created = start.elapsed();
                let start = Instant::now();
                for h in handles {
                    let c = c.clone();
                    set.spawn(async move { c.destroy(&h).await.map(|_| String::new()) });
                }
                while let Some(r) = set.join_next().await {
                    match r {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => first_err = first_err.or(Some(format!("destroy: {e}"))),
                        Err(e) => first_err = first_err.or(Some(format!("destroy task: {e}"))),
                    }
                }
                let destroyed = start.elapsed();
                match first_err {
                    Some(e) => bail!("{e}"),
                    None => Ok((created, destroyed)),
                }
            }
            Target::CrunCni(_) | Target::Podman(_) => bail!("lifecycle only"),
            Target::Peer(p) => {
                let bundle = self.bundles()?.true_.clone();
                let ids: Vec<String> = (0..n).map(|_| self.peer_id()).collect();
                let mut set = JoinSet::new();
                let start = Instant::now();
                for id in &ids {
                    let (p, id, bundle) = (p.clone(), id.clone(), bundle.clone());
                    set.spawn(async move { p.create(&bundle, &id).await.map(|_| ()) });
                }
                let first_err = join_all(&mut set).await;
                let created = start.elapsed();
                let start = Instant::now();
                for id in &ids {
                    let (p, id) = (p.clone(), id.clone());
                    set.spawn(async move { p.delete(&id).await.map(|_| ()) });
                }
                // Deletes of containers whose create failed fail too; report the create error.
                let delete_err = join_all(&mut set).await;
                let destroyed = start.elapsed();
                if let Some(e) = first_err.or(delete_err) {
                    p.cleanup().await;
                    bail!("{e}");
                }
                Ok((created, destroyed))
            }
        }
    }

    /// Scenario 4: process stdout to the client, StreamIn/StreamOut of a tar, and the host
    /// ceilings for the same bytes.
    pub async fn streaming(&self) -> Streaming {
        let mib = self.counts.stdout_mib;
        let reps = self.counts.stream_reps;
        let mut out = Streaming::default();

        // Process stdout: gardend, crun, runc, and the same dd on the host, interleaved.
        let mut gardend_box: Option<(Client, String)> = None;
        let mut stdout: Vec<(String, Result<Vec<f64>, String>)> = vec![];
        for (name, t) in &self.targets {
            let entry = match t {
                Ok(Target::Gardend(c)) => match c.create(&ContainerSpec::default()).await {
                    Ok(h) => {
                        gardend_box = Some((c.clone(), h));
                        Ok(vec![])
                    }
                    Err(e) => Err(format!("create: {e}")),
                },
                Ok(Target::Peer(_)) => self.bundles().map(|_| vec![]).map_err(|e| format!("{e:#}")),
                Ok(Target::CrunCni(_) | Target::Podman(_)) => Err("lifecycle only".into()),
                Err(e) => Err(e.clone()),
            };
            stdout.push((name.clone(), entry));
        }
        stdout.push(("host".into(), Ok(vec![])));
        let expected = mib << 20;
        for rep in 0..reps {
            for k in 0..stdout.len() {
                let i = (rep + k) % stdout.len();
                if stdout[i].1.is_err() {
                    continue;
                }
                let r = match self.targets.get(i).map(|(_, t)| t) {
                    Some(Ok(Target::Gardend(_))) => match &gardend_box {
                        Some((c, h)) => gardend_stdout(c, h, mib).await,
                        None => Err(anyhow::anyhow!("no container")),
                    },
                    Some(Ok(Target::Peer(p))) => match self.bundles() {
                        Ok(b) => p.run_reading_stdout(&b.dd, &self.peer_id()).await,
                        Err(e) => Err(e),
                    },
                    Some(Err(_) | Ok(Target::CrunCni(_) | Target::Podman(_))) => continue,
                    None => {
                        let args = dd_args(mib);
                        let mut all = vec!["dd"];
                        all.extend(args.iter().map(String::as_str));
                        peers::host_reading_stdout(&self.busybox, &all, None).await
                    }
                };
                let r = r.and_then(|(bytes, elapsed)| {
                    if bytes != expected {
                        bail!("read {bytes} bytes, expected {expected}");
                    }
                    Ok(stats::mb_per_s(bytes, elapsed))
                });
                match r {
                    Ok(rate) => {
                        if let Ok(acc) = &mut stdout[i].1 {
                            acc.push(rate);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("{} stdout: {e:#}", stdout[i].0);
                        stdout[i].1 = Err(format!("{e:#}"));
                    }
                }
            }
        }
        if let Some((c, h)) = &gardend_box {
            if let Err(e) = c.destroy(h).await {
                tracing::warn!("destroy {h}: {e}");
            }
        }
        out.stdout = stdout
            .into_iter()
            .map(|(name, r)| Row::new(name, r.and_then(|rates| throughput(expected, &rates))))
            .collect();

        // Tar streams: StreamIn then StreamOut into one container, and the host cat ceiling.
        let tar_path = self.scratch.join("stream.tar");
        let tar_bytes = match write_tar(&tar_path, self.counts.stream_mib) {
            Ok(b) => b,
            Err(e) => {
                let msg = format!("generate tar: {e:#}");
                out.stream_in = Some(Err(msg.clone()));
                out.stream_out = Some(Err(msg.clone()));
                out.host_cat = Some(Err(msg));
                return out;
            }
        };
        let mut host_rates = vec![];
        let mut host_err = None;
        let gardend = self
            .targets
            .iter()
            .find(|(n, _)| n == "gardend")
            .map(|(_, t)| t);
        let (mut in_rates, mut out_rates): (Result<Vec<f64>, String>, Result<Vec<f64>, String>) =
            match gardend {
                Some(Ok(_)) => (Ok(vec![]), Ok(vec![])),
                Some(Err(e)) => (Err(e.clone()), Err(e.clone())),
                None => (
                    Err("gardend not configured".into()),
                    Err("gardend not configured".into()),
                ),
            };
        let mut handle = None;
        if let Some(Ok(Target::Gardend(c))) = gardend {
            match c.create(&ContainerSpec::default()).await {
                Ok(h) => handle = Some((c.clone(), h)),
                Err(e) => {
                    in_rates = Err(format!("create: {e}"));
                    out_rates = Err(format!("create: {e}"));
                }
            }
        }
        for _ in 0..reps {
            match peers::host_reading_stdout(Path::new("cat"), &[&tar_path.to_string_lossy()], None)
                .await
            {
                Ok((bytes, elapsed)) if bytes == tar_bytes => {
                    host_rates.push(stats::mb_per_s(bytes, elapsed))
                }
                Ok((bytes, _)) => host_err = Some(format!("cat read {bytes} bytes of {tar_bytes}")),
                Err(e) => host_err = Some(format!("{e:#}")),
            }
            let Some((c, h)) = &handle else { continue };
            if let Ok(acc) = &mut in_rates {
                match gardend_stream_in(c, h, &tar_path).await {
                    Ok(elapsed) => acc.push(stats::mb_per_s(tar_bytes, elapsed)),
                    Err(e) => in_rates = Err(format!("{e:#}")),
                }
            }
            if let (Ok(acc), Ok(_)) = (&mut out_rates, &in_rates) {
                match gardend_stream_out(c, h).await {
                    // The tar coming back differs in headers; its payload is the same.
                    Ok((bytes, elapsed)) if bytes + (1 << 20) >= tar_bytes => {
                        acc.push(stats::mb_per_s(bytes, elapsed))
                    }
                    Ok((bytes, _)) => {
                        out_rates = Err(format!("StreamOut gave {bytes} bytes, sent {tar_bytes}"))
                    }
                    Err(e) => out_rates = Err(format!("{e:#}")),
                }
            } else if in_rates.is_err() && out_rates.is_ok() {
                out_rates = Err("StreamIn failed first".into());
            }
        }
        if let Some((c, h)) = &handle {
            if let Err(e) = c.destroy(h).await {
                tracing::warn!("destroy {h}: {e}");
            }
        }
        let _ = std::fs::remove_file(&tar_path);
        out.stream_in = Some(in_rates.and_then(|r| throughput(tar_bytes, &r)));
        out.stream_out = Some(out_rates.and_then(|r| throughput(tar_bytes, &r)));
        out.host_cat = Some(match host_err {
            Some(e) => Err(e),
            None => throughput(tar_bytes, &host_rates),
        });
        out
    }

    /// Scenario 5: N idle containers in gardend.
    pub async fn density(&self) -> Outcome<Density> {
        let Some((_, gardend)) = self.targets.iter().find(|(n, _)| n == "gardend") else {
            return Err("gardend not configured".into());
        };
        let client = match gardend {
            Ok(Target::Gardend(c)) => c.clone(),
            Ok(_) => return Err("gardend entry is not gardend".into()),
            Err(e) => return Err(e.clone()),
        };
        self.quiesce().await;
        density(
            &client,
            self.counts.density,
            self.counts.density_parallelism.max(1),
            self.gardend_proc.as_ref(),
        )
        .await
        .map_err(|e| format!("{e:#}"))
    }

    /// Scenario 5 for crun: the same ramp of idle containers (`run --detach` of the sleep
    /// bundle, `delete --force` to end), so that the host's own per-container costs at the
    /// full count (network and mount namespaces, sysfs, cgroups, pivot_root) show next to
    /// gardend's. runc is left out: the same kernel work, slower per container.
    pub async fn density_peers(&self) -> Vec<(String, Outcome<PeerDensity>)> {
        let Some((name, crun)) = self.targets.iter().find(|(n, _)| n == "crun") else {
            return vec![];
        };
        let outcome = match crun {
            Ok(Target::Peer(peer)) => match self.bundles() {
                Ok(b) => {
                    self.quiesce().await;
                    let ids: Vec<String> =
                        (0..self.counts.density).map(|_| self.peer_id()).collect();
                    let parallelism = self.counts.density_parallelism.max(1);
                    peer_density(peer.clone(), b.sleep.clone(), ids, parallelism)
                        .await
                        .map_err(|e| format!("{e:#}"))
                }
                Err(e) => Err(format!("{e:#}")),
            },
            Ok(_) => Err("crun entry is not crun".into()),
            Err(e) => Err(e.clone()),
        };
        vec![(name.clone(), outcome)]
    }
}

impl Env {
    /// Start every measured round with gardend idle (see [`crate::gardend::Idle`]).
    pub fn with_gardend_idle(mut self, idle: crate::gardend::Idle) -> Env {
        self.gardend_idle = Some(idle);
        self
    }

    /// Wait until gardend's background work is done (a no-op without gardend).
    async fn quiesce(&self) {
        if let Some(idle) = &self.gardend_idle {
            if !idle.wait().await {
                tracing::warn!("gardend still busy in the background after 10 s; measuring anyway");
            }
        }
    }

    /// Tell the density scenario which process is gardend and which cgroup parent it owns.
    pub fn with_gardend_process(mut self, pid: u32, cgroup_parent: String) -> Env {
        self.gardend_proc = Some((pid, cgroup_parent));
        self
    }

    /// gardend's RSS in KiB now, if gardend runs.
    pub fn gardend_rss_kib(&self) -> Option<u64> {
        let (pid, _) = self.gardend_proc.as_ref()?;
        gardend::rss_kib(*pid).ok()
    }
}

fn rows_of(results: &[(String, Samples)], index: usize) -> Vec<Row<Summary>> {
    results
        .iter()
        .map(|(name, r)| {
            let outcome = match r {
                Ok(samples) => samples
                    .get(index)
                    .and_then(|d| Summary::from_durations(d))
                    .ok_or_else(|| "no samples (0 rounds?)".to_string()),
                Err(e) => Err(e.clone()),
            };
            Row::new(name.clone(), outcome)
        })
        .collect()
}

fn throughput(bytes: u64, rates: &[f64]) -> Outcome<Throughput> {
    let median = stats::median(rates).ok_or_else(|| "no repetitions".to_string())?;
    let best = rates.iter().copied().fold(f64::MIN, f64::max);
    Ok(Throughput {
        bytes,
        reps: rates.len(),
        mb_per_s: median,
        best_mb_per_s: best,
    })
}

async fn join_all(set: &mut JoinSet<Result<()>>) -> Option<String> {
    let mut first = None;
    while let Some(r) = set.join_next().await {
        let err = match r {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => format!("task: {e}"),
        };
        first = first.or(Some(err));
    }
    first
}

async fn teardown(target: &Target, id: &str) -> Result<()> {
    match target {
        Target::Gardend(c) => Ok(c.destroy(id).await?),
        Target::Peer(p) => p.delete(id).await.map(|_| ()),
        Target::CrunCni(_) | Target::Podman(_) => bail!("lifecycle only"),
    }
}

async fn run_and_wait(c: &Client, handle: &str, spec: &ProcessSpec, io: ProcessIo) -> Result<i32> {
    let mut p = c.run(handle, spec, io).await.context("run")?;
    p.wait().await.context("wait")
}

/// create, run /bin/true and wait, destroy: [total, create, run+wait, destroy].
async fn gardend_lifecycle(c: &Client) -> Result<Vec<Duration>> {
    let t0 = Instant::now();
    let h = c
        .create(&ContainerSpec::default())
        .await
        .context("create")?;
    let t1 = Instant::now();
    let status = run_and_wait(c, &h, &true_spec(), ProcessIo::default()).await;
    let t2 = Instant::now();
    let destroyed = c.destroy(&h).await;
    let t3 = Instant::now();
    let status = status?;
    destroyed.with_context(|| format!("destroy {h}"))?;
    if status != 0 {
        bail!("/bin/true exited {status}");
    }
    Ok(vec![t3 - t0, t1 - t0, t2 - t1, t3 - t2])
}

/// An `AsyncWrite` that counts and discards.
#[derive(Clone, Default)]
struct Counter(Arc<AtomicUsize>);

impl AsyncWrite for Counter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.fetch_add(buf.len(), Ordering::Relaxed);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// dd of `mib` MiB to stdout inside the container, read by the client: bytes and time from
/// Run to the end of the stream and the exit status.
async fn gardend_stdout(c: &Client, handle: &str, mib: u64) -> Result<(u64, Duration)> {
    let counter = Counter::default();
    let spec = ProcessSpec {
        path: "/bin/dd".into(),
        args: dd_args(mib),
        ..ProcessSpec::default()
    };
    let io = ProcessIo {
        stdout: Some(Box::new(counter.clone())),
        ..ProcessIo::default()
    };
    let start = Instant::now();
    let status = run_and_wait(c, handle, &spec, io).await?;
    let elapsed = start.elapsed();
    if status != 0 {
        bail!("dd exited {status}");
    }
    Ok((counter.0.load(Ordering::Relaxed) as u64, elapsed))
}

async fn gardend_stream_in(c: &Client, handle: &str, tar: &Path) -> Result<Duration> {
    let file = tokio::fs::File::open(tar)
        .await
        .with_context(|| format!("open {}", tar.display()))?;
    let start = Instant::now();
    c.stream_in(handle, "", "/", file)
        .await
        .context("StreamIn")?;
    Ok(start.elapsed())
}

async fn gardend_stream_out(c: &Client, handle: &str) -> Result<(u64, Duration)> {
    let start = Instant::now();
    let mut r = c
        .stream_out(handle, "", "/bench-in")
        .await
        .context("StreamOut")?;
    let bytes = peers::drain(&mut r).await?;
    Ok((bytes, start.elapsed()))
}

/// Write an uncompressed tar of `mib` MiB of pseudo-random data under `bench-in/` in 8 MiB
/// files; returns its size in bytes.
pub fn write_tar(path: &Path, mib: u64) -> Result<u64> {
    const FILE_MIB: u64 = 8;
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, "bench-in/", std::io::empty())
        .context("append directory")?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut remaining = mib << 20;
    let mut index = 0;
    while remaining > 0 {
        let size = remaining.min(FILE_MIB << 20);
        let mut data = vec![0u8; size as usize];
        for chunk in data.chunks_mut(8) {
            // xorshift64: cheap bytes that no layer can compress or skip.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(size);
        builder
            .append_data(&mut h, format!("bench-in/f{index:04}"), data.as_slice())
            .context("append file")?;
        remaining -= size;
        index += 1;
    }
    let w = builder.into_inner().context("finish tar")?;
    let file = w
        .into_inner()
        .map_err(|e| e.into_error())
        .context("flush tar")?;
    Ok(file.metadata().context("stat tar")?.len())
}

/// Create `n` containers with `parallelism` in flight; measure RSS, List, destroy all.
async fn density(
    c: &Client,
    n: usize,
    parallelism: usize,
    proc: Option<&(u32, String)>,
) -> Result<Density> {
    let (pid, cgroup_parent) = proc.context("gardend's pid is unknown")?;
    let rss = || gardend::rss_kib(*pid);
    let baseline = rss()?;
    let slab_before = crate::meminfo_kib("SUnreclaim");
    let handles = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let next = Arc::new(AtomicUsize::new(0));
    let window = Arc::new(TopWindow::new(n));
    let mut set = JoinSet::new();
    let start = Instant::now();
    for _ in 0..parallelism.min(n.max(1)) {
        let (c, handles, next, window) = (c.clone(), handles.clone(), next.clone(), window.clone());
        set.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let h = c.create(&ContainerSpec::default()).await?;
                let mut handles = handles.lock().unwrap_or_else(|p| p.into_inner());
                handles.push((h, Instant::now()));
                window.completed(handles.len());
            }
            Ok::<_, garden_client::ClientError>(())
        });
    }
    let mut create_err = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => create_err = create_err.or(Some(format!("create: {e}"))),
            Err(e) => create_err = create_err.or(Some(format!("create task: {e}"))),
        }
    }
    let create_all = start.elapsed();
    let created: Vec<(String, Instant)> =
        std::mem::take(&mut *handles.lock().unwrap_or_else(|p| p.into_inner()));
    let create_rate_top = top_rate(created.iter().map(|(_, t)| *t).collect(), start);
    let handles: Vec<String> = created.into_iter().map(|(h, _)| h).collect();
    let after = rss();
    let slab_kib = slab_before.zip(crate::meminfo_kib("SUnreclaim"));
    let (init_procs, init_pss_kib) = gardend::cgroup_pss(cgroup_parent);
    let mut list_times = Vec::new();
    let mut listed = Err(anyhow::anyhow!("not listed"));
    for _ in 0..5 {
        let start = Instant::now();
        listed = c.list(&[]).await.map_err(anyhow::Error::from);
        list_times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let list_ms = stats::median(&list_times).unwrap_or(f64::NAN);
    let destroyed = Arc::new(Mutex::new(Vec::with_capacity(n)));

    let queue = Arc::new(Mutex::new(handles.clone()));
    let start = Instant::now();
    for _ in 0..parallelism {
        let (c, queue, destroyed) = (c.clone(), queue.clone(), destroyed.clone());
        set.spawn(async move {
            loop {
                let Some(h) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                    return Ok(());
                };
                c.destroy(&h).await?;
                let mut destroyed = destroyed.lock().unwrap_or_else(|p| p.into_inner());
                destroyed.push(Instant::now());
            }
        });
    }
    let mut destroy_err = None;
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => destroy_err = destroy_err.or(Some(format!("destroy: {e}"))),
            Err(e) => destroy_err = destroy_err.or(Some(format!("destroy task: {e}"))),
        }
    }
    let destroy_all = start.elapsed();
    let destroy_rate_top = bottom_rate(
        std::mem::take(&mut *destroyed.lock().unwrap_or_else(|p| p.into_inner())),
        start,
    );
    let reclaimed_ms = gardend::wait_cgroups_gone(cgroup_parent, Duration::from_secs(300))
        .await
        .then(|| ms(start.elapsed()));
    if let Some(e) = create_err.or(destroy_err) {
        bail!("{e} ({} of {n} containers created)", handles.len());
    }
    let listed = listed.context("list")?;
    if listed.len() < n {
        bail!("List returned {} handles after {n} creates", listed.len());
    }
    Ok(Density {
        containers: n,
        parallelism,
        baseline_rss_kib: baseline,
        rss_kib: after?,
        container_procs: init_procs,
        container_pss_kib: init_pss_kib,
        slab_kib,
        create_all_ms: ms(create_all),
        list_ms,
        listed: listed.len(),
        destroy_all_ms: ms(destroy_all),
        create_rate_top,
        destroy_rate_top,
        cpu_top: window.per_op(),
        reclaimed_ms,
    })
}

/// `ids.len()` idle crun containers, `parallelism` invocations in flight, then all deleted.
/// Every container that was made is deleted, even when a create failed.
async fn peer_density(
    peer: Arc<Peer>,
    bundle: PathBuf,
    ids: Vec<String>,
    parallelism: usize,
) -> Result<PeerDensity> {
    let n = ids.len();
    let queue = Arc::new(Mutex::new(ids));
    let made = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let window = Arc::new(TopWindow::new(n));
    let mut set = JoinSet::new();
    let start = Instant::now();
    for _ in 0..parallelism.min(n.max(1)) {
        let (peer, bundle, queue, made, window) = (
            peer.clone(),
            bundle.clone(),
            queue.clone(),
            made.clone(),
            window.clone(),
        );
        set.spawn(async move {
            loop {
                let Some(id) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                    return Ok(());
                };
                let r = peer.run_detached(&bundle, &id).await;
                // A failed `run` may still have left state behind: delete it with the rest.
                let mut made = made.lock().unwrap_or_else(|p| p.into_inner());
                made.push((id, Instant::now()));
                if r.is_ok() {
                    window.completed(made.len());
                }
                drop(made);
                r?;
            }
        });
    }
    let create_err = join_all(&mut set).await;
    let create_all = start.elapsed();
    let made: Vec<(String, Instant)> =
        std::mem::take(&mut *made.lock().unwrap_or_else(|p| p.into_inner()));
    let create_rate_top = top_rate(made.iter().map(|(_, t)| *t).collect(), start);
    let queue = Arc::new(Mutex::new(
        made.into_iter().map(|(id, _)| id).collect::<Vec<_>>(),
    ));
    let deleted = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let start = Instant::now();
    for _ in 0..parallelism {
        let (peer, queue, deleted) = (peer.clone(), queue.clone(), deleted.clone());
        set.spawn(async move {
            let mut first_err = None;
            loop {
                let Some(id) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                    return first_err.map_or(Ok(()), Err);
                };
                match peer.delete(&id).await {
                    Ok(_) => deleted
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Instant::now()),
                    Err(e) => first_err = first_err.or(Some(e)),
                }
            }
        });
    }
    let delete_err = join_all(&mut set).await;
    let destroy_all = start.elapsed();
    let destroy_rate_top = bottom_rate(
        std::mem::take(&mut *deleted.lock().unwrap_or_else(|p| p.into_inner())),
        start,
    );
    if let Some(e) = create_err.or(delete_err) {
        peer.cleanup().await;
        bail!("{e}");
    }
    Ok(PeerDensity {
        containers: n,
        create_all_ms: ms(create_all),
        create_rate_top,
        destroy_all_ms: ms(destroy_all),
        destroy_rate_top,
        cpu_top: window.per_op(),
    })
}

/// Completions per second over the last tenth of `done` (completion times of work that began
/// at `start`): the rate at the top of a ramp.
fn top_rate(mut done: Vec<Instant>, start: Instant) -> f64 {
    done.sort();
    let k = (done.len() / 10).max(1);
    if done.len() <= k {
        return rate(done.len(), done.last().map(|t| *t - start));
    }
    let from = done[done.len() - 1 - k];
    rate(k, done.last().map(|t| *t - from))
}

/// Completions per second over the first tenth of `done` (completion times of work that began
/// at `start`).
fn bottom_rate(mut done: Vec<Instant>, start: Instant) -> f64 {
    done.sort();
    let k = (done.len() / 10).max(1).min(done.len());
    rate(k, done.get(k.saturating_sub(1)).map(|t| *t - start))
}

fn rate(count: usize, over: Option<Duration>) -> f64 {
    match over {
        Some(d) if d > Duration::ZERO => count as f64 / d.as_secs_f64(),
        _ => f64::NAN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_has_the_requested_payload() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.tar");
        let size = write_tar(&path, 9).unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        let mut archive = tar::Archive::new(std::fs::File::open(&path).unwrap());
        let mut names = vec![];
        let mut payload = 0;
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            payload += e.header().size().unwrap();
            names.push(e.path().unwrap().to_string_lossy().into_owned());
        }
        assert_eq!(names, ["bench-in/", "bench-in/f0000", "bench-in/f0001"]);
        assert_eq!(payload, 9 << 20);
    }

    #[test]
    fn rows_of_picks_the_quantity_and_keeps_errors() {
        let results = vec![
            (
                "gardend".to_string(),
                Ok(vec![
                    vec![Duration::from_millis(4)],
                    vec![Duration::from_millis(8)],
                ]),
            ),
            ("crun".to_string(), Err("crun not installed".to_string())),
        ];
        let rows = rows_of(&results, 1);
        assert_eq!(rows[0].outcome.as_ref().unwrap().p50, 8.0);
        assert_eq!(rows[1].outcome.as_ref().unwrap_err(), "crun not installed");
        assert!(rows_of(&results, 2)[0].outcome.is_err());
    }

    #[test]
    fn throughput_takes_median_and_best() {
        let t = throughput(100, &[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((t.mb_per_s, t.best_mb_per_s, t.reps), (2.0, 3.0, 3));
        assert!(throughput(100, &[]).is_err());
    }
}
