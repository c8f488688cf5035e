//! cgroups: one container cgroup per hierarchy under a parent gardend owns at each root.
//!
//! The layout is probed once at start ([`Layout::detect`]): a unified (v2) root, or v1
//! controllers each on its own mount (a hybrid host like this one also has a v2 mount carrying
//! only leftovers, which we ignore). Everything takes the cgroup root as a parameter, so the
//! file-level logic is tested against a temporary directory.

pub mod devices;
mod v1;
mod v2;

#[cfg(test)]
pub use v1::memory_stat as v1_memory_stat;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy found under {0}")]
    NoHierarchy(PathBuf),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, CgroupError>;

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(io("write", path))
}

pub(crate) fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io("read", path))
}

/// Which cgroup layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// v1: controller name -> mount point (e.g. "memory" -> /sys/fs/cgroup/memory).
    V1(Vec<(String, PathBuf)>),
    /// v2 unified hierarchy mounted at this root.
    V2(PathBuf),
}

impl Layout {
    /// Probe the host: cgroup2 mounted at /sys/fs/cgroup means unified; otherwise use the v1
    /// controller mounts listed in /proc/self/mountinfo.
    pub fn detect() -> Result<Layout> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(io("read", Path::new("/proc/self/mountinfo")))?;
        Layout::from_mountinfo(&mountinfo)
    }

    pub fn from_mountinfo(mountinfo: &str) -> Result<Layout> {
        let mut v1 = Vec::new();
        let mut unified_root = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split_whitespace().nth(4).unwrap_or("");
            let mut r = right.split_whitespace();
            let fstype = r.next().unwrap_or("");
            let _source = r.next();
            let options = r.next().unwrap_or("");
            match fstype {
                "cgroup2" if mount_point == "/sys/fs/cgroup" => {
                    unified_root = Some(PathBuf::from(mount_point))
                }
                "cgroup" => {
                    for ctrl in options.split(',') {
                        if v1::CONTROLLERS.contains(&ctrl)
                            && !v1.iter().any(|(c, _): &(String, PathBuf)| c == ctrl)
                        {
                            v1.push((ctrl.to_string(), PathBuf::from(mount_point)));
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(root) = unified_root {
            return Ok(Layout::V2(root));
        }
        if v1.iter().any(|(c, _)| c == "memory") {
            return Ok(Layout::V1(v1));
        }
        Err(CgroupError::NoHierarchy(PathBuf::from("/sys/fs/cgroup")))
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2(_))
    }

    /// Whether containers get the device allowlist ([`devices::ALLOWLIST`]): v1's devices
    /// controller, or on v2 a device program this kernel accepts. Without it containers lose
    /// CAP_MKNOD instead, so no device node can be made at all.
    pub fn restricts_devices(&self) -> bool {
        match self {
            Layout::V1(c) => c.iter().any(|(c, _)| c == "devices"),
            Layout::V2(_) => devices::bpf_supported(),
        }
    }
}

/// The cgroups of gardend: a parent per hierarchy, a child per container.
#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    parent: String,
    /// µs of CPU per period per share; 0 = no hard quota.
    cpu_quota_per_share: u64,
}

/// The CFS period gardend's quotas are expressed against (the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas under 1 ms.
const MIN_CPU_QUOTA_US: u64 = 1_000;

/// The hard CPU quota (µs per [`CPU_PERIOD_US`]) for `shares`, or `None` for no quota.
pub fn cpu_quota(shares: u64, per_share_us: u64) -> Option<u64> {
    if shares == 0 || per_share_us == 0 {
        return None;
    }
    Some(shares.saturating_mul(per_share_us).max(MIN_CPU_QUOTA_US))
}

/// One container's cgroup directories.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    layout: Layout,
    /// One directory per distinct hierarchy mount.
    dirs: Vec<PathBuf>,
}

/// The limits a container's cgroup enforces, in the server's own terms (the core converts
/// Garden's `Limits` at the service boundary). Zero = unlimited / default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub memory_bytes: u64,
    pub pids_max: u64,
    pub cpu_shares: u64,
}

/// What [`ContainerCgroup::stats`] reads.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub memory: MemoryStats,
    pub cpu: CpuStats,
    pub pids: PidStats,
}

/// Memory counters by the names cgroup v1's `memory.stat` gives them (v2's are translated,
/// and v2-only `anon`, `file` and `swapcached` kept), plus the limit and swap figures v2 keeps
/// in files of their own. Absent = 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    counters: BTreeMap<&'static str, u64>,
    /// What Garden's memory limit counts: resident and cached memory, minus what the kernel
    /// may drop (inactive file pages).
    pub usage_toward_limit: u64,
}

/// Every counter name a [`MemoryStats`] holds.
pub const MEMORY_COUNTERS: [&str; 31] = [
    "active_anon",
    "active_file",
    "anon",
    "cache",
    "file",
    "hierarchical_memory_limit",
    "hierarchical_memsw_limit",
    "inactive_anon",
    "inactive_file",
    "mapped_file",
    "pgfault",
    "pgmajfault",
    "pgpgin",
    "pgpgout",
    "rss",
    "swap",
    "swapcached",
    "total_active_anon",
    "total_active_file",
    "total_cache",
    "total_inactive_anon",
    "total_inactive_file",
    "total_mapped_file",
    "total_pgfault",
    "total_pgmajfault",
    "total_pgpgin",
    "total_pgpgout",
    "total_rss",
    "total_swap",
    "total_unevictable",
    "unevictable",
];

impl MemoryStats {
    pub fn get(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }

    /// Set a counter; names outside [`MEMORY_COUNTERS`] are ignored (the kernel reports more
    /// than Garden shows).
    fn set(&mut self, name: &str, value: u64) {
        if let Some(known) = MEMORY_COUNTERS.iter().find(|n| **n == name) {
            self.counters.insert(known, value);
        }
    }
}

/// CPU time in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub usage: u64,
    pub user: u64,
    pub system: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PidStats {
    pub current: u64,
    /// 0 = no limit.
    pub max: u64,
}

impl Cgroups {
    /// Create (if needed) the parent cgroup in every hierarchy.
    pub fn new(layout: Layout, parent: &str) -> Result<Cgroups> {
        let c = Cgroups {
            layout,
            parent: parent.to_string(),
            cpu_quota_per_share: 0,
        };
        match &c.layout {
            Layout::V1(_) => {
                for dir in c.dirs_for(None) {
                    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
                }
            }
            Layout::V2(root) => v2::prepare_parent(root, &root.join(&c.parent))?,
        }
        Ok(c)
    }

    /// Give every container with cpu shares a hard quota of `us` µs per share per period.
    pub fn with_cpu_quota_per_share(mut self, us: u64) -> Cgroups {
        self.cpu_quota_per_share = us;
        self
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn dirs_for(&self, handle: Option<&str>) -> Vec<PathBuf> {
        let base = |root: &Path| {
            let p = root.join(&self.parent);
            match handle {
                Some(h) => p.join(h),
                None => p,
            }
        };
        match &self.layout {
            Layout::V1(ctrls) => {
                let mut dirs: Vec<PathBuf> = Vec::new();
                for (_, mount) in ctrls {
                    let d = base(mount);
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
                dirs
            }
            Layout::V2(root) => vec![base(root)],
        }
    }

    /// Remove the (empty) parent cgroups, e.g. when the last container is gone at shutdown.
    /// A parent that still has children stays.
    pub fn remove_parent(&self) {
        for d in self.dirs_for(None) {
            if let Err(e) = fs::remove_dir(&d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::debug!(dir = %d.display(), error = %e, "parent cgroup kept");
                }
            }
        }
    }

    /// Names of the container cgroups under the parent, in any hierarchy.
    pub fn children(&self) -> Vec<String> {
        // Every hierarchy: a create cut short by a crash may have made the container's
        // directory in some of them only.
        let mut names = std::collections::BTreeSet::new();
        for parent in self.dirs_for(None) {
            if let Ok(d) = fs::read_dir(parent) {
                names.extend(
                    d.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
        }
        names.into_iter().collect()
    }

    /// The container's cgroup, without touching the filesystem.
    pub fn container(&self, handle: &str) -> ContainerCgroup {
        ContainerCgroup {
            layout: self.layout.clone(),
            dirs: self.dirs_for(Some(handle)),
        }
    }

    /// Create the container's cgroup and apply its limits.
    pub fn create(&self, handle: &str, limits: &Resources) -> Result<ContainerCgroup> {
        let cg = self.container(handle);
        for d in &cg.dirs {
            fs::create_dir_all(d).map_err(io("create", d))?;
        }
        let restricted = match &self.layout {
            Layout::V1(ctrls) => v1::restrict_devices(ctrls, &cg.dirs),
            Layout::V2(_) if self.layout.restricts_devices() => {
                let dir = &cg.dirs[0];
                devices::attach(dir).map_err(io("attach the device program to", dir))
            }
            Layout::V2(_) => Ok(()),
        };
        if let Err(e) = restricted.and_then(|()| self.apply(&cg, limits)) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// Set `limits` (zero = leave as it is) on a container's cgroup, new or running.
    pub fn apply(&self, cg: &ContainerCgroup, limits: &Resources) -> Result<()> {
        let quota = cpu_quota(limits.cpu_shares, self.cpu_quota_per_share);
        match &self.layout {
            Layout::V1(ctrls) => v1::apply(ctrls, &cg.dirs, limits, quota),
            Layout::V2(_) => v2::apply(&cg.dirs[0], limits, quota),
        }
    }
}

impl ContainerCgroup {
    /// Its name under gardend's parent.
    pub fn name(&self) -> String {
        self.dirs
            .first()
            .and_then(|d| d.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The `cgroup.procs` files a task writes itself into to join the container.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Host pids in the container (read from the first hierarchy: all hold the same tasks).
    pub fn pids(&self) -> Vec<i32> {
        let Some(d) = self.dirs.first() else {
            return Vec::new();
        };
        fs::read_to_string(d.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    pub fn stats(&self) -> Stats {
        match &self.layout {
            Layout::V1(ctrls) => v1::stats(ctrls, &self.dirs),
            Layout::V2(_) => v2::stats(&self.dirs[0]),
        }
    }

    /// Whether the memory controller recorded an OOM kill since creation.
    pub fn oom_kills(&self) -> u64 {
        match &self.layout {
            Layout::V1(ctrls) => v1::oom_kills(ctrls, &self.dirs),
            Layout::V2(_) => v2::oom_kills(&self.dirs[0]),
        }
    }

    /// Remove every directory; retries while the kernel still counts exiting tasks.
    pub fn remove(&self) -> Result<()> {
        for d in &self.dirs {
            let mut attempts = 0;
            loop {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if attempts < 200 && e.raw_os_error() == Some(libc::EBUSY) => {
                        attempts += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        return Err(CgroupError::Io {
                            op: "remove",
                            path: d.clone(),
                            source: e,
                        })
                    }
                }
            }
        }
        Ok(())
    }
}

/// cgroup v2 `cpu.weight` for v1 shares, as the OCI runtimes convert it.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= 2 {
        return 1;
    }
    if shares >= 262_144 {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    10f64.powf(exponent).ceil() as u64
}

/// A file holding one number (`pids.current`, `cpuacct.usage`); 0 when absent or `max`.
pub(crate) fn read_u64(path: &Path) -> u64 {
    read(path)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Parse `key value` lines (memory.stat, cpu.stat).
pub(crate) fn parse_kv(s: &str) -> impl Iterator<Item = (&str, u64)> {
    s.lines().filter_map(|l| {
        let (k, v) = l.split_once(' ')?;
        Some((k, v.trim().parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_hybrid_as_v1() {
        let mi = "\
35 25 0:30 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
37 35 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
38 35 0:33 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
39 35 0:34 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
40 35 0:35 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
";
        let l = Layout::from_mountinfo(mi).unwrap();
        match l {
            Layout::V1(c) => {
                assert!(c.contains(&("memory".into(), "/sys/fs/cgroup/memory".into())));
                assert!(c.contains(&("cpuacct".into(), "/sys/fs/cgroup/cpuacct".into())));
            }
            other => panic!("{other:?}"),
        }
        let v2 = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            Layout::from_mountinfo(v2).unwrap(),
            Layout::V2("/sys/fs/cgroup".into())
        );
        assert!(Layout::from_mountinfo("").is_err());
    }

    #[test]
    fn weight_conversion_matches_guardian() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(512), 59);
        assert_eq!(shares_to_weight(300), 39);
        assert_eq!(shares_to_weight(100_000), 4_340);
    }

    #[test]
    fn cpu_quota_per_share() {
        assert_eq!(cpu_quota(512, 0), None);
        assert_eq!(cpu_quota(0, 10), None);
        assert_eq!(cpu_quota(512, 10), Some(5_120));
        assert_eq!(
            cpu_quota(2, 10),
            Some(1_000),
            "floored at the kernel minimum"
        );
    }
}
