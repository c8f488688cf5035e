//! gardend: parse the configuration, start the core, serve the Garden API until SIGINT or
//! SIGTERM, then stop the core. Containers and their processes outlive the server.

use std::sync::Arc;

use anyhow::Context;
use garden_server::cli::{Cli, CliError};
use garden_server::garden::Garden;
use garden_server::server::{serve_with, Listener, ServeOptions};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let loaded = match Cli::load(std::env::args_os()) {
        Ok(loaded) => loaded,
        Err(CliError::Flags(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    let config = loaded.config;
    init_logging(&config.log_level)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    tracing::debug!(?config, "configuration");

    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let shutdown = async move {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        tracing::info!("received {name}, shutting down");
    };

    let garden = Garden::new(config.clone())
        .await
        .context("starting the garden core")?;
    let listener = Listener::bind(&config).await?;
    serve_with(
        listener,
        Arc::clone(&garden),
        ServeOptions::from_config(&config),
        shutdown,
    )
    .await;
    garden.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Logs go to stderr. `RUST_LOG`, when set, overrides `--log-level` for finer filters.
fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).with_context(|| format!("invalid RUST_LOG {spec:?}"))?
        }
        _ => EnvFilter::try_new(level).with_context(|| format!("invalid log level {level:?}"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
