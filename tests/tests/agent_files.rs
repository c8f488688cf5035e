//! The agent's directory server (spec §9) end to end: a real gardend container whose
//! /home/vcap an app (user vcap) has filled with hostile symlinks, served through signed URLs
//! by `agent::dirserver` over loopback HTTP. Forged, altered, expired and escaping URLs are
//! refused; listings, Range and tail work; tails end with the file, the idle timeout or the
//! client, killing the helper they started in the container.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::dirserver::{FileRoot, FileRoots, Lookup};
use e2e::agent::{agent_config, Nats};
use e2e::{container_spec, eventually, processes_mentioning, run_output, Gardend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(20);

/// Owners the test declares: instance id → lookup.
#[derive(Default)]
struct Roots(Mutex<HashMap<String, Lookup>>);

impl Roots {
    fn set(&self, id: &str, lookup: Lookup) {
        self.0.lock().unwrap().insert(id.into(), lookup);
    }
    fn get(&self, id: &str) -> Lookup {
        self.0
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .unwrap_or(Lookup::Unknown)
    }
}

impl FileRoots for Roots {
    fn instance(&self, instance_id: &str) -> Lookup {
        self.get(instance_id)
    }
    fn staging_task(&self, task_id: &str) -> Lookup {
        self.get(&format!("staging:{task_id}"))
    }
}

/// gardend + nats + a Cell + the directory server on a loopback port, and one container
/// `handle` registered as instance `app1` (base /home/vcap).
struct Fixture {
    gardend: Gardend,
    _nats: Nats,
    _tmp: tempfile::TempDir,
    cell: Arc<agent::cell::Cell>,
    roots: Arc<Roots>,
    port: u16,
    handle: String,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Fixture {
    async fn start(streaming_timeout: u64) -> Fixture {
        let gardend = Gardend::start();
        let nats = Nats::start();
        let tmp = tempfile::tempdir().unwrap();
        let yaml = agent_config(
            &tmp.path().join("base"),
            &[nats.url()],
            &gardend.address(),
            1,
        );
        let mut config =
            agent::config::Config::parse(&yaml, std::path::Path::new("test.yml")).unwrap();
        config.directory_server.streaming_timeout = streaming_timeout;
        let bus = agent::bus::Bus::connect(&config.nats_servers, "files-test")
            .await
            .unwrap();
        let garden = gardend.client();
        let cache = executor::cache::DownloadCache::open(executor::cache::CacheConfig::new(
            tmp.path().join("droplets"),
        ))
        .unwrap();
        let logs = Arc::new(agent::logs::LogRouter::default());
        let executor = executor::container::Executor::new(
            Arc::new(garden.clone()),
            Arc::new(cache),
            logs.clone(),
            Default::default(),
        );
        let cell = Arc::new(agent::cell::Cell {
            id: "cell-under-test".into(),
            dir_server_id: "dirsrv".into(),
            resources: agent::resources::Resources::new(config.capacity()),
            config,
            bus,
            garden: garden.clone(),
            executor,
            signer: agent::signer::Signer::random(),
            logs,
        });
        let roots = Arc::new(Roots::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(agent::dirserver::serve(
            listener,
            cell.clone(),
            roots.clone(),
        ));
        let handle = format!("files-{}", std::process::id());
        garden.create(&container_spec(&handle)).await.unwrap();
        roots.set(
            "app1",
            Lookup::Root(FileRoot::Container {
                handle: handle.clone(),
                base: "/home/vcap".into(),
            }),
        );
        Fixture {
            gardend,
            _nats: nats,
            _tmp: tmp,
            cell,
            roots,
            port,
            handle,
            server,
        }
    }

    /// `sh -c script` in the container as the app's user.
    async fn vcap(&self, script: &str) -> String {
        let spec = garden_api::ProcessSpec {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            user: "vcap".into(),
            dir: "/home/vcap".into(),
            ..Default::default()
        };
        let out = run_output(&self.gardend.client(), &self.handle, &spec, None)
            .await
            .unwrap();
        assert_eq!(out.status, 0, "{script}: {}", out.stderr_text());
        out.stdout_text()
    }

    /// The signed request target (path and query) for `path` of instance `id`.
    fn target(&self, id: &str, path: &str) -> String {
        let url = self.cell.file_url(&format!("/instance_paths/{id}"), path);
        let host = format!("http://{}", self.cell.dir_server_host());
        url.strip_prefix(&host)
            .unwrap_or_else(|| panic!("{url} is not on {host}"))
            .to_string()
    }

    async fn get(&self, target: &str) -> Reply {
        get(self.port, target, &[]).await
    }

    async fn destroy(self) {
        self.server.abort();
        self.gardend.client().destroy(&self.handle).await.unwrap();
        e2e::assert_no_leaks(&self.handle, &self.gardend);
    }
}

/// An HTTP reply read to the end of the connection.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// A chunked body ended with its terminating chunk (or the body was not chunked).
    complete: bool,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn error(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()));
        v["error"].as_str().unwrap_or_default().to_string()
    }
}

/// A raw HTTP/1.1 connection: the test needs to see chunk framing and abrupt closes.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(port: u16, target: &str, headers: &[(&str, &str)]) -> Conn {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut req =
            format!("GET {target} HTTP/1.1\r\nHost: dirsrv.cell.test\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Read more; false at EOF or on a reset.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!(
                "no data within {WAIT:?}; so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Status and headers; the body's first bytes stay in `buf`.
    async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                let mut lines = head.split("\r\n");
                let status = lines
                    .next()
                    .unwrap()
                    .split(' ')
                    .nth(1)
                    .unwrap()
                    .parse()
                    .unwrap();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                return (status, headers);
            }
            assert!(self.fill().await, "connection closed before the head");
        }
    }
}

/// Decode as much of a chunked body as is complete: (data, saw the terminating chunk).
fn dechunk(raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut rest = raw;
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16)
            .unwrap_or_else(|_| panic!("bad chunk header in {:?}", String::from_utf8_lossy(raw)));
        if size == 0 {
            return (out, true);
        }
        let start = eol + 2;
        if rest.len() < start + size + 2 {
            return (out, false);
        }
        out.extend_from_slice(&rest[start..start + size]);
        rest = &rest[start + size + 2..];
    }
}

async fn get(port: u16, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut conn = Conn::open(port, target, headers).await;
    let (status, headers) = conn.head().await;
    while conn.fill().await {}
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let (body, complete) = if chunked {
        dechunk(&conn.buf)
    } else {
        (conn.buf.clone(), true)
    };
    Reply {
        status,
        headers,
        body,
        complete,
    }
}

/// A listing line as the spec formats it.
fn line(name: &str, size: &str) -> String {
    format!("{name:<35}{size:>10}")
}

/// What the hostile app leaves in its home: symlinks out (absolute and relative), a dangling
/// one, a FIFO, a name with a newline; and a root-only secret outside /home/vcap.
const APP_FILES: &str = r#"
mkdir -p app logs
printf 'hello world\n' > app/hello.txt
head -c 3000 /dev/zero > app/zeros.bin
printf 'old\n' > logs/app.log
ln -s /etc evil
ln -s ../.. app/up
ln -s hello.txt app/inside
ln -s /nowhere dangling
mkfifo pipe
touch "$(printf 'new\nline')"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_urls_list_read_and_refuse_escapes() {
    e2e::require_root!();
    let f = Fixture::start(60).await;
    e2e::sh_root(
        &f.gardend.client(),
        &f.handle,
        "echo topsecret > /etc/secret && chmod 644 /etc/secret",
        WAIT,
    )
    .await;
    f.vcap(APP_FILES).await;

    // The home directory and a subdirectory, in the spec's format.
    let r = f.get(&f.target("app1", "/")).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let home = r.text();
    for want in [line("app/", "-"), line("logs/", "-"), line("evil", "4B")] {
        assert!(home.lines().any(|l| l == want), "{want:?} not in\n{home}");
    }
    assert!(home.contains("new\nline"), "{home}");
    let r = f.get(&f.target("app1", "app")).await;
    assert_eq!(
        r.text(),
        [
            line("hello.txt", "12B"),
            line("inside", "9B"),
            line("up", "5B"),
            line("zeros.bin", "2.9K"),
        ]
        .map(|l| l + "\n")
        .concat()
    );

    // Files, through symlinks and `..` that stay inside.
    for path in [
        "/app/hello.txt",
        "app/inside",
        "app/../app/./hello.txt",
        "//app//hello.txt",
    ] {
        let r = f.get(&f.target("app1", path)).await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (200, "hello world\n"),
            "{path}"
        );
        assert_eq!(r.header("content-length"), Some("12"));
    }
    let r = f.get(&f.target("app1", "/app/zeros.bin")).await;
    assert_eq!((r.status, r.body.len()), (200, 3000));

    // Range.
    let t = f.target("app1", "/app/hello.txt");
    let r = get(f.port, &t, &[("Range", "bytes=6-10")]).await;
    assert_eq!((r.status, r.text().as_str()), (206, "world"));
    assert_eq!(r.header("content-range"), Some("bytes 6-10/12"));
    let r = get(f.port, &t, &[("Range", "bytes=-6")]).await;
    assert_eq!((r.status, r.text().as_str()), (206, "world\n"));
    let r = get(f.port, &t, &[("Range", "bytes=3-")]).await;
    assert_eq!((r.status, r.text().as_str()), (206, "lo world\n"));
    let r = get(f.port, &t, &[("Range", "bytes=12-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */12"));

    // Escapes: whatever the app's symlinks or the request's `..` say, nothing outside
    // /home/vcap, and no difference between "exists outside" and "missing outside".
    for path in [
        "/evil",
        "/evil/secret",
        "/evil/passwd",
        "/app/up",
        "/app/up/../etc/secret",
        "/../../etc/secret",
        "../vcap/../../etc/passwd",
        "/app/../../../etc/secret",
        "/pipe",
    ] {
        let r = f.get(&f.target("app1", path)).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (403, "Not accessible"),
            "{path}: {r:?}"
        );
        assert!(!r.text().contains("topsecret"));
    }
    for path in [
        "/missing",
        "/dangling",
        "/app/hello.txt/x",
        "/evil/../missing",
    ] {
        let r = f.get(&f.target("app1", path)).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (404, "Entity not found"),
            "{path}: {r:?}"
        );
    }
    // Shell metacharacters in the path are just a (missing) name.
    let r = f.get(&f.target("app1", "/$(touch /tmp/pwned)`id`;x")).await;
    assert_eq!(r.status, 404);
    let (_, out, _) = e2e::sh_root(&f.gardend.client(), &f.handle, "ls /tmp", WAIT).await;
    assert!(!out.contains("pwned"), "{out}");

    // Signatures: forged, altered, for another instance, expired, incomplete.
    let good = f.target("app1", "/app/hello.txt");
    let (path_part, query) = good.split_once('?').unwrap();
    let hmac = query.split('&').find(|p| p.starts_with("hmac=")).unwrap();
    let forged = good.replace(hmac, &format!("hmac={}", "ab".repeat(64)));
    let altered = good.replace("hello.txt", "zeros.bin");
    let other = good.replace("/instance_paths/app1", "/instance_paths/app2");
    let not_hex = good.replace(hmac, "hmac=zz");
    for bad in [&forged, &altered, &other, &not_hex] {
        let r = f.get(bad).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (401, "Invalid HMAC"),
            "{bad}"
        );
    }
    let old = agent::signer::unix_now() - agent::signer::MAX_AGE_SECS - 5;
    let expired = format!(
        "{path_part}?{}",
        f.cell.signer.signed_query(path_part, "/app/hello.txt", old)
    );
    let r = f.get(&expired).await;
    assert_eq!((r.status, r.error().as_str()), (400, "Url expired"));
    for missing in ["hmac=", "timestamp=", "path="] {
        let stripped: Vec<&str> = query
            .split('&')
            .filter(|p| !p.starts_with(missing))
            .collect();
        let r = f.get(&format!("{path_part}?{}", stripped.join("&"))).await;
        assert_eq!(r.status, 400, "without {missing}");
    }
    let r = f.get(path_part).await;
    assert_eq!(r.status, 400);

    // Owners: unknown, not available, container gone.
    let r = f.get(&f.target("nobody", "/")).await;
    assert_eq!((r.status, r.error().as_str()), (404, "Unknown instance"));
    f.roots.set("starting", Lookup::Unavailable);
    let r = f.get(&f.target("starting", "/")).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (503, "Instance unavailable")
    );
    f.roots.set(
        "gone",
        Lookup::Root(FileRoot::Container {
            handle: "no-such-container".into(),
            base: "/home/vcap".into(),
        }),
    );
    let r = f.get(&f.target("gone", "/")).await;
    assert_eq!(
        (r.status, r.error().as_str()),
        (503, "Instance unavailable")
    );

    // Staging URLs: same checks, another route and base.
    f.roots.set(
        "staging:t1",
        Lookup::Root(FileRoot::Container {
            handle: f.handle.clone(),
            base: "/home/vcap/logs".into(),
        }),
    );
    let staging = f.cell.file_url("/staging_tasks/t1/file_path", "/app.log");
    let staging = staging.split_once(".cell.test").unwrap().1;
    let r = f.get(staging).await;
    assert_eq!((r.status, r.text().as_str()), (200, "old\n"));
    let r = f.get(&staging.replace("/t1/", "/t2/")).await;
    assert_eq!(r.status, 401);

    f.destroy().await;
}

/// A huge directory is listed within the cap, and listing it does not take long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_logs_on_the_host_and_large_listings() {
    e2e::require_root!();
    let f = Fixture::start(60).await;
    f.vcap("mkdir many && cd many && i=0; while [ $i -lt 3000 ]; do : > f$i; i=$((i+1)); done")
        .await;
    let started = std::time::Instant::now();
    let r = f.get(&f.target("app1", "/many")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().lines().count(), 3000);
    assert!(r
        .text()
        .lines()
        .all(|l| l.ends_with(" 0B") && l.len() == 45));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    // A crashed instance's logs kept on the host.
    let crash = tempfile::tempdir().unwrap();
    let root = crash.path().join("crash");
    std::fs::create_dir_all(root.join("logs")).unwrap();
    std::fs::write(root.join("logs/stdout.log"), b"before the crash\n").unwrap();
    std::fs::write(crash.path().join("secret"), b"host secret").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("logs/evil")).unwrap();
    std::os::unix::fs::symlink("../../secret", root.join("logs/up")).unwrap();
    f.roots
        .set("crashed", Lookup::Root(FileRoot::Host(root.clone())));
    let r = f.get(&f.target("crashed", "/logs")).await;
    assert_eq!(
        r.text(),
        [
            line("evil", "11B"),
            line("stdout.log", "17B"),
            line("up", "12B")
        ]
        .map(|l| l + "\n")
        .concat()
    );
    let r = f.get(&f.target("crashed", "/logs/stdout.log")).await;
    assert_eq!((r.status, r.text().as_str()), (200, "before the crash\n"));
    for path in ["/logs/evil", "/logs/up", "/../secret", "/logs/../../secret"] {
        let r = f.get(&f.target("crashed", path)).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (403, "Not accessible"),
            "{path}"
        );
    }
    let r = f.get(&f.target("crashed", "/logs/nothing")).await;
    assert_eq!(r.status, 404);

    f.destroy().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_a_growing_file_until_it_goes() {
    e2e::require_root!();
    let f = Fixture::start(3).await;
    f.vcap("mkdir logs && printf 'old\\n' > logs/grow.log && printf '0123456789' > logs/off.log")
        .await;

    // From the end: only what is appended, then the stream ends when the file is renamed.
    let t = f.target("app1", "/logs/grow.log") + "&tail=true";
    let mut conn = Conn::open(f.port, &t, &[]).await;
    let (status, headers) = conn.head().await;
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked"));
    // The helper is running when the first append happens.
    assert!(
        eventually(WAIT, || async {
            !processes_mentioning("/logs/grow.log").is_empty()
        })
        .await
    );
    f.vcap("echo one >> logs/grow.log").await;
    while !dechunk(&conn.buf).0.ends_with(b"one\n") {
        assert!(conn.fill().await, "closed early: {:?}", conn.buf);
    }
    f.vcap("echo two >> logs/grow.log && mv logs/grow.log logs/grow.log.1")
        .await;
    while conn.fill().await {}
    let (data, complete) = dechunk(&conn.buf);
    assert_eq!(String::from_utf8_lossy(&data), "one\ntwo\n");
    assert!(complete, "a removed file ends the stream cleanly");

    // From an offset, then removal.
    let t = f.target("app1", "/logs/off.log") + "&tail=true&tail_offset=4";
    let mut conn = Conn::open(f.port, &t, &[]).await;
    assert_eq!(conn.head().await.0, 200);
    while dechunk(&conn.buf).0 != b"456789" {
        assert!(conn.fill().await);
    }
    f.vcap("rm logs/off.log").await;
    while conn.fill().await {}
    assert!(dechunk(&conn.buf).1);
    let r = f
        .get(&(f.target("app1", "/logs/grow.log.1") + "&tail=true&tail_offset=-1"))
        .await;
    assert_eq!(r.status, 500);

    // Idle for streaming_timeout (3 s): the connection is cut without a terminating chunk,
    // and the helper in the container is killed.
    f.vcap("printf 'x' > logs/idle.log").await;
    let t = f.target("app1", "/logs/idle.log") + "&tail=true";
    let started = std::time::Instant::now();
    let r = get(f.port, &t, &[]).await;
    assert_eq!(r.status, 200);
    assert!(!r.complete, "an idle tail is cut, not finished: {r:?}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert!(
        eventually(WAIT, || async {
            processes_mentioning("/logs/idle.log").is_empty()
        })
        .await,
        "{:?}",
        processes_mentioning("/logs/idle.log")
    );

    // The client goes away: the helper is killed (well before the idle timeout would).
    let t = f.target("app1", "/logs/gone.log") + "&tail=true";
    f.vcap("printf 'x' > logs/gone.log").await;
    let mut conn = Conn::open(f.port, &t, &[]).await;
    assert_eq!(conn.head().await.0, 200);
    assert!(
        eventually(WAIT, || async {
            !processes_mentioning("/logs/gone.log").is_empty()
        })
        .await
    );
    drop(conn);
    let gone = eventually(Duration::from_secs(10), || async {
        // Data to send is what makes the server notice the closed connection.
        f.vcap("echo more >> logs/gone.log").await;
        processes_mentioning("/logs/gone.log").is_empty()
    })
    .await;
    assert!(gone, "{:?}", processes_mentioning("/logs/gone.log"));

    f.destroy().await;
}

/// The request target (path and query) of a directory-server URL handed out by an agent.
fn target_of(url: &str) -> String {
    let rest = url.split_once("://").expect("absolute URL").1;
    rest[rest.find('/').expect("a path")..].to_string()
}

/// `dea.find.droplet` for `app` with `path`: (state, file_uri_v2 target) of its instance.
async fn file_uri(bus: &agent::bus::Bus, app: &str, path: &str) -> Option<(String, String)> {
    let replies: Vec<serde_json::Value> = bus
        .gather(
            "dea.find.droplet",
            &serde_json::json!({"droplet": app, "path": path}),
            Duration::from_millis(1000),
        )
        .await
        .ok()?;
    let r = replies.into_iter().next()?;
    Some((
        r["state"].as_str()?.to_string(),
        target_of(r["file_uri_v2"].as_str()?),
    ))
}

/// The whole path through a real agent: an app that plants symlinks out of its home, file
/// URLs from `dea.find.droplet`, reading, Range, tail of the app's growing log, escapes and
/// tampering refused, the crash logs served from the host after a crash, and every URL dead
/// once the agent restarts (its key is per boot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_urls_from_a_running_agent() {
    e2e::require_root!();
    use e2e::agent::{bus, droplet, sha1_hex, watch, Agent, FileServer};
    const LONG: Duration = Duration::from_secs(60);
    let app = droplet(
        &[("hello.txt", "hello from the droplet\n", 0o644)],
        "echo $$ > ../app.pid; ln -s /etc ../evil; ln -s ../.. up; echo started; \
         while :; do echo tick; sleep 0.3; done",
    );
    let sha = sha1_hex(&app);
    let gardend = Gardend::start();
    let nats = Nats::start();
    let bus = bus(&nats).await;
    let adverts = watch(&bus, "dea.advertise").await;
    let mut agent = Agent::start(&gardend, &nats, "");
    let ad = adverts
        .wait_for(LONG, |_| true)
        .await
        .unwrap_or_else(|| panic!("no advertisement; log:\n{}", agent.log()));
    let files = FileServer::start(vec![("/d.tgz".into(), app)]).await;
    let start = serde_json::json!({
        "droplet": "files-app", "name": "files-app", "stack": "busybox",
        "uris": [], "prod": false, "sha1": sha,
        "executableUri": format!("{}/d.tgz", files.base),
        "version": "v1", "services": [],
        "limits": {"mem": 64, "disk": 256, "fds": 1024},
        "env": [], "cc_partition": "default", "index": 0
    });
    bus.publish(format!("dea.{}.start", ad["id"].as_str().unwrap()), &start)
        .await;
    bus.flush().await;
    let running = eventually(LONG, || async {
        matches!(file_uri(&bus, "files-app", "/").await, Some((s, _)) if s == "RUNNING")
    })
    .await;
    assert!(running, "never RUNNING; log:\n{}", agent.log());
    let port = agent.dir_port;
    let fetch = |path: &'static str| {
        let bus = bus.clone();
        async move {
            let (_, t) = file_uri(&bus, "files-app", path).await.expect("find reply");
            (t.clone(), get(port, &t, &[]).await)
        }
    };
    // The app has started writing its log.
    assert!(
        eventually(LONG, || async {
            fetch("/logs/stdout.log").await.1.text().contains("tick")
        })
        .await
    );

    let (_, r) = fetch("/").await;
    assert_eq!(r.status, 200, "{r:?}");
    for want in [line("app/", "-"), line("logs/", "-"), line("evil", "4B")] {
        assert!(
            r.text().lines().any(|l| l == want),
            "{want:?} in\n{}",
            r.text()
        );
    }
    let (t, r) = fetch("/app/hello.txt").await;
    assert_eq!(r.text(), "hello from the droplet\n");
    let r = get(port, &t, &[("Range", "bytes=11-14")]).await;
    assert_eq!((r.status, r.text().as_str()), (206, "the "));
    for path in [
        "/evil/passwd",
        "/../../etc/passwd",
        "/app/up/../etc/passwd",
        "/evil",
    ] {
        let (_, r) = fetch(path).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (403, "Not accessible"),
            "{path}"
        );
    }
    let (_, r) = fetch("/nothing/here").await;
    assert_eq!(r.status, 404);
    // Tampering with a genuine URL.
    let altered = t.replace("hello.txt", "..%2F..%2F..%2Fetc%2Fpasswd");
    let forged = {
        let hmac = t.split('&').find(|p| p.contains("hmac=")).unwrap();
        let hmac = hmac.rsplit('?').next().unwrap();
        t.replace(hmac, &format!("hmac={}", "0".repeat(128)))
    };
    for bad in [&altered, &forged] {
        let r = get(port, bad, &[]).await;
        assert_eq!(
            (r.status, r.error().as_str()),
            (401, "Invalid HMAC"),
            "{bad}"
        );
    }

    // Tail of the app's own log: only new ticks arrive.
    let (t, _) = fetch("/logs/stdout.log").await;
    let mut conn = Conn::open(port, &(t + "&tail=true"), &[]).await;
    assert_eq!(conn.head().await.0, 200);
    while dechunk(&conn.buf)
        .0
        .windows(5)
        .filter(|w| w == b"tick\n")
        .count()
        < 2
    {
        assert!(conn.fill().await);
    }
    let tailed = String::from_utf8_lossy(&dechunk(&conn.buf).0).into_owned();
    assert!(!tailed.contains("started"), "{tailed}");
    drop(conn);

    // Crash the app: its logs are then served from the host.
    let exits = watch(&bus, "droplet.exited").await;
    let handles = gardend.client().list(&[]).await.unwrap();
    assert_eq!(handles.len(), 1, "{handles:?}");
    e2e::sh_root(
        &gardend.client(),
        &handles[0],
        "kill -9 $(cat /home/vcap/app.pid)",
        WAIT,
    )
    .await;
    exits
        .wait_for(LONG, |m| m["droplet"] == "files-app")
        .await
        .unwrap_or_else(|| panic!("no droplet.exited; log:\n{}", agent.log()));
    let crashed = eventually(LONG, || async {
        matches!(file_uri(&bus, "files-app", "/").await, Some((s, _)) if s == "CRASHED")
    })
    .await;
    assert!(crashed);
    let (_, r) = fetch("/logs/stdout.log").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().starts_with("started\ntick\n"), "{}", r.text());
    let (old, r) = fetch("/").await;
    assert!(
        r.text().lines().any(|l| l == line("logs/", "-")),
        "{}",
        r.text()
    );
    for path in ["/../../../../etc/passwd", "/logs/../../../etc/passwd"] {
        let (_, r) = fetch(path).await;
        assert_eq!(r.status, 403, "{path}: {r:?}");
    }

    // A new boot, a new key: yesterday's URLs are forged ones.
    assert_eq!(agent.terminate().and_then(|s| s.code()), Some(0));
    agent.spawn();
    let up = eventually(LONG, || async {
        TcpStream::connect(("127.0.0.1", port)).await.is_ok()
    })
    .await;
    assert!(up, "log:\n{}", agent.log());
    let r = get(port, &old, &[]).await;
    assert_eq!((r.status, r.error().as_str()), (401, "Invalid HMAC"));
    assert_eq!(agent.terminate().and_then(|s| s.code()), Some(0));
    assert!(gardend.client().list(&[]).await.unwrap().is_empty());
}
