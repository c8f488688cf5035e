//! The agent's Prometheus metrics, served at `/metrics` on `metrics_port` (off unless set):
//! instances per state, tasks per state, stagings, NATS reconnects, reserved and available
//! memory and disk, and start-to-running durations.
//!
//! Counters and histograms are process-wide statics recorded where things happen; the
//! per-state gauges are counted from the registries at scrape time ([`Census`]).

use std::sync::{Arc, LazyLock, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric family of the agent.
pub struct Metrics {
    registry: Registry,
    instances: Family<Labels, Gauge>,
    tasks: Family<Labels, Gauge>,
    stagings_active: Gauge,
    stagings: Family<Labels, Counter>,
    nats_reconnects: Counter,
    memory_mb: Family<Labels, Gauge>,
    disk_mb: Family<Labels, Gauge>,
    start_to_running: Histogram,
    scrape: Mutex<()>,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// What the registries hold at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// (state as the protocol names it, count).
    pub instances: Vec<(String, u64)>,
    pub tasks: Vec<(String, u64)>,
    pub stagings_active: u64,
    pub capacity: crate::resources::Amount,
    pub remaining: crate::resources::Amount,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("agent"),
            instances: Family::default(),
            tasks: Family::default(),
            stagings_active: Gauge::default(),
            stagings: Family::default(),
            nats_reconnects: Counter::default(),
            memory_mb: Family::default(),
            disk_mb: Family::default(),
            // 10 ms to ~10 min: a static file server is up in a tenth of a second, a JVM
            // with a slow health check in minutes.
            start_to_running: Histogram::new(exponential_buckets(0.01, 2.0, 17)),
            scrape: Mutex::new(()),
        };
        let r = &mut m.registry;
        r.register("instances", "Instances by state", m.instances.clone());
        r.register("tasks", "Tasks by state", m.tasks.clone());
        r.register(
            "stagings_active",
            "Stagings holding a container",
            m.stagings_active.clone(),
        );
        r.register(
            "stagings",
            "Stagings finished, by outcome",
            m.stagings.clone(),
        );
        r.register(
            "nats_reconnects",
            "Reconnections to NATS after a lost connection",
            m.nats_reconnects.clone(),
        );
        r.register(
            "memory_mb",
            "Memory in MB: capacity, reserved and available",
            m.memory_mb.clone(),
        );
        r.register(
            "disk_mb",
            "Disk in MB: capacity, reserved and available",
            m.disk_mb.clone(),
        );
        r.register(
            "instance_start_to_running_seconds",
            "From a start message to the instance passing its health check",
            m.start_to_running.clone(),
        );
        m
    }

    pub fn staging_finished(&self, ok: bool) {
        let outcome = if ok { "succeeded" } else { "failed" };
        self.stagings
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
    }

    pub fn nats_reconnected(&self) {
        self.nats_reconnects.inc();
    }

    pub fn instance_running(&self, since_start: std::time::Duration) {
        self.start_to_running.observe(since_start.as_secs_f64());
    }

    /// The exposition text with `census` applied.
    pub fn render(&self, census: &Census) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.instances.clear();
        for (state, n) in &census.instances {
            self.instances
                .get_or_create(&vec![("state", state.clone())])
                .set(*n as i64);
        }
        self.tasks.clear();
        for (state, n) in &census.tasks {
            self.tasks
                .get_or_create(&vec![("state", state.clone())])
                .set(*n as i64);
        }
        self.stagings_active.set(census.stagings_active as i64);
        let (cap, rem) = (census.capacity, census.remaining);
        for (family, total, left) in [
            (&self.memory_mb, cap.memory_mb, rem.memory_mb),
            (&self.disk_mb, cap.disk_mb, rem.disk_mb),
        ] {
            let set = |kind: &str, v: u64| {
                family
                    .get_or_create(&vec![("kind", kind.to_string())])
                    .set(v as i64)
            };
            set("capacity", total);
            set("reserved", total.saturating_sub(left));
            set("available", left);
        }
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// (state as the wire names it, e.g. `RUNNING` or `running`, how many are in it), sorted.
pub fn count_states<T: serde::Serialize>(states: impl Iterator<Item = T>) -> Vec<(String, u64)> {
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for state in states {
        let name = serde_json::to_value(&state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *counts.entry(name).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// Where the census comes from.
pub type CensusFn = Arc<dyn Fn() -> Census + Send + Sync>;

/// Serve `/metrics` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, census: CensusFn) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let census = census.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics().render(&census()),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "metrics listener stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Amount;

    #[test]
    fn states_are_counted_by_their_wire_names() {
        use crate::protocol::{InstanceState, TaskState};
        let states = [
            InstanceState::Running,
            InstanceState::Crashed,
            InstanceState::Running,
        ];
        assert_eq!(
            count_states(states.into_iter()),
            vec![("CRASHED".to_string(), 1), ("RUNNING".to_string(), 2)]
        );
        assert_eq!(
            count_states([TaskState::Waiting].into_iter()),
            vec![("waiting".to_string(), 1)]
        );
    }

    #[test]
    fn renders_states_resources_and_durations() {
        let m = Metrics::new();
        m.staging_finished(true);
        m.nats_reconnected();
        m.instance_running(std::time::Duration::from_millis(150));
        let text = m.render(&Census {
            instances: vec![("RUNNING".into(), 2), ("CRASHED".into(), 1)],
            tasks: vec![("running".into(), 1)],
            stagings_active: 1,
            capacity: Amount {
                memory_mb: 1024,
                disk_mb: 4096,
            },
            remaining: Amount {
                memory_mb: 768,
                disk_mb: 4000,
            },
        });
        for line in [
            r#"agent_instances{state="RUNNING"} 2"#,
            r#"agent_tasks{state="running"} 1"#,
            r#"agent_stagings_total{outcome="succeeded"} 1"#,
            "agent_nats_reconnects_total 1",
            r#"agent_memory_mb{kind="reserved"} 256"#,
            r#"agent_disk_mb{kind="available"} 4000"#,
            "agent_instance_start_to_running_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
