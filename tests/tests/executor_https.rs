//! The executor's download and upload over https against a real gardend: an in-test TLS file
//! server on 127.0.0.1:0 whose certificate (for `localhost` and 127.0.0.1) is signed by a test
//! CA made with rcgen. With the CA the files land in the container (and the cache revalidates
//! over TLS); without it the run fails with the certificate error and nothing is copied in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use e2e::Gardend;
use executor::container::{Container, Executor};
use executor::http::{Tls, TlsOptions};
use executor::log::MemorySink;
use executor::testing::FileServer;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA (PEM, written to a file) and a TLS server config with a leaf it signed.
struct Pki {
    ca_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn pki(dir: &Path) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "executor e2e CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
    let mut leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("leaf params");
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .expect("leaf cert");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf_cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
    .expect("server config");
    let ca_file = dir.join("test-ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
    Pki {
        ca_file,
        server: Arc::new(server),
    }
}

fn tgz(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mode) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("tar entry");
    }
    let tar = b.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    gz.finish().expect("gzip")
}

/// An executor on a real gardend whose downloads and uploads use `tls`.
struct Cell {
    gardend: Gardend,
    exec: Arc<Executor>,
    sink: MemorySink,
    _cache: tempfile::TempDir,
}

impl Cell {
    fn start(tls: Tls) -> Cell {
        let e2e::ExecutorCell {
            gardend,
            exec,
            sink,
            cache_dir,
        } = e2e::start_executor(|cache, config| {
            cache.backoff_base = Duration::from_millis(10);
            cache.tls = tls.clone();
            config.step.tls = tls;
        });
        Cell {
            gardend,
            exec,
            sink,
            _cache: cache_dir,
        }
    }

    /// Run `script` (JSON or YAML) in a new container; the container is kept for inspection.
    async fn run(&self, guid: &str, script: &str) -> Container {
        e2e::run_action(&self.exec, &self.gardend, guid, script).await
    }

    async fn sh(&self, guid: &str, script: &str) -> (i32, String) {
        e2e::sh_combined(&self.gardend.client(), guid, script).await
    }
}

fn with_ca(ca_file: &Path) -> Tls {
    Tls::new(&TlsOptions {
        ca_certs: vec![ca_file.to_path_buf()],
        insecure_skip_verify: false,
    })
    .expect("tls with CA")
}

fn download_script(url: &str) -> String {
    format!(
        r#"
serial:
  actions:
    - download: {{from: "{url}", to: /home/vcap/app, user: vcap, artifact: app, cache_key: app-https}}
    - run: {{path: /bin/sh, args: ["-c", "/home/vcap/app/bin/hello.sh"], user: vcap}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_download_with_the_ca_lands_files_and_revalidates() {
    e2e::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let srv = FileServer::start_tls(pki.server.clone()).await;
    let app = tgz(&[
        ("bin/hello.sh", b"#!/bin/sh\necho hello-over-tls\n", 0o755),
        ("README", b"read me", 0o644),
    ]);
    srv.put_bytes("/app.tgz", &app);
    let cell = Cell::start(with_ca(&pki.ca_file));
    let url = srv.url("/app.tgz");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let c = cell.run("https-dl", &download_script(&url)).await;
    assert!(!c.run_result.failed, "{}", c.run_result.failure_reason);
    let texts = cell.sink.texts();
    assert!(texts.contains(&"hello-over-tls".to_string()), "{texts:#?}");
    let (status, out) = cell.sh("https-dl", "cat /home/vcap/app/README").await;
    assert_eq!((status, out.as_str()), (0, "read me"));
    assert_eq!(srv.body_bytes("/app.tgz"), app.len() as u64);

    // By host name (SNI `localhost`, verified against the DNS SAN), same cache key: a 304 over
    // TLS, no body transferred.
    let by_name = format!("https://localhost:{}/app.tgz", srv.addr().port());
    let c = cell.run("https-dl2", &download_script(&by_name)).await;
    assert!(!c.run_result.failed, "{}", c.run_result.failure_reason);
    assert_eq!(srv.requests("/app.tgz"), 2);
    assert_eq!(srv.not_modified("/app.tgz"), 1);
    assert_eq!(srv.body_bytes("/app.tgz"), app.len() as u64);
    let (_, out) = cell.sh("https-dl2", "/home/vcap/app/bin/hello.sh").await;
    assert_eq!(out.trim(), "hello-over-tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_download_without_the_ca_fails_with_a_certificate_error() {
    e2e::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let srv = FileServer::start_tls(pki.server.clone()).await;
    srv.put_bytes("/app.tgz", &tgz(&[("bin/hello.sh", b"echo no\n", 0o755)]));
    // System roots only.
    let cell = Cell::start(Tls::default());
    let c = cell
        .run("https-noca", &download_script(&srv.url("/app.tgz")))
        .await;
    assert!(c.run_result.failed, "downloaded without trusting the CA");
    assert_eq!(
        c.run_result.failure_reason,
        format!(
            "Downloading app failed: tls handshake with 127.0.0.1:{}: invalid peer certificate: UnknownIssuer",
            srv.addr().port()
        )
    );
    assert_eq!(
        srv.requests("/app.tgz"),
        0,
        "no request over an unverified connection"
    );
    let (status, out) = cell
        .sh("https-noca", "ls -A /home/vcap/app 2>/dev/null | wc -l")
        .await;
    assert_eq!(
        (status, out.trim()),
        (0, "0"),
        "files landed in the container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_over_https_with_and_without_the_ca() {
    e2e::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let srv = FileServer::start_tls(pki.server.clone()).await;
    let script = format!(
        r#"
serial:
  actions:
    - run: {{path: /bin/sh, args: ["-c", "printf 'droplet-bytes' > /tmp/droplet"], user: vcap}}
    - upload: {{from: /tmp/droplet, to: "{}", user: vcap, artifact: droplet}}
"#,
        srv.url("/droplets/abc?token=s3cret")
    );
    let cell = Cell::start(with_ca(&pki.ca_file));
    let c = cell.run("https-up", &script).await;
    assert!(!c.run_result.failed, "{}", c.run_result.failure_reason);
    let ups = srv.uploads();
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0].path, "/droplets/abc");
    assert_eq!(ups[0].body, b"droplet-bytes");
    assert!(ups[0]
        .header("content-digest")
        .is_some_and(|d| d.starts_with("sha-256=:")));
    assert!(cell
        .sink
        .texts()
        .contains(&"Uploaded droplet (13B)".to_string()));

    // Without the CA: one attempt (a rejected certificate is not retried), nothing received.
    let cell = Cell::start(Tls::default());
    let c = cell.run("https-up-noca", &script).await;
    assert!(c.run_result.failed);
    assert_eq!(
        c.run_result.failure_reason,
        format!(
            "tls handshake with 127.0.0.1:{}: invalid peer certificate: UnknownIssuer",
            srv.addr().port()
        )
    );
    assert_eq!(srv.uploads().len(), 1);
    assert!(!cell.sink.texts().iter().any(|t| t.contains("s3cret")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ca_cert_flag_and_env() {
    e2e::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let srv = FileServer::start_tls(pki.server.clone()).await;
    srv.put_bytes(
        "/app.tgz",
        &tgz(&[("bin/hello.sh", b"#!/bin/sh\necho cli-tls\n", 0o755)]),
    );
    let gardend = Gardend::start();
    let script = dir.path().join("s.yaml");
    std::fs::write(&script, download_script(&srv.url("/app.tgz"))).unwrap();
    let bin = e2e::binary("executor");
    let run = |extra: &[&str], env: Option<&Path>| {
        let mut cmd = Command::new(&bin);
        cmd.args([
            "run",
            script.to_str().unwrap(),
            "--garden",
            &gardend.address(),
        ])
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .args(extra)
        .env_remove("EXECUTOR_CA_CERT");
        if let Some(ca) = env {
            cmd.env("EXECUTOR_CA_CERT", ca);
        }
        let out = cmd.output().expect("run executor");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let ca = pki.ca_file.to_str().unwrap();
    let (
        (code, out),
        (code_env, out_env),
        (code_none, out_none),
        (code_bad, out_bad),
        (code_insecure, out_insecure),
    ) = tokio::task::block_in_place(|| {
        (
            run(&["--ca-cert", ca], None),
            run(&[], Some(Path::new(ca))),
            run(&[], None),
            run(&["--ca-cert", "/nonexistent/ca.pem"], None),
            run(&["--insecure-skip-verify"], None),
        )
    });
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("cli-tls"), "{out}");
    assert_eq!(code_env, Some(0), "{out_env}");
    assert!(out_env.contains("cli-tls"), "{out_env}");
    assert_eq!(code_none, Some(1), "{out_none}");
    assert!(
        out_none.contains("invalid peer certificate: UnknownIssuer"),
        "{out_none}"
    );
    assert_ne!(code_bad, Some(0));
    assert!(
        out_bad.contains("CA certificate /nonexistent/ca.pem"),
        "{out_bad}"
    );
    assert_eq!(code_insecure, Some(0), "{out_insecure}");
    assert!(out_insecure.contains("cli-tls"), "{out_insecure}");
}
