//! `agent --config FILE`: the cell agent daemon.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "The cell agent: runs instances and tasks for a controller on NATS")]
struct Args {
    /// dea.yml-style configuration file.
    #[arg(long)]
    config: PathBuf,
}

fn main() {
    let args = Args::parse();
    let config = match agent::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("agent: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = init_logging(&config.logging) {
        eprintln!("agent: {e:#}");
        std::process::exit(2);
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("agent: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    match runtime.block_on(agent::daemon::run(config)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            tracing::error!("agent failed: {e:#}");
            eprintln!("agent: {e:#}");
            std::process::exit(1);
        }
    }
}

/// The agent's own log at `logging.level` (an EnvFilter directive), to `logging.file` or
/// stderr.
fn init_logging(logging: &agent::config::Logging) -> anyhow::Result<()> {
    use anyhow::Context;
    let filter = tracing_subscriber::EnvFilter::try_new(&logging.level)
        .with_context(|| format!("config: logging.level: {:?} is not a level", logging.level))?;
    let writer = match &logging.file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("config: logging.file: cannot open {}", path.display()))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let ansi = logging.file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match logging.format {
        agent::config::LogFormat::Json => builder.json().with_current_span(true).init(),
        agent::config::LogFormat::Text => builder.with_ansi(ansi).init(),
    }
    Ok(())
}
