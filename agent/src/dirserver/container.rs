//! Files of a live container, read through Garden only: the container's root is mounted in
//! its own mount namespace, so the host has no path to it.
//!
//! Every request runs [`SCRIPT`] inside the container as user `vcap` (the app's own user), with
//! the request path as a positional argument (never interpolated into the script). The script
//! resolves the realpath with `readlink -f` and refuses anything not under the base, then
//! lists, sizes, reads or tails. A symlink swapped in between the check and the read can only
//! expose what `vcap` could already read inside its own container. Everything the container
//! prints is capped before the agent keeps it.

use std::time::Duration;

use axum::body::Bytes;
use garden_api::{ProcessSpec, Signal};
use garden_client::{Client, ProcessControl, ProcessIo};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::listing;
use super::{Chunks, FileError, Opened};

/// The user every helper runs as: the app's user, so the kernel's permission checks apply.
pub const USER: &str = "vcap";

/// The most listing output kept from a container (a hostile app can make huge directories).
pub const MAX_LISTING_BYTES: usize = 4 << 20;

/// How long resolving and listing may take before the request gives up (503).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the tail loop sleeps between polls of the file.
const TAIL_POLL: &str = "0.2";

/// `$1` base, `$2` mode, `$3` path (base joined with the request path), `$4`/`$5` mode args.
/// Exit 10: missing; 11: outside the base or not a regular file/directory; 12: no base.
/// Works with busybox and GNU coreutils alike (`readlink -f`, `stat -c`, `find -exec +`,
/// `dd iflag=skip_bytes,count_bytes`).
pub const SCRIPT: &str = r#"
b=$(readlink -f -- "$1") || exit 12
m=$2
p=$3
[ -e "$p" ] || exit 10
r=$(readlink -f -- "$p" && echo x) || exit 10
r=${r%?x}
case $b in
/) ;;
*) case $r in "$b"|"$b"/*) ;; *) exit 11 ;; esac ;;
esac
case $m in
open)
  if [ -d "$r" ]; then
    printf 'D\000%s\000' "$r"
    find "$r" -mindepth 1 -maxdepth 1 -exec stat -c '%F|%s|%n' {} + 2>/dev/null
    exit 0
  fi
  [ -f "$r" ] || exit 11
  printf 'F\000%s\000' "$r"
  exec stat -L -c %s -- "$r"
  ;;
read)
  [ -f "$r" ] || exit 11
  exec dd if="$r" bs=65536 skip="$4" count="$5" iflag=skip_bytes,count_bytes 2>/dev/null
  ;;
tail)
  [ -f "$r" ] || exit 11
  exec 3<"$r" || exit 10
  o=$4
  if [ -z "$o" ]; then o=$(stat -L -c %s -- "$r") || exit 10; fi
  dd bs=65536 skip="$o" count=0 iflag=skip_bytes <&3 2>/dev/null
  if [ -e /proc/$$/fd/3 ]; then
    same() { [ "$r" -ef /proc/$$/fd/3 ]; }
  else
    i=$(stat -L -c %d:%i -- "$r") || exit 10
    same() { [ "$(stat -L -c %d:%i -- "$r" 2>/dev/null)" = "$i" ]; }
  fi
  while :; do
    cat <&3 || exit 0
    if ! same; then cat <&3; exit 0; fi
    sleep POLL
  done
  ;;
esac
exit 13
"#;

/// A helper process in a container; SIGKILLed when dropped before it finished (the client
/// went away, a tail was cut), so nothing the directory server started outlives its request.
struct Helper {
    control: ProcessControl,
    process: garden_client::Process,
    done: bool,
}

impl Helper {
    /// The helper exited by itself: nothing to kill.
    fn finished(&mut self) {
        self.done = true;
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let control = self.control.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = control.signal(Signal::Kill).await {
                    tracing::debug!(error = %e, "directory helper already gone");
                }
            });
        }
    }
}

fn exit_error(status: i32) -> FileError {
    match status {
        10 => FileError::NotFound,
        11 => FileError::NotAccessible,
        other => FileError::Internal(format!("directory helper exited with {other}")),
    }
}

async fn start(
    garden: &Client,
    handle: &str,
    base: &str,
    args: &[&str],
) -> Result<(Helper, tokio::io::DuplexStream), FileError> {
    let script = SCRIPT.replace("POLL", TAIL_POLL);
    let mut argv = vec!["-c".to_string(), script, "sh".to_string(), base.to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let spec = ProcessSpec {
        path: "/bin/sh".into(),
        args: argv,
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into()],
        dir: "/".into(),
        user: USER.into(),
        ..Default::default()
    };
    let (rd, wr) = tokio::io::duplex(64 * 1024);
    let io = ProcessIo {
        stdout: Some(Box::new(wr)),
        ..Default::default()
    };
    let process = garden.run(handle, &spec, io).await.map_err(|e| {
        tracing::warn!(handle, error = %e, "cannot run the directory helper");
        FileError::Unavailable
    })?;
    Ok((
        Helper {
            control: process.control(),
            process,
            done: false,
        },
        rd,
    ))
}

/// Resolve `path` (already joined with `base`) and say what it is; directories are listed.
pub async fn open(
    garden: &Client,
    handle: &str,
    base: &str,
    path: &str,
) -> Result<Opened, FileError> {
    // A frozen or overloaded container must not hold the request forever.
    tokio::time::timeout(OPEN_TIMEOUT, open_inner(garden, handle, base, path))
        .await
        .unwrap_or_else(|_| {
            tracing::warn!(handle, path, "directory helper did not answer in time");
            Err(FileError::Unavailable)
        })
}

async fn open_inner(
    garden: &Client,
    handle: &str,
    base: &str,
    path: &str,
) -> Result<Opened, FileError> {
    let (mut helper, rd) = start(garden, handle, base, &["open", path]).await?;
    let mut out = Vec::new();
    let mut limited = rd.take(MAX_LISTING_BYTES as u64 + 1);
    limited
        .read_to_end(&mut out)
        .await
        .map_err(|e| FileError::Internal(format!("reading the directory helper: {e}")))?;
    let truncated = out.len() > MAX_LISTING_BYTES;
    if truncated {
        // The helper is killed on drop; its status no longer matters.
        out.truncate(MAX_LISTING_BYTES);
        tracing::warn!(
            handle,
            path,
            "directory listing truncated at {MAX_LISTING_BYTES} bytes"
        );
    } else {
        drop(limited);
        let status = helper
            .process
            .wait()
            .await
            .map_err(|e| FileError::Internal(format!("directory helper: {e}")))?;
        helper.finished();
        if status != 0 {
            return Err(exit_error(status));
        }
    }
    parse_open(&out, truncated)
}

fn parse_open(out: &[u8], truncated: bool) -> Result<Opened, FileError> {
    let bad = || FileError::Internal("directory helper printed an unexpected header".into());
    let mut parts = out.splitn(3, |b| *b == 0);
    let kind = parts.next().ok_or_else(bad)?;
    let real = parts.next().ok_or_else(bad)?;
    let rest = parts.next().ok_or_else(bad)?;
    let real = String::from_utf8_lossy(real);
    match kind {
        b"D" => Ok(Opened::Dir(listing::parse_stat_lines(
            rest, &real, truncated,
        ))),
        b"F" => {
            let size = std::str::from_utf8(rest)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(bad)?;
            Ok(Opened::File { size })
        }
        _ => Err(bad()),
    }
}

/// `len` bytes of the file at `path` from `start`.
pub async fn read(
    garden: &Client,
    handle: &str,
    base: &str,
    path: &str,
    start: u64,
    len: u64,
) -> Result<Chunks, FileError> {
    let (helper, rd) = self::start(
        garden,
        handle,
        base,
        &["read", path, &start.to_string(), &len.to_string()],
    )
    .await?;
    Ok(pump(helper, rd))
}

/// The file's appended data from `offset` (default: its end) until it is removed or renamed.
pub async fn tail(
    garden: &Client,
    handle: &str,
    base: &str,
    path: &str,
    offset: Option<u64>,
) -> Result<Chunks, FileError> {
    let offset = offset.map(|o| o.to_string()).unwrap_or_default();
    let (helper, rd) = start(garden, handle, base, &["tail", path, &offset]).await?;
    Ok(pump(helper, rd))
}

/// Copy the helper's stdout into a channel; stops (and kills the helper) as soon as the
/// receiver is gone.
fn pump(mut helper: Helper, mut rd: tokio::io::DuplexStream) -> Chunks {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tokio::select! {
                r = rd.read(&mut buf) => r,
                _ = tx.closed() => return,
            };
            match n {
                Ok(0) => break,
                Ok(n) => {
                    if tx
                        .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
        // EOF: the helper is finishing; collect its status so it is not killed needlessly.
        match tokio::time::timeout(Duration::from_secs(5), helper.process.wait()).await {
            Ok(Ok(status)) => {
                helper.finished();
                if status != 0 {
                    tracing::debug!(status, "directory helper ended with an error");
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "directory helper"),
            Err(_) => {}
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dirserver::listing::Entry;

    #[test]
    fn open_output_is_parsed() {
        match parse_open(b"F\0/home/vcap/a\x00123\n", false).unwrap() {
            Opened::File { size } => assert_eq!(size, 123),
            other => panic!("{other:?}"),
        }
        match parse_open(
            b"D\0/home/vcap\0directory|60|/home/vcap/app\nregular file|3|/home/vcap/x\n",
            false,
        )
        .unwrap()
        {
            Opened::Dir(e) => assert_eq!(
                e,
                vec![
                    Entry {
                        name: "app".into(),
                        dir: true,
                        size: 60
                    },
                    Entry {
                        name: "x".into(),
                        dir: false,
                        size: 3
                    }
                ]
            ),
            other => panic!("{other:?}"),
        }
        assert!(parse_open(b"X\0/\0", false).is_err());
        assert!(parse_open(b"F\0/a\0notanumber", false).is_err());
        assert!(parse_open(b"", false).is_err());
    }

    /// The helper script itself, run with the host's busybox against a scratch tree: realpath
    /// confinement, listing, reading and the refusal of non-regular files.
    #[test]
    fn script_confines_paths_to_the_base() {
        let bb = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file())
            .expect("busybox (gardend's default rootfs needs it too)");
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("home");
        std::fs::create_dir_all(base.join("app/sub")).unwrap();
        std::fs::write(base.join("app/hello.txt"), b"hello world").unwrap();
        std::fs::write(tmp.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("/etc", base.join("evil")).unwrap();
        std::os::unix::fs::symlink("../..", base.join("app/up")).unwrap();
        std::os::unix::fs::symlink("hello.txt", base.join("app/inside")).unwrap();
        std::os::unix::fs::symlink("nowhere", base.join("dangling")).unwrap();
        let b = base.to_str().unwrap();
        let run = |mode: &str, rel: &str, extra: &[&str]| {
            let path = super::super::join_path(b, rel);
            let mut cmd = std::process::Command::new(&bb);
            cmd.args([
                "sh",
                "-c",
                &SCRIPT.replace("POLL", TAIL_POLL),
                "sh",
                b,
                mode,
                &path,
            ]);
            cmd.args(extra);
            let out = cmd.output().unwrap();
            (out.status.code().unwrap(), out.stdout)
        };
        assert_eq!(run("open", "/evil", &[]).0, 11);
        assert_eq!(run("open", "/evil/passwd", &[]).0, 11);
        assert_eq!(run("open", "app/up", &[]).0, 11);
        assert_eq!(run("open", "app/up/secret", &[]).0, 11);
        assert_eq!(run("open", "../secret", &[]).0, 11);
        assert_eq!(run("open", "/app/../../secret", &[]).0, 11);
        assert_eq!(run("open", "missing", &[]).0, 10);
        assert_eq!(run("open", "dangling", &[]).0, 10);
        let (code, out) = run("open", "app/inside", &[]);
        assert_eq!(code, 0);
        assert!(matches!(
            parse_open(&out, false),
            Ok(Opened::File { size: 11 })
        ));
        let (code, out) = run("open", "/", &[]);
        assert_eq!(code, 0);
        let Ok(Opened::Dir(mut entries)) = parse_open(&out, false) else {
            panic!("{out:?}")
        };
        let text = listing::format(&mut entries);
        assert!(text.starts_with("app/"), "{text}");
        assert!(text.contains("evil "), "{text}");
        let (code, out) = run("read", "app/hello.txt", &["6", "3"]);
        assert_eq!((code, out.as_slice()), (0, &b"wor"[..]));
        assert_eq!(run("read", "app/sub", &["0", "1"]).0, 11);
    }
}
