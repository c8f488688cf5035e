//! gardend: parse the configuration, start the core, serve the Garden API until SIGINT or
//! SIGTERM, then stop the core. Containers and their processes outlive the server.

use std::sync::Arc;

use anyhow::Context;
use garden_server::cli::{Cli, CliError};
use garden_server::garden::Garden;
use garden_server::server::{serve_with, Listener, ServeOptions};
use garden_server::telemetry::debug_server;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // While gardend is single-threaded: the spawner is forked from it (see
    // `runtime::spawner`), after the open file limit is raised (garden-init inherits the
    // spawner's); without one, programs and garden-init are started directly, only more
    // slowly.
    let nofile = garden_server::kernel::raise_nofile_limit();
    let spawner = garden_server::runtime::spawner::start();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(spawner, nofile))
}

async fn run(
    spawner: std::io::Result<()>,
    nofile: std::io::Result<(u64, u64)>,
) -> anyhow::Result<()> {
    let loaded = match Cli::load(std::env::args_os()) {
        Ok(loaded) => loaded,
        Err(CliError::Flags(e)) => e.exit(),
        Err(e) => return Err(e.into()),
    };
    let config = loaded.config;
    init_logging(&config.log_level, &config.log_format)?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    tracing::debug!(?config, "configuration");
    if let Err(e) = spawner {
        tracing::warn!(error = %e, "cannot fork the spawner; starting programs and garden-init directly");
    }
    match nofile {
        // Each container holds descriptors (its init's pidfd and socket): the limit bounds
        // how many containers this gardend can hold.
        Ok((soft, hard)) => tracing::info!(soft, hard, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }

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
    let debug = match config.debug_bind_port {
        Some(port) => {
            let l = debug_server::bind(&config.debug_bind_ip, port).await?;
            tracing::info!(address = %l.local_addr()?, "debug listener (/metrics, /debug/vars)");
            let core = Arc::downgrade(&garden);
            let census: debug_server::CensusFn =
                Arc::new(move || core.upgrade().map(|g| g.census()).unwrap_or_default());
            Some(tokio::spawn(debug_server::serve(l, census)))
        }
        None => None,
    };
    serve_with(
        listener,
        Arc::clone(&garden),
        ServeOptions::from_config(&config),
        shutdown,
    )
    .await;
    if let Some(debug) = debug {
        debug.abort();
    }
    garden.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Logs go to stderr, as text or one JSON object per line (`--log-format json`: the event's
/// fields plus those of the request span, i.e. handle and process id). `RUST_LOG`, when set,
/// overrides `--log-level` for finer filters.
fn init_logging(level: &str, format: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => {
            EnvFilter::try_new(&spec).with_context(|| format!("invalid RUST_LOG {spec:?}"))?
        }
        _ => EnvFilter::try_new(level).with_context(|| format!("invalid log level {level:?}"))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    Ok(())
}
