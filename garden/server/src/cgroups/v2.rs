//! cgroup v2: one directory in the unified hierarchy.

use std::fs;
use std::path::Path;

use super::Resources;

use super::{io, parse_kv, read, read_u64, shares_to_weight, write, MemoryStats, Result, Stats};

const CONTROLLERS: &[&str] = &["memory", "pids", "cpu"];

/// Enable our controllers from the root down to the parent, so container cgroups get them.
pub fn prepare_parent(root: &Path, parent: &Path) -> Result<()> {
    enable(root);
    fs::create_dir_all(parent).map_err(io("create", parent))?;
    enable(parent);
    Ok(())
}

fn enable(dir: &Path) {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for c in CONTROLLERS
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
    {
        // Best effort: a controller that cannot be enabled shows up as a missing limit file.
        let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
    }
}

pub fn apply(dir: &Path, limits: &Resources, cpu_quota: Option<u64>) -> Result<()> {
    let bytes = limits.memory_bytes;
    if bytes > 0 {
        write(&dir.join("memory.max"), &bytes.to_string())?;
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            write(&swap, "0")?;
        }
    }
    if limits.pids_max > 0 {
        write(&dir.join("pids.max"), &limits.pids_max.to_string())?;
    }
    let shares = limits.cpu_shares;
    if shares > 0 {
        write(
            &dir.join("cpu.weight"),
            &shares_to_weight(shares).to_string(),
        )?;
    }
    if let Some(quota) = cpu_quota {
        write(
            &dir.join("cpu.max"),
            &format!("{quota} {}", super::CPU_PERIOD_US),
        )?;
    }
    Ok(())
}

pub fn stats(dir: &Path) -> Stats {
    let mut s = Stats::default();
    if let Ok(text) = read(&dir.join("memory.stat")) {
        s.memory = memory_stat(&text);
    }
    // v1 reports the limit and swap usage in memory.stat; v2 keeps them in their own files.
    let number = |f: &str| {
        read(&dir.join(f))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    if let Some(limit) = number("memory.max") {
        s.memory.set("hierarchical_memory_limit", limit);
        let memsw = limit + number("memory.swap.max").unwrap_or(0);
        s.memory.set("hierarchical_memsw_limit", memsw);
    }
    if let Some(swap) = number("memory.swap.current") {
        s.memory.set("swap", swap);
        s.memory.set("total_swap", swap);
    }
    if let Ok(text) = read(&dir.join("cpu.stat")) {
        for (k, v) in parse_kv(&text) {
            match k {
                "usage_usec" => s.cpu.usage = v * 1000,
                "user_usec" => s.cpu.user = v * 1000,
                "system_usec" => s.cpu.system = v * 1000,
                _ => {}
            }
        }
    }
    s.pids.current = read_u64(&dir.join("pids.current"));
    s.pids.max = read_u64(&dir.join("pids.max"));
    s
}

pub fn oom_kills(dir: &Path) -> u64 {
    read(&dir.join("memory.events"))
        .ok()
        .and_then(|t| parse_kv(&t).find(|(k, _)| *k == "oom_kill").map(|(_, v)| v))
        .unwrap_or(0)
}

pub fn memory_stat(text: &str) -> MemoryStats {
    let mut m = MemoryStats::default();
    for (k, v) in parse_kv(text) {
        match k {
            "anon" | "file" | "swapcached" | "active_anon" | "active_file" | "inactive_anon"
            | "inactive_file" | "pgfault" | "pgmajfault" | "unevictable" => m.set(k, v),
            "file_mapped" => m.set("mapped_file", v),
            _ => {}
        }
    }
    // Mirror the v1 names too, so clients reading total_* see the same figures.
    for (v1, v2) in [
        ("rss", "anon"),
        ("cache", "file"),
        ("total_rss", "anon"),
        ("total_cache", "file"),
        ("total_active_anon", "active_anon"),
        ("total_active_file", "active_file"),
        ("total_inactive_anon", "inactive_anon"),
        ("total_inactive_file", "inactive_file"),
        ("total_mapped_file", "mapped_file"),
        ("total_pgfault", "pgfault"),
        ("total_pgmajfault", "pgmajfault"),
        ("total_unevictable", "unevictable"),
    ] {
        m.set(v1, m.get(v2));
    }
    let g = |n| m.get(n);
    m.usage_toward_limit =
        (g("file") + g("anon") + g("swapcached")).saturating_sub(g("inactive_file"));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applies_limits_to_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(d.join("memory.swap.max"), "").unwrap();
        let limits = Resources {
            memory_bytes: 1 << 20,
            pids_max: 10,
            cpu_shares: 1024,
        };
        apply(d, &limits, Some(2_000)).unwrap();
        assert_eq!(fs::read_to_string(d.join("memory.max")).unwrap(), "1048576");
        assert_eq!(fs::read_to_string(d.join("memory.swap.max")).unwrap(), "0");
        assert_eq!(fs::read_to_string(d.join("pids.max")).unwrap(), "10");
        assert_eq!(fs::read_to_string(d.join("cpu.weight")).unwrap(), "100");
        assert_eq!(
            fs::read_to_string(d.join("cpu.max")).unwrap(),
            "2000 100000"
        );
    }

    #[test]
    fn usage_toward_limit() {
        let m = memory_stat("anon 100\nfile 50\nswapcached 0\ninactive_file 30\n");
        assert_eq!(m.usage_toward_limit, 120);
        assert_eq!(
            (m.get("rss"), m.get("total_cache")),
            (100, 50),
            "v1 names mirrored"
        );
    }

    #[test]
    fn stats_from_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let w = |f: &str, v: &str| fs::write(d.join(f), v).unwrap();
        w("memory.stat", "anon 4096\nfile 8192\ninactive_file 4096\n");
        w("memory.max", "67108864\n");
        w("memory.swap.max", "0\n");
        w("memory.swap.current", "0\n");
        w(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
        );
        w("pids.current", "3\n");
        w("pids.max", "max\n");
        let s = stats(d);
        assert_eq!(s.memory.get("hierarchical_memory_limit"), 64 << 20);
        assert_eq!(s.memory.get("hierarchical_memsw_limit"), 64 << 20);
        assert_eq!(s.memory.usage_toward_limit, 8192);
        assert_eq!(
            (s.cpu.usage, s.cpu.user, s.cpu.system),
            (1_500_000, 1_000_000, 500_000)
        );
        assert_eq!(
            (s.pids.current, s.pids.max),
            (3, 0),
            "\"max\" = no limit = 0"
        );
        w("pids.max", "50\n");
        w("memory.max", "max\n");
        let s = stats(d);
        assert_eq!(s.pids.max, 50);
        assert_eq!(s.memory.get("hierarchical_memory_limit"), 0, "no limit");
    }
}
