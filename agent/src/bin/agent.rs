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
    let _ = config;
    eprintln!("agent: not wired yet");
    std::process::exit(1);
}
