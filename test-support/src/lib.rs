//! The switch for tests that need root (real containers, cgroups, mounts, chown).
//!
//! `cargo test --workspace` must pass for a newcomer without root, and CI (which is root) must
//! never skip silently. So a root-only test starts with [`require_root!`]:
//! - `CELL_ROOT_TESTS` unset (or empty, or `0`): the test prints why and returns early;
//! - `CELL_ROOT_TESTS=1` as root: the test runs;
//! - `CELL_ROOT_TESTS=1` without root: the test fails, so a CI misconfiguration shows.
//!
//! `scripts/test.sh` exports `CELL_ROOT_TESTS=1`. The e2e harness re-exports both names
//! (`e2e::root_tests`, `e2e::require_root!`).

/// The environment variable that turns root-only tests on.
pub const ROOT_TESTS_VAR: &str = "CELL_ROOT_TESTS";

/// Whether root-only tests should run. Panics when they are asked for without root.
pub fn root_tests() -> bool {
    let wanted = std::env::var(ROOT_TESTS_VAR)
        .map(|v| !v.is_empty() && v != "0")
        .unwrap_or(false);
    if !wanted {
        return false;
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "{ROOT_TESTS_VAR} is set but this test runs as uid {euid}, not root"
    );
    true
}

/// First statement of a test that needs root: returns early (the test passes, with a note
/// on stderr) unless `CELL_ROOT_TESTS=1`; fails if that is set without root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::root_tests() {
            eprintln!("skipped: needs root; set CELL_ROOT_TESTS=1");
            return;
        }
    };
}

/// Run `script` with `sh -c`; whether it exited 0. For tests of kernel-side modules, which
/// spawn no programs themselves (`scripts/check-layers.sh`).
pub fn sh(script: &str) -> bool {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gated(ran: &mut bool) {
        require_root!();
        *ran = true;
    }

    // The environment is process-wide, so one test walks through every case in order.
    #[test]
    fn the_variable_decides_and_root_is_checked() {
        std::env::remove_var(ROOT_TESTS_VAR);
        assert!(!root_tests());
        let mut ran = false;
        gated(&mut ran);
        assert!(!ran, "unset: the macro returns early");
        std::env::set_var(ROOT_TESTS_VAR, "0");
        assert!(!root_tests());
        std::env::set_var(ROOT_TESTS_VAR, "1");
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        match std::panic::catch_unwind(|| {
            let mut ran = false;
            gated(&mut ran);
            ran
        }) {
            Ok(ran) => assert!(root && ran, "set as root: the test runs"),
            Err(_) => assert!(!root, "set without root: the test fails"),
        }
        std::env::remove_var(ROOT_TESTS_VAR);
    }
}
