//! Images from a real registry (Debian's docker-registry on loopback, fed by skopeo from OCI
//! layouts built with umoci out of the busybox rootfs), from OCI layouts, and Diego's
//! preloaded+layer: layers and whiteouts, image config, the layer store's sharing, auth,
//! bad references, garbage collection.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{assert_no_leaks as no_leaks, run_output, sh, Gardend};
use garden_api::{ContainerSpec, ImageRef};

/// bcrypt of `s3cret` for user `alice` (registry htpasswd only takes bcrypt).
const HTPASSWD: &str = "alice:$2b$12$EC.1/ajS6FAmn5nXeMTWF.Vlv4t8DzaSBvyFMAVJLoVNZuvhA4tDe\n";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A docker-registry on 127.0.0.1, storing in a temp dir, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    auth: bool,
}

impl Registry {
    fn start(auth: bool) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("registry-e2e-")
            .tempdir()
            .unwrap();
        let port = e2e::free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if auth {
            std::fs::write(dir.path().join("htpasswd"), HTPASSWD).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: e2e\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry (scripts/deps.sh installs it)");
        let r = Registry {
            child,
            port,
            dir,
            auth,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not listen: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many blob downloads the registry served (access log lines).
    fn blob_gets(&self, digest: Option<&str>) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .filter(|l| digest.is_none_or(|d| l.contains(d)))
            .filter(|l| l.contains("\" 200 ") || l.contains("\" 307 "))
            .count()
    }

    /// `skopeo copy` of `layout:tag` to `repo:dest_tag`, with extra skopeo flags.
    fn push(&self, layout: &Path, tag: &str, repo: &str, dest_tag: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{dest_tag}", self.host()));
        if self.auth {
            cmd.args(["--dest-creds", "alice:s3cret"]);
        }
        run(&mut cmd);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI layout (umoci) with tag `app`: the busybox rootfs, a data layer, a whiteout of
/// `/data/gone`, an opaque `/dir` holding only `new`, and config env / working dir.
fn build_layout(dir: &Path) -> PathBuf {
    let busybox = rootfs::ensure_busybox_rootfs(&dir.join("busybox")).expect("busybox rootfs");
    let layout = dir.join("layout");
    let img = format!("{}:app", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &img]));
    run(Command::new("umoci")
        .args(["insert", "--image", &img])
        .arg(&busybox)
        .arg("/"));
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("data")).unwrap();
    std::fs::create_dir_all(data.join("dir")).unwrap();
    std::fs::write(data.join("data/keep"), "kept\n").unwrap();
    std::fs::write(data.join("data/gone"), "should be whited out\n").unwrap();
    std::fs::write(data.join("dir/old"), "hidden by opaque\n").unwrap();
    run(Command::new("umoci")
        .args(["insert", "--image", &img])
        .arg(&data)
        .arg("/"));
    run(Command::new("umoci").args(["insert", "--image", &img, "--whiteout", "/data/gone"]));
    let newdir = dir.join("newdir");
    std::fs::create_dir_all(&newdir).unwrap();
    std::fs::write(newdir.join("new"), "new\n").unwrap();
    run(Command::new("umoci")
        .args(["insert", "--image", &img, "--opaque"])
        .arg(&newdir)
        .arg("/dir"));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &img,
        "--config.env",
        "FROM_CONFIG=hello",
        "--config.env",
        "PATH=/usr/bin:/bin",
        "--config.workingdir",
        "/data",
    ]));
    layout
}

/// A layout tagged `tag` whose single layer is a file `/id` holding `tag` (distinct layers).
fn tiny_layout(dir: &Path, busybox: &Path, tag: &str) -> PathBuf {
    let layout = dir.join(format!("layout-{tag}"));
    let img = format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &img]));
    run(Command::new("umoci")
        .args(["insert", "--image", &img])
        .arg(busybox)
        .arg("/"));
    let f = dir.join(format!("id-{tag}"));
    std::fs::write(&f, tag).unwrap();
    run(Command::new("umoci")
        .args(["insert", "--image", &img])
        .arg(&f)
        .arg("/id"));
    layout
}

fn image_spec(handle: &str, uri: &str) -> ContainerSpec {
    ContainerSpec {
        handle: handle.into(),
        image: ImageRef {
            uri: uri.into(),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn shell(g: &Gardend, handle: &str, script: &str) -> String {
    let out = run_output(&g.client(), handle, &sh(script), None)
        .await
        .expect("run");
    assert_eq!(out.status, 0, "{script}: {out:?}");
    out.stdout_text()
}

fn store_dir(g: &Gardend, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(g.tmp.path().join("images").join(sub))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_image_layers_whiteouts_config_and_cache() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let layout = build_layout(work.path());
    let reg = Registry::start(false);
    reg.push(&layout, "app", "team/app", "oci", &[]);
    reg.push(&layout, "app", "team/app", "v2s2", &["--format", "v2s2"]);
    reg.push(
        &layout,
        "app",
        "team/app",
        "zstd",
        &["--dest-compress-format", "zstd"],
    );
    let g = Gardend::start_with(&["--insecure-docker-registry", &reg.host()]);
    let c = g.client();

    for (handle, tag) in [
        ("img-oci", "oci"),
        ("img-v2s2", "v2s2"),
        ("img-zstd", "zstd"),
    ] {
        let uri = format!("docker://{}/team/app#{tag}", reg.host());
        c.create(&image_spec(handle, &uri))
            .await
            .unwrap_or_else(|e| panic!("create {uri}: {e}\n{}", g.log()));
        let out = shell(
            &g,
            handle,
            "pwd; echo $FROM_CONFIG; cat /data/keep; ls /dir; \
             test -e /data/gone && echo GONE-VISIBLE; echo done",
        )
        .await;
        assert_eq!(out, "/data\nhello\nkept\nnew\ndone\n", "{tag}");
    }
    // The three tags share no compressed blobs but oci and v2s2 hold the same layers:
    // one unpack per chain id.
    let blobs_before = reg.blob_gets(None);
    c.create(&image_spec(
        "img-again",
        &format!("docker://{}/team/app:oci", reg.host()),
    ))
    .await
    .expect("create again");
    assert_eq!(
        reg.blob_gets(None),
        blobs_before,
        "a cached image pulls no blob"
    );
    assert_eq!(shell(&g, "img-again", "cat /data/keep").await, "kept\n");
    assert!(g.log().contains("layer already stored"));
    assert!(g.log().contains("pulling layer"));

    // The container's writes stay its own.
    shell(&g, "img-again", "echo mine > /data/keep").await;
    assert_eq!(shell(&g, "img-oci", "cat /data/keep").await, "kept\n");

    for h in ["img-oci", "img-v2s2", "img-zstd", "img-again"] {
        c.destroy(h).await.expect("destroy");
        no_leaks(h, &g);
    }
    assert!(store_dir(&g, "tmp").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_image_pull_each_layer_once() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let layout = build_layout(work.path());
    let reg = Registry::start(false);
    reg.push(&layout, "app", "app", "latest", &[]);
    let g = Gardend::start_with(&["--insecure-docker-registry", &reg.host()]);
    let uri = format!("docker://{}/app", reg.host());
    let mut tasks = Vec::new();
    for i in 0..4 {
        let c = g.client();
        let spec = image_spec(&format!("conc-{i}"), &uri);
        tasks.push(tokio::spawn(async move { c.create(&spec).await }));
    }
    for t in tasks {
        t.await.unwrap().expect("concurrent create");
    }
    // 4 layers + 1 config, each fetched once.
    assert_eq!(reg.blob_gets(None), 5, "{}", reg.log());
    assert_eq!(store_dir(&g, "layers").len(), 4);
    for i in 0..4 {
        let h = format!("conc-{i}");
        assert_eq!(shell(&g, &h, "cat /data/keep").await, "kept\n");
        g.client().destroy(&h).await.expect("destroy");
        no_leaks(&h, &g);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_image_needs_the_right_credentials() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let busybox = rootfs::ensure_busybox_rootfs(&work.path().join("busybox")).unwrap();
    let layout = tiny_layout(work.path(), &busybox, "secret");
    let reg = Registry::start(true);
    reg.push(&layout, "secret", "private/app", "v1", &[]);
    let g = Gardend::start_with(&["--insecure-docker-registry", &reg.host()]);
    let c = g.client();
    let uri = format!("docker://{}/private/app#v1", reg.host());
    let with = |handle: &str, user: &str, pass: &str| ContainerSpec {
        handle: handle.into(),
        image: ImageRef {
            uri: uri.clone(),
            username: user.into(),
            password: pass.into(),
        },
        ..Default::default()
    };
    let err = e2e::garden_err(c.create(&with("priv-none", "", "")).await);
    assert!(
        err.message.contains("unauthorized") && err.message.contains("requires"),
        "{err:?}"
    );
    let err = e2e::garden_err(c.create(&with("priv-bad", "alice", "wrong")).await);
    assert!(
        err.message.contains("unauthorized") && err.message.contains("refused"),
        "{err:?}"
    );
    assert!(c.list(&[]).await.unwrap().is_empty());
    assert!(store_dir(&g, "layers").is_empty());
    assert!(store_dir(&g, "tmp").is_empty());

    c.create(&with("priv-ok", "alice", "s3cret"))
        .await
        .expect("create with the right credentials");
    assert_eq!(shell(&g, "priv-ok", "cat /id").await, "secret");
    assert!(
        !g.log().contains("s3cret"),
        "the password never reaches the log"
    );
    c.destroy("priv-ok").await.unwrap();
    no_leaks("priv-ok", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_fail_cleanly() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let busybox = rootfs::ensure_busybox_rootfs(&work.path().join("busybox")).unwrap();
    let layout = tiny_layout(work.path(), &busybox, "v1");
    let reg = Registry::start(false);
    reg.push(&layout, "v1", "there", "v1", &[]);
    let dead = format!("127.0.0.1:{}", e2e::free_port());
    let g = Gardend::start_with(&[
        "--insecure-docker-registry",
        &reg.host(),
        "--insecure-docker-registry",
        &dead,
    ]);
    let c = g.client();
    let h = reg.host();
    let cases = [
        (format!("docker://{h}/missing#v1"), "not found"),
        (format!("docker://{h}/there#nope"), "not found"),
        (format!("docker://{dead}/there#v1"), "error sending request"),
        (format!("docker://{h}/there#bad tag"), "bad tag"),
        (format!("docker://{h}/Upper#v1"), "bad repository name"),
        (format!("docker://{h}"), "expected docker://"),
        ("docker:///".to_string(), "bad repository name"),
        ("oci:///no/such/layout".to_string(), "no index.json"),
        (
            format!("oci://{}#missing", layout.display()),
            "no manifest tagged",
        ),
        (
            format!("docker://{h}/there@sha256:{}", "0".repeat(64)),
            "not found",
        ),
    ];
    for (i, (uri, want)) in cases.iter().enumerate() {
        let err = e2e::garden_err(c.create(&image_spec(&format!("bad-{i}"), uri)).await);
        assert!(err.message.contains(want), "{uri}: {err:?}");
    }
    // Plain HTTP only for listed registries: this one is not, and speaks no TLS.
    let g2 = Gardend::start();
    let err = e2e::garden_err(
        g2.client()
            .create(&image_spec("tls", &format!("docker://{h}/there#v1")))
            .await,
    );
    assert!(err.message.contains("https://"), "{err:?}");

    assert!(c.list(&[]).await.unwrap().is_empty());
    assert!(
        store_dir(&g, "tmp").is_empty(),
        "{:?}",
        store_dir(&g, "tmp")
    );
    assert!(store_dir(&g, "layers").is_empty());
    // The good reference still works after all that.
    c.create(&image_spec("good", &format!("docker://{h}/there#v1")))
        .await
        .expect("create");
    assert_eq!(shell(&g, "good", "cat /id").await, "v1");
    c.destroy("good").await.unwrap();
    no_leaks("good", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_image_and_many_layers() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let layout = build_layout(work.path());
    // 60 more layers: their plain store paths would overflow overlayfs's one-page option.
    let img = format!("{}:app", layout.display());
    for i in 0..60 {
        let f = work.path().join(format!("f{i}"));
        std::fs::write(&f, format!("{i}\n")).unwrap();
        run(Command::new("umoci")
            .args(["insert", "--image", &img])
            .arg(&f)
            .arg(format!("/many/{i}")));
    }
    let g = Gardend::start();
    let c = g.client();
    let uri = format!("oci://{}#app", layout.display());
    c.create(&image_spec("layout", &uri))
        .await
        .unwrap_or_else(|e| panic!("create: {e}\n{}", g.log()));
    assert_eq!(store_dir(&g, "layers").len(), 64);
    let out = shell(
        &g,
        "layout",
        "echo $FROM_CONFIG; cat /data/keep /many/0 /many/59; ls /many | wc -l; ls /dir",
    )
    .await;
    assert_eq!(out, "hello\nkept\n0\n59\n60\nnew\n");
    c.destroy("layout").await.unwrap();
    no_leaks("layout", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_layers_are_collected_above_the_threshold() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let busybox = rootfs::ensure_busybox_rootfs(&work.path().join("busybox")).unwrap();
    let reg = Registry::start(false);
    for tag in ["one", "two"] {
        let layout = tiny_layout(work.path(), &busybox, tag);
        reg.push(&layout, tag, "gc", tag, &[]);
    }
    let g = Gardend::start_with(&[
        "--insecure-docker-registry",
        &reg.host(),
        "--graph-cleanup-threshold-in-megabytes",
        "0",
    ]);
    let c = g.client();
    let uri = |t: &str| format!("docker://{}/gc#{t}", reg.host());
    c.create(&image_spec("gc-one", &uri("one"))).await.unwrap();
    c.create(&image_spec("gc-two", &uri("two"))).await.unwrap();
    // Both share the busybox layer: 1 + 2 distinct top layers.
    assert_eq!(store_dir(&g, "layers").len(), 3);
    c.destroy("gc-two").await.unwrap();
    assert_eq!(store_dir(&g, "layers").len(), 2, "two's own layer went");
    assert_eq!(store_dir(&g, "l").len(), 2);
    assert_eq!(shell(&g, "gc-one", "cat /id").await, "one");
    c.destroy("gc-one").await.unwrap();
    assert!(store_dir(&g, "layers").is_empty());
    assert!(store_dir(&g, "l").is_empty());
    assert!(g.log().contains("collected unused layers"));
    // Pulled again on demand.
    c.create(&image_spec("gc-back", &uri("one"))).await.unwrap();
    assert_eq!(shell(&g, "gc-back", "cat /id").await, "one");
    c.destroy("gc-back").await.unwrap();
    no_leaks("gc-back", &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloaded_layer_is_downloaded_once_per_digest() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let busybox = rootfs::ensure_busybox_rootfs(&work.path().join("busybox")).unwrap();
    // The droplet: a gzipped tarball served by the registry as a blob.
    let layout = tiny_layout(work.path(), &busybox, "droplet");
    let reg = Registry::start(false);
    reg.push(&layout, "droplet", "droplets", "v1", &[]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{}/v2/droplets/blobs/{layer}", reg.host());
    let g = Gardend::start();
    let c = g.client();
    let uri = |digest: &str| {
        format!(
            "preloaded+layer://{}?layer={}&layer_path=/home/vcap/app&layer_digest={digest}",
            busybox.display(),
            url.replace(':', "%3A").replace('/', "%2F")
        )
    };
    for h in ["drop-1", "drop-2"] {
        c.create(&image_spec(h, &uri(&layer)))
            .await
            .unwrap_or_else(|e| panic!("create: {e}\n{}", g.log()));
        assert_eq!(shell(&g, h, "cat /home/vcap/app/id").await, "droplet");
        // The layer keeps the base's owner of /home/vcap.
        assert_eq!(shell(&g, h, "stat -c %u /home/vcap").await, "2000\n");
    }
    assert_eq!(reg.blob_gets(Some(&layer)), 1, "{}", reg.log());
    // A wrong digest fails and leaves nothing.
    let wrong = format!("sha256:{}", "1".repeat(64));
    let err = e2e::garden_err(c.create(&image_spec("drop-bad", &uri(&wrong))).await);
    assert!(err.message.contains("digest mismatch"), "{err:?}");
    assert!(store_dir(&g, "tmp").is_empty());
    for h in ["drop-1", "drop-2"] {
        c.destroy(h).await.unwrap();
        no_leaks(h, &g);
    }
}
