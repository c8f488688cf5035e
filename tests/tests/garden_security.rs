//! Escape attempts against default (unprivileged) containers, as root and as a user inside,
//! and from an unprivileged host user against the depot (issue 13). Each attack must fail;
//! the same checks show what privileged containers keep.

use std::os::unix::fs::PermissionsExt;

use e2e::security::{install_probe, probe_binary, status_field, stream_file};
use e2e::{Client, Gardend};
use garden_api::{ContainerSpec, ProcessSpec};

use e2e::rt;

/// `sh -c script` as `user`: (status, stdout + stderr).
async fn sh_as(c: &Client, handle: &str, user: &str, script: &str) -> (i32, String) {
    let spec = ProcessSpec {
        path: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        user: user.into(),
        ..Default::default()
    };
    let out = e2e::run_output(c, handle, &spec, None).await.expect("run");
    (out.status, out.stdout_text() + &out.stderr_text())
}

async fn status_of(c: &Client, handle: &str, user: &str) -> String {
    let (code, out) = sh_as(c, handle, user, "cat /proc/self/status").await;
    assert_eq!(code, 0, "{out}");
    out
}

fn privileged(handle: &str) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        privileged: true,
        ..Default::default()
    }
}

/// Container root makes a setuid-root binary; an unprivileged host user must not be able to
/// run it from the depot, even where the state directory itself is reachable.
#[test]
fn a_setuid_binary_in_a_writable_layer_is_useless_on_the_host() {
    e2e::require_root!();
    let g = Gardend::start();
    // Like /var/lib: the state directory is traversable by everyone.
    std::fs::set_permissions(g.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    rt().block_on(async {
        let c = g.client();
        c.create(&e2e::container_spec("suid")).await.unwrap();
        let probe = std::fs::read(probe_binary()).unwrap();
        stream_file(&c, "suid", "root", "/", "suid-probe", &probe, 0o755).await;
        let (code, out) = sh_as(
            &c,
            "suid",
            "root",
            "chmod 4755 /suid-probe && /suid-probe euid",
        )
        .await;
        assert_eq!((code, out.as_str()), (0, "0\n"));

        let upper = g.depot.join("suid/upper/suid-probe");
        assert!(upper.exists(), "the layer is where the test expects it");
        // The path is looked up by a shell already running as nobody: setpriv itself would
        // still hold root's capabilities while it execs.
        let run = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["sh", "-c", "exec \"$0\" read /etc/shadow"])
            .arg(&upper)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            !run.status.success() && !stdout.contains("root:"),
            "host user nobody ran the container's setuid binary: {stdout}"
        );
        // The depot, the default rootfs and the writable layers always exist; the image
        // stores once used.
        for (dir, always) in [
            (g.depot.clone(), true),
            (g.tmp.path().join("rootfs"), true),
            (g.tmp.path().join("writable"), true),
            (g.tmp.path().join("layers"), false),
            (g.tmp.path().join("images"), false),
        ] {
            match std::fs::metadata(&dir) {
                Ok(m) => assert_eq!(m.permissions().mode() & 0o777, 0o700, "{}", dir.display()),
                Err(e) => assert!(!always, "{}: {e}", dir.display()),
            }
        }
        c.destroy("suid").await.unwrap();
    });
    e2e::assert_no_leaks("suid", &g);
}

const REFUSED: &[&str] = &[
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "unshare_user",
    "init_module",
    "kexec_load",
    "settime",
];

/// The default seccomp profile answers EPERM to keyrings, bpf, perf, module loading, new user
/// namespaces... for root and for users; privileged containers have no filter.
#[test]
fn seccomp_refuses_the_dangerous_calls_with_eperm() {
    e2e::require_root!();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        c.create(&e2e::container_spec("seccomp")).await.unwrap();
        install_probe(&c, "seccomp").await;
        for user in ["root", "alice"] {
            let status = status_of(&c, "seccomp", user).await;
            assert_eq!(status_field(&status, "Seccomp"), "2", "{user}");
            for call in REFUSED {
                let (code, out) = sh_as(&c, "seccomp", user, &format!("probe {call}")).await;
                assert_eq!(
                    (code, out.as_str()),
                    (1, "errno 1\n"),
                    "{call} as {user} must fail with EPERM"
                );
            }
        }
        // Threads (clone3 falls back to clone) and plain forks still work.
        let (code, out) = sh_as(&c, "seccomp", "alice", "(echo sub) | cat; echo $((1+1))").await;
        assert_eq!((code, out.as_str()), (0, "sub\n2\n"));

        c.create(&privileged("seccomp-priv")).await.unwrap();
        let status = status_of(&c, "seccomp-priv", "root").await;
        assert_eq!(status_field(&status, "Seccomp"), "0");
        c.destroy("seccomp").await.unwrap();
        c.destroy("seccomp-priv").await.unwrap();
    });
    e2e::assert_no_leaks("seccomp", &g);
    e2e::assert_no_leaks("seccomp-priv", &g);
}

/// Guardian's capability sets, and garden-init's own after setup.
#[test]
fn capabilities_follow_guardian() {
    e2e::require_root!();
    let g = Gardend::start();
    let host = std::fs::read_to_string("/proc/self/status").unwrap();
    let host_bounding = status_field(&host, "CapBnd");
    rt().block_on(async {
        let c = g.client();
        c.create(&e2e::container_spec("caps")).await.unwrap();
        let root = status_of(&c, "caps", "root").await;
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(status_field(&root, set), "00000000a80425fb", "root {set}");
        }
        assert_eq!(status_field(&root, "NoNewPrivs"), "0");
        let alice = status_of(&c, "caps", "alice").await;
        assert_eq!(status_field(&alice, "CapEff"), "0000000000000000");
        assert_eq!(status_field(&alice, "CapPrm"), "0000000000000000");
        assert_eq!(status_field(&alice, "CapBnd"), "00000000a80425fb");
        assert_eq!(status_field(&alice, "NoNewPrivs"), "1");
        // init keeps only what starting processes needs: no CAP_SYS_ADMIN, no mounts.
        let init = std::fs::read_to_string(format!("/proc/{}/status", g.init_pid("caps"))).unwrap();
        assert_eq!(status_field(&init, "CapEff"), "00000000000001eb");
        assert_eq!(status_field(&init, "CapBnd"), "00000000a80425fb");

        c.create(&privileged("caps-priv")).await.unwrap();
        let root = status_of(&c, "caps-priv", "root").await;
        for set in ["CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(
                status_field(&root, set),
                host_bounding,
                "privileged root {set}"
            );
        }
        let alice = status_of(&c, "caps-priv", "alice").await;
        assert_eq!(status_field(&alice, "CapBnd"), "00000000a82425fb");
        assert_eq!(status_field(&alice, "CapInh"), "00000000a82425fb");
        assert_eq!(status_field(&alice, "CapEff"), "0000000000000000");
        let init =
            std::fs::read_to_string(format!("/proc/{}/status", g.init_pid("caps-priv"))).unwrap();
        assert_eq!(status_field(&init, "CapEff"), "00000000000001eb");
        c.destroy("caps").await.unwrap();
        c.destroy("caps-priv").await.unwrap();
    });
    e2e::assert_no_leaks("caps", &g);
}

/// `major minor` of the block device holding the host's root filesystem.
fn host_root_device() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .unwrap();
    line.split(' ').nth(2).unwrap().replace(':', " ")
}

/// Attacks from inside a default container, as root and as a user: each must fail.
#[test]
fn escapes_from_inside_fail() {
    e2e::require_root!();
    let g = Gardend::start();
    rt().block_on(async {
        let c = g.client();
        let host_file = g.tmp.path().join("host-file");
        std::fs::write(&host_file, "host\n").unwrap();
        let mut spec = e2e::container_spec("escape");
        spec.bind_mounts.push(garden_api::BindMount {
            src_path: host_file.display().to_string(),
            dst_path: "/host-file".into(),
            ..Default::default()
        });
        c.create(&spec).await.unwrap();
        install_probe(&c, "escape").await;
        // A setuid-root binary gives a user nothing (no_new_privs).
        let probe = std::fs::read(probe_binary()).unwrap();
        stream_file(&c, "escape", "root", "/", "suid-probe", &probe, 0o755).await;
        let (code, out) = sh_as(&c, "escape", "root", "chmod 4755 /suid-probe").await;
        assert_eq!(code, 0, "{out}");
        let (code, out) = sh_as(&c, "escape", "alice", "/suid-probe euid").await;
        assert_eq!((code, out.as_str()), (0, "1000\n"));
        let disk = host_root_device();
        let attacks: [&str; 20] = [
            "mount -t tmpfs none /mnt",
            "mount -t proc proc /mnt",
            "mount -t cgroup -o memory none /mnt",
            "mount --bind /etc /mnt",
            "mount -o remount,rw /proc/sys",
            "echo 1 > /proc/sys/kernel/panic",
            "echo h > /proc/sysrq-trigger",
            "hostname evil",
            &format!("mknod /disk b {disk} && head -c 512 /disk > /tmp/d && test -s /tmp/d"),
            "mknod /mem c 1 1 && head -c 16 /mem > /tmp/m && test -s /tmp/m",
            "head -c 1 /dev/mem",
            "head -c 1 /dev/kmsg",
            "cat /proc/1/root/etc/passwd",
            "ls /proc/1/cwd/",
            "probe ptrace_init",
            "probe keyctl",
            "probe bpf",
            "probe unshare_user",
            "chown 1000 /host-file",
            "echo evil > /host-file",
        ];
        for user in ["root", "alice"] {
            for attack in attacks {
                let (code, out) = sh_as(&c, "escape", user, attack).await;
                assert_ne!(code, 0, "{attack} as {user} succeeded: {out}");
            }
        }
        assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host\n");
        c.destroy("escape").await.unwrap();
    });
    e2e::assert_no_leaks("escape", &g);
}
