//! gardend's settings, each declared once: the field, its doc (which is the `--help` text), its
//! flag (Guardian's name where one exists) and its default. The config file uses the same
//! names (see `cli.rs`), so adding a setting means adding one field here.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use garden_api::units::{parse_duration, parse_size};

/// Everything the core needs to start, from flags over the config file over the defaults.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// IP address to listen on.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1", value_parser = parse_ip)]
    pub bind_ip: String,
    /// TCP port to listen on.
    #[arg(long, value_name = "PORT", default_value_t = 7777)]
    pub bind_port: u16,
    /// Listen on this unix socket instead of TCP.
    #[arg(long, value_name = "PATH", value_parser = non_empty_path)]
    pub bind_socket: Option<PathBuf>,
    /// Directory holding one bundle per container.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/gardend/depot")]
    pub depot: PathBuf,
    /// Rootfs for containers created without an image [default: built-in busybox, built under
    /// the depot's parent on first start].
    #[arg(long, value_name = "URI", value_parser = non_empty)]
    pub default_rootfs: Option<String>,
    /// Grace time for containers created without one, e.g. `5m`, `1h30m`, `500ms`, or a number
    /// of seconds; 0 = never reaped.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub default_grace_time: Duration,
    /// Maximum number of containers; 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_containers: u64,
    /// Containers kept made ahead of demand (unprivileged, default rootfs, an address from the
    /// pool, no disk layer of their own): a Create that asks for nothing more takes one and
    /// answers in about a millisecond, and another is made in the background. Each holds a
    /// garden-init, a cgroup, a /30 and its firewall chain; 0 = none.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub warm_containers: usize,
    /// Destroyed containers whose network, cgroup, disk and bundle are freed at once; the
    /// others wait their turn (Destroy answers before that either way). Each cgroup removal
    /// costs the kernel time in proportion to every file system mounted on the host, so
    /// without a bound a burst of destroys left no CPU for the destroys and creates still
    /// arriving.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub reclaim_concurrency: u32,
    /// debug, info, warn or error.
    #[arg(long, value_name = "LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
    /// Log lines as `text` (for people) or `json` (one object per line, for log tools).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// IP address of the debug listener (`/metrics`, `/debug/vars`).
    #[arg(long, value_name = "IP", default_value = "127.0.0.1", value_parser = parse_ip)]
    pub debug_bind_ip: String,
    /// Port of the debug listener; off unless given.
    #[arg(long, value_name = "PORT")]
    pub debug_bind_port: Option<u16>,
    /// Name of the cgroup gardend creates under each hierarchy.
    #[arg(long, value_name = "NAME", default_value = "garden", value_parser = non_empty)]
    pub cgroup_parent: String,
    /// Path of the garden-init binary [default: next to gardend].
    #[arg(long, value_name = "PATH", value_parser = non_empty_path)]
    pub init_bin: Option<PathBuf>,
    /// Maximum number of concurrent client connections.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = parse_max_connections)]
    pub max_connections: usize,
    /// Connections one client address may hold at once (TCP); 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_connections_per_client: usize,
    /// Time a client has to send its request head.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Longest pause within a request body (a StreamIn fed from a slow source needs slack);
    /// hijacked streams have no timeout.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub body_idle_timeout: Duration,
    /// CPU hard quota: microseconds of CPU per 100 ms period granted per cpu share
    /// (cpu.cfs_quota_us / cpu.max); 0 = no quota.
    #[arg(long, value_name = "MICROSECONDS", default_value_t = 0)]
    pub cpu_quota_per_share: u64,
    /// Size of the XFS file (sparse, loop-mounted with project quotas under the state dir)
    /// holding the containers' writable layers, e.g. `10G`; 0 = no store, disk limits are
    /// refused.
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = parse_size)]
    pub disk_store_size: u64,
    /// Percent of a CPU each cpu share entitles a container to, for Metrics' CPUEntitlement
    /// (shares x percent/100 x age); 0 = report 0.
    #[arg(long, value_name = "PERCENT", default_value = "0", value_parser = parse_percent)]
    pub cpu_entitlement_per_share: f64,
    /// Registry (`host:port`, or a host for every port) pulled from over plain HTTP instead of
    /// HTTPS; repeatable.
    #[arg(long = "insecure-docker-registry", value_name = "HOST:PORT", value_parser = non_empty)]
    pub insecure_docker_registry: Vec<String>,
    /// Size of the image layer store (`<state>/images`) above which layers no container uses
    /// are removed, checked whenever a container is destroyed; -1 = never, 0 = always.
    #[arg(long, value_name = "MEGABYTES", default_value_t = -1, allow_negative_numbers = true)]
    pub graph_cleanup_threshold_in_megabytes: i64,
    /// Host uid that container uid 1 maps to in unprivileged containers (container root is
    /// always 4294967294, "maximus").
    #[arg(long, value_name = "ID", default_value_t = 1)]
    pub uid_map_start: u32,
    /// How many container uids from 1 up are mapped [default: all up to 4294967293].
    #[arg(long, value_name = "N")]
    pub uid_map_length: Option<u32>,
    /// Host gid that container gid 1 maps to in unprivileged containers.
    #[arg(long, value_name = "ID", default_value_t = 1)]
    pub gid_map_start: u32,
    /// How many container gids from 1 up are mapped [default: all up to 4294967293].
    #[arg(long, value_name = "N")]
    pub gid_map_length: Option<u32>,
    /// Refuse to create privileged containers (no user namespace, host root as root).
    #[arg(long)]
    pub disable_privileged_containers: bool,
    /// Container networking (pools, firewall defaults, DNS).
    #[command(flatten)]
    pub net: crate::net::NetConfig,
}

impl Config {
    /// The user namespace mapping of unprivileged containers, from the `--*-map-*` settings.
    pub fn id_mapping(&self) -> Result<rootfs::IdMapping, rootfs::idmap::IdMapError> {
        rootfs::IdMapping::guardian(
            self.uid_map_start,
            self.uid_map_length,
            self.gid_map_start,
            self.gid_map_length,
        )
    }
}

/// The defaults, exactly as the flags declare them.
impl Default for Config {
    fn default() -> Self {
        use clap::{FromArgMatches, Parser};
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            config: Config,
        }
        let matches = <Only as clap::CommandFactory>::command().get_matches_from(["gardend"]);
        Only::from_arg_matches(&matches)
            .expect("the declared defaults parse")
            .config
    }
}

fn parse_ip(value: &str) -> Result<String, String> {
    value
        .trim()
        .parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| format!("{value:?} is not an IP address"))
}

fn parse_log_level(value: &str) -> Result<String, String> {
    let level = value.trim().to_ascii_lowercase();
    match level.as_str() {
        "trace" | "debug" | "info" | "warn" | "error" => Ok(level),
        "warning" => Ok("warn".into()),
        _ => Err(format!(
            "unknown log level {value:?} (expected debug, info, warn or error)"
        )),
    }
}

fn parse_max_connections(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A non-negative, finite percentage such as `12.5`.
fn parse_percent(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(p) if p.is_finite() && p >= 0.0 => Ok(p),
        Ok(_) => Err(format!(
            "invalid percentage {value:?}: must be a finite number >= 0"
        )),
        Err(e) => Err(format!("invalid percentage {value:?}: {e}")),
    }
}

/// An empty value means "not set" (a config file may say `init_bin =`).
fn non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(value.to_string())
    }
}

fn non_empty_path(value: &str) -> Result<PathBuf, String> {
    non_empty(value).map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages() {
        assert_eq!(parse_percent("12.5"), Ok(12.5));
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("NaN").is_err());
    }

    #[test]
    fn defaults() {
        let d = Config::default();
        assert!(!d.disable_privileged_containers);
        let ids = d.id_mapping().unwrap();
        assert_eq!(
            rootfs::IdMapping::map_file(&ids.uids),
            "0 4294967294 1\n1 1 4294967293\n"
        );
        assert_eq!((d.bind_ip.as_str(), d.bind_port), ("127.0.0.1", 7777));
        assert_eq!(d.depot, PathBuf::from("/var/lib/gardend/depot"));
        assert_eq!((d.max_connections, d.log_level.as_str()), (4096, "info"));
        assert_eq!(d.cgroup_parent, "garden");
        assert_eq!(d.default_grace_time, Duration::ZERO);
        assert_eq!(
            (d.bind_socket, d.init_bin, d.default_rootfs),
            (None, None, None)
        );
        assert_eq!(d.net.pool.to_string(), "10.254.0.0/22");
        assert_eq!((d.net.port_pool_start, d.net.port_pool_size), (61001, 4534));
        assert_eq!(d.net.iptables_bin, PathBuf::from("iptables"));
        assert!(!d.net.allow_host_access);
    }
}
