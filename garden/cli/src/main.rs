//! gardenctl: a command-line client for people who operate a Garden server.
//!
//! Every command is one or a few calls of `garden_client::Client`; this crate adds argument
//! parsing, human-readable output, terminal handling for interactive processes and tar
//! archiving for file transfers.

/// `print!` without the panic: when whoever reads our stdout has gone (`gardenctl list | head
/// -1`), stop quietly like other Unix tools instead of panicking on EPIPE.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` without the panic; see `out!`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

mod cli;
mod commands;
mod errors;
mod format;
mod io;
mod parse;
mod progress;
mod run;
mod stream;
mod term;

use std::io::Write;

use clap::Parser;
use garden_client::{Address, Client};

/// Write to stdout; a reader that went away ends the program (exit 0), any other failure is
/// reported and exits 1.
fn write_stdout(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("gardenctl: writing to stdout: {e}");
        std::process::exit(1);
    }
}

fn main() {
    // Usage errors exit 1 like every other failure; --help and --version exit 0.
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GARDENCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gardenctl: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let target = cli.target.clone();
    let result = runtime.block_on(async {
        let address = Address::parse(&cli.target)?;
        commands::dispatch(Client::new(address), cli.command, cli.json).await
    });
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gardenctl: {}", errors::describe(&e, &target));
            1
        }
    };
    // A blocking read of our stdin (forwarded to a process) must not keep us alive.
    runtime.shutdown_background();
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
