//! Concurrency against a real gardend: racing creates of one handle, destroy racing create,
//! concurrent property writes, many processes at once, files after stop.

use e2e::{assert_no_leaks as no_leaks, container_spec as spec, run_output, sh, Gardend};
use garden_api::GardenError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creates_of_one_handle() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    for round in 0..5 {
        let h = format!("e2e-race-{round}");
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (c, h) = (c.clone(), h.clone());
            set.spawn(async move { c.create(&spec(&h)).await });
        }
        let mut ok = 0;
        while let Some(r) = set.join_next().await {
            match r.expect("task") {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(
                    e.garden(),
                    Some(&GardenError::generic(format!(
                        "Handle '{h}' already in use"
                    ))),
                    "{e:?}"
                ),
            }
        }
        assert_eq!(ok, 1, "exactly one create of {h} must win");
        // The winner is intact: losers did not clean up its files.
        let out = run_output(&c, &h, &sh("echo alive"), None)
            .await
            .expect("run in winner");
        assert_eq!(out.stdout_text(), "alive\n");
        assert!(g.depot.join(&h).join("init.json").exists());
        c.destroy(&h).await.expect("destroy");
        no_leaks(&h, &g);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_racing_create_leaves_nothing() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    for round in 0..8 {
        let h = format!("e2e-cd-{round}");
        let c2 = c.clone();
        let h2 = h.clone();
        let create = tokio::spawn(async move { c2.create(&spec(&h2)).await });
        // Keep destroying until the handle is gone for good after the create finished.
        let mut destroyed = false;
        for _ in 0..200 {
            match c.destroy(&h).await {
                Ok(()) => {
                    destroyed = true;
                    break;
                }
                Err(e) if matches!(e.garden(), Some(GardenError::ContainerNotFound { .. })) => {
                    if create.is_finished() {
                        break;
                    }
                }
                Err(e) => panic!("destroy of {h}: {e:?}"),
            }
            tokio::task::yield_now().await;
        }
        let created = create.await.expect("task");
        if created.is_ok() && !destroyed {
            c.destroy(&h).await.expect("destroy after create");
        }
        let all = c
            .list(&[("garden.state".into(), "all".into())])
            .await
            .expect("list");
        assert!(
            !all.contains(&h),
            "{h} still listed: created={created:?} destroyed={destroyed}"
        );
        no_leaks(&h, &g);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_property_writes_all_land() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = "e2e-props-race";
    c.create(&spec(h)).await.expect("create");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..60 {
        let c = c.clone();
        set.spawn(async move { c.set_property(h, &format!("k{i}"), &format!("v{i}")).await });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task").expect("set_property");
    }
    let props = c.properties(h).await.expect("properties");
    for i in 0..60 {
        assert_eq!(
            props.get(&format!("k{i}")),
            Some(&format!("v{i}")),
            "k{i} lost"
        );
    }
    // What is on disk is complete, valid JSON too (state lives in the depot).
    let on_disk = std::fs::read_to_string(g.depot.join(h).join("properties.json")).expect("read");
    let v: serde_json::Value = serde_json::from_str(&on_disk).expect("properties.json is JSON");
    let text = v.to_string();
    for i in 0..60 {
        assert!(
            text.contains(&format!("\"k{i}\"")),
            "k{i} missing on disk: {text}"
        );
    }
    c.destroy(h).await.expect("destroy");
    no_leaks(h, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_processes_at_once() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = "e2e-many";
    c.create(&spec(h)).await.expect("create");
    let mut set = tokio::task::JoinSet::new();
    for i in 0..30 {
        let c = c.clone();
        set.spawn(async move {
            let p = garden_api::ProcessSpec {
                path: "/bin/sh".into(),
                args: vec![
                    "-c".into(),
                    "echo $0; exit $(($0 % 7))".into(),
                    i.to_string(),
                ],
                ..Default::default()
            };
            let out = run_output(&c, h, &p, None).await.expect("run");
            (i, out)
        });
    }
    while let Some(r) = set.join_next().await {
        let (i, out) = r.expect("task");
        assert_eq!((out.status, out.stdout_text()), (i % 7, format!("{i}\n")));
    }
    c.destroy(h).await.expect("destroy");
    no_leaks(h, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_metrics_after_stop() {
    e2e::require_root!();
    let g = Gardend::start();
    let c = g.client();
    let h = "e2e-stopped-files";
    c.create(&spec(h)).await.expect("create");
    run_output(&c, h, &sh("echo kept > /kept.txt"), None)
        .await
        .expect("write");
    c.stop(h, true).await.expect("stop");
    assert_eq!(c.info(h).await.expect("info").state, "stopped");
    let mut r = c
        .stream_out(h, "", "/kept.txt")
        .await
        .expect("stream out after stop");
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut r, &mut bytes)
        .await
        .expect("read");
    let mut a = tar::Archive::new(&bytes[..]);
    let mut e = a
        .entries()
        .expect("entries")
        .next()
        .expect("one entry")
        .expect("entry");
    let mut s = String::new();
    std::io::Read::read_to_string(&mut e, &mut s).expect("content");
    assert_eq!(s, "kept\n");
    let mut tar_bytes = Vec::new();
    {
        let mut b = tar::Builder::new(&mut tar_bytes);
        let mut hd = tar::Header::new_gnu();
        hd.set_size(3);
        hd.set_mode(0o644);
        hd.set_cksum();
        b.append_data(&mut hd, "in.txt", &b"new"[..])
            .expect("append");
        b.finish().expect("finish");
    }
    c.stream_in(h, "", "/after", std::io::Cursor::new(tar_bytes))
        .await
        .expect("stream in after stop");
    c.metrics(h).await.expect("metrics after stop");
    c.destroy(h).await.expect("destroy");
    no_leaks(h, &g);
}
