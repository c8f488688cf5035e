//! The default rootfs `gardend` ships with: the host's static busybox plus the users the
//! Garden integration tests expect (root, alice with supplementary group wheel, vcap, nobody).
//!
//! A static binary is required because the rootfs contains no libc or dynamic loader.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image::unique_suffix;
use crate::RootfsError;

/// Where Debian's busybox-static installs the binary.
pub const HOST_BUSYBOX: &str = "/bin/busybox";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
alice:x:1000:1000:alice:/home/alice:/bin/sh
vcap:x:2000:2000:vcap:/home/vcap:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
";

const GROUP: &str = "root:x:0:
wheel:x:10:alice
alice:x:1000:
vcap:x:2000:
nogroup:x:65534:
";

const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

/// Builds the busybox rootfs at `dir` unless it is already there, and returns `dir`.
///
/// Idempotent and safe to call concurrently: the tree is assembled in a private temp dir
/// next to `dir` and renamed into place; losers of the race discard their copy.
pub fn ensure_busybox_rootfs(dir: &Path) -> Result<PathBuf, RootfsError> {
    build_from(Path::new(HOST_BUSYBOX), dir)
}

pub(crate) fn build_from(busybox: &Path, dir: &Path) -> Result<PathBuf, RootfsError> {
    if is_complete(dir) {
        return Ok(dir.to_path_buf());
    }
    check_static(busybox)?;
    let name = dir.file_name().ok_or_else(|| RootfsError::InvalidPath {
        path: dir.to_path_buf(),
        reason: "needs a final path component".into(),
    })?;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(parent).map_err(|e| RootfsError::io("create directory", parent, e))?;
    let tmp = parent.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        unique_suffix()
    ));
    if let Err(e) = populate(busybox, &tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match fs::rename(&tmp, dir) {
        Ok(()) => {
            tracing::info!(rootfs = %dir.display(), "built busybox rootfs");
            Ok(dir.to_path_buf())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            if is_complete(dir) {
                Ok(dir.to_path_buf())
            } else {
                Err(RootfsError::Busybox {
                    path: dir.to_path_buf(),
                    reason: format!("exists but is not a complete busybox rootfs ({e})"),
                })
            }
        }
    }
}

fn is_complete(dir: &Path) -> bool {
    dir.join("bin/busybox").is_file()
        && dir.join("etc/passwd").is_file()
        && dir.join("bin/sh").symlink_metadata().is_ok()
}

/// Refuses a dynamically linked busybox: an ELF with a `PT_INTERP` program header needs a
/// loader the rootfs does not have.
fn check_static(busybox: &Path) -> Result<(), RootfsError> {
    let fail = |reason: String| RootfsError::Busybox {
        path: busybox.to_path_buf(),
        reason,
    };
    let mut data = Vec::new();
    match fs::File::open(busybox) {
        Ok(f) => f
            .take(1 << 16)
            .read_to_end(&mut data)
            .map_err(|e| RootfsError::io("read", busybox, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(fail(
                "not found; the default rootfs needs a static busybox: run `apt-get install busybox-static`".into(),
            ))
        }
        Err(e) => return Err(RootfsError::io("open", busybox, e)),
    };
    match elf_has_interp(&data) {
        Some(false) => Ok(()),
        Some(true) => Err(fail(
            "is dynamically linked; the default rootfs needs a static busybox: run `apt-get install busybox-static`".into(),
        )),
        None => Err(fail(
            "is not a little-endian ELF executable; run `apt-get install busybox-static`".into(),
        )),
    }
}

/// `Some(true)` if the little-endian ELF image in `d` has a PT_INTERP segment, `None` if it
/// cannot be parsed (only the first 64 KiB are needed: program headers sit near the start).
fn elf_has_interp(d: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if d.get(..4)? != b"\x7fELF" || *d.get(5)? != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(d.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(d.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(d.get(o..o + 8)?.try_into().ok()?));
    let (phoff, phentsize, phnum) = match d.get(4)? {
        1 => (u64::from(u32_at(0x1c)?), u16_at(0x2a)?, u16_at(0x2c)?),
        2 => (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?),
        _ => return None,
    };
    let phoff = usize::try_from(phoff).ok()?;
    for i in 0..usize::from(phnum) {
        if u32_at(phoff + i * usize::from(phentsize))? == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

fn populate(busybox: &Path, root: &Path) -> Result<(), RootfsError> {
    let mkdir = |rel: &str, mode: u32, owner: Option<(u32, u32)>| -> Result<(), RootfsError> {
        let p = root.join(rel);
        fs::create_dir_all(&p).map_err(|e| RootfsError::io("create directory", &p, e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(|e| RootfsError::io("chmod", &p, e))?;
        if let Some((uid, gid)) = owner {
            chown(&p, Some(uid), Some(gid)).map_err(|e| RootfsError::io("chown", &p, e))?;
        }
        Ok(())
    };
    let write = |rel: &str, content: &str| -> Result<(), RootfsError> {
        let p = root.join(rel);
        fs::write(&p, content).map_err(|e| RootfsError::io("write", &p, e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644))
            .map_err(|e| RootfsError::io("chmod", &p, e))
    };

    fs::create_dir(root).map_err(|e| RootfsError::io("create directory", root, e))?;
    mkdir("", 0o755, Some((0, 0)))?;
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "etc", "home", "var",
    ] {
        mkdir(d, 0o755, None)?;
    }
    mkdir("tmp", 0o1777, None)?;
    mkdir("var/tmp", 0o1777, None)?;
    mkdir("root", 0o700, None)?;
    mkdir("home/alice", 0o755, Some((1000, 1000)))?;
    mkdir("home/vcap", 0o755, Some((2000, 2000)))?;

    let bin = root.join("bin/busybox");
    fs::copy(busybox, &bin).map_err(|e| RootfsError::io("copy busybox to", &bin, e))?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))
        .map_err(|e| RootfsError::io("chmod", &bin, e))?;

    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| RootfsError::io("run", busybox, e))?;
    if !out.status.success() {
        return Err(RootfsError::Busybox {
            path: busybox.to_path_buf(),
            reason: format!("--list-full failed: {}", out.status),
        });
    }
    let list = String::from_utf8_lossy(&out.stdout);
    let mut applets = 0;
    for applet in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let rel = Path::new(applet);
        let sane = rel.is_relative()
            && rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !sane {
            return Err(RootfsError::Busybox {
                path: busybox.to_path_buf(),
                reason: format!("--list-full printed an unexpected applet path {applet:?}"),
            });
        }
        let link = root.join(rel);
        if link.symlink_metadata().is_ok() {
            continue; // bin/busybox itself, or a duplicate
        }
        if let Some(p) = link.parent() {
            fs::create_dir_all(p).map_err(|e| RootfsError::io("create directory", p, e))?;
        }
        symlink("/bin/busybox", &link).map_err(|e| RootfsError::io("symlink", &link, e))?;
        applets += 1;
    }
    if root.join("bin/sh").symlink_metadata().is_err() {
        return Err(RootfsError::Busybox {
            path: busybox.to_path_buf(),
            reason: "has no sh applet".into(),
        });
    }
    tracing::debug!(applets, "linked busybox applets");

    write("etc/passwd", PASSWD)?;
    write("etc/group", GROUP)?;
    write("etc/hosts", HOSTS)?;
    write("etc/resolv.conf", "")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_interp_detection() {
        let host_busybox = fs::read(HOST_BUSYBOX).expect("busybox-static installed");
        assert_eq!(elf_has_interp(&host_busybox), Some(false));
        let dynamic = fs::read("/bin/ls").unwrap();
        assert_eq!(elf_has_interp(&dynamic), Some(true));
        assert_eq!(elf_has_interp(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn dynamic_or_missing_busybox_is_refused_with_install_hint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rootfs");
        for bin in ["/bin/ls", "/nonexistent/busybox"] {
            let err = build_from(Path::new(bin), &dir).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(bin) && msg.contains("apt-get install busybox-static"),
                "{msg}"
            );
            assert!(!dir.exists());
        }
    }
}
