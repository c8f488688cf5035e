//! download: fetch an archive (or single file) through the download cache, verify its
//! checksum, and stream it as a tar into the container at `to`, owned by `user`.

use std::sync::Arc;

use async_trait::async_trait;

use super::{human_size, CancellationToken, Ready, Step, StepEnv, StepError, StepResult};
use crate::action::DownloadAction;
use crate::cache::Checksum;
use crate::log::LogStreamer;

/// Longest failure message logged and returned (the reference's cap).
const MAX_ERROR_BYTES: usize = 1024;

pub struct DownloadStep {
    action: DownloadAction,
    env: Arc<StepEnv>,
    streamer: LogStreamer,
}

impl DownloadStep {
    pub fn new(action: DownloadAction, env: Arc<StepEnv>, streamer: LogStreamer) -> Self {
        DownloadStep {
            action,
            env,
            streamer,
        }
    }

    fn fail(&self, msg: String) -> StepError {
        let msg = truncate_error(msg);
        self.streamer.err(&msg);
        StepError::Emittable(msg)
    }

    fn named(&self, what: &str) -> String {
        if self.action.artifact.is_empty() {
            what.to_string()
        } else {
            format!("{what} {}", self.action.artifact)
        }
    }
}

pub(crate) fn truncate_error(msg: String) -> String {
    if msg.len() <= MAX_ERROR_BYTES {
        return msg;
    }
    let suffix = " (error truncated)";
    let mut cut = MAX_ERROR_BYTES - suffix.len();
    while !msg.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &msg[..cut])
}

#[async_trait]
impl Step for DownloadStep {
    async fn perform(&self, cancel: CancellationToken, ready: Ready) -> StepResult {
        ready.fire();
        let _slot = tokio::select! {
            s = self.env.config.download_slots.acquire() => s.map_err(|_| StepError::Cancelled)?,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let a = &self.action;
        if !a.artifact.is_empty() {
            self.streamer.out(&format!("Downloading {}...", a.artifact));
        }
        let checksum = (!a.checksum_algorithm.is_empty()).then(|| Checksum {
            algorithm: a.checksum_algorithm.clone(),
            value: a.checksum_value.clone(),
        });
        // Dropping the fetch on cancel aborts it; its temp files clean themselves up.
        let fetched = tokio::select! {
            r = self.env.cache.fetch(&a.from, &a.cache_key, checksum.as_ref()) => r,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => return Err(self.fail(format!("{} failed: {e}", self.named("Downloading")))),
        };
        let file = fetched
            .tar
            .try_clone()
            .map_err(|e| self.fail(format!("{} failed: {e}", self.named("Downloading"))))?;
        let reader = Box::new(tokio::fs::File::from_std(file));
        let streamed = tokio::select! {
            r = self.env.garden.stream_in(&self.env.handle, &a.user, &a.to, reader) => r,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        if let Err(e) = streamed {
            return Err(self.fail(format!(
                "{} into the container failed: {e}",
                self.named("Copying")
            )));
        }
        let downloaded = fetched.downloaded;
        drop(fetched);
        if !a.artifact.is_empty() {
            // A cache hit transferred nothing and is reported without a size.
            if downloaded == 0 {
                self.streamer.out(&format!("Downloaded {}", a.artifact));
            } else {
                self.streamer.out(&format!(
                    "Downloaded {} ({})",
                    a.artifact,
                    human_size(downloaded)
                ));
            }
        }
        Ok(())
    }
}
