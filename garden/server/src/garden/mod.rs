//! The core: Garden's semantics on top of the [`Kernel`]. Containers by handle, their
//! properties, grace timers, processes and streams. The only door from the HTTP layer in.
//!
//! One file per job: `container` (state and record), `create`, `destroy`, `stop`,
//! `processes` (Run, Attach, output streams), `files` (StreamIn/Out), `metrics`, `grace`,
//! `depot` (bundles on disk) and `convert` (Garden's wire types into the server's own, at this
//! boundary). Everything privileged goes through `kernel`, so `tests` drives the whole
//! lifecycle against a recording fake, without root.

mod adopt;
mod census;
mod container;
mod convert;
mod create;
mod depot;
mod destroy;
mod files;
mod grace;
mod metrics;
mod owner;
mod processes;
mod stop;
#[cfg(test)]
mod tests;
mod validate;
mod warm;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock, Weak};

use garden_api::*;

use crate::config::Config;
use crate::kernel::linux::{Kept, Linux, Survivor};
use crate::kernel::Kernel;
use crate::process::Output;
use crate::service::{Reply, Request, Service};
use container::{info, Container};

type Result<T> = std::result::Result<T, GardenError>;

/// How long shutdown waits for reclamations under way (a failing one is retried meanwhile).
const SHUTDOWN_RECLAIM: std::time::Duration = std::time::Duration::from_secs(60);

fn generic(e: impl std::fmt::Display) -> GardenError {
    GardenError::generic(e.to_string())
}

/// A kernel error as the client sees it: bad input (e.g. a NetIn port or network the host
/// refuses) is a 400, anything else a generic 500.
fn kernel_error(e: crate::kernel::KernelError) -> GardenError {
    if e.is_invalid_input() {
        GardenError::bad_request(e.to_string())
    } else {
        generic(e)
    }
}

fn json<T: serde::Serialize>(v: &T) -> Reply {
    Reply::Json(to_wire(v))
}

/// The Garden service.
pub struct Garden {
    me: Weak<Garden>,
    config: Config,
    /// Everything privileged: sandboxes, networking, disk quotas.
    kernel: Arc<dyn Kernel>,
    default_rootfs: rootfs::RootfsPlan,
    /// Images: local rootfses, registry pulls, OCI layouts; layers pinned per container.
    images: Arc<rootfs::Store>,
    containers: RwLock<HashMap<String, Arc<Container>>>,
    /// Handles whose Create is under way.
    reserved: Mutex<HashSet<String>>,
    /// Destroyed containers whose resources are still being freed.
    reclaiming: destroy::Reclaiming,
    next_stream: AtomicU64,
    image_sizes: Mutex<HashMap<PathBuf, (u64, u64)>>,
    /// The depot and instance locks (see `owner`), held while this gardend runs.
    ownership: std::sync::OnceLock<owner::Ownership>,
    /// The user namespace mapping of unprivileged containers.
    ids: rootfs::IdMapping,
    /// Containers made ahead of demand (`--warm-containers`).
    warm: Arc<warm::Pool>,
}

/// The depot and everything gardend keeps in the state directory are root's alone (0700):
/// writable layers hold files container root made, setuid-root binaries included, and no
/// host user may reach them. (The state directory itself may be shared, e.g. /var/lib, so
/// it is left as it is.)
fn keep_private(depot: &Path, state_dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let owned =
        ["layers", "images", "rootfs", "quota", "disk", "writable"].map(|d| state_dir.join(d));
    for dir in std::iter::once(depot.to_path_buf()).chain(owned) {
        if dir.is_dir() {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("make {} private", dir.display()))?;
        }
    }
    Ok(())
}

/// The layer store under the state dir (the depot's parent): `images/`, with plain tarballs
/// cached in `layers/`.
fn open_store(config: &Config) -> std::result::Result<rootfs::Store, rootfs::RootfsError> {
    let state_dir = config.depot.parent().unwrap_or(&config.depot);
    let gc_threshold = u64::try_from(config.graph_cleanup_threshold_in_megabytes)
        .ok()
        .map(|mb| mb.saturating_mul(1 << 20));
    rootfs::Store::open(
        &state_dir.join("images"),
        &state_dir.join("layers"),
        rootfs::StoreConfig {
            insecure_registries: config.insecure_docker_registry.clone(),
            gc_threshold,
        },
    )
}

impl Garden {
    /// On this host: make sure no other gardend owns the depot or the instance, probe
    /// cgroups, prepare the default rootfs, adopt the containers a previous run left whole,
    /// remove everything else it left, and return the service.
    pub async fn new(config: Config) -> anyhow::Result<Arc<Garden>> {
        use anyhow::Context;
        config
            .id_mapping()
            .context("--uid-map-*/--gid-map-* settings")?;
        std::fs::create_dir_all(&config.depot)
            .with_context(|| format!("create depot {}", config.depot.display()))?;
        let state_dir = config.depot.parent().unwrap_or(&config.depot).to_path_buf();
        // Before anything of the host (cgroups, chains, links, layers) is touched.
        let ownership = owner::claim(&state_dir, &config.depot, &config.cgroup_parent)?;
        let (depot_fs, layers) = crate::runtime::depot_fs::prepare(&config.depot, &state_dir);
        tracing::info!(?depot_fs, depot = %config.depot.display(), "depot");
        let images = Arc::new(open_store(&config).context("open the image layer store")?);
        let default_rootfs = match &config.default_rootfs {
            Some(uri) if !uri.is_empty() => {
                let uri = uri.clone();
                let store = images.clone();
                tokio::task::spawn_blocking(move || {
                    store.resolve(&uri, &rootfs::Credentials::default(), Path::new("/"))
                })
                .await?
                .context("resolve --default-rootfs")?
            }
            _ => {
                let dir = state_dir.join("rootfs");
                let dir = tokio::task::spawn_blocking(move || rootfs::ensure_busybox_rootfs(&dir))
                    .await?
                    .context("build the embedded busybox rootfs")?;
                rootfs::RootfsPlan::single(dir)
            }
        };
        let survivors = adopt::survivors(&config.depot, Linux::init_alive);
        let kept: Vec<Survivor> = survivors
            .iter()
            .map(|(record, mutable)| Survivor {
                handle: record.handle.clone(),
                subnet: record.subnet.clone(),
                container_ip: record.container_ip.clone(),
                had_netout: !record.spec.netout_rules.is_empty() || !mutable.net_out.is_empty(),
            })
            .collect();
        let linux = Linux::open(&config, &state_dir, layers, &kept).await?;
        keep_private(&config.depot, &state_dir)?;
        let (survivors, lost): (Vec<_>, Vec<_>) = survivors
            .into_iter()
            .partition(|(record, _)| linux.has_network(&record.handle));
        let keep = Kept {
            bundles: survivors.iter().map(|(r, _)| r.handle.clone()).collect(),
            cgroups: survivors
                .iter()
                .map(|(r, _)| r.cgroup().to_string())
                .collect(),
            inits: survivors.iter().map(|(r, _)| r.init_pid).collect(),
        };
        let linux = Arc::new(linux);
        for (record, _) in &lost {
            tracing::warn!(
                handle = record.handle,
                "removing a container whose network could not be kept"
            );
            let _ = linux.release_disk(&record.handle).await;
        }
        {
            let (linux, depot) = (linux.clone(), config.depot.clone());
            tokio::task::spawn_blocking(move || linux.sweep(&depot, &keep)).await?;
        }
        let garden = Garden::with_store(config, linux, default_rootfs, images);
        let _ = garden.ownership.set(ownership);
        garden.adopt_all(survivors).await;
        garden.start_warming();
        Ok(garden)
    }

    /// The service on any kernel (the fake in unit tests), with the rootfs for creates that
    /// name no image. The depot must exist.
    pub fn with_kernel(
        config: Config,
        kernel: Arc<dyn Kernel>,
        default_rootfs: rootfs::RootfsPlan,
    ) -> Arc<Garden> {
        let images = Arc::new(open_store(&config).expect("open the image layer store"));
        let garden = Garden::with_store(config, kernel, default_rootfs, images);
        garden.start_warming();
        garden
    }

    fn with_store(
        config: Config,
        kernel: Arc<dyn Kernel>,
        default_rootfs: rootfs::RootfsPlan,
        images: Arc<rootfs::Store>,
    ) -> Arc<Garden> {
        let ids = config.id_mapping().unwrap_or_else(|e| {
            tracing::error!(error = %e, "invalid id mapping; using Guardian's default");
            rootfs::IdMapping::guardian(1, None, 1, None).expect("the default mapping is valid")
        });
        let reclaiming = destroy::Reclaiming::new(config.reclaim_concurrency);
        Arc::new_cyclic(|me| Garden {
            me: me.clone(),
            config,
            kernel,
            default_rootfs,
            images,
            containers: RwLock::default(),
            reserved: Mutex::default(),
            reclaiming,
            next_stream: AtomicU64::new(1),
            image_sizes: Mutex::default(),
            ownership: std::sync::OnceLock::new(),
            ids,
            warm: Arc::default(),
        })
    }

    /// Wait until every destroyed container's resources are free (tests, shutdown).
    pub async fn settled(&self) {
        self.reclaiming.wait_all().await;
    }

    /// Containers keep running without gardend; reclamations of destroyed ones finish first.
    pub async fn shutdown(&self) {
        let pending = self.reclaiming.len();
        if pending > 0 {
            tracing::info!(pending, "waiting for destroyed containers to be reclaimed");
            if tokio::time::timeout(SHUTDOWN_RECLAIM, self.reclaiming.wait_all())
                .await
                .is_err()
            {
                // Their bundles carry the destroying mark: the next gardend finishes them.
                tracing::error!(
                    pending = self.reclaiming.len(),
                    "destroyed containers still not reclaimed; leaving them to the next start"
                );
            }
        }
        self.close_warm().await;
        let left = self.containers.read().expect("containers lock").len();
        tracing::info!(containers = left, "shutting down");
        self.kernel.shutdown(left == 0).await;
    }

    fn max_containers(&self) -> u64 {
        let pool = self.kernel.max_containers();
        if self.config.max_containers > 0 {
            self.config.max_containers.min(pool)
        } else {
            pool
        }
    }

    fn lookup(&self, handle: &str) -> Result<Arc<Container>> {
        self.containers
            .read()
            .expect("containers lock")
            .get(handle)
            .cloned()
            .ok_or_else(|| GardenError::container_not_found(handle))
    }

    async fn dispatch(&self, request: Request) -> Result<Reply> {
        match request {
            Request::Ping => Ok(json(&Empty {})),
            Request::Capacity => Ok(json(&self.capacity())),
            Request::List { filter } => Ok(json(&HandlesResponse {
                handles: self.list(&filter),
            })),
            Request::Create(spec) => self
                .create(*spec)
                .await
                .map(|handle| json(&HandleResponse { handle })),
            Request::Info { handle } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                Ok(json(&info(&c, self.kernel.as_ref())))
            }
            Request::BulkInfo { handles } => Ok(json(&self.bulk_info(&handles))),
            Request::BulkMetrics { handles } => Ok(json(&self.bulk_metrics(&handles).await)),
            Request::Destroy { handle } => self.destroy(&handle).await.map(|_| json(&Empty {})),
            Request::Stop { handle, kill } => {
                self.stop(&handle, kill).await.map(|_| json(&Empty {}))
            }
            Request::StreamIn {
                handle,
                user,
                destination,
                body,
            } => self
                .stream_in(&handle, &user, &destination, body)
                .await
                .map(|_| json(&Empty {})),
            Request::StreamOut {
                handle,
                user,
                source,
            } => self.stream_out(&handle, &user, &source).await,
            Request::CurrentBandwidthLimits { handle } => {
                let c = self.lookup(&handle)?;
                Ok(json(&c.spec.limits.bandwidth_limits))
            }
            Request::CurrentCpuLimits { handle } => {
                let c = self.lookup(&handle)?;
                let shares = c.spec.limits.cpu_limits.shares();
                let reported = if self.kernel.reports_cpu_weight() {
                    crate::cgroups::shares_to_weight(shares)
                } else {
                    shares
                };
                Ok(json(&CpuLimits {
                    limit_in_shares: reported,
                    weight: 0,
                }))
            }
            Request::CurrentDiskLimits { handle } => {
                let c = self.lookup(&handle)?;
                Ok(json(&c.spec.limits.disk_limits))
            }
            Request::CurrentMemoryLimits { handle } => {
                let c = self.lookup(&handle)?;
                Ok(json(&c.spec.limits.memory_limits))
            }
            Request::NetIn { handle, request } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                let (host_port, container_port) = self
                    .net_in(&c, request.host_port, request.container_port)
                    .await?;
                Ok(json(&NetInResponse {
                    host_port,
                    container_port,
                }))
            }
            Request::NetOut { handle, rule } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                let egress = convert::egress_rules(std::slice::from_ref(&rule)).map_err(generic)?;
                self.kernel
                    .net_out(&handle, &egress)
                    .await
                    .map_err(generic)?;
                c.net_out.lock().expect("net_out lock").push(rule);
                self.set_properties(&c, |_| {});
                Ok(json(&Empty {}))
            }
            Request::BulkNetOut { handle, rules } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                let egress = convert::egress_rules(&rules).map_err(generic)?;
                self.kernel
                    .net_out(&handle, &egress)
                    .await
                    .map_err(generic)?;
                c.net_out.lock().expect("net_out lock").extend(rules);
                self.set_properties(&c, |_| {});
                Ok(json(&Empty {}))
            }
            Request::SetGraceTime { handle, grace_time } => {
                let c = self.lookup(&handle)?;
                c.activity.set_grace(grace_time);
                self.set_properties(&c, |_| {});
                Ok(json(&Empty {}))
            }
            Request::Properties { handle } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                Ok(json(&c.properties()))
            }
            Request::Property { handle, key } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                let value = c.properties().remove(&key);
                match value {
                    Some(value) => Ok(json(&PropertyValue { value })),
                    None => Err(GardenError::generic(format!(
                        "property does not exist: {key}"
                    ))),
                }
            }
            Request::SetProperty { handle, key, value } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                self.set_properties(&c, |p| {
                    p.insert(key, value);
                });
                Ok(json(&Empty {}))
            }
            Request::RemoveProperty { handle, key } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                self.set_properties(&c, |p| {
                    p.remove(&key);
                });
                Ok(json(&Empty {}))
            }
            Request::Metrics { handle } => {
                let c = self.lookup(&handle)?;
                let _g = c.activity.guard();
                Ok(json(&self.metrics(&c).await))
            }
            Request::Run { handle, spec } => self.run(&handle, *spec).await,
            Request::Attach { handle, process_id } => self.attach(&handle, &process_id),
            Request::Stdout {
                handle,
                process_id,
                stream_id,
            } => self.output(&handle, &process_id, &stream_id, Output::Stdout),
            Request::Stderr {
                handle,
                process_id,
                stream_id,
            } => self.output(&handle, &process_id, &stream_id, Output::Stderr),
        }
    }

    fn list(&self, filter: &[(String, String)]) -> Vec<String> {
        let all = filter
            .iter()
            .any(|(k, v)| k == "garden.state" && v == "all");
        let mut filter: Vec<(String, String)> = filter
            .iter()
            .filter(|(k, v)| !(k == "garden.state" && v == "all"))
            .cloned()
            .collect();
        if !all && !filter.iter().any(|(k, _)| k == "garden.state") {
            filter.push(("garden.state".into(), "created".into()));
        }
        let containers = self.containers.read().expect("containers lock");
        let mut handles: Vec<String> = containers
            .values()
            .filter(|c| filter.iter().all(|(k, v)| c.property_is(k, v)))
            .map(|c| c.handle.clone())
            .collect();
        handles.sort();
        handles
    }

    /// Change the stored properties and persist them (with the reported ones and the NetOut
    /// rules) to `properties.json`, under the lock so the file never goes back in time.
    fn set_properties(&self, c: &Container, f: impl FnOnce(&mut BTreeMap<String, String>)) {
        let mut props = c.properties.lock().expect("properties lock");
        f(&mut props);
        let state = depot::Mutable {
            version: depot::VERSION,
            properties: c.reported(&props),
            net_out: c.net_out.lock().expect("net_out lock").clone(),
        };
        depot::write_mutable(&c.bundle, &state);
    }

    fn bulk_info(&self, handles: &[String]) -> BulkInfo {
        handles
            .iter()
            .map(|h| {
                let entry = match self.lookup(h) {
                    Ok(c) => ContainerInfoEntry {
                        info: info(&c, self.kernel.as_ref()),
                        err: None,
                    },
                    Err(e) => ContainerInfoEntry {
                        info: ContainerInfo::default(),
                        err: Some(flat_error(&e)),
                    },
                };
                (h.clone(), entry)
            })
            .collect()
    }
}

impl Service for Garden {
    async fn handle(&self, request: Request) -> Result<Reply> {
        self.dispatch(request).await
    }
}

/// Bulk entries carry flattened (generic) errors, as Guardian's do.
fn flat_error(e: &GardenError) -> ErrorBody {
    ErrorBody {
        message: e.to_string(),
        ..Default::default()
    }
}
