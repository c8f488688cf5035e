//! Files in a host directory (the logs kept after a crash). Every path is opened with
//! `openat2(RESOLVE_BENEATH)` relative to the root, so the kernel itself refuses `..`,
//! absolute symlinks and symlinks leading out (EXDEV): no check-then-use race.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::mpsc;

use super::listing::Entry;
use super::{Chunks, FileError, Opened};

/// `struct open_how` of linux/openat2.h (libc's is non-exhaustive, so not constructible).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const CHUNK: usize = 64 * 1024;
const TAIL_POLL: Duration = Duration::from_millis(200);

/// Open `rel` (relative to `root`, `.` for the root itself) without ever leaving `root`.
/// Non-blocking, so a FIFO planted in the tree cannot hang the open.
fn open_beneath(root: &Path, rel: &str) -> Result<File, FileError> {
    let root_c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| FileError::Internal("root path contains NUL".into()))?;
    let rel_c = CString::new(rel).map_err(|_| FileError::NotFound)?;
    // SAFETY: plain syscalls on NUL-terminated strings we own; returned fds are wrapped at once.
    let root_fd = unsafe {
        libc::open(
            root_c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if root_fd < 0 {
        return Err(errno_error(std::io::Error::last_os_error()));
    }
    // SAFETY: root_fd is a fresh descriptor nobody else owns.
    let root_fd = unsafe { OwnedFd::from_raw_fd(root_fd) };
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64,
        mode: 0,
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a valid dirfd, path and a correctly sized open_how.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root_fd.as_raw_fd(),
            rel_c.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(errno_error(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor returned by the kernel.
    Ok(unsafe { File::from_raw_fd(fd as i32) })
}

fn errno_error(e: std::io::Error) -> FileError {
    match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG) => FileError::NotFound,
        Some(libc::EXDEV) | Some(libc::ELOOP) | Some(libc::EACCES) | Some(libc::EPERM) => {
            FileError::NotAccessible
        }
        _ => FileError::Internal(format!("open: {e}")),
    }
}

fn metadata(f: &File) -> Result<std::fs::Metadata, FileError> {
    f.metadata()
        .map_err(|e| FileError::Internal(format!("fstat: {e}")))
}

pub async fn open(root: &Path, rel: &str) -> Result<Opened, FileError> {
    let (root, rel) = (root.to_path_buf(), rel.to_string());
    blocking(move || {
        let f = open_beneath(&root, &rel)?;
        let md = metadata(&f)?;
        if md.is_dir() {
            let dir = format!("/proc/self/fd/{}", f.as_raw_fd());
            let mut entries = Vec::new();
            let rd = std::fs::read_dir(&dir)
                .map_err(|e| FileError::Internal(format!("read_dir: {e}")))?;
            for e in rd.flatten() {
                // DirEntry::metadata is an lstat relative to the open directory.
                let Ok(m) = e.metadata() else { continue };
                entries.push(Entry {
                    name: e.file_name().to_string_lossy().into_owned(),
                    dir: m.is_dir(),
                    size: m.len(),
                });
            }
            Ok(Opened::Dir(entries))
        } else if md.is_file() {
            Ok(Opened::File { size: md.len() })
        } else {
            Err(FileError::NotAccessible)
        }
    })
    .await
}

fn open_file(root: &Path, rel: &str) -> Result<File, FileError> {
    let f = open_beneath(root, rel)?;
    if !metadata(&f)?.is_file() {
        return Err(FileError::NotAccessible);
    }
    Ok(f)
}

pub async fn read(root: &Path, rel: &str, start: u64, len: u64) -> Result<Chunks, FileError> {
    let (root, rel) = (root.to_path_buf(), rel.to_string());
    let f = blocking(move || open_file(&root, &rel)).await?;
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let (mut pos, end) = (start, start.saturating_add(len));
        let mut buf = vec![0u8; CHUNK];
        while pos < end {
            let want = ((end - pos) as usize).min(CHUNK);
            match f.read_at(&mut buf[..want], pos) {
                Ok(0) => break,
                Ok(n) => {
                    pos += n as u64;
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Ok(rx)
}

pub async fn tail(root: &Path, rel: &str, offset: Option<u64>) -> Result<Chunks, FileError> {
    let (rootc, relc) = (root.to_path_buf(), rel.to_string());
    let (f, md) = {
        let (root, rel) = (rootc.clone(), relc.clone());
        blocking(move || {
            let f = open_file(&root, &rel)?;
            let md = metadata(&f)?;
            Ok((f, md))
        })
        .await?
    };
    // The end as of now, before this returns: appends made once the caller has the stream
    // are never skipped.
    let identity = (md.dev(), md.ino());
    let mut pos = offset.unwrap_or(md.len());
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; CHUNK];
        // Still the same file under the same name?
        let linked = || match open_beneath(&rootc, &relc) {
            Ok(g) => g
                .metadata()
                .map(|m| (m.dev(), m.ino()) == identity)
                .unwrap_or(false),
            Err(_) => false,
        };
        loop {
            match f.read_at(&mut buf, pos) {
                Ok(0) => {
                    if !linked() {
                        // Data written just before the rename/removal still goes out.
                        if let Ok(n) = f.read_at(&mut buf, pos) {
                            if n > 0 {
                                let _ = tx.blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])));
                            }
                        }
                        return;
                    }
                    if tx.is_closed() {
                        return;
                    }
                    std::thread::sleep(TAIL_POLL);
                }
                Ok(n) => {
                    pos += n as u64;
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    Ok(rx)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FileError::Internal(format!("blocking task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn escapes_are_refused_by_the_kernel() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("crash");
        std::fs::create_dir_all(root.join("logs")).unwrap();
        std::fs::write(root.join("logs/stdout.log"), b"out\n").unwrap();
        std::fs::write(tmp.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("evil")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("logs/up")).unwrap();
        std::os::unix::fs::symlink("stdout.log", root.join("logs/inside")).unwrap();
        let err = |r: Result<Opened, FileError>| r.err().map(|e| e.to_string());
        let na = Some("Not accessible".to_string());
        let nf = Some("Entity not found".to_string());
        assert_eq!(err(open(&root, "evil").await), na);
        assert_eq!(err(open(&root, "evil/passwd").await), na);
        assert_eq!(err(open(&root, "logs/up").await), na);
        assert_eq!(err(open(&root, "../secret").await), na);
        assert_eq!(err(open(&root, "missing").await), nf);
        assert!(matches!(
            open(&root, "logs/inside").await,
            Ok(Opened::File { size: 4 })
        ));
        let Ok(Opened::Dir(entries)) = open(&root, ".").await else {
            panic!()
        };
        let mut names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.dir)).collect();
        names.sort();
        assert_eq!(names, [("evil", false), ("logs", true)]);
        let mut rx = read(&root, "logs/stdout.log", 1, 2).await.unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap(), &b"ut"[..]);
        assert!(rx.recv().await.is_none());
    }

    /// The next chunk, failing the test instead of hanging.
    async fn next(rx: &mut Chunks) -> Option<Bytes> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("no chunk and no end within 10 s")
            .map(|r| r.unwrap())
    }

    #[tokio::test]
    async fn tail_follows_until_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("log");
        std::fs::write(&file, b"old\n").unwrap();
        let mut rx = tail(tmp.path(), "log", None).await.unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        std::io::Write::write_all(&mut f, b"new\n").unwrap();
        assert_eq!(next(&mut rx).await.unwrap(), &b"new\n"[..]);
        std::fs::remove_file(&file).unwrap();
        assert!(next(&mut rx).await.is_none());
        let mut rx = {
            std::fs::write(&file, b"0123").unwrap();
            tail(tmp.path(), "log", Some(1)).await.unwrap()
        };
        assert_eq!(next(&mut rx).await.unwrap(), &b"123"[..]);
        std::fs::rename(&file, tmp.path().join("moved")).unwrap();
        assert!(next(&mut rx).await.is_none());
    }
}
