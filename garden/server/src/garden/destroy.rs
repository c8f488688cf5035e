//! Destroy: kill every process, then release the network, the cgroup, the disk quota and the
//! bundle, in that order. A failing step puts the container back so Destroy can be retried.

use std::time::Instant;

use garden_api::GardenError;

use super::container::State;
use super::depot::remove_dir_all_blocking;
use super::{Garden, Result};

impl Garden {
    pub(super) async fn destroy(&self, handle: &str) -> Result<()> {
        let c = self.lookup(handle)?;
        let previous = {
            let mut state = c.state.lock().expect("state lock");
            if *state == State::Destroying {
                return Err(GardenError::generic("container already being destroyed"));
            }
            std::mem::replace(&mut *state, State::Destroying)
        };
        c.activity.cancel();
        let t = Instant::now();
        c.sandbox.kill().await;
        tracing::debug!(
            handle,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "processes gone"
        );
        if let Err(e) = self.kernel.release_network(handle).await {
            *c.state.lock().expect("state lock") = previous;
            return Err(GardenError::generic(format!("destroy {handle}: {e}")));
        }
        tracing::debug!(
            handle,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "network released"
        );
        for p in c.processes.lock().expect("processes lock").values() {
            p.on_exit(137);
        }
        let removed = c.sandbox.remove_cgroup().await.map_err(|e| e.to_string());
        tracing::debug!(
            handle,
            ms = t.elapsed().as_secs_f64() * 1e3,
            "cgroups removed"
        );
        let removed = match removed {
            Ok(()) => self
                .kernel
                .release_disk(handle)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        let removed = match removed {
            Ok(()) => remove_dir_all_blocking(c.bundle.clone()).await,
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            // Keep the container so Destroy can be retried.
            *c.state.lock().expect("state lock") = previous;
            return Err(GardenError::generic(format!("destroy {handle}: {e}")));
        }
        self.containers
            .write()
            .expect("containers lock")
            .remove(handle);
        self.release_image(c.lower_dirs.clone()).await;
        tracing::info!(handle, "destroyed");
        Ok(())
    }
}
