//! cgroup v1: one directory per controller mount.

use std::path::{Path, PathBuf};

use super::Resources;

use super::{parse_kv, read, read_u64, write, MemoryStats, Result, Stats};

/// The controllers gardend uses.
pub const CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuacct", "devices"];

fn dir_of<'a>(ctrls: &[(String, PathBuf)], dirs: &'a [PathBuf], ctrl: &str) -> Option<&'a Path> {
    let (_, mount) = ctrls.iter().find(|(c, _)| c == ctrl)?;
    dirs.iter()
        .find(|d| d.starts_with(mount))
        .map(PathBuf::as_path)
}

pub fn apply(
    ctrls: &[(String, PathBuf)],
    dirs: &[PathBuf],
    limits: &Resources,
    cpu_quota: Option<u64>,
) -> Result<()> {
    if let Some(mem) = dir_of(ctrls, dirs, "memory") {
        let bytes = limits.memory_bytes;
        if bytes > 0 {
            write(&mem.join("memory.limit_in_bytes"), &bytes.to_string())?;
            // memory+swap = memory: no swapping past the limit. Absent without swap accounting.
            let memsw = mem.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &bytes.to_string())?;
            }
        }
    }
    if let Some(pids) = dir_of(ctrls, dirs, "pids") {
        if limits.pids_max > 0 {
            write(&pids.join("pids.max"), &limits.pids_max.to_string())?;
        }
    }
    if let Some(cpu) = dir_of(ctrls, dirs, "cpu") {
        let shares = limits.cpu_shares;
        if shares > 0 {
            write(&cpu.join("cpu.shares"), &shares.max(2).to_string())?;
        }
        if let Some(quota) = cpu_quota {
            write(
                &cpu.join("cpu.cfs_period_us"),
                &super::CPU_PERIOD_US.to_string(),
            )?;
            write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
    }
    Ok(())
}

/// The device allowlist, on a new cgroup (before any task is in it: the deny-all comes first).
pub fn restrict_devices(ctrls: &[(String, PathBuf)], dirs: &[PathBuf]) -> Result<()> {
    if let Some(devices) = dir_of(ctrls, dirs, "devices") {
        write(&devices.join("devices.deny"), "a")?;
        for rule in super::devices::ALLOWLIST {
            write(&devices.join("devices.allow"), &rule.v1_line())?;
        }
    }
    Ok(())
}

pub fn stats(ctrls: &[(String, PathBuf)], dirs: &[PathBuf]) -> Stats {
    let mut s = Stats::default();
    if let Some(mem) = dir_of(ctrls, dirs, "memory") {
        if let Ok(text) = read(&mem.join("memory.stat")) {
            s.memory = memory_stat(&text);
        }
    }
    if let Some(acct) = dir_of(ctrls, dirs, "cpuacct") {
        s.cpu.usage = read_u64(&acct.join("cpuacct.usage"));
        if let Ok(text) = read(&acct.join("cpuacct.stat")) {
            // USER_HZ ticks (100 per second on Linux) to nanoseconds.
            for (k, v) in parse_kv(&text) {
                match k {
                    "user" => s.cpu.user = v * 10_000_000,
                    "system" => s.cpu.system = v * 10_000_000,
                    _ => {}
                }
            }
        }
    }
    if let Some(pids) = dir_of(ctrls, dirs, "pids") {
        s.pids.current = read_u64(&pids.join("pids.current"));
        s.pids.max = read_u64(&pids.join("pids.max"));
    }
    s
}

pub fn oom_kills(ctrls: &[(String, PathBuf)], dirs: &[PathBuf]) -> u64 {
    dir_of(ctrls, dirs, "memory")
        .and_then(|m| read(&m.join("memory.oom_control")).ok())
        .and_then(|t| parse_kv(&t).find(|(k, _)| *k == "oom_kill").map(|(_, v)| v))
        .unwrap_or(0)
}

pub fn memory_stat(text: &str) -> MemoryStats {
    let mut m = MemoryStats::default();
    for (k, v) in parse_kv(text) {
        // v1 has no `anon`, `file` or `swapcached`: v2 names that happen to match are not its.
        if !matches!(k, "anon" | "file" | "swapcached") {
            m.set(k, v);
        }
    }
    let g = |n| m.get(n);
    m.usage_toward_limit = (g("total_rss") + g("total_cache") + g("total_swap"))
        .saturating_sub(g("total_inactive_file"));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_limits_to_files() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = |c: &str| tmp.path().join(c);
        let ctrls: Vec<(String, PathBuf)> = CONTROLLERS
            .iter()
            .map(|c| (c.to_string(), mount(c)))
            .collect();
        let dirs: Vec<PathBuf> = CONTROLLERS
            .iter()
            .map(|c| mount(c).join("garden/h"))
            .collect();
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(dirs[0].join("memory.memsw.limit_in_bytes"), "").unwrap();
        let limits = Resources {
            memory_bytes: 64 << 20,
            pids_max: 50,
            cpu_shares: 100,
        };
        apply(&ctrls, &dirs, &limits, Some(5_000)).unwrap();
        let r = |d: &PathBuf, f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        assert_eq!(r(&dirs[0], "memory.limit_in_bytes"), "67108864");
        assert_eq!(r(&dirs[0], "memory.memsw.limit_in_bytes"), "67108864");
        assert_eq!(r(&dirs[1], "pids.max"), "50");
        assert_eq!(r(&dirs[2], "cpu.shares"), "100");
        assert_eq!(r(&dirs[2], "cpu.cfs_quota_us"), "5000");
        assert_eq!(r(&dirs[2], "cpu.cfs_period_us"), "100000");
    }

    #[test]
    fn usage_toward_limit() {
        let m = memory_stat(
            "total_rss 100\ntotal_cache 50\ntotal_swap 0\ntotal_inactive_file 30\nrss 7\n",
        );
        assert_eq!(m.usage_toward_limit, 120);
        assert_eq!(m.get("rss"), 7);
        assert_eq!(m.get("anon"), 0);
    }
}
