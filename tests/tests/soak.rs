//! A short soak in CI (issue 17 item 10): 25 s of create/run/stream/destroy with random
//! faults against one gardend, then no leak of any kind and bounded memory growth. The
//! `soak` binary runs the same for longer.

use std::time::Duration;

use e2e::{rt, Gardend};

#[test]
fn soak_leaves_nothing_and_memory_stays_bounded() {
    e2e::require_root!();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let g = Gardend::start();
    let report = rt().block_on(e2e::soak::run(&g, Duration::from_secs(25), 3, seed));
    println!("seed {seed}\n{report}");
    assert!(
        report.cycles >= 10,
        "too few cycles to mean anything:\n{report}"
    );
    assert!(report.faults > 0, "{report}");
    assert_eq!(report.unexpected, 0, "seed {seed}:\n{report}");
    assert!(report.leaks.is_empty(), "seed {seed}:\n{report}");
    // Output floods must not stay in gardend: memory returns near where it started.
    assert!(
        report.rss_end < report.rss_start + (64 << 20),
        "gardend kept {} MiB more after the soak:\n{report}",
        (report.rss_end.saturating_sub(report.rss_start)) >> 20
    );
    assert!(
        g.log().find("panicked").is_none(),
        "gardend panicked during the soak"
    );
}
