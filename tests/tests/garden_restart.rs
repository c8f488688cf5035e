//! gardend may die: container processes keep running and finish normally (their stdio does not
//! depend on gardend), their exit codes are recorded in the depot, and the next gardend on the
//! same depot adopts the container and reports them (more in `garden_durable.rs`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use garden_api::{ContainerSpec, ProcessSpec};
use garden_client::{Address, Client, ProcessIo};

fn start(depot: &Path, port: u16, cgroup_parent: &str, pool: &str, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = Command::new(e2e::binary("gardend"))
        .args([
            "--bind-ip",
            "127.0.0.1",
            "--bind-port",
            &port.to_string(),
            "--cgroup-parent",
            cgroup_parent,
        ])
        .args(["--network-pool", pool])
        .arg("--depot")
        .arg(depot)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn gardend");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "gardend did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn processes_outlive_a_killed_gardend_and_the_next_one_adopts_them() {
    e2e::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let depot = tmp.path().join("depot");
    let log = tmp.path().join("gardend.log");
    let port = e2e::free_port();
    let parent = format!("garden-restart-{port}");
    let pool = e2e::network_pool();
    let mut gardend = start(&depot, port, &parent, &pool, &log);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = Client::new(Address::Tcp(format!("127.0.0.1:{port}")));

    let handle = "restart-1";
    let chain_prefix = rt.block_on(async {
        client
            .create(&ContainerSpec {
                handle: handle.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let prefix = client.properties(handle).await.unwrap()["kawasaki.iptable-prefix"].clone();
        // Writes far more than a pipe holds while gardend is gone, then exits 0.
        let spec = ProcessSpec {
            id: "writer".into(),
            path: "sh".into(),
            args: vec![
                "-c".into(),
                "sleep 0.5; i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done".into(),
            ],
            ..Default::default()
        };
        let io = ProcessIo {
            stdout: Some(Box::new(tokio::io::sink())),
            ..Default::default()
        };
        client.run(handle, &spec, io).await.unwrap();
        prefix
    });
    // SIGKILL: no chance to clean anything up.
    gardend.kill().unwrap();
    gardend.wait().unwrap();

    let exit_file = depot.join(handle).join("processes/writer.exit");
    wait_for("the writer's exit code", Duration::from_secs(20), || {
        exit_file.exists()
    });
    assert_eq!(
        std::fs::read_to_string(&exit_file).unwrap().trim(),
        "0",
        "the writer died with gardend"
    );

    let init_pid = {
        let record: serde_json::Value = serde_json::from_slice(
            &std::fs::read(depot.join(handle).join("container.json")).unwrap(),
        )
        .unwrap();
        record["init_pid"].as_i64().unwrap() as i32
    };
    assert!(
        Path::new(&format!("/proc/{init_pid}")).exists(),
        "the container died with gardend"
    );

    // The next gardend on the same depot adopts the container: the same garden-init, and the
    // writer's exit status on Attach. Destroy then removes it completely.
    let mut gardend = start(&depot, port, &parent, &pool, &log);
    let handles = rt.block_on(client.list(&[])).unwrap();
    assert_eq!(handles, [handle]);
    let status = rt.block_on(async {
        let mut p = client
            .attach(handle, "writer", ProcessIo::default())
            .await
            .expect("attach");
        p.wait().await.expect("wait")
    });
    assert_eq!(status, 0);
    assert!(
        Path::new(&format!("/proc/{init_pid}")).exists(),
        "the adopted container's init is gone"
    );
    rt.block_on(client.destroy(handle)).expect("destroy");
    wait_for(
        "the old container init to go",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(format!("/proc/{init_pid}/comm"))
                .map(|c| c.trim() != "garden-init")
                .unwrap_or(true)
        },
    );
    assert!(!depot.join(handle).exists(), "bundle left behind");
    for ctrl in ["memory", "pids", "cpu"] {
        let dir = Path::new("/sys/fs/cgroup")
            .join(ctrl)
            .join(&parent)
            .join(handle);
        assert!(!dir.exists(), "cgroup left behind: {}", dir.display());
    }
    let handles = rt.block_on(client.list(&[])).unwrap();
    assert!(handles.is_empty(), "{handles:?}");
    // A gardend stopped without containers takes its shared chains with it: nothing of
    // either run is left in the firewall.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gardend.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(gardend.wait().unwrap().success());
    let saved = std::process::Command::new("iptables-save")
        .output()
        .unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&saved.stdout)
        .lines()
        .filter(|l| l.contains(chain_prefix.as_str()))
        .map(String::from)
        .collect();
    assert!(left.is_empty(), "firewall rules left: {left:#?}");
}
