//! The fallback for filesystems that cannot be id-mapped: a copy of a lower layer whose
//! owners are shifted into a user namespace's host range (host root's files become the
//! mapping's root's), made once per layer and mapping under a cache directory.
//!
//! Layers are read-only once resolved (the layer cache is content-addressed), so a copy keyed
//! by the layer's path and the mapping stays valid; the first finished copy wins a race.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::time::TimeSpec;
use sha2::{Digest, Sha256};

use crate::idmap::{IdMapping, OVERFLOW_ID};
use crate::image::{publish_dir, unique_suffix};
use crate::RootfsError;

/// The cached copy of `layer` for `ids`, making it first if needed.
pub fn ensure(layer: &Path, cache: &Path, ids: &IdMapping) -> Result<PathBuf, RootfsError> {
    let digest: String = Sha256::digest(layer.as_os_str().as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    let target = cache.join(format!("{digest}.{}", ids.key()));
    if target.is_dir() {
        return Ok(target);
    }
    fs::create_dir_all(cache).map_err(|e| RootfsError::io("create directory", cache, e))?;
    let tmp = cache.join(format!(".tmp-{digest}-{}", unique_suffix()));
    if publish_dir(&tmp, copy_tree(layer, &tmp, ids), &target)? {
        tracing::info!(layer = %layer.display(), copy = %target.display(), "made a chown'd copy of a lower layer");
    }
    Ok(target)
}

fn shifted(ids: &IdMapping, uid: u32, gid: u32) -> (u32, u32) {
    let overflow_uid = ids.uid_to_host(OVERFLOW_ID).unwrap_or(OVERFLOW_ID);
    let overflow_gid = ids.gid_to_host(OVERFLOW_ID).unwrap_or(OVERFLOW_ID);
    (
        ids.uid_to_host(uid).unwrap_or(overflow_uid),
        ids.gid_to_host(gid).unwrap_or(overflow_gid),
    )
}

/// Copy `src` to the new directory `dst`: every entry with its type, content, mode, mtime and
/// xattrs, hard links kept, owners shifted. Symlinks are copied, never followed.
fn copy_tree(src: &Path, dst: &Path, ids: &IdMapping) -> Result<(), RootfsError> {
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    let mut dirs: Vec<(PathBuf, fs::Metadata)> = Vec::new();
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((from, to)) = stack.pop() {
        let meta = fs::symlink_metadata(&from).map_err(|e| RootfsError::io("stat", &from, e))?;
        let ft = meta.file_type();
        let io = |op: &'static str| {
            let to = to.clone();
            move |e: std::io::Error| RootfsError::io(op, to, e)
        };
        if ft.is_dir() {
            fs::create_dir(&to).map_err(io("create directory"))?;
            let mut names: Vec<OsString> = fs::read_dir(&from)
                .map_err(|e| RootfsError::io("read directory", &from, e))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(|e| RootfsError::io("read directory", &from, e))?;
            names.sort();
            for n in names.into_iter().rev() {
                stack.push((from.join(&n), to.join(&n)));
            }
            dirs.push((to.clone(), meta));
            continue;
        }
        let key = (meta.dev(), meta.ino());
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&key) {
                fs::hard_link(first, &to).map_err(io("link"))?;
                continue;
            }
            links.insert(key, to.clone());
        }
        if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(|e| RootfsError::io("readlink", &from, e))?;
            std::os::unix::fs::symlink(target, &to).map_err(io("symlink"))?;
        } else if ft.is_file() {
            fs::copy(&from, &to).map_err(io("copy"))?;
        } else {
            let kind = SFlag::from_bits_truncate(meta.mode() & SFlag::S_IFMT.bits());
            let dev = makedev(
                nix::sys::stat::major(meta.rdev()),
                nix::sys::stat::minor(meta.rdev()),
            );
            mknod(&to, kind, Mode::from_bits_truncate(0o600), dev)
                .map_err(|e| RootfsError::io("mknod", &to, e))?;
        }
        finish(&from, &to, &meta, ids)?;
    }
    // Directories last, deepest first: their children bumped their mtimes.
    for (dir, meta) in dirs.iter().rev() {
        finish(dir, dir, meta, ids)?;
    }
    Ok(())
}

/// Owner (first: chown clears setuid bits), mode, xattrs, mtime.
fn finish(from: &Path, to: &Path, meta: &fs::Metadata, ids: &IdMapping) -> Result<(), RootfsError> {
    let (uid, gid) = shifted(ids, meta.uid(), meta.gid());
    lchown(to, Some(uid), Some(gid)).map_err(|e| RootfsError::io("chown", to, e))?;
    let symlink = meta.file_type().is_symlink();
    if !symlink {
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| RootfsError::io("chmod", to, e))?;
        if from != to {
            if let Ok(names) = xattr::list(from) {
                for name in names {
                    if let Ok(Some(value)) = xattr::get(from, &name) {
                        let _ = xattr::set(to, &name, &value);
                    }
                }
            }
        }
    }
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        to,
        &mtime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| RootfsError::io("set mtime of", to, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only (chown): owners are shifted, content, modes, links and hard links kept.
    #[test]
    fn copies_with_shifted_owners_once() {
        test_support::require_root!();
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        fs::create_dir_all(layer.join("etc")).unwrap();
        fs::write(layer.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::set_permissions(layer.join("etc/passwd"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(layer.join("etc/passwd"), layer.join("etc/hard")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", layer.join("link")).unwrap();
        lchown(layer.join("etc"), Some(1000), Some(1000)).unwrap();
        let ids = IdMapping::guardian(100000, Some(65536), 100000, Some(65536)).unwrap();
        let cache = dir.path().join("cache");
        let copy = ensure(&layer, &cache, &ids).unwrap();
        let m = fs::metadata(copy.join("etc/passwd")).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (crate::idmap::MAXIMUS, crate::idmap::MAXIMUS)
        );
        assert_eq!(m.mode() & 0o7777, 0o4755, "setuid survives the chown");
        assert_eq!(m.nlink(), 2);
        let e = fs::metadata(copy.join("etc")).unwrap();
        assert_eq!((e.uid(), e.gid()), (100999, 100999));
        assert_eq!(
            fs::read_link(copy.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(ensure(&layer, &cache, &ids).unwrap(), copy, "cached");
    }
}
