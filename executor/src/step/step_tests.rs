//! Engine tests against the fake Garden.

use std::time::Duration;

use garden_api::Signal;

use super::testutil::{run, Fixture};
use super::*;
use crate::garden::fake::Script;
use crate::log::Stream;
use crate::testing::FileServer;

fn script(stdout: &str, exit: i32) -> Script {
    Script {
        stdout: stdout.into(),
        exit,
        ..Default::default()
    }
}

#[tokio::test]
async fn run_success_logs_output_and_exit_line() {
    let f = Fixture::new().await;
    f.garden.script(
        "/bin/hello",
        Script {
            stdout: "hi\nthere".into(),
            stderr: "warn\n".into(),
            ..Default::default()
        },
    );
    let json = r#"{"run":{"path":"/bin/hello","args":["a"],"user":"vcap","dir":"/tmp","log_source":"APP",
        "env":[{"name":"A","value":"1"}],"resource_limits":{"nofile":99}}}"#;
    f.run_json(json).await.unwrap();
    let lines = f.sink.lines();
    assert!(lines.contains(&(Stream::Out, "APP".into(), "hi".into())));
    assert!(lines.contains(&(Stream::Err, "APP".into(), "warn".into())));
    // The unterminated last line comes out before, and separate from, the exit line.
    let outs: Vec<_> = lines
        .iter()
        .filter(|l| l.0 == Stream::Out)
        .map(|l| l.2.clone())
        .collect();
    assert_eq!(outs, vec!["hi", "there", "Exit status 0"]);
    let spec = &f.garden.runs()[0];
    assert_eq!(spec.env, vec!["A=1", "CF_INSTANCE_PORT="]);
    assert_eq!(
        (spec.user.as_str(), spec.dir.as_str(), spec.args.clone()),
        ("vcap", "/tmp", vec!["a".to_string()])
    );
    assert_eq!(spec.rlimits.nofile, Some(99));
}

#[tokio::test]
async fn run_failure_paths() {
    let f = Fixture::new().await;
    f.garden.script("/bin/three", script("", 3));
    assert_eq!(
        f.run_json(&run("/bin/three")).await,
        Err(StepError::Emittable("ROOT: Exited with status 3".into()))
    );
    assert!(f.sink.texts().contains(&"Exit status 3".to_string()));

    f.garden.set_events(&["Out of memory"]);
    let e = f.run_json(&run("/bin/three")).await.unwrap_err();
    assert_eq!(e.to_string(), "ROOT: Exited with status 3 (out of memory)");
    assert!(f
        .sink
        .texts()
        .contains(&"Exit status 3 (out of memory)".to_string()));

    f.garden.script(
        "/bin/missing",
        Script {
            spawn_error: Some("executable not found".into()),
            ..Default::default()
        },
    );
    let e = f.run_json(&run("/bin/missing")).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "failed-creating-process: executable not found"
    );
    assert!(f.sink.texts().contains(&e.to_string()));
}

#[tokio::test]
async fn suppressed_output_logs_nothing() {
    let f = Fixture::new().await;
    f.garden.script("/bin/loud", script("noise\n", 1));
    let e = f
        .run_json(r#"{"run":{"path":"/bin/loud","user":"root","suppress_log_output":true}}"#)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "ROOT: Exited with status 1");
    assert!(f.sink.texts().is_empty());
}

#[tokio::test]
async fn cancel_sends_term_and_returns_cancelled() {
    let f = Fixture::new().await;
    f.garden
        .script("/bin/sleep", Script::sleep(Duration::from_secs(30)));
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let g = f.garden.clone();
    tokio::spawn(async move {
        g.wait_for_runs(1).await;
        c.cancel();
    });
    assert_eq!(
        f.run_with(&run("/bin/sleep"), cancel).await,
        Err(StepError::Cancelled)
    );
    let sigs: Vec<Signal> = f.garden.signals().into_iter().map(|s| s.1).collect();
    assert_eq!(sigs, vec![Signal::Terminate]);
    assert!(f.sink.texts().contains(&"Exit status 143".to_string()));
}

#[tokio::test]
async fn cancel_escalates_to_kill_after_grace() {
    let f = Fixture::new().await;
    f.garden.script(
        "/bin/stubborn",
        Script {
            runs_for: Some(Duration::from_secs(30)),
            ignores_term: true,
            ..Default::default()
        },
    );
    let cancel = CancellationToken::new();
    cancel.cancel();
    // Already cancelled: nothing is spawned.
    assert_eq!(
        f.run_with(&run("/bin/stubborn"), cancel).await,
        Err(StepError::Cancelled)
    );
    assert!(f.garden.runs().is_empty());

    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let g = f.garden.clone();
    tokio::spawn(async move {
        g.wait_for_runs(1).await;
        c.cancel();
    });
    assert_eq!(
        f.run_with(&run("/bin/stubborn"), cancel).await,
        Err(StepError::ExceededGracefulShutdownInterval)
    );
    let sigs: Vec<Signal> = f.garden.signals().into_iter().map(|s| s.1).collect();
    assert_eq!(sigs, vec![Signal::Terminate, Signal::Kill]);
    assert!(f
        .sink
        .texts()
        .contains(&"Exit status 137 (exceeded 200ms graceful shutdown interval)".to_string()));

    f.garden.script(
        "/bin/stuck",
        Script {
            runs_for: Some(Duration::from_secs(30)),
            unkillable: true,
            ..Default::default()
        },
    );
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let g = f.garden.clone();
    tokio::spawn(async move {
        g.wait_for_runs(2).await;
        c.cancel();
    });
    assert_eq!(
        f.run_with(&run("/bin/stuck"), cancel).await,
        Err(StepError::ExitTimeout)
    );
}

#[tokio::test]
async fn timeout_cancels_child_and_reports() {
    let f = Fixture::new().await;
    f.garden
        .script("/bin/sleep", Script::sleep(Duration::from_secs(30)));
    f.garden.script("/bin/true", script("", 0));
    let t =
        |child: &str, ms: u64| format!(r#"{{"timeout":{{"timeout_ms":{ms},"action":{child}}}}}"#);
    let e = f.run_json(&t(&run("/bin/sleep"), 100)).await.unwrap_err();
    assert_eq!(e, StepError::Emittable("exceeded 100ms timeout".into()));
    assert_eq!(f.garden.signals().len(), 1);
    f.run_json(&t(&run("/bin/true"), 5000)).await.unwrap();
    // An emittable child error is appended.
    let slow_fail = r#"{"serial":{"actions":[{"run":{"path":"/bin/sleep","user":"root"}}]}}"#;
    let e = f
        .run_json(&t(&format!(r#"{{"try":{{"action":{slow_fail}}}}}"#), 50))
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "exceeded 50ms timeout");
}

#[tokio::test]
async fn try_swallows_errors_but_not_cancellation() {
    let f = Fixture::new().await;
    f.garden.script("/bin/false", script("", 1));
    f.garden
        .script("/bin/sleep", Script::sleep(Duration::from_secs(30)));
    f.run_json(&format!(r#"{{"try":{{"action":{}}}}}"#, run("/bin/false")))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    let g = f.garden.clone();
    tokio::spawn(async move {
        g.wait_for_runs(2).await;
        c.cancel();
    });
    let serial = format!(
        r#"{{"serial":{{"actions":[{{"try":{{"action":{}}}}},{}]}}}}"#,
        run("/bin/sleep"),
        run("/bin/false")
    );
    assert_eq!(f.run_with(&serial, cancel).await, Err(StepError::Cancelled));
    assert_eq!(
        f.garden.runs().len(),
        2,
        "the step after the cancelled try never starts"
    );
}

#[tokio::test]
async fn serial_stops_at_first_error() {
    let f = Fixture::new().await;
    f.garden.script("/bin/true", script("", 0));
    f.garden.script("/bin/false", script("", 1));
    let json = format!(
        r#"{{"serial":{{"actions":[{},{},{}]}}}}"#,
        run("/bin/true"),
        run("/bin/false"),
        run("/bin/true")
    );
    assert_eq!(
        f.run_json(&json).await.unwrap_err().to_string(),
        "ROOT: Exited with status 1"
    );
    let paths: Vec<_> = f.garden.runs().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/bin/true", "/bin/false"]);
}

#[tokio::test]
async fn parallel_waits_for_all_and_aggregates() {
    let f = Fixture::new().await;
    f.garden.script(
        "/bin/one",
        Script {
            exit: 1,
            runs_for: Some(Duration::from_millis(100)),
            ..Default::default()
        },
    );
    f.garden.script("/bin/two", script("", 2));
    f.garden.script(
        "/bin/slow",
        Script {
            runs_for: Some(Duration::from_millis(200)),
            stdout: "done\n".into(),
            ..Default::default()
        },
    );
    let json = format!(
        r#"{{"parallel":{{"actions":[{},{},{}]}}}}"#,
        run("/bin/one"),
        run("/bin/two"),
        run("/bin/slow")
    );
    let e = f.run_json(&json).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "ROOT: Exited with status 1; ROOT: Exited with status 2"
    );
    assert!(
        f.garden.signals().is_empty(),
        "failures do not cancel siblings"
    );
    assert!(f.sink.texts().contains(&"done".to_string()));
}

#[tokio::test]
async fn codependent_cancels_the_rest_when_one_exits() {
    let f = Fixture::new().await;
    f.garden.script("/bin/true", script("", 0));
    f.garden
        .script("/bin/sleep", Script::sleep(Duration::from_secs(30)));
    let json = format!(
        r#"{{"codependent":{{"actions":[{},{}]}}}}"#,
        run("/bin/sleep"),
        run("/bin/true")
    );
    let e = f.run_json(&json).await.unwrap_err();
    assert_eq!(e.to_string(), "Codependent step exited");
    assert_eq!(f.garden.signals().len(), 1);
}

#[tokio::test]
async fn emit_progress_logs_around_the_child() {
    let f = Fixture::new().await;
    f.garden.script("/bin/true", script("", 0));
    f.garden.script("/bin/false", script("", 1));
    let ep = |child: &str| {
        format!(
            r#"{{"emit_progress":{{"start_message":"go","success_message":"yay","failure_message_prefix":"boo","log_source":"P","action":{child}}}}}"#
        )
    };
    f.run_json(&ep(&run("/bin/true"))).await.unwrap();
    f.run_json(&ep(&run("/bin/false"))).await.unwrap_err();
    let lines = f.sink.lines();
    assert!(lines.contains(&(Stream::Out, "P".into(), "go".into())));
    assert!(lines.contains(&(Stream::Out, "P".into(), "yay".into())));
    assert!(lines.contains(&(
        Stream::Err,
        "P".into(),
        "boo: P: Exited with status 1".into()
    )));
}

#[tokio::test]
async fn composite_log_sources_apply_to_children() {
    let f = Fixture::new().await;
    f.garden.script("/bin/hi", script("hi\n", 0));
    let json = format!(
        r#"{{"serial":{{"log_source":"S","actions":[{},{{"try":{{"log_source":"T","action":{}}}}},{{"run":{{"path":"/bin/hi","user":"u","log_source":"R"}}}}]}}}}"#,
        run("/bin/hi"),
        run("/bin/hi")
    );
    f.run_json(&json).await.unwrap();
    let sources: Vec<String> = f
        .sink
        .lines()
        .into_iter()
        .filter(|l| l.2 == "hi")
        .map(|l| l.1)
        .collect();
    assert_eq!(sources, vec!["S", "T", "R"]);
}

#[tokio::test]
async fn serial_is_ready_when_its_last_child_is() {
    let f = Fixture::new().await;
    f.garden.script("/bin/true", script("", 0));
    f.garden
        .script("/bin/sleep", Script::sleep(Duration::from_millis(300)));
    let json = format!(
        r#"{{"serial":{{"actions":[{},{}]}}}}"#,
        run("/bin/true"),
        run("/bin/sleep")
    );
    let action = Action::from_json(&json).unwrap();
    let step = build(&action, &f.env, &f.streamer);
    let (ready, mut rx) = Ready::channel();
    let task = tokio::spawn(async move { step.perform(CancellationToken::new(), ready).await });
    tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !task.is_finished(),
        "ready fires while the last child still runs"
    );
    task.await.unwrap().unwrap();
}

fn tgz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, *data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &b.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

#[tokio::test]
async fn download_streams_a_tar_into_the_container() {
    let f = Fixture::new().await;
    let srv = FileServer::start().await;
    let body = tgz(&[("app/run.sh", b"echo hi")]);
    srv.put_bytes("/app.tgz", &body);
    let sha = crate::cache::hex(&<sha2::Sha256 as md5::Digest>::digest(&body));
    let json = format!(
        r#"{{"download":{{"from":"{}","to":"/home/vcap","user":"vcap","artifact":"app","cache_key":"k","checksum_algorithm":"sha256","checksum_value":"{sha}"}}}}"#,
        srv.url("/app.tgz")
    );
    f.run_json(&json).await.unwrap();
    f.run_json(&json).await.unwrap();
    let ins = f.garden.streamed_in();
    assert_eq!(ins.len(), 2);
    assert_eq!(
        (ins[0].user.as_str(), ins[0].destination.as_str()),
        ("vcap", "/home/vcap")
    );
    assert_eq!(ins[0].tar, ins[1].tar);
    let mut a = tar::Archive::new(ins[0].tar.as_slice());
    let names: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, vec!["app/run.sh"]);
    let texts = f.sink.texts();
    assert_eq!(texts[0], "Downloading app...");
    assert!(
        texts[1].starts_with("Downloaded app (") && texts[1].ends_with("B)"),
        "{}",
        texts[1]
    );
    assert_eq!(texts[3], "Downloaded app", "cache hit has no size");

    let bad = json.replace(&sha, &"0".repeat(64));
    let e = f.run_json(&bad).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("Downloading app failed: Checksum failed"),
        "{e}"
    );
    assert_eq!(
        f.garden.streamed_in().len(),
        2,
        "nothing reaches the container"
    );

    f.garden.fail_stream_in("tar: ../x: path escapes");
    let e = f.run_json(&json).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "Copying app into the container failed: tar: ../x: path escapes"
    );
}

#[tokio::test]
async fn upload_posts_the_file_with_digests_and_retries() {
    let f = Fixture::new().await;
    let srv = FileServer::start().await;
    f.garden
        .put_file(&f.env.handle, "/tmp/result.json", b"{\"ok\":true}");
    let json = format!(
        r#"{{"upload":{{"from":"/tmp/result.json","to":"{}","user":"vcap","artifact":"result"}}}}"#,
        srv.url("/up?token=s3cret")
    );
    srv.fail_uploads(&[500]);
    f.run_json(&json).await.unwrap();
    let ups = srv.uploads();
    assert_eq!(ups.len(), 2, "first attempt got a 500 and was retried");
    assert_eq!(ups[1].body, b"{\"ok\":true}");
    assert_eq!(ups[1].path, "/up");
    assert_eq!(
        ups[1].header("content-type"),
        Some("application/octet-stream")
    );
    let b64 = base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use md5::Digest as _;
    assert_eq!(
        ups[1].header("content-md5"),
        Some(b64.encode(md5::Md5::digest(b"{\"ok\":true}")).as_str())
    );
    assert!(ups[1]
        .header("content-digest")
        .unwrap()
        .starts_with("sha-256=:"));
    assert!(f
        .sink
        .texts()
        .contains(&"Uploaded result (11B)".to_string()));

    srv.fail_uploads(&[500, 502, 503]);
    let e = f.run_json(&json).await.unwrap_err();
    assert_eq!(e.to_string(), "Upload failed: Status code 503");
    assert!(f
        .sink
        .texts()
        .contains(&"Failed to upload payload for result".to_string()));
    assert!(
        !f.sink.texts().iter().any(|t| t.contains("s3cret")),
        "URLs are never logged"
    );

    let missing = json.replace("/tmp/result.json", "/nope");
    let e = f.run_json(&missing).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("Failed to establish stream from container for result"),
        "{e}"
    );
}
