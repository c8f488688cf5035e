//! A process named by a pidfd instead of a pid, so that nothing gardend does to a container's
//! init can reach another process that later got the same pid.
//!
//! A pid is only stable until its process is reaped. gardend reaps garden-init as soon as it
//! exits, so every signal goes through `pidfd_send_signal(2)` (ESRCH once the process is
//! gone), and every `/proc/<pid>` lookup goes through [`PidFd::proc_dir`], which checks after
//! opening the directory that the pidfd's process still exists.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A process by pidfd, with the pid it had when the pidfd was opened (for `/proc` and logs).
#[derive(Debug)]
pub struct PidFd {
    pid: i32,
    fd: OwnedFd,
}

impl PidFd {
    /// Open a pidfd for `pid` (a child of ours not yet reaped, or any process whose identity
    /// the caller checks afterwards through [`PidFd::proc_dir`]).
    pub fn open(pid: i32) -> std::io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a fresh descriptor (close-on-exec by default) that
        // nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(PidFd { pid, fd })
    }

    /// The pid the process had; only meaningful while [`PidFd::is_alive`].
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A second descriptor for the same process (e.g. for the reactor to poll).
    pub fn try_clone(&self) -> std::io::Result<PidFd> {
        Ok(PidFd {
            pid: self.pid,
            fd: self.fd.try_clone()?,
        })
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Send `signal` to this process and no other; ESRCH once it has been reaped.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal with our own valid pidfd, no siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the process exists (running, or exited but not yet reaped).
    pub fn is_alive(&self) -> bool {
        self.signal(0).is_ok()
    }

    /// `/proc/<pid>` of this very process (O_PATH). Opened first and checked second: if the
    /// process still exists after the open, the pid cannot have been reused before it, so the
    /// directory is this process's; lookups through it fail once the process is gone.
    pub fn proc_dir(&self) -> std::io::Result<OwnedFd> {
        let dir = nix::fcntl::open(
            format!("/proc/{}", self.pid).as_str(),
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        self.signal(0)?;
        Ok(dir)
    }

    /// Open `path` relative to this process's `/proc/<pid>` (e.g. `root`, `ns/net`).
    pub fn open_in_proc(&self, path: &str, flags: nix::fcntl::OFlag) -> std::io::Result<OwnedFd> {
        let dir = self.proc_dir()?;
        nix::fcntl::openat(
            &dir,
            path,
            flags | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(std::io::Error::from)
    }

    /// The process's start time (`/proc/<pid>/stat` field 22, clock ticks since boot): with
    /// the pid, it names one process for good, so a record can be checked against pid reuse.
    pub fn start_time(&self) -> std::io::Result<u64> {
        self.stat_field(19)?
            .parse()
            .map_err(|_| std::io::Error::other(format!("unexpected /proc/{}/stat", self.pid)))
    }

    /// Exited and waiting to be reaped (by whoever is its parent).
    pub fn is_zombie(&self) -> bool {
        self.stat_field(0)
            .map(|s| s == "Z" || s == "X")
            .unwrap_or(true)
    }

    /// Field `n` of `/proc/<pid>/stat`, counted from the state (field 3) as 0.
    fn stat_field(&self, n: usize) -> std::io::Result<String> {
        let fd = self.open_in_proc("stat", nix::fcntl::OFlag::O_RDONLY)?;
        let stat = std::io::read_to_string(std::fs::File::from(fd))?;
        // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(n))
            .map(str::to_string)
            .ok_or_else(|| std::io::Error::other(format!("unexpected /proc/{}/stat", self.pid)))
    }

    /// The process's command name (`/proc/<pid>/comm`).
    pub fn comm(&self) -> std::io::Result<String> {
        let fd = self.open_in_proc("comm", nix::fcntl::OFlag::O_RDONLY)?;
        Ok(std::io::read_to_string(std::fs::File::from(fd))?
            .trim()
            .to_string())
    }

    /// Reap this process (our child) once it has exited; blocks until then.
    pub fn reap(&self) -> std::io::Result<()> {
        // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: waitid(P_PIDFD) on our own pidfd with a valid siginfo_t to fill.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.fd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_proc_lookups_stop_at_the_reaped_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .expect("spawn sleep");
        let p = PidFd::open(child.id() as i32).unwrap();
        assert!(p.is_alive());
        let stat = p
            .open_in_proc("stat", nix::fcntl::OFlag::O_RDONLY)
            .expect("own /proc entry");
        drop(stat);
        p.signal(libc::SIGKILL).unwrap();
        p.reap().unwrap();
        assert!(!p.is_alive(), "reaped: no process behind the pidfd");
        let e = p.signal(libc::SIGKILL).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
        assert!(p.proc_dir().is_err(), "no /proc entry for a reaped process");
        // Reaped through the pidfd: std's handle finds no child left.
        assert!(child.try_wait().is_err());
    }
}
