//! Where the executor's log messages go: to the subscriber registered for their log guid
//! (an instance's log buffer, a task's output), and otherwise to the agent's own log.

use std::collections::HashMap;
use std::sync::Mutex;

use executor::log::{LogMessage, LogSink};
use tokio::sync::mpsc;

#[derive(Debug, Default)]
pub struct LogRouter {
    routes: Mutex<HashMap<String, mpsc::UnboundedSender<LogMessage>>>,
}

impl LogRouter {
    /// Receive every message whose `source_id` (the container's log guid) is `guid`,
    /// replacing any earlier subscriber.
    pub fn route(&self, guid: &str) -> mpsc::UnboundedReceiver<LogMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.routes.lock().unwrap().insert(guid.to_string(), tx);
        rx
    }

    pub fn unroute(&self, guid: &str) {
        self.routes.lock().unwrap().remove(guid);
    }
}

impl LogSink for LogRouter {
    fn emit(&self, msg: LogMessage) {
        let routes = self.routes.lock().unwrap();
        if let Some(tx) = routes.get(&msg.source_id) {
            if tx.send(msg.clone()).is_ok() {
                return;
            }
        }
        drop(routes);
        tracing::debug!(
            guid = %msg.source_id,
            source = %msg.source_type,
            stream = ?msg.stream,
            "{}",
            msg.text
        );
    }
}
