use std::io::Read;
use std::time::Duration;

use super::*;
use crate::testing::{FileServer, ServedFile};

fn config(dir: &Path) -> CacheConfig {
    let mut c = CacheConfig::new(dir);
    c.backoff_base = Duration::from_millis(1);
    c.backoff_max = Duration::from_millis(2);
    c
}

fn tar_entries(f: &mut Fetched) -> Vec<(String, Vec<u8>)> {
    let mut bytes = Vec::new();
    f.tar.read_to_end(&mut bytes).unwrap();
    let mut a = tar::Archive::new(bytes.as_slice());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            (e.path().unwrap().to_string_lossy().into_owned(), d)
        })
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex(&sha2::Sha256::digest(b))
}

#[tokio::test]
async fn uncached_plain_file_becomes_a_one_entry_tar() {
    let srv = FileServer::start().await;
    srv.put_bytes("/bin/tool", b"payload");
    let dir = tempfile::tempdir().unwrap();
    let cache = DownloadCache::open(config(dir.path())).unwrap();
    let mut f = cache.fetch(&srv.url("/bin/tool"), "", None).await.unwrap();
    assert_eq!(f.downloaded, 7);
    assert!(!f.cache_hit);
    assert_eq!(
        tar_entries(&mut f),
        vec![("tool".to_string(), b"payload".to_vec())]
    );
    assert_eq!(cache.size(), 0);
}

#[tokio::test]
async fn cache_hit_revalidates_without_a_body() {
    let srv = FileServer::start().await;
    srv.put_bytes("/a", b"hello world");
    let dir = tempfile::tempdir().unwrap();
    let cache = DownloadCache::open(config(dir.path())).unwrap();
    let sum = Checksum {
        algorithm: "SHA256".into(),
        value: sha256_hex(b"hello world").to_uppercase(),
    };
    let mut first = cache
        .fetch(&srv.url("/a"), "key-a", Some(&sum))
        .await
        .unwrap();
    assert!(!first.cache_hit);
    let mut second = cache
        .fetch(&srv.url("/a"), "key-a", Some(&sum))
        .await
        .unwrap();
    assert!(second.cache_hit);
    assert_eq!(second.downloaded, 0);
    assert_eq!(srv.requests("/a"), 2);
    assert_eq!(srv.not_modified("/a"), 1);
    assert_eq!(srv.body_bytes("/a"), 11);
    assert_eq!(tar_entries(&mut first), tar_entries(&mut second));

    // The stored digests are checked against what the next caller expects.
    let wrong = Checksum {
        algorithm: "md5".into(),
        value: "00".repeat(16),
    };
    let err = cache
        .fetch(&srv.url("/a"), "key-a", Some(&wrong))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Checksum failed: md5 checksum mismatch: expected '0000"),
        "{err}"
    );

    // The index survives a reopen.
    drop(cache);
    let cache = DownloadCache::open(config(dir.path())).unwrap();
    assert!(cache.contains("key-a"));
    assert!(
        cache
            .fetch(&srv.url("/a"), "key-a", None)
            .await
            .unwrap()
            .cache_hit
    );
}

#[tokio::test]
async fn checksum_mismatch_stores_nothing() {
    let srv = FileServer::start().await;
    srv.put_bytes("/a", b"data");
    let dir = tempfile::tempdir().unwrap();
    let cache = DownloadCache::open(config(dir.path())).unwrap();
    let sum = Checksum {
        algorithm: "sha1".into(),
        value: "ab".repeat(20),
    };
    let err = cache
        .fetch(&srv.url("/a"), "k", Some(&sum))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
    assert!(!cache.contains("k"));
    assert_eq!(srv.requests("/a"), 1, "checksum errors are not retried");
}

#[tokio::test]
async fn responses_without_validators_are_not_cached() {
    let srv = FileServer::start().await;
    srv.put(
        "/a",
        ServedFile {
            body: b"x".to_vec(),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = DownloadCache::open(config(dir.path())).unwrap();
    assert!(
        !cache
            .fetch(&srv.url("/a"), "k", None)
            .await
            .unwrap()
            .cache_hit
    );
    assert!(!cache.contains("k"));
    assert!(
        !cache
            .fetch(&srv.url("/a"), "k", None)
            .await
            .unwrap()
            .cache_hit
    );
}

#[tokio::test]
async fn last_modified_alone_is_enough() {
    let srv = FileServer::start().await;
    let lm = "Wed, 21 Oct 2015 07:28:00 GMT".to_string();
    srv.put(
        "/a",
        ServedFile {
            body: b"x".to_vec(),
            last_modified: Some(lm),
            chunked: true,
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = DownloadCache::open(config(dir.path())).unwrap();
    cache.fetch(&srv.url("/a"), "k", None).await.unwrap();
    assert!(
        cache
            .fetch(&srv.url("/a"), "k", None)
            .await
            .unwrap()
            .cache_hit
    );
}

#[tokio::test]
async fn least_recently_used_entry_is_evicted() {
    let srv = FileServer::start().await;
    for p in ["/a", "/b", "/c"] {
        srv.put_bytes(p, &[b'x'; 100]);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    // Measure the stored size of one entry, then allow exactly two.
    let probe = DownloadCache::open(config(&dir.path().join("probe"))).unwrap();
    probe.fetch(&srv.url("/a"), "probe", None).await.unwrap();
    let one = probe.size();
    assert!(one > 0);
    c.max_bytes = one * 2;
    let cache = DownloadCache::open(c).unwrap();
    cache.fetch(&srv.url("/a"), "a", None).await.unwrap();
    cache.fetch(&srv.url("/b"), "b", None).await.unwrap();
    cache.fetch(&srv.url("/a"), "a", None).await.unwrap(); // a is now more recent than b
    cache.fetch(&srv.url("/c"), "c", None).await.unwrap();
    assert!(cache.contains("a"));
    assert!(!cache.contains("b"));
    assert!(cache.contains("c"));
    assert!(cache.size() <= one * 2);
}

#[tokio::test]
async fn concurrent_fetches_of_one_key_transfer_the_body_once() {
    let srv = FileServer::start().await;
    srv.put_bytes("/big", &vec![7u8; 300_000]);
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(DownloadCache::open(config(dir.path())).unwrap());
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let cache = cache.clone();
        let url = srv.url("/big");
        tasks.push(tokio::spawn(async move {
            cache.fetch(&url, "big", None).await.map(|f| f.cache_hit)
        }));
    }
    let mut hits = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            hits += 1;
        }
    }
    assert_eq!(hits, 5);
    assert_eq!(srv.body_bytes("/big"), 300_000);
}

#[tokio::test]
async fn status_errors_and_retries() {
    let srv = FileServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = DownloadCache::open(config(dir.path())).unwrap();
    let err = cache
        .fetch(&srv.url("/missing"), "", None)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "Download failed: Status code 404");
    assert_eq!(srv.requests("/missing"), 1);
    srv.put(
        "/flaky",
        ServedFile {
            status: Some(503),
            ..Default::default()
        },
    );
    let err = cache.fetch(&srv.url("/flaky"), "", None).await.unwrap_err();
    assert_eq!(err.to_string(), "Download failed: Status code 503");
    assert_eq!(srv.requests("/flaky"), 4);
    let err = cache
        .fetch("ftp://example.invalid/x", "", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unsupported scheme"), "{err}");
}

#[tokio::test]
async fn content_addressed_entries_are_served_without_asking_the_server() {
    let srv = FileServer::start().await;
    srv.put(
        "/droplet",
        ServedFile {
            body: b"droplet bytes".to_vec(),
            ..Default::default()
        },
    );
    let sum = Checksum {
        algorithm: "sha1".into(),
        value: hex(&sha1::Sha1::digest(b"droplet bytes")),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.content_addressed = true;
    let cache = Arc::new(DownloadCache::open(c).unwrap());
    // Concurrent fetches of one key: one download, the others wait and hit.
    let fetches = (0..3).map(|_| {
        let cache = cache.clone();
        let url = srv.url("/droplet");
        let sum = sum.clone();
        tokio::spawn(async move { cache.fetch(&url, "d-1", Some(&sum)).await.unwrap() })
    });
    let results = futures_join(fetches).await;
    assert_eq!(srv.requests("/droplet"), 1);
    assert_eq!(results.iter().filter(|f| f.cache_hit).count(), 2);
    // A different checksum under the same key goes to the server (and fails to match).
    let other = Checksum {
        algorithm: "sha1".into(),
        value: hex(&sha1::Sha1::digest(b"other")),
    };
    assert!(cache
        .fetch(&srv.url("/droplet"), "d-1", Some(&other))
        .await
        .is_err());
    assert_eq!(srv.requests("/droplet"), 2);

    // Without the flag nothing without validators is kept.
    let dir2 = tempfile::tempdir().unwrap();
    let plain = DownloadCache::open(config(dir2.path())).unwrap();
    plain
        .fetch(&srv.url("/droplet"), "d-1", Some(&sum))
        .await
        .unwrap();
    plain
        .fetch(&srv.url("/droplet"), "d-1", Some(&sum))
        .await
        .unwrap();
    assert_eq!(srv.requests("/droplet"), 4);
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// Blobstores answer with a redirect to a signed URL on another host: the body comes from
/// there, and the cache keys and validators are those of the final answer.
#[tokio::test]
async fn redirects_to_another_host_are_followed() {
    let blobs = FileServer::start().await;
    blobs.put_bytes("/signed/droplet", b"droplet bytes");
    let api = FileServer::start().await;
    // `localhost` is another host name than the api's `127.0.0.1`.
    let target = format!(
        "http://localhost:{}/signed/droplet?sig=abc",
        blobs.addr().port()
    );
    api.put_redirect("/v2/droplet", &target);
    let dir = tempfile::tempdir().unwrap();
    let cache = DownloadCache::open(config(dir.path())).unwrap();
    let mut f = cache
        .fetch(&api.url("/v2/droplet"), "droplet", None)
        .await
        .unwrap();
    assert_eq!(
        tar_entries(&mut f),
        vec![("droplet".to_string(), b"droplet bytes".to_vec())]
    );
    assert_eq!(api.requests("/v2/droplet"), 1);
    assert_eq!(blobs.requests("/signed/droplet"), 1);
    // The second fetch revalidates through the same redirect and gets a 304.
    let second = cache
        .fetch(&api.url("/v2/droplet"), "droplet", None)
        .await
        .unwrap();
    assert!(second.cache_hit);
    assert_eq!(blobs.not_modified("/signed/droplet"), 1);
}

#[tokio::test]
async fn redirect_loops_fail_without_hanging() {
    let srv = FileServer::start().await;
    srv.put_redirect("/loop", "/loop");
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.attempts = 1;
    let cache = DownloadCache::open(c).unwrap();
    let err = cache.fetch(&srv.url("/loop"), "", None).await.unwrap_err();
    assert!(err.to_string().contains("more than 10 redirects"), "{err}");
    assert_eq!(srv.requests("/loop"), 11);
}

#[tokio::test]
async fn gzip_content_encoding_is_decoded_before_checksums() {
    let srv = FileServer::start().await;
    let body = b"compressible ".repeat(1000);
    srv.put(
        "/big.txt",
        ServedFile {
            body: body.clone(),
            gzip: true,
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = DownloadCache::open(config(dir.path())).unwrap();
    let sum = Checksum {
        algorithm: "sha256".into(),
        value: sha256_hex(&body),
    };
    let mut f = cache
        .fetch(&srv.url("/big.txt"), "", Some(&sum))
        .await
        .unwrap();
    assert_eq!(f.downloaded, body.len() as u64);
    assert_eq!(tar_entries(&mut f), vec![("big.txt".to_string(), body)]);
}
