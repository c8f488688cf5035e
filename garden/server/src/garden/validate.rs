//! Input checks done before Create or Run touches anything, so a value the kernel would refuse
//! (or one that would leave garden-init unable to start) is a clear 400 instead of a 500 from
//! deep inside setup.

use std::path::Path;

use garden_api::{BindMount, GardenError, Limits, DISK_LIMIT_SCOPE_EXCLUSIVE};

use super::Result;

/// Below this garden-init cannot start (the overlay mount, its own pages): Docker's minimum.
pub(super) const MIN_MEMORY_BYTES: u64 = 6 << 20;
/// `pids.max` accepts at most the kernel's PID_MAX_LIMIT.
pub(super) const MAX_PIDS: u64 = 4 << 20;
/// The kernel's largest `cpu.shares` (MAX_SHARES); larger values would be clamped silently.
pub(super) const MAX_CPU_SHARES: u64 = 1 << 18;
/// The largest byte count the kernel's counters take (a signed 64-bit value).
const MAX_BYTES: u64 = i64::MAX as u64;

fn bad(message: String) -> GardenError {
    GardenError::bad_request(message)
}

/// Bind mounts (a container's or a pea's) name absolute paths on both sides.
pub(super) fn bind_mounts(mounts: &[BindMount]) -> Result<()> {
    for b in mounts {
        if !Path::new(&b.src_path).is_absolute() || !Path::new(&b.dst_path).is_absolute() {
            return Err(bad(format!(
                "bind mount paths must be absolute: {} -> {}",
                b.src_path, b.dst_path
            )));
        }
    }
    Ok(())
}

/// Every create-time limit; zero always means "no limit".
pub(super) fn limits(l: &Limits) -> Result<()> {
    let memory = l.memory_limits.limit_in_bytes;
    if memory != 0 && memory < MIN_MEMORY_BYTES {
        return Err(bad(format!(
            "memory limit {memory} bytes is below the minimum of {MIN_MEMORY_BYTES} bytes"
        )));
    }
    if memory > MAX_BYTES {
        return Err(bad(format!(
            "memory limit {memory} bytes is out of range (at most {MAX_BYTES})"
        )));
    }
    let pids = l.pid_limits.max;
    if pids > MAX_PIDS {
        return Err(bad(format!(
            "pid limit {pids} is out of range (at most {MAX_PIDS})"
        )));
    }
    let shares = l.cpu_limits.shares();
    if shares > MAX_CPU_SHARES {
        return Err(bad(format!(
            "cpu shares {shares} out of range (at most {MAX_CPU_SHARES})"
        )));
    }
    let d = &l.disk_limits;
    if d.scope > DISK_LIMIT_SCOPE_EXCLUSIVE {
        return Err(bad(format!(
            "disk limit scope {} is neither 0 (total) nor 1 (exclusive)",
            d.scope
        )));
    }
    for (what, v) in [("byte_soft", d.byte_soft), ("byte_hard", d.byte_hard)] {
        if v > MAX_BYTES {
            return Err(bad(format!("disk limit {what} {v} is out of range")));
        }
    }
    for (what, soft, hard) in [
        ("byte", d.byte_soft, d.byte_hard),
        ("inode", d.inode_soft, d.inode_hard),
    ] {
        if soft != 0 && hard != 0 && soft > hard {
            return Err(bad(format!(
                "disk limit {what}_soft {soft} is above {what}_hard {hard}"
            )));
        }
    }
    Ok(())
}

/// A NetIn's ports: 0 means "pick one" (host) or "same as the host port" (container).
pub(super) fn ports(host_port: u32, container_port: u32) -> Result<()> {
    for (what, p) in [("host", host_port), ("container", container_port)] {
        if p > u32::from(u16::MAX) {
            return Err(bad(format!("{what} port {p} is out of range (0..65535)")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_unlimited_and_bounds_are_inclusive() {
        let mut l = Limits::default();
        assert!(limits(&l).is_ok());
        l.memory_limits.limit_in_bytes = MIN_MEMORY_BYTES;
        l.pid_limits.max = MAX_PIDS;
        l.cpu_limits.limit_in_shares = MAX_CPU_SHARES;
        assert!(limits(&l).is_ok());
        l.memory_limits.limit_in_bytes = 1;
        assert_eq!(limits(&l).unwrap_err().http_status(), 400);
        l.memory_limits.limit_in_bytes = 0;
        l.pid_limits.max = 1 << 63;
        assert!(limits(&l).unwrap_err().to_string().contains("pid limit"));
        l.pid_limits.max = 0;
        l.disk_limits.byte_soft = 2;
        l.disk_limits.byte_hard = 1;
        assert!(limits(&l).is_err());
        assert!(ports(65535, 0).is_ok());
        assert!(ports(0, 65536).is_err());
    }
}
