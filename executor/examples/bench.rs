//! Step overhead: a serial of N `true` runs through the executor vs N direct Garden runs in
//! the same container. Not a test; prints a table.
//!
//! `cargo run -p executor --example bench -- --garden 127.0.0.1:7777 [--n 100] [--rounds 3]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use executor::action::{Action, RunAction, SerialAction};
use executor::cache::{CacheConfig, DownloadCache};
use executor::garden::{Garden, Io};
use executor::log::{LogConfig, LogStreamer, NullSink};
use executor::step::{self, CancellationToken, Ready, StepConfig, StepEnv};
use garden_api::{ContainerSpec, ProcessSpec};
use garden_client::{Address, Client};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// N sequential runs straight through the client; `with_io` attaches stdout/stderr as the
/// run step does (each attached stream is its own connection in Garden's protocol).
async fn direct(
    client: &Client,
    handle: &str,
    n: usize,
    with_io: bool,
) -> anyhow::Result<Duration> {
    let spec = ProcessSpec {
        path: "/bin/true".into(),
        user: "root".into(),
        ..Default::default()
    };
    let started = Instant::now();
    for _ in 0..n {
        let io = if with_io {
            Io {
                stdout: Some(Box::new(tokio::io::sink())),
                stderr: Some(Box::new(tokio::io::sink())),
            }
        } else {
            Io::default()
        };
        let mut p = Garden::run(client, handle, &spec, io).await?;
        let status = p.wait().await?;
        anyhow::ensure!(status == 0, "true exited {status}");
    }
    Ok(started.elapsed())
}

async fn via_steps(env: &Arc<StepEnv>, n: usize) -> anyhow::Result<Duration> {
    let run = Action::Run(RunAction {
        path: "/bin/true".into(),
        user: "root".into(),
        ..Default::default()
    });
    let tree = Action::Serial(SerialAction {
        actions: vec![run; n],
        log_source: String::new(),
    });
    let streamer = LogStreamer::new(Arc::new(NullSink), &LogConfig::default());
    let started = Instant::now();
    let step = step::build(&tree, env, &streamer);
    step.perform(CancellationToken::new(), Ready::noop())
        .await
        .map_err(|e| anyhow::anyhow!("serial failed: {e}"))?;
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = arg("--garden").context("--garden ADDR is required")?;
    let n: usize = arg("--n").map(|v| v.parse()).transpose()?.unwrap_or(100);
    let rounds: usize = arg("--rounds").map(|v| v.parse()).transpose()?.unwrap_or(3);
    let client = Client::new(Address::parse(&addr).map_err(|e| anyhow::anyhow!("{e}"))?);
    let handle = client.create(&ContainerSpec::default()).await?;
    let dir = tempfile::tempdir()?;
    let cache = Arc::new(DownloadCache::open(CacheConfig::new(dir.path()))?);
    let env = Arc::new(StepEnv {
        garden: Arc::new(client.clone()),
        handle: handle.clone(),
        cache,
        config: StepConfig::default(),
        instance_env: vec![],
    });
    // Warm-up, so neither side pays for first-use costs.
    direct(&client, &handle, 5, true).await?;
    via_steps(&env, 5).await?;

    println!(
        "{:<28} {:>6} {:>12} {:>12}",
        "variant", "runs", "total (ms)", "per run (ms)"
    );
    let mut d_best = Duration::MAX;
    let mut s_best = Duration::MAX;
    for round in 1..=rounds {
        let bare = direct(&client, &handle, n, false).await?;
        let d = direct(&client, &handle, n, true).await?;
        let s = via_steps(&env, n).await?;
        d_best = d_best.min(d);
        s_best = s_best.min(s);
        for (name, t) in [
            (format!("direct, no output #{round}"), bare),
            (format!("direct, stdout+stderr #{round}"), d),
            (format!("executor serial #{round}"), s),
        ] {
            println!(
                "{name:<28} {n:>6} {:>12.1} {:>12.3}",
                t.as_secs_f64() * 1e3,
                t.as_secs_f64() * 1e3 / n as f64
            );
        }
    }
    let overhead = (s_best.as_secs_f64() - d_best.as_secs_f64()) * 1e3 / n as f64;
    println!(
        "best-of-{rounds} step overhead per run vs direct with output: {overhead:.3} ms ({:+.1}%)",
        (s_best.as_secs_f64() / d_best.as_secs_f64() - 1.0) * 100.0
    );
    client.destroy(&handle).await?;
    Ok(())
}
