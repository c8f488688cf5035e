//! try: run the child and swallow its error (logged to the executor's own log only).

use async_trait::async_trait;

use super::{CancellationToken, Ready, Step, StepError, StepResult};

pub struct TryStep {
    child: Box<dyn Step>,
}

impl TryStep {
    pub fn new(child: Box<dyn Step>) -> Self {
        TryStep { child }
    }
}

#[async_trait]
impl Step for TryStep {
    /// Unlike the reference, a try that was cancelled reports `Cancelled`, so a cancelled
    /// serial never claims success (README, quirk "try swallows cancellation").
    async fn perform(&self, cancel: CancellationToken, ready: Ready) -> StepResult {
        match self.child.perform(cancel.clone(), ready).await {
            Ok(()) => Ok(()),
            Err(_) if cancel.is_cancelled() => Err(StepError::Cancelled),
            Err(e) => {
                tracing::info!(error = %e, "try step swallowed an error");
                Ok(())
            }
        }
    }
}
