//! The figures of one bench run, rendered as a markdown table (stdout) and as JSON (`--json`).
//!
//! The JSON always carries every key scripts depend on (`lifecycle.{gardend,crun,runc,
//! "crun+cni",podman}.p50_ms`,
//! `concurrent_create.{10,50,100}.wall_ms`, `stdout.mb_per_s`, `stream_in.mb_per_s`,
//! `stream_out.mb_per_s`, `density.{containers,gardend_rss_mb}`); a figure that was not
//! measured is `null`, with an `error` string saying why.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::cpu::CpuPerOp;
use crate::stats::Summary;

/// The runtimes compared, in table order. gardend first: ratios are gardend / peer.
pub const RUNTIMES: [&str; 3] = ["gardend", "crun", "runc"];

/// The lifecycle also compares peers doing gardend's network work (veth, address, NAT).
pub const LIFECYCLE_RUNTIMES: [&str; 5] = ["gardend", "crun", "runc", "crun+cni", "podman"];

/// A measured value, or why there is none ("crun not installed", the error met, ...).
pub type Outcome<T> = Result<T, String>;

/// One runtime's result in a scenario.
#[derive(Debug, Clone)]
pub struct Row<T> {
    pub runtime: String,
    pub outcome: Outcome<T>,
}

impl<T> Row<T> {
    pub fn new(runtime: impl Into<String>, outcome: Outcome<T>) -> Self {
        Row {
            runtime: runtime.into(),
            outcome,
        }
    }
}

fn find<'a, T>(rows: &'a [Row<T>], runtime: &str) -> Option<&'a Outcome<T>> {
    rows.iter()
        .find(|r| r.runtime == runtime)
        .map(|r| &r.outcome)
}

/// Concurrent creates then destroys of `n` containers (median of the repetitions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Concurrent {
    pub reps: usize,
    pub create_wall_ms: f64,
    pub destroy_wall_ms: f64,
}

#[derive(Debug, Clone)]
pub struct ConcurrentLevel {
    pub n: usize,
    pub rows: Vec<Row<Concurrent>>,
}

/// Bytes moved per repetition and the median and best rate over the repetitions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    pub bytes: u64,
    pub reps: usize,
    pub mb_per_s: f64,
    pub best_mb_per_s: f64,
}

/// Scenario 4. `stdout` rows are gardend, crun, runc and `host` (the same writer on the host,
/// straight into a pipe: the ceiling).
#[derive(Debug, Clone, Default)]
pub struct Streaming {
    pub stdout: Vec<Row<Throughput>>,
    pub stream_in: Option<Outcome<Throughput>>,
    pub stream_out: Option<Outcome<Throughput>>,
    /// `cat` of the same tar through a pipe on the host: the ceiling for StreamIn/StreamOut.
    pub host_cat: Option<Outcome<Throughput>>,
}

/// Scenario 5: N idle containers in one gardend.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Density {
    pub containers: usize,
    pub parallelism: usize,
    pub baseline_rss_kib: u64,
    pub rss_kib: u64,
    /// Processes in the containers' cgroups (their inits, for idle containers) and their PSS.
    pub container_procs: usize,
    pub container_pss_kib: u64,
    /// The host's unreclaimable kernel slab (`SUnreclaim`) before the first create and with
    /// every container up: what the kernel holds for them beyond their processes (each new
    /// memory cgroup gets a table sized by every superblock on the host).
    pub slab_kib: Option<(u64, u64)>,
    pub create_all_ms: f64,
    /// Median of a few Lists with every container up.
    pub list_ms: f64,
    pub listed: usize,
    pub destroy_all_ms: f64,
    /// Creates per second over the last tenth of the creates (the rate near the full count).
    pub create_rate_top: f64,
    /// Destroys per second over the first tenth of the destroys (with nearly all containers up).
    pub destroy_rate_top: f64,
    /// The host's CPU time per create over the last tenth of the creates.
    pub cpu_top: Option<CpuPerOp>,
    /// From the first Destroy until the containers' cgroups are gone (the reclamation that
    /// finishes in the background after each Destroy answered); `None` if it did not settle.
    pub reclaimed_ms: Option<f64>,
}

/// Scenario 5 for a peer (crun): the same ramp, without gardend's memory and List figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerDensity {
    pub containers: usize,
    pub create_all_ms: f64,
    pub create_rate_top: f64,
    pub destroy_all_ms: f64,
    pub destroy_rate_top: f64,
    /// The host's CPU time per create over the last tenth of the creates.
    pub cpu_top: Option<CpuPerOp>,
}

impl Density {
    /// The figures every runtime's ramp has, for the "same ramp" table.
    pub fn ramp(&self) -> PeerDensity {
        PeerDensity {
            containers: self.containers,
            create_all_ms: self.create_all_ms,
            create_rate_top: self.create_rate_top,
            destroy_all_ms: self.destroy_all_ms,
            destroy_rate_top: self.destroy_rate_top,
            cpu_top: self.cpu_top,
        }
    }

    /// RSS growth per container in KiB (may be negative if the allocator returned memory).
    pub fn per_container_kib(&self) -> f64 {
        if self.containers == 0 {
            return 0.0;
        }
        (self.rss_kib as f64 - self.baseline_rss_kib as f64) / self.containers as f64
    }
}

/// Everything one run measured. `None` = the scenario was not selected.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub mode: String,
    /// Free-form facts about the machine and the tools (kernel, cores, versions).
    pub environment: Vec<(String, String)>,
    pub lifecycle: Option<Vec<Row<Summary>>>,
    /// Lifecycles split into phases, per runtime (gardend: create, run+wait, destroy).
    pub lifecycle_phases: crate::scenarios::Phases,
    pub create: Option<Vec<Row<Summary>>>,
    pub destroy: Option<Vec<Row<Summary>>>,
    pub run: Option<Vec<Row<Summary>>>,
    pub concurrent: Option<Vec<ConcurrentLevel>>,
    pub streaming: Option<Streaming>,
    pub density: Option<Outcome<Density>>,
    /// The density ramp run by the peers (crun); empty when not run.
    pub density_peers: Vec<(String, Outcome<PeerDensity>)>,
    pub agent: Option<Outcome<crate::agent::AgentFigures>>,
    pub images: Option<Outcome<crate::images::ImageFigures>>,
    /// gardend's RSS (KiB) at start and after each scenario.
    pub gardend_rss: Vec<(String, u64)>,
    pub notes: Vec<String>,
}

const NOT_RUN: &str = "scenario not selected";

fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn summary_json(outcome: Option<&Outcome<Summary>>) -> Value {
    match outcome {
        Some(Ok(s)) => json!({
            "count": s.count,
            "p50_ms": num(s.p50),
            "p90_ms": num(s.p90),
            "p99_ms": num(s.p99),
            "min_ms": num(s.min),
            "max_ms": num(s.max),
            "mean_ms": num(s.mean),
        }),
        Some(Err(e)) => {
            json!({"count": 0, "p50_ms": null, "p90_ms": null, "p99_ms": null, "error": e})
        }
        None => {
            json!({"count": 0, "p50_ms": null, "p90_ms": null, "p99_ms": null, "error": NOT_RUN})
        }
    }
}

fn latency_json(rows: Option<&Vec<Row<Summary>>>) -> Value {
    latency_json_of(rows, &RUNTIMES)
}

fn latency_json_of(rows: Option<&Vec<Row<Summary>>>, runtimes: &[&str]) -> Value {
    let mut m = Map::new();
    for &rt in runtimes {
        let outcome = match rows {
            Some(rows) => find(rows, rt),
            None => None,
        };
        m.insert(rt.into(), summary_json(outcome));
    }
    Value::Object(m)
}

fn concurrent_json(outcome: Option<&Outcome<Concurrent>>) -> Map<String, Value> {
    let mut m = Map::new();
    match outcome {
        Some(Ok(c)) => {
            m.insert("reps".into(), json!(c.reps));
            m.insert("wall_ms".into(), num(c.create_wall_ms));
            m.insert("destroy_wall_ms".into(), num(c.destroy_wall_ms));
        }
        Some(Err(e)) => {
            m.insert("wall_ms".into(), Value::Null);
            m.insert("destroy_wall_ms".into(), Value::Null);
            m.insert("error".into(), json!(e));
        }
        None => {
            m.insert("wall_ms".into(), Value::Null);
            m.insert("destroy_wall_ms".into(), Value::Null);
            m.insert("error".into(), json!(NOT_RUN));
        }
    }
    m
}

fn with_rates(mut m: Map<String, Value>, n: usize) -> Map<String, Value> {
    let rate = |key: &str| match m.get(key).and_then(Value::as_f64) {
        Some(ms) if ms > 0.0 => num(n as f64 / (ms / 1000.0)),
        _ => Value::Null,
    };
    let create_rate = rate("wall_ms");
    let destroy_rate = rate("destroy_wall_ms");
    m.insert("containers_per_s".into(), create_rate);
    m.insert("destroys_per_s".into(), destroy_rate);
    m
}

fn throughput_json(outcome: Option<&Outcome<Throughput>>) -> Map<String, Value> {
    let mut m = Map::new();
    match outcome {
        Some(Ok(t)) => {
            m.insert("bytes".into(), json!(t.bytes));
            m.insert("reps".into(), json!(t.reps));
            m.insert("mb_per_s".into(), num(t.mb_per_s));
            m.insert("best_mb_per_s".into(), num(t.best_mb_per_s));
        }
        Some(Err(e)) => {
            m.insert("mb_per_s".into(), Value::Null);
            m.insert("error".into(), json!(e));
        }
        None => {
            m.insert("mb_per_s".into(), Value::Null);
            m.insert("error".into(), json!(NOT_RUN));
        }
    }
    m
}

/// The report as JSON (see the module doc for the guaranteed keys).
pub fn to_json(r: &Report) -> Value {
    let mut root = Map::new();
    root.insert("mode".into(), json!(r.mode));
    root.insert(
        "units".into(),
        json!("latencies in ms; MB/s = 10^6 bytes per second; RSS in MiB"),
    );
    let env: Map<String, Value> = r
        .environment
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    root.insert("environment".into(), Value::Object(env));

    let mut lifecycle = latency_json_of(r.lifecycle.as_ref(), &LIFECYCLE_RUNTIMES);
    for (runtime, split) in &r.lifecycle_phases {
        let phases: Map<String, Value> = split
            .iter()
            .map(|(k, s)| (k.clone(), summary_json(Some(&Ok(*s)))))
            .collect();
        lifecycle[runtime.as_str()]["phases"] = Value::Object(phases);
    }
    root.insert("lifecycle".into(), lifecycle);
    root.insert("create".into(), latency_json(r.create.as_ref()));
    root.insert("destroy".into(), latency_json(r.destroy.as_ref()));
    root.insert("run".into(), latency_json(r.run.as_ref()));

    let mut conc = Map::new();
    let levels: Vec<ConcurrentLevel> = match &r.concurrent {
        Some(levels) => levels.clone(),
        None => vec![],
    };
    let mut ns: Vec<usize> = levels.iter().map(|l| l.n).collect();
    for required in [10, 50, 100] {
        if !ns.contains(&required) {
            ns.push(required);
        }
    }
    for n in ns {
        let level = levels.iter().find(|l| l.n == n);
        let rows = level.map(|l| l.rows.as_slice()).unwrap_or(&[]);
        let mut m = with_rates(concurrent_json(find(rows, "gardend")), n);
        for peer in &RUNTIMES[1..] {
            let pm = with_rates(concurrent_json(find(rows, peer)), n);
            m.insert((*peer).into(), Value::Object(pm));
        }
        conc.insert(n.to_string(), Value::Object(m));
    }
    root.insert("concurrent_create".into(), Value::Object(conc));

    let empty = Streaming::default();
    let s = r.streaming.as_ref().unwrap_or(&empty);
    let mut stdout = throughput_json(find(&s.stdout, "gardend"));
    for other in ["crun", "runc", "host"] {
        stdout.insert(
            other.into(),
            Value::Object(throughput_json(find(&s.stdout, other))),
        );
    }
    root.insert("stdout".into(), Value::Object(stdout));
    let mut host_cat = throughput_json(s.host_cat.as_ref());
    host_cat.insert(
        "what".into(),
        json!("host cat of the same tar through a pipe"),
    );
    root.insert(
        "stream_in".into(),
        Value::Object(throughput_json(s.stream_in.as_ref())),
    );
    root.insert(
        "stream_out".into(),
        Value::Object(throughput_json(s.stream_out.as_ref())),
    );
    root.insert("host_pipe".into(), Value::Object(host_cat));

    let density = match &r.density {
        Some(Ok(d)) => json!({
            "containers": d.containers,
            "parallelism": d.parallelism,
            "gardend_rss_mb": num(d.rss_kib as f64 / 1024.0),
            "baseline_rss_mb": num(d.baseline_rss_kib as f64 / 1024.0),
            "per_container_kb": num(d.per_container_kib()),
            "container_processes": d.container_procs,
            "container_pss_mb": num(d.container_pss_kib as f64 / 1024.0),
            "unreclaimable_slab_mb_before": d.slab_kib.map(|(b, _)| num(b as f64 / 1024.0)),
            "unreclaimable_slab_mb_top": d.slab_kib.map(|(_, t)| num(t as f64 / 1024.0)),
            "create_all_ms": num(d.create_all_ms),
            "list_ms": num(d.list_ms),
            "listed": d.listed,
            "destroy_all_ms": num(d.destroy_all_ms),
            "create_per_s_top": num(d.create_rate_top),
            "destroy_per_s_top": num(d.destroy_rate_top),
            "cpu_per_create_top": cpu_json(d.cpu_top),
            "reclaimed_ms": d.reclaimed_ms.map(num),
        }),
        Some(Err(e)) => json!({"containers": null, "gardend_rss_mb": null, "error": e}),
        None => json!({"containers": null, "gardend_rss_mb": null, "error": NOT_RUN}),
    };
    root.insert("density".into(), density);
    let peers: serde_json::Map<String, Value> = r
        .density_peers
        .iter()
        .map(|(name, d)| {
            let v = match d {
                Ok(d) => json!({
                    "containers": d.containers,
                    "create_all_ms": num(d.create_all_ms),
                    "create_per_s_top": num(d.create_rate_top),
                    "destroy_all_ms": num(d.destroy_all_ms),
                    "destroy_per_s_top": num(d.destroy_rate_top),
                    "cpu_per_create_top": cpu_json(d.cpu_top),
                }),
                Err(e) => json!({"containers": null, "error": e}),
            };
            (name.clone(), v)
        })
        .collect();
    root.insert("density_peers".into(), Value::Object(peers));
    let agent = match &r.agent {
        Some(Ok(a)) => json!({
            "single_start_to_running": summary_json(Some(&Ok(a.single))),
            "burst": a.burst,
            "burst_start_to_running": summary_json(Some(&Ok(a.burst_latency))),
            "burst_wall_ms": num(a.burst_wall_ms),
            "stop_all_ms": num(a.stop_all_ms),
            "staging_request_to_completion": summary_json(Some(&Ok(a.staging))),
        }),
        Some(Err(e)) => json!({"burst": null, "error": e}),
        None => json!({"burst": null, "error": NOT_RUN}),
    };
    root.insert("agent".into(), agent);
    let images = match &r.images {
        Some(Ok(i)) => json!({
            "image_mib": i.image_mib,
            "layers": i.layers,
            "create_from_directory": summary_json(Some(&Ok(i.directory))),
            "create_from_cached_image": summary_json(Some(&Ok(i.cached))),
            "create_with_cold_pull": summary_json(Some(&Ok(i.cold))),
        }),
        Some(Err(e)) => json!({"layers": null, "error": e}),
        None => json!({"layers": null, "error": NOT_RUN}),
    };
    root.insert("images".into(), images);
    let rss: Map<String, Value> = r
        .gardend_rss
        .iter()
        .map(|(k, kib)| (k.clone(), num(*kib as f64 / 1024.0)))
        .collect();
    root.insert("gardend_rss_mb_after".into(), Value::Object(rss));
    root.insert("notes".into(), json!(r.notes));
    Value::Object(root)
}

/// Milliseconds with enough digits to compare a few-ms peer against a slower one.
fn fmt_ms(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else if x < 1000.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

fn fmt_rate(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.0}")
    }
}

fn fmt_ratio(num: f64, den: f64) -> String {
    if num.is_finite() && den.is_finite() && den > 0.0 {
        format!("{:.2}x", num / den)
    } else {
        "-".into()
    }
}

/// Markdown cells must not contain raw pipes or newlines.
fn cell(s: &str) -> String {
    let one_line = s.lines().next().unwrap_or("").replace('|', "\\|");
    if one_line.len() > 120 {
        let mut end = 117;
        while !one_line.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &one_line[..end])
    } else {
        one_line
    }
}

fn latency_section(out: &mut String, title: &str, rows: &[Row<Summary>]) {
    let gardend_p50 = match find(rows, "gardend") {
        Some(Ok(s)) => s.p50,
        _ => f64::NAN,
    };
    for (i, row) in rows.iter().enumerate() {
        let name = if i == 0 { title } else { "" };
        match &row.outcome {
            Ok(s) => {
                let ratio = if row.runtime == "gardend" {
                    String::new()
                } else {
                    fmt_ratio(gardend_p50, s.p50)
                };
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} | {} | {} | {} | {ratio} |",
                    row.runtime,
                    s.count,
                    fmt_ms(s.p50),
                    fmt_ms(s.p90),
                    fmt_ms(s.p99)
                );
            }
            Err(e) => {
                let _ = writeln!(out, "| {name} | {} | - | {} | | | |", row.runtime, cell(e));
            }
        }
    }
}

/// The report as markdown: one table per kind of figure, then the notes.
pub fn to_markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## gardend vs crun vs runc ({} mode)\n", r.mode);
    if !r.environment.is_empty() {
        let env: Vec<String> = r
            .environment
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(out, "{}\n", env.join("; "));
    }

    let latency: Vec<(&str, &Vec<Row<Summary>>)> = [
        (
            "lifecycle (create, run /bin/true, destroy)",
            r.lifecycle.as_ref(),
        ),
        ("create alone", r.create.as_ref()),
        ("destroy alone", r.destroy.as_ref()),
        ("run /bin/true in existing container", r.run.as_ref()),
    ]
    .into_iter()
    .filter_map(|(t, rows)| rows.map(|rows| (t, rows)))
    .collect();
    if !latency.is_empty() {
        out.push_str("| scenario | runtime | n | p50 ms | p90 ms | p99 ms | gardend/peer p50 |\n");
        out.push_str("|---|---|---:|---:|---:|---:|---:|\n");
        for (title, rows) in &latency {
            latency_section(&mut out, title, rows);
        }
        if !r.lifecycle_phases.is_empty() {
            out.push_str("\n| lifecycle phase | runtime | n | p50 ms | p90 ms | p99 ms |\n");
            out.push_str("|---|---|---:|---:|---:|---:|\n");
            for (runtime, split) in &r.lifecycle_phases {
                for (k, s) in split {
                    let _ = writeln!(
                        out,
                        "| {k} | {runtime} | {} | {} | {} | {} |",
                        s.count,
                        fmt_ms(s.p50),
                        fmt_ms(s.p90),
                        fmt_ms(s.p99)
                    );
                }
            }
        }
        out.push('\n');
    }

    if let Some(levels) = &r.concurrent {
        out.push_str("| concurrent creates | runtime | create wall ms | creates/s | destroy wall ms | destroys/s | gardend/peer create wall |\n");
        out.push_str("|---:|---|---:|---:|---:|---:|---:|\n");
        for level in levels {
            let gardend_wall = match find(&level.rows, "gardend") {
                Some(Ok(c)) => c.create_wall_ms,
                _ => f64::NAN,
            };
            for (i, row) in level.rows.iter().enumerate() {
                let n = if i == 0 {
                    level.n.to_string()
                } else {
                    String::new()
                };
                match &row.outcome {
                    Ok(c) => {
                        let ratio = if row.runtime == "gardend" {
                            String::new()
                        } else {
                            fmt_ratio(gardend_wall, c.create_wall_ms)
                        };
                        let _ = writeln!(
                            out,
                            "| {n} | {} | {} | {} | {} | {} | {ratio} |",
                            row.runtime,
                            fmt_ms(c.create_wall_ms),
                            fmt_rate(level.n as f64 / (c.create_wall_ms / 1000.0)),
                            fmt_ms(c.destroy_wall_ms),
                            fmt_rate(level.n as f64 / (c.destroy_wall_ms / 1000.0)),
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(out, "| {n} | {} | {} | | | | |", row.runtime, cell(e));
                    }
                }
            }
        }
        out.push('\n');
    }

    if let Some(s) = &r.streaming {
        out.push_str("| stream | path | MiB | MB/s (median) | MB/s (best) | of ceiling |\n");
        out.push_str("|---|---|---:|---:|---:|---:|\n");
        let ceiling = |o: Option<&Outcome<Throughput>>| match o {
            Some(Ok(t)) => t.mb_per_s,
            _ => f64::NAN,
        };
        let stdout_ceiling = ceiling(find(&s.stdout, "host"));
        let tar_ceiling = ceiling(s.host_cat.as_ref());
        let mut line = |stream: &str, path: &str, o: &Outcome<Throughput>, ceil: f64| match o {
            Ok(t) => {
                let share = if ceil.is_finite() && ceil > 0.0 {
                    format!("{:.0}%", t.mb_per_s / ceil * 100.0)
                } else {
                    "-".into()
                };
                let _ = writeln!(
                    out,
                    "| {stream} | {path} | {:.0} | {} | {} | {share} |",
                    t.bytes as f64 / (1024.0 * 1024.0),
                    fmt_rate(t.mb_per_s),
                    fmt_rate(t.best_mb_per_s)
                );
            }
            Err(e) => {
                let _ = writeln!(out, "| {stream} | {path} | - | {} | | |", cell(e));
            }
        };
        for row in &s.stdout {
            let path = match row.runtime.as_str() {
                "host" => "host dd -> pipe (ceiling)".to_string(),
                "gardend" => "gardend Run -> client".to_string(),
                other => format!("{other} run -> pipe"),
            };
            line("process stdout", &path, &row.outcome, stdout_ceiling);
        }
        if let Some(o) = &s.stream_in {
            line("tar", "gardend StreamIn", o, tar_ceiling);
        }
        if let Some(o) = &s.stream_out {
            line("tar", "gardend StreamOut", o, tar_ceiling);
        }
        if let Some(o) = &s.host_cat {
            line("tar", "host cat -> pipe (ceiling)", o, tar_ceiling);
        }
        out.push('\n');
    }

    match &r.density {
        Some(Ok(d)) => {
            out.push_str("| idle containers | gardend RSS MiB (before -> after) | per container KiB | container processes, PSS MiB | host unreclaimable slab MiB (before -> top) | create all ms | list ms | destroy all ms | creates/s, last 10% | host CPU ms per create, last 10%: kernel + user (busy) | destroys/s, first 10% | reclaimed ms |\n");
            out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            let slab = d
                .slab_kib
                .map(|(b, t)| format!("{} -> {}", b / 1024, t / 1024))
                .unwrap_or_else(|| "-".into());
            let _ =
                writeln!(
                out,
                "| {} | {:.1} -> {:.1} | {:.1} | {}, {:.1} | {} | {} | {} | {} | {:.0} | {} | {:.0} | {} |\n",
                d.containers,
                d.baseline_rss_kib as f64 / 1024.0,
                d.rss_kib as f64 / 1024.0,
                d.per_container_kib(),
                d.container_procs,
                d.container_pss_kib as f64 / 1024.0,
                slab,
                fmt_ms(d.create_all_ms),
                fmt_ms(d.list_ms),
                fmt_ms(d.destroy_all_ms),
                d.create_rate_top,
                fmt_cpu(d.cpu_top),
                d.destroy_rate_top,
                d.reclaimed_ms.map(fmt_ms).unwrap_or_else(|| "did not settle".into())
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(out, "density: {}\n", cell(e));
        }
        None => {}
    }
    if !r.density_peers.is_empty() {
        out.push_str("| same ramp | idle containers | create all ms | creates/s, last 10% | host CPU ms per create, last 10%: kernel + user (busy) | destroy all ms | destroys/s, first 10% |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        let gardend = match &r.density {
            Some(Ok(d)) => Some(("gardend".to_string(), Ok(d.ramp()))),
            _ => None,
        };
        for (name, d) in gardend.iter().chain(&r.density_peers) {
            let _ = match d {
                Ok(d) => writeln!(
                    out,
                    "| {name} | {} | {} | {:.0} | {} | {} | {:.0} |",
                    d.containers,
                    fmt_ms(d.create_all_ms),
                    d.create_rate_top,
                    fmt_cpu(d.cpu_top),
                    fmt_ms(d.destroy_all_ms),
                    d.destroy_rate_top
                ),
                Err(e) => writeln!(out, "| {name} | {} | | | | | |", cell(e)),
            };
        }
        out.push('\n');
    }

    match &r.agent {
        Some(Ok(a)) => {
            out.push_str("| agent: start message -> RUNNING (ms) | n | p50 | p90 | max | wall |\n");
            out.push_str("|---|---:|---:|---:|---:|---:|\n");
            let _ = writeln!(
                out,
                "| one at a time | {} | {} | {} | {} | |",
                a.single.count,
                fmt_ms(a.single.p50),
                fmt_ms(a.single.p90),
                fmt_ms(a.single.max)
            );
            let _ = writeln!(
                out,
                "| burst | {} | {} | {} | {} | {} |",
                a.burst,
                fmt_ms(a.burst_latency.p50),
                fmt_ms(a.burst_latency.p90),
                fmt_ms(a.burst_latency.max),
                fmt_ms(a.burst_wall_ms)
            );
            let _ = writeln!(
                out,
                "| dea.stop of the burst -> no container | {} | | | | {} |",
                a.burst,
                fmt_ms(a.stop_all_ms)
            );
            let _ = writeln!(
                out,
                "| staging request -> completion (static site) | {} | {} | {} | {} | |\n",
                a.staging.count,
                fmt_ms(a.staging.p50),
                fmt_ms(a.staging.p90),
                fmt_ms(a.staging.max)
            );
        }
        Some(Err(e)) => {
            let _ = writeln!(out, "agent: {}\n", cell(e));
        }
        None => {}
    }

    match &r.images {
        Some(Ok(i)) => {
            let _ = writeln!(
                out,
                "| gardend create (ms), image of {} layers, {} MiB of noise | n | p50 | p90 | max |",
                i.layers, i.image_mib
            );
            out.push_str("|---|---:|---:|---:|---:|\n");
            for (name, s) in [
                ("from a directory (default rootfs)", &i.directory),
                ("from a registry image, layers stored", &i.cached),
                ("from a registry image, cold pull", &i.cold),
            ] {
                let _ = writeln!(
                    out,
                    "| {name} | {} | {} | {} | {} |",
                    s.count,
                    fmt_ms(s.p50),
                    fmt_ms(s.p90),
                    fmt_ms(s.max)
                );
            }
            out.push('\n');
        }
        Some(Err(e)) => {
            let _ = writeln!(out, "images: {}\n", cell(e));
        }
        None => {}
    }

    if !r.gardend_rss.is_empty() {
        let steps: Vec<String> = r
            .gardend_rss
            .iter()
            .map(|(k, kib)| format!("{k} {:.1}", *kib as f64 / 1024.0))
            .collect();
        let _ = writeln!(
            out,
            "gardend RSS MiB after each scenario: {}\n",
            steps.join(", ")
        );
    }
    for note in &r.notes {
        let _ = writeln!(out, "- {note}");
    }
    out
}

/// `kernel + user (busy%)`, ms per operation, or `-` without a window.
fn fmt_cpu(c: Option<CpuPerOp>) -> String {
    c.map_or_else(
        || "-".into(),
        |c| {
            format!(
                "{:.1} + {:.1} ({:.0}%)",
                c.kernel_ms,
                c.user_ms,
                c.busy * 100.0
            )
        },
    )
}

fn cpu_json(c: Option<CpuPerOp>) -> Value {
    c.map_or(
        Value::Null,
        |c| json!({"kernel_ms": num(c.kernel_ms), "user_ms": num(c.user_ms), "busy": num(c.busy)}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p50: f64) -> Summary {
        Summary {
            count: 3,
            min: p50 / 2.0,
            p50,
            p90: p50 * 1.5,
            p99: p50 * 2.0,
            max: p50 * 2.0,
            mean: p50,
        }
    }

    fn sample() -> Report {
        Report {
            mode: "quick".into(),
            environment: vec![("cores".into(), "2".into())],
            lifecycle: Some(vec![
                Row::new("gardend", Ok(summary(20.0))),
                Row::new("crun", Ok(summary(10.0))),
                Row::new("runc", Err("runc not installed".into())),
            ]),
            lifecycle_phases: vec![("gardend".into(), vec![("create".into(), summary(5.0))])],
            concurrent: Some(vec![ConcurrentLevel {
                n: 10,
                rows: vec![
                    Row::new(
                        "gardend",
                        Ok(Concurrent {
                            reps: 1,
                            create_wall_ms: 500.0,
                            destroy_wall_ms: 250.0,
                        }),
                    ),
                    Row::new(
                        "crun",
                        Ok(Concurrent {
                            reps: 1,
                            create_wall_ms: 100.0,
                            destroy_wall_ms: 50.0,
                        }),
                    ),
                ],
            }]),
            streaming: Some(Streaming {
                stdout: vec![
                    Row::new(
                        "gardend",
                        Ok(Throughput {
                            bytes: 128 << 20,
                            reps: 2,
                            mb_per_s: 500.0,
                            best_mb_per_s: 550.0,
                        }),
                    ),
                    Row::new(
                        "host",
                        Ok(Throughput {
                            bytes: 128 << 20,
                            reps: 2,
                            mb_per_s: 2000.0,
                            best_mb_per_s: 2100.0,
                        }),
                    ),
                ],
                stream_in: Some(Err("create failed: boom | bad\nsecond line".into())),
                stream_out: None,
                host_cat: None,
            }),
            density: Some(Ok(Density {
                containers: 100,
                parallelism: 8,
                baseline_rss_kib: 10 * 1024,
                rss_kib: 20 * 1024,
                container_procs: 100,
                container_pss_kib: 50 * 1024,
                slab_kib: Some((160 * 1024, 2200 * 1024)),
                create_all_ms: 1234.5,
                list_ms: 3.25,
                listed: 100,
                destroy_all_ms: 999.0,
                create_rate_top: 80.0,
                destroy_rate_top: 150.0,
                cpu_top: Some(CpuPerOp {
                    kernel_ms: 14.9,
                    user_ms: 1.5,
                    busy: 0.93,
                }),
                reclaimed_ms: Some(1500.0),
            })),
            density_peers: vec![
                (
                    "crun".into(),
                    Ok(PeerDensity {
                        containers: 100,
                        create_all_ms: 2000.0,
                        create_rate_top: 40.0,
                        destroy_all_ms: 3000.0,
                        destroy_rate_top: 30.0,
                        cpu_top: None,
                    }),
                ),
                ("runc".into(), Err("runc failed | x".into())),
            ],
            gardend_rss: vec![("start".into(), 8 * 1024), ("lifecycle".into(), 9 * 1024)],
            ..Report::default()
        }
    }

    #[test]
    fn json_has_the_keys_scripts_depend_on() {
        let v = to_json(&sample());
        assert_eq!(v["lifecycle"]["gardend"]["p50_ms"], json!(20.0));
        assert_eq!(v["lifecycle"]["crun"]["p50_ms"], json!(10.0));
        assert_eq!(v["lifecycle"]["runc"]["p50_ms"], Value::Null);
        assert_eq!(v["lifecycle"]["runc"]["error"], json!("runc not installed"));
        assert_eq!(
            v["lifecycle"]["gardend"]["phases"]["create"]["p50_ms"],
            json!(5.0)
        );
        assert_eq!(v["concurrent_create"]["10"]["wall_ms"], json!(500.0));
        assert_eq!(
            v["concurrent_create"]["10"]["containers_per_s"],
            json!(20.0)
        );
        assert_eq!(
            v["concurrent_create"]["10"]["crun"]["wall_ms"],
            json!(100.0)
        );
        // Levels not measured still carry their keys.
        assert_eq!(v["concurrent_create"]["50"]["wall_ms"], Value::Null);
        assert_eq!(v["concurrent_create"]["100"]["wall_ms"], Value::Null);
        assert_eq!(v["stdout"]["mb_per_s"], json!(500.0));
        assert_eq!(v["stdout"]["host"]["mb_per_s"], json!(2000.0));
        assert_eq!(v["stream_in"]["mb_per_s"], Value::Null);
        assert!(v["stream_in"]["error"].as_str().unwrap().contains("boom"));
        assert_eq!(v["stream_out"]["mb_per_s"], Value::Null);
        assert_eq!(v["density"]["containers"], json!(100));
        assert_eq!(v["density"]["gardend_rss_mb"], json!(20.0));
        assert_eq!(v["density"]["per_container_kb"], json!(102.4));
        assert_eq!(v["density"]["container_pss_mb"], json!(50.0));
        assert_eq!(v["density"]["unreclaimable_slab_mb_before"], json!(160.0));
        assert_eq!(v["density"]["unreclaimable_slab_mb_top"], json!(2200.0));
        assert_eq!(
            v["density"]["cpu_per_create_top"],
            json!({"kernel_ms": 14.9, "user_ms": 1.5, "busy": 0.93})
        );
        assert_eq!(
            v["density_peers"]["crun"]["cpu_per_create_top"],
            Value::Null
        );
        assert_eq!(v["density_peers"]["crun"]["create_per_s_top"], json!(40.0));
        assert_eq!(v["density_peers"]["crun"]["destroy_per_s_top"], json!(30.0));
        assert_eq!(v["density_peers"]["runc"]["containers"], Value::Null);
        assert!(v["density_peers"]["runc"]["error"]
            .as_str()
            .unwrap()
            .contains("runc failed"));
        assert_eq!(v["gardend_rss_mb_after"]["lifecycle"], json!(9.0));
    }

    #[test]
    fn json_of_an_empty_report_still_has_every_required_key() {
        let v = to_json(&Report::default());
        for rt in LIFECYCLE_RUNTIMES {
            assert!(v["lifecycle"][rt].get("p50_ms").is_some(), "{rt}");
        }
        for n in ["10", "50", "100"] {
            assert!(v["concurrent_create"][n].get("wall_ms").is_some(), "{n}");
        }
        for k in ["stdout", "stream_in", "stream_out"] {
            assert!(v[k].get("mb_per_s").is_some(), "{k}");
        }
        assert!(v["density"].get("containers").is_some());
        assert!(v["density"].get("gardend_rss_mb").is_some());
    }

    #[test]
    fn markdown_shows_rows_ratios_and_reasons() {
        let md = to_markdown(&sample());
        assert!(md.contains("| lifecycle (create, run /bin/true, destroy) | gardend | 3 | 20.0 | 30.0 | 40.0 |  |"), "{md}");
        assert!(
            md.contains("|  | crun | 3 | 10.0 | 15.0 | 20.0 | 2.00x |"),
            "{md}"
        );
        assert!(md.contains("|  | runc | - | runc not installed |"), "{md}");
        assert!(
            md.contains("| 10 | gardend | 500.0 | 20 | 250.0 | 40 |  |"),
            "{md}"
        );
        assert!(
            md.contains("|  | crun | 100.0 | 100 | 50.0 | 200 | 5.00x |"),
            "{md}"
        );
        assert!(
            md.contains("| process stdout | gardend Run -> client | 128 | 500 | 550 | 25% |"),
            "{md}"
        );
        // Errors are cut to one line and pipes escaped so the table stays a table.
        assert!(md.contains("create failed: boom \\| bad |"), "{md}");
        assert!(!md.contains("second line"), "{md}");
        assert!(
            md.contains(
                "| 100 | 10.0 -> 20.0 | 102.4 | 100, 50.0 | 160 -> 2200 | 1234 | 3.25 | 999.0 | 80 | 14.9 + 1.5 (93%) | 150 |"
            ),
            "{md}"
        );
        assert!(md.contains("| create | gardend | 3 | 5.00 |"), "{md}");
        assert!(
            md.contains("| gardend | 100 | 1234 | 80 | 14.9 + 1.5 (93%) | 999.0 | 150 |"),
            "{md}"
        );
        assert!(
            md.contains("| crun | 100 | 2000 | 40 | - | 3000 | 30 |"),
            "{md}"
        );
        assert!(
            md.contains("| runc | runc failed \\| x | | | | | |"),
            "{md}"
        );
    }

    #[test]
    fn markdown_skips_scenarios_not_run() {
        let md = to_markdown(&Report {
            mode: "quick".into(),
            ..Report::default()
        });
        assert!(!md.contains("| scenario |"));
        assert!(!md.contains("concurrent creates"));
        assert!(!md.contains("idle containers"));
    }

    #[test]
    fn long_cells_are_truncated_on_char_boundaries() {
        let long = "é".repeat(200);
        let c = cell(&long);
        assert!(c.ends_with("..."));
        assert!(c.len() <= 120);
    }
}
