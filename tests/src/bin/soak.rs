//! `soak [SECONDS] [WORKERS]`: start a gardend of its own (as the e2e tests do; needs root),
//! create/run/stream/destroy with random faults for SECONDS (default 60) with WORKERS
//! concurrent clients (default 3), then report leaks and gardend's resident memory. Exits
//! non-zero on any leak or unexpected error.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(60);
    let workers: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "soak starts gardend, which needs root"
    );
    std::env::set_var("CELL_ROOT_TESTS", "1");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let g = e2e::Gardend::start();
    let report = e2e::rt().block_on(e2e::soak::run(
        &g,
        std::time::Duration::from_secs(seconds),
        workers,
        seed,
    ));
    println!("seed {seed}\n{report}");
    drop(g);
    anyhow::ensure!(
        report.leaks.is_empty() && report.unexpected == 0,
        "the soak found leaks or unexpected errors"
    );
    Ok(())
}
