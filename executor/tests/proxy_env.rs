//! Downloads honour `HTTP_PROXY` / `NO_PROXY` from the environment, as Go's client (and so
//! Diego's executor) does. A test binary of its own: the environment is process-wide, and it
//! is set here before any client exists.

use executor::cache::{CacheConfig, DownloadCache};
use executor::testing::FileServer;

#[tokio::test]
async fn http_proxy_from_the_environment_carries_downloads_and_no_proxy_bypasses_it() {
    let proxy = FileServer::start().await;
    let direct = FileServer::start().await;
    // What the proxy answers for any host's /via-proxy: the origin below does not exist.
    proxy.put_bytes("/via-proxy", b"from the proxy");
    direct.put_bytes("/direct", b"from the origin");
    // Set before any other thread of this test binary reads the environment (this is its
    // only test, and the client is built on first use below).
    std::env::set_var("HTTP_PROXY", proxy.url(""));
    std::env::set_var("NO_PROXY", "localhost");
    let dir = tempfile::tempdir().unwrap();
    let mut config = CacheConfig::new(dir.path());
    config.attempts = 1;
    let cache = DownloadCache::open(config).unwrap();

    // Port 9 (discard) on a name that only the proxy resolves: the proxy gets the request
    // in absolute form.
    let origin = "http://origin.invalid:9/via-proxy";
    let mut f = cache.fetch(origin, "", None).await.unwrap();
    let mut body = Vec::new();
    std::io::Read::read_to_end(&mut f.tar, &mut body).unwrap();
    assert!(
        body.windows(14).any(|w| w == b"from the proxy"),
        "the proxy's body"
    );
    assert_eq!(proxy.proxied(), vec![origin.to_string()]);

    // NO_PROXY hosts are fetched directly.
    let url = format!("http://localhost:{}/direct", direct.addr().port());
    cache.fetch(&url, "", None).await.unwrap();
    assert_eq!(direct.requests("/direct"), 1);
    assert_eq!(proxy.proxied().len(), 1);
}
