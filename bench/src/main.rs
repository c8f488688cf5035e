//! `bench`: gardend side by side with crun and runc, one command, one table.
//!
//! `cargo run --release -p bench -- --quick --json FILE` (or `--full`). Starts a private
//! gardend from the same target directory, prepares an OCI bundle on a busybox rootfs for the
//! peers, runs the scenarios interleaved, prints a markdown table and writes the JSON.

mod agent;
mod bundle;
mod cni;
mod cpu;
mod gardend;
mod images;
mod netclean;
mod peers;
mod podman;
mod report;
mod scenarios;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use crate::peers::{Kind, Peer};
use crate::report::Report;
use crate::scenarios::{Bundles, Counts, Env, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// create, run /bin/true, destroy.
    Lifecycle,
    /// create alone, destroy alone, run in an existing container.
    Ops,
    /// concurrent creates then destroys.
    Concurrency,
    /// process stdout, StreamIn, StreamOut and host ceilings.
    Streaming,
    /// many idle containers: RSS, list, destroy all.
    Density,
    /// the cell agent: start message to RUNNING instance, alone and in a burst.
    Agent,
    /// create from a cached registry image vs a directory, and a cold pull.
    Images,
    /// kill -9 and restart gardend with containers and processes running (gardend only).
    Restart,
}

/// gardend vs crun vs runc. Prints a markdown table; `--json FILE` writes the same figures.
#[derive(Debug, Parser)]
#[command(name = "bench", version)]
struct Cli {
    /// Small counts, under 2 minutes (the default).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Full counts (1 GiB stdout, 5,000 idle containers ...), under 20 minutes.
    #[arg(long)]
    full: bool,
    /// Also write the figures as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Measure crun and runc only; do not start gardend.
    #[arg(long, conflicts_with = "no_peers")]
    peers_only: bool,
    /// Measure gardend only.
    #[arg(long)]
    no_peers: bool,
    /// Scenarios to run (comma-separated); default all.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    scenarios: Option<Vec<Scenario>>,
    /// Unrecorded rounds before each latency scenario.
    #[arg(long)]
    warmup: Option<usize>,
    /// Recorded lifecycle rounds per runtime.
    #[arg(long)]
    lifecycle_rounds: Option<usize>,
    /// Recorded rounds of create/destroy and of run-in-existing-container.
    #[arg(long)]
    ops_rounds: Option<usize>,
    /// Concurrency levels (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    concurrency: Option<Vec<usize>>,
    /// Repetitions per concurrency level (the median is reported).
    #[arg(long)]
    concurrency_reps: Option<usize>,
    /// MiB a process writes to stdout.
    #[arg(long)]
    stdout_mib: Option<u64>,
    /// MiB of payload in the StreamIn/StreamOut tar.
    #[arg(long)]
    stream_mib: Option<u64>,
    /// Repetitions of each stream (the median is reported).
    #[arg(long)]
    stream_reps: Option<usize>,
    /// Subnet of the crun+cni peer's bridge (default 10.222.<pid % 256>.0/24).
    #[arg(long, value_name = "CIDR")]
    cni_subnet: Option<String>,
    /// Subnet of the podman peer's network (default 10.223.<pid % 256>.0/24).
    #[arg(long, value_name = "CIDR")]
    podman_subnet: Option<String>,
    /// Idle containers in the density scenario.
    #[arg(long)]
    density: Option<usize>,
    /// Creates/destroys in flight in the density scenario.
    #[arg(long)]
    density_parallelism: Option<usize>,
    /// Recorded single-instance starts in the agent scenario.
    #[arg(long)]
    agent_rounds: Option<usize>,
    /// Instances started at once in the agent scenario.
    #[arg(long)]
    agent_burst: Option<usize>,
    /// Recorded creates of each kind in the images scenario.
    #[arg(long)]
    image_rounds: Option<usize>,
    /// gardend binary (default: next to this executable).
    #[arg(long, value_name = "PATH")]
    gardend: Option<PathBuf>,
    /// gardend's --log-level (debug logs per-phase timings of create and destroy).
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    gardend_log_level: String,
    /// Keep gardend's log: copy it to FILE at the end.
    #[arg(long, value_name = "FILE")]
    gardend_log: Option<PathBuf>,
    /// gardend's --network-pool: a pool of its own (not the default other gardends on the host
    /// may use), large enough for --density containers (one /30 each: a /17 holds 8,192).
    #[arg(long, value_name = "CIDR", default_value = "10.221.0.0/17")]
    gardend_network_pool: String,
    /// gardend's --warm-containers: containers it keeps made ahead of demand (0 = none). Every
    /// measured round of every runtime starts once gardend is idle (pool full, no destroyed
    /// container still being reclaimed), so no runtime pays for gardend's background work.
    #[arg(long, value_name = "N", default_value_t = 8)]
    warm_containers: usize,
    /// Extra argument for gardend (repeatable), e.g. --gardend-arg=--max-containers=2000.
    #[arg(long = "gardend-arg", value_name = "ARG", allow_hyphen_values = true)]
    gardend_args: Vec<String>,
}

impl Cli {
    fn mode(&self) -> &'static str {
        if self.full {
            "full"
        } else {
            "quick"
        }
    }

    fn counts(&self) -> Result<Counts> {
        let mut c = if self.full {
            Counts {
                warmup: 5,
                lifecycle: 200,
                ops: 200,
                concurrency: vec![10, 50, 100],
                concurrency_reps: 3,
                stdout_mib: 1024,
                stream_mib: 256,
                stream_reps: 3,
                density: 5000,
                density_parallelism: 16,
            }
        } else {
            Counts {
                warmup: 2,
                lifecycle: 20,
                ops: 20,
                concurrency: vec![10, 50, 100],
                concurrency_reps: 1,
                stdout_mib: 128,
                stream_mib: 64,
                stream_reps: 3,
                density: 100,
                density_parallelism: 8,
            }
        };
        c.warmup = self.warmup.unwrap_or(c.warmup);
        c.lifecycle = self.lifecycle_rounds.unwrap_or(c.lifecycle);
        c.ops = self.ops_rounds.unwrap_or(c.ops);
        c.concurrency = self.concurrency.clone().unwrap_or(c.concurrency);
        c.concurrency_reps = self.concurrency_reps.unwrap_or(c.concurrency_reps);
        c.stdout_mib = self.stdout_mib.unwrap_or(c.stdout_mib);
        c.stream_mib = self.stream_mib.unwrap_or(c.stream_mib);
        c.stream_reps = self.stream_reps.unwrap_or(c.stream_reps);
        c.density = self.density.unwrap_or(c.density);
        c.density_parallelism = self.density_parallelism.unwrap_or(c.density_parallelism);
        if c.lifecycle == 0 || c.ops == 0 || c.concurrency_reps == 0 || c.stream_reps == 0 {
            bail!("round and repetition counts must be at least 1");
        }
        if c.concurrency.contains(&0) {
            bail!("concurrency levels must be at least 1");
        }
        if c.stdout_mib == 0 || c.stream_mib == 0 {
            bail!("--stdout-mib and --stream-mib must be at least 1");
        }
        if c.density == 0 || c.density_parallelism == 0 {
            bail!("--density and --density-parallelism must be at least 1");
        }
        Ok(c)
    }

    fn wants(&self, s: Scenario) -> bool {
        self.scenarios.as_ref().is_none_or(|list| list.contains(&s))
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let counts = cli.counts()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start tokio")?;
    let report = runtime.block_on(run(&cli, counts))?;
    print!("{}", report::to_markdown(&report));
    if let Some(path) = &cli.json {
        let text =
            serde_json::to_string_pretty(&report::to_json(&report)).context("encode JSON")?;
        std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

async fn run(cli: &Cli, counts: Counts) -> Result<Report> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench must run as root (it creates containers with gardend, crun and runc)");
    }
    let scratch = tempfile::Builder::new()
        .prefix("gardend-bench-")
        .tempdir()
        .context("create scratch dir")?;
    let busybox = bundle::find_busybox()?;
    let rootfs = scratch.path().join("rootfs");
    rootfs::ensure_busybox_rootfs(&rootfs)
        .with_context(|| format!("build the busybox rootfs at {}", rootfs.display()))?;

    let mut report = Report {
        mode: cli.mode().into(),
        ..Report::default()
    };
    let osrelease = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    report
        .environment
        .push(("kernel".into(), osrelease.trim().into()));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    report.environment.push(("cores".into(), cores.to_string()));
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loadavg: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    report
        .environment
        .push(("load at start".into(), loadavg.join(" ")));
    // Host state that earlier runs leave and that slows every container create: memory
    // cgroups (dying ones included: a removed memory cgroup lingers while pages charged to
    // it stay cached, each holding per-superblock tables) and unreclaimable kernel slab.
    if let Some(n) = memory_cgroups() {
        report
            .environment
            .push(("memory cgroups at start".into(), n.to_string()));
    }
    if let Some(kib) = meminfo_kib("SUnreclaim") {
        report.environment.push((
            "unreclaimable slab at start".into(),
            format!("{} MiB", kib / 1024),
        ));
    }
    // The kernel's own access monitor: its rmap walks visit every process that maps a
    // sampled page, so with thousands of containers (each init mapping the same binary and
    // libraries) it took 10-20% of this host's CPU during the density ramp.
    if let Some(damon) = damon_running() {
        report.environment.push(("DAMON".into(), damon));
    }
    let hybrid = peers::hybrid_unified_mounted();
    report.environment.push((
        "cgroups".into(),
        if hybrid { "v1 hybrid" } else { "as mounted" }.into(),
    ));

    // Peers: detect, write bundles from the first one's spec template, check they run.
    let mut peer_targets: Vec<(String, Result<Target, String>)> = vec![];
    let mut bundles = None;
    for kind in [Kind::Crun, Kind::Runc] {
        if cli.no_peers {
            peer_targets.push((kind.name().into(), Err("skipped (--no-peers)".into())));
            continue;
        }
        let peer = match Peer::detect(kind, scratch.path()) {
            Ok(p) => p,
            Err(e) => {
                progress(&format!("{}: unavailable: {e:#}", kind.name()));
                peer_targets.push((kind.name().into(), Err(format!("{e:#}"))));
                continue;
            }
        };
        report
            .environment
            .push((kind.name().into(), peer.version.clone()));
        if bundles.is_none() {
            match write_bundles(&peer, scratch.path(), &rootfs, counts.stdout_mib) {
                Ok(b) => bundles = Some(b),
                Err(e) => {
                    peer_targets.push((kind.name().into(), Err(format!("bundle: {e:#}"))));
                    continue;
                }
            }
        }
        let Some(b) = &bundles else { continue };
        let check = peer
            .run(
                &b.true_,
                &format!("bench-{}-check-{}", std::process::id(), kind.name()),
            )
            .await;
        match check {
            Ok(_) => peer_targets.push((kind.name().into(), Ok(Target::Peer(Arc::new(peer))))),
            Err(e) => {
                progress(&format!("{}: cannot run the bundle: {e:#}", kind.name()));
                peer.cleanup().await;
                peer_targets.push((kind.name().into(), Err(format!("cannot run: {e:#}"))));
            }
        }
    }
    // Chains the CNI plugins and netavark share between their containers and leave behind:
    // those already on the host stay, the ones the bench makes are removed at the end.
    let chain_prefixes = ["CNI-", podman::CHAIN_PREFIX];
    let chains_before: Vec<Vec<String>> = chain_prefixes
        .iter()
        .map(|p| netclean::chains_with_prefix(p).unwrap_or_default())
        .collect();
    let lifecycle_only = if cli.no_peers || !cli.wants(Scenario::Lifecycle) {
        vec![]
    } else {
        networked_peers(
            cli,
            &peer_targets,
            bundles.as_ref(),
            scratch.path(),
            &rootfs,
            &mut report,
        )
        .await
    };
    if hybrid {
        report.notes.push(
            "crun 1.8 refuses this hybrid cgroup layout, so each crun invocation runs in a private mount \
             namespace with /sys/fs/cgroup/unified detached (set up in the forked child, not timed separately)"
                .into(),
        );
    }
    report.notes.push(
        "crun/runc `run` in the foreground delete the container when it exits, so their lifecycle is one \
         `run`; create/destroy alone are `create` / `delete --force`, run alone is `exec` into a running \
         container; peers use their `spec` defaults (pid, ipc, uts, mount, network namespaces)"
            .into(),
    );

    // The images scenario's registry comes first: gardend must know it at start.
    let image_fixture = (cli.wants(Scenario::Images) && !cli.peers_only).then(|| {
        let mib = if cli.full { 128 } else { 32 };
        progress(&format!(
            "images: building and pushing a busybox + {mib} MiB image"
        ));
        images::prepare(&rootfs, mib).map_err(|e| format!("{e:#}"))
    });

    // gardend.
    let mut server = None;
    let gardend_target: Result<Target, String> = if cli.peers_only {
        Err("skipped (--peers-only)".into())
    } else {
        let bin = match &cli.gardend {
            Some(p) => Ok(p.clone()),
            None => gardend::default_binary(),
        };
        let mut gardend_args = vec![
            "--network-pool".to_string(),
            cli.gardend_network_pool.clone(),
            format!("--warm-containers={}", cli.warm_containers),
        ];
        if let Some(Ok(f)) = &image_fixture {
            // Cold pulls: every destroy removes the layers no container uses.
            gardend_args.extend([
                "--insecure-docker-registry".to_string(),
                f.host.clone(),
                "--graph-cleanup-threshold-in-megabytes".to_string(),
                "0".to_string(),
            ]);
        }
        gardend_args.extend(cli.gardend_args.iter().cloned());
        let started = match bin {
            Ok(bin) => {
                report
                    .environment
                    .push(("gardend".into(), bin.display().to_string()));
                gardend::Gardend::start(&bin, scratch.path(), &cli.gardend_log_level, &gardend_args)
                    .await
            }
            Err(e) => Err(e),
        };
        match started {
            Ok(g) => {
                let t = Target::Gardend(g.client());
                server = Some(g);
                Ok(t)
            }
            Err(e) => {
                progress(&format!("gardend: unavailable: {e:#}"));
                Err(format!("{e:#}"))
            }
        }
    };
    report.notes.push(format!(
        "gardend runs with --log-level {} and --warm-containers {} and is driven over TCP \
         loopback by garden-client (one connection per request, as Garden clients do); every \
         measured round of every runtime starts once gardend is idle (warm containers all made, \
         no destroyed container still being reclaimed)",
        cli.gardend_log_level, cli.warm_containers
    ));
    if !cli.peers_only {
        report.notes.push(format!(
            "gardend gives each container Garden networking (a /30 from {}, routed veth pair, \
             iptables chains); bare crun and runc get an unconfigured network namespace (loopback \
             only); crun+cni and podman do the same network work as gardend (veth, address, NAT)",
            cli.gardend_network_pool
        ));
    }
    let mut targets = vec![("gardend".to_string(), gardend_target)];
    targets.extend(peer_targets);

    let mut env = Env::new(
        targets,
        bundles,
        scratch.path().to_path_buf(),
        busybox,
        counts.clone(),
    );
    env.lifecycle_only = lifecycle_only;
    if let Some(g) = &server {
        env = env
            .with_gardend_process(g.pid, g.cgroup_parent.clone())
            .with_gardend_idle(g.idle(cli.warm_containers));
    }

    // On Ctrl-C, drop the scenario in flight (its children are killed on drop) and clean up.
    let result = tokio::select! {
        r = scenarios(cli, &env, &counts, &mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; cleaning up")),
    };

    if result.is_ok() && cli.wants(Scenario::Agent) {
        report.agent = Some(match &server {
            None => Err("skipped (no gardend)".into()),
            Some(g) => {
                let (rounds, burst) = if cli.full { (20, 50) } else { (5, 10) };
                let rounds = cli.agent_rounds.unwrap_or(rounds).max(1);
                let burst = cli.agent_burst.unwrap_or(burst).max(1);
                let t = Instant::now();
                progress(&format!(
                    "agent: {rounds} single starts, a burst of {burst}"
                ));
                let bin_dir = gardend::default_binary()?
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default();
                let r = agent::measure(
                    &g.client(),
                    &format!("127.0.0.1:{}", g.port),
                    &bin_dir,
                    scratch.path(),
                    rounds,
                    burst,
                )
                .await
                .map_err(|e| format!("{e:#}"));
                progress(&format!(
                    "agent: done in {:.1} s",
                    t.elapsed().as_secs_f64()
                ));
                r
            }
        });
    }

    if result.is_ok() {
        if let Some(fixture) = &image_fixture {
            report.images = Some(match (fixture, &server) {
                (Err(e), _) => Err(e.clone()),
                (Ok(_), None) => Err("skipped (no gardend)".into()),
                (Ok(f), Some(g)) => {
                    let rounds = cli.image_rounds.unwrap_or(if cli.full { 20 } else { 5 });
                    let t = Instant::now();
                    progress(&format!("images: {rounds} rounds of each create"));
                    let store = scratch.path().join("images");
                    let r = images::measure(&g.client(), f, &store, rounds.max(1))
                        .await
                        .map_err(|e| format!("{e:#}"));
                    progress(&format!(
                        "images: done in {:.1} s",
                        t.elapsed().as_secs_f64()
                    ));
                    r
                }
            });
        }
    }

    if result.is_ok() && cli.wants(Scenario::Restart) {
        if let Some(g) = server.as_mut() {
            let (containers, restarts) = if cli.full { (100, 20) } else { (20, 5) };
            let t = Instant::now();
            progress(&format!(
                "restart: {containers} containers with a process each, {restarts} kill -9 restarts"
            ));
            let note = match restart_soak(g, containers, restarts).await {
                Ok(note) => note,
                Err(e) => format!("restart: failed: {e:#}"),
            };
            progress(&format!(
                "restart: done in {:.1} s",
                t.elapsed().as_secs_f64()
            ));
            report.notes.push(note);
        }
    }

    if let Some(mut g) = server {
        if let Ok(handles) = g.client().list(&[]).await {
            if !handles.is_empty() {
                report.notes.push(format!(
                    "{} gardend containers were left at the end and destroyed",
                    handles.len()
                ));
            }
        }
        g.stop().await;
        match netclean::remove_instance_chains(&g.cgroup_parent) {
            Ok(n) => tracing::info!("removed {n} iptables chains of {}", g.cgroup_parent),
            Err(e) => report
                .notes
                .push(format!("could not remove gardend's iptables chains: {e:#}")),
        }
        let left = gardend::remove_cgroup_parent(&g.cgroup_parent);
        if !left.is_empty() {
            report.notes.push(format!(
                "cgroup {} still has tasks after gardend stopped, in: {}",
                g.cgroup_parent,
                left.join(", ")
            ));
        }
        if let Some(keep) = &cli.gardend_log {
            if let Err(e) = std::fs::copy(&g.log, keep) {
                progress(&format!("copy gardend log to {}: {e}", keep.display()));
            }
        }
    }
    for (_, t) in env.targets.iter().chain(&env.lifecycle_only) {
        if let Ok(t) = t {
            t.cleanup().await;
        }
    }
    for (prefix, before) in chain_prefixes.iter().zip(&chains_before) {
        if let Err(e) = netclean::remove_chains(prefix, before) {
            report.notes.push(format!(
                "could not remove the {prefix}* iptables chains: {e:#}"
            ));
        }
    }
    result?;
    Ok(report)
}

async fn scenarios(cli: &Cli, env: &Env, counts: &Counts, report: &mut Report) -> Result<()> {
    rss_checkpoint(env, report, "start");
    if cli.wants(Scenario::Lifecycle) {
        let t = Instant::now();
        progress(&format!(
            "lifecycle: {} rounds (+{} warm-up)",
            counts.lifecycle, counts.warmup
        ));
        let (rows, phases) = env.lifecycle().await;
        report.lifecycle = Some(rows);
        report.lifecycle_phases = phases;
        progress(&format!(
            "lifecycle: done in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        rss_checkpoint(env, report, "lifecycle");
    }
    if cli.wants(Scenario::Ops) {
        let t = Instant::now();
        progress(&format!(
            "create/destroy and run alone: {} rounds each",
            counts.ops
        ));
        let (create, destroy) = env.create_destroy().await;
        report.create = Some(create);
        report.destroy = Some(destroy);
        report.run = Some(env.run_in_existing().await);
        progress(&format!("ops: done in {:.1} s", t.elapsed().as_secs_f64()));
        rss_checkpoint(env, report, "ops");
    }
    if cli.wants(Scenario::Concurrency) {
        let t = Instant::now();
        progress(&format!(
            "concurrency: {:?} x {} reps",
            counts.concurrency, counts.concurrency_reps
        ));
        report.concurrent = Some(env.concurrency().await);
        progress(&format!(
            "concurrency: done in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        rss_checkpoint(env, report, "concurrency");
    }
    // Density before streaming: its RSS figures should reflect containers, not the buffers
    // of large transfers (the RSS after each scenario is reported separately).
    if cli.wants(Scenario::Density) {
        let t = Instant::now();
        progress(&format!("density: {} containers", counts.density));
        if !cli.peers_only {
            report.density = Some(env.density().await);
            progress(&format!(
                "density: done in {:.1} s",
                t.elapsed().as_secs_f64()
            ));
            rss_checkpoint(env, report, "density");
        }
        if !cli.no_peers {
            let t = Instant::now();
            progress(&format!("density: crun, {} containers", counts.density));
            report.density_peers = env.density_peers().await;
            progress(&format!(
                "density: crun done in {:.1} s",
                t.elapsed().as_secs_f64()
            ));
        }
    }
    if cli.wants(Scenario::Streaming) {
        let t = Instant::now();
        progress(&format!(
            "streaming: stdout {} MiB, tar {} MiB, {} reps",
            counts.stdout_mib, counts.stream_mib, counts.stream_reps
        ));
        report.streaming = Some(env.streaming().await);
        progress(&format!(
            "streaming: done in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        rss_checkpoint(env, report, "streaming");
    }
    Ok(())
}

/// The peers doing gardend's network work, for the lifecycle: crun with CNI (bridge,
/// host-local, portmap) and podman with its bridge network. Each is checked with one run.
async fn networked_peers(
    cli: &Cli,
    peer_targets: &[(String, Result<Target, String>)],
    bundles: Option<&Bundles>,
    scratch: &std::path::Path,
    rootfs: &std::path::Path,
    report: &mut Report,
) -> Vec<(String, Result<Target, String>)> {
    let octet = std::process::id() % 256;
    let tag = netclean::instance_tag(&format!("bench-{}", std::process::id()));
    let mut out = vec![];

    let crun = peer_targets.iter().find_map(|(_, t)| match t {
        Ok(Target::Peer(p)) if p.kind == Kind::Crun => Some(p.clone()),
        _ => None,
    });
    let cni = match (crun, bundles) {
        (Some(crun), Some(b)) => {
            let mut crun = (*crun).clone();
            crun.state = scratch.join("crun-cni-state");
            let subnet = cli
                .cni_subnet
                .clone()
                .unwrap_or_else(|| format!("10.222.{octet}.0/24"));
            std::fs::create_dir_all(&crun.state)
                .context("create crun+cni state dir")
                .and_then(|_| {
                    cni::CniPeer::new(
                        crun,
                        &b.true_,
                        &scratch.join("cni"),
                        &format!("bcni{tag}"),
                        &subnet,
                    )
                })
                .map_err(|e| format!("{e:#}"))
        }
        _ => Err("needs crun and its bundle".to_string()),
    };
    let cni = match cni {
        Ok(p) => {
            let p = Arc::new(p);
            let check = p
                .lifecycle(&format!("bench-{}-check-cni", std::process::id()))
                .await;
            match check {
                Ok(_) => Ok(Target::CrunCni(p)),
                Err(e) => {
                    Target::CrunCni(p).cleanup().await;
                    Err(format!("cannot run: {e:#}"))
                }
            }
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &cni {
        progress(&format!("crun+cni: unavailable: {e}"));
    }
    out.push(("crun+cni".to_string(), cni));

    let subnet = cli
        .podman_subnet
        .clone()
        .unwrap_or_else(|| format!("10.223.{octet}.0/24"));
    let podman = match podman::Podman::detect(
        &scratch.join("podman"),
        rootfs,
        &format!("bpm{tag}"),
        &subnet,
    ) {
        Ok(p) => {
            report
                .environment
                .push(("podman".into(), p.version.clone()));
            let p = Arc::new(p);
            // The first run also initialises podman's storage: unrecorded, like a warm-up.
            match p
                .lifecycle(&format!("bench-{}-check-podman", std::process::id()))
                .await
            {
                Ok(_) => Ok(Target::Podman(p)),
                Err(e) => {
                    Target::Podman(p).cleanup().await;
                    Err(format!("cannot run: {e:#}"))
                }
            }
        }
        Err(e) => Err(format!("{e:#}")),
    };
    if let Err(e) = &podman {
        progress(&format!("podman: unavailable: {e}"));
        report.notes.push(format!("podman not measured: {e}"));
    }
    out.push(("podman".to_string(), podman));
    report.notes.push(
        "crun+cni: a network namespace pinned at a path, CNI ADD of Debian's bridge (host-local \
         IPAM, gateway, ipMasq) and portmap plugins executed as libcni does, `crun run` of a bundle \
         joining it, CNI DEL and the namespace removed; podman: `podman run --rm --network bridge \
         --rootfs DIR /bin/true` (netavark, cgroupfs, private storage and containers.conf, in \
         crun's private mount namespace); both in the lifecycle only"
            .into(),
    );
    out
}

/// `containers` containers with a sleeping process each, then `restarts` rounds of kill -9 and
/// restart: the time from the new start to Ping, and whether every container and process is
/// still there (each process is attached and killed at the end). The finding as a note.
async fn restart_soak(
    g: &mut gardend::Gardend,
    containers: usize,
    restarts: usize,
) -> Result<String> {
    let c = g.client();
    let handles: Vec<String> = (0..containers)
        .map(|i| format!("bench-restart-{i}"))
        .collect();
    let spec = garden_api::ProcessSpec {
        id: "sleeper".into(),
        path: "sleep".into(),
        args: vec!["100000".into()],
        ..Default::default()
    };
    for h in &handles {
        c.create(&garden_api::ContainerSpec {
            handle: h.clone(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("create {h}"))?;
        c.run(h, &spec, garden_client::ProcessIo::default())
            .await
            .with_context(|| format!("run in {h}"))?;
    }
    let mut ms = Vec::new();
    let mut lost = 0;
    for _ in 0..restarts {
        ms.push(g.kill_and_restart().await?.as_secs_f64() * 1e3);
        let listed = c.list(&[]).await.context("list after restart")?;
        lost += handles.iter().filter(|h| !listed.contains(h)).count();
    }
    let mut attached = 0;
    for h in &handles {
        let Ok(mut p) = c
            .attach(h, "sleeper", garden_client::ProcessIo::default())
            .await
        else {
            continue;
        };
        let _ = p.control().signal(garden_api::Signal::Kill).await;
        if p.wait().await.ok() == Some(137) {
            attached += 1;
        }
    }
    for h in &handles {
        let _ = c.destroy(h).await;
    }
    ms.sort_by(f64::total_cmp);
    Ok(format!(
        "restart: {containers} containers with a running process each, {restarts} kill -9 \
         restarts with the same flags: start to Ping p50 {:.0} ms, max {:.0} ms; containers \
         lost {lost}; processes re-attached after the last restart {attached}/{containers}",
        ms[ms.len() / 2],
        ms[ms.len() - 1]
    ))
}

/// Record gardend's RSS after a scenario, to see which one grows it.
fn rss_checkpoint(env: &Env, report: &mut Report, after: &str) {
    if let Some(kib) = env.gardend_rss_kib() {
        report.gardend_rss.push((after.to_string(), kib));
    }
}

/// The bundles for /bin/true, a long sleep and the stdout dd, from `peer`'s spec template.
fn write_bundles(
    peer: &Peer,
    scratch: &std::path::Path,
    rootfs: &std::path::Path,
    stdout_mib: u64,
) -> Result<Bundles> {
    let template = bundle::spec_template(&peer.bin, &scratch.join("spec-template"))?;
    let dd: Vec<String> = std::iter::once("/bin/dd".to_string())
        .chain(scenarios::dd_args(stdout_mib))
        .collect();
    let dd: Vec<&str> = dd.iter().map(String::as_str).collect();
    Ok(Bundles {
        true_: bundle::write_bundle(
            &scratch.join("bundle-true"),
            &template,
            rootfs,
            &["/bin/true"],
        )?,
        sleep: bundle::write_bundle(
            &scratch.join("bundle-sleep"),
            &template,
            rootfs,
            &["/bin/sleep", "100000"],
        )?,
        dd: bundle::write_bundle(&scratch.join("bundle-dd"), &template, rootfs, &dd)?,
    })
}

/// `num_cgroups` of the memory controller in /proc/cgroups (live and dying ones).
fn memory_cgroups() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/cgroups").ok()?;
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"memory"))
        .and_then(|f| f.get(2)?.parse().ok())
}

/// The running DAMON contexts' operations and actions ("paddr: pageout"), from its sysfs
/// admin tree; `None` when none runs (or DAMON is not built in).
fn damon_running() -> Option<String> {
    let read = |p: std::path::PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let dirs = |p: std::path::PathBuf| {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
    };
    let mut running = vec![];
    for k in dirs("/sys/kernel/mm/damon/admin/kdamonds".into()) {
        if read(k.join("state")).as_deref() != Some("on") {
            continue;
        }
        for c in dirs(k.join("contexts")) {
            let ops = read(c.join("operations")).unwrap_or_default();
            let actions: Vec<String> = dirs(c.join("schemes"))
                .filter_map(|s| read(s.join("action")))
                .collect();
            running.push(format!("{ops}: {}", actions.join("+")));
        }
    }
    (!running.is_empty()).then(|| format!("on ({})", running.join(", ")))
}

/// A `/proc/meminfo` field, in KiB.
pub(crate) fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_is_the_default_and_flags_override_counts() {
        let cli = Cli::parse_from(["bench", "--lifecycle-rounds", "7", "--concurrency", "3,4"]);
        assert_eq!(cli.mode(), "quick");
        let c = cli.counts().unwrap();
        assert_eq!(c.lifecycle, 7);
        assert_eq!(c.concurrency, vec![3, 4]);
        assert_eq!(c.stdout_mib, 128);
    }

    #[test]
    fn full_mode_uses_the_issue_sizes() {
        let c = Cli::parse_from(["bench", "--full"]).counts().unwrap();
        assert_eq!((c.stdout_mib, c.stream_mib, c.density), (1024, 256, 5000));
        assert_eq!(c.concurrency, vec![10, 50, 100]);
    }

    #[test]
    fn bad_counts_are_rejected() {
        assert!(Cli::parse_from(["bench", "--ops-rounds", "0"])
            .counts()
            .is_err());
        assert!(Cli::parse_from(["bench", "--concurrency", "10,0"])
            .counts()
            .is_err());
        assert!(Cli::try_parse_from(["bench", "--quick", "--full"]).is_err());
        assert!(Cli::try_parse_from(["bench", "--peers-only", "--no-peers"]).is_err());
    }

    #[test]
    fn scenario_selection() {
        let cli = Cli::parse_from(["bench", "--scenarios", "lifecycle,density"]);
        assert!(cli.wants(Scenario::Lifecycle));
        assert!(!cli.wants(Scenario::Streaming));
        assert!(Cli::parse_from(["bench"]).wants(Scenario::Streaming));
    }
}
