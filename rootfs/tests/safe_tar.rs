//! StreamIn / StreamOut against real directories (run as root: chown and xattrs are checked).

mod common;

use std::fs::{self, File};
use std::os::fd::AsFd;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use common::{member_names, RawTar};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use rootfs::{extract, open_in_root, pack, Owner, RootfsError};
use tar::EntryType;
use xattr::FileExt;

const ALICE: Owner = Owner {
    uid: 1000,
    gid: 1000,
};

/// A scratch area with a container root nested four levels inside it, so that any escape a
/// broken implementation could make with the hostile archives below (at most a few `..`, or
/// absolute paths naming the scratch dir) still lands inside the scratch dir, where
/// `outside_listing` sees it, and never on the real host. Tests never name real host files.
struct Scene {
    tmp: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("l1/l2/l3/root")).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        Scene { tmp }
    }
    fn root(&self) -> std::path::PathBuf {
        self.tmp.path().join("l1/l2/l3/root")
    }
    fn outside(&self) -> std::path::PathBuf {
        self.tmp.path().join("outside")
    }
    fn root_fd(&self) -> File {
        File::open(self.root()).unwrap()
    }
    fn extract(&self, dest: &str, tar: &[u8]) -> Result<rootfs::ExtractStats, RootfsError> {
        extract(self.root_fd().as_fd(), Path::new(dest), tar, ALICE)
    }
    fn pack(&self, source: &str) -> Result<Vec<u8>, RootfsError> {
        let mut out = Vec::new();
        pack(self.root_fd().as_fd(), Path::new(source), &mut out).map(|()| out)
    }
    /// Every path below the scratch dir except those inside the root.
    fn outside_listing(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![self.tmp.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p == self.root() {
                    continue;
                }
                out.push(
                    p.strip_prefix(self.tmp.path())
                        .unwrap()
                        .display()
                        .to_string(),
                );
                if p.symlink_metadata().unwrap().is_dir() {
                    stack.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

fn assert_unsafe(r: Result<rootfs::ExtractStats, RootfsError>, entry: &str) {
    match r {
        Err(RootfsError::UnsafeEntry { entry: e, .. }) => assert_eq!(e, entry),
        other => panic!("expected UnsafeEntry for {entry:?}, got {other:?}"),
    }
}

#[test]
fn round_trip_preserves_content_modes_links_xattrs_and_sets_owner() {
    test_support::require_root!();
    let s = Scene::new();
    let data = s.root().join("data");
    fs::create_dir_all(data.join("sub/deeper")).unwrap();
    fs::write(data.join("plain"), b"hello").unwrap();
    fs::set_permissions(data.join("plain"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(data.join("suid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(data.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(data.join("sub/deeper/big"), vec![7u8; 300_000]).unwrap();
    fs::set_permissions(data.join("sub"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("../plain", data.join("sub/rel-link")).unwrap();
    symlink("/etc/absolute", data.join("abs-link")).unwrap();
    nix::unistd::mkfifo(&data.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    fs::set_permissions(data.join("fifo"), fs::Permissions::from_mode(0o620)).unwrap();
    File::open(data.join("plain"))
        .unwrap()
        .set_xattr("user.test", b"xattr-value")
        .unwrap();
    let long = "n".repeat(120);
    fs::write(data.join(&long), b"long name").unwrap();
    File::options()
        .write(true)
        .open(data.join("plain"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_500_000_000))
        .unwrap();

    let tar = s.pack("/data/").unwrap();
    let stats = s.extract("/copy/of/data", &tar).unwrap();
    assert_eq!(stats.files, 4);
    assert_eq!(stats.symlinks, 2);
    assert_eq!(stats.fifos, 1);
    assert_eq!(stats.bytes, 5 + 10 + 300_000 + 9);

    let copy = s.root().join("copy/of/data");
    assert_eq!(fs::read(copy.join("plain")).unwrap(), b"hello");
    assert_eq!(
        fs::read(copy.join("sub/deeper/big")).unwrap(),
        vec![7u8; 300_000]
    );
    assert_eq!(fs::read(copy.join(&long)).unwrap(), b"long name");
    let mode = |p: &str| fs::symlink_metadata(copy.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("plain"), 0o640);
    assert_eq!(mode("suid"), 0o4755, "setuid bit survives the chown");
    assert_eq!(mode("sub"), 0o750);
    assert_eq!(mode("fifo"), 0o620);
    assert!(fs::symlink_metadata(copy.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        fs::read_link(copy.join("sub/rel-link")).unwrap(),
        Path::new("../plain")
    );
    assert_eq!(
        fs::read_link(copy.join("abs-link")).unwrap(),
        Path::new("/etc/absolute")
    );
    assert_eq!(
        File::open(copy.join("plain"))
            .unwrap()
            .get_xattr("user.test")
            .unwrap()
            .as_deref(),
        Some(&b"xattr-value"[..])
    );
    assert_eq!(
        fs::metadata(copy.join("plain")).unwrap().mtime(),
        1_500_000_000
    );

    // Everything extracted, and every directory created for the destination, is alice's.
    for p in [
        "copy",
        "copy/of",
        "copy/of/data",
        "copy/of/data/plain",
        "copy/of/data/suid",
        "copy/of/data/sub",
        "copy/of/data/sub/deeper/big",
        "copy/of/data/sub/rel-link",
        "copy/of/data/fifo",
    ] {
        let m = fs::symlink_metadata(s.root().join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "owner of {p}");
    }
    let made = fs::metadata(s.root().join("copy/of")).unwrap().mode() & 0o7777;
    assert_eq!(made, 0o755, "mkdir -p'd destination dirs are 0755");

    // Packing the copy yields the same members and contents as the original.
    let again = s.pack("/copy/of/data/").unwrap();
    assert_eq!(member_names(&tar), member_names(&again));
}

#[test]
fn pax_xattr_and_user_owner_from_handmade_archive() {
    test_support::require_root!();
    let s = Scene::new();
    let tar = RawTar::new()
        .add(
            b"./bin/tool",
            EntryType::Regular,
            0o755,
            None,
            b"tool",
            &[(b"SCHILY.xattr.user.test", b"\x01\x02binary")],
        )
        .finish();
    let owner = Owner {
        uid: 2000,
        gid: 2001,
    };
    extract(
        s.root_fd().as_fd(),
        Path::new("/home/vcap"),
        &tar[..],
        owner,
    )
    .unwrap();
    let f = s.root().join("home/vcap/bin/tool");
    let m = fs::metadata(&f).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (2000, 2001, 0o755));
    assert_eq!(
        File::open(&f)
            .unwrap()
            .get_xattr("user.test")
            .unwrap()
            .unwrap(),
        b"\x01\x02binary"
    );
    assert_eq!(m.mtime(), 1_600_000_000);
    let home = fs::metadata(s.root().join("home/vcap")).unwrap();
    assert_eq!((home.uid(), home.gid()), (2000, 2001));
}

#[test]
fn extracting_twice_replaces_entries() {
    test_support::require_root!();
    let s = Scene::new();
    let tar = RawTar::new()
        .dir("d/", 0o755)
        .file("d/f", 0o644, b"one")
        .hardlink("d/h", "d/f")
        .symlink("d/s", "f")
        .finish();
    s.extract("/", &tar).unwrap();
    let stats = s.extract("/", &tar).unwrap();
    assert_eq!((stats.files, stats.hardlinks, stats.symlinks), (1, 1, 1));
    let f = fs::metadata(s.root().join("d/f")).unwrap();
    let h = fs::metadata(s.root().join("d/h")).unwrap();
    assert_eq!(f.ino(), h.ino());
    assert_eq!(fs::read(s.root().join("d/s")).unwrap(), b"one");
}

#[test]
fn pack_naming_follows_stream_out() {
    let s = Scene::new();
    let dir = s.root().join("some/inner-dir");
    fs::create_dir_all(dir.join("nested")).unwrap();
    fs::write(dir.join("some-file"), b"x").unwrap();
    fs::write(dir.join("nested/n"), b"y").unwrap();

    assert_eq!(
        member_names(&s.pack("/some/inner-dir/").unwrap()),
        ["./", "./nested/", "./nested/n", "./some-file"]
    );
    assert_eq!(
        member_names(&s.pack("/some/inner-dir").unwrap()),
        [
            "inner-dir/",
            "inner-dir/nested/",
            "inner-dir/nested/n",
            "inner-dir/some-file"
        ]
    );
    assert_eq!(
        member_names(&s.pack("/some/inner-dir/some-file").unwrap()),
        ["some-file"]
    );
    // The whole container.
    assert_eq!(member_names(&s.pack("/").unwrap())[..2], ["./", "./some/"]);
}

#[test]
fn pack_stores_symlinks_without_following_them() {
    let s = Scene::new();
    fs::write(s.outside().join("secret"), b"host secret").unwrap();
    symlink(s.outside().join("secret"), s.root().join("link")).unwrap();
    let tar = s.pack("/link").unwrap();
    let mut a = tar::Archive::new(&tar[..]);
    let mut entries = a.entries().unwrap();
    let e = entries.next().unwrap().unwrap();
    assert_eq!(e.header().entry_type(), EntryType::Symlink);
    assert_eq!(e.link_name().unwrap().unwrap(), s.outside().join("secret"));
    assert!(entries.next().is_none());

    // A symlinked source directory is resolved inside the root, never on the host.
    fs::create_dir(s.outside().join("hostdir")).unwrap();
    fs::write(s.outside().join("hostdir/host-only"), b"h").unwrap();
    symlink(s.outside().join("hostdir"), s.root().join("dirlink")).unwrap();
    let err = s.pack("/dirlink/").unwrap_err();
    assert!(matches!(err, RootfsError::NotFound { .. }), "{err:?}");
}

#[test]
fn pack_missing_source_is_not_found() {
    let s = Scene::new();
    let err = s.pack("/does/not/exist").unwrap_err();
    assert!(err.to_string().contains("/does/not/exist"), "{err}");
    assert!(err.is_not_found());
    assert!(s.pack("relative/path").is_err());
}

#[test]
fn pack_keeps_uid_gid_and_mode() {
    test_support::require_root!();
    let s = Scene::new();
    let f = s.root().join("owned");
    fs::write(&f, b"z").unwrap();
    std::os::unix::fs::chown(&f, Some(1234), Some(4321)).unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o2751)).unwrap();
    let tar = s.pack("/owned").unwrap();
    let mut a = tar::Archive::new(&tar[..]);
    let e = a.entries().unwrap().next().unwrap().unwrap();
    let h = e.header();
    assert_eq!(
        (h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap()),
        (1234, 4321, 0o2751)
    );
}

#[test]
fn hostile_names_are_rejected() {
    test_support::require_root!();
    for (name, dest) in [
        ("../evil", "/"),
        ("../evil", "/dst"),
        ("/abs", "/dst"),
        ("a/../../evil", "/dst"),
    ] {
        let s = Scene::new();
        let before = s.outside_listing();
        let tar = RawTar::new().file(name, 0o644, b"evil").finish();
        assert_unsafe(s.extract(dest, &tar), name);
        assert_eq!(s.outside_listing(), before, "{name} wrote outside the root");
        assert!(!s.root().join("abs").exists() && !s.root().join("evil").exists());
    }
}

#[test]
fn symlink_climbing_above_root_is_rejected() {
    test_support::require_root!();
    let s = Scene::new();
    let before = s.outside_listing();
    let tar = RawTar::new()
        .symlink("evil", "../../..")
        .file("evil/x", 0o644, b"x")
        .finish();
    assert_unsafe(s.extract("/dst", &tar), "evil");
    assert!(s.root().join("dst/evil").symlink_metadata().is_err());
    assert_eq!(s.outside_listing(), before);
}

/// A refusal to write through a symlink the same archive created: it is still a
/// placeholder file, so its name is "not a directory", and the error names the entry.
fn assert_not_through(r: Result<rootfs::ExtractStats, RootfsError>, entry: &str) {
    match r {
        Err(RootfsError::Entry { entry: e, source }) => {
            assert_eq!(e, entry);
            assert!(source.to_string().contains("Not a directory"), "{source}");
        }
        other => panic!("expected an Entry error for {entry:?}, got {other:?}"),
    }
}

#[test]
fn archive_symlinks_are_never_written_through() {
    test_support::require_root!();
    let s = Scene::new();
    let outside = s.outside();
    fs::write(outside.join("victim"), b"original").unwrap();
    fs::create_dir_all(s.root().join("etc")).unwrap();
    let before = s.outside_listing();

    // `ln -> /` then `ln/<host path>`: refused, as GNU tar does, not even clamped in the root.
    let through_root_link = format!("ln{}/victim", outside.display());
    let tar = RawTar::new()
        .symlink("ln", "/")
        .file(&through_root_link, 0o644, b"pwned")
        .finish();
    assert_not_through(s.extract("/dst", &tar), &through_root_link);
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"original");
    let inside = s.root().join(outside.strip_prefix("/").unwrap());
    assert!(!inside.exists(), "write went through the archive's link");
    // The link itself is still created (at the end, even though the archive failed).
    assert_eq!(
        fs::read_link(s.root().join("dst/ln")).unwrap(),
        Path::new("/")
    );

    // The same for `..` targets, for links reached through another of the archive's links,
    // for directories below the link, and for hard link targets through the link.
    let cases: [(&str, &[u8]); 4] = [
        (
            "up/x",
            &RawTar::new()
                .symlink("up", "../etc")
                .file("up/x", 0o644, b"x")
                .finish(),
        ),
        (
            "a/x",
            &RawTar::new()
                .symlink("a", "b")
                .symlink("b", "/etc")
                .file("a/x", 0o644, b"x")
                .finish(),
        ),
        (
            "abs/new/dir/",
            &RawTar::new()
                .symlink("abs", "/etc")
                .dir("abs/new/dir/", 0o755)
                .finish(),
        ),
        (
            "h",
            &RawTar::new()
                .symlink("e", "/etc")
                .hardlink("h", "e/passwd")
                .finish(),
        ),
    ];
    fs::write(s.root().join("etc/passwd"), b"root:x:0:0").unwrap();
    for (entry, tar) in cases {
        let r = s.extract("/dst", tar);
        if entry == "h" {
            // The hard link's target path, not the entry's parent, goes through the link.
            let err = r.unwrap_err();
            assert!(err.to_string().contains("Not a directory"), "{err}");
        } else {
            assert_not_through(r, entry);
        }
        let etc: Vec<_> = fs::read_dir(s.root().join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(etc, ["passwd"], "{entry}: wrote into /etc");
    }
    assert_eq!(
        fs::metadata(s.root().join("etc/passwd")).unwrap().nlink(),
        1
    );
    assert_eq!(
        fs::read_link(s.root().join("dst/b")).unwrap(),
        Path::new("/etc")
    );
    assert_eq!(s.outside_listing(), before);
}

#[test]
fn delayed_symlinks_keep_tar_semantics() {
    test_support::require_root!();
    let s = Scene::new();
    let tar = RawTar::new()
        // Relative links without `..` are made at once and may be written through.
        .dir("d/", 0o755)
        .symlink("l", "d")
        .file("l/f", 0o644, b"via l")
        // A delayed link replaced by a later entry of the same name stays replaced.
        .symlink("s", "/etc/shadow")
        .file("s", 0o600, b"a file now")
        // A hard link to a delayed link becomes the same symlink.
        .symlink("abs", "/etc/hostname")
        .hardlink("abs2", "abs")
        .symlink("d/up", "../d/f")
        .finish();
    let stats = s.extract("/dst", &tar).unwrap();
    assert_eq!(stats.symlinks, 3, "{stats:?}");
    let dst = s.root().join("dst");
    assert_eq!(fs::read(dst.join("d/f")).unwrap(), b"via l");
    assert_eq!(fs::read(dst.join("s")).unwrap(), b"a file now");
    assert!(fs::symlink_metadata(dst.join("s")).unwrap().is_file());
    for l in ["abs", "abs2"] {
        assert_eq!(
            fs::read_link(dst.join(l)).unwrap(),
            Path::new("/etc/hostname")
        );
        let m = fs::symlink_metadata(dst.join(l)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000), "owner of {l}");
        assert_eq!(m.mtime(), 1_600_000_000, "mtime of {l}");
    }
    assert_eq!(fs::read(dst.join("d/up")).unwrap(), b"via l");
    // No placeholder survives anywhere.
    for e in fs::read_dir(&dst).unwrap() {
        let m = e.as_ref().unwrap().metadata().unwrap();
        assert!(
            !(m.is_file() && m.len() == 0),
            "placeholder left: {:?}",
            e.unwrap().path()
        );
    }

    // The destination itself may go through symlinks already in the container.
    fs::create_dir_all(s.root().join("run")).unwrap();
    fs::create_dir_all(s.root().join("var")).unwrap();
    symlink("/run", s.root().join("var/run")).unwrap();
    s.extract(
        "/var/run/app",
        &RawTar::new().file("pid", 0o644, b"1").finish(),
    )
    .unwrap();
    assert_eq!(fs::read(s.root().join("run/app/pid")).unwrap(), b"1");
}

#[test]
fn container_symlinks_resolve_inside_the_root() {
    test_support::require_root!();
    let s = Scene::new();
    let outside = s.outside();
    // A link planted by the container (not by the archive) naming a host path: followed
    // as the container would, i.e. inside the root.
    let inside = s.root().join(outside.strip_prefix("/").unwrap());
    fs::create_dir_all(&inside).unwrap();
    symlink(&outside, s.root().join("hostdir")).unwrap();
    let before = s.outside_listing();
    let tar = RawTar::new()
        .file("hostdir/planted", 0o644, b"planted")
        .finish();
    s.extract("/", &tar).unwrap();
    assert_eq!(fs::read(inside.join("planted")).unwrap(), b"planted");
    assert_eq!(
        s.outside_listing(),
        before,
        "write escaped through an absolute symlink"
    );

    // A link dangling inside the container (its target exists only on the host) is an
    // error, not a way to create the host directory's twin.
    fs::create_dir(outside.join("hostonly")).unwrap();
    let before = s.outside_listing();
    let tar = RawTar::new()
        .symlink("dangling", outside.join("hostonly").to_str().unwrap())
        .file("dangling/f", 0o644, b"f")
        .finish();
    let err = s.extract("/", &tar).unwrap_err();
    assert!(err.to_string().contains("/dangling"), "{err}");
    assert_eq!(s.outside_listing(), before);
}

#[test]
fn existing_symlinks_in_the_container_are_replaced_not_followed() {
    test_support::require_root!();
    let s = Scene::new();
    fs::write(s.outside().join("victim"), b"original").unwrap();
    fs::create_dir(s.root().join("dst")).unwrap();
    fs::create_dir(s.root().join("outside")).unwrap();
    symlink(s.outside().join("victim"), s.root().join("dst/file")).unwrap();
    // From <root>/dst on the host this would reach the scratch dir's `outside`.
    symlink("../../../../../outside", s.root().join("dst/up")).unwrap();
    let before = s.outside_listing();
    let tar = RawTar::new()
        .file("file", 0o644, b"new")
        .file("up/escaped", 0o644, b"x")
        .finish();
    s.extract("/dst", &tar).unwrap();
    assert_eq!(fs::read(s.outside().join("victim")).unwrap(), b"original");
    assert!(!s
        .root()
        .join("dst/file")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(s.root().join("dst/file")).unwrap(), b"new");
    // `up` is clamped at the container's /, so the file lands in <root>/outside.
    assert_eq!(fs::read(s.root().join("outside/escaped")).unwrap(), b"x");
    assert_eq!(s.outside_listing(), before);
}

#[test]
fn hostile_hardlinks_are_rejected() {
    test_support::require_root!();
    let s = Scene::new();
    fs::write(s.outside().join("x"), b"x").unwrap();
    let absolute = s.outside().join("x").display().to_string();
    for target in [
        absolute.as_str(),
        "../../x",
        "a/../../x",
        "../../../../../../outside/x",
    ] {
        let tar = RawTar::new().hardlink("h", target).finish();
        assert_unsafe(s.extract("/dst", &tar), "h");
        assert!(s.root().join("dst/h").symlink_metadata().is_err());
        assert_eq!(fs::metadata(s.outside().join("x")).unwrap().nlink(), 1);
    }
}

#[test]
fn device_nodes_are_rejected() {
    let s = Scene::new();
    for kind in [EntryType::Char, EntryType::Block] {
        let tar = RawTar::new()
            .add(b"dev/null", kind, 0o666, None, b"", &[])
            .finish();
        assert_unsafe(s.extract("/", &tar), "dev/null");
        assert!(s.root().join("dev/null").symlink_metadata().is_err());
    }
}

#[test]
fn truncated_and_corrupt_archives_fail() {
    test_support::require_root!();
    let s = Scene::new();
    let full = RawTar::new()
        .file("big", 0o644, &[1u8; 5000])
        .file("next", 0o644, b"n")
        .finish();
    // Cut inside the first file's data.
    let err = s.extract("/t1", &full[..512 + 3000]).unwrap_err();
    assert!(matches!(err, RootfsError::CorruptArchive { .. }), "{err:?}");
    assert!(err.to_string().contains("big"), "{err}");
    // Cut inside a header.
    let err = s.extract("/t2", &full[..512 + 5120 + 100]).unwrap_err();
    assert!(matches!(err, RootfsError::CorruptArchive { .. }), "{err:?}");
    // Damaged header checksum.
    let mut bad = full.clone();
    bad[10] ^= 0x55;
    let err = s.extract("/t3", &bad[..]).unwrap_err();
    assert!(matches!(err, RootfsError::CorruptArchive { .. }), "{err:?}");
}

#[test]
fn open_in_root_clamps_dotdot_and_absolute_links() {
    let s = Scene::new();
    fs::write(s.outside().join("secret"), b"s").unwrap();
    symlink("../../../../../../../../..", s.root().join("up")).unwrap();
    symlink(s.outside(), s.root().join("abs")).unwrap();
    let root = s.root_fd();
    let open = |p: &str| open_in_root(root.as_fd(), Path::new(p), OFlag::O_RDONLY, Mode::empty());
    let outside_rel = s.outside().join("secret");
    let via_up = format!("/up{}", outside_rel.display());
    assert!(open(&via_up).unwrap_err().is_not_found());
    assert!(open("/abs/secret").unwrap_err().is_not_found());
    assert!(open("/../../outside/secret").unwrap_err().is_not_found());
    // Creating through openat2 lands inside the root.
    let fd = open_in_root(
        root.as_fd(),
        Path::new("/abs/created"),
        OFlag::O_WRONLY | OFlag::O_CREAT,
        Mode::from_bits_truncate(0o600),
    );
    assert!(fd.is_err(), "parent /abs resolves to a missing in-root dir");
    assert!(!s.outside().join("created").exists());
}

#[test]
fn relative_destination_is_an_error() {
    let s = Scene::new();
    let tar = RawTar::new().file("f", 0o644, b"").finish();
    let err = s.extract("relative", &tar).unwrap_err();
    assert!(matches!(err, RootfsError::InvalidPath { .. }), "{err:?}");
}

#[test]
fn unprivileged_user_gets_permission_denied_where_tar_would() {
    test_support::require_root!();
    let s = Scene::new();
    let root_fd = s.root_fd();
    let as_alice = |dest: &str, tar: &[u8]| {
        rootfs::extract_as_user(root_fd.as_fd(), Path::new(dest), tar, ALICE, &[10])
    };
    // /root is 0700 root: neither the destination nor entries may be created there.
    fs::create_dir(s.root().join("root")).unwrap();
    fs::set_permissions(s.root().join("root"), fs::Permissions::from_mode(0o700)).unwrap();
    let tar = RawTar::new().file("f", 0o644, b"x").finish();
    for dest in ["/root", "/root/sub"] {
        let err = as_alice(dest, &tar).unwrap_err();
        assert!(
            err.to_string().contains("Permission denied"),
            "{dest}: {err}"
        );
    }
    assert!(!s.root().join("root/f").exists() && !s.root().join("root/sub").exists());

    // Alice's home works, including mkdir -p below it.
    fs::create_dir_all(s.root().join("home/alice")).unwrap();
    std::os::unix::fs::chown(s.root().join("home/alice"), Some(1000), Some(1000)).unwrap();
    as_alice("/home/alice/new/dir", &tar).unwrap();
    assert_eq!(
        fs::metadata(s.root().join("home/alice/new/dir/f"))
            .unwrap()
            .uid(),
        1000
    );

    // A group-writable dir of a supplementary group is fine; a foreign file in a sticky dir
    // may not be replaced.
    fs::create_dir(s.root().join("wheel")).unwrap();
    std::os::unix::fs::chown(s.root().join("wheel"), Some(0), Some(10)).unwrap();
    fs::set_permissions(s.root().join("wheel"), fs::Permissions::from_mode(0o1775)).unwrap();
    as_alice("/wheel", &tar).unwrap();
    fs::write(s.root().join("wheel/g"), b"root's").unwrap();
    let err = as_alice("/wheel", &RawTar::new().file("g", 0o644, b"mine").finish()).unwrap_err();
    assert!(err.to_string().contains("Permission denied"), "{err}");
    assert_eq!(fs::read(s.root().join("wheel/g")).unwrap(), b"root's");

    // No hard links to files alice does not own.
    let err = as_alice("/wheel", &RawTar::new().hardlink("l", "g").finish()).unwrap_err();
    assert!(err.to_string().contains("not permitted"), "{err}");

    // Root (plain extract) is not restricted.
    s.extract("/root", &tar).unwrap();
}

#[test]
fn pack_as_user_reads_only_what_the_user_may_read() {
    test_support::require_root!();
    let s = Scene::new();
    let root_fd = s.root_fd();
    let pack_as = |source: &str, groups: &[u32]| {
        let mut out = Vec::new();
        let r = rootfs::safe_tar::pack_as_user(
            root_fd.as_fd(),
            Path::new(source),
            &mut out,
            ALICE,
            groups,
        );
        (r, out)
    };
    let check_as = |source: &str| {
        rootfs::safe_tar::check_readable_as_user(root_fd.as_fd(), Path::new(source), ALICE, &[])
    };
    let write = |p: &str, data: &[u8], mode: u32, uid: u32, gid: u32| {
        let p = s.root().join(p);
        fs::write(&p, data).unwrap();
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    let mkdir = |p: &str, mode: u32, uid: u32, gid: u32| {
        let p = s.root().join(p);
        fs::create_dir(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    mkdir("root", 0o700, 0, 0);
    write("root/secret", b"root secret", 0o644, 0, 0);
    write("private", b"root secret", 0o600, 0, 0);
    write("wheel-only", b"wheel data", 0o640, 0, 10);
    write("mine", b"alice data", 0o600, 1000, 1000);
    mkdir("listonly", 0o744, 0, 0); // readable but not searchable by others
    write("listonly/f", b"f", 0o644, 0, 0);
    mkdir("pub", 0o755, 0, 0);
    write("pub/a-open", b"open data", 0o644, 0, 0);
    write("pub/b-closed", b"root secret", 0o600, 0, 0);
    write("pub/c-after", b"after data", 0o644, 0, 0);
    symlink("/private", s.root().join("pub/a-link")).unwrap();

    // Refused before the first byte: unreadable files, unreadable or unsearchable
    // directories, and anything below a directory alice cannot search.
    for src in [
        "/private",
        "/root",
        "/root/",
        "/root/secret",
        "/wheel-only",
        "/listonly/",
        "/listonly/f",
    ] {
        let (r, out) = pack_as(src, &[]);
        let err = r.expect_err(src);
        assert!(
            err.to_string().contains("Permission denied"),
            "{src}: {err}"
        );
        assert!(err.to_string().contains(src.trim_end_matches('/')), "{err}");
        assert!(out.is_empty(), "{src}: {} bytes written", out.len());
        assert!(check_as(src).is_err(), "{src}");
    }

    // Allowed: her own file, a file of a supplementary group, a world-readable file in a
    // directory she can search; a missing source is still "does not exist".
    for (src, groups, data) in [
        ("/mine", &[][..], &b"alice data"[..]),
        ("/wheel-only", &[10][..], b"wheel data"),
        ("/pub/a-open", &[][..], b"open data"),
    ] {
        let (r, out) = pack_as(src, groups);
        r.unwrap_or_else(|e| panic!("{src}: {e}"));
        let mut a = tar::Archive::new(&out[..]);
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut got).unwrap();
        assert_eq!(got, data, "{src}");
    }
    check_as("/mine").unwrap();
    assert!(check_as("/nope").unwrap_err().is_not_found());

    // An unreadable entry deeper in the tree ends the stream with an error there: what came
    // before is out, the secret and everything after it is not.
    let (r, out) = pack_as("/pub/", &[]);
    let err = r.unwrap_err();
    assert!(err.to_string().contains("b-closed"), "{err}");
    assert!(err.to_string().contains("Permission denied"), "{err}");
    let has = |needle: &[u8]| out.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"open data"));
    assert!(!has(b"root secret"), "secret leaked");
    assert!(!has(b"after data"));
    // The symlink to the unreadable file is stored as a link: it reveals only its target.
    assert!(has(b"/private"));

    // Root is not restricted.
    assert!(s
        .pack("/pub/")
        .unwrap()
        .windows(11)
        .any(|w| w == b"root secret"));
}
