//! codependent: all children at once; the first child to end (even successfully) cancels the
//! rest, and the step fails with the aggregate in completion order.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{aggregate, CancellationToken, Ready, Step, StepError, StepResult};

pub struct CodependentStep {
    children: Vec<Box<dyn Step>>,
    /// The LRP "group" flavour: a child exiting successfully is not an error and does not
    /// cancel its siblings; only errors do.
    exit_is_ok: bool,
}

impl CodependentStep {
    pub fn new(children: Vec<Box<dyn Step>>) -> Self {
        CodependentStep {
            children,
            exit_is_ok: false,
        }
    }

    pub fn group(children: Vec<Box<dyn Step>>) -> Self {
        CodependentStep {
            children,
            exit_is_ok: true,
        }
    }
}

#[async_trait]
impl Step for CodependentStep {
    async fn perform(&self, cancel: CancellationToken, ready: Ready) -> StepResult {
        let inner = cancel.child_token();
        let readies = ready.all(self.children.len());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let futures = self.children.iter().zip(readies).map(|(c, r)| {
            let tx = tx.clone();
            let token = inner.clone();
            async move {
                let _ = tx.send(c.perform(token, r).await);
            }
        });
        let futures: Vec<_> = futures.collect();
        drop(tx);
        let collect = async {
            let mut errors = Vec::new();
            while let Some(result) = rx.recv().await {
                match result {
                    Ok(()) if self.exit_is_ok => {}
                    Ok(()) => {
                        errors.push(StepError::Emittable("Codependent step exited".into()));
                        inner.cancel();
                    }
                    Err(e) => {
                        errors.push(e);
                        inner.cancel();
                    }
                }
            }
            errors
        };
        let (_, errors) = tokio::join!(super::parallel::futures_join_all(futures), collect);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(aggregate(&errors))
        }
    }
}
