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

/// A new OCI layout (umoci) tagged `tag` whose one layer is the busybox rootfs, with
/// `config` (umoci config flags) applied.
fn busybox_layout(layout: &Path, busybox: &Path, tag: &str, config: &[&str]) {
    let img = format!("{}:{tag}", layout.display());
    run(Command::new("umoci").args(["init", "--layout"]).arg(layout));
    run(Command::new("umoci").args(["new", "--image", &img]));
    let bundle = layout.with_extension("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&bundle));
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", busybox.display()))
        .arg(bundle.join("rootfs")));
    run(Command::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&bundle));
    std::fs::remove_dir_all(&bundle).unwrap();
    if !config.is_empty() {
        run(Command::new("umoci")
            .args(["config", "--image", &img])
            .args(config));
    }
}

/// A tar of `entries`: (name, Some(content)) files, (name, None) directories.
fn tar_of(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match content {
            Some(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(c.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append_data(&mut h, name, c.as_bytes()).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                h.set_cksum();
                b.append_data(&mut h, name, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = sha256_hex(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Appends `tar` (gzipped) as the top layer of `layout:tag`: new config, manifest and index.
fn append_layer(layout: &Path, tag: &str, tar: &[u8]) {
    append_layer_as(layout, tag, tar, false)
}

/// [`append_layer`], zstd-compressed if `zstd`.
fn append_layer_as(layout: &Path, tag: &str, tar: &[u8], zstd: bool) {
    let blob = |d: &str| layout.join("blobs/sha256").join(&d[7..]);
    let mut index = read_json(&layout.join("index.json"));
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag in index.json");
    let mut manifest = read_json(&blob(entry["digest"].as_str().unwrap()));
    let mut config = read_json(&blob(manifest["config"]["digest"].as_str().unwrap()));
    let (gz, media_type) = if zstd {
        (
            zstd::encode_all(tar, 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        )
    } else {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, tar).unwrap();
        (
            gz.finish().unwrap(),
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    let layer = write_blob(layout, &gz);
    manifest["layers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": media_type,
            "digest": layer, "size": gz.len()
        }));
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(format!("sha256:{}", sha256_hex(tar)).into());
    if let Some(h) = config["history"].as_array_mut() {
        h.push(serde_json::json!({"created_by": "e2e append_layer"}));
    }
    let config = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = write_blob(layout, &config).into();
    manifest["config"]["size"] = config.len().into();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    entry["digest"] = write_blob(layout, &manifest).into();
    entry["size"] = manifest.len().into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// Tags `new_tag` in `layout` as an image index with one manifest per architecture in
/// `arches` (linux), each a copy of `from_tag`'s manifest (same layers and config).
fn add_index(layout: &Path, from_tag: &str, new_tag: &str, arches: &[&str]) {
    let mut index = read_json(&layout.join("index.json"));
    let entries = index["manifests"].as_array_mut().unwrap();
    let from = entries
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == from_tag)
        .expect("tag in index.json")
        .clone();
    let blob = layout
        .join("blobs/sha256")
        .join(&from["digest"].as_str().unwrap()[7..]);
    let manifest = read_json(&blob);
    let mut platforms = Vec::new();
    for arch in arches {
        let mut m = manifest.clone();
        m["annotations"] = serde_json::json!({"e2e.arch": arch});
        let bytes = serde_json::to_vec(&m).unwrap();
        platforms.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": write_blob(layout, &bytes), "size": bytes.len(),
            "platform": {"architecture": arch, "os": "linux"}
        }));
    }
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": platforms
    }))
    .unwrap();
    entries.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": write_blob(layout, &nested), "size": nested.len(),
        "annotations": {"org.opencontainers.image.ref.name": new_tag}
    }));
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

/// An OCI layout tagged `app`: the busybox rootfs, a data layer, then a layer whiting out
/// `/data/gone` and making `/dir` opaque (only `new` left), with config env and working dir.
fn build_layout(dir: &Path) -> PathBuf {
    build_layout_as(dir, false)
}

/// [`build_layout`] with zstd-compressed data layers if `zstd`.
fn build_layout_as(dir: &Path, zstd: bool) -> PathBuf {
    let busybox = rootfs::ensure_busybox_rootfs(&dir.join("busybox")).expect("busybox rootfs");
    let layout = dir.join("layout");
    busybox_layout(
        &layout,
        &busybox,
        "app",
        &[
            "--config.env",
            "FROM_CONFIG=hello",
            "--config.env",
            "PATH=/usr/bin:/bin",
            "--config.workingdir",
            "/data",
            "--config.user",
            "vcap",
        ],
    );
    append_layer_as(
        &layout,
        "app",
        &tar_of(&[
            ("data", None),
            ("data/keep", Some("kept\n")),
            ("data/gone", Some("should be whited out\n")),
            ("dir", None),
            ("dir/old", Some("hidden by opaque\n")),
        ]),
        zstd,
    );
    append_layer_as(
        &layout,
        "app",
        &tar_of(&[
            ("data/.wh.gone", Some("")),
            ("dir/.wh..wh..opq", Some("")),
            ("dir/new", Some("new\n")),
        ]),
        zstd,
    );
    add_index(&layout, "app", "multi", &["arm64", "amd64"]);
    add_index(&layout, "app", "armonly", &["arm64"]);
    layout
}

/// A layout tagged `tag`: busybox plus a layer with a file `/id` holding `tag`.
fn tiny_layout(dir: &Path, busybox: &Path, tag: &str) -> PathBuf {
    let layout = dir.join(format!("layout-{tag}"));
    busybox_layout(&layout, busybox, tag, &[]);
    append_layer(&layout, tag, &tar_of(&[("id", Some(tag))]));
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

/// Wait (at most 10 s) for `done`: a destroy answers before its reclamation has finished.
fn settle(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
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
    reg.push(&layout, "multi", "team/app", "multi", &["--all"]);
    reg.push(&layout, "armonly", "team/app", "armonly", &["--all"]);
    let zstd_layout = build_layout_as(&work.path().join("zstd"), true);
    reg.push(
        &zstd_layout,
        "app",
        "team/app",
        "zstd",
        &["--dest-compress-format", "zstd"],
    );
    let raw = |tag: &str| {
        run(Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/team/app:{tag}", reg.host()),
        ]))
    };
    assert!(raw("zstd").contains("tar+zstd"), "{}", raw("zstd"));
    assert!(raw("v2s2").contains("vnd.docker.distribution.manifest.v2+json"));
    let g = Gardend::start_with(&["--insecure-docker-registry", &reg.host()]);
    let c = g.client();

    for (handle, tag) in [
        ("img-oci", "oci"),
        ("img-v2s2", "v2s2"),
        ("img-zstd", "zstd"),
        ("img-multi", "multi"),
    ] {
        let uri = format!("docker://{}/team/app#{tag}", reg.host());
        c.create(&image_spec(handle, &uri))
            .await
            .unwrap_or_else(|e| panic!("create {uri}: {e}\n{}", g.log()));
        let out = shell(
            &g,
            handle,
            "id -un; pwd; echo $FROM_CONFIG; cat /data/keep; ls /dir; \
             test -e /data/gone && echo GONE-VISIBLE; echo done",
        )
        .await;
        assert_eq!(out, "vcap\n/data\nhello\nkept\nnew\ndone\n", "{tag}");
    }
    let err = e2e::garden_err(
        c.create(&image_spec(
            "img-arm",
            &format!("docker://{}/team/app#armonly", reg.host()),
        ))
        .await,
    )
    .to_string();
    assert!(err.contains("no linux/amd64 manifest"), "{err}");
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
    let write = garden_api::ProcessSpec {
        user: "root".into(),
        ..sh("echo mine > /data/keep")
    };
    let out = run_output(&c, "img-again", &write, None).await.unwrap();
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(shell(&g, "img-oci", "cat /data/keep").await, "kept\n");

    for h in ["img-oci", "img-v2s2", "img-zstd", "img-multi", "img-again"] {
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
    // 3 layers + 1 config, each fetched once.
    assert_eq!(reg.blob_gets(None), 4, "{}", reg.log());
    assert_eq!(store_dir(&g, "layers").len(), 3);
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
    let err = e2e::garden_err(c.create(&with("priv-none", "", "")).await).to_string();
    assert!(
        err.contains("unauthorized") && err.contains("requires"),
        "{err:?}"
    );
    let err = e2e::garden_err(c.create(&with("priv-bad", "alice", "wrong")).await).to_string();
    assert!(
        err.contains("unauthorized") && err.contains("refused"),
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
        let err =
            e2e::garden_err(c.create(&image_spec(&format!("bad-{i}"), uri)).await).to_string();
        assert!(err.contains(want), "{uri}: {err:?}");
    }
    // Plain HTTP only for listed registries: this one is not, and speaks no TLS.
    let g2 = Gardend::start();
    let err = e2e::garden_err(
        g2.client()
            .create(&image_spec("tls", &format!("docker://{h}/there#v1")))
            .await,
    )
    .to_string();
    assert!(err.contains("https://"), "{err:?}");

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
    for i in 0..60 {
        let name = format!("many/{i}");
        let content = format!("{i}\n");
        append_layer(
            &layout,
            "app",
            &tar_of(&[("many", None), (&name, Some(&content))]),
        );
    }
    let g = Gardend::start();
    let c = g.client();
    let uri = format!("oci://{}#app", layout.display());
    c.create(&image_spec("layout", &uri))
        .await
        .unwrap_or_else(|e| panic!("create: {e}\n{}", g.log()));
    assert_eq!(store_dir(&g, "layers").len(), 63);
    let out = shell(
        &g,
        "layout",
        "echo $FROM_CONFIG; cat /data/keep /many/0 /many/59; ls /many | wc -l; ls /dir",
    )
    .await;
    assert_eq!(out, "hello\nkept\n0\n59\n60\nnew\n");
    // A tag naming an index: its linux/amd64 manifest (the image without the 60 layers).
    let multi = format!("oci://{}#multi", layout.display());
    c.create(&image_spec("layout-multi", &multi))
        .await
        .expect("create from an index");
    assert_eq!(
        shell(
            &g,
            "layout-multi",
            "cat /data/keep; test -e /many || echo none"
        )
        .await,
        "kept\nnone\n"
    );
    c.destroy("layout-multi").await.unwrap();
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
    // The image is released when the destroy's background reclamation ends.
    settle(|| store_dir(&g, "layers").len() == 2);
    assert_eq!(store_dir(&g, "layers").len(), 2, "two's own layer went");
    assert_eq!(store_dir(&g, "l").len(), 2);
    assert_eq!(shell(&g, "gc-one", "cat /id").await, "one");
    c.destroy("gc-one").await.unwrap();
    settle(|| store_dir(&g, "layers").is_empty());
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
    let err = e2e::garden_err(c.create(&image_spec("drop-bad", &uri(&wrong))).await).to_string();
    assert!(err.contains("digest mismatch"), "{err:?}");
    assert!(store_dir(&g, "tmp").is_empty());
    for h in ["drop-1", "drop-2"] {
        c.destroy(h).await.unwrap();
        no_leaks(h, &g);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_scope_disk_limits_count_the_pulled_image() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let busybox = rootfs::ensure_busybox_rootfs(&work.path().join("busybox")).unwrap();
    let layout = tiny_layout(work.path(), &busybox, "big");
    // 3 MiB that do not compress, in a layer of their own.
    let mut noise = vec![0u8; 3 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let noise = String::from_utf8_lossy(&noise).into_owned();
    append_layer(&layout, "big", &tar_of(&[("noise", Some(&noise))]));
    let g = Gardend::start();
    let c = g.client();
    let uri = format!("oci://{}#big", layout.display());
    let limited = |handle: &str, byte_hard: u64, scope: u8| {
        let mut s = image_spec(handle, &uri);
        s.limits.disk_limits = garden_api::DiskLimits {
            byte_hard,
            scope,
            ..Default::default()
        };
        s
    };
    let err = e2e::garden_err(
        c.create(&limited(
            "too-small",
            2 << 20,
            garden_api::DISK_LIMIT_SCOPE_TOTAL,
        ))
        .await,
    )
    .to_string();
    assert!(err.contains("image"), "{err}");
    assert!(c.list(&[]).await.unwrap().is_empty());
    c.create(&limited(
        "exclusive",
        2 << 20,
        garden_api::DISK_LIMIT_SCOPE_EXCLUSIVE,
    ))
    .await
    .expect("exclusive scope does not count the image");
    let m = c.metrics("exclusive").await.unwrap().disk_stat;
    assert!(
        m.total_bytes_used - m.exclusive_bytes_used >= 3 << 20,
        "the image's layers count in total usage: {m:?}"
    );
    c.destroy("exclusive").await.unwrap();
    no_leaks("exclusive", &g);
}

/// The attack: an image whose layer carries the host's disk (block 8:0) and /dev/mem (char
/// 1:1) as device nodes, read by container root. Layers drop them: the files do not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_nodes_from_an_image_never_reach_the_container() {
    e2e::require_root!();
    let work = tempfile::tempdir().unwrap();
    let busybox = rootfs::ensure_busybox_rootfs(&work.path().join("busybox")).unwrap();
    let layout = tiny_layout(work.path(), &busybox, "hostile");
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, major, minor) in [
        ("disk", tar::EntryType::Block, 8, 0),
        ("mem", tar::EntryType::Char, 1, 1),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }
    append_layer(&layout, "hostile", &b.into_inner().unwrap());
    let g = Gardend::start();
    let c = g.client();
    let uri = format!("oci://{}#hostile", layout.display());
    c.create(&image_spec("hostile", &uri))
        .await
        .expect("create");
    let root = garden_api::ProcessSpec {
        user: "root".into(),
        ..sh("cat /id; ls -l /disk /mem 2>&1; test -e /disk || test -e /mem || echo absent")
    };
    let out = run_output(&c, "hostile", &root, None).await.unwrap();
    let text = out.stdout_text();
    assert!(
        text.starts_with("hostile") && text.ends_with("absent\n"),
        "{text}"
    );
    assert!(g.log().contains("skipping a device node in an image layer"));
    c.destroy("hostile").await.unwrap();
    no_leaks("hostile", &g);
}
