//! Running the network tools (ip, tc, iptables-restore) without blocking the runtime.

use std::path::Path;
use std::process::Stdio;

use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::NetError;

/// Run `program args`, feeding `stdin` if given; stdout on success, an error carrying the
/// command line and its stderr otherwise.
pub async fn run(program: &Path, args: &[&str], stdin: Option<String>) -> Result<String, NetError> {
    let line = || format!("{} {}", program.display(), args.join(" "));
    match run_spawned(program, args, stdin.as_deref()).await {
        None => {}
        Some(Ok(out)) => return finish(out, stdin, line),
        Some(Err(e)) => {
            return Err(NetError::Command {
                command: line(),
                message: e.to_string(),
            })
        }
    }
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| NetError::Command {
            command: line(),
            message: e.to_string(),
        })?;
    if let (Some(input), Some(mut pipe)) = (stdin.as_ref(), child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| NetError::Command {
                command: line(),
                message: format!("write stdin: {e}"),
            })?;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NetError::Command {
            command: line(),
            message: e.to_string(),
        })?;
    let out = Output {
        code: out.status.code().unwrap_or(-1),
        status: out.status.to_string(),
        stdout: out.stdout,
        stderr: out.stderr,
    };
    finish(out, stdin, line)
}

/// A finished program.
struct Output {
    code: i32,
    /// How it ended, in words (for errors).
    status: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Its stdout on success; an error carrying the command line and its stderr otherwise.
fn finish(
    out: Output,
    stdin: Option<String>,
    line: impl Fn() -> String,
) -> Result<String, NetError> {
    if out.code != 0 {
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if message.is_empty() {
            message = out.status;
        }
        if let Some(input) = stdin.filter(|i| i.len() < 4096) {
            tracing::debug!(command = %line(), %input, %message, "network command failed");
        }
        return Err(NetError::Command {
            command: line(),
            message,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run the program through the [`spawner`](crate::runtime::spawner) (no copy of gardend's
/// descriptor table per program); `None` when there is no spawner.
async fn run_spawned(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Option<std::io::Result<Output>> {
    use nix::fcntl::OFlag;
    let program = program.to_str()?;
    let pipe =
        || -> std::io::Result<(OwnedFd, OwnedFd)> { Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?) };
    let pipes = (|| Ok::<_, std::io::Error>((pipe()?, pipe()?, pipe()?)))();
    let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    let spawned = {
        let (program, args): (String, Vec<String>) = (
            program.to_string(),
            args.iter().map(|a| a.to_string()).collect(),
        );
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::runtime::spawner::spawn(&program, &args, [&in_r, &out_w, &err_w])
        })
        .await
        .ok()??
    };
    let child = match spawned {
        Ok(pidfd) => Child(Some(pidfd)),
        Err(e) => return Some(Err(e)),
    };
    let result = async {
        let mut stdin_pipe = tokio::net::unix::pipe::Sender::from_owned_fd(in_w)?;
        let mut out_pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(out_r)?;
        let mut err_pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(err_r)?;
        let feed = async move {
            if let Some(input) = stdin {
                // A program that exits without reading all of it is judged by its status.
                let _ = stdin_pipe.write_all(input.as_bytes()).await;
            }
            drop(stdin_pipe);
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let (_, o, e) = tokio::join!(
            feed,
            out_pipe.read_to_end(&mut stdout),
            err_pipe.read_to_end(&mut stderr)
        );
        o?;
        e?;
        Ok::<_, std::io::Error>((stdout, stderr))
    };
    let (stdout, stderr) = match result.await {
        Ok(r) => r,
        Err(e) => return Some(Err(e)),
    };
    let code = match child.wait().await {
        Ok(c) => c,
        Err(e) => return Some(Err(e)),
    };
    Some(Ok(Output {
        code,
        status: format!("exit status: {code}"),
        stdout,
        stderr,
    }))
}

/// A spawned program by pidfd; killed (and reaped) if dropped before it was waited for, as
/// `kill_on_drop` does for the directly started ones.
struct Child(Option<OwnedFd>);

impl Child {
    /// Wait for it to exit and reap it; its exit code (128 + signal if killed).
    async fn wait(mut self) -> std::io::Result<i32> {
        let pidfd = self.0.take().expect("not waited for yet");
        // SAFETY: the AsyncFd owns the pidfd, which stays open until it is dropped.
        let ready =
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?;
        let _ = ready.readable().await?;
        let pidfd = ready.into_inner();
        crate::runtime::spawner::wait(&pidfd)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(pidfd) = self.0.take() {
            // SAFETY: pidfd_send_signal on our own valid pidfd, no siginfo, no flags.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0u32,
                );
            }
            let _ = std::thread::Builder::new()
                .name("reap".into())
                .spawn(move || crate::runtime::spawner::wait(&pidfd));
        }
    }
}
