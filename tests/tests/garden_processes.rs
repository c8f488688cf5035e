//! Processes through the Rust client against a real gardend: output and exit codes, stdin,
//! environment, users, working dirs, rlimits, signals, attach, completeness of output, typed
//! errors, and what a container looks like from inside (hostname, pid 1, /dev, /proc, /sys).

use std::time::Duration;

use e2e::{garden_err, leaks_after, run_output, sh, Capture, Gardend};
use garden_api::{
    ContainerSpec, GardenError, ProcessSpec, ResourceLimits, Signal, TtySpec, WindowSize,
};
use garden_client::{Client, ClientError, ProcessIo};

/// A gardend with one container `handle`; destroyed (and leak-checked) by `finish`.
struct Fixture {
    g: Gardend,
    c: Client,
    handle: String,
}

impl Fixture {
    async fn new(handle: &str) -> Fixture {
        Fixture::with_spec(ContainerSpec {
            handle: handle.into(),
            ..Default::default()
        })
        .await
    }

    async fn with_spec(spec: ContainerSpec) -> Fixture {
        let g = Gardend::start();
        let c = g.client();
        let handle = c.create(&spec).await.expect("create");
        Fixture { g, c, handle }
    }

    async fn sh(&self, script: &str) -> e2e::Output {
        run_output(&self.c, &self.handle, &sh(script), None)
            .await
            .expect("run")
    }

    async fn run(&self, spec: &ProcessSpec) -> Result<e2e::Output, ClientError> {
        run_output(&self.c, &self.handle, spec, None).await
    }

    async fn finish(self) {
        self.c.destroy(&self.handle).await.expect("destroy");
        let left = leaks_after(&self.handle, &self.g, Duration::from_secs(5));
        assert!(left.is_empty(), "{} leaked: {left:#?}", self.handle);
    }
}

fn spec_as(user: &str, script: &str) -> ProcessSpec {
    ProcessSpec {
        user: user.into(),
        ..sh(script)
    }
}

async fn wait(p: &mut garden_client::Process) -> i32 {
    tokio::time::timeout(Duration::from_secs(20), p.wait())
        .await
        .expect("process did not finish within 20s")
        .expect("exit status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_stderr_and_exit_codes() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-out").await;
    let out = f.sh("echo to-out; echo to-err >&2; exit 42").await;
    assert_eq!(out.status, 42);
    assert_eq!(out.stdout_text(), "to-out\n");
    assert_eq!(out.stderr_text(), "to-err\n");
    assert_eq!(f.sh("true").await.status, 0);
    assert_eq!(f.sh("exit 255").await.status, 255);
    // Binary output passes through unchanged.
    let out = f.sh("printf '\\000\\377\\001'").await;
    assert_eq!(out.stdout, [0u8, 0xff, 1]);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_until_eof() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-stdin").await;
    let input: Vec<u8> = (0..5000)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let spec = ProcessSpec {
        path: "cat".into(),
        ..Default::default()
    };
    let out = run_output(&f.c, &f.handle, &spec, Some(input.clone()))
        .await
        .expect("cat");
    assert_eq!(out.status, 0);
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "cat echoed different bytes");
    // Megabytes of stdin arrive complete (many 32 KiB messages).
    let big: Vec<u8> = b"0123456789abcdef".repeat(6 * 65536);
    let out = run_output(&f.c, &f.handle, &sh("md5sum"), Some(big.clone()))
        .await
        .expect("md5sum");
    let host_md5 = {
        let mut child = std::process::Command::new("md5sum")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("host md5sum");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), &big).unwrap();
        drop(child.stdin.take());
        String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
    };
    assert_eq!(out.stdout_text(), host_md5, "{out:?}");
    let out = run_output(&f.c, &f.handle, &sh("wc -c"), Some(Vec::new()))
        .await
        .expect("wc");
    assert_eq!((out.status, out.stdout_text().trim()), (0, "0"));
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_merge_and_defaults() {
    e2e::require_root!();
    let f = Fixture::with_spec(ContainerSpec {
        handle: "e2e-p-env".into(),
        env: vec!["CONTAINER_ENV=1".into(), "TEST=hi".into()],
        ..Default::default()
    })
    .await;
    let spec = ProcessSpec {
        path: "env".into(),
        env: vec!["TEST=hello".into(), "FRUIT=banana".into()],
        ..Default::default()
    };
    let out = f.run(&spec).await.expect("env");
    let lines: Vec<&str> = out
        .stdout
        .split(|&b| b == b'\n')
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect();
    let pos = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
    assert!(lines.contains(&"CONTAINER_ENV=1"), "{lines:?}");
    assert!(
        lines.contains(&"TEST=hello"),
        "process env overrides container env: {lines:?}"
    );
    assert!(!lines.contains(&"TEST=hi"), "{lines:?}");
    assert!(lines.contains(&"FRUIT=banana"), "{lines:?}");
    assert!(
        pos("CONTAINER_ENV=").unwrap() < pos("TEST=").unwrap(),
        "{lines:?}"
    );
    assert!(pos("TEST=").unwrap() < pos("FRUIT=").unwrap(), "{lines:?}");
    assert!(
        lines.contains(&"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "{lines:?}"
    );
    assert!(lines.contains(&"USER=root"), "{lines:?}");
    assert!(lines.contains(&"HOME=/root"), "{lines:?}");

    let out = f.run(&spec_as("alice", "env")).await.expect("env as alice");
    let text = out.stdout_text();
    assert!(
        text.lines()
            .any(|l| l == "PATH=/usr/local/bin:/usr/bin:/bin"),
        "{text}"
    );
    assert!(text.lines().any(|l| l == "USER=alice"), "{text}");
    assert!(text.lines().any(|l| l == "HOME=/home/alice"), "{text}");

    // Given PATH/HOME win over the defaults.
    let spec = ProcessSpec {
        env: vec!["PATH=/bin".into(), "HOME=/x".into()],
        ..sh("echo $PATH $HOME")
    };
    assert_eq!(f.run(&spec).await.expect("run").stdout_text(), "/bin /x\n");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_working_dirs() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-users").await;
    let out = f
        .run(&spec_as("alice", "id -u; id -g; pwd; echo $HOME"))
        .await
        .expect("alice");
    assert_eq!(
        out.stdout_text(),
        "1000\n1000\n/home/alice\n/home/alice\n",
        "{out:?}"
    );
    // Supplementary groups come from /etc/group.
    let out = f.run(&spec_as("alice", "id -G")).await.expect("groups");
    assert!(
        out.stdout_text().split_whitespace().any(|g| g == "10"),
        "{out:?}"
    );

    let out = f
        .run(&spec_as("1000000000:1000000000", "id -u; id -g"))
        .await
        .expect("uid:gid");
    assert_eq!(
        (out.status, out.stdout_text()),
        (0, "1000000000\n1000000000\n".into()),
        "{out:?}"
    );

    let out = f.run(&spec_as("", "id -u")).await.expect("root");
    assert_eq!(out.stdout_text(), "0\n");

    let err = garden_err(f.run(&spec_as("bob", "true")).await);
    assert!(
        err.to_string()
            .contains("unable to find user bob: no matching entries in passwd file"),
        "{err:?}"
    );

    // A missing working dir is created, owned by the user, even under a root-owned parent.
    let spec = ProcessSpec {
        dir: "/opt/made/for/alice".into(),
        ..spec_as("alice", "pwd; touch ok")
    };
    let out = f.run(&spec).await.expect("dir");
    assert_eq!(
        (out.status, out.stdout_text()),
        (0, "/opt/made/for/alice\n".into()),
        "{out:?}"
    );
    let out = f
        .sh("stat -c '%u:%g %a' /opt/made/for/alice /opt/made/for/alice/ok")
        .await;
    assert_eq!(
        out.stdout_text(),
        "1000:1000 755\n1000:1000 644\n",
        "{out:?}"
    );
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rlimits_apply() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-rlim").await;
    let spec = ProcessSpec {
        rlimits: ResourceLimits {
            nofile: Some(123),
            nproc: Some(456),
            ..Default::default()
        },
        ..sh("ulimit -n; ulimit -Hn; ulimit -u")
    };
    let out = f.run(&spec).await.expect("ulimit");
    assert_eq!(out.stdout_text(), "123\n123\n456\n", "{out:?}");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_and_exit_statuses() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-sig").await;
    let started = |ready: &Capture| ready.text().contains("ready");

    // TERM to a shell that traps it: the trap's exit code.
    let out = Capture::default();
    let io = ProcessIo {
        stdout: Some(Box::new(out.clone())),
        ..Default::default()
    };
    let mut p =
        f.c.run(
            &f.handle,
            &sh("trap 'exit 7' TERM; echo ready; while true; do sleep 0.05; done"),
            io,
        )
        .await
        .expect("run trap");
    assert!(e2e::eventually(Duration::from_secs(10), || async { started(&out) }).await);
    p.control().signal(Signal::Terminate).await.expect("signal");
    assert_eq!(wait(&mut p).await, 7);

    // KILL -> 137, even if TERM is ignored.
    let mut p =
        f.c.run(
            &f.handle,
            &sh("trap '' TERM; sleep 100"),
            ProcessIo::default(),
        )
        .await
        .expect("run");
    p.control().signal(Signal::Kill).await.expect("signal");
    assert_eq!(wait(&mut p).await, 137);

    // TERM without a trap -> 143. Sent right after Run returns.
    let spec = ProcessSpec {
        path: "sleep".into(),
        args: vec!["100".into()],
        ..Default::default()
    };
    let mut p =
        f.c.run(&f.handle, &spec, ProcessIo::default())
            .await
            .expect("run");
    p.control().signal(Signal::Terminate).await.expect("signal");
    assert_eq!(wait(&mut p).await, 143);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_size_resize_and_line_endings() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-tty").await;
    let tty = Some(TtySpec {
        window_size: Some(WindowSize {
            columns: 123,
            rows: 45,
        }),
    });
    let spec = ProcessSpec {
        tty,
        ..sh("stty size; echo a; echo b >&2")
    };
    let out = f.run(&spec).await.expect("tty");
    assert_eq!(out.status, 0);
    assert_eq!(out.stdout_text(), "45 123\r\na\r\nb\r\n", "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "a tty merges stderr into stdout: {out:?}"
    );

    // Default size 80x24.
    let spec = ProcessSpec {
        tty: Some(TtySpec::default()),
        ..sh("stty size")
    };
    assert_eq!(f.run(&spec).await.expect("tty").stdout_text(), "24 80\r\n");

    // Resize: the process sees SIGWINCH and the new size.
    let out = Capture::default();
    let io = ProcessIo {
        stdout: Some(Box::new(out.clone())),
        ..Default::default()
    };
    let script = "trap 'stty size; exit 0' WINCH; echo ready; while true; do sleep 0.05; done";
    let spec = ProcessSpec {
        tty: Some(TtySpec::default()),
        ..sh(script)
    };
    let mut p = f.c.run(&f.handle, &spec, io).await.expect("run");
    assert!(
        e2e::eventually(Duration::from_secs(10), || async {
            out.text().contains("ready")
        })
        .await
    );
    p.control()
        .set_tty(WindowSize {
            columns: 100,
            rows: 50,
        })
        .await
        .expect("set_tty");
    assert_eq!(wait(&mut p).await, 0);
    assert_eq!(out.text(), "ready\r\n50 100\r\n");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_stdin_reaches_the_process() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-ttyin").await;
    let spec = ProcessSpec {
        tty: Some(TtySpec::default()),
        ..sh("read line; echo got:$line")
    };
    let out = run_output(&f.c, &f.handle, &spec, Some(b"hello\n".to_vec()))
        .await
        .expect("run");
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout_text().ends_with("got:hello\r\n"), "{out:?}");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_after_exit_and_concurrent_attaches() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-att").await;
    let spec = ProcessSpec {
        id: "quick".into(),
        ..sh("exit 5")
    };
    let mut p =
        f.c.run(&f.handle, &spec, ProcessIo::default())
            .await
            .expect("run");
    assert_eq!(p.id(), "quick");
    assert_eq!(wait(&mut p).await, 5);
    let mut again =
        f.c.attach(&f.handle, "quick", ProcessIo::default())
            .await
            .expect("attach");
    assert_eq!(wait(&mut again).await, 5);

    // Two attaches to a running process both see its later output and its exit code.
    let spec = ProcessSpec {
        id: "slow".into(),
        ..sh("echo before; read go; i=0; while [ $i -lt 3 ]; do echo tick$i; i=$((i+1)); done; exit 9")
    };
    let (stdin_rd, mut stdin_wr) = tokio::io::duplex(64);
    let first = Capture::default();
    let io = ProcessIo {
        stdin: Some(Box::new(stdin_rd)),
        stdout: Some(Box::new(first.clone())),
        ..Default::default()
    };
    let mut runner = f.c.run(&f.handle, &spec, io).await.expect("run slow");
    // Output from before an Attach is not replayed to it.
    assert!(
        e2e::eventually(Duration::from_secs(10), || async {
            first.text() == "before\n"
        })
        .await
    );
    let a = Capture::default();
    let b = Capture::default();
    let mut pa =
        f.c.attach(
            &f.handle,
            "slow",
            ProcessIo {
                stdout: Some(Box::new(a.clone())),
                ..Default::default()
            },
        )
        .await
        .expect("attach a");
    let mut pb =
        f.c.attach(
            &f.handle,
            "slow",
            ProcessIo {
                stdout: Some(Box::new(b.clone())),
                ..Default::default()
            },
        )
        .await
        .expect("attach b");
    use tokio::io::AsyncWriteExt;
    stdin_wr.write_all(b"go\n").await.expect("stdin");
    drop(stdin_wr);
    assert_eq!(wait(&mut pa).await, 9);
    assert_eq!(wait(&mut pb).await, 9);
    assert_eq!(wait(&mut runner).await, 9);
    assert_eq!(a.text(), "tick0\ntick1\ntick2\n");
    assert_eq!(b.text(), "tick0\ntick1\ntick2\n");
    assert_eq!(first.text(), "before\ntick0\ntick1\ntick2\n");

    // A generated process id reaches the client and can be attached to.
    let mut p =
        f.c.run(&f.handle, &sh("exit 3"), ProcessIo::default())
            .await
            .expect("run");
    assert!(!p.id().is_empty());
    let id = p.id().to_string();
    assert_eq!(wait(&mut p).await, 3);
    assert_eq!(
        wait(
            &mut f
                .c
                .attach(&f.handle, &id, ProcessIo::default())
                .await
                .unwrap()
        )
        .await,
        3
    );
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_complete_when_exiting_right_after_writing() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-seq").await;
    let spec = ProcessSpec {
        path: "seq".into(),
        args: vec!["1".into(), "10000".into()],
        ..Default::default()
    };
    let want: String = (1..=10000).map(|i| format!("{i}\n")).collect();
    for i in 0..20 {
        let out = f.run(&spec).await.expect("seq");
        assert_eq!(out.status, 0);
        assert!(
            out.stdout_text() == want,
            "run {i}: got {} bytes of output, want {}",
            out.stdout.len(),
            want.len()
        );
    }
    // The same under a tty.
    let spec = ProcessSpec {
        tty: Some(TtySpec::default()),
        ..spec
    };
    let want = want.replace('\n', "\r\n");
    for i in 0..5 {
        let out = f.run(&spec).await.expect("seq tty");
        assert!(
            out.stdout_text() == want,
            "tty run {i}: got {} bytes, want {}",
            out.stdout.len(),
            want.len()
        );
    }
    f.finish().await;
}

/// A background child that keeps the tty open must not hold back the exit of the process
/// that started it, nor swallow what that process wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_exit_is_not_held_by_a_background_child() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-ttybg").await;
    let spec = ProcessSpec {
        tty: Some(TtySpec::default()),
        ..sh("sleep 60 & echo started; exit 4")
    };
    let out = tokio::time::timeout(Duration::from_secs(20), f.run(&spec))
        .await
        .expect("the exit is published while the child still holds the tty")
        .expect("run");
    assert_eq!(out.status, 4);
    assert_eq!(out.stdout_text(), "started\r\n");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_errors_are_typed() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-errs").await;
    let spec = ProcessSpec {
        path: "/no/such/binary".into(),
        ..Default::default()
    };
    let err = garden_err(f.run(&spec).await);
    assert!(
        matches!(err, GardenError::ExecutableNotFound { .. }),
        "{err:?}"
    );
    let spec = ProcessSpec {
        path: "no-such-command-on-path".into(),
        ..Default::default()
    };
    let err = garden_err(f.run(&spec).await);
    assert!(
        matches!(err, GardenError::ExecutableNotFound { .. }),
        "{err:?}"
    );

    let spec = ProcessSpec {
        id: "dup".into(),
        ..sh("sleep 30")
    };
    let mut first =
        f.c.run(&f.handle, &spec, ProcessIo::default())
            .await
            .expect("first");
    let err = garden_err(
        f.c.run(&f.handle, &spec, ProcessIo::default())
            .await
            .map(drop),
    );
    assert!(err.to_string().contains("already in use"), "{err:?}");
    first.control().signal(Signal::Kill).await.expect("kill");
    assert_eq!(wait(&mut first).await, 137);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_inside_view() {
    e2e::require_root!();
    let long: String = format!("long-{}", "x".repeat(60));
    let f = Fixture::new(&long).await;
    let out = f.sh("hostname").await;
    assert_eq!(out.stdout_text().trim_end(), &long[long.len() - 49..]);

    let out = f.sh("cat /proc/1/comm").await;
    assert_eq!(out.stdout_text(), "garden-init\n");

    let out = f
        .sh("for d in null zero tty ptmx; do [ -c /dev/$d ] || echo missing $d; done; \
             [ -d /dev/pts ] || echo missing pts; echo x > /dev/null && head -c 4 /dev/zero | wc -c")
        .await;
    assert_eq!(out.stdout_text(), "4\n", "{out:?}");
    let mounts = f.sh("cat /proc/mounts").await.stdout_text();
    let has = |fs: &str, dir: &str| {
        mounts.lines().any(|l| {
            let mut w = l.split_whitespace();
            let (_, d, t) = (w.next(), w.next(), w.next());
            d == Some(dir) && t == Some(fs)
        })
    };
    assert!(has("tmpfs", "/dev/shm"), "{mounts}");
    assert!(has("devpts", "/dev/pts"), "{mounts}");
    assert!(has("proc", "/proc"), "{mounts}");
    // /tmp is part of the writable layer (so disk limits cover it), world-writable and sticky.
    assert!(
        !mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/tmp")),
        "{mounts}"
    );
    let out = f.sh("stat -c %a /tmp").await;
    assert_eq!(out.stdout_text(), "1777\n", "{out:?}");
    let sys = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/sys"))
        .expect("/sys mounted");
    assert!(
        sys.split_whitespace()
            .nth(3)
            .unwrap_or("")
            .split(',')
            .any(|o| o == "ro"),
        "{sys}"
    );
    let out = f.sh("touch /sys/x").await;
    assert_ne!(out.status, 0);

    // The writable root is an overlay: writes do not reach the image.
    let out = f
        .sh("echo hi > /etc/e2e-marker && cat /etc/e2e-marker")
        .await;
    assert_eq!(out.stdout_text(), "hi\n");
    // Orphans are reaped by init: no zombies remain after a double fork.
    let out = f
        .sh("(sh -c 'exit 0' &); i=0; while [ $i -lt 200 ]; do \
             n=$(grep -l 'State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l); \
             [ $n -eq 0 ] && break; sleep 0.05; i=$((i+1)); done; echo $n")
        .await;
    assert_eq!(out.stdout_text().trim(), "0", "{out:?}");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_host_file_descriptors_inside() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-fds").await;
    // A process gets exactly stdin, stdout and stderr (ls's own directory fd is 3).
    let spec = ProcessSpec {
        path: "ls".into(),
        args: vec!["/proc/self/fd".into()],
        ..Default::default()
    };
    let out = f.run(&spec).await.expect("ls");
    assert_eq!(
        out.stdout_text(),
        "0\n1\n2\n3\n",
        "fds leaked into a container process: {out:?}"
    );
    // pid 1 holds nothing that leads back to the host: no host directory (a way out through
    // /proc/1/fd/N/..), no gardend log file.
    let depot = f.g.depot.display().to_string();
    let out = f
        .sh(
            "for fd in /proc/1/fd/*; do l=$(readlink $fd); [ -d $fd/ ] && echo dir $fd $l; \
             case $l in /*) echo path $fd $l;; esac; done",
        )
        .await;
    let text = out.stdout_text();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("dir ") || l.contains(&depot) || l.contains("gardend"))
        .collect();
    assert!(
        bad.is_empty(),
        "garden-init holds host files: {bad:?}\nall: {text}"
    );
    let out = f
        .sh(&format!(
            "ls -d /proc/1/fd/*/..{depot} 2>/dev/null | head -1"
        ))
        .await;
    assert_eq!(
        out.stdout_text(),
        "",
        "the host depot is reachable from inside"
    );
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_after_stdin_eof_and_other_signal_deaths() {
    e2e::require_root!();
    let f = Fixture::new("e2e-p-sig2").await;
    // Stdin ends (EOF message sent), then a TERM arrives on the same connection: honoured.
    let out = Capture::default();
    let io = ProcessIo {
        stdin: Some(Box::new(std::io::Cursor::new(b"line\n".to_vec()))),
        stdout: Some(Box::new(out.clone())),
        ..Default::default()
    };
    let script = "trap 'exit 9' TERM; read x; cat >/dev/null; echo eof-seen; while true; do sleep 0.05; done";
    let mut p = f.c.run(&f.handle, &sh(script), io).await.expect("run");
    assert!(
        e2e::eventually(Duration::from_secs(10), || async {
            out.text().contains("eof-seen")
        })
        .await
    );
    p.control().signal(Signal::Terminate).await.expect("signal");
    assert_eq!(wait(&mut p).await, 9);
    // Death by any signal is 128 + its number.
    assert_eq!(f.sh("kill -SEGV $$").await.status, 139);
    assert_eq!(f.sh("kill -INT $$").await.status, 130);
    // tty: stdin EOF reaches the program (cat ends).
    let spec = ProcessSpec {
        tty: Some(TtySpec::default()),
        path: "cat".into(),
        ..Default::default()
    };
    let out = run_output(&f.c, &f.handle, &spec, Some(b"abc\n".to_vec()))
        .await
        .expect("tty cat");
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout_text().contains("abc\r\n"), "{out:?}");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_then_kill_back_to_back() {
    e2e::require_root!();
    // A signal sent the moment Run returns must not be lost (the process may not have
    // reached exec yet).
    let f = Fixture::new("e2e-p-runkill").await;
    for i in 0..20 {
        let spec = ProcessSpec {
            path: "sleep".into(),
            args: vec!["100".into()],
            ..Default::default()
        };
        let mut p =
            f.c.run(&f.handle, &spec, ProcessIo::default())
                .await
                .expect("run");
        p.control().signal(Signal::Kill).await.expect("kill");
        let status = tokio::time::timeout(Duration::from_secs(10), p.wait())
            .await
            .unwrap_or_else(|_| panic!("cycle {i}: KILL was lost"))
            .expect("status");
        assert_eq!(status, 137, "cycle {i}");
    }
    // Six attaches to one process all get its exit status.
    let mut p =
        f.c.run(
            &f.handle,
            &ProcessSpec {
                id: "six".into(),
                ..sh("read x; exit 11")
            },
            ProcessIo {
                stdin: Some(Box::new(tokio::io::empty())),
                ..Default::default()
            },
        )
        .await
        .expect("run");
    let mut attaches = Vec::new();
    for _ in 0..6 {
        attaches.push(
            f.c.attach(&f.handle, "six", ProcessIo::default())
                .await
                .expect("attach"),
        );
    }
    assert_eq!(wait(&mut p).await, 11);
    for mut a in attaches {
        assert_eq!(wait(&mut a).await, 11);
    }
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_environment_and_arguments() {
    e2e::require_root!();
    // execve takes up to ARG_MAX (2 MiB here) of args + env, each string up to 128 KiB;
    // Cloud Foundry puts e.g. VCAP_SERVICES in the env, often hundreds of KB in total.
    let f = Fixture::new("e2e-p-bigenv").await;
    let env: Vec<String> = (0..8)
        .map(|i| format!("V{i}={}", "x".repeat(100_000)))
        .collect();
    let spec = ProcessSpec {
        env,
        ..sh("echo ${#V0} ${#V7}")
    };
    let out = f.run(&spec).await.expect("run with 800 KB of env");
    assert_eq!(
        (out.status, out.stdout_text()),
        (0, "100000 100000\n".to_string()),
        "{out:?}"
    );
    let mut args = vec!["-c".to_string(), "echo $#".to_string(), "arg0".to_string()];
    args.extend((0..6).map(|_| "y".repeat(100_000)));
    let spec = ProcessSpec {
        path: "/bin/sh".into(),
        args,
        ..Default::default()
    };
    let out = f.run(&spec).await.expect("run with 600 KB of args");
    assert_eq!(out.stdout_text(), "6\n", "{out:?}");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_is_the_containers_own_pty() {
    e2e::require_root!();
    // runc allocates the console inside the container's devpts, so ttyname() works there
    // (`tty`, ssh, sudo, script and job-control shells depend on it).
    let f = Fixture::new("e2e-p-ttyname").await;
    let spec = ProcessSpec {
        tty: Some(TtySpec::default()),
        ..sh("t=$(tty) && [ -c \"$t\" ] && echo ok $t; ls -l /proc/self/fd/0 >/dev/null")
    };
    let out = f.run(&spec).await.expect("run");
    assert!(out.stdout_text().starts_with("ok /dev/pts/"), "{out:?}");
    let spec = ProcessSpec {
        user: "alice".into(),
        ..spec
    };
    let out = f.run(&spec).await.expect("run as alice");
    assert!(out.stdout_text().starts_with("ok /dev/pts/"), "{out:?}");
    let owner = f
        .run(&ProcessSpec {
            user: "alice".into(),
            tty: Some(TtySpec::default()),
            ..sh("stat -c %U $(tty)")
        })
        .await
        .expect("stat");
    assert_eq!(
        owner.stdout_text(),
        "alice\r\n",
        "the pty belongs to the process's user: {owner:?}"
    );
    f.finish().await;
}
