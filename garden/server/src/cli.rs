//! gardend's command line and config file, producing a [`Config`].
//!
//! Flags keep Guardian's names (`--bind-ip`, `--depot`, `--default-grace-time`...). `--config`
//! names an INI file like Guardian's: a `[server]` section whose keys are the flag names with
//! dashes or underscores (`bind_port = 7777`). A flag given on the command line wins over the
//! file, which wins over the defaults declared on [`Config`].
//!
//! The merge is generic: each file line becomes the flag it names and is checked by the same
//! clap parser as the command line; the file's flags go first, minus those the command line
//! gives, so a setting is declared once (its field in `config.rs`) and never listed here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

use crate::config::Config;

/// Flags or a config file that cannot be used. File messages carry the path and line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad flags, or --help / --version: `clap::Error::exit` prints it the usual way.
    #[error(transparent)]
    Flags(#[from] clap::Error),
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
    about = "A container server speaking the Garden HTTP API",
    // A key the config file repeats: the last one wins (lists accumulate).
    args_override_self = true
)]
pub struct Cli {
    /// INI config file with a [server] section; command-line flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Config,
}

/// The merged configuration, plus notes about ignored config-file content (to be logged once
/// logging is up).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Cli {
    /// Layer the command line `args` (program name first) over the config file it names (if
    /// any) over the defaults.
    pub fn load<I, T>(args: I) -> Result<Loaded, CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = Cli::command();
        let given = command.clone().try_get_matches_from(&args)?;
        let Some(path) = given.get_one::<PathBuf>("config").cloned() else {
            let config = Cli::from_arg_matches(&given)?.settings;
            return Ok(Loaded {
                config,
                warnings: Vec::new(),
            });
        };
        let text = std::fs::read_to_string(&path).map_err(|source| CliError::Read {
            path: path.clone(),
            source,
        })?;
        let (file, warnings) = config_file_flags(&text, &path)?;
        let mut merged: Vec<OsString> = args.iter().take(1).cloned().collect();
        merged.extend(
            file.into_iter()
                .filter(|(id, _)| given.value_source(id) != Some(ValueSource::CommandLine))
                .map(|(_, flag)| flag.into()),
        );
        merged.extend(args.into_iter().skip(1));
        let matches = command.try_get_matches_from(merged)?;
        Ok(Loaded {
            config: Cli::from_arg_matches(&matches)?.settings,
            warnings,
        })
    }
}

/// A config file's settings as flags: (arg id, `--name=value`), in file order.
pub type FileFlags = Vec<(String, String)>;

/// The `[server]` section of an INI config file as flags `(arg id, "--name=value")`, each
/// checked on its own so that an error names its line. Other sections and unknown keys (a
/// Guardian config has many gardend does not use) are warnings; bad syntax and bad values are
/// errors. An empty value leaves the setting unset.
pub fn config_file_flags(text: &str, path: &Path) -> Result<(FileFlags, Vec<String>), CliError> {
    let command = Cli::command();
    let mut flags = Vec::new();
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
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config");
        let Some(arg) = arg else {
            warnings.push(format!(
                "{}:{line_no}: ignoring unknown key {key:?}",
                path.display()
            ));
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let flag = format!("--{long}={value}");
        if let Err(e) = command.clone().try_get_matches_from(["gardend", &flag]) {
            return Err(CliError::Value {
                path: path.into(),
                line: line_no,
                key,
                value: value.to_string(),
                message: clap_reason(&e),
            });
        }
        flags.push((arg.get_id().to_string(), flag));
    }
    Ok((flags, warnings))
}

/// What the value parser said, without clap's "invalid value ... for '--flag'" framing.
fn clap_reason(e: &clap::Error) -> String {
    use std::error::Error;
    match e.source() {
        Some(source) => source.to_string(),
        None => e
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string(),
    }
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|_| value.len() >= 2)
        .unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn load(args: &[&str]) -> Result<Loaded, CliError> {
        Cli::load(std::iter::once("gardend").chain(args.iter().copied()))
    }

    fn config(args: &[&str]) -> Config {
        load(args).unwrap().config
    }

    fn config_file(name: &str, text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_string();
        (dir, path)
    }

    #[test]
    fn defaults_match_config_default() {
        let config = config(&[]);
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
        let (_dir, path) = config_file(
            "gdn.ini",
            "; Guardian-style config\n[server]\nbind_port = 9000\nbind-ip = 0.0.0.0\ndefault_grace_time = 1h30m\nlog_level = debug\n\
             depot = \"/srv/depot\"\nruntime_plugin = /usr/bin/runc\nmax_containers = 12\ninit_bin =\n\n[other]\nbind_port = 1\n",
        );
        let loaded = load(&[
            "--config",
            &path,
            "--bind-port",
            "7000",
            "--max-containers",
            "3",
        ])
        .unwrap();
        let c = loaded.config;
        assert_eq!(c.bind_port, 7000, "flag wins");
        assert_eq!(c.max_containers, 3, "flag wins");
        assert_eq!(c.bind_ip, "0.0.0.0", "file wins over default");
        assert_eq!(c.default_grace_time, Duration::from_secs(5400));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.depot, PathBuf::from("/srv/depot"));
        assert_eq!(c.init_bin, None, "an empty value leaves the setting unset");
        assert_eq!(c.cgroup_parent, "garden", "default");
        assert_eq!(loaded.warnings.len(), 2, "{:?}", loaded.warnings);
        assert!(loaded.warnings[0].contains("runtime_plugin"));
        assert!(loaded.warnings[1].contains("[other]"));
    }

    #[test]
    fn the_last_of_a_repeated_key_wins_and_lists_accumulate() {
        let (_dir, path) = config_file(
            "gdn.ini",
            "bind_port = 1\nbind_port = 2\ndeny_network = 10.0.0.0/8\ndeny_network = 0.0.0.0/0\n",
        );
        let c = config(&["--config", &path]);
        assert_eq!(c.bind_port, 2);
        assert_eq!(c.net.deny_networks.len(), 2);
        let c = config(&["--config", &path, "--deny-network", "192.168.0.0/16"]);
        let denied: Vec<String> = c.net.deny_networks.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            denied,
            ["192.168.0.0/16"],
            "the flag's list replaces the file's"
        );
    }

    #[test]
    fn the_shipped_config_loads() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/config/gardend.ini"
        );
        let c = config(&["--config", path]);
        assert_eq!((c.bind_port, c.warm_containers), (7777, 4));
    }

    #[test]
    fn config_file_errors_name_the_line() {
        let path = Path::new("/etc/gardend.ini");
        let err = config_file_flags("[server]\nbind_port = 99999\n", path).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/etc/gardend.ini:2: invalid value \"99999\" for bind_port"),
            "{err}"
        );
        let err = config_file_flags("[server]\njunk\n", path).unwrap_err();
        assert!(
            err.to_string().contains(":2: expected `key = value`"),
            "{err}"
        );
        let err = config_file_flags("[server\n", path).unwrap_err();
        assert!(err.to_string().contains("unterminated section"), "{err}");
        let err = config_file_flags("default_grace_time = soon\n", path).unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
        let err = load(&["--config", "/nonexistent/gardend.ini"]).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/gardend.ini"),
            "{err}"
        );
    }

    #[test]
    fn flag_values_are_validated() {
        assert!(load(&["--bind-ip", "localhost"]).is_err());
        assert!(load(&["--log-level", "loud"]).is_err());
        assert!(load(&["--max-connections", "0"]).is_err());
        assert!(load(&["--default-grace-time", "-1s"]).is_err());
        let c = config(&[
            "--bind-socket",
            "/tmp/g.sock",
            "--log-level",
            "WARN",
            "--default-grace-time",
            "45",
            "--disk-store-size",
            "10G",
        ]);
        assert_eq!(c.bind_socket, Some(PathBuf::from("/tmp/g.sock")));
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.default_grace_time, Duration::from_secs(45));
        assert_eq!(c.disk_store_size, 10 << 30);
    }

    #[test]
    fn network_flags_and_file_keys() {
        let c = config(&[
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
        .net;
        assert_eq!(c.pool.to_string(), "10.250.0.0/24");
        assert_eq!(c.deny_networks.len(), 2);
        assert!(c.allow_host_access);
        assert_eq!(c.dns_servers, vec![std::net::Ipv4Addr::new(8, 8, 8, 8)]);
        assert_eq!(c.port_pool_start, 61001, "default");
        let (_dir, path) = config_file(
            "net.ini",
            "[server]\nport_pool_start = 62000\nadditional_host_entry = 1.2.3.4 db\nadditional_host_entry = 1.2.3.5 cache\nmtu = 1400\nallow_host_access = false\n",
        );
        let loaded = load(&["--config", &path]).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let n = loaded.config.net;
        assert_eq!((n.port_pool_start, n.mtu), (62000, Some(1400)));
        assert_eq!(n.additional_host_entries, ["1.2.3.4 db", "1.2.3.5 cache"]);
        assert!(!n.allow_host_access);
        let bad = Path::new("/etc/gardend.ini");
        assert!(config_file_flags("[server]\nnetwork_pool = 10.0.0.0/33\n", bad).is_err());
    }
}
