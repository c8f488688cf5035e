//! Garden's wire types become the server's own here, at the service boundary: below the core
//! (`kernel/`, `cgroups/`, `quota/`, `runtime/`) nothing takes a `garden_api` limit type, so a
//! wire change never reaches the code that talks to the kernel.

use garden_api::{
    BandwidthLimits, BindMount, DiskLimits, Limits, ProcessLimits, ResourceLimits,
    BIND_MOUNT_MODE_RO, DISK_LIMIT_SCOPE_TOTAL,
};

use crate::init::proto::{InitBindMount, Rlimit};
use crate::kernel::{Bandwidth, DiskLimit, Resources};

pub(super) fn resources(l: &Limits) -> Resources {
    Resources {
        memory_bytes: l.memory_limits.limit_in_bytes,
        pids_max: l.pid_limits.max,
        cpu_shares: l.cpu_limits.shares(),
    }
}

/// A pea's own limits (`ProcessSpec.limits`); zero = unlimited.
pub(super) fn process_resources(l: &ProcessLimits) -> Resources {
    Resources {
        memory_bytes: l.memory_limits.limit_in_bytes,
        pids_max: 0,
        cpu_shares: l.cpu_limits.shares(),
    }
}

pub(super) fn disk_limit(l: &DiskLimits) -> DiskLimit {
    DiskLimit {
        byte_soft: l.byte_soft,
        byte_hard: l.byte_hard,
        inode_soft: l.inode_soft,
        inode_hard: l.inode_hard,
        includes_image: l.scope == DISK_LIMIT_SCOPE_TOTAL,
    }
}

pub(super) fn bandwidth(l: &BandwidthLimits) -> Bandwidth {
    Bandwidth {
        rate: l.rate,
        burst: l.burst,
    }
}

pub(super) fn bind_mounts(mounts: &[BindMount]) -> Vec<InitBindMount> {
    mounts
        .iter()
        .map(|b| InitBindMount {
            src: b.src_path.clone().into(),
            dst: b.dst_path.clone().into(),
            read_only: b.mode == BIND_MOUNT_MODE_RO,
            fd: None,
            src_is_dir: false,
        })
        .collect()
}

/// The limits a process spec sets, for garden-init's setrlimit.
pub(super) fn rlimits(r: &ResourceLimits) -> Vec<(Rlimit, u64)> {
    [
        (Rlimit::As, r.as_),
        (Rlimit::Core, r.core),
        (Rlimit::Cpu, r.cpu),
        (Rlimit::Data, r.data),
        (Rlimit::Fsize, r.fsize),
        (Rlimit::Locks, r.locks),
        (Rlimit::Memlock, r.memlock),
        (Rlimit::Msgqueue, r.msgqueue),
        (Rlimit::Nice, r.nice),
        (Rlimit::Nofile, r.nofile),
        (Rlimit::Nproc, r.nproc),
        (Rlimit::Rss, r.rss),
        (Rlimit::Rtprio, r.rtprio),
        (Rlimit::Sigpending, r.sigpending),
        (Rlimit::Stack, r.stack),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect()
}
