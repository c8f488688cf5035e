//! The host's CPU time over a window of a ramp, per operation, from `/proc/stat`.
//!
//! Why: at the top of the density ramp the create rate is bounded by CPU, and the question is
//! whose. `/proc/stat` splits the whole host's time into user and kernel (system, irq and
//! softirq), so "ms of kernel CPU per create" says how much any runtime could gain by
//! changing its own code: nothing beyond the user share.

/// Cumulative CPU time of the whole host, in clock ticks (`USER_HZ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    user: u64,
    kernel: u64,
    idle: u64,
}

impl CpuTimes {
    /// The host's totals now (`None` without a readable `/proc/stat`).
    pub fn now() -> Option<CpuTimes> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// The first line of `/proc/stat`: `cpu user nice system idle iowait irq softirq steal ...`.
fn parse(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(CpuTimes {
        user: at(0) + at(1),
        kernel: at(2) + at(5) + at(6),
        idle: at(3) + at(4),
    })
}

/// The host's CPU time per operation over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuPerOp {
    /// Kernel time (system, irq, softirq) per operation, ms.
    pub kernel_ms: f64,
    /// User time per operation, ms: every process on the host, the runtime's own code included.
    pub user_ms: f64,
    /// The share of the host's CPU time that was busy (user, kernel or steal) in the window.
    pub busy: f64,
}

/// CPU per operation between two readings `ops` operations apart; `None` for an empty window
/// (no operations or no ticks: a window shorter than a clock tick says nothing).
pub fn per_op(before: CpuTimes, after: CpuTimes, ops: usize) -> Option<CpuPerOp> {
    let user = after.user.checked_sub(before.user)?;
    let kernel = after.kernel.checked_sub(before.kernel)?;
    let idle = after.idle.checked_sub(before.idle)?;
    let all = user + kernel + idle;
    if ops == 0 || all == 0 {
        return None;
    }
    let ms_per_tick = 1000.0 / ticks_per_second() as f64;
    Some(CpuPerOp {
        kernel_ms: kernel as f64 * ms_per_tick / ops as f64,
        user_ms: user as f64 * ms_per_tick / ops as f64,
        busy: (user + kernel) as f64 / all as f64,
    })
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant of the C library; it has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|t| *t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_host_line_and_splits_kernel_from_user() {
        let stat = "cpu  100 5 40 800 20 3 2 0 0 0\ncpu0 50 2 20 400 10 1 1 0 0 0\nintr 1\n";
        let t = parse(stat).expect("parsed");
        assert_eq!(
            t,
            CpuTimes {
                user: 105,
                kernel: 45,
                idle: 820
            }
        );
        assert!(parse("intr 1\n").is_none());
        assert!(parse("cpu  1 x 3\n").is_none());
    }

    #[test]
    fn per_op_divides_the_window() {
        let hz = ticks_per_second() as f64;
        let a = CpuTimes {
            user: 10,
            kernel: 20,
            idle: 30,
        };
        let b = CpuTimes {
            user: 30,
            kernel: 100,
            idle: 50,
        };
        let p = per_op(a, b, 10).expect("a window");
        assert!((p.user_ms - 20.0 * 1000.0 / hz / 10.0).abs() < 1e-9);
        assert!((p.kernel_ms - 80.0 * 1000.0 / hz / 10.0).abs() < 1e-9);
        assert!((p.busy - 100.0 / 120.0).abs() < 1e-9);
        assert!(per_op(a, a, 10).is_none());
        assert!(per_op(a, b, 0).is_none());
        assert!(per_op(b, a, 10).is_none());
    }

    #[test]
    fn the_window_is_the_last_tenth() {
        let w = TopWindow::new(100);
        assert_eq!((w.first, w.last), (90, 100));
        for i in 1..=89 {
            w.completed(i);
        }
        assert!(w.readings.lock().unwrap().0.is_none());
        w.completed(90);
        assert!(w.readings.lock().unwrap().0.is_some());
        assert!(w.per_op().is_none(), "no end reading yet");
        let w = TopWindow::new(3);
        assert_eq!((w.first, w.last), (2, 3));
    }

    #[test]
    fn the_host_is_readable() {
        let a = CpuTimes::now().expect("/proc/stat");
        assert!(a.user + a.kernel + a.idle > 0);
    }
}

/// Readings at the start and the end of the last tenth of a ramp of `n` operations, taken by
/// whichever worker completes the matching operation (the same window as the ramp's
/// "last 10%" rate).
#[derive(Debug)]
pub struct TopWindow {
    first: usize,
    last: usize,
    readings: std::sync::Mutex<(Option<CpuTimes>, Option<CpuTimes>)>,
}

impl TopWindow {
    pub fn new(n: usize) -> TopWindow {
        let k = (n / 10).max(1);
        TopWindow {
            first: n.saturating_sub(k),
            last: n,
            readings: std::sync::Mutex::new((None, None)),
        }
    }

    /// Call with the count of operations completed so far, right after each completion.
    pub fn completed(&self, count: usize) {
        if count != self.first && count != self.last {
            return;
        }
        let now = CpuTimes::now();
        let mut r = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        if count == self.first {
            r.0 = now;
        }
        if count == self.last {
            r.1 = now;
        }
    }

    /// CPU per operation over the window, if both readings were taken.
    pub fn per_op(&self) -> Option<CpuPerOp> {
        let r = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        per_op(r.0?, r.1?, self.last - self.first)
    }
}
