//! `executor`: run action scripts in a Garden container, validate them, or serve the
//! executor's HTTP API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use executor::action::{Action, EnvironmentVariable};
use executor::cache::{CacheConfig, DownloadCache};
use executor::container::{AllocationRequest, Executor, ExecutorConfig, RunInfo};
use executor::http::{Tls, TlsOptions};
use executor::log::{LogConfig, StdioSink};
use garden_client::{Address, Client};

#[derive(Parser)]
#[command(
    name = "executor",
    about = "Run Diego action scripts inside Garden containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines (stderr, filtered by EXECUTOR_LOG) as `text` or `json`.
    #[arg(long, global = true, env = "EXECUTOR_LOG_FORMAT", default_value = "text",
          value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(clap::Args)]
struct CellArgs {
    /// gardend address: host:port, tcp://host:port or a unix socket path.
    #[arg(long, env = "GARDEN_ADDR")]
    garden: String,
    /// Download cache directory.
    #[arg(long, env = "EXECUTOR_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Download cache size budget in MiB.
    #[arg(long, default_value_t = 1024)]
    cache_mb: u64,
    /// Seconds between SIGTERM and SIGKILL when a run is cancelled.
    #[arg(long, default_value_t = 10.0)]
    grace: f64,
    /// PEM file of CA certificates trusted for https downloads and uploads besides the
    /// system roots (repeatable).
    #[arg(long = "ca-cert", value_name = "FILE", env = "EXECUTOR_CA_CERT")]
    ca_cert: Vec<PathBuf>,
    /// Do not verify https server certificates. Testing only: the traffic can then be read
    /// and changed by anyone on the path.
    #[arg(long)]
    insecure_skip_verify: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container, run the script in it with live logs, print the result, destroy it.
    Run {
        script: PathBuf,
        #[command(flatten)]
        cell: CellArgs,
        /// Container image URI (default: gardend's default rootfs).
        #[arg(long, default_value = "")]
        image: String,
        /// Container environment, NAME=value (repeatable).
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Root log source name.
        #[arg(long, default_value = "LOG")]
        log_source: String,
        /// Memory limit in MiB (0 = none).
        #[arg(long, default_value_t = 0)]
        memory_mb: u64,
        /// Task result file to print after a successful run.
        #[arg(long, default_value = "")]
        result_file: String,
        /// Keep the container instead of destroying it.
        #[arg(long)]
        keep: bool,
    },
    /// Check that a script parses and is valid; print the error path otherwise.
    Validate { script: PathBuf },
    /// Serve the executor HTTP API (allocate/run/list/get/stop/delete, events).
    Serve {
        #[command(flatten)]
        cell: CellArgs,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:1700")]
        listen: String,
        #[arg(long, default_value = "cell")]
        cell_id: String,
        #[arg(long, default_value_t = 8192)]
        memory_mb: u64,
        #[arg(long, default_value_t = 65536)]
        disk_mb: u64,
        #[arg(long, default_value_t = 256)]
        containers: u64,
    },
}

fn executor(cell: &CellArgs, mut config: ExecutorConfig) -> anyhow::Result<Arc<Executor>> {
    let addr = Address::parse(&cell.garden)
        .map_err(|e| anyhow::anyhow!("bad --garden {:?}: {e}", cell.garden))?;
    let dir = cell
        .cache_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("executor-cache"));
    let tls = Tls::new(&TlsOptions {
        ca_certs: cell.ca_cert.clone(),
        insecure_skip_verify: cell.insecure_skip_verify,
    })
    .context("setting up TLS")?;
    let mut cc = CacheConfig::new(&dir);
    cc.max_bytes = cell.cache_mb << 20;
    cc.tls = tls.clone();
    config.step.tls = tls;
    let cache = DownloadCache::open(cc)
        .with_context(|| format!("opening download cache {}", dir.display()))?;
    if !(cell.grace.is_finite() && cell.grace >= 0.0) {
        bail!("--grace must be a non-negative number of seconds");
    }
    config.step.graceful_shutdown = Duration::from_secs_f64(cell.grace);
    Ok(Executor::new(
        Arc::new(Client::new(addr)),
        Arc::new(cache),
        Arc::new(StdioSink),
        config,
    ))
}

fn parse_env(pairs: &[String]) -> anyhow::Result<Vec<EnvironmentVariable>> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((n, v)) if !n.is_empty() => Ok(EnvironmentVariable {
                name: n.into(),
                value: v.into(),
            }),
            _ => bail!("bad --env {p:?}: expected NAME=value"),
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EXECUTOR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
    match cli.command {
        Command::Validate { script } => {
            let action = Action::load(&script)?;
            println!("{}: valid {} action", script.display(), action.kind());
            Ok(())
        }
        Command::Run {
            script,
            cell,
            image,
            env,
            log_source,
            memory_mb,
            result_file,
            keep,
        } => {
            let action = Action::load(&script)?;
            let env = parse_env(&env)?;
            let exec = executor(&cell, ExecutorConfig::default())?;
            let guid = format!("executor-{}", uuid::Uuid::new_v4());
            exec.allocate(AllocationRequest {
                guid: guid.clone(),
                memory_mb,
                ..Default::default()
            })?;
            let info = RunInfo {
                rootfs: image,
                env,
                action: Some(action),
                log_config: LogConfig {
                    guid: guid.clone(),
                    index: 0,
                    source_name: log_source,
                },
                result_file,
                ..Default::default()
            };
            exec.run(&guid, info)?;
            let stopper = exec.clone();
            let g = guid.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("interrupted: stopping the script");
                    let _ = stopper.stop(&g);
                }
            });
            let done = exec.wait_completed(&guid).await?;
            println!("{}", serde_json::to_string(&done.run_result)?);
            if let Some(r) = &done.result {
                println!("{r}");
            }
            if !keep {
                exec.delete(&guid).await?;
            }
            if done.run_result.failed {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Serve {
            cell,
            listen,
            cell_id,
            memory_mb,
            disk_mb,
            containers,
        } => {
            let config = ExecutorConfig {
                cell_id,
                capacity: executor::container::Resources {
                    memory_mb,
                    disk_mb,
                    containers,
                },
                ..Default::default()
            };
            let exec = executor(&cell, config)?;
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            eprintln!("executor API listening on {}", listener.local_addr()?);
            executor::http_api::serve(listener, exec, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            Ok(())
        }
    }
}
