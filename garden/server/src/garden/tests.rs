//! The core against the recording fake kernel: lifecycle order and rollback, grace time and
//! stream retention, without root. (`tests/core.rs` runs the same core on the real kernel.)

use std::sync::Arc;
use std::time::Duration;

use garden_api::{ContainerInfo, ContainerSpec, GardenError, HandlesResponse, ProcessSpec};

use super::Garden;
use crate::config::Config;
use crate::kernel::fake::{Call, Fake, Kind};
use crate::kernel::Signal;
use crate::service::{ProcessSession, Reply, Request, Service};

struct Setup {
    garden: Arc<Garden>,
    fake: Arc<Fake>,
    tmp: tempfile::TempDir,
}

fn setup() -> Setup {
    setup_with(Config::default())
}

fn setup_with(base: Config) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let depot = tmp.path().join("depot");
    let image = tmp.path().join("rootfs");
    std::fs::create_dir_all(&depot).unwrap();
    std::fs::create_dir_all(&image).unwrap();
    let fake = Fake::new();
    let config = Config { depot, ..base };
    let plan = rootfs::RootfsPlan {
        lower_dirs: vec![image],
        env: vec!["FROM_IMAGE=1".into()],
        ..rootfs::RootfsPlan::default()
    };
    let garden = Garden::with_kernel(config, fake.clone(), plan);
    Setup { garden, fake, tmp }
}

fn json<T: serde::de::DeserializeOwned>(r: Result<Reply, GardenError>) -> T {
    match r.expect("request succeeds") {
        Reply::Json(b) => serde_json::from_slice(&b).expect("json"),
        other => panic!("expected json, got {other:?}"),
    }
}

impl Setup {
    async fn create(&self, handle: &str, grace_time: u64) -> Result<Reply, GardenError> {
        self.garden
            .handle(Request::Create(Box::new(ContainerSpec {
                handle: handle.into(),
                grace_time,
                ..Default::default()
            })))
            .await
    }

    async fn list(&self) -> Vec<String> {
        let r: HandlesResponse = json(self.garden.handle(Request::List { filter: vec![] }).await);
        r.handles
    }

    async fn run(&self, handle: &str, id: &str, path: &str, args: &[&str]) -> ProcessSession {
        let spec = ProcessSpec {
            id: id.into(),
            path: path.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        let reply = self
            .garden
            .handle(Request::Run {
                handle: handle.into(),
                spec: Box::new(spec),
            })
            .await
            .expect("run");
        match reply {
            Reply::Process(s) => s,
            other => panic!("expected a session, got {other:?}"),
        }
    }

    /// Everything a session's stdout (or stderr) request yields, until the stream ends.
    async fn output(&self, handle: &str, s: &ProcessSession, stdout: bool) -> Vec<u8> {
        let (handle, process_id, stream_id) =
            (handle.into(), s.process_id.clone(), s.stream_id.clone());
        let request = if stdout {
            Request::Stdout {
                handle,
                process_id,
                stream_id,
            }
        } else {
            Request::Stderr {
                handle,
                process_id,
                stream_id,
            }
        };
        let Reply::Output(mut o) = self.garden.handle(request).await.expect("output") else {
            panic!("expected an output stream")
        };
        let mut out = Vec::new();
        while let Some(chunk) = o.chunks.recv().await {
            out.extend_from_slice(&chunk);
        }
        out
    }

    /// Calls recorded from index `from` on.
    fn calls_since(&self, from: usize) -> Vec<Call> {
        self.fake.calls()[from..].to_vec()
    }
}

fn call(make: fn(String) -> Call, handle: &str) -> Call {
    make(handle.to_string())
}

#[tokio::test]
async fn create_run_destroy_in_order_and_nothing_left() {
    let t = setup();
    json::<serde_json::Value>(t.create("c1", 0).await);
    assert_eq!(
        t.fake.calls(),
        [
            call(Call::AttachDisk, "c1"),
            call(Call::AllocateNetwork, "c1"),
            call(Call::CreateSandbox, "c1"),
            call(Call::AttachNetwork, "c1"),
        ]
    );
    let bundle = t.tmp.path().join("depot/c1");
    assert!(bundle.join("container.json").is_file(), "record written");
    assert_eq!(t.list().await, ["c1"]);
    let info: ContainerInfo = json(
        t.garden
            .handle(Request::Info {
                handle: "c1".into(),
            })
            .await,
    );
    assert_eq!(info.state, "active");
    let props = info.properties.unwrap();
    assert_eq!(props["garden.state"], "created");
    assert_eq!(props["garden.network.container-ip"], "10.0.0.2");

    let session = t.run("c1", "p1", "echo", &["hello", "there"]).await;
    assert_eq!(t.output("c1", &session, true).await, b"hello there\n");
    assert_eq!(t.output("c1", &session, false).await, b"");
    assert_eq!(session.exit.await.unwrap(), Ok(0));

    let before = t.fake.calls().len();
    json::<serde_json::Value>(
        t.garden
            .handle(Request::Destroy {
                handle: "c1".into(),
            })
            .await,
    );
    // Destroy answers once the processes are gone and the handle is out of List; the rest is
    // reclaimed in the background.
    assert!(t.list().await.is_empty());
    t.garden.settled().await;
    assert_eq!(
        t.calls_since(before),
        [
            call(Call::Kill, "c1"),
            call(Call::ReleaseNetwork, "c1"),
            call(Call::RemoveCgroup, "c1"),
            call(Call::ReleaseDisk, "c1"),
        ]
    );
    assert!(!bundle.exists(), "bundle removed");
    assert!(t.list().await.is_empty());
    let gone = t
        .garden
        .handle(Request::Info {
            handle: "c1".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(gone, GardenError::ContainerNotFound { .. }),
        "{gone:?}"
    );
}

#[tokio::test]
async fn a_failed_reclamation_step_is_retried_and_holds_the_handle_until_done() {
    let t = setup();
    json::<serde_json::Value>(t.create("c2", 0).await);
    t.fake.fail_next(Kind::ReleaseNetwork, 2);
    json::<serde_json::Value>(
        t.garden
            .handle(Request::Destroy {
                handle: "c2".into(),
            })
            .await,
    );
    assert!(t.list().await.is_empty(), "gone from List at once");
    // The same handle waits for the (retried) reclamation, then gets a fresh container.
    json::<serde_json::Value>(t.create("c2", 0).await);
    let releases = t
        .fake
        .calls()
        .iter()
        .filter(|c| **c == call(Call::ReleaseNetwork, "c2"))
        .count();
    assert_eq!(releases, 3, "two failures, then the release that succeeded");
    assert_eq!(t.list().await, ["c2"]);
    let bundle = t.tmp.path().join("depot/c2");
    assert!(
        !bundle.join("destroying").exists(),
        "the new container is not marked"
    );
}

/// Destroys answer at once however many there are; their reclamations run at most
/// `--reclaim-concurrency` at a time, and all of them finish.
#[tokio::test]
async fn reclamations_run_a_bounded_number_at_a_time() {
    let t = setup_with(Config {
        reclaim_concurrency: 2,
        ..Config::default()
    });
    t.fake.slow_releases(Duration::from_millis(200));
    let handles: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    for h in &handles {
        json::<serde_json::Value>(t.create(h, 0).await);
    }
    for h in &handles {
        json::<serde_json::Value>(
            t.garden
                .handle(Request::Destroy { handle: h.clone() })
                .await,
        );
    }
    // Every destroy answered while (at least) the ones waiting for a slot are still queued.
    assert!(
        t.garden.reclaiming.len() >= 4,
        "{}",
        t.garden.reclaiming.len()
    );
    assert!(t.list().await.is_empty());
    t.garden.reclaiming.wait_all().await;
    assert_eq!(t.fake.most_concurrent_releases(), 2);
    let released = t
        .fake
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::ReleaseNetwork(_)))
        .count();
    assert_eq!(released, 6);
}

#[tokio::test]
async fn a_create_waits_for_room_held_only_by_a_reclamation() {
    let t = setup_with(Config {
        max_containers: 1,
        ..Config::default()
    });
    json::<serde_json::Value>(t.create("m1", 0).await);
    let e = t.create("m2", 0).await.unwrap_err();
    assert!(e.to_string().contains("max containers reached"), "{e}");
    t.fake.fail_next(Kind::ReleaseNetwork, 1);
    json::<serde_json::Value>(
        t.garden
            .handle(Request::Destroy {
                handle: "m1".into(),
            })
            .await,
    );
    json::<serde_json::Value>(t.create("m2", 0).await);
    let calls = t.fake.calls();
    let released = calls
        .iter()
        .rposition(|c| *c == call(Call::ReleaseDisk, "m1"))
        .expect("m1 reclaimed");
    let attached = calls
        .iter()
        .position(|c| *c == call(Call::AttachDisk, "m2"))
        .expect("m2 created");
    assert!(released < attached, "{calls:?}");
    assert_eq!(t.list().await, ["m2"]);
}

#[tokio::test]
async fn a_failed_sandbox_undoes_disk_and_network_and_frees_the_handle() {
    let t = setup();
    t.fake.fail_next(Kind::CreateSandbox, 1);
    let e = t.create("c3", 0).await.unwrap_err();
    assert!(e.to_string().contains("fake failure"), "{e}");
    assert_eq!(
        t.fake.calls(),
        [
            call(Call::AttachDisk, "c3"),
            call(Call::AllocateNetwork, "c3"),
            call(Call::CreateSandbox, "c3"),
            call(Call::ReleaseDisk, "c3"),
            call(Call::ReleaseNetwork, "c3"),
        ]
    );
    assert!(!t.tmp.path().join("depot/c3").exists());
    assert!(t.list().await.is_empty());
    json::<serde_json::Value>(t.create("c3", 0).await);
    assert_eq!(t.list().await, ["c3"]);
}

#[tokio::test]
async fn a_failed_network_attach_destroys_what_was_made() {
    let t = setup();
    t.fake.fail_next(Kind::AttachNetwork, 1);
    let e = t.create("c4", 0).await.unwrap_err();
    assert!(e.to_string().starts_with("network setup: "), "{e}");
    let calls = t.fake.calls();
    for done in [
        Call::Kill,
        Call::ReleaseNetwork,
        Call::RemoveCgroup,
        Call::ReleaseDisk,
    ] {
        assert!(calls.contains(&call(done, "c4")), "{calls:?}");
    }
    assert!(t.list().await.is_empty());
}

const SECOND: u64 = 1_000_000_000;

#[tokio::test(start_paused = true)]
async fn grace_time_reaps_idle_containers_only() {
    let t = setup();
    json::<serde_json::Value>(t.create("idle", SECOND).await);
    json::<serde_json::Value>(t.create("busy", SECOND).await);
    json::<serde_json::Value>(t.create("forever", 0).await);
    let props: std::collections::BTreeMap<String, String> = json(
        t.garden
            .handle(Request::Properties {
                handle: "idle".into(),
            })
            .await,
    );
    assert_eq!(props["garden.grace-time"], SECOND.to_string());
    // An attached session keeps `busy` in use.
    let session = t.run("busy", "sleeper", "sleep", &["1000"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(t.list().await, ["busy", "forever", "idle"], "not yet");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(t.list().await, ["busy", "forever"], "idle one reaped");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(t.list().await, ["busy", "forever"], "a session holds it");
    drop(session);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(t.list().await, ["forever"], "reaped once the client left");
    // A grace time set later counts from then; 0 turns it off again.
    json::<serde_json::Value>(
        t.garden
            .handle(Request::SetGraceTime {
                handle: "forever".into(),
                grace_time: 2 * SECOND,
            })
            .await,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    json::<serde_json::Value>(
        t.garden
            .handle(Request::SetGraceTime {
                handle: "forever".into(),
                grace_time: 0,
            })
            .await,
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(t.list().await, ["forever"]);
}

#[tokio::test(start_paused = true)]
async fn unclaimed_streams_are_kept_a_minute_after_exit() {
    let t = setup();
    json::<serde_json::Value>(t.create("s", 0).await);
    let session = t.run("s", "quick", "echo", &["late", "reader"]).await;
    let ProcessSession {
        process_id,
        stream_id,
        exit,
        input,
        guard,
    } = session;
    assert_eq!(exit.await.unwrap(), Ok(0));
    // The client went away after the exit without reading; its streams stay claimable.
    drop((input, guard));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let again = |exit| ProcessSession {
        process_id: process_id.clone(),
        stream_id: stream_id.clone(),
        input: tokio::sync::mpsc::unbounded_channel().0,
        exit,
        guard: crate::service::ActivityGuard::none(),
    };
    let view = again(tokio::sync::oneshot::channel().1);
    assert_eq!(t.output("s", &view, true).await, b"late reader\n");
    tokio::time::sleep(Duration::from_secs(31)).await;
    // STREAM_RETENTION after the exit: stderr, never claimed, is forgotten (an empty stream,
    // as Go answers for unknown ones), and the claimed stdout cannot be claimed twice.
    assert_eq!(t.output("s", &view, false).await, b"");
    assert_eq!(t.output("s", &view, true).await, b"");
}

#[tokio::test(start_paused = true)]
async fn a_detached_session_of_a_running_process_drops_its_streams() {
    let t = setup();
    json::<serde_json::Value>(t.create("d", 0).await);
    let session = t.run("d", "long", "sleep", &["1000"]).await;
    let (process_id, stream_id) = (session.process_id.clone(), session.stream_id.clone());
    drop(session.input);
    // The process keeps running; once serve_input saw the client go, the streams are gone.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let request = Request::Stdout {
        handle: "d".into(),
        process_id: process_id.clone(),
        stream_id,
    };
    let Reply::Output(mut o) = t.garden.handle(request).await.unwrap() else {
        panic!("expected an output stream")
    };
    let ended = tokio::time::timeout(Duration::from_secs(1), o.chunks.recv()).await;
    assert!(matches!(ended, Ok(None)), "detached stream must be empty");
    // Attach again: a new session on the same, still running process; Stop ends it.
    let reply = t
        .garden
        .handle(Request::Attach {
            handle: "d".into(),
            process_id,
        })
        .await
        .unwrap();
    let Reply::Process(attached) = reply else {
        panic!("expected a session")
    };
    json::<serde_json::Value>(
        t.garden
            .handle(Request::Stop {
                handle: "d".into(),
                kill: false,
            })
            .await,
    );
    assert_eq!(attached.exit.await.unwrap(), Ok(143));
    assert!(t
        .fake
        .calls()
        .contains(&Call::SignalAll("d".into(), Signal::Terminate)));
}

#[tokio::test(start_paused = true)]
async fn a_restart_adopts_properties_exit_codes_and_starts_the_grace_timer_afresh() {
    let Setup { garden, fake, tmp } = setup();
    let t = Setup { garden, fake, tmp };
    json::<serde_json::Value>(t.create("kept", 10 * SECOND).await);
    json::<serde_json::Value>(
        t.garden
            .handle(Request::SetProperty {
                handle: "kept".into(),
                key: "k".into(),
                value: "v".into(),
            })
            .await,
    );
    // Half-made: a bundle without a record (create interrupted) is not adopted, nor one whose
    // destroy began.
    let depot = t.tmp.path().join("depot");
    json::<serde_json::Value>(t.create("doomed", 0).await);
    super::depot::mark_destroying(&depot.join("doomed"), true);
    std::fs::create_dir_all(depot.join("half")).unwrap();
    // garden-init recorded an exit while no gardend ran.
    let procs = crate::runtime::processes_dir(&depot.join("kept"));
    std::fs::create_dir_all(&procs).unwrap();
    std::fs::write(procs.join("gone.exit"), "3\n").unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;

    // kill -9: the old core vanishes; a new one on the same depot adopts what is whole.
    let Setup { garden, tmp, .. } = t;
    drop(garden);
    let fake = Fake::new();
    let config = Config {
        depot: depot.clone(),
        ..Config::default()
    };
    let plan = rootfs::RootfsPlan::single(tmp.path().join("rootfs"));
    let garden = Garden::with_kernel(config, fake.clone(), plan);
    garden
        .adopt_all(super::adopt::survivors(&depot, |_| true))
        .await;
    let t = Setup { garden, fake, tmp };
    assert_eq!(t.list().await, ["kept"]);
    assert!(t.fake.calls().contains(&Call::AdoptSandbox("kept".into())));
    let props: std::collections::BTreeMap<String, String> = json(
        t.garden
            .handle(Request::Properties {
                handle: "kept".into(),
            })
            .await,
    );
    assert_eq!(props["k"], "v");
    assert_eq!(props["garden.grace-time"], (10 * SECOND).to_string());
    let session = match t
        .garden
        .handle(Request::Attach {
            handle: "kept".into(),
            process_id: "gone".into(),
        })
        .await
        .expect("attach")
    {
        Reply::Process(s) => s,
        other => panic!("expected a session, got {other:?}"),
    };
    // The session's other parts (and its hold on the grace timer) go at the block's end.
    let exit = {
        let s = session;
        s.exit
    };
    assert_eq!(exit.await.unwrap(), Ok(3));
    // 8 s before the restart do not count: not reaped 10 s after create...
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(t.list().await, ["kept"]);
    // ...but 10 s after the last use.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(t.list().await.is_empty());
    assert!(t.fake.calls().contains(&Call::Kill("kept".into())));
}

/// Run `spec` in `handle`; the session or the error.
async fn run_spec(t: &Setup, handle: &str, spec: ProcessSpec) -> Result<Reply, GardenError> {
    t.garden
        .handle(Request::Run {
            handle: handle.into(),
            spec: Box::new(spec),
        })
        .await
}

fn pea_spec(t: &Setup, id: &str, limits: Option<garden_api::ProcessLimits>) -> ProcessSpec {
    let image = t.tmp.path().join("pea-image");
    std::fs::create_dir_all(&image).unwrap();
    ProcessSpec {
        id: id.into(),
        path: "echo".into(),
        args: vec!["hi".into()],
        env: vec!["FROM_SPEC=1".into()],
        image: garden_api::ImageRef {
            uri: image.display().to_string(),
            ..Default::default()
        },
        limits,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_pea_is_root_in_slash_with_its_own_image_env_and_limits_if_given() {
    let t = setup();
    json::<serde_json::Value>(t.create("c1", 0).await);
    let own = garden_api::ProcessLimits {
        memory_limits: garden_api::MemoryLimits {
            limit_in_bytes: 64 << 20,
        },
        ..Default::default()
    };
    for (id, limits) in [
        ("shared", None),
        ("own", Some(own)),
        ("empty", Some(Default::default())),
    ] {
        let from = t.fake.calls().len();
        let Reply::Process(s) = run_spec(&t, "c1", pea_spec(&t, id, limits))
            .await
            .expect("run")
        else {
            panic!("expected a session")
        };
        assert_eq!(t.output("c1", &s, true).await, b"hi\n");
        assert_eq!(s.exit.await.expect("exit"), Ok(0));
        let calls = t.calls_since(from);
        let [Call::SpawnPea {
            handle,
            request,
            resources,
            layers,
        }] = calls.as_slice()
        else {
            panic!("expected one pea spawn, got {calls:?}")
        };
        assert_eq!(handle, "c1");
        assert_eq!(request.id, id);
        assert_eq!((request.dir.as_str(), request.user.as_str()), ("/", ""));
        // Not the container image's env: the pea's own image has none here.
        assert_eq!(request.env, ["FROM_SPEC=1"]);
        assert_eq!(*layers, 1);
        let want = limits.map(|l| crate::kernel::Resources {
            memory_bytes: l.memory_limits.limit_in_bytes,
            ..Default::default()
        });
        assert_eq!(*resources, want, "{id}");
    }
    json::<serde_json::Value>(
        t.garden
            .handle(Request::Destroy {
                handle: "c1".into(),
            })
            .await,
    );
}

#[tokio::test]
async fn a_bad_pea_image_or_limit_fails_before_anything_is_made() {
    let t = setup();
    json::<serde_json::Value>(t.create("c1", 0).await);
    let from = t.fake.calls().len();
    let mut bad = pea_spec(&t, "p1", None);
    bad.image.uri = t.tmp.path().join("no-such-image").display().to_string();
    let e = run_spec(&t, "c1", bad).await.expect_err("bad image");
    assert!(e.to_string().contains("pea image"), "{e}");
    let tiny = garden_api::ProcessLimits {
        memory_limits: garden_api::MemoryLimits { limit_in_bytes: 1 },
        ..Default::default()
    };
    let e = run_spec(&t, "c1", pea_spec(&t, "p1", Some(tiny)))
        .await
        .expect_err("tiny memory limit");
    assert!(matches!(e, GardenError::BadRequest { .. }), "{e:?}");
    assert_eq!(t.calls_since(from), [], "no spawn");
    // The id was never taken.
    let Reply::Process(s) = run_spec(&t, "c1", pea_spec(&t, "p1", None))
        .await
        .expect("run")
    else {
        panic!("expected a session")
    };
    assert_eq!(s.exit.await.expect("exit"), Ok(0));
}

/// Waits until `n` warm containers are ready (the filler runs in the background).
async fn warm_ready(t: &Setup, n: usize) {
    for _ in 0..500 {
        if t.garden.warm.len() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{} warm containers, wanted {n}", t.garden.warm.len());
}

fn warm_setup(n: usize) -> Setup {
    setup_with(Config {
        warm_containers: n,
        ..Config::default()
    })
}

/// The warm names the fake made sandboxes under.
fn warm_names(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::CreateSandbox(h) if h.starts_with(super::warm::PREFIX) => Some(h.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_default_create_claims_a_warm_container_and_another_is_made() {
    let t = warm_setup(2);
    warm_ready(&t, 2).await;
    let made = warm_names(&t.fake.calls());
    assert_eq!(made.len(), 2);
    json::<serde_json::Value>(t.create("w1", 0).await);
    let calls = t.fake.calls();
    assert!(
        calls.contains(&Call::ClaimWarm {
            warm: made[0].clone(),
            handle: "w1".into(),
            hostname: "w1".into(),
        }),
        "{calls:?}"
    );
    assert!(!calls.contains(&Call::CreateSandbox("w1".into())));
    assert_eq!(t.list().await, ["w1"]);
    // Its bundle took the handle's name, and the record names the cgroup it was made with.
    let bundle = t.tmp.path().join("depot/w1");
    assert!(!t.tmp.path().join("depot").join(&made[0]).exists());
    let (record, _) = super::depot::read(&bundle).expect("record");
    assert_eq!(record.cgroup(), made[0]);
    // The pool is topped up, with a fresh one: none is handed out twice.
    warm_ready(&t, 2).await;
    let made = warm_names(&t.fake.calls());
    assert_eq!(made.len(), 3);
    json::<serde_json::Value>(t.create("w2", 0).await);
    assert!(t.fake.calls().contains(&Call::ClaimWarm {
        warm: made[1].clone(),
        handle: "w2".into(),
        hostname: "w2".into(),
    }));
    // Destroy reclaims it by its handle (network, disk) and its own cgroup.
    json::<serde_json::Value>(
        t.garden
            .handle(Request::Destroy {
                handle: "w1".into(),
            })
            .await,
    );
    t.garden.settled().await;
    let calls = t.fake.calls();
    assert!(calls.contains(&Call::ReleaseNetwork("w1".into())));
    assert!(calls.contains(&Call::RemoveCgroup(made[0].clone())));
    assert!(!bundle.exists());
}

#[tokio::test]
async fn creates_a_warm_container_cannot_serve_are_made_as_before() {
    let t = warm_setup(1);
    warm_ready(&t, 1).await;
    for (handle, spec) in [
        (
            "priv",
            ContainerSpec {
                privileged: true,
                ..Default::default()
            },
        ),
        (
            "net",
            ContainerSpec {
                network: "10.9.0.0/30".into(),
                ..Default::default()
            },
        ),
        (
            "img",
            ContainerSpec {
                image: garden_api::ImageRef {
                    uri: t.tmp.path().join("rootfs").display().to_string(),
                    ..Default::default()
                },
                ..Default::default()
            },
        ),
    ] {
        let spec = ContainerSpec {
            handle: handle.into(),
            ..spec
        };
        json::<serde_json::Value>(t.garden.handle(Request::Create(Box::new(spec))).await);
        assert!(
            t.fake.calls().contains(&Call::CreateSandbox(handle.into())),
            "{handle} made afresh"
        );
    }
    assert_eq!(t.garden.warm.len(), 1, "the warm one is still there");
}

#[tokio::test]
async fn limits_are_applied_to_a_claimed_warm_container() {
    let t = warm_setup(1);
    warm_ready(&t, 1).await;
    let warm = warm_names(&t.fake.calls()).remove(0);
    let spec = ContainerSpec {
        handle: "lim".into(),
        limits: garden_api::Limits {
            memory_limits: garden_api::MemoryLimits {
                limit_in_bytes: 64 << 20,
            },
            ..Default::default()
        },
        ..Default::default()
    };
    json::<serde_json::Value>(t.garden.handle(Request::Create(Box::new(spec))).await);
    let applied = t
        .fake
        .calls()
        .into_iter()
        .find_map(|c| match c {
            Call::ApplyResources(name, r) if name == warm => Some(r),
            _ => None,
        })
        .expect("limits applied");
    assert_eq!(applied.memory_bytes, 64 << 20);
}

#[tokio::test]
async fn a_full_address_pool_evicts_warm_containers() {
    let t = warm_setup(1);
    warm_ready(&t, 1).await;
    let warm = warm_names(&t.fake.calls()).remove(0);
    t.fake.fail_next(Kind::AllocateNetwork, 1);
    let spec = ContainerSpec {
        handle: "p".into(),
        privileged: true,
        ..Default::default()
    };
    json::<serde_json::Value>(t.garden.handle(Request::Create(Box::new(spec))).await);
    let calls = t.fake.calls();
    assert!(calls.contains(&Call::Kill(warm.clone())), "{calls:?}");
    assert!(calls.contains(&Call::ReleaseNetwork(warm.clone())));
    assert!(calls.contains(&Call::CreateSandbox("p".into())));
}

#[tokio::test]
async fn shutdown_removes_the_warm_containers() {
    let t = warm_setup(2);
    warm_ready(&t, 2).await;
    t.garden.shutdown().await;
    assert_eq!(t.garden.warm.len(), 0);
    let calls = t.fake.calls();
    for w in warm_names(&calls) {
        assert!(calls.contains(&Call::Kill(w.clone())), "{w}: {calls:?}");
        assert!(calls.contains(&Call::ReleaseNetwork(w.clone())));
        assert!(calls.contains(&Call::RemoveCgroup(w.clone())));
        assert!(!t.tmp.path().join("depot").join(&w).exists());
    }
}

#[tokio::test]
async fn a_warm_container_whose_init_died_is_removed_not_handed_out() {
    let t = warm_setup(2);
    warm_ready(&t, 2).await;
    let made = warm_names(&t.fake.calls());
    t.garden.warm.kill_oldest().await;
    json::<serde_json::Value>(t.create("live", 0).await);
    let calls = t.fake.calls();
    assert!(
        calls.contains(&Call::ClaimWarm {
            warm: made[1].clone(),
            handle: "live".into(),
            hostname: "live".into(),
        }),
        "the live one is claimed: {calls:?}"
    );
    assert!(calls.contains(&Call::ReleaseNetwork(made[0].clone())));
    assert!(calls.contains(&Call::RemoveCgroup(made[0].clone())));
}
