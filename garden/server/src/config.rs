//! gardend's configuration: Guardian's flag names where one exists, plus a config file.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the core needs to start. Filled from flags and the config file by `cli.rs`.
#[derive(Debug, Clone)]
pub struct Config {
    /// TCP address to listen on when `bind_socket` is not set.
    pub bind_ip: String,
    pub bind_port: u16,
    /// Unix socket path; when set, gardend listens there instead of TCP.
    pub bind_socket: Option<PathBuf>,
    /// Directory holding one bundle directory per container.
    pub depot: PathBuf,
    /// Rootfs used when a create names no image; `None` = build the embedded busybox rootfs
    /// under `<depot>/../rootfs` (or the state dir) on first start.
    pub default_rootfs: Option<String>,
    /// Grace time for containers created with `grace_time` 0; zero = never reaped.
    pub default_grace_time: Duration,
    /// 0 = no limit.
    pub max_containers: u64,
    /// tracing filter, e.g. `info` or `debug`.
    pub log_level: String,
    /// Name of the cgroup gardend owns at the root of each hierarchy.
    pub cgroup_parent: String,
    /// Path of the garden-init binary; `None` = next to the gardend executable.
    pub init_bin: Option<PathBuf>,
    /// Cap on concurrent client connections.
    pub max_connections: usize,
    /// Microseconds of CPU per 100 ms period per cpu share; 0 = no hard CPU quota.
    pub cpu_quota_per_share: u64,
    /// Bytes of the loop-mounted XFS quota store; 0 = no store (disk limits refused).
    pub disk_store_size: u64,
    /// Percent of a CPU per cpu share, for Metrics' CPUEntitlement; 0 = not reported.
    pub cpu_entitlement_per_share: f64,
    /// Container networking (pools, firewall defaults, DNS).
    pub net: crate::net::NetConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind_ip: "127.0.0.1".into(),
            bind_port: 7777,
            bind_socket: None,
            depot: PathBuf::from("/var/lib/gardend/depot"),
            default_rootfs: None,
            default_grace_time: Duration::ZERO,
            max_containers: 0,
            log_level: "info".into(),
            cgroup_parent: "garden".into(),
            init_bin: None,
            max_connections: 4096,
            cpu_quota_per_share: 0,
            disk_store_size: 0,
            cpu_entitlement_per_share: 0.0,
            net: crate::net::NetConfig::default(),
        }
    }
}
