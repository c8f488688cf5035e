//! StreamIn / StreamOut against a real gardend: round trips (users, relative destinations,
//! trailing-slash naming) and hostile archives that must be refused without writing anything
//! outside the destination, in the container or on the host.

use std::io::Read;
use std::time::Duration;

use e2e::{leaks_after, run_output, sh, Gardend};
use garden_api::{ContainerSpec, GardenError};
use garden_client::{Client, ClientError};
use tokio::io::AsyncReadExt;

/// One hand-made ustar member: any name, type, link target and data, with a valid checksum
/// (the `tar` crate refuses to build the hostile names on purpose).
fn member(name: &str, kind: u8, link: &str, data: &[u8], mode: u32) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{:0width$o}\0", v, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], data.len() as u64);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if kind == b'3' {
        octal(&mut h[329..337], 1);
        octal(&mut h[337..345], 3);
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn archive(members: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = members.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

async fn stream_in(
    c: &Client,
    h: &str,
    user: &str,
    dest: &str,
    tar: Vec<u8>,
) -> Result<(), ClientError> {
    c.stream_in(h, user, dest, std::io::Cursor::new(tar)).await
}

async fn stream_out(c: &Client, h: &str, user: &str, src: &str) -> Vec<u8> {
    let mut r = c.stream_out(h, user, src).await.expect("stream_out");
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).await.expect("read tar");
    buf
}

/// (name, uid, gid, content) of every member.
fn members_of(tar_bytes: &[u8]) -> Vec<(String, u64, u64, Vec<u8>)> {
    let mut a = tar::Archive::new(tar_bytes);
    let mut out = Vec::new();
    for e in a.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let uid = e.header().uid().expect("uid");
        let gid = e.header().gid().expect("gid");
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        out.push((name, uid, gid, data));
    }
    out
}

fn sample_tar() -> Vec<u8> {
    archive(&[
        member("d/", b'5', "", b"", 0o755),
        member("d/a.txt", b'0', "", b"alpha\n", 0o644),
        member("d/sub/", b'5', "", b"", 0o700),
        member("d/sub/b.txt", b'0', "", b"beta\n", 0o600),
    ])
}

async fn sh_out(c: &Client, h: &str, script: &str) -> String {
    let out = run_output(c, h, &sh(script), None).await.expect("run");
    out.stdout_text()
}

async fn destroy_clean(c: &Client, h: &str, g: &Gardend) {
    c.destroy(h).await.expect("destroy");
    let left = leaks_after(h, g, Duration::from_secs(5));
    assert!(left.is_empty(), "{h} leaked: {left:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_as_user_relative_to_home() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = c
        .create(&ContainerSpec {
            handle: "e2e-files".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    stream_in(&c, &h, "alice", "rel/place", sample_tar())
        .await
        .expect("stream in");
    let listing = sh_out(
        &c,
        &h,
        "cd /home/alice/rel/place && find . | sort && stat -c '%n %u:%g' /home/alice/rel /home/alice/rel/place d d/a.txt d/sub d/sub/b.txt",
    )
    .await;
    assert_eq!(
        listing,
        ".\n./d\n./d/a.txt\n./d/sub\n./d/sub/b.txt\n\
         /home/alice/rel 1000:1000\n/home/alice/rel/place 1000:1000\n\
         d 1000:1000\nd/a.txt 1000:1000\nd/sub 1000:1000\nd/sub/b.txt 1000:1000\n"
    );

    // Trailing slash: the directory's contents named ./...
    let out = members_of(&stream_out(&c, &h, "alice", "rel/place/d/").await);
    let names: Vec<&str> = out.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(names, ["./", "./a.txt", "./sub/", "./sub/b.txt"], "{out:?}");
    // Without: the directory itself.
    let out = members_of(&stream_out(&c, &h, "alice", "rel/place/d").await);
    let names: Vec<&str> = out.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(names, ["d/", "d/a.txt", "d/sub/", "d/sub/b.txt"], "{out:?}");
    for (name, uid, gid, data) in &out {
        assert_eq!((*uid, *gid), (1000, 1000), "{name}");
        match name.as_str() {
            "d/a.txt" => assert_eq!(data, b"alpha\n"),
            "d/sub/b.txt" => assert_eq!(data, b"beta\n"),
            _ => {}
        }
    }
    // Absolute source as root, and a single file.
    let out = members_of(&stream_out(&c, &h, "", "/home/alice/rel/place/d/a.txt").await);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].0.as_str(), out[0].3.as_slice()),
        ("a.txt", &b"alpha\n"[..])
    );

    // Streaming back in what came out recreates it elsewhere, as root.
    let tar_bytes = stream_out(&c, &h, "", "/home/alice/rel/place/d").await;
    stream_in(&c, &h, "", "/copy", tar_bytes)
        .await
        .expect("stream in copy");
    assert_eq!(
        sh_out(
            &c,
            &h,
            "cat /copy/d/a.txt /copy/d/sub/b.txt; stat -c %u /copy/d/a.txt"
        )
        .await,
        "alpha\nbeta\n0\n"
    );

    // A missing source is an error.
    let err = c.stream_out(&h, "", "/does/not/exist").await.map(drop);
    assert!(err.is_err(), "{err:?}");
    // An unknown user is an error mentioning streaming in.
    let err = stream_in(&c, &h, "bob", "/x", sample_tar())
        .await
        .expect_err("unknown user");
    assert!(err.to_string().contains("error streaming in"), "{err}");

    destroy_clean(&c, &h, &g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_refused() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = c
        .create(&ContainerSpec {
            handle: "e2e-hostile".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let uniq = format!("e2e-{}-{}", std::process::id(), g.port);
    let host_dir = tempfile::tempdir().expect("host dir");
    let host = host_dir.path().display().to_string();
    let deep = "../".repeat(12);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            archive(&[member(&format!("../evil-{uniq}"), b'0', "", b"x", 0o644)]),
        ),
        (
            "deep dotdot",
            archive(&[member(
                &format!("{deep}{host}/deep-{uniq}"),
                b'0',
                "",
                b"x",
                0o644,
            )]),
        ),
        (
            "absolute",
            archive(&[member(&format!("{host}/abs-{uniq}"), b'0', "", b"x", 0o644)]),
        ),
        (
            "symlink escape",
            archive(&[
                member("esc", b'2', &format!("{deep}{host}"), b"", 0o777),
                member(&format!("esc/through-{uniq}"), b'0', "", b"x", 0o644),
            ]),
        ),
        (
            "hardlink outside",
            archive(&[member("hl", b'1', &format!("{deep}etc/passwd"), b"", 0o644)]),
        ),
        (
            "hardlink absolute",
            archive(&[member("hl", b'1', "/etc/passwd", b"", 0o644)]),
        ),
        (
            "char device",
            archive(&[member("null2", b'3', "", b"", 0o666)]),
        ),
    ];
    for (i, (what, tar_bytes)) in cases.into_iter().enumerate() {
        let dest = format!("/dest{i}/inner");
        let r = stream_in(&c, &h, "", &dest, tar_bytes).await;
        let err = r.expect_err(what);
        assert!(
            matches!(err.garden(), Some(GardenError::Generic { .. })),
            "{what}: {err:?}"
        );
        assert!(
            err.to_string().contains("refusing tar entry"),
            "{what}: {err}"
        );
    }
    // Nothing was written on the host...
    let host_left: Vec<_> = std::fs::read_dir(host_dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(host_left.is_empty(), "written on the host: {host_left:?}");
    for p in [
        format!("/evil-{uniq}"),
        format!("/deep-{uniq}"),
        format!("/tmp/evil-{uniq}"),
    ] {
        assert!(!std::path::Path::new(&p).exists(), "{p} exists on the host");
    }
    // ...nor in the container outside the destinations, and /etc/passwd is untouched.
    let found = sh_out(&c, &h, &format!("find / -xdev -name '*{uniq}*' 2>/dev/null; find /dest* ! -type d 2>/dev/null; stat -c %h /etc/passwd")).await;
    let found: Vec<&str> = found.lines().filter(|l| !l.is_empty()).collect();
    // Only the passwd link count (1) may appear; a symlink left in the destination is harmless
    // only if it was never followed, so none is tolerated.
    assert_eq!(found, ["1"], "left behind: {found:?}");

    destroy_clean(&c, &h, &g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_archive_is_an_error() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = c
        .create(&ContainerSpec {
            handle: "e2e-trunc".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut tar_bytes = member("big.bin", b'0', "", &vec![7u8; 100_000], 0o644);
    tar_bytes.truncate(512 + 1000);
    let err = stream_in(&c, &h, "", "/trunc", tar_bytes)
        .await
        .expect_err("truncated tar");
    assert!(err.garden().is_some(), "{err:?}");
    // Garbage that is not a tar at all.
    let err = stream_in(
        &c,
        &h,
        "",
        "/trunc2",
        b"this is not a tar archive".repeat(40),
    )
    .await;
    assert!(err.is_err(), "{err:?}");
    // The server is fine afterwards and a good archive still works.
    stream_in(&c, &h, "", "/ok", sample_tar())
        .await
        .expect("good tar");
    assert_eq!(sh_out(&c, &h, "cat /ok/d/a.txt").await, "alpha\n");
    destroy_clean(&c, &h, &g).await;
}

#[test]
fn member_builder_makes_valid_tars() {
    // Guards the hand-made headers: the tar crate reads them back.
    let out = members_of(&sample_tar());
    assert_eq!(out.len(), 4);
    assert_eq!(out[1].0, "d/a.txt");
    assert_eq!(out[1].3, b"alpha\n");
    let dev = archive(&[member("x", b'3', "", b"", 0o666)]);
    let mut a = tar::Archive::new(&dev[..]);
    let e = a.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(e.header().entry_type(), tar::EntryType::Char);
    assert_eq!(sample_tar().len() % 512, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_in_the_container_never_lead_to_the_host() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = c
        .create(&ContainerSpec {
            handle: "e2e-symlinks".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let host_dir = tempfile::tempdir().expect("host dir");
    let host = host_dir.path().display().to_string();
    std::fs::write(host_dir.path().join("secret"), "host secret\n").expect("write");
    // Links made inside the container that name host paths (absolute and climbing).
    let setup = format!(
        "mkdir -p {host} && echo container-file > {host}/secret && \
         ln -s {host} /abs-link && ln -s ../../../../../../../..{host} /home/alice/up-link && \
         chown -h alice:alice /home/alice/up-link && chown alice:alice {host} && echo ok"
    );
    assert_eq!(sh_out(&c, &h, &setup).await, "ok\n");

    // StreamIn through the links lands inside the container.
    stream_in(&c, &h, "", "/abs-link/in1", sample_tar())
        .await
        .expect("stream in via abs link");
    stream_in(&c, &h, "alice", "up-link/in2", sample_tar())
        .await
        .expect("stream in via up link");
    // A working dir through the links is created inside the container.
    let spec = garden_api::ProcessSpec {
        dir: "/abs-link/wd".into(),
        ..sh("pwd")
    };
    run_output(&c, &h, &spec, None)
        .await
        .expect("run with dir through link");
    let spec = garden_api::ProcessSpec {
        dir: "/home/alice/up-link/wd2".into(),
        user: "alice".into(),
        ..sh("pwd")
    };
    run_output(&c, &h, &spec, None)
        .await
        .expect("run as alice with dir through link");
    let host_left: Vec<_> = std::fs::read_dir(host_dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        host_left,
        ["secret"],
        "written on the host through a container symlink"
    );
    let listing = sh_out(&c, &h, &format!("ls {host}")).await;
    assert_eq!(listing, "in1\nin2\nsecret\nwd\nwd2\n");

    // StreamOut through the links reads the container's file, never the host's.
    for src in ["/abs-link/secret", "/home/alice/up-link/secret"] {
        let out = members_of(&stream_out(&c, &h, "", src).await);
        assert_eq!(out.len(), 1, "{src}: {out:?}");
        assert_eq!(out[0].3, b"container-file\n", "{src} read the host's file");
    }
    destroy_clean(&c, &h, &g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_out_reads_as_the_given_user() {
    e2e::require_root!();
    // Guardian runs tar as the user: files the user cannot read must not come out.
    let g = Gardend::start();
    let c = g.client();
    let h = c
        .create(&ContainerSpec {
            handle: "e2e-out-user".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let setup = "echo top-secret-e2e > /root/secret && chmod 600 /root/secret && \
                 echo top-secret-e2e > /private && chmod 600 /private && \
                 echo public-e2e > /home/alice/mine && chown alice /home/alice/mine && echo ok";
    assert_eq!(sh_out(&c, &h, setup).await, "ok\n");
    // Allowed: alice's own file, and root reading anything.
    let out = members_of(&stream_out(&c, &h, "alice", "mine").await);
    assert_eq!(out[0].3, b"public-e2e\n");
    let out = members_of(&stream_out(&c, &h, "", "/private").await);
    assert_eq!(out[0].3, b"top-secret-e2e\n");
    // Refused for alice: a 0600 root file, and a file inside the 0700 /root.
    for src in ["/private", "/root/", "/root/secret"] {
        let leaked = match c.stream_out(&h, "alice", src).await {
            Err(_) => false,
            Ok(mut r) => {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf).await;
                buf.windows(14).any(|w| w == b"top-secret-e2e")
            }
        };
        assert!(!leaked, "alice read root's {src} through StreamOut");
    }
    destroy_clean(&c, &h, &g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_symlinks_are_not_followed_by_later_entries() {
    e2e::require_root!();
    // GNU tar (what Guardian runs) creates symlinks from the archive as placeholders until
    // the end, so `link -> /etc` followed by `link/x` fails ("Cannot open: Not a directory")
    // instead of writing outside the destination.
    let g = Gardend::start();
    let c = g.client();
    let h = c
        .create(&ContainerSpec {
            handle: "e2e-through".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let cases = [
        ("absolute", "/etc", "e2e-through-abs"),
        ("relative", "../../etc", "e2e-through-rel"),
    ];
    for (what, target, name) in cases {
        let tar_bytes = archive(&[
            member("link", b'2', target, b"", 0o777),
            member(&format!("link/{name}"), b'0', "", b"pwned\n", 0o644),
        ]);
        let r = stream_in(&c, &h, "", "/dest/d", tar_bytes).await;
        let exists = sh_out(&c, &h, &format!("[ -e /etc/{name} ] && echo written")).await;
        assert_eq!(
            exists, "",
            "{what}: /etc/{name} written through an archive symlink ({r:?})"
        );
        assert!(
            r.is_err(),
            "{what}: writing through an archive symlink must fail"
        );
    }
    destroy_clean(&c, &h, &g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_out_of_a_deep_tree_leaves_gardend_alive() {
    e2e::require_root!();
    // issue 17: an unprivileged user's ~1,500 nested directories overflowed gardend's stack.
    let g = Gardend::start();
    let c = g.client();
    let h = c
        .create(&ContainerSpec {
            handle: "e2e-deep-tree".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let levels = 3000;
    let script = format!(
        // Built from the bottom up: `cd` fails once the path passes PATH_MAX.
        "mkdir /tmp/deep && cd /tmp/deep && mkdir d && echo bottom > d/f && i=1; \
         while [ $i -lt {levels} ]; do mkdir n && mv d n/ && mv n d || exit 1; i=$((i+1)); done; \
         echo ok"
    );
    let spec = garden_api::ProcessSpec {
        user: "alice".into(),
        ..sh(&script)
    };
    let out = run_output(&c, &h, &spec, None).await.expect("run");
    assert_eq!(out.stdout_text(), "ok\n", "{}", out.stderr_text());

    for (user, src) in [("", "/tmp/deep"), ("alice", "/tmp/deep/"), ("", "/tmp")] {
        match c.stream_out(&h, user, src).await {
            // Either the whole tree or a clean error; never a dead server.
            Err(e) => eprintln!("stream out {src} as {user:?}: {e}"),
            Ok(mut r) => {
                let mut buf = Vec::new();
                match r.read_to_end(&mut buf).await {
                    Ok(_) => {
                        let dirs = members_of(&buf)
                            .iter()
                            .filter(|m| m.0.ends_with("/d") || m.0.ends_with("/d/"))
                            .count();
                        assert_eq!(dirs, levels, "stream out {src} as {user:?}");
                    }
                    Err(e) => eprintln!("stream out {src} as {user:?} cut short: {e}"),
                }
            }
        }
        tokio::time::timeout(Duration::from_secs(10), c.ping())
            .await
            .expect("ping answered in time")
            .expect("gardend still answers ping after stream out of a deep tree");
    }
    destroy_clean(&c, &h, &g).await;
}
