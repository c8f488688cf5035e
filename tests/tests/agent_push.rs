//! `cellctl push` and `cellctl stage` end to end: the example apps under agent/examples staged
//! with the example buildpacks under agent/buildpacks by a real agent (on a real gardend and
//! nats-server), uploaded to cellctl, started and reached over HTTP.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use e2e::agent::*;
use e2e::Gardend;

const WAIT: Duration = Duration::from_secs(30);

/// The repository's root (examples and buildpacks live there).
fn repo(rel: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join(rel)
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

async fn cellctl(nats: &Nats, args: &[&str]) -> CellctlOutput {
    e2e::agent::cellctl(nats, args, Duration::from_secs(300)).await
}

async fn one_agent(gardend: &Gardend, nats: &Nats) -> Agent {
    let agent = Agent::start(gardend, nats, "");
    let bus = bus(nats).await;
    let ads = watch(&bus, "dea.advertise").await;
    assert!(
        ads.wait_for(WAIT, |a| a["id"].is_string()).await.is_some(),
        "the agent did not advertise:\n{}",
        agent.log()
    );
    agent
}

/// Status and body of `GET path` at `addr` (HTTP/1.0, the connection closed by the server).
async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    e2e::agent::http_get(addr, path).await
}

/// `APP[i] RUNNING at HOST:PORT ...` lines: the addresses by index.
fn addresses(app: &str, stdout: &str, n: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            let prefix = format!("{app}[{i}] RUNNING at ");
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no line for {app}[{i}]:\n{stdout}"));
            line[prefix.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

async fn no_containers_left(gardend: &Gardend) -> bool {
    let client = gardend.client();
    e2e::eventually(WAIT, || async {
        client
            .list(&[])
            .await
            .map(|l| l.is_empty())
            .unwrap_or(false)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_static_site_with_the_static_buildpack_serves_its_pages() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let nats = Nats::start();
    let agent = one_agent(&gardend, &nats).await;

    let out = cellctl(
        &nats,
        &[
            "push",
            &repo("agent/examples/static-site"),
            "--buildpack",
            &repo("agent/buildpacks/static"),
            "--route",
            "hello",
            "--memory",
            "64M",
            "--disk",
            "256M",
        ],
    )
    .await;
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}\nagent:\n{}",
        out.stdout,
        out.stderr,
        agent.log()
    );
    // The staging log, streamed from the agent's directory server while it ran.
    for line in [
        "-----> Downloaded app package",
        "-----> Static site buildpack",
        "Moved the site into public/",
        "3 file(s)",
    ] {
        assert!(
            out.stdout.contains(line),
            "{line:?} not in:\n{}",
            out.stdout
        );
    }
    assert!(
        out.stderr.contains("buildpack staticfile"),
        "{}",
        out.stderr
    );
    let addr = addresses("static-site", &out.stdout, 1).remove(0);
    let (status, body) = http_get(&addr, "/").await.expect("the app answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<h1>Hello from a cell</h1>"), "{body}");
    let (status, body) = http_get(&addr, "/about.html").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("About this example"), "{body}");
    assert_eq!(http_get(&addr, "/missing.html").await.unwrap().0, 404);

    let stop = cellctl(&nats, &["stop", "static-site"]).await;
    assert_eq!(stop.code, Some(0), "{}", stop.stderr);
    assert!(no_containers_left(&gardend).await, "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_shell_app_detects_the_binary_buildpack_and_answers_from_its_env() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let nats = Nats::start();
    let agent = one_agent(&gardend, &nats).await;

    // Both buildpacks offered: static does not detect, binary does (Procfile).
    let out = cellctl(
        &nats,
        &[
            "push",
            &repo("agent/examples/shell-app"),
            "--buildpack",
            &repo("agent/buildpacks/static"),
            "--buildpack",
            &repo("agent/buildpacks/binary"),
            "--name",
            "shelly",
            "--instances",
            "2",
            "--memory",
            "64M",
            "--disk",
            "256M",
            "--env",
            "GREETING=hi",
        ],
    )
    .await;
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}\nagent:\n{}",
        out.stdout,
        out.stderr,
        agent.log()
    );
    assert!(
        out.stdout.contains("Procfile web: exec ./server.sh"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("buildpack binary"), "{}", out.stderr);
    let addrs = addresses("shelly", &out.stdout, 2);
    for (i, addr) in addrs.iter().enumerate() {
        let (status, body) = http_get(addr, "/probe").await.expect("the app answers");
        assert_eq!(status, 200, "{body}");
        assert!(body.starts_with("Hello from shell-app!\n"), "{body}");
        // From VCAP_APPLICATION, CF_INSTANCE_*, PORT and MEMORY_LIMIT of the instance.
        assert!(body.contains("app: shelly\n"), "{body}");
        assert!(body.contains(&format!("instance index: {i}\n")), "{body}");
        assert!(body.contains(&format!("address: {addr}\n")), "{body}");
        assert!(body.contains("memory limit: 64m\n"), "{body}");
        assert!(body.contains("request: GET /probe\n"), "{body}");
        let port = body
            .lines()
            .find_map(|l| l.strip_prefix("port: "))
            .unwrap_or_default();
        assert!(port.parse::<u16>().is_ok(), "{body}");
    }

    let stop = cellctl(&nats, &["stop", "shelly"]).await;
    assert_eq!(stop.code, Some(0), "{}", stop.stderr);
    assert!(no_containers_left(&gardend).await, "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_saves_a_droplet_in_the_dea_layout() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let nats = Nats::start();
    let agent = one_agent(&gardend, &nats).await;
    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("out.tgz");

    let out = cellctl(
        &nats,
        &[
            "stage",
            &repo("agent/examples/static-site"),
            "--buildpack",
            &repo("agent/buildpacks/static"),
            "--memory",
            "64M",
            "--disk",
            "256M",
            "-o",
            output.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}\nagent:\n{}",
        out.stdout,
        out.stderr,
        agent.log()
    );
    let bytes = std::fs::read(&output).expect("droplet saved");
    let sha1 = sha1_hex(&bytes);
    assert!(
        out.stdout
            .contains(&format!("droplet saved to {}", output.display()))
            && out.stdout.contains(&sha1),
        "{}",
        out.stdout
    );

    // app/, logs/, tmp/ and staging_info.yml at the root; the site under app/public.
    let mut top = std::collections::BTreeSet::new();
    let mut files = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let path = path.trim_start_matches("./").to_string();
        if let Some(first) = path.split('/').next().filter(|f| !f.is_empty()) {
            top.insert(first.to_string());
        }
        if e.header().entry_type().is_file() {
            let mut text = String::new();
            if e.read_to_string(&mut text).is_ok() {
                files.insert(path, text);
            }
        }
    }
    let want: std::collections::BTreeSet<String> = ["app", "logs", "tmp", "staging_info.yml"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(top, want, "{:?}", files.keys());
    assert!(
        files
            .get("app/public/index.html")
            .is_some_and(|t| t.contains("Hello from a cell")),
        "{:?}",
        files.keys()
    );
    let text = files.get("staging_info.yml").expect("staging_info.yml");
    let info: serde_json::Value = serde_yaml::from_str(text).expect("staging_info.yml is YAML");
    assert_eq!(info["detected_buildpack"], "staticfile", "{info}");
    assert_eq!(
        info["start_command"], "exec httpd -f -p $PORT -h public",
        "{info}"
    );
    assert!(no_containers_left(&gardend).await, "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_whose_buildpack_does_not_detect_fails_with_no_app_detected() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let nats = Nats::start();
    let agent = one_agent(&gardend, &nats).await;

    // The binary buildpack wants a Procfile or .binary; the static site has neither.
    let out = cellctl(
        &nats,
        &[
            "push",
            &repo("agent/examples/static-site"),
            "--buildpack",
            &repo("agent/buildpacks/binary"),
            "--memory",
            "64M",
            "--disk",
            "256M",
        ],
    )
    .await;
    assert_eq!(
        out.code,
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("NoAppDetectedError")
            && out
                .stderr
                .contains("An application could not be detected by any available buildpack"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("RUNNING at"), "{}", out.stdout);
    let apps = cellctl(&nats, &["apps"]).await;
    assert!(!apps.stdout.contains("static-site"), "{}", apps.stdout);
    assert!(no_containers_left(&gardend).await, "{}", agent.log());
}

/// The README's config is valid as shipped and points at scripts/run.sh's gardend.
#[test]
fn the_example_agent_config_loads() {
    let c = agent::config::Config::load(std::path::Path::new(&repo("agent/examples/agent.yml")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.garden_address, "127.0.0.1:7777");
    assert_eq!(c.nats_servers, ["nats://127.0.0.1:4222"]);
    assert_eq!(c.stacks[0].name, "busybox");
    assert_eq!(c.stacks[0].package_path, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_with_a_zip_file_and_a_zip_url_buildpack() {
    e2e::require_root!();
    let gardend = Gardend::start();
    let nats = Nats::start();
    let agent = one_agent(&gardend, &nats).await;
    let tmp = tempfile::tempdir().unwrap();

    // The static buildpack as a zip file (cellctl serves it), the binary one as a URL (the
    // agent fetches it from elsewhere): detection still goes in order and picks binary.
    let static_zip = tmp.path().join("static.zip");
    let zipped =
        agent::ctl::archive::zip_dir(std::path::Path::new(&repo("agent/buildpacks/static")))
            .unwrap();
    std::fs::write(&static_zip, zipped).unwrap();
    let binary_zip =
        agent::ctl::archive::zip_dir(std::path::Path::new(&repo("agent/buildpacks/binary")))
            .unwrap();
    let files = FileServer::start(vec![("/bp/binary.zip".into(), binary_zip)]).await;
    let output = tmp.path().join("shell.tgz");
    let out = cellctl(
        &nats,
        &[
            "stage",
            &repo("agent/examples/shell-app"),
            "--buildpack",
            static_zip.to_str().unwrap(),
            "--buildpack",
            &format!("{}/bp/binary.zip", files.base),
            "--memory",
            "64M",
            "--disk",
            "256M",
            "-o",
            output.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        out.code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}\nagent:\n{}",
        out.stdout,
        out.stderr,
        agent.log()
    );
    assert!(out.stderr.contains("buildpack binary"), "{}", out.stderr);
    assert_eq!(files.hits("/bp/binary.zip"), 1);
    let bytes = std::fs::read(&output).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut info = None;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_string_lossy().trim_start_matches("./") == "staging_info.yml" {
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            info = Some(serde_yaml::from_str::<serde_json::Value>(&text).unwrap());
        }
    }
    let info = info.expect("staging_info.yml in the droplet");
    assert_eq!(info["detected_buildpack"], "binary", "{info}");
    assert_eq!(info["start_command"], "exec ./server.sh", "{info}");
    assert!(no_containers_left(&gardend).await, "{}", agent.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_a_staging_sends_staging_stop() {
    e2e::require_root!();
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let gardend = Gardend::start();
    let nats = Nats::start();
    let agent = one_agent(&gardend, &nats).await;

    // A buildpack whose compile takes long, after saying so.
    let tmp = tempfile::tempdir().unwrap();
    let bp = tmp.path().join("slow");
    std::fs::create_dir_all(bp.join("bin")).unwrap();
    for (name, text) in [
        ("detect", "#!/bin/sh\necho slow\n"),
        (
            "compile",
            "#!/bin/sh\necho '-----> compiling slowly'\nsleep 300\n",
        ),
        (
            "release",
            "#!/bin/sh\necho '---'\necho 'default_process_types: {web: sleep 1}'\n",
        ),
    ] {
        let p = bp.join("bin").join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let mut child = tokio::process::Command::new(e2e::binary("cellctl"))
        .env("CELL_NATS", nats.url())
        .args([
            "stage",
            &repo("agent/examples/static-site"),
            "--buildpack",
            bp.to_str().unwrap(),
            "--memory",
            "64M",
            "-o",
            tmp.path().join("never.tgz").to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The log streams while the staging runs: the compile's first line arrives.
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(l)) = lines.next_line().await {
            let hit = l.contains("compiling slowly");
            seen.push(l);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "log so far: {seen:?}\nagent:\n{}",
        agent.log()
    );

    // SAFETY: kill(2) on our own child, which has not been reaped.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGINT) };
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("cellctl ends after the stop")
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("interrupted: stopping the staging of static-site")
            && stderr.contains("Error staging: task stopped"),
        "{stderr}"
    );
    assert!(!tmp.path().join("never.tgz").exists());
    assert!(no_containers_left(&gardend).await, "{}", agent.log());
}
