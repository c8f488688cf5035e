//! emit_progress: log a start line, run the child, log success or failure.

use async_trait::async_trait;

use super::{CancellationToken, Ready, Step, StepError, StepResult};
use crate::log::LogStreamer;

pub struct EmitProgressStep {
    child: Box<dyn Step>,
    streamer: LogStreamer,
    start: String,
    success: String,
    failure_prefix: String,
}

impl EmitProgressStep {
    pub fn new(
        child: Box<dyn Step>,
        streamer: LogStreamer,
        start: String,
        success: String,
        failure_prefix: String,
    ) -> Self {
        EmitProgressStep {
            child,
            streamer,
            start,
            success,
            failure_prefix,
        }
    }
}

#[async_trait]
impl Step for EmitProgressStep {
    async fn perform(&self, cancel: CancellationToken, ready: Ready) -> StepResult {
        if !self.start.is_empty() {
            self.streamer.out(&self.start);
        }
        let result = self.child.perform(cancel, ready).await;
        match &result {
            Ok(()) if !self.success.is_empty() => self.streamer.out(&self.success),
            Err(e) if !self.failure_prefix.is_empty() => match e {
                StepError::Emittable(msg) => self
                    .streamer
                    .err(&format!("{}: {msg}", self.failure_prefix)),
                _ => self.streamer.err(&self.failure_prefix),
            },
            _ => {}
        }
        result
    }
}
