//! Stop: SIGTERM every process but init, SIGKILL what is left after STOP_GRACE (or at once
//! with `kill`). The container stays, stopped.

use std::time::{Duration, Instant};

use super::container::State;
use super::{Garden, Result};
use crate::kernel::{Sandbox, Signal};

/// How long Stop waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Garden {
    pub(super) async fn stop(&self, handle: &str, kill: bool) -> Result<()> {
        let c = self.lookup(handle)?;
        let _g = c.activity.guard();
        if !kill {
            let _ = c.sandbox.signal_all(Signal::Terminate).await;
            wait_until_empty(c.sandbox.as_ref(), STOP_GRACE).await;
        }
        let _ = c.sandbox.signal_all(Signal::Kill).await;
        wait_until_empty(c.sandbox.as_ref(), STOP_GRACE).await;
        let mut state = c.state.lock().expect("state lock");
        if *state == State::Active {
            *state = State::Stopped;
        }
        Ok(())
    }
}

async fn wait_until_empty(sandbox: &dyn Sandbox, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && !sandbox.is_idle() && !sandbox.has_exited() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
