//! `run`, `shell` and `--attach`: a process in the container wired to our stdin/stdout/stderr.

use anyhow::{Context, Result};
use garden_api::{ProcessSpec, Signal, TtySpec};
use garden_client::{Client, Process, ProcessControl, ProcessIo};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{RunArgs, ShellArgs};
use crate::io::StdWriter;
use crate::term::{self, RawMode};

/// Exit code when we give up on the process after repeated interrupts.
const INTERRUPTED: i32 = 130;

pub async fn run(client: &Client, args: RunArgs) -> Result<i32> {
    if let Some(pid) = &args.attach {
        let io = process_io(args.tty)?;
        let raw = raw_mode(args.tty)?;
        let process = client.attach(&args.handle, pid, io).await?;
        return wait(process, args.tty, raw).await;
    }
    let Some((path, rest)) = args.command.split_first() else {
        anyhow::bail!("no command given: use run HANDLE -- COMMAND [ARGS...]");
    };
    let spec = ProcessSpec {
        id: args.id.unwrap_or_default(),
        path: path.clone(),
        args: rest.to_vec(),
        env: args.env,
        dir: args.dir.unwrap_or_default(),
        user: args.user.unwrap_or_default(),
        tty: args.tty.then(|| TtySpec {
            window_size: term::window_size(),
        }),
        ..Default::default()
    };
    if args.detach {
        let process = client
            .run(&args.handle, &spec, ProcessIo::default())
            .await?;
        outln!("{}", process.id());
        // Dropping the process closes the connection; the server detaches and lets it run.
        return Ok(0);
    }
    let io = process_io(args.tty)?;
    let raw = raw_mode(args.tty)?;
    let process = client.run(&args.handle, &spec, io).await?;
    wait(process, args.tty, raw).await
}

/// Raw mode before the request, so keys typed while it is on its way are neither echoed twice
/// nor held back by the line discipline; an error drops the guard before it is printed.
fn raw_mode(tty: bool) -> Result<Option<RawMode>> {
    if tty && term::stdin_is_tty() {
        Ok(Some(
            RawMode::enable().context("put the terminal into raw mode")?,
        ))
    } else {
        Ok(None)
    }
}

/// A login shell on a terminal, with the terminal type and locale we use here.
pub async fn shell(client: &Client, args: ShellArgs) -> Result<i32> {
    let mut env = vec![format!(
        "TERM={}",
        std::env::var("TERM").unwrap_or_else(|_| "xterm".into())
    )];
    for name in ["LANG", "LC_ALL", "COLORTERM"] {
        if let Ok(v) = std::env::var(name) {
            env.push(format!("{name}={v}"));
        }
    }
    env.extend(args.env);
    let run_args = RunArgs {
        handle: args.handle,
        tty: true,
        user: args.user,
        dir: args.dir,
        env,
        id: None,
        detach: false,
        attach: None,
        command: vec![args.shell, "-l".into()],
    };
    run(client, run_args).await
}

/// Stdin is forwarded only when it is not a terminal, or when we give the process one: a
/// terminal without -t would leave the process waiting for input nobody means to type.
fn process_io(tty: bool) -> Result<ProcessIo> {
    let stdin: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>> =
        if tty || !term::stdin_is_tty() {
            Some(Box::new(tokio::io::stdin()))
        } else {
            None
        };
    Ok(ProcessIo {
        stdin,
        stdout: Some(Box::new(StdWriter::stdout().context("duplicate stdout")?)),
        stderr: Some(Box::new(StdWriter::stderr().context("duplicate stderr")?)),
    })
}

async fn wait(mut process: Process, tty: bool, raw: Option<RawMode>) -> Result<i32> {
    let control = process.control();
    let resize = tty.then(|| tokio::spawn(forward_resizes(control.clone())));
    let pid = process.id().to_string();
    let result = tokio::select! {
        r = process.wait() => r.map_err(anyhow::Error::from),
        () = forward_signals(control) => {
            drop(raw);
            eprintln!("gardenctl: interrupted; process {pid} may still be running (re-attach with run --attach {pid})");
            return Ok(INTERRUPTED);
        }
    };
    if let Some(task) = resize {
        task.abort();
    }
    drop(raw);
    result
}

/// SIGWINCH -> set_tty with our terminal's new size.
async fn forward_resizes(control: ProcessControl) -> Result<()> {
    let mut winch = signal(SignalKind::window_change())?;
    while winch.recv().await.is_some() {
        if let Some(size) = term::window_size() {
            if let Err(e) = control.set_tty(size).await {
                tracing::debug!("forwarding window size failed: {e}");
            }
        }
    }
    Ok(())
}

/// SIGINT/SIGTERM/SIGHUP go to the process: first as TERM, then as KILL. Returns (so the caller
/// gives up waiting) on the third one; never returns if the handlers cannot be installed.
async fn forward_signals(control: ProcessControl) {
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot install signal handlers; signals will not be forwarded");
        return std::future::pending().await;
    };
    for n in 0.. {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
            _ = hup.recv() => {},
        }
        if n >= 2 {
            break;
        }
        let sig = if n == 0 {
            Signal::Terminate
        } else {
            Signal::Kill
        };
        if let Err(e) = control.signal(sig).await {
            tracing::debug!("forwarding {sig:?} failed: {e}");
        }
    }
}
