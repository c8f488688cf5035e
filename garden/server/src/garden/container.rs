//! A container as the core keeps it: its state, spec, properties and processes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use garden_api::{ContainerInfo, ContainerSpec, GardenError};

use super::grace::Activity;
use super::Result;
use crate::kernel::{Kernel, Sandbox};
use crate::process::Process;

/// A container's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Active,
    Stopped,
    Destroying,
}

impl State {
    pub(super) fn can_run(self) -> bool {
        self != State::Destroying
    }
}

pub(super) struct Container {
    pub(super) handle: String,
    pub(super) bundle: PathBuf,
    /// As created (Current*Limits report it).
    pub(super) spec: ContainerSpec,
    pub(super) image_env: Vec<String>,
    /// The image config's user and working dir, for processes that name none.
    pub(super) image_user: String,
    pub(super) image_dir: String,
    /// Image layers, for disk usage.
    pub(super) lower_dirs: Vec<PathBuf>,
    /// Its user namespace's mapping (files on disk hold host ids); `None` when privileged.
    pub(super) ids: Option<rootfs::IdMapping>,
    pub(super) created: Instant,
    pub(super) sandbox: Arc<dyn Sandbox>,
    pub(super) state: Mutex<State>,
    /// Set by clients and by the network (`garden.network.*`); see [`Container::properties`].
    pub(super) properties: Mutex<BTreeMap<String, String>>,
    /// Every process ever run, kept for Attach after exit.
    pub(super) processes: Mutex<HashMap<String, Arc<Process>>>,
    pub(super) activity: Arc<Activity>,
    /// NetOut rules added after create, for the depot.
    pub(super) net_out: Mutex<Vec<garden_api::NetOutRule>>,
}

impl Container {
    /// The client's properties plus those gardend reports: `garden.grace-time` comes from the
    /// grace timer's own setting, so the grace time is held in one place.
    pub(super) fn properties(&self) -> BTreeMap<String, String> {
        self.reported(&self.properties.lock().expect("properties lock"))
    }

    /// Whether property `key` reads `value` (a missing one reads ""), as [`Container::properties`]
    /// would report it, without copying the map: List filters every container this way.
    pub(super) fn property_is(&self, key: &str, value: &str) -> bool {
        if key == "garden.grace-time" {
            return match self.activity.grace() {
                0 => value.is_empty(),
                ns => value == ns.to_string(),
            };
        }
        let props = self.properties.lock().expect("properties lock");
        props.get(key).map(String::as_str).unwrap_or("") == value
    }

    /// `stored` plus what gardend reports itself.
    pub(super) fn reported(&self, stored: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut props = stored.clone();
        match self.activity.grace() {
            0 => props.remove("garden.grace-time"),
            ns => props.insert("garden.grace-time".into(), ns.to_string()),
        };
        props
    }
}

pub(super) fn info(c: &Container, kernel: &dyn Kernel) -> ContainerInfo {
    let net = kernel.network_info(&c.handle);
    let state = match *c.state.lock().expect("state lock") {
        State::Active => "active",
        State::Stopped | State::Destroying => "stopped",
    };
    let events = if c.sandbox.oom_kills() > 0 {
        Some(vec!["Out of memory".to_string()])
    } else {
        None
    };
    ContainerInfo {
        state: state.into(),
        events,
        container_path: c.bundle.display().to_string(),
        properties: Some(c.properties()),
        host_ip: net.as_ref().map(|n| n.host_ip.clone()).unwrap_or_default(),
        container_ip: net
            .as_ref()
            .map(|n| n.container_ip.clone())
            .unwrap_or_default(),
        external_ip: net
            .as_ref()
            .map(|n| n.external_ip.clone())
            .unwrap_or_default(),
        mapped_ports: Some(
            net.map(|n| super::convert::port_mappings(&n.mapped_ports))
                .unwrap_or_default(),
        ),
        ..Default::default()
    }
}

/// Handles and process ids name directories and cgroups: no separators, no dot names.
pub(super) fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.len() > 255
        || name.contains('/')
        || name.contains(char::is_control)
    {
        return Err(GardenError::bad_request(format!(
            "invalid {what}: {name:?}"
        )));
    }
    Ok(())
}
