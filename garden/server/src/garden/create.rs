//! Create: reserve the handle, resolve the image, then disk, sandbox and network, undoing
//! what was done when a step fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use garden_api::{ContainerSpec, GardenError};

use super::container::{validate_name, Container, State};
use super::depot::{self, remove_bundle_blocking};
use super::grace::{grace_timer, Activity};
use super::warm::Warm;
use super::{convert, generic, kernel_error, validate, Garden, Result};
use crate::kernel::SandboxSpec;

impl Garden {
    pub(super) async fn create(&self, spec: ContainerSpec) -> Result<String> {
        let handle = if spec.handle.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            spec.handle.clone()
        };
        validate_name("handle", &handle)?;
        validate::limits(&spec.limits)?;
        for m in &spec.netin {
            validate::ports(m.host_port, m.container_port)?;
        }
        if spec.privileged && self.config.disable_privileged_containers {
            return Err(GardenError::generic(
                "privileged container creation is disabled",
            ));
        }
        if !spec.image.uri.is_empty() && !spec.rootfs.is_empty() {
            return Err(GardenError::generic(
                "Cannot provide both Image.URI and RootFSPath",
            ));
        }
        convert::egress_rules(&spec.netout_rules).map_err(GardenError::bad_request)?;
        self.kernel
            .validate_network(convert::bandwidth(&spec.limits.bandwidth_limits))
            .map_err(kernel_error)?;
        validate::bind_mounts(&spec.bind_mounts)?;
        // A destroyed container's handle, and its place under max-containers, are free once
        // its resources are: wait for that rather than fail.
        loop {
            let next_end = self.reclaiming.next_end();
            tokio::pin!(next_end);
            next_end.as_mut().enable();
            {
                let containers = self.containers.read().expect("containers lock");
                let mut reserved = self.reserved.lock().expect("reserved lock");
                if containers.contains_key(&handle) || reserved.contains(&handle) {
                    return Err(GardenError::generic(format!(
                        "Handle '{handle}' already in use"
                    )));
                }
                let reclaiming = self.reclaiming.len();
                let held = (containers.len() + reserved.len() + reclaiming) as u64;
                let full = held >= self.max_containers();
                if full && reclaiming == 0 {
                    return Err(GardenError::generic("max containers reached"));
                }
                if !full && !self.reclaiming.contains(&handle) {
                    reserved.insert(handle.clone());
                    break;
                }
            }
            next_end.await;
        }
        let result = self.create_reserved(&handle, spec).await;
        self.reserved.lock().expect("reserved lock").remove(&handle);
        result.map(|()| handle)
    }

    async fn create_reserved(&self, handle: &str, spec: ContainerSpec) -> Result<()> {
        let started = Instant::now();
        if self.warm_fits(&spec) {
            if let Some(w) = self.take_warm().await {
                return self.create_from_warm(handle, spec, w, started).await;
            }
        }
        let uri = if spec.image.uri.is_empty() {
            spec.rootfs.clone()
        } else {
            spec.image.uri.clone()
        };
        let plan = if uri.is_empty() {
            self.images.pin(&self.default_rootfs.lower_dirs);
            self.default_rootfs.clone()
        } else {
            let image = garden_api::ImageRef {
                uri,
                ..spec.image.clone()
            };
            self.resolve_image(&image)
                .await
                .map_err(GardenError::generic)?
        };
        let lower_dirs = plan.lower_dirs.clone();
        // Once the container is registered, its destroy releases the image.
        let mut registered = false;
        let result = self
            .create_with_plan(handle, spec, plan, started, &mut registered)
            .await;
        if result.is_err() && !registered {
            self.release_image(lower_dirs).await;
        }
        result
    }

    /// Unpins a container's layers (collecting unused ones if the store is over its limit).
    pub(super) async fn release_image(&self, lower_dirs: Vec<std::path::PathBuf>) {
        let store = self.images.clone();
        let _ = tokio::task::spawn_blocking(move || store.release(&lower_dirs)).await;
    }

    async fn create_with_plan(
        &self,
        handle: &str,
        spec: ContainerSpec,
        plan: rootfs::RootfsPlan,
        started: Instant,
        registered: &mut bool,
    ) -> Result<()> {
        let made = self.make_sandbox(handle, &spec, plan, true).await?;
        self.register(handle, spec, made);
        *registered = true;
        self.finish(handle, started, false).await
    }

    /// Bundle, disk layer, address and sandbox of a new container named `name` (a handle, or
    /// a warm container's name), undoing what was done when a step fails. `evict_warm`: a
    /// full address pool takes back the warm containers' addresses first (never when making a
    /// warm container).
    pub(super) async fn make_sandbox(
        &self,
        name: &str,
        spec: &ContainerSpec,
        plan: rootfs::RootfsPlan,
        evict_warm: bool,
    ) -> Result<Made> {
        let bundle = self.new_bundle(name)?;
        std::fs::create_dir_all(&bundle)
            .map_err(|e| generic(format!("create {}: {e}", bundle.display())))?;
        let image = self.image_size(&plan.lower_dirs).await;
        let attached = self
            .kernel
            .attach_disk(
                name,
                &bundle,
                convert::disk_limit(&spec.limits.disk_limits),
                image,
            )
            .await;
        if let Err(e) = attached.map_err(kernel_error) {
            let _ = remove_bundle_blocking(bundle.clone()).await;
            return Err(e);
        }
        let ids = (!spec.privileged).then(|| self.ids.clone());
        let sandbox_spec = SandboxSpec {
            handle: name.to_string(),
            bundle: bundle.clone(),
            lower_dirs: plan.lower_dirs.clone(),
            hostname: hostname(name).to_string(),
            bind_mounts: convert::bind_mounts(&spec.bind_mounts),
            resources: convert::resources(&spec.limits),
            privileged: spec.privileged,
            ids: ids.clone(),
        };
        let allocated = if evict_warm {
            self.allocate_network(name, &spec.network).await
        } else {
            self.kernel.allocate_network(name, &spec.network)
        };
        let created = match allocated {
            Ok(()) => self.kernel.create_sandbox(sandbox_spec).await,
            Err(e) => Err(e),
        };
        match created {
            Ok((sandbox, exits)) => Ok(Made {
                bundle,
                plan,
                ids,
                sandbox,
                exits,
            }),
            Err(e) => {
                let _ = self.kernel.release_disk(name).await;
                let _ = remove_bundle_blocking(bundle.clone()).await;
                let _ = self.kernel.release_network(name).await;
                Err(kernel_error(e))
            }
        }
    }

    /// Where the bundle of `handle` goes; taken means the handle is in use.
    fn new_bundle(&self, handle: &str) -> Result<std::path::PathBuf> {
        let bundle = self.config.depot.join(handle);
        if bundle.exists() {
            return Err(GardenError::generic(format!(
                "Handle '{handle}' already in use"
            )));
        }
        Ok(bundle)
    }

    /// An address for `handle`; when the pool is full, warm containers give theirs back
    /// first.
    async fn allocate_network(
        &self,
        handle: &str,
        network: &str,
    ) -> std::result::Result<(), crate::kernel::KernelError> {
        match self.kernel.allocate_network(handle, network) {
            Err(_) if self.evict_warm("the address pool is full").await > 0 => {
                self.kernel.allocate_network(handle, network)
            }
            r => r,
        }
    }

    /// Create by claiming a warm container: its bundle takes the handle's name, its network
    /// and host name become the handle's, then limits and network rules are applied as on any
    /// running container.
    async fn create_from_warm(
        &self,
        handle: &str,
        spec: ContainerSpec,
        w: Warm,
        started: Instant,
    ) -> Result<()> {
        let bundle = match self.new_bundle(handle) {
            Ok(b) => b,
            Err(e) => {
                self.warm.put_back(w);
                return Err(e);
            }
        };
        if let Err(e) = std::fs::rename(&w.bundle, &bundle) {
            self.discard_warm(w, None).await;
            return Err(generic(format!("claim a warm container: {e}")));
        }
        w.sandbox.moved(&bundle);
        let claimed = async {
            self.kernel
                .claim_warm(&w.name, handle, hostname(handle), w.sandbox.as_ref())
                .await
                .map_err(kernel_error)?;
            let resources = convert::resources(&spec.limits);
            if resources != Default::default() {
                w.sandbox
                    .apply_resources(&resources)
                    .map_err(kernel_error)?;
            }
            Ok::<(), GardenError>(())
        }
        .await;
        let w = Warm { bundle, ..w };
        if let Err(e) = claimed {
            self.discard_warm(w, Some(handle)).await;
            return Err(e);
        }
        tracing::debug!(handle, warm = w.name, "claimed a warm container");
        let made = Made {
            bundle: w.bundle,
            plan: self.default_rootfs.clone(),
            ids: Some(self.ids.clone()),
            sandbox: w.sandbox,
            exits: w.exits,
        };
        self.register(handle, spec, made);
        self.finish(handle, started, true).await
    }

    /// Make the container known: its state, properties, exit routing and grace timer.
    fn register(&self, handle: &str, spec: ContainerSpec, made: Made) {
        let grace_ns = match spec.grace_time {
            0 => self.config.default_grace_time.as_nanos() as u64,
            g => g,
        };
        let mut properties = spec.properties.clone();
        properties.insert("garden.state".into(), "created".into());
        let activity = Activity::new(grace_ns);
        let Made {
            bundle,
            plan,
            ids,
            sandbox,
            exits,
        } = made;
        let container = Arc::new(Container {
            handle: handle.to_string(),
            bundle,
            image_env: plan.env.clone(),
            image_user: plan.user.clone(),
            image_dir: plan.workdir.clone(),
            lower_dirs: plan.lower_dirs.clone(),
            ids,
            spec,
            created: Instant::now(),
            sandbox,
            state: Mutex::new(State::Active),
            properties: Mutex::new(BTreeMap::new()),
            processes: Mutex::default(),
            activity: activity.clone(),
            net_out: Mutex::default(),
        });
        // Persisted with the network's properties (`net_setup`): until the record is written,
        // a restart discards the container anyway.
        *container.properties.lock().expect("properties lock") = properties;
        route_exits(&container, exits);
        tokio::spawn(grace_timer(self.me.clone(), handle.to_string(), activity));
        self.containers
            .write()
            .expect("containers lock")
            .insert(handle.to_string(), container);
    }

    /// A registered container's network (`warm`: already attached), then its record; on
    /// failure it is destroyed and nothing of it is left when this returns.
    async fn finish(&self, handle: &str, started: Instant, warm: bool) -> Result<()> {
        if let Err(e) = self.net_setup(handle, warm).await {
            if let Err(d) = self.destroy(handle).await {
                tracing::warn!(handle, error = %d, "clean up after failed network setup");
            }
            // A failed Create answers with nothing of it left behind.
            self.reclaiming.wait_for(handle).await;
            return Err(e);
        }
        // Only now is the container complete: a bundle without a record is a create that a
        // crash interrupted, which the next gardend removes.
        self.write_record(handle)?;
        tracing::info!(
            handle,
            warm,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "created"
        );
        Ok(())
    }

    /// `container.json`, what a restarted gardend adopts the container from.
    fn write_record(&self, handle: &str) -> Result<()> {
        let c = self.lookup(handle)?;
        let init = c.sandbox.identity();
        let net = self.kernel.network_info(handle);
        let record = depot::Record {
            version: depot::VERSION,
            handle: handle.to_string(),
            init_pid: init.pid,
            init_start_time: init.start_time,
            // When the container's age starts, as Metrics counts it.
            created_unix_ns: depot::now_unix_ns().saturating_sub(c.created.elapsed().as_nanos()),
            spec: c.spec.clone(),
            image_env: c.image_env.clone(),
            lower_dirs: c.lower_dirs.clone(),
            image_user: c.image_user.clone(),
            image_dir: c.image_dir.clone(),
            subnet: net.as_ref().map(|n| n.subnet.clone()).unwrap_or_default(),
            container_ip: net.map(|n| n.container_ip).unwrap_or_default(),
            cgroup: match c.sandbox.cgroup_name() {
                name if name == handle => String::new(),
                name => name,
            },
        };
        depot::write_record(&c.bundle, &record);
        Ok(())
    }

    /// Links, firewall, /etc files (`attached`: done, a warm container's), create-time NetOut
    /// and NetIn, and the network properties.
    async fn net_setup(&self, handle: &str, attached: bool) -> Result<()> {
        let c = self.lookup(handle)?;
        let netout = convert::egress_rules(&c.spec.netout_rules).map_err(generic)?;
        if !attached {
            self.kernel
                .attach_network(
                    handle,
                    hostname(handle),
                    c.sandbox.as_ref(),
                    &netout,
                    convert::bandwidth(&c.spec.limits.bandwidth_limits),
                )
                .await
                .map_err(|e| generic(format!("network setup: {e}")))?;
        } else if !netout.is_empty() {
            self.kernel
                .net_out(handle, &netout)
                .await
                .map_err(|e| generic(format!("network setup: {e}")))?;
        }
        for m in &c.spec.netin {
            self.kernel
                .net_in(handle, m.host_port, m.container_port)
                .await
                .map_err(kernel_error)?;
        }
        let props = self.network_properties(handle);
        self.set_properties(&c, |p| p.extend(props));
        Ok(())
    }

    /// Resolve an image through the layer store: pulling and unpacking if needed, which
    /// blocks, so it runs off the async workers.
    pub(super) async fn resolve_image(
        &self,
        image: &garden_api::ImageRef,
    ) -> std::result::Result<rootfs::RootfsPlan, String> {
        let store = self.images.clone();
        let uri = image.uri.clone();
        let creds = rootfs::Credentials {
            username: image.username.clone(),
            password: image.password.clone(),
        };
        tokio::task::spawn_blocking(move || store.resolve(&uri, &creds, Path::new("/")))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// The `garden.network.*` and `kawasaki.*` properties of a container, with its NetIn
    /// mappings in Guardian's JSON.
    pub(super) fn network_properties(&self, handle: &str) -> BTreeMap<String, String> {
        let mut props = self.kernel.network_properties(handle);
        if let Some(net) = self.kernel.network_info(handle) {
            let mapped = serde_json::to_string(&convert::port_mappings(&net.mapped_ports))
                .expect("mappings serialise");
            props.insert("garden.network.mapped-ports".into(), mapped);
        }
        props
    }

    pub(super) async fn net_in(
        &self,
        c: &Container,
        host_port: u32,
        container_port: u32,
    ) -> Result<(u32, u32)> {
        validate::ports(host_port, container_port)?;
        let ports = self
            .kernel
            .net_in(&c.handle, host_port, container_port)
            .await
            .map_err(kernel_error)?;
        let props = self.network_properties(&c.handle);
        self.set_properties(c, |p| {
            if let Some(v) = props.get("garden.network.mapped-ports") {
                p.insert("garden.network.mapped-ports".into(), v.clone());
            }
        });
        Ok(ports)
    }
}

/// What a create made (or claimed) before the container is registered.
pub(super) struct Made {
    pub bundle: std::path::PathBuf,
    pub plan: rootfs::RootfsPlan,
    pub ids: Option<rootfs::IdMapping>,
    pub sandbox: Arc<dyn crate::kernel::Sandbox>,
    pub exits: crate::kernel::Exits,
}

/// Route garden-init's exit events to the processes they belong to.
pub(super) fn route_exits(container: &Arc<Container>, mut exits: crate::kernel::Exits) {
    let router = Arc::downgrade(container);
    tokio::spawn(async move {
        while let Some((id, status)) = exits.recv().await {
            let Some(c) = router.upgrade() else { break };
            let p = c
                .processes
                .lock()
                .expect("processes lock")
                .get(&id)
                .cloned();
            if let Some(p) = p {
                p.on_exit(status);
            }
        }
        // garden-init is gone (killed by the OOM killer or by hand, or destroyed): no exit
        // will ever be reported, so nobody may keep waiting for one. (Destroy reports its
        // own 137s.)
        if let Some(c) = router.upgrade() {
            if *c.state.lock().expect("state lock") == State::Destroying {
                return;
            }
            let processes: Vec<_> = c
                .processes
                .lock()
                .expect("processes lock")
                .values()
                .cloned()
                .collect();
            for p in processes {
                p.on_init_gone();
            }
        }
    });
}

/// The hostname create gives a container: Guardian keeps the last 49 bytes of the handle; we
/// start at a char boundary so it stays UTF-8 and within the kernel's 64-byte limit.
fn hostname(handle: &str) -> &str {
    let mut start = handle.len().saturating_sub(49);
    while !handle.is_char_boundary(start) {
        start += 1;
    }
    &handle[start..]
}
