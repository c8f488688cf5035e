//! gardend's command line and config file, producing a [`Config`].
//!
//! Flags keep Guardian's names (`--bind-ip`, `--depot`, `--default-grace-time`...). `--config`
//! names an INI file like Guardian's: a `[server]` section whose keys are the flag names with
//! dashes or underscores (`bind_port = 7777`). A flag given on the command line wins over the
//! file, which wins over the defaults of [`Config::default`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser};

use crate::config::Config;

/// A config file that cannot be used. Messages carry the path and line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}:{line}: invalid value {value:?} for {key}: {message}", path.display())]
    Value {
        path: PathBuf,
        line: usize,
        key: String,
        value: String,
        message: String,
    },
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "gardend",
    version,
    about = "A container server speaking the Garden HTTP API"
)]
pub struct Cli {
    /// INI config file with a [server] section; command-line flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

/// Every setting, unset unless given (so the sources can be layered).
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct Settings {
    /// IP address to listen on [default: 127.0.0.1].
    #[arg(long, value_name = "IP", value_parser = parse_ip)]
    pub bind_ip: Option<String>,
    /// TCP port to listen on [default: 7777].
    #[arg(long, value_name = "PORT")]
    pub bind_port: Option<u16>,
    /// Listen on this unix socket instead of TCP.
    #[arg(long, value_name = "PATH")]
    pub bind_socket: Option<PathBuf>,
    /// Directory holding one bundle per container [default: /var/lib/gardend/depot].
    #[arg(long, value_name = "DIR")]
    pub depot: Option<PathBuf>,
    /// Rootfs for containers created without an image [default: built-in busybox].
    #[arg(long, value_name = "URI")]
    pub default_rootfs: Option<String>,
    /// Grace time for containers created without one, e.g. `5m`, `1h30m`, `500ms`, or a number
    /// of seconds; 0 = never reaped [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub default_grace_time: Option<Duration>,
    /// Maximum number of containers; 0 = no limit [default: 0].
    #[arg(long, value_name = "N")]
    pub max_containers: Option<u64>,
    /// debug, info, warn or error [default: info].
    #[arg(long, value_name = "LEVEL", value_parser = parse_log_level)]
    pub log_level: Option<String>,
    /// Name of the cgroup gardend creates under each hierarchy [default: garden].
    #[arg(long, value_name = "NAME")]
    pub cgroup_parent: Option<String>,
    /// Path of the garden-init binary [default: next to gardend].
    #[arg(long, value_name = "PATH")]
    pub init_bin: Option<PathBuf>,
    /// Maximum number of concurrent client connections [default: 4096].
    #[arg(long, value_name = "N", value_parser = parse_max_connections)]
    pub max_connections: Option<usize>,
    /// CPU hard quota: microseconds of CPU per 100 ms period granted per cpu share
    /// (cpu.cfs_quota_us / cpu.max); 0 = no quota [default: 0].
    #[arg(long, value_name = "MICROSECONDS")]
    pub cpu_quota_per_share: Option<u64>,
    /// Size of the XFS file (sparse, loop-mounted with project quotas under the state dir)
    /// holding the containers' writable layers, e.g. `10G`; 0 = no store, disk limits are
    /// refused [default: 0].
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub disk_store_size: Option<u64>,
    /// Percent of a CPU each cpu share entitles a container to, for Metrics' CPUEntitlement
    /// (shares x percent/100 x age); 0 = report 0 [default: 0].
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub cpu_entitlement_per_share: Option<f64>,
    #[command(flatten)]
    pub net: NetSettings,
}

/// The merged configuration, plus notes about ignored config-file content (to be logged once
/// logging is up).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Cli {
    /// Layer flags over the config file (if any) over the defaults.
    pub fn into_config(self) -> Result<Loaded, CliError> {
        let (file, warnings) = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
                    path: path.clone(),
                    source,
                })?;
                parse_config_file(&text, path)?
            }
            None => (Settings::default(), Vec::new()),
        };
        Ok(Loaded {
            config: self.settings.or(file).into_config(),
            warnings,
        })
    }
}

impl Settings {
    /// Each setting from `self` if set, else from `fallback`.
    pub fn or(self, fallback: Settings) -> Settings {
        Settings {
            bind_ip: self.bind_ip.or(fallback.bind_ip),
            bind_port: self.bind_port.or(fallback.bind_port),
            bind_socket: self.bind_socket.or(fallback.bind_socket),
            depot: self.depot.or(fallback.depot),
            default_rootfs: self.default_rootfs.or(fallback.default_rootfs),
            default_grace_time: self.default_grace_time.or(fallback.default_grace_time),
            max_containers: self.max_containers.or(fallback.max_containers),
            log_level: self.log_level.or(fallback.log_level),
            cgroup_parent: self.cgroup_parent.or(fallback.cgroup_parent),
            init_bin: self.init_bin.or(fallback.init_bin),
            max_connections: self.max_connections.or(fallback.max_connections),
            cpu_quota_per_share: self.cpu_quota_per_share.or(fallback.cpu_quota_per_share),
            disk_store_size: self.disk_store_size.or(fallback.disk_store_size),
            cpu_entitlement_per_share: self
                .cpu_entitlement_per_share
                .or(fallback.cpu_entitlement_per_share),
            net: self.net.or(fallback.net),
        }
    }

    /// Fill unset settings from [`Config::default`]. Empty paths mean "not set".
    pub fn into_config(self) -> Config {
        let d = Config::default();
        let non_empty_path = |p: PathBuf| (!p.as_os_str().is_empty()).then_some(p);
        Config {
            bind_ip: self.bind_ip.unwrap_or(d.bind_ip),
            bind_port: self.bind_port.unwrap_or(d.bind_port),
            bind_socket: self.bind_socket.and_then(non_empty_path).or(d.bind_socket),
            depot: self.depot.and_then(non_empty_path).unwrap_or(d.depot),
            default_rootfs: self
                .default_rootfs
                .filter(|r| !r.is_empty())
                .or(d.default_rootfs),
            default_grace_time: self.default_grace_time.unwrap_or(d.default_grace_time),
            max_containers: self.max_containers.unwrap_or(d.max_containers),
            log_level: self.log_level.unwrap_or(d.log_level),
            cgroup_parent: self
                .cgroup_parent
                .filter(|c| !c.is_empty())
                .unwrap_or(d.cgroup_parent),
            init_bin: self.init_bin.and_then(non_empty_path).or(d.init_bin),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            cpu_quota_per_share: self.cpu_quota_per_share.unwrap_or(d.cpu_quota_per_share),
            disk_store_size: self.disk_store_size.unwrap_or(d.disk_store_size),
            cpu_entitlement_per_share: self
                .cpu_entitlement_per_share
                .unwrap_or(d.cpu_entitlement_per_share),
            net: self.net.into_config(),
        }
    }

    /// Set one key from the config file. `Ok(false)`: not a key gardend knows.
    fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "bind_ip" => self.bind_ip = Some(parse_ip(value)?),
            "bind_port" => self.bind_port = Some(value.parse().map_err(|e| format!("{e}"))?),
            "bind_socket" => self.bind_socket = Some(PathBuf::from(value)),
            "depot" => self.depot = Some(PathBuf::from(value)),
            "default_rootfs" => self.default_rootfs = Some(value.to_string()),
            "default_grace_time" => self.default_grace_time = Some(parse_duration(value)?),
            "max_containers" => {
                self.max_containers = Some(value.parse().map_err(|e| format!("{e}"))?)
            }
            "log_level" => self.log_level = Some(parse_log_level(value)?),
            "cgroup_parent" => self.cgroup_parent = Some(value.to_string()),
            "init_bin" => self.init_bin = Some(PathBuf::from(value)),
            "max_connections" => self.max_connections = Some(parse_max_connections(value)?),
            "cpu_quota_per_share" => {
                self.cpu_quota_per_share = Some(value.parse().map_err(|e| format!("{e}"))?)
            }
            "disk_store_size" => self.disk_store_size = Some(parse_size(value)?),
            "cpu_entitlement_per_share" => {
                self.cpu_entitlement_per_share = Some(parse_percent(value)?)
            }
            _ => return self.net.set(key, value),
        }
        Ok(true)
    }
}

/// Read the `[server]` section of an INI config file. Other sections and unknown keys (a
/// Guardian config has many gardend does not use) are reported as warnings, not errors; bad
/// syntax and bad values are errors.
pub fn parse_config_file(text: &str, path: &Path) -> Result<(Settings, Vec<String>), CliError> {
    let mut settings = Settings::default();
    let mut warnings = Vec::new();
    let mut section = String::from("server");
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[') {
            let Some(name) = name.strip_suffix(']') else {
                return Err(CliError::Syntax {
                    path: path.into(),
                    line: line_no,
                    message: format!("unterminated section header {line:?}"),
                });
            };
            section = name.trim().to_ascii_lowercase();
            if section != "server" {
                warnings.push(format!(
                    "{}:{line_no}: ignoring section [{section}]",
                    path.display()
                ));
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(CliError::Syntax {
                path: path.into(),
                line: line_no,
                message: format!("expected `key = value`, found {line:?}"),
            });
        };
        if section != "server" {
            continue;
        }
        let key = key.trim().to_ascii_lowercase().replace('-', "_");
        let value = unquote(value.trim());
        match settings.set(&key, value) {
            Ok(true) => {}
            Ok(false) => warnings.push(format!(
                "{}:{line_no}: ignoring unknown key {key:?}",
                path.display()
            )),
            Err(message) => {
                return Err(CliError::Value {
                    path: path.into(),
                    line: line_no,
                    key,
                    value: value.to_string(),
                    message,
                });
            }
        }
    }
    Ok((settings, warnings))
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|_| value.len() >= 2)
        .unwrap_or(value)
}

fn parse_ip(value: &str) -> Result<String, String> {
    value
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

/// Parse a Go duration (`300ms`, `1.5h`, `2h45m`, `0`; units ns, us, µs, ms, s, m, h) or a bare
/// integer number of seconds. Negative durations are refused.
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

/// Bytes, optionally with a binary suffix: `512M`, `10G`, `1T` (also `10GB`, `10GiB`).
pub fn parse_size(value: &str) -> Result<u64, String> {
    let v = value.trim();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {value:?}: expected e.g. 10G"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("invalid size unit in {value:?}: use K, M, G or T")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {value:?} is too large"))
}

pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let s = value.trim();
    let err = |why: &str| format!("invalid duration {value:?}: {why}");
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| err("too large"));
    }
    let s = match s.strip_prefix('-') {
        Some(rest) if !rest.is_empty() && rest.bytes().all(|b| b == b'0') => {
            return Ok(Duration::ZERO)
        }
        Some(_) => return Err(err("negative")),
        None => s.strip_prefix('+').unwrap_or(s),
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    // Go caps durations at i64 nanoseconds.
    const MAX_NANOS: u128 = i64::MAX as u128;
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after) = rest.split_at(int_len);
        let (frac_part, after) = match after.strip_prefix('.') {
            Some(f) => {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                f.split_at(n)
            }
            None => ("", after),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err("expected a number"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(err("missing unit")),
            other => return Err(err(&format!("unknown unit {other:?}"))),
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err("too large"))?
        };
        // Keep at most 18 fraction digits; beyond that they are below a nanosecond of an hour.
        let frac_digits = &frac_part[..frac_part.len().min(18)];
        let frac: u128 = if frac_digits.is_empty() {
            0
        } else {
            frac_digits.parse().map_err(|_| err("bad fraction"))?
        };
        let scale = 10u128.pow(frac_digits.len() as u32);
        let part = whole
            .checked_mul(unit_nanos)
            .and_then(|w| w.checked_add(frac * unit_nanos / scale))
            .ok_or_else(|| err("too large"))?;
        total = total
            .checked_add(part)
            .filter(|t| *t <= MAX_NANOS)
            .ok_or_else(|| err("too large"))?;
        rest = after;
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("10X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(parse_percent("12.5"), Ok(12.5));
        assert!(parse_percent("-1").is_err());
        assert!(parse_percent("NaN").is_err());
    }

    #[test]
    fn go_durations() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(
            ok("2h45m30.5s"),
            Duration::from_millis((2 * 3600 + 45 * 60 + 30) * 1000 + 500)
        );
        assert_eq!(ok("1us"), Duration::from_micros(1));
        assert_eq!(ok("1µs"), Duration::from_micros(1));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("+3s"), Duration::from_secs(3));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("90"), Duration::from_secs(90));
        assert_eq!(ok(" 10 "), Duration::from_secs(10));
        assert_eq!(ok("2562047h"), Duration::from_secs(2_562_047 * 3600));
    }

    #[test]
    fn bad_durations() {
        for (input, why) in [
            ("", "empty"),
            ("-", "negative"),
            ("5x", "unknown unit"),
            ("1h5", "missing unit"),
            ("-5s", "negative"),
            ("s", "expected a number"),
            (".s", "expected a number"),
            ("3000000h", "too large"),
            ("1.2.3s", "missing unit"),
        ] {
            let e = parse_duration(input).unwrap_err();
            assert!(e.contains(why), "{input:?}: {e}");
        }
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("gardend").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_match_config_default() {
        let config = cli(&[]).into_config().unwrap().config;
        let d = Config::default();
        assert_eq!(
            (config.bind_ip, config.bind_port, config.depot),
            (d.bind_ip, d.bind_port, d.depot)
        );
        assert_eq!(
            (config.max_connections, config.log_level),
            (d.max_connections, d.log_level)
        );
        assert_eq!(config.bind_socket, None);
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("gardend-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gdn.ini");
        std::fs::write(
            &path,
            "; Guardian-style config\n[server]\nbind_port = 9000\nbind-ip = 0.0.0.0\ndefault_grace_time = 1h30m\nlog_level = debug\n\
             depot = \"/srv/depot\"\nruntime_plugin = /usr/bin/runc\nmax_containers = 12\n\n[other]\nbind_port = 1\n",
        )
        .unwrap();
        let path_str = path.to_str().unwrap();
        let loaded = cli(&[
            "--config",
            path_str,
            "--bind-port",
            "7000",
            "--max-containers",
            "3",
        ])
        .into_config()
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.bind_port, 7000, "flag wins");
        assert_eq!(c.max_containers, 3, "flag wins");
        assert_eq!(c.bind_ip, "0.0.0.0", "file wins over default");
        assert_eq!(c.default_grace_time, Duration::from_secs(5400));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.depot, PathBuf::from("/srv/depot"));
        assert_eq!(c.cgroup_parent, "garden", "default");
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("runtime_plugin"));
        assert!(loaded.warnings[1].contains("[other]"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_file_errors_name_the_line() {
        let path = Path::new("/etc/gardend.ini");
        let err = parse_config_file("[server]\nbind_port = 99999\n", path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/etc/gardend.ini:2: invalid value \"99999\" for bind_port"),
            "{err}"
        );
        let err = parse_config_file("[server]\njunk\n", path).unwrap_err();
        assert!(
            err.to_string().contains(":2: expected `key = value`"),
            "{err}"
        );
        let err = parse_config_file("[server\n", path).unwrap_err();
        assert!(err.to_string().contains("unterminated section"), "{err}");
        let err = parse_config_file("default_grace_time = soon\n", path).unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
        let err = Cli {
            config: Some("/nonexistent/gardend.ini".into()),
            settings: Settings::default(),
        }
        .into_config()
        .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/gardend.ini"),
            "{err}"
        );
    }

    #[test]
    fn flag_values_are_validated() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("gardend").chain(args.iter().copied()))
        };
        assert!(parse(&["--bind-ip", "localhost"]).is_err());
        assert!(parse(&["--log-level", "loud"]).is_err());
        assert!(parse(&["--max-connections", "0"]).is_err());
        assert!(parse(&["--default-grace-time", "-1s"]).is_err());
        let c = cli(&[
            "--bind-socket",
            "/tmp/g.sock",
            "--log-level",
            "WARN",
            "--default-grace-time",
            "45",
        ])
        .into_config()
        .unwrap()
        .config;
        assert_eq!(c.bind_socket, Some(PathBuf::from("/tmp/g.sock")));
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.default_grace_time, Duration::from_secs(45));
    }

    #[test]
    fn network_flags_and_file_keys() {
        let c = cli(&[
            "--network-pool",
            "10.250.0.0/24",
            "--deny-network",
            "0.0.0.0/0",
            "--deny-network",
            "10.0.0.0/8",
            "--allow-host-access",
            "--dns-server",
            "8.8.8.8",
        ])
        .into_config()
        .unwrap()
        .config
        .net;
        assert_eq!(c.pool.to_string(), "10.250.0.0/24");
        assert_eq!(c.deny_networks.len(), 2);
        assert!(c.allow_host_access);
        assert_eq!(c.dns_servers, vec![std::net::Ipv4Addr::new(8, 8, 8, 8)]);
        assert_eq!(c.port_pool_start, 61001, "default");
        let path = Path::new("/etc/gardend.ini");
        let (s, warnings) = parse_config_file(
            "[server]\nport_pool_start = 62000\nadditional_host_entry = 1.2.3.4 db\nadditional_host_entry = 1.2.3.5 cache\nmtu = 1400\n",
            path,
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let n = s.into_config().net;
        assert_eq!((n.port_pool_start, n.mtu), (62000, Some(1400)));
        assert_eq!(n.additional_host_entries, ["1.2.3.4 db", "1.2.3.5 cache"]);
        assert!(parse_config_file("[server]\nnetwork_pool = 10.0.0.0/33\n", path).is_err());
    }
}

/// Networking settings (Guardian's kawasaki flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct NetSettings {
    /// Pool of container subnets, carved into /30s [default: 10.254.0.0/22].
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub network_pool: Option<crate::net::Cidr>,
    /// First host port handed out by NetIn [default: 61001].
    #[arg(long, value_name = "PORT")]
    pub port_pool_start: Option<u32>,
    /// Number of host ports for NetIn [default: 4534].
    #[arg(long, value_name = "N")]
    pub port_pool_size: Option<u32>,
    /// MTU of container interfaces [default: the host's outbound MTU, at most 1500].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(68..=65535))]
    pub mtu: Option<u32>,
    /// Network containers may not reach unless a NetOut rule allows it (repeatable).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub deny_network: Option<Vec<crate::net::Cidr>>,
    /// Let containers reach the host itself.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub allow_host_access: Option<bool>,
    /// DNS server for containers' resolv.conf instead of the host's (repeatable).
    #[arg(long, value_name = "IP")]
    pub dns_server: Option<Vec<std::net::Ipv4Addr>>,
    /// DNS server added to containers' resolv.conf (repeatable).
    #[arg(long, value_name = "IP")]
    pub additional_dns_server: Option<Vec<std::net::Ipv4Addr>>,
    /// Line added to containers' /etc/hosts, e.g. `10.0.0.5 db` (repeatable).
    #[arg(long, value_name = "ENTRY")]
    pub additional_host_entry: Option<Vec<String>>,
    /// Host address NetIn forwards from and Info reports [default: the default route's source].
    #[arg(long, value_name = "IP")]
    pub external_ip: Option<std::net::Ipv4Addr>,
    /// iptables binary; `<bin>-restore` and `<bin>-save` are used next to it [default: iptables].
    #[arg(long, value_name = "PATH")]
    pub iptables_bin: Option<PathBuf>,
}

fn parse_cidr(value: &str) -> Result<crate::net::Cidr, String> {
    value
        .parse()
        .map_err(|e: crate::net::NetError| e.to_string())
}

impl NetSettings {
    pub fn or(self, f: NetSettings) -> NetSettings {
        NetSettings {
            network_pool: self.network_pool.or(f.network_pool),
            port_pool_start: self.port_pool_start.or(f.port_pool_start),
            port_pool_size: self.port_pool_size.or(f.port_pool_size),
            mtu: self.mtu.or(f.mtu),
            deny_network: self.deny_network.or(f.deny_network),
            allow_host_access: self.allow_host_access.or(f.allow_host_access),
            dns_server: self.dns_server.or(f.dns_server),
            additional_dns_server: self.additional_dns_server.or(f.additional_dns_server),
            additional_host_entry: self.additional_host_entry.or(f.additional_host_entry),
            external_ip: self.external_ip.or(f.external_ip),
            iptables_bin: self.iptables_bin.or(f.iptables_bin),
        }
    }

    pub fn into_config(self) -> crate::net::NetConfig {
        let d = crate::net::NetConfig::default();
        crate::net::NetConfig {
            pool: self.network_pool.unwrap_or(d.pool),
            port_pool_start: self.port_pool_start.unwrap_or(d.port_pool_start),
            port_pool_size: self.port_pool_size.unwrap_or(d.port_pool_size),
            mtu: self.mtu.or(d.mtu),
            deny_networks: self.deny_network.unwrap_or(d.deny_networks),
            allow_host_access: self.allow_host_access.unwrap_or(d.allow_host_access),
            dns_servers: self.dns_server.unwrap_or(d.dns_servers),
            additional_dns_servers: self
                .additional_dns_server
                .unwrap_or(d.additional_dns_servers),
            additional_host_entries: self
                .additional_host_entry
                .unwrap_or(d.additional_host_entries),
            external_ip: self.external_ip.or(d.external_ip),
            iptables_bin: self
                .iptables_bin
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(d.iptables_bin),
        }
    }

    /// One config-file key; list keys may repeat and accumulate.
    fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let ip = |v: &str| {
            v.parse::<std::net::Ipv4Addr>()
                .map_err(|_| format!("{v:?} is not an IPv4 address"))
        };
        let num = |v: &str| v.parse::<u32>().map_err(|e| e.to_string());
        match key {
            "network_pool" => self.network_pool = Some(parse_cidr(value)?),
            "port_pool_start" => self.port_pool_start = Some(num(value)?),
            "port_pool_size" => self.port_pool_size = Some(num(value)?),
            "mtu" => self.mtu = Some(num(value)?),
            "deny_network" => self
                .deny_network
                .get_or_insert_with(Vec::new)
                .push(parse_cidr(value)?),
            "allow_host_access" => {
                self.allow_host_access = Some(
                    value
                        .parse()
                        .map_err(|_| format!("{value:?} is not true or false"))?,
                )
            }
            "dns_server" => self
                .dns_server
                .get_or_insert_with(Vec::new)
                .push(ip(value)?),
            "additional_dns_server" => self
                .additional_dns_server
                .get_or_insert_with(Vec::new)
                .push(ip(value)?),
            "additional_host_entry" => self
                .additional_host_entry
                .get_or_insert_with(Vec::new)
                .push(value.to_string()),
            "external_ip" => self.external_ip = Some(ip(value)?),
            "iptables_bin" => self.iptables_bin = Some(PathBuf::from(value)),
            _ => return Ok(false),
        }
        Ok(true)
    }
}
