//! The default busybox rootfs (needs Debian's busybox-static at /bin/busybox, and root).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use rootfs::ensure_busybox_rootfs;

fn chroot_sh(root: &Path, script: &str) -> String {
    let out = Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", script])
        .output()
        .expect("run chroot");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn builds_a_usable_rootfs_with_users_and_ownership() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("images/busybox");
    assert_eq!(ensure_busybox_rootfs(&dir).unwrap(), dir);

    assert_eq!(
        fs::read_link(dir.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert!(dir.join("usr/bin/env").symlink_metadata().is_ok());
    assert!(dir.join("sbin/ip").symlink_metadata().is_ok());
    let passwd = fs::read_to_string(dir.join("etc/passwd")).unwrap();
    for line in [
        "root:x:0:0:root:/root:/bin/sh",
        "alice:x:1000:1000:alice:/home/alice:/bin/sh",
        "vcap:x:2000:2000:vcap:/home/vcap:/bin/sh",
    ] {
        assert!(passwd.lines().any(|l| l == line), "missing {line}");
    }
    assert!(passwd
        .lines()
        .any(|l| l.starts_with("nobody:x:65534:65534:")));
    let group = fs::read_to_string(dir.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "wheel:x:10:alice"));
    assert!(group.lines().any(|l| l.starts_with("nogroup:x:65534:")));

    let meta = |p: &str| fs::metadata(dir.join(p)).unwrap();
    assert_eq!(
        (meta("home/alice").uid(), meta("home/alice").gid()),
        (1000, 1000)
    );
    assert_eq!(
        (meta("home/vcap").uid(), meta("home/vcap").gid()),
        (2000, 2000)
    );
    assert_eq!(meta("tmp").permissions().mode() & 0o7777, 0o1777);
    assert_eq!(meta("var/tmp").permissions().mode() & 0o7777, 0o1777);
    assert_eq!(meta("root").uid(), 0);
    for d in ["proc", "sys", "dev", "etc"] {
        assert!(meta(d).is_dir(), "{d}");
    }

    // The shell and user database work from inside the rootfs.
    assert_eq!(
        chroot_sh(&dir, "echo hello from busybox"),
        "hello from busybox\n"
    );
    let id = chroot_sh(&dir, "id alice");
    assert!(
        id.contains("uid=1000(alice)") && id.contains("10(wheel)"),
        "{id}"
    );
    assert!(chroot_sh(&dir, "env").contains("PATH="));
}

#[test]
fn second_call_reuses_the_existing_rootfs() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("busybox");
    ensure_busybox_rootfs(&dir).unwrap();
    let ino = fs::metadata(dir.join("bin/busybox")).unwrap().ino();
    ensure_busybox_rootfs(&dir).unwrap();
    assert_eq!(fs::metadata(dir.join("bin/busybox")).unwrap().ino(), ino);
}

#[test]
fn concurrent_callers_all_succeed_and_leave_no_temp_dirs() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("busybox");
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| ensure_busybox_rootfs(&dir)))
            .collect();
        for h in hs {
            assert_eq!(h.join().unwrap().unwrap(), dir);
        }
    });
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["busybox"]);
    assert!(dir.join("bin/sh").symlink_metadata().is_ok());
}

#[test]
fn a_foreign_non_empty_directory_is_refused() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("busybox");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("unrelated"), b"").unwrap();
    let err = ensure_busybox_rootfs(&dir).unwrap_err();
    assert!(
        err.to_string().contains("not a complete busybox rootfs"),
        "{err}"
    );
    assert!(dir.join("unrelated").exists());
}
