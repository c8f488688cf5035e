//! `stream-in` and `stream-out`: tar archives between local files and a container.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use garden_client::Client;
use tokio_util::io::SyncIoBridge;

use crate::cli::{StreamInArgs, StreamOutArgs};
use crate::io::{Counted, Progress, StdWriter};
use crate::term;

/// How much of the archive may be in flight between the tar writer and the upload.
const PIPE_BYTES: usize = 256 * 1024;

pub async fn stream_in(client: &Client, args: StreamInArgs) -> Result<()> {
    let user = args.user.as_deref().unwrap_or("");
    let label = format!("{}:{}", args.handle, args.to);
    if args.source == "-" {
        if term::stdin_is_tty() {
            bail!("stream-in reads a tar archive from stdin, which is a terminal; give a local path, or pipe one in: tar -C DIR -c . | gardenctl stream-in HANDLE --to DEST");
        }
        let (reader, count) = Counted::new(tokio::io::stdin());
        let progress = Progress::start(format!("-> {label}"), count);
        client
            .stream_in(&args.handle, user, &args.to, reader)
            .await?;
        progress.finish();
        return Ok(());
    }

    let source = PathBuf::from(&args.source);
    let meta =
        std::fs::metadata(&source).with_context(|| format!("cannot read {}", source.display()))?;
    let layout = Layout::of(&args.source, meta.is_dir());
    let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
    let bridge = SyncIoBridge::new(writer);
    let tar_source = source.clone();
    let builder = tokio::task::spawn_blocking(move || write_tar(&tar_source, &layout, bridge));
    let (reader, count) = Counted::new(reader);
    let progress = Progress::start(format!("{} -> {label}", source.display()), count);
    let upload = client.stream_in(&args.handle, user, &args.to, reader).await;
    progress.finish();
    let built = builder.await.context("tar writer panicked")?;
    match (built, upload) {
        // A local read error explains a broken upload better than the server's view of it.
        (Err(e), _) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).with_context(|| format!("cannot archive {}", source.display()))
        }
        (_, Err(e)) => Err(e.into()),
        (Err(e), Ok(())) => Err(e).with_context(|| format!("cannot archive {}", source.display())),
        (Ok(()), Ok(())) => Ok(()),
    }
}

pub async fn stream_out(client: &Client, args: StreamOutArgs) -> Result<()> {
    let user = args.user.as_deref().unwrap_or("");
    let to_stdout = args.to == "-";
    if to_stdout && term::stdout_is_tty() {
        bail!("stream-out writes a tar archive, and stdout is a terminal; use --to DIR or redirect it: > out.tar");
    }
    let origin = format!("{}:{}", args.handle, args.from);
    let reader = client.stream_out(&args.handle, user, &args.from).await?;
    let (mut reader, count) = Counted::new(reader);
    let progress = Progress::start(format!("{origin} -> {}", args.to), count.clone());
    if to_stdout {
        let mut out = StdWriter::stdout().context("duplicate stdout")?;
        tokio::io::copy(&mut reader, &mut out)
            .await
            .with_context(|| format!("streaming {origin} to stdout"))?;
    } else {
        let dir = PathBuf::from(&args.to);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let bridge = SyncIoBridge::new(reader);
        let target = dir.clone();
        tokio::task::spawn_blocking(move || extract_tar(bridge, &target))
            .await
            .context("tar reader panicked")?
            .with_context(|| format!("extracting {origin} into {}", dir.display()))?;
    }
    progress.finish();
    if count.load(Ordering::Relaxed) == 0 {
        bail!("nothing came out of {origin}: does it exist?");
    }
    Ok(())
}

/// How a local path is laid out in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// A file or directory under its own name.
    Named(PathBuf),
    /// A directory's contents, as `./...` (a trailing slash, or `.`).
    Contents,
}

impl Layout {
    fn of(arg: &str, is_dir: bool) -> Layout {
        let name = Path::new(arg).file_name();
        match name {
            Some(n) if !(is_dir && arg.ends_with('/')) => Layout::Named(PathBuf::from(n)),
            _ => Layout::Contents,
        }
    }
}

/// Writes `source` as a tar archive; symlinks are archived as links, not followed.
fn write_tar<W: Write>(source: &Path, layout: &Layout, out: W) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let is_dir = std::fs::metadata(source)?.is_dir();
    match (layout, is_dir) {
        (Layout::Named(name), true) => builder.append_dir_all(name, source)?,
        (Layout::Named(name), false) => builder.append_path_with_name(source, name)?,
        (Layout::Contents, _) => builder.append_dir_all(".", source)?,
    }
    let mut out = builder.into_inner()?;
    out.flush()
}

/// Extracts an archive below `dir`; entries that would escape it are refused by `tar`.
fn extract_tar<R: std::io::Read>(input: R, dir: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.unpack(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        let mut v: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn layouts_follow_the_trailing_slash() {
        assert_eq!(Layout::of("site", true), Layout::Named("site".into()));
        assert_eq!(Layout::of("a/site", true), Layout::Named("site".into()));
        assert_eq!(Layout::of("site/", true), Layout::Contents);
        assert_eq!(Layout::of(".", true), Layout::Contents);
        assert_eq!(Layout::of("/", true), Layout::Contents);
        assert_eq!(
            Layout::of("notes.txt", false),
            Layout::Named("notes.txt".into())
        );
    }

    #[test]
    fn directory_round_trips_through_tar() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("site/sub")).unwrap();
        std::fs::write(src.path().join("site/index.html"), "hi").unwrap();
        std::fs::write(src.path().join("site/sub/x"), "x").unwrap();
        std::os::unix::fs::symlink("index.html", src.path().join("site/link")).unwrap();

        let mut named = Vec::new();
        write_tar(
            &src.path().join("site"),
            &Layout::Named("site".into()),
            &mut named,
        )
        .unwrap();
        assert_eq!(
            names(&named),
            [
                "site",
                "site/index.html",
                "site/link",
                "site/sub",
                "site/sub/x"
            ]
        );

        let mut contents = Vec::new();
        write_tar(&src.path().join("site"), &Layout::Contents, &mut contents).unwrap();
        let n = names(&contents);
        assert!(
            n.contains(&"index.html".to_string()) || n.contains(&"./index.html".to_string()),
            "{n:?}"
        );

        let dst = tempfile::tempdir().unwrap();
        extract_tar(&named[..], dst.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dst.path().join("site/sub/x")).unwrap(),
            "x"
        );
        assert_eq!(
            std::fs::read_link(dst.path().join("site/link")).unwrap(),
            Path::new("index.html")
        );
    }

    #[test]
    fn single_file_keeps_its_name() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("notes.txt"), "n").unwrap();
        let mut tar = Vec::new();
        write_tar(
            &src.path().join("notes.txt"),
            &Layout::Named("notes.txt".into()),
            &mut tar,
        )
        .unwrap();
        assert_eq!(names(&tar), ["notes.txt"]);
    }
}
