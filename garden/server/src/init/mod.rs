//! garden-init: pid 1 of every container.
//!
//! gardend clones it into new mount, pid, uts, ipc and net namespaces. It builds the root
//! filesystem (overlay, /proc, /sys, /dev, tmpfs), asks gardend on fd 3 to put it in the
//! container's cgroups (`runtime::ready` says why only then), makes its cgroup namespace,
//! pivots into the root, tells gardend it is ready on fd 3, then serves spawn and signal requests
//! on a unix socket in the bundle directory. As the parent of every process it starts, it
//! reaps them (and any orphan) at once and records exit codes in the bundle, so processes
//! depend on neither gardend's liveness nor its sockets.
//!
//! A pea's garden-init (`InitConfig::pea`) joins a container's namespaces instead, builds the
//! pea's root in a mount namespace of its own, serves its one process and leaves with it.

mod caps;
pub mod proto;
pub mod seccomp;
mod setup;
mod supervisor;
pub mod user;
mod userns;

use std::io::Write;
use std::os::fd::FromRawFd;

/// Entry point of the garden-init binary: `garden-init <bundle-dir>`.
pub fn main() -> ! {
    // Not dumpable: /proc/1/{fd,root,cwd,mem} of this process then need CAP_SYS_PTRACE, which
    // unprivileged container processes lack, so the host directory fds init holds stay
    // unreachable from inside. (execve makes its children dumpable again.)
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let bundle = match std::env::args_os().nth(1) {
        Some(b) => std::path::PathBuf::from(b),
        None => fatal("usage: garden-init <bundle-dir>"),
    };
    // SAFETY: gardend hands us our end of the setup channel as fd 3 and nothing else owns it.
    let mut ready = unsafe { std::fs::File::from_raw_fd(3) };
    let config = match std::fs::read(bundle.join("init.json"))
        .map_err(|e| format!("read init.json: {e}"))
        .and_then(|b| {
            serde_json::from_slice::<proto::InitConfig>(&b)
                .map_err(|e| format!("parse init.json: {e}"))
        }) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.write_all(e.as_bytes());
            std::process::exit(1);
        }
    };
    let prepared = match setup::prepare(&config, &mut ready) {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.write_all(e.as_bytes());
            std::process::exit(1);
        }
    };
    // The container is built: from here on init needs no mount, namespace or keyring call,
    // and only the capabilities to start processes.
    if let Err(e) = lock_down(prepared.caps) {
        let _ = ready.write_all(e.as_bytes());
        std::process::exit(1);
    }
    let _ = ready.write_all(b"ok");
    drop(ready);
    supervisor::run(prepared)
}

/// Seccomp on init itself (inherited by every process, so a start costs nothing for it), then
/// init's own capabilities down to what starting processes needs.
fn lock_down(c: caps::Container) -> Result<(), String> {
    if !c.privileged {
        let profile = seccomp::default_profile().map_err(|e| e.to_string())?;
        seccomp::install(&profile).map_err(|e| e.to_string())?;
    }
    caps::drop_for_init(c).map_err(|e| format!("drop init's capabilities: {e}"))
}

fn fatal(msg: &str) -> ! {
    eprintln!("garden-init: {msg}");
    std::process::exit(1)
}
