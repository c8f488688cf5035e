//! Fixtures for step tests: a fake Garden with one container and a memory log sink.

use std::sync::Arc;
use std::time::Duration;

use super::{build, CancellationToken, Ready, StepConfig, StepEnv, StepResult};
use crate::action::Action;
use crate::cache::{CacheConfig, DownloadCache};
use crate::garden::fake::FakeGarden;
use crate::garden::Garden;
use crate::log::{LogConfig, LogStreamer, MemorySink};

pub struct Fixture {
    pub garden: FakeGarden,
    pub sink: MemorySink,
    pub env: Arc<StepEnv>,
    pub streamer: LogStreamer,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub async fn new() -> Fixture {
        let garden = FakeGarden::new();
        let handle = garden.create(&Default::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut cc = CacheConfig::new(dir.path());
        cc.backoff_base = Duration::from_millis(1);
        let cache = Arc::new(DownloadCache::open(cc).unwrap());
        let config = StepConfig {
            graceful_shutdown: Duration::from_millis(200),
            kill_timeout: Duration::from_millis(200),
            ..Default::default()
        };
        let env = Arc::new(StepEnv {
            garden: Arc::new(garden.clone()),
            handle,
            cache,
            config,
            instance_env: vec!["CF_INSTANCE_PORT=".into()],
        });
        let sink = MemorySink::default();
        let streamer = LogStreamer::new(
            Arc::new(sink.clone()),
            &LogConfig {
                guid: "g".into(),
                index: 0,
                source_name: "ROOT".into(),
            },
        );
        Fixture {
            garden,
            sink,
            env,
            streamer,
            _dir: dir,
        }
    }

    pub async fn run_json(&self, json: &str) -> StepResult {
        self.run_with(json, CancellationToken::new()).await
    }

    pub async fn run_with(&self, json: &str, cancel: CancellationToken) -> StepResult {
        let action = Action::from_json(json).unwrap();
        let step = build(&action, &self.env, &self.streamer);
        step.perform(cancel, Ready::noop()).await
    }
}

pub fn run(path: &str) -> String {
    format!(r#"{{"run":{{"path":"{path}","user":"root"}}}}"#)
}
