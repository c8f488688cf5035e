//! Capacity, Metrics and BulkMetrics: cgroup statistics, disk usage (the quota's own figures
//! or a walk of the writable layer, plus the image) and network counters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use garden_api::{BulkMetrics, Capacity, ContainerDiskStat, ContainerMetricsEntry, Metrics};

use super::container::Container;
use super::{convert, flat_error, Garden};
use crate::kernel::Usage;

impl Garden {
    pub(super) fn capacity(&self) -> Capacity {
        let host = self.kernel.capacity(&self.config.depot);
        Capacity {
            memory_in_bytes: host.memory_bytes,
            disk_in_bytes: host.disk_bytes,
            schedulable_disk_in_bytes: host.disk_bytes,
            max_containers: self.max_containers(),
        }
    }

    pub(super) async fn bulk_metrics(&self, handles: &[String]) -> BulkMetrics {
        let mut out = BTreeMap::new();
        for h in handles {
            let entry = match self.lookup(h) {
                Ok(c) => ContainerMetricsEntry {
                    metrics: self.metrics(&c).await,
                    err: None,
                },
                Err(e) => match self.pea_metrics(h) {
                    Some(metrics) => ContainerMetricsEntry { metrics, err: None },
                    None => ContainerMetricsEntry {
                        metrics: Metrics::default(),
                        err: Some(flat_error(&e)),
                    },
                },
            };
            out.insert(h.clone(), entry);
        }
        out
    }

    /// Guardian answers BulkMetrics for a pea's process id too (a pea is a container of its
    /// own there): the statistics of its cgroup.
    fn pea_metrics(&self, process_id: &str) -> Option<Metrics> {
        let containers: Vec<Arc<Container>> = self
            .containers
            .read()
            .expect("containers lock")
            .values()
            .cloned()
            .collect();
        let stats = containers
            .iter()
            .find_map(|c| c.sandbox.pea_stats(process_id))?;
        Some(Metrics {
            memory_stat: convert::memory_stat(&stats.memory),
            cpu_stat: convert::cpu_stat(stats.cpu),
            pid_stat: convert::pid_stat(stats.pids),
            ..Default::default()
        })
    }

    pub(super) async fn metrics(&self, c: &Arc<Container>) -> Metrics {
        let stats = c.sandbox.stats();
        let (ex_bytes, ex_inodes) = match self.kernel.disk_usage(&c.handle) {
            Some(u) => (u.bytes, u.inodes),
            None => {
                let upper = crate::runtime::upper_dir(&c.bundle);
                tokio::task::spawn_blocking(move || du(&upper))
                    .await
                    .unwrap_or((0, 0))
            }
        };
        let image = self.image_size(&c.lower_dirs).await;
        let (img_bytes, img_inodes) = (image.bytes, image.inodes);
        Metrics {
            memory_stat: convert::memory_stat(&stats.memory),
            cpu_stat: convert::cpu_stat(stats.cpu),
            disk_stat: ContainerDiskStat {
                total_bytes_used: ex_bytes + img_bytes,
                total_inodes_used: ex_inodes + img_inodes,
                exclusive_bytes_used: ex_bytes,
                exclusive_inodes_used: ex_inodes,
            },
            network_stat: self
                .kernel
                .network_stats(&c.handle)
                .map(convert::network_stat),
            pid_stat: convert::pid_stat(stats.pids),
            age: c.created.elapsed().as_nanos() as u64,
            cpu_entitlement: cpu_entitlement(
                c.spec.limits.cpu_limits.shares(),
                self.config.cpu_entitlement_per_share,
                c.created.elapsed(),
            ),
        }
    }

    /// What the image layers use (cached: layers never change).
    pub(super) async fn image_size(&self, layers: &[PathBuf]) -> Usage {
        let mut total = Usage::default();
        for l in layers {
            let known = self.image_sizes.lock().expect("sizes lock").get(l).copied();
            let size = match known {
                Some(s) => s,
                None => {
                    let dir = l.clone();
                    let s = tokio::task::spawn_blocking(move || du(&dir))
                        .await
                        .unwrap_or((0, 0));
                    self.image_sizes
                        .lock()
                        .expect("sizes lock")
                        .insert(l.clone(), s);
                    s
                }
            };
            total.bytes += size.0;
            total.inodes += size.1;
        }
        total
    }
}

/// Nanoseconds of CPU a container with `shares` was entitled to over `age`, at
/// `per_share` percent of a CPU per share (Guardian's CPUEntitlement).
fn cpu_entitlement(shares: u64, per_share: f64, age: Duration) -> u64 {
    (shares as f64 * (per_share / 100.0) * age.as_nanos() as f64) as u64
}

/// Bytes (allocated blocks) and inodes under `dir`, not crossing into other filesystems.
fn du(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![dir.to_path_buf()];
    // Followed: a bundle's `upper` may be a symlink to its layer.
    let dev = std::fs::metadata(dir).map(|m| m.dev()).unwrap_or(0);
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            inodes += 1;
            bytes += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}
