//! gardenctl end to end: the real binary against a real gardend.
//!
//! Each test starts its own gardend; a lock keeps them one at a time so that servers in this
//! binary never compete for the same network pool.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use e2e::Gardend;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one gardenctl invocation did.
struct Out {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    #[track_caller]
    fn ok(self) -> Out {
        assert!(
            self.status.success(),
            "gardenctl failed ({}): {}\nstdout: {}",
            self.status,
            self.stderr,
            self.text()
        );
        self
    }
}

fn gardenctl(g: &Gardend) -> Command {
    let mut cmd = Command::new(e2e::binary("gardenctl"));
    cmd.env("GARDEN_TARGET", g.address())
        .env_remove("GARDENCTL_LOG");
    cmd
}

/// Run gardenctl with `stdin` piped in (or /dev/null), killing it after `timeout`.
fn run(g: &Gardend, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Out {
    let mut cmd = gardenctl(g);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("spawn gardenctl");
    let feeder = stdin.map(|data| {
        let data = data.to_vec();
        let mut pipe = child.stdin.take().expect("stdin pipe");
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        })
    });
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out_pipe.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait gardenctl") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gardenctl {args:?} did not finish within {timeout:?}; gardend log:\n{}",
                g.log()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(f) = feeder {
        let _ = f.join();
    }
    Out {
        status,
        stdout: out_reader.join().expect("stdout"),
        stderr: err_reader.join().expect("stderr"),
    }
}

fn ctl(g: &Gardend, args: &[&str]) -> Out {
    run(g, args, None, Duration::from_secs(60))
}

fn create(g: &Gardend, handle: &str) -> String {
    let out = ctl(g, &["create", "--handle", handle]).ok();
    let printed = out.text().trim().to_string();
    assert_eq!(printed, handle, "create prints the handle");
    printed
}

#[test]
fn create_list_info_destroy() {
    e2e::require_root!();
    let _serial = serial();
    let g = Gardend::start();
    let out = ctl(
        &g,
        &[
            "create",
            "--handle",
            "cli-basic",
            "--property",
            "app=cli",
            "--property",
            "team=infra",
            "--memory",
            "64M",
            "--grace-time",
            "10m",
            "--env",
            "GREETING=hello",
        ],
    )
    .ok();
    assert_eq!(out.text().trim(), "cli-basic");
    // A second container without a handle: the server names it, and we print that name.
    let other = ctl(&g, &["create"]).ok().text().trim().to_string();
    assert!(!other.is_empty() && other != "cli-basic");

    let table = ctl(&g, &["list"]).ok().text();
    assert!(table.starts_with("HANDLE"), "{table}");
    assert!(
        table.contains("cli-basic") && table.contains(&other),
        "{table}"
    );

    assert_eq!(
        ctl(&g, &["list", "-q", "app=cli"]).ok().text(),
        "cli-basic\n"
    );
    assert_eq!(
        ctl(&g, &["list", "-q", "app=cli", "team=other"])
            .ok()
            .text(),
        ""
    );
    let json: Vec<String> =
        serde_json::from_slice(&ctl(&g, &["list", "--json"]).ok().stdout).expect("list --json");
    let mut sorted = json.clone();
    sorted.sort();
    let mut expected = vec!["cli-basic".to_string(), other.clone()];
    expected.sort();
    assert_eq!(sorted, expected);

    let info = ctl(&g, &["info", "cli-basic"]).ok().text();
    assert!(info.contains("state:") && info.contains("active"), "{info}");
    assert!(
        info.contains("app  = cli") || info.contains("app = cli"),
        "{info}"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&ctl(&g, &["info", "cli-basic", "--json"]).ok().stdout).unwrap();
    assert_eq!(info["State"], "active");
    assert_eq!(info["Properties"]["team"], "infra");

    assert_eq!(
        ctl(&g, &["properties", "get", "cli-basic", "app"])
            .ok()
            .text(),
        "cli\n"
    );
    ctl(&g, &["properties", "set", "cli-basic", "app", "changed"]).ok();
    assert_eq!(
        ctl(&g, &["properties", "get", "cli-basic", "app"])
            .ok()
            .text(),
        "changed\n"
    );
    ctl(&g, &["properties", "rm", "cli-basic", "team"]).ok();
    let props: serde_json::Value = serde_json::from_slice(
        &ctl(&g, &["properties", "list", "cli-basic", "--json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(props["app"], "changed");
    assert!(props.get("team").is_none(), "{props}");

    let limits: serde_json::Value =
        serde_json::from_slice(&ctl(&g, &["limits", "cli-basic", "--json"]).ok().stdout).unwrap();
    assert_eq!(limits["memory"]["limit_in_bytes"], 64 << 20);
    let human = ctl(&g, &["limits", "cli-basic"]).ok().text();
    assert!(human.contains("64 MiB"), "{human}");

    // Container env reaches processes.
    let env = ctl(
        &g,
        &["run", "cli-basic", "--", "sh", "-c", "echo $GREETING"],
    )
    .ok()
    .text();
    assert_eq!(env, "hello\n");

    let bulk: serde_json::Value = serde_json::from_slice(
        &ctl(&g, &["bulk-info", "cli-basic", &other, "--json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(bulk["cli-basic"]["Info"]["State"], "active");
    assert!(bulk[&other]["Err"].is_null(), "{bulk}");

    ctl(&g, &["destroy", "cli-basic", &other]).ok();
    assert_eq!(ctl(&g, &["list", "-q"]).ok().text(), "");
    e2e::assert_no_leaks("cli-basic", &g);
}

#[test]
fn unknown_handle_is_one_clear_line() {
    e2e::require_root!();
    let _serial = serial();
    let g = Gardend::start();
    let out = ctl(&g, &["info", "no-such-container"]);
    assert_eq!(out.code(), Some(1), "stderr: {}", out.stderr);
    assert_eq!(
        out.stderr,
        "gardenctl: container not found: no-such-container\n"
    );
    assert_eq!(out.text(), "");

    // destroy reports every failure and still exits 1.
    create(&g, "cli-real");
    let out = ctl(&g, &["destroy", "ghost-1", "cli-real", "ghost-2"]);
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr
            .contains("gardenctl: container not found: ghost-1\n"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("gardenctl: container not found: ghost-2\n"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 2, "{}", out.stderr);
    assert_eq!(
        ctl(&g, &["list", "-q"]).ok().text(),
        "",
        "the real container was destroyed"
    );

    // No server at all: exit 1 with a hint, not a panic.
    let mut cmd = Command::new(e2e::binary("gardenctl"));
    let dead = format!("127.0.0.1:{}", e2e::free_port());
    let out = cmd.args(["--target", &dead, "ping"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("gardenctl: cannot reach gardend at {dead}")),
        "{err}"
    );
}

#[test]
fn run_pipes_stdin_and_propagates_exit_codes() {
    e2e::require_root!();
    let _serial = serial();
    let g = Gardend::start();
    create(&g, "cli-run");

    let input: Vec<u8> = (0..20_000)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes();
    let out = run(
        &g,
        &["run", "cli-run", "--", "cat"],
        Some(&input),
        Duration::from_secs(60),
    )
    .ok();
    assert_eq!(out.stdout.len(), input.len());
    assert!(out.stdout == input, "cat echoed different bytes");

    let out = ctl(&g, &["run", "cli-run", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.code(), Some(7), "stderr: {}", out.stderr);
    assert_eq!(out.stderr, "");

    let out = ctl(
        &g,
        &[
            "run",
            "cli-run",
            "--",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 0",
        ],
    )
    .ok();
    assert_eq!(out.text(), "to-out\n");
    assert_eq!(out.stderr, "to-err\n");

    let out = ctl(
        &g,
        &[
            "run",
            "cli-run",
            "--dir",
            "/tmp",
            "--env",
            "A=b c",
            "--",
            "sh",
            "-c",
            "echo \"$PWD $A\"",
        ],
    )
    .ok();
    assert_eq!(out.text(), "/tmp b c\n");

    // A command that does not exist is an error of ours (exit 1), not a process exit code.
    let out = ctl(&g, &["run", "cli-run", "--", "/no/such/binary"]);
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.starts_with("gardenctl: ") || out.code() == Some(127),
        "{}",
        out.stderr
    );

    // Detach, then re-attach and collect the exit status.
    let pid = ctl(
        &g,
        &[
            "run",
            "cli-run",
            "--detach",
            "--",
            "sh",
            "-c",
            "sleep 2; echo late; exit 4",
        ],
    )
    .ok()
    .text();
    let pid = pid.trim();
    assert!(!pid.is_empty());
    let out = ctl(&g, &["run", "cli-run", "--attach", pid]);
    assert_eq!(out.code(), Some(4), "stderr: {}", out.stderr);
    assert_eq!(out.text(), "late\n");

    let out = ctl(&g, &["run", "cli-run", "--attach", "no-such-process"]);
    assert_eq!(out.code(), Some(1));
    assert_eq!(
        out.stderr,
        "gardenctl: process not found: no-such-process\n"
    );
}

fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("site/css")).unwrap();
    std::fs::write(root.join("site/index.html"), "<h1>hi</h1>\n").unwrap();
    std::fs::write(root.join("site/css/main.css"), "body { margin: 0 }\n").unwrap();
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("site/blob.bin"), blob).unwrap();
    std::os::unix::fs::symlink("index.html", root.join("site/home.html")).unwrap();
}

/// Every path below `root` with its content (or link target), for comparing trees.
fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.push((
                    rel,
                    std::fs::read_link(&path)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                        .into_bytes(),
                ));
            } else if meta.is_dir() {
                out.push((rel + "/", Vec::new()));
                walk(root, &path, out);
            } else {
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn stream_in_and_out_round_trip_a_directory() {
    e2e::require_root!();
    let _serial = serial();
    let g = Gardend::start();
    create(&g, "cli-files");
    let local = tempfile::tempdir().unwrap();
    write_tree(local.path());

    // A directory goes in under its own name.
    let site = local.path().join("site");
    ctl(
        &g,
        &[
            "stream-in",
            "cli-files",
            "--to",
            "/srv",
            site.to_str().unwrap(),
        ],
    )
    .ok();
    let inside = ctl(
        &g,
        &["run", "cli-files", "--", "cat", "/srv/site/css/main.css"],
    )
    .ok()
    .text();
    assert_eq!(inside, "body { margin: 0 }\n");

    // ... and comes back out the same.
    let back = tempfile::tempdir().unwrap();
    ctl(
        &g,
        &[
            "stream-out",
            "cli-files",
            "--from",
            "/srv/site",
            "--to",
            back.path().to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(snapshot(&back.path().join("site")), snapshot(&site));

    // Trailing slash: contents only, both ways.
    ctl(
        &g,
        &[
            "stream-in",
            "cli-files",
            "--to",
            "/copy",
            &format!("{}/", site.display()),
        ],
    )
    .ok();
    let back2 = tempfile::tempdir().unwrap();
    ctl(
        &g,
        &[
            "stream-out",
            "cli-files",
            "--from",
            "/copy/",
            "--to",
            back2.path().to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(snapshot(back2.path()), snapshot(&site));

    // A single file, then the tar on stdout and a tar on stdin.
    ctl(
        &g,
        &[
            "stream-in",
            "cli-files",
            "--to",
            "/etc/app",
            site.join("index.html").to_str().unwrap(),
        ],
    )
    .ok();
    let tar = ctl(
        &g,
        &["stream-out", "cli-files", "--from", "/etc/app/index.html"],
    )
    .ok()
    .stdout;
    let mut archive = tar::Archive::new(&tar[..]);
    let mut entry = archive
        .entries()
        .unwrap()
        .next()
        .expect("one entry")
        .unwrap();
    assert_eq!(entry.path().unwrap().to_string_lossy(), "index.html");
    let mut body = String::new();
    entry.read_to_string(&mut body).unwrap();
    assert_eq!(body, "<h1>hi</h1>\n");
    run(
        &g,
        &["stream-in", "cli-files", "--to", "/from-stdin"],
        Some(&tar),
        Duration::from_secs(60),
    )
    .ok();
    assert_eq!(
        ctl(
            &g,
            &["run", "cli-files", "--", "cat", "/from-stdin/index.html"]
        )
        .ok()
        .text(),
        "<h1>hi</h1>\n"
    );

    // Missing things fail clearly.
    let out = ctl(
        &g,
        &[
            "stream-in",
            "cli-files",
            "--to",
            "/x",
            "/definitely/not/here",
        ],
    );
    assert_eq!(out.code(), Some(1));
    assert!(
        out.stderr
            .starts_with("gardenctl: cannot read /definitely/not/here"),
        "{}",
        out.stderr
    );
    let out = ctl(
        &g,
        &[
            "stream-out",
            "cli-files",
            "--from",
            "/definitely/not/here",
            "--to",
            back.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let out = ctl(
        &g,
        &["stream-in", "ghost", "--to", "/x", site.to_str().unwrap()],
    );
    assert_eq!(out.code(), Some(1));
    assert_eq!(out.stderr, "gardenctl: container not found: ghost\n");
}

/// Reads everything the pty master yields into a channel, until the slave side is gone.
fn pty_reader(master: OwnedFd) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    let mut file = std::fs::File::from(master);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects pty output until it contains `needle`.
fn expect_output(rx: &mpsc::Receiver<Vec<u8>>, seen: &mut Vec<u8>, needle: &str, g: &Gardend) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(seen).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(_) => panic!(
                "no {needle:?} on the terminal; got {:?}\ngardend log:\n{}",
                String::from_utf8_lossy(seen),
                g.log()
            ),
        }
    }
}

#[test]
fn tty_session_through_a_pseudo_terminal() {
    e2e::require_root!();
    use nix::pty::{openpty, Winsize};
    use nix::sys::termios::{tcgetattr, LocalFlags};

    let _serial = serial();
    let g = Gardend::start();
    create(&g, "cli-tty");

    let size = Winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = openpty(Some(&size), None).expect("openpty");
    let before = tcgetattr(&pty.slave).unwrap();
    assert!(before
        .local_flags
        .contains(LocalFlags::ICANON | LocalFlags::ECHO));

    let mut child = gardenctl(&g)
        .args(["run", "-t", "cli-tty", "--", "/bin/sh"])
        .stdin(pty.slave.try_clone().unwrap())
        .stdout(pty.slave.try_clone().unwrap())
        .stderr(pty.slave.try_clone().unwrap())
        .spawn()
        .expect("spawn gardenctl");
    let mut master = std::fs::File::from(pty.master.try_clone().unwrap());
    let rx = pty_reader(pty.master);
    let mut seen = Vec::new();

    master.write_all(b"echo hi-$((1+1))\r").unwrap();
    expect_output(&rx, &mut seen, "hi-2", &g);
    master.write_all(b"stty size\r").unwrap();
    expect_output(&rx, &mut seen, "30 100", &g);
    master.write_all(b"exit 3\r").unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "gardenctl run -t did not exit; terminal: {:?}",
                String::from_utf8_lossy(&seen)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(3),
        "terminal: {:?}",
        String::from_utf8_lossy(&seen)
    );

    // The terminal is back in cooked mode.
    let after = tcgetattr(&pty.slave).unwrap();
    assert!(
        after
            .local_flags
            .contains(LocalFlags::ICANON | LocalFlags::ECHO),
        "raw mode was left on"
    );
}

/// `gardenctl … | head -1`: a reader that goes away ends gardenctl quietly, never a panic, and
/// a process whose output nobody reads any more does not keep gardenctl waiting.
#[test]
fn closed_stdout_ends_quietly() {
    e2e::require_root!();
    let _serial = serial();
    let g = Gardend::start();
    create(&g, "cli-pipe");
    let closed_pipe = || {
        let (read, write) = nix::unistd::pipe().expect("pipe");
        drop(read);
        Stdio::from(write)
    };
    for args in [
        &["list"][..],
        &["info", "cli-pipe"],
        &["--json", "list"],
        &["run", "cli-pipe", "--", "seq", "1", "200000"],
    ] {
        let mut cmd = gardenctl(&g);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(closed_pipe())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn gardenctl");
        let out = child.wait_with_output().expect("wait gardenctl");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if args[0] == "run" {
            // The process's output has nowhere to go: say so once and fail.
            assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
            assert_eq!(
                stderr,
                "gardenctl: writing process stdout: Broken pipe (os error 32)\n"
            );
        } else {
            assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
            assert_eq!(stderr, "", "{args:?}");
        }
    }
    ctl(&g, &["destroy", "cli-pipe"]).ok();
    e2e::assert_no_leaks("cli-pipe", &g);
}

/// An OCI layout (umoci) tagged `app` whose one layer is the busybox rootfs.
fn busybox_layout(dir: &Path) -> std::path::PathBuf {
    let busybox = rootfs::ensure_busybox_rootfs(&dir.join("busybox")).expect("busybox rootfs");
    let layout = dir.join("layout");
    let img = format!("{}:app", layout.display());
    let bundle = dir.join("bundle");
    let umoci = |args: &[&str]| {
        let out = Command::new("umoci").args(args).output().expect("umoci");
        assert!(out.status.success(), "umoci {args:?}: {out:?}");
    };
    umoci(&["init", "--layout", &layout.display().to_string()]);
    umoci(&["new", "--image", &img]);
    umoci(&["unpack", "--image", &img, &bundle.display().to_string()]);
    let copied = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", busybox.display()))
        .arg(bundle.join("rootfs"))
        .status()
        .expect("cp");
    assert!(copied.success());
    umoci(&["repack", "--image", &img, &bundle.display().to_string()]);
    layout
}

/// `create --image` tells people what it is doing while gardend pulls: without a terminal,
/// plain lines on stderr (a spinner on one), the handle alone on stdout; gardend logs the
/// pull layer by layer. `--json` keeps stderr quiet.
#[test]
fn create_from_an_image_reports_progress() {
    e2e::require_root!();
    let _serial = serial();
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_layout(work.path());
    let uri = format!("oci://{}#app", layout.display());
    let g = Gardend::start();
    let out = ctl(&g, &["create", "--handle", "pulled", "--image", &uri]).ok();
    assert_eq!(out.text(), "pulled\n");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&format!("creating from {uri}").as_str()),
        "{lines:?}"
    );
    let last = lines.last().expect("a summary");
    assert!(
        last.starts_with(&format!("created pulled from {uri} in ")),
        "{lines:?}"
    );
    assert!(
        !out.stderr.contains('\r') && !out.stderr.contains('\u{1b}'),
        "no terminal codes: {:?}",
        out.stderr
    );
    let log = g.log();
    for needle in ["pulling layer", "layer unpacked", "image ready"] {
        assert!(log.contains(needle), "gardend logs {needle:?}");
    }

    let json = ctl(
        &g,
        &["--json", "create", "--handle", "quiet", "--image", &uri],
    )
    .ok();
    assert!(json.text().contains("\"quiet\""), "{}", json.text());
    assert_eq!(json.stderr, "", "--json: nothing on stderr");
    // A failed create: the start line, then only the error.
    let bad = ctl(
        &g,
        &[
            "create",
            "--handle",
            "bad",
            "--image",
            "oci:///no/such/layout",
        ],
    );
    assert_eq!(bad.code(), Some(1));
    assert!(
        bad.stderr
            .starts_with("creating from oci:///no/such/layout\n"),
        "{}",
        bad.stderr
    );
    assert!(!bad.stderr.contains("created"), "{}", bad.stderr);
    for h in ["pulled", "quiet"] {
        ctl(&g, &["destroy", h]).ok();
    }
}

/// On a terminal, `create --image` shows a spinner while it waits and a summary after it.
#[test]
fn create_from_an_image_spins_on_a_terminal() {
    e2e::require_root!();
    let _serial = serial();
    let work = tempfile::tempdir().unwrap();
    let layout = busybox_layout(work.path());
    let uri = format!("oci://{}#app", layout.display());
    let g = Gardend::start();
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let child = gardenctl(&g)
        .args(["create", "--handle", "spun", "--image", &uri])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(pty.slave.try_clone().unwrap())
        .spawn()
        .expect("spawn gardenctl");
    drop(pty.slave);
    let rx = pty_reader(pty.master);
    let mut seen = Vec::new();
    expect_output(&rx, &mut seen, "created spun in ", &g);
    let out = child.wait_with_output().expect("gardenctl");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "spun\n");
    let terminal = String::from_utf8_lossy(&seen);
    assert!(
        terminal.contains(&format!("creating from {uri}")),
        "{terminal:?}"
    );
    ctl(&g, &["destroy", "spun"]).ok();
}
