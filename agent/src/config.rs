//! The agent's configuration: a dea.yml-style YAML file with the DEA's key names (spec §11)
//! plus `garden_address`. Unknown keys and wrong types are errors that name the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `key` is the dotted path of the offending key (`resources.memory_mb`).
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Root of all agent state: `db/`, `droplets/`, `crashes/`, `tmp/`, `staging/`.
    pub base_dir: PathBuf,
    #[serde(default)]
    pub index: u64,
    /// `nats://[user:pass@]host:port`, tried in turn.
    pub nats_servers: Vec<String>,
    /// gardend: `HOST:PORT` or a unix socket path.
    pub garden_address: String,
    /// Suffix of the directory server's host name (`<uuid>.<domain>`).
    #[serde(default = "default_domain")]
    pub domain: String,
    /// The address instances are reached at (router.register `host`, `CF_INSTANCE_IP`).
    #[serde(default = "default_local_ip")]
    pub local_ip: String,
    pub stacks: Vec<Stack>,
    #[serde(default)]
    pub placement_properties: PlacementProperties,
    #[serde(default)]
    pub resources: ResourcesConfig,
    #[serde(default)]
    pub intervals: Intervals,
    pub directory_server: DirectoryServer,
    /// Seconds; used when a start message gives no `health_check_timeout`.
    #[serde(default = "default_health_check_timeout")]
    pub default_health_check_timeout: f64,
    #[serde(default = "default_crash_lifetime")]
    pub crash_lifetime_secs: u64,
    #[serde(default = "default_evacuation_bail_out")]
    pub evacuation_bail_out_time_in_seconds: u64,
    #[serde(default)]
    pub instance: InstanceConfig,
    #[serde(default)]
    pub staging: StagingConfig,
    #[serde(default)]
    pub tasks: TasksConfig,
    #[serde(default)]
    pub bind_mounts: Vec<BindMount>,
    #[serde(default)]
    pub hooks: Hooks,
    /// Shell text inserted before `exec` in start scripts.
    #[serde(default)]
    pub post_setup_hook: Option<String>,
    #[serde(default)]
    pub pid_filename: Option<PathBuf>,
    #[serde(default)]
    pub logging: Logging,
    /// Port for `/metrics` (Prometheus text format) on all addresses; off unless set.
    #[serde(default)]
    pub metrics_port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    pub name: String,
    /// Root filesystem path or image URI handed to Garden; empty = gardend's default rootfs.
    #[serde(default)]
    pub package_path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementProperties {
    #[serde(default = "default_zone")]
    pub zone: String,
}

impl Default for PlacementProperties {
    fn default() -> Self {
        PlacementProperties {
            zone: default_zone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourcesConfig {
    pub memory_mb: u64,
    pub memory_overcommit_factor: f64,
    pub disk_mb: u64,
    pub disk_overcommit_factor: f64,
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        ResourcesConfig {
            memory_mb: 8192,
            memory_overcommit_factor: 1.0,
            disk_mb: 16 * 1024 * 1024,
            disk_overcommit_factor: 1.0,
        }
    }
}

/// Cadences in seconds (fractions allowed, so tests can run fast).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Intervals {
    pub heartbeat: f64,
    pub advertise: f64,
    pub router_register_in_seconds: f64,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            heartbeat: 10.0,
            advertise: 5.0,
            router_register_in_seconds: 20.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryServer {
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// The public listener (signed URLs are served here).
    pub v2_port: u16,
    /// The DEA's loopback file API; kept for config compatibility, served by the same listener.
    #[serde(default)]
    pub file_api_port: Option<u16>,
    /// Seconds without new data before a `tail` stream is cut.
    #[serde(default = "default_streaming_timeout")]
    pub streaming_timeout: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceConfig {
    pub memory_to_cpu_share_ratio: u64,
    pub min_cpu_share_limit: u64,
    pub max_cpu_share_limit: u64,
    pub disk_inode_limit: u64,
    pub nproc_limit: u64,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            memory_to_cpu_share_ratio: 8,
            min_cpu_share_limit: 1,
            max_cpu_share_limit: 256,
            disk_inode_limit: 200_000,
            nproc_limit: 512,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StagingConfig {
    pub enabled: bool,
    pub memory_limit_mb: u64,
    pub disk_limit_mb: u64,
    pub disk_inode_limit: u64,
    pub cpu_limit_shares: u64,
    /// Seconds.
    pub max_staging_duration: u64,
    pub environment: BTreeMap<String, String>,
}

impl Default for StagingConfig {
    fn default() -> Self {
        StagingConfig {
            enabled: true,
            memory_limit_mb: 1024,
            disk_limit_mb: 2048,
            disk_inode_limit: 200_000,
            cpu_limit_shares: 512,
            max_staging_duration: 900,
            environment: BTreeMap::new(),
        }
    }
}

/// One-off tasks (`task.*` subjects).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Seconds a finished task's output is kept after it was first retrieved.
    pub retention_secs: u64,
    /// Output kept per stream; older bytes are dropped beyond it.
    pub max_output_bytes: u64,
    /// Waiting tasks beyond this are refused.
    pub max_waiting: usize,
}

impl Default for TasksConfig {
    fn default() -> Self {
        TasksConfig {
            retention_secs: 300,
            max_output_bytes: 1 << 20,
            max_waiting: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindMount {
    pub src_path: PathBuf,
    #[serde(default)]
    pub dst_path: Option<PathBuf>,
    #[serde(default)]
    pub mode: BindMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BindMode {
    #[default]
    Ro,
    Rw,
}

/// Host script paths run inside the container as vcap.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    pub before_start: Option<PathBuf>,
    pub after_start: Option<PathBuf>,
    pub before_stop: Option<PathBuf>,
    pub after_stop: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    pub level: String,
    pub file: Option<PathBuf>,
    /// `text` or `json` (one object per line, with the instance, task and handle fields).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            level: "info".into(),
            file: None,
            format: LogFormat::Text,
        }
    }
}

fn default_domain() -> String {
    "cell.local".into()
}
fn default_local_ip() -> String {
    "127.0.0.1".into()
}
fn default_zone() -> String {
    "default".into()
}
fn default_protocol() -> String {
    "http".into()
}
fn default_health_check_timeout() -> f64 {
    60.0
}
fn default_crash_lifetime() -> u64 {
    3600
}
fn default_evacuation_bail_out() -> u64 {
    600
}
fn default_streaming_timeout() -> u64 {
    60
}

/// Seconds (possibly fractional) as a Duration; nonsense becomes the smallest sane value.
pub fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(1e9))
    } else {
        Duration::from_millis(100)
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and check; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let de = serde_yaml::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(top level)".into()
            } else {
                key
            };
            invalid(key, e.into_inner().to_string())
        })?;
        config.check().map_err(|(k, m)| invalid(k.into(), m))?;
        Ok(config)
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.nats_servers.is_empty() {
            return Err(("nats_servers", "at least one server is required".into()));
        }
        for s in &self.nats_servers {
            if !s.starts_with("nats://") {
                return Err(("nats_servers", format!("{s:?} is not a nats:// URL")));
            }
        }
        if self.stacks.is_empty() {
            return Err(("stacks", "at least one stack is required".into()));
        }
        if self.garden_address.trim().is_empty() {
            return Err(("garden_address", "must not be empty".into()));
        }
        for (key, f) in [
            (
                "resources.memory_overcommit_factor",
                self.resources.memory_overcommit_factor,
            ),
            (
                "resources.disk_overcommit_factor",
                self.resources.disk_overcommit_factor,
            ),
        ] {
            if !(f.is_finite() && f > 0.0) {
                return Err((key, format!("must be a positive number, got {f}")));
            }
        }
        for (key, v) in [
            ("intervals.heartbeat", self.intervals.heartbeat),
            ("intervals.advertise", self.intervals.advertise),
            (
                "intervals.router_register_in_seconds",
                self.intervals.router_register_in_seconds,
            ),
            (
                "default_health_check_timeout",
                self.default_health_check_timeout,
            ),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err((
                    key,
                    format!("must be a positive number of seconds, got {v}"),
                ));
            }
        }
        if self.instance.memory_to_cpu_share_ratio == 0 {
            return Err((
                "instance.memory_to_cpu_share_ratio",
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Memory and disk capacity with the overcommit factors applied (spec §7).
    pub fn capacity(&self) -> crate::resources::Amount {
        crate::resources::Amount {
            memory_mb: (self.resources.memory_mb as f64 * self.resources.memory_overcommit_factor)
                as u64,
            disk_mb: (self.resources.disk_mb as f64 * self.resources.disk_overcommit_factor) as u64,
        }
    }

    /// The rootfs (path or image URI) of a stack, or None if this cell does not have it.
    pub fn stack(&self, name: &str) -> Option<&Stack> {
        self.stacks.iter().find(|s| s.name == name)
    }

    pub fn db_dir(&self) -> PathBuf {
        self.base_dir.join("db")
    }
    pub fn crashes_dir(&self) -> PathBuf {
        self.base_dir.join("crashes")
    }
    pub fn droplets_dir(&self) -> PathBuf {
        self.base_dir.join("droplets")
    }
    pub fn tmp_dir(&self) -> PathBuf {
        self.base_dir.join("tmp")
    }
    pub fn staging_dir(&self) -> PathBuf {
        self.base_dir.join("staging")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
base_dir: /tmp/agent
nats_servers: [nats://127.0.0.1:4222]
garden_address: 127.0.0.1:7777
stacks: [{name: busybox}]
directory_server: {v2_port: 34567}
";

    #[test]
    fn minimal_config_gets_the_dea_defaults() {
        let c = Config::parse(MINIMAL, Path::new("t.yml")).unwrap();
        assert_eq!(c.intervals.advertise, 5.0);
        assert_eq!(c.instance.max_cpu_share_limit, 256);
        assert_eq!(c.placement_properties.zone, "default");
        assert_eq!(c.capacity().memory_mb, 8192);
        assert_eq!(c.stack("busybox").unwrap().package_path, "");
        assert!(c.stack("cflinuxfs2").is_none());
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let e = Config::parse(
            &format!("{MINIMAL}resources: {{memory_mb: lots}}\n"),
            Path::new("t.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("resources.memory_mb"), "{e}");
        let e = Config::parse(&format!("{MINIMAL}colour: blue\n"), Path::new("t.yml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = Config::parse(
            &format!("{MINIMAL}instance: {{nproc: 5}}\n"),
            Path::new("t.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("instance") && e.contains("nproc"), "{e}");
        let e = Config::parse(
            &MINIMAL.replace("nats://127.0.0.1:4222", "http://x"),
            Path::new("t.yml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nats_servers"), "{e}");
    }
}
