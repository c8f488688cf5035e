//! Running the network tools (ip, tc, iptables-restore) without blocking the runtime.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::NetError;

/// Run `program args`, feeding `stdin` if given; stdout on success, an error carrying the
/// command line and its stderr otherwise.
pub async fn run(program: &Path, args: &[&str], stdin: Option<String>) -> Result<String, NetError> {
    let line = || format!("{} {}", program.display(), args.join(" "));
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
    if !out.status.success() {
        let mut message = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if message.is_empty() {
            message = out.status.to_string();
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
