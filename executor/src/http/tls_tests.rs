//! https against an in-test TLS server whose certificate (for `localhost` and 127.0.0.1) is
//! signed by a CA made with rcgen at test time.

use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::cache::{CacheConfig, DownloadCache};
use crate::testing::FileServer;

/// A test CA and a server certificate it signed.
struct Pki {
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn pki(names: &[&str]) -> Pki {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "executor test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let mut leaf =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, names[0]);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

fn tls_with_ca(dir: &Path, pem: &str) -> Tls {
    let path = dir.join("ca.pem");
    std::fs::write(&path, pem).unwrap();
    Tls::new(&TlsOptions {
        ca_certs: vec![path],
        insecure_skip_verify: false,
    })
    .unwrap()
}

async fn get(tls: &Tls, url: &str) -> Result<(u16, Vec<u8>), HttpError> {
    let url = Url::parse(url)?;
    let resp = request_with(tls, "GET", &url, &[], None).await?;
    let status = resp.status;
    let mut body = Vec::new();
    resp.read_body(|b| {
        body.extend_from_slice(b);
        Ok(())
    })
    .await?;
    Ok((status, body))
}

#[tokio::test]
async fn get_and_post_over_https_with_an_extra_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(&["localhost", "127.0.0.1"]);
    let srv = FileServer::start_tls(pki.server.clone()).await;
    srv.put_bytes("/a.txt", b"hello over tls");
    let tls = tls_with_ca(dir.path(), &pki.ca_pem);
    assert!(srv.url("/a.txt").starts_with("https://127.0.0.1:"));
    let (status, body) = get(&tls, &srv.url("/a.txt")).await.unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"hello over tls"[..]));
    // By name too: SNI/verification against the DNS SAN.
    let by_name = format!("https://localhost:{}/a.txt", srv.addr().port());
    assert_eq!(get(&tls, &by_name).await.unwrap().0, 200);

    let url = Url::parse(&srv.url("/up")).unwrap();
    let payload = b"result bytes".to_vec();
    let resp = request_with(
        &tls,
        "POST",
        &url,
        &[],
        Some(Body {
            len: payload.len() as u64,
            reader: Box::new(std::io::Cursor::new(payload.clone())),
        }),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    let ups = srv.uploads();
    assert_eq!(ups.len(), 1);
    assert_eq!((ups[0].path.as_str(), &ups[0].body), ("/up", &payload));
}

#[tokio::test]
async fn unknown_issuer_is_a_clear_permanent_error() {
    let pki = pki(&["localhost", "127.0.0.1"]);
    let srv = FileServer::start_tls(pki.server.clone()).await;
    srv.put_bytes("/a.txt", b"x");
    // System roots only: the test CA is not among them.
    let err = get(&Tls::default(), &srv.url("/a.txt")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "tls handshake with 127.0.0.1:{}: invalid peer certificate: UnknownIssuer",
            srv.addr().port()
        )
    );
    assert!(err.is_permanent());
    assert_eq!(srv.requests("/a.txt"), 0);
}

#[tokio::test]
async fn certificate_for_another_name_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(&["files.example.com"]);
    let srv = FileServer::start_tls(pki.server.clone()).await;
    srv.put_bytes("/a.txt", b"x");
    let tls = tls_with_ca(dir.path(), &pki.ca_pem);
    let err = get(&tls, &srv.url("/a.txt")).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            &err,
            HttpError::Tls {
                source: rustls::Error::InvalidCertificate(_),
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("invalid peer certificate"), "{text}");
    assert!(text.contains("not valid for name \"127.0.0.1\""), "{text}");
    assert_eq!(srv.requests("/a.txt"), 0);
}

#[tokio::test]
async fn insecure_skip_verify_accepts_any_certificate() {
    let pki = pki(&["files.example.com"]);
    let srv = FileServer::start_tls(pki.server.clone()).await;
    srv.put_bytes("/a.txt", b"unverified");
    let tls = Tls::new(&TlsOptions {
        ca_certs: vec![],
        insecure_skip_verify: true,
    })
    .unwrap();
    let (status, body) = get(&tls, &srv.url("/a.txt")).await.unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"unverified"[..]));
}

#[tokio::test]
async fn plain_http_to_a_tls_port_and_tls_to_a_plain_port_fail() {
    let pki = pki(&["127.0.0.1"]);
    let tls_srv = FileServer::start_tls(pki.server.clone()).await;
    let plain = FileServer::start().await;
    plain.put_bytes("/a.txt", b"x");
    // A peer that accepts and says nothing: the handshake times out, and a timeout is worth
    // a retry.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let tls = Tls::default().with_handshake_timeout(Duration::from_millis(300));
    let err = get(&tls, &format!("https://{silent_addr}/a.txt"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("connecting to {silent_addr}: timed out after 300ms")
    );
    assert!(!err.is_permanent());
    hold.abort();
    // A plain HTTP server answers the ClientHello with an HTTP error: not TLS, not retried.
    let err = get(&tls, &plain.url("/a.txt").replace("http://", "https://"))
        .await
        .unwrap_err();
    assert!(matches!(err, HttpError::Tls { .. }), "{err}");
    assert!(err.is_permanent());
    let err = get(
        &Tls::default(),
        &tls_srv.url("/a.txt").replace("https://", "http://"),
    )
    .await
    .unwrap_err();
    // The server drops the connection after a failed handshake: no response head.
    assert!(
        matches!(err, HttpError::Protocol(_) | HttpError::Io { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn sni_is_the_url_host() {
    let pki = pki(&["localhost"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(None::<String>));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut s = acceptor.accept(sock).await.unwrap();
        *seen2.lock().unwrap() = s.get_ref().1.server_name().map(str::to_string);
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_with_ca(dir.path(), &pki.ca_pem);
    let (status, _) = get(&tls, &format!("https://localhost:{port}/"))
        .await
        .unwrap();
    assert_eq!(status, 204);
    assert_eq!(seen.lock().unwrap().as_deref(), Some("localhost"));
}

#[test]
fn bad_ca_files_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let err = Tls::new(&TlsOptions {
        ca_certs: vec![missing.clone()],
        insecure_skip_verify: false,
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!("CA certificate {}: ", missing.display())),
        "{err}"
    );
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let err = Tls::new(&TlsOptions {
        ca_certs: vec![junk.clone()],
        insecure_skip_verify: false,
    })
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        format!(
            "CA certificate {}: no certificates in the file",
            junk.display()
        )
    );
    // A certificate whose body is not valid DER is refused when added.
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = Tls::new(&TlsOptions {
        ca_certs: vec![broken],
        insecure_skip_verify: false,
    })
    .unwrap_err();
    assert!(matches!(err, HttpError::CaCert { .. }), "{err}");
}

#[tokio::test]
async fn cache_revalidates_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(&["localhost", "127.0.0.1"]);
    let srv = FileServer::start_tls(pki.server.clone()).await;
    srv.put_bytes("/app.bin", b"#!/bin/sh\necho hi\n");
    let mut config = CacheConfig::new(dir.path().join("cache"));
    config.tls = tls_with_ca(dir.path(), &pki.ca_pem);
    let cache = DownloadCache::open(config).unwrap();
    let first = cache
        .fetch(&srv.url("/app.bin"), "app", None)
        .await
        .unwrap();
    assert!(!first.cache_hit);
    assert_eq!(first.downloaded, 18);
    let second = cache
        .fetch(&srv.url("/app.bin"), "app", None)
        .await
        .unwrap();
    assert!(second.cache_hit);
    assert_eq!(srv.not_modified("/app.bin"), 1);
    assert_eq!(srv.body_bytes("/app.bin"), 18);

    // Without the CA: one attempt (not retried), nothing cached.
    let plain = DownloadCache::open(CacheConfig::new(dir.path().join("plain"))).unwrap();
    let err = plain
        .fetch(&srv.url("/app.bin"), "app", None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(!plain.contains("app"));
    assert_eq!(srv.requests("/app.bin"), 2);
}

/// The CA the tests hand out is a single well-formed PEM certificate.
#[test]
fn ca_pem_parses_as_one_certificate() {
    let pki = pki(&["localhost"]);
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(certs.len(), 1);
}
