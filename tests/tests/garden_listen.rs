//! gardend on a unix socket, configured from an INI file (Guardian's option names): the whole
//! container/process/file cycle over the socket, the socket's mode, a stale socket replaced.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{run_output, sh, Address, Client};
use garden_api::ContainerSpec;

/// Kills gardend (by its pid) when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_from_config_file() {
    e2e::require_root!();
    let tmp = tempfile::Builder::new()
        .prefix("gardend-e2e-unix-")
        .tempdir()
        .expect("tempdir");
    let depot = tmp.path().join("depot");
    std::fs::create_dir_all(&depot).expect("depot");
    let sock = tmp.path().join("garden.sock");
    // A stale socket file from an earlier run.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("stale socket"));
    assert!(sock.exists());
    let cgroup_parent = format!("garden-e2e-unix-{}", std::process::id());
    let config = tmp.path().join("gardend.ini");
    std::fs::write(
        &config,
        format!(
            "; gardend config\n[server]\nbind-socket = {}\ndepot = {}\nlog-level = debug\n\
             default-grace-time = 0s\ncgroup-parent = {cgroup_parent}\n",
            sock.display(),
            depot.display()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(tmp.path().join("gardend.log")).expect("log");
    let mut cmd = Command::new(e2e::binary("gardend"));
    cmd.arg("--config").arg(&config);
    if let Ok(rootfs) = std::env::var("GARDEN_TEST_ROOTFS") {
        cmd.args(["--default-rootfs", &rootfs]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn gardend");
    let _server = Server(child);
    let c = Client::new(Address::Unix(sock.clone()));
    let up = e2e::eventually(Duration::from_secs(30), || async { c.ping().await.is_ok() }).await;
    let log_text = || std::fs::read_to_string(tmp.path().join("gardend.log")).unwrap_or_default();
    assert!(
        up,
        "gardend did not answer on {}; log:\n{}",
        sock.display(),
        log_text()
    );

    let meta = std::fs::metadata(&sock).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o777, "socket mode");

    let h = c
        .create(&ContainerSpec {
            handle: "e2e-unix".into(),
            ..Default::default()
        })
        .await
        .expect("create");
    assert!(
        depot.join(&h).is_dir(),
        "the depot from the config file is used"
    );
    let out = run_output(&c, &h, &sh("echo over-unix; exit 2"), Some(Vec::new()))
        .await
        .expect("run");
    assert_eq!(
        (out.status, out.stdout_text()),
        (2, "over-unix\n".to_string())
    );
    let err = c
        .attach(&h, "xxx", Default::default())
        .await
        .map(drop)
        .expect_err("attach");
    assert_eq!(
        err.garden(),
        Some(&garden_api::GardenError::process_not_found("xxx"))
    );
    c.destroy(&h).await.expect("destroy");
    // Destroy answers once the processes are gone; the rest is reclaimed in the background.
    let mut left: Vec<std::path::PathBuf> = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids"]
        .iter()
        .map(|root| std::path::Path::new(root).join(&cgroup_parent).join(&h))
        .chain([depot.join(&h)])
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|d| d.exists());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(left.is_empty(), "left after destroy: {left:?}");
}
