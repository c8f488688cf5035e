//! User namespaces (issue 13 item 1, spec §7.8): default containers map container root to
//! "maximus" (4294967294) and shift nothing else; privileged ones keep host ids. Checked from
//! both sides: what the container sees (`/proc/self/uid_map`, owners of image files) and what
//! the host sees (owners in the upper layer), through StreamIn/StreamOut as root and as a
//! user, and by escape attempts that must fail: host-root-only bind-mounted files, chown of a
//! host file, and the host's and other containers' kernel keys.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{assert_no_leaks, garden_err, run_output, sh, sh_combined, Gardend};
use garden_api::{BindMount, ContainerSpec, GardenError, BIND_MOUNT_MODE_RW};
use garden_client::Client;
use tokio::io::AsyncReadExt;

const MAXIMUS: u32 = 4294967294;

fn spec(handle: &str) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        ..Default::default()
    }
}

fn privileged(handle: &str) -> ContainerSpec {
    ContainerSpec {
        privileged: true,
        ..spec(handle)
    }
}

/// The container's upper layer as the host sees it (`upper` may be a symlink into a quota
/// store).
fn upper(g: &Gardend, handle: &str) -> PathBuf {
    std::fs::canonicalize(g.depot.join(handle).join("upper")).expect("upper dir")
}

/// A tar holding `name` (a regular file with `data`, mode 0644, uid/gid 1234 in the header:
/// StreamIn must ignore them).
fn one_file_tar(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(1234);
    h.set_gid(1234);
    h.set_cksum();
    b.append_data(&mut h, name, data).expect("append");
    b.into_inner().expect("tar")
}

/// (name, uid, gid) of every member.
fn owners(tar_bytes: &[u8]) -> Vec<(String, u64, u64)> {
    let mut a = tar::Archive::new(tar_bytes);
    a.entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            (name, e.header().uid().unwrap(), e.header().gid().unwrap())
        })
        .collect()
}

async fn stream_out(c: &Client, h: &str, user: &str, src: &str) -> Vec<u8> {
    let mut r = c.stream_out(h, user, src).await.expect("stream_out");
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.expect("read tar");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid_map_default_and_privileged() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    c.create(&spec("un")).await.expect("create");
    c.create(&privileged("pr"))
        .await
        .expect("create privileged");

    let (status, out) = sh_combined(&c, "un", "cat /proc/self/uid_map /proc/self/gid_map").await;
    assert_eq!(status, 0, "{out}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let want = [vec!["0", "4294967294", "1"], vec!["1", "1", "4294967293"]];
    assert_eq!(lines[..2], want[..], "uid_map: {out}");
    assert_eq!(lines[2..], want[..], "gid_map: {out}");

    let (status, out) = sh_combined(&c, "pr", "cat /proc/self/uid_map").await;
    assert_eq!(status, 0, "{out}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words, ["0", "0", "4294967295"], "{out}");

    // The kernel file systems were mounted from inside, so the namespace owns them; they
    // are all there, and what container root makes on them is its own (/tmp too, which is
    // a directory of the writable layer).
    let (status, out) = sh_combined(
        &c,
        "un",
        "for m in /proc /sys /dev/pts /dev/mqueue /dev/shm; do \
           grep -q \" $m \" /proc/mounts || echo missing $m; done; \
         touch /dev/shm/x /tmp/x && stat -c '%u' /dev/shm/x /tmp/x /dev/pts/ptmx",
    )
    .await;
    assert_eq!((status, out.as_str()), (0, "0\n0\n0\n"), "{out}");

    // Container root is uid 0 inside; the host sees garden-init (container root) as maximus.
    let (status, out) = sh_combined(&c, "un", "id -u; id -g").await;
    assert_eq!((status, out.as_str()), (0, "0\n0\n"));
    for (handle, want) in [("un", MAXIMUS), ("pr", 0)] {
        let pid = g.init_pid(handle);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        let uids: Vec<u32> = uid_line[4..]
            .split_whitespace()
            .map(|u| u.parse().unwrap())
            .collect();
        assert_eq!(uids, [want; 4], "{handle}: {uid_line}");
    }

    for h in ["un", "pr"] {
        c.destroy(h).await.expect("destroy");
        assert_no_leaks(h, &g);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uid_map_flags_shift_the_range() {
    e2e::require_root!();
    let g = Gardend::start_with(&[
        "--uid-map-start",
        "100000",
        "--uid-map-length",
        "65536",
        "--gid-map-start",
        "200000",
        "--gid-map-length",
        "1000",
    ]);
    let c = g.client();
    c.create(&spec("shifted")).await.expect("create");
    let (status, out) =
        sh_combined(&c, "shifted", "cat /proc/self/uid_map /proc/self/gid_map").await;
    assert_eq!(status, 0, "{out}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        [
            "0",
            "4294967294",
            "1",
            "1",
            "100000",
            "65536",
            "0",
            "4294967294",
            "1",
            "1",
            "200000",
            "1000"
        ],
        "{out}"
    );
    // alice (1000:1000) writes a file: on disk it is 100999:200999.
    let spec = garden_api::ProcessSpec {
        user: "alice".into(),
        ..sh("touch /home/alice/mine")
    };
    let out = run_output(&c, "shifted", &spec, None).await.expect("run");
    assert_eq!(out.status, 0, "{out:?}");
    let m = std::fs::metadata(upper(&g, "shifted").join("home/alice/mine")).expect("upper file");
    assert_eq!((m.uid(), m.gid()), (100999, 200999));
    c.destroy("shifted").await.expect("destroy");
    assert_no_leaks("shifted", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_files_belong_to_container_root_and_new_files_to_maximus_on_the_host() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    c.create(&spec("owners")).await.expect("create");
    // Image files owned by host root appear as container root's, writable by it.
    let (status, out) = sh_combined(
        &c,
        "owners",
        "stat -c '%u:%g' /bin/busybox /etc/passwd /; stat -c '%u:%g' /home/alice; \
         echo root >> /etc/passwd && touch /made-by-root && chown alice:alice /made-by-root && \
         mkdir /root-dir && echo ok",
    )
    .await;
    assert_eq!(
        (status, out.as_str()),
        (0, "0:0\n0:0\n0:0\n1000:1000\nok\n"),
        "{out}"
    );
    // On the host those files belong to the mapped ids, never to host root.
    let up = upper(&g, "owners");
    let m = std::fs::metadata(up.join("root-dir")).expect("root-dir");
    assert_eq!((m.uid(), m.gid()), (MAXIMUS, MAXIMUS));
    let m = std::fs::metadata(up.join("etc/passwd")).expect("copied-up passwd");
    assert_eq!((m.uid(), m.gid()), (MAXIMUS, MAXIMUS));
    let m = std::fs::metadata(up.join("made-by-root")).expect("chowned file");
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    // A setuid-root binary made inside is setuid-maximus on the host, not host root.
    let (status, out) = sh_combined(
        &c,
        "owners",
        "cp /bin/busybox /suid && chmod 4755 /suid && stat -c '%a %u' /suid",
    )
    .await;
    assert_eq!((status, out.as_str()), (0, "4755 0\n"), "{out}");
    let m = std::fs::metadata(up.join("suid")).expect("suid");
    assert_eq!((m.uid(), m.mode() & 0o7777), (MAXIMUS, 0o4755));
    c.destroy("owners").await.expect("destroy");
    assert_no_leaks("owners", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_in_and_out_use_container_ids() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    c.create(&spec("files")).await.expect("create");
    let up = upper(&g, "files");

    c.stream_in(
        "files",
        "",
        "/as-root",
        std::io::Cursor::new(one_file_tar("f", b"r\n")),
    )
    .await
    .expect("stream in as root");
    c.stream_in(
        "files",
        "alice",
        "/home/alice/in",
        std::io::Cursor::new(one_file_tar("g", b"a\n")),
    )
    .await
    .expect("stream in as alice");
    // Host view: mapped ids.
    let m = std::fs::metadata(up.join("as-root/f")).expect("f");
    assert_eq!((m.uid(), m.gid()), (MAXIMUS, MAXIMUS));
    let m = std::fs::metadata(up.join("home/alice/in/g")).expect("g");
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    // Container view.
    let (status, out) = sh_combined(
        &c,
        "files",
        "stat -c '%u:%g' /as-root /as-root/f /home/alice/in /home/alice/in/g",
    )
    .await;
    assert_eq!(
        (status, out.as_str()),
        (0, "0:0\n0:0\n1000:1000\n1000:1000\n"),
        "{out}"
    );
    // StreamOut reports container ids, as root and as alice.
    let as_root = owners(&stream_out(&c, "files", "", "/as-root").await);
    assert_eq!(
        as_root,
        [
            ("as-root/".to_string(), 0, 0),
            ("as-root/f".to_string(), 0, 0)
        ]
    );
    let as_alice = owners(&stream_out(&c, "files", "alice", "/home/alice/in/").await);
    assert_eq!(
        as_alice,
        [
            ("./".to_string(), 1000, 1000),
            ("./g".to_string(), 1000, 1000)
        ]
    );
    // alice still may not write where container root owns the directory.
    let err = c
        .stream_in(
            "files",
            "alice",
            "/as-root",
            std::io::Cursor::new(one_file_tar("x", b"")),
        )
        .await
        .expect_err("alice writes into root's directory");
    assert!(err.to_string().contains("Permission denied"), "{err}");
    c.destroy("files").await.expect("destroy");
    assert_no_leaks("files", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_privileged_containers_refuses_privileged_creates() {
    e2e::require_root!();
    let g = Gardend::start_with(&["--disable-privileged-containers"]);
    let c = g.client();
    let err = garden_err(c.create(&privileged("nope")).await);
    match &err {
        GardenError::Generic { message, .. } => {
            assert_eq!(message, "privileged container creation is disabled")
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(c.list(&[]).await.expect("list").is_empty());
    assert!(!g.depot.join("nope").exists());
    // Unprivileged ones still work.
    c.create(&spec("fine")).await.expect("create");
    c.destroy("fine").await.expect("destroy");
    assert_no_leaks("fine", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_root_cannot_read_or_chown_host_root_files() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let dir = tempfile::tempdir().expect("tempdir");
    // The tempdir is 0700: gardend resolves bind sources itself, so the container needs no
    // access to the host path above them.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "host root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let owned = shared.join("host-file");
    std::fs::write(&owned, "mine\n").unwrap();
    std::fs::set_permissions(&owned, std::fs::Permissions::from_mode(0o666)).unwrap();
    let s = ContainerSpec {
        bind_mounts: vec![
            BindMount {
                src_path: secret.display().to_string(),
                dst_path: "/mnt/secret".into(),
                ..Default::default()
            },
            BindMount {
                src_path: shared.display().to_string(),
                dst_path: "/mnt/shared".into(),
                mode: BIND_MOUNT_MODE_RW,
                ..Default::default()
            },
        ],
        ..spec("escape")
    };
    c.create(&s).await.expect("create");
    let (status, out) = sh_combined(&c, "escape", "cat /mnt/secret").await;
    assert_ne!(
        status, 0,
        "container root read a host-root-only file: {out}"
    );
    assert!(out.contains("Permission denied"), "{out}");
    let (status, out) = sh_combined(&c, "escape", "chown 0:0 /mnt/shared/host-file").await;
    assert_ne!(status, 0, "container root chowned a host file: {out}");
    let (status, out) = sh_combined(&c, "escape", "chmod 4777 /mnt/shared/host-file").await;
    assert_ne!(status, 0, "container root chmodded a host file: {out}");
    let m = std::fs::metadata(&owned).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o666));
    // Writing is what the mode allows; what it writes is maximus's on the host.
    let (status, out) = sh_combined(
        &c,
        "escape",
        "echo hi >> /mnt/shared/host-file && touch /mnt/shared/new",
    )
    .await;
    assert_eq!(status, 0, "{out}");
    let m = std::fs::metadata(shared.join("new")).unwrap();
    assert_eq!(m.uid(), MAXIMUS);
    c.destroy("escape").await.expect("destroy");
    assert_no_leaks("escape", &g);
}

const KEY_HELPER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
/* keyhelper add <desc> <data> | read <id> | search <desc> | unlink <id> */
int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "add")) {
        long id = syscall(SYS_add_key, "user", argv[2], argv[3], strlen(argv[3]), -4 /* @u */);
        if (id < 0) { perror("add_key"); return 1; }
        printf("%ld\n", id); return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "read")) {
        char buf[256];
        long n = syscall(SYS_keyctl, 11 /* KEYCTL_READ */, atol(argv[2]), buf, sizeof buf);
        if (n < 0) { perror("keyctl read"); return 1; }
        fwrite(buf, 1, n, stdout); putchar('\n'); return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "search")) {
        long id = syscall(SYS_keyctl, 10 /* KEYCTL_SEARCH */, -4, "user", argv[2], 0);
        if (id < 0) { perror("keyctl search"); return 1; }
        printf("%ld\n", id); return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "unlink")) {
        if (syscall(SYS_keyctl, 9 /* KEYCTL_UNLINK */, atol(argv[2]), -4) < 0) { perror("unlink"); return 1; }
        return 0;
    }
    fprintf(stderr, "usage\n"); return 2;
}
"#;

/// Build the static key helper with the host's C compiler.
fn key_helper(dir: &Path) -> PathBuf {
    let src = dir.join("keyhelper.c");
    let bin = dir.join("keyhelper");
    std::fs::write(&src, KEY_HELPER).unwrap();
    let out = Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run cc (scripts/deps.sh installs gcc and libc6-dev)");
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

fn helper_tar(bin: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_path_with_name(bin, "keyhelper").expect("append");
    b.into_inner().expect("tar")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyrings_are_per_namespace() {
    e2e::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let bin = key_helper(dir.path());
    // Host root adds a key to its user keyring.
    let secret = format!("host-secret-{}", std::process::id());
    let out = Command::new(&bin)
        .args(["add", &secret, "s3cr3t"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let host_key = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let g = Gardend::start();
    let c = g.client();
    for h in ["keys-a", "keys-b"] {
        c.create(&spec(h)).await.expect("create");
        c.stream_in(h, "", "/bin", std::io::Cursor::new(helper_tar(&bin)))
            .await
            .expect("stream in helper");
    }
    // Container root can neither read host root's key by id nor find it in "its" keyring.
    let (status, out) = sh_combined(&c, "keys-a", &format!("keyhelper read {host_key}")).await;
    assert_ne!(status, 0, "container root read host root's key: {out}");
    assert!(!out.contains("s3cr3t"), "{out}");
    let (status, out) = sh_combined(&c, "keys-a", &format!("keyhelper search {secret}")).await;
    assert_ne!(status, 0, "container root found host root's key: {out}");
    // Two containers do not share keys either (when the filter allows keyctl at all).
    let (status, out) = sh_combined(&c, "keys-a", "keyhelper add shared from-a").await;
    if status == 0 {
        let id = out.trim().to_string();
        let (status, out) = sh_combined(&c, "keys-b", &format!("keyhelper read {id}")).await;
        assert_ne!(status, 0, "container b read container a's key: {out}");
        assert!(!out.contains("from-a"), "{out}");
        let (status, out) = sh_combined(&c, "keys-b", "keyhelper search shared").await;
        assert_ne!(status, 0, "container b found container a's key: {out}");
    }
    // The host side really works: host root reads its own key back.
    let out = Command::new(&bin)
        .args(["read", &host_key])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "s3cr3t");
    for h in ["keys-a", "keys-b"] {
        c.destroy(h).await.expect("destroy");
        assert_no_leaks(h, &g);
    }
    // Leave host root's keyring as it was.
    let out = Command::new(&bin)
        .args(["unlink", &host_key])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A lower layer on a filesystem that cannot be id-mapped (ramfs): gardend falls back to a
/// chown'd copy of it, cached per layer and mapping, with the same view inside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmappable_layers_get_a_chowned_copy() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let rootfs = g.depot.parent().unwrap().join("rootfs");
    let mnt = g.tmp.path().join("ramfs");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", rootfs.display()))
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(copied.success());
    let image = ContainerSpec {
        image: garden_api::ImageRef {
            uri: format!("raw://{}", mnt.display()),
            ..Default::default()
        },
        ..spec("ramfs-layer")
    };
    // A state directory only host root may enter (as the depot should be): container root
    // never walks the host paths to its bundle, upper dir or the layer copy.
    std::fs::set_permissions(g.tmp.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    c.create(&image).await.expect("create on a ramfs layer");
    let (status, out) = sh_combined(
        &c,
        "ramfs-layer",
        "stat -c '%u:%g' /bin/busybox /home/alice",
    )
    .await;
    assert_eq!((status, out.as_str()), (0, "0:0\n1000:1000\n"), "{out}");
    let copies: Vec<_> = std::fs::read_dir(g.depot.parent().unwrap().join("mapped-layers"))
        .expect("mapped-layers cache")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let m = std::fs::metadata(copies[0].join("bin/busybox")).unwrap();
    assert_eq!(m.uid(), MAXIMUS);
    // The layer itself is untouched.
    assert_eq!(std::fs::metadata(mnt.join("bin/busybox")).unwrap().uid(), 0);
    c.destroy("ramfs-layer").await.expect("destroy");
    assert_no_leaks("ramfs-layer", &g);
}
