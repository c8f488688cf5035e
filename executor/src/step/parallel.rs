//! parallel: all children at once; failures do not cancel siblings; errors are aggregated.

use async_trait::async_trait;

use super::{aggregate, CancellationToken, Ready, Step, StepResult};

pub struct ParallelStep {
    children: Vec<Box<dyn Step>>,
}

impl ParallelStep {
    pub fn new(children: Vec<Box<dyn Step>>) -> Self {
        ParallelStep { children }
    }
}

#[async_trait]
impl Step for ParallelStep {
    async fn perform(&self, cancel: CancellationToken, ready: Ready) -> StepResult {
        let readies = ready.all(self.children.len());
        let futures = self
            .children
            .iter()
            .zip(readies)
            .map(|(c, r)| c.perform(cancel.clone(), r));
        let results = futures_join_all(futures).await;
        let errors: Vec<_> = results.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(aggregate(&errors))
        }
    }
}

/// Poll every future on this task, results in input order.
pub(crate) async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|v| v.expect("all futures completed"))
        .collect()
}
