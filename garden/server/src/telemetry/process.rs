//! This process's own figures from /proc/self, for the standard `process_*` metrics and
//! `/debug/vars`.

/// A snapshot of /proc/self.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub threads: u64,
    pub cpu_seconds: f64,
    pub start_time_seconds: u64,
}

impl ProcessStats {
    /// `None` when /proc is not readable (never on Linux with /proc mounted).
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Numbering from proc(5): field 3 (state) is f[0].
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let ticks = clock_ticks();
        let page = 4096u64;
        let boot = boot_time().unwrap_or(0);
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        Some(ProcessStats {
            resident_bytes: field(24)? * page,
            virtual_bytes: field(23)?,
            open_fds,
            threads: field(20)?,
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks as f64,
            start_time_seconds: boot + field(22)? / ticks,
        })
    }
}

/// USER_HZ: 100 on every Linux architecture gardend runs on (the kernel's ABI fixes it for
/// /proc, whatever CONFIG_HZ is).
fn clock_ticks() -> u64 {
    100
}

fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_figures() {
        let p = ProcessStats::read().expect("/proc/self");
        assert!(p.resident_bytes > 0 && p.virtual_bytes >= p.resident_bytes);
        assert!(p.threads >= 1 && p.open_fds >= 3);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(p.start_time_seconds <= now && p.start_time_seconds + 3600 > now);
    }
}
