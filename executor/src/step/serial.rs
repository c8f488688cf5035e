//! serial: children one after another; the first error stops the sequence.

use async_trait::async_trait;

use super::{CancellationToken, Ready, Step, StepError, StepResult};

pub struct SerialStep {
    children: Vec<Box<dyn Step>>,
}

impl SerialStep {
    pub fn new(children: Vec<Box<dyn Step>>) -> Self {
        SerialStep { children }
    }
}

#[async_trait]
impl Step for SerialStep {
    /// Only the last child's ready signal is forwarded: the sequence is "up" when its last
    /// member is. On cancel the current child's result is returned and later children never
    /// start (a cancel that arrives between two children yields `Cancelled`).
    async fn perform(&self, cancel: CancellationToken, ready: Ready) -> StepResult {
        let last = self.children.len().saturating_sub(1);
        for (i, child) in self.children.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            let r = if i == last {
                ready.clone()
            } else {
                Ready::noop()
            };
            child.perform(cancel.clone(), r).await?;
        }
        if self.children.is_empty() {
            ready.fire();
        }
        Ok(())
    }
}
