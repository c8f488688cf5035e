//! /etc/hosts and /etc/resolv.conf of a container, written into its root after its network is
//! up (they name the container's own IP), root-owned 0644 so only container root can change them.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::NetError;

/// localhost, the container's own name on its IP, then the operator's extra entries.
pub fn hosts(container_ip: Ipv4Addr, hostname: &str, extra: &[String]) -> String {
    let mut s = format!("127.0.0.1 localhost\n{container_ip} {hostname}\n");
    for e in extra {
        s += e;
        s.push('\n');
    }
    s
}

/// Configured servers (`--dns-server`), else the host's non-loopback resolvers (loopback ones
/// cannot be reached from the container), then `--additional-dns-server`.
pub fn resolv_conf(dns: &[Ipv4Addr], additional: &[Ipv4Addr], host_resolv: &str) -> String {
    let mut s = String::new();
    if dns.is_empty() {
        for line in host_resolv.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let loopback = words
                        .next()
                        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                        .is_some_and(|a| a.is_loopback());
                    if !loopback {
                        s += line.trim();
                        s.push('\n');
                    }
                }
                Some("search") | Some("domain") | Some("options") => {
                    s += line.trim();
                    s.push('\n');
                }
                _ => {}
            }
        }
    } else {
        for d in dns {
            s += &format!("nameserver {d}\n");
        }
    }
    for d in additional {
        s += &format!("nameserver {d}\n");
    }
    s
}

/// The host's resolv.conf; systemd-resolved's stub (127.0.0.53) is replaced by its upstream list.
pub fn host_resolv_conf() -> String {
    let main = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if main.contains("127.0.0.53") {
        if let Ok(upstream) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return upstream;
        }
    }
    main
}

/// A container's root directory and container root's host ids, for its /etc files.
#[derive(Clone, Copy)]
pub struct ContainerRoot<'a> {
    pub fd: BorrowedFd<'a>,
    pub owner: (u32, u32),
}

/// Replace `/etc/<name>` inside the container root (never following a symlink out of it) with a
/// fresh 0644 file owned by container root, `owner` in host ids (created as it: a root
/// filesystem mounted in a user namespace has no place for host root's files).
pub fn write_etc(
    root: BorrowedFd<'_>,
    name: &str,
    contents: &str,
    owner: (u32, u32),
) -> Result<(), NetError> {
    if owner == (0, 0) {
        return write_etc_as(root, name, contents, owner);
    }
    rootfs::idmap::as_fs_ids(owner.0, owner.1, || {
        write_etc_as(root, name, contents, owner)
    })
}

fn write_etc_as(
    root: BorrowedFd<'_>,
    name: &str,
    contents: &str,
    owner: (u32, u32),
) -> Result<(), NetError> {
    let path = format!("/etc/{name}");
    let err = |e: nix::Error| NetError::Io {
        path: path.clone(),
        source: e.into(),
    };
    let etc = rootfs::open_in_root(
        root,
        Path::new("/etc"),
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| NetError::Io {
        path: path.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    match nix::unistd::unlinkat(&etc, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(err(e)),
    }
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(&etc, name, flags, Mode::from_bits_truncate(0o644)).map_err(err)?;
    let mut file = std::fs::File::from(fd);
    nix::unistd::fchown(&file, Some(owner.0.into()), Some(owner.1.into())).map_err(err)?;
    nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(0o644)).map_err(err)?;
    file.write_all(contents.as_bytes())
        .map_err(|e| NetError::Io {
            path: path.clone(),
            source: e,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn hosts_names_the_container() {
        let h = hosts(
            "10.254.0.2".parse().unwrap(),
            "box",
            &["1.2.3.4 extra".into()],
        );
        assert_eq!(h, "127.0.0.1 localhost\n10.254.0.2 box\n1.2.3.4 extra\n");
    }

    #[test]
    fn resolv_conf_sources() {
        let host = "# comment\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.org\n";
        assert_eq!(
            resolv_conf(&[], &[], host),
            "nameserver 10.0.0.2\nsearch example.org\n"
        );
        let dns = ["8.8.8.8".parse().unwrap()];
        let more = ["1.1.1.1".parse().unwrap()];
        assert_eq!(
            resolv_conf(&dns, &more, host),
            "nameserver 8.8.8.8\nnameserver 1.1.1.1\n"
        );
    }

    #[test]
    fn write_etc_replaces_symlinks_inside_the_root() {
        test_support::require_root!();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("outside"), "keep").unwrap();
        std::os::unix::fs::symlink("/outside", dir.path().join("etc/hosts")).unwrap();
        let root = std::fs::File::open(dir.path()).unwrap();
        write_etc(root.as_fd(), "hosts", "127.0.0.1 localhost\n", (0, 0)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/hosts")).unwrap(),
            "127.0.0.1 localhost\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("outside")).unwrap(),
            "keep"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.path().join("etc/hosts"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
    }
}
