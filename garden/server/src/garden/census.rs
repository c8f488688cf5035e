//! The core's figures for the metrics scrape: how many containers and running processes
//! there are, and how many containers saw the OOM killer.

use super::Garden;
use crate::telemetry::Census;

impl Garden {
    /// Counted now, under the registry's read lock (microseconds for thousands of containers).
    pub fn census(&self) -> Census {
        let containers = self.containers.read().expect("containers lock");
        let mut census = Census {
            containers: containers.len() as u64,
            warm_containers: self.warm.len() as u64,
            reclaiming_containers: self.reclaiming.len() as u64,
            ..Census::default()
        };
        for c in containers.values() {
            census.processes += c
                .processes
                .lock()
                .expect("processes lock")
                .values()
                .filter(|p| p.is_running())
                .count() as u64;
            if c.sandbox.oom_kills() > 0 {
                census.oom_killed_containers += 1;
            }
        }
        census
    }
}
