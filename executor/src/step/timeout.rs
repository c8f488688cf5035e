//! timeout: cancel the child when the deadline passes, wait for it, and report
//! `exceeded <dur> timeout` (plus `; <child msg>` when the child's error is emittable).

use std::time::Duration;

use async_trait::async_trait;

use super::{go_duration, CancellationToken, Ready, Step, StepError, StepResult};

pub struct TimeoutStep {
    child: Box<dyn Step>,
    timeout: Duration,
}

impl TimeoutStep {
    pub fn new(child: Box<dyn Step>, timeout: Duration) -> Self {
        TimeoutStep { child, timeout }
    }
}

#[async_trait]
impl Step for TimeoutStep {
    async fn perform(&self, cancel: CancellationToken, ready: Ready) -> StepResult {
        let inner = cancel.child_token();
        let run = self.child.perform(inner.clone(), ready);
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => return r,
            _ = tokio::time::sleep(self.timeout) => {}
        }
        inner.cancel();
        // No second deadline: the child is trusted to end once cancelled (a run escalates to
        // SIGKILL on its own). The timeout is reported even if the child then ended cleanly.
        let result = run.await;
        let mut msg = format!("exceeded {} timeout", go_duration(self.timeout));
        if let Err(StepError::Emittable(child)) = &result {
            msg.push_str("; ");
            msg.push_str(child);
        }
        Err(StepError::Emittable(msg))
    }
}
