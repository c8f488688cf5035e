//! StreamOut of directory trees far deeper than any stack could recurse through: the walkers
//! must iterate, keep a bounded number of fds open and fail (or finish) cleanly.

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{openat, renameat, OFlag, AT_FDCWD};
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::{getgid, getuid, unlinkat, UnlinkatFlags};
use rootfs::{open_in_root, pack, pack_as_user, Owner};

const DEEP: usize = 100_000;

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// `top/d/d/.../d`, `levels` deep, made relative to the parent's fd (the paths exceed
/// PATH_MAX), with one file at the bottom.
fn make_chain(top: &Path, levels: usize) {
    let mut cur: OwnedFd = openat(AT_FDCWD, top, dir_flags(), Mode::empty()).unwrap();
    for _ in 0..levels {
        mkdirat(&cur, "d", Mode::from_bits_truncate(0o755)).unwrap();
        cur = openat(&cur, "d", dir_flags(), Mode::empty()).unwrap();
    }
    let f = openat(
        &cur,
        "bottom",
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    drop(f);
}

/// Removes the chain with a constant number of fds and no recursion: lift `d/d` up to
/// `top/x`, remove the now empty `top/d`, rename `x` back to `d`.
fn remove_chain(top: &Path) {
    let top = openat(AT_FDCWD, top, dir_flags(), Mode::empty()).unwrap();
    loop {
        let d = match openat(&top, "d", dir_flags(), Mode::empty()) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENOENT) => return,
            Err(e) => panic!("open d: {e}"),
        };
        let _ = unlinkat(&d, "bottom", UnlinkatFlags::NoRemoveDir);
        let lifted = renameat(&d, "d", &top, "x").is_ok();
        drop(d);
        unlinkat(&top, "d", UnlinkatFlags::RemoveDir).unwrap();
        if !lifted {
            return;
        }
        renameat(&top, "x", &top, "d").unwrap();
    }
}

/// Counts the bytes written, without keeping them.
#[derive(Default)]
struct Count {
    bytes: u64,
}

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn me() -> Owner {
    Owner {
        uid: getuid().as_raw(),
        gid: getgid().as_raw(),
    }
}

struct Chain {
    tmp: tempfile::TempDir,
}

impl Chain {
    fn new(levels: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("root")).unwrap();
        make_chain(&tmp.path().join("root"), levels);
        Chain { tmp }
    }
    fn root(&self) -> OwnedFd {
        open_in_root(
            openat(AT_FDCWD, self.tmp.path(), dir_flags(), Mode::empty())
                .unwrap()
                .as_fd(),
            Path::new("/root"),
            dir_flags(),
            Mode::empty(),
        )
        .unwrap()
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        remove_chain(&self.tmp.path().join("root"));
    }
}

#[test]
fn pack_of_100k_levels_ends_cleanly() {
    let chain = Chain::new(DEEP);
    let root = chain.root();
    let mut out = Count::default();
    // Success or an error are both fine; a stack overflow aborts the test binary.
    let res = pack(root.as_fd(), Path::new("/d"), &mut out);
    if let Err(e) = &res {
        eprintln!("pack of {DEEP} levels: {e}");
    }
    assert!(out.bytes > 0);
}

#[test]
fn pack_as_user_of_100k_levels_ends_cleanly() {
    let chain = Chain::new(DEEP);
    let root = chain.root();
    let mut out = Count::default();
    let res = pack_as_user(root.as_fd(), Path::new("/d/"), &mut out, me(), &[]);
    if let Err(e) = &res {
        eprintln!("pack_as_user of {DEEP} levels: {e}");
    }
    assert!(out.bytes > 0);
}

/// Deeper than the window of open directory fds but with names short enough to pack: every
/// directory and the bottom file are in the archive, in order.
#[test]
fn pack_of_3000_levels_is_complete() {
    let levels = 3000;
    let chain = Chain::new(levels);
    let root = chain.root();
    let mut out = Vec::new();
    pack(root.as_fd(), Path::new("/d"), &mut out).unwrap();
    let mut archive = tar::Archive::new(&out[..]);
    let mut dirs = 0;
    let mut files = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let path = e.path().unwrap().into_owned();
        if e.header().entry_type().is_dir() {
            dirs += 1;
            assert_eq!(path.components().count(), dirs, "{}", path.display());
        } else {
            files.push(path);
        }
    }
    assert_eq!(dirs, levels);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].components().count(), levels + 1);
    assert!(files[0].ends_with("bottom"));
}
