//! Starting garden-init with clone(2): the child is pid 1 of a new pid namespace from its
//! first instruction, with no intermediate process and no setns dance.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sched::{clone, CloneFlags};
use nix::sys::signal::Signal;

/// Clone garden-init into new mount, pid, uts, ipc and net namespaces. `ready` becomes its
/// fd 3. Returns its host pid.
pub fn spawn_init(
    init_bin: &Path,
    bundle: &Path,
    ready: &OwnedFd,
    log: &OwnedFd,
) -> nix::Result<i32> {
    // Everything the child touches is prepared here: after clone in a multi-threaded process
    // the child may only make async-signal-safe calls (no allocation).
    let bin =
        CString::new(init_bin.as_os_str().as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    let argv0 = CString::new("garden-init").expect("static string");
    let arg1 =
        CString::new(bundle.as_os_str().as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    let argv: [*const libc::c_char; 3] = [argv0.as_ptr(), arg1.as_ptr(), std::ptr::null()];
    let path_env = CString::new("PATH=/usr/sbin:/usr/bin:/sbin:/bin").expect("static string");
    let envp: [*const libc::c_char; 2] = [path_env.as_ptr(), std::ptr::null()];
    let ready_fd = ready.as_raw_fd();
    let log_fd = log.as_raw_fd();
    let mut stack = vec![0u8; 256 * 1024];
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;
    let child = Box::new(|| -> isize {
        // SAFETY: only open, fcntl, dup2, close_range, execve and _exit run in the child, all
        // async-signal-safe, on values prepared before clone.
        unsafe {
            // garden-init gets exactly: 0 = /dev/null, 1 and 2 = <bundle>/init.log,
            // 3 = the ready pipe. Nothing else of gardend's may reach a container.
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            let ready = libc::fcntl(ready_fd, libc::F_DUPFD, 100);
            let log = libc::fcntl(log_fd, libc::F_DUPFD, 100);
            if null < 0 || ready < 0 || log < 0 {
                libc::_exit(126);
            }
            if libc::dup2(null, 0) < 0
                || libc::dup2(log, 1) < 0
                || libc::dup2(log, 2) < 0
                || libc::dup2(ready, 3) < 0
            {
                libc::_exit(126);
            }
            libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
            libc::execve(bin.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127)
        }
    });
    // SAFETY: the callback only performs async-signal-safe calls (see above).
    let pid = unsafe { clone(child, &mut stack, flags, Some(Signal::SIGCHLD as i32)) }?;
    Ok(pid.as_raw())
}
