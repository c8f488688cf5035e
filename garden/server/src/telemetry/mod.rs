//! What gardend tells operators about itself: Prometheus metrics (`/metrics`) and Guardian's
//! expvar-style `/debug/vars`, served on the debug address (`--debug-bind-ip`,
//! `--debug-bind-port`; off unless given) by [`debug_server`].
//!
//! The metric families are process-wide statics so that the few places that record something
//! (the API's request log, Run, the firewall, the pools) need no handle threaded through the
//! core. Gauges that describe current state (containers, processes, the process's own memory)
//! are set from a [`Census`] at scrape time instead of being kept up to date by hand.

pub mod debug_server;
mod process;

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use process::ProcessStats;

type Labels = Vec<(&'static str, String)>;

/// Latency buckets from 1 ms to ~65 s (doubling): container creates take milliseconds, a
/// destroy behind a slow firewall or a StreamIn of a large tar much longer.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric family gardend exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    request_duration: Family<Labels, Histogram, fn() -> Histogram>,
    create_duration: Histogram,
    destroy_duration: Histogram,
    run_duration: Histogram,
    errors: Family<Labels, Counter>,
    firewall_transactions: Family<Labels, Counter>,
    firewall_duration: Histogram,
    containers: Gauge,
    processes: Gauge,
    oom_killed_containers: Gauge,
    warm_containers: Gauge,
    reclaiming_containers: Gauge,
    pool_subnets: Gauge,
    pool_addresses_in_use: Gauge,
    pool_ports: Gauge,
    pool_ports_in_use: Gauge,
    disk_backend: Family<Labels, Gauge>,
    disk_capacity: Gauge,
    resident_memory: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    threads: Gauge,
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    start_time: Gauge,
    /// Scrapes are serialised: the census gauges are set, then encoded.
    scrape: Mutex<()>,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// What the core reports about its current state at each scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    pub containers: u64,
    /// Processes still running in any container.
    pub processes: u64,
    /// Containers in which the kernel's OOM killer has killed something.
    pub oom_killed_containers: u64,
    /// Containers made ahead of demand, ready for a Create.
    pub warm_containers: u64,
    /// Destroyed containers whose resources are still being reclaimed in the background.
    pub reclaiming_containers: u64,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency),
            create_duration: latency(),
            destroy_duration: latency(),
            run_duration: latency(),
            errors: Family::default(),
            firewall_transactions: Family::default(),
            firewall_duration: latency(),
            containers: Gauge::default(),
            processes: Gauge::default(),
            oom_killed_containers: Gauge::default(),
            warm_containers: Gauge::default(),
            reclaiming_containers: Gauge::default(),
            pool_subnets: Gauge::default(),
            pool_addresses_in_use: Gauge::default(),
            pool_ports: Gauge::default(),
            pool_ports_in_use: Gauge::default(),
            disk_backend: Family::default(),
            disk_capacity: Gauge::default(),
            resident_memory: Gauge::default(),
            virtual_memory: Gauge::default(),
            open_fds: Gauge::default(),
            threads: Gauge::default(),
            cpu_seconds: Gauge::default(),
            start_time: Gauge::default(),
            scrape: Mutex::new(()),
        };
        let r = m.registry.sub_registry_with_prefix("garden");
        r.register(
            "api_requests",
            "API requests answered, by route and HTTP status",
            m.requests.clone(),
        );
        r.register(
            "api_request_duration_seconds",
            "Time from request head to the end of the answer, by route (hijacked routes: the \
             connection's life)",
            m.request_duration.clone(),
        );
        r.register(
            "container_create_duration_seconds",
            "Create requests, from request head to answer",
            m.create_duration.clone(),
        );
        r.register(
            "container_destroy_duration_seconds",
            "Destroy requests, from request head to answer",
            m.destroy_duration.clone(),
        );
        r.register(
            "process_start_duration_seconds",
            "Run: from the request to the process running in its container",
            m.run_duration.clone(),
        );
        r.register(
            "errors",
            "Errors answered to clients, by Garden error kind",
            m.errors.clone(),
        );
        r.register(
            "firewall_transactions",
            "iptables-restore transactions, by outcome",
            m.firewall_transactions.clone(),
        );
        r.register(
            "firewall_transaction_duration_seconds",
            "Time one iptables-restore transaction took",
            m.firewall_duration.clone(),
        );
        r.register("containers", "Containers that exist", m.containers.clone());
        r.register(
            "processes",
            "Processes running in containers",
            m.processes.clone(),
        );
        r.register(
            "oom_killed_containers",
            "Containers in which the OOM killer has killed a process (Out of memory events)",
            m.oom_killed_containers.clone(),
        );
        r.register(
            "warm_containers",
            "Containers made ahead of demand, ready for a Create (--warm-containers)",
            m.warm_containers.clone(),
        );
        r.register(
            "reclaiming_containers",
            "Destroyed containers whose network, cgroup, disk and bundle are still being freed",
            m.reclaiming_containers.clone(),
        );
        r.register(
            "network_pool_subnets",
            "Subnets (/30) in the dynamic network pool",
            m.pool_subnets.clone(),
        );
        r.register(
            "network_pool_addresses_in_use",
            "Container addresses handed out (pool and static subnets)",
            m.pool_addresses_in_use.clone(),
        );
        r.register(
            "port_pool_ports",
            "Host ports in the NetIn port pool",
            m.pool_ports.clone(),
        );
        r.register(
            "port_pool_ports_in_use",
            "Host ports mapped by NetIn",
            m.pool_ports_in_use.clone(),
        );
        r.register(
            "disk_backend",
            "1 for the disk limit backend in use (xfs, images or off), labelled with the one \
             configured: backend!=wanted means gardend fell back",
            m.disk_backend.clone(),
        );
        r.register(
            "disk_capacity_bytes",
            "Bytes the disk backend's filesystem holds (the XFS store's size, or the filesystem \
             of the per-container images); 0 when disk limits are off",
            m.disk_capacity.clone(),
        );
        // The standard process metrics (no `garden_` prefix), as every exporter names them.
        let r = &mut m.registry;
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            m.resident_memory.clone(),
        );
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            m.virtual_memory.clone(),
        );
        r.register(
            "process_open_fds",
            "Open file descriptors",
            m.open_fds.clone(),
        );
        r.register("process_threads", "OS threads", m.threads.clone());
        r.register(
            "process_cpu_seconds_total",
            "User and system CPU time spent, in seconds",
            m.cpu_seconds.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            m.start_time.clone(),
        );
        m
    }

    /// One answered API request. `route` is Garden's route name (`unknown` when none matched).
    pub fn request(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&vec![
                ("route", route.to_string()),
                ("status", status.to_string()),
            ])
            .inc();
        self.request_duration
            .get_or_create(&vec![("route", route.to_string())])
            .observe(elapsed.as_secs_f64());
        match route {
            "Create" => self.create_duration.observe(elapsed.as_secs_f64()),
            "Destroy" => self.destroy_duration.observe(elapsed.as_secs_f64()),
            _ => {}
        }
    }

    /// A process started (Run succeeded up to the exec).
    pub fn process_started(&self, elapsed: Duration) {
        self.run_duration.observe(elapsed.as_secs_f64());
    }

    /// An error answered to a client, by its wire kind (`ContainerNotFoundError`, ...).
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// One iptables-restore run.
    pub fn firewall_transaction(&self, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "failed" };
        self.firewall_transactions
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .inc();
        self.firewall_duration.observe(elapsed.as_secs_f64());
    }

    /// The address pool's size and use, after each change.
    pub fn address_pool(&self, subnets: u64, in_use: u64) {
        self.pool_subnets.set(subnets as i64);
        self.pool_addresses_in_use.set(in_use as i64);
    }

    /// The port pool's size and use, after each change.
    pub fn port_pool(&self, ports: u64, in_use: u64) {
        self.pool_ports.set(ports as i64);
        self.pool_ports_in_use.set(in_use as i64);
    }

    /// The disk limit backend chosen at start (`wanted` is the configured one) and its
    /// capacity in bytes.
    pub fn disk_backend(&self, backend: &str, wanted: &str, capacity: u64) {
        self.disk_backend.clear();
        self.disk_backend
            .get_or_create(&vec![
                ("backend", backend.to_string()),
                ("wanted", wanted.to_string()),
            ])
            .set(1);
        self.disk_capacity
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
    }

    /// The exposition text: `census` and this process's own figures as of now.
    pub fn render(&self, census: Census) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.containers.set(census.containers as i64);
        self.processes.set(census.processes as i64);
        self.oom_killed_containers
            .set(census.oom_killed_containers as i64);
        self.warm_containers.set(census.warm_containers as i64);
        self.reclaiming_containers
            .set(census.reclaiming_containers as i64);
        if let Some(p) = ProcessStats::read() {
            self.resident_memory.set(p.resident_bytes as i64);
            self.virtual_memory.set(p.virtual_bytes as i64);
            self.open_fds.set(p.open_fds as i64);
            self.threads.set(p.threads as i64);
            self.cpu_seconds.set(p.cpu_seconds);
            self.start_time.set(p.start_time_seconds as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn renders_requests_errors_census_and_process_figures() {
        let m = Metrics::new();
        m.request("Create", 200, Duration::from_millis(12));
        m.request("Create", 200, Duration::from_millis(30));
        m.request("Info", 404, Duration::from_millis(1));
        m.error("ContainerNotFoundError");
        m.firewall_transaction(true, Duration::from_millis(20));
        m.address_pool(256, 3);
        m.disk_backend("images", "xfs", 4 << 30);
        let text = m.render(Census {
            containers: 2,
            processes: 5,
            oom_killed_containers: 1,
            warm_containers: 3,
            reclaiming_containers: 4,
        });
        assert_eq!(
            value(
                &text,
                r#"garden_api_requests_total{route="Create",status="200"}"#
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "garden_container_create_duration_seconds_count"),
            Some(2.0)
        );
        assert_eq!(
            value(
                &text,
                r#"garden_errors_total{kind="ContainerNotFoundError"}"#
            ),
            Some(1.0)
        );
        assert_eq!(value(&text, "garden_containers"), Some(2.0));
        assert_eq!(value(&text, "garden_processes"), Some(5.0));
        assert_eq!(value(&text, "garden_oom_killed_containers"), Some(1.0));
        assert_eq!(value(&text, "garden_warm_containers"), Some(3.0));
        assert_eq!(value(&text, "garden_reclaiming_containers"), Some(4.0));
        assert_eq!(value(&text, "garden_network_pool_subnets"), Some(256.0));
        assert_eq!(
            value(
                &text,
                r#"garden_disk_backend{backend="images",wanted="xfs"}"#
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&text, "garden_disk_capacity_bytes"),
            Some((4u64 << 30) as f64)
        );
        assert!(value(&text, "process_resident_memory_bytes").unwrap() > 0.0);
        assert!(value(&text, "process_open_fds").unwrap() >= 3.0);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
