//! Percentiles and summaries of latency samples.
//!
//! Percentiles interpolate linearly between the two nearest ranks (numpy's default), so that
//! a p99 of 20 samples is not just the maximum.

use std::time::Duration;

/// Order statistics of a set of samples, all in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// Summary of millisecond samples; `None` when there are none (or any is NaN).
    pub fn from_ms(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let pct = |p| percentile_sorted(&sorted, p).unwrap_or(f64::NAN);
        Some(Summary {
            count: sorted.len(),
            min: sorted[0],
            p50: pct(50.0),
            p90: pct(90.0),
            p99: pct(99.0),
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }

    /// Summary of durations, converted to milliseconds.
    pub fn from_durations(samples: &[Duration]) -> Option<Summary> {
        let ms: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
        Summary::from_ms(&ms)
    }
}

/// A duration in (fractional) milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`-th percentile (0..=100) of ascending `sorted` samples, interpolating between the
/// closest ranks. `None` for no samples or `p` outside 0..=100.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// Median of unsorted samples (used for repeated throughput runs).
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    percentile_sorted(&sorted, 50.0)
}

/// Throughput in decimal megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return f64::INFINITY;
    }
    bytes as f64 / 1e6 / secs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_between_ranks() {
        let s = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile_sorted(&s, 0.0), Some(1.0));
        assert_eq!(percentile_sorted(&s, 100.0), Some(4.0));
        assert_eq!(percentile_sorted(&s, 50.0), Some(2.5));
        // rank 0.9 * 3 = 2.7 -> 3 + 0.7 * (4 - 3)
        assert!((percentile_sorted(&s, 90.0).unwrap() - 3.7).abs() < 1e-9);
    }

    #[test]
    fn percentile_of_one_sample_is_that_sample() {
        assert_eq!(percentile_sorted(&[7.5], 99.0), Some(7.5));
    }

    #[test]
    fn percentile_rejects_empty_and_out_of_range() {
        assert_eq!(percentile_sorted(&[], 50.0), None);
        assert_eq!(percentile_sorted(&[1.0], 101.0), None);
        assert_eq!(percentile_sorted(&[1.0], -1.0), None);
    }

    #[test]
    fn summary_sorts_its_input() {
        let s = Summary::from_ms(&[5.0, 1.0, 4.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.count, 5);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 5.0);
        assert_eq!(s.p50, 3.0);
        assert_eq!(s.mean, 3.0);
        assert!((s.p90 - 4.6).abs() < 1e-9);
        assert!((s.p99 - 4.96).abs() < 1e-9);
    }

    #[test]
    fn summary_of_101_samples_hits_exact_ranks() {
        let samples: Vec<f64> = (0..=100).rev().map(f64::from).collect();
        let s = Summary::from_ms(&samples).unwrap();
        assert_eq!((s.p50, s.p90, s.p99), (50.0, 90.0, 99.0));
    }

    #[test]
    fn summary_of_nothing_or_nan_is_none() {
        assert!(Summary::from_ms(&[]).is_none());
        assert!(Summary::from_ms(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn durations_become_milliseconds() {
        let s = Summary::from_durations(&[Duration::from_micros(1500), Duration::from_millis(3)])
            .unwrap();
        assert_eq!(s.min, 1.5);
        assert_eq!(s.max, 3.0);
    }

    #[test]
    fn median_and_throughput() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        assert_eq!(mb_per_s(2_000_000, Duration::from_secs(2)), 1.0);
    }
}
