//! The default seccomp profile of unprivileged containers, as data, and its installation.
//!
//! Docker's and Guardian's default profiles are allowlists whose effect on a container without
//! CAP_SYS_ADMIN is to refuse a known set of calls: kernel keyrings (shared with the host, not
//! namespaced), module and kexec loading, bpf and perf, userfaultfd, new namespaces (above all
//! user namespaces, which hand out every capability again), mounts, the clock, swap, reboot,
//! personality changes other than the harmless ones... This profile is that refused set, each
//! answered with EPERM rather than a kill so programs can fall back; everything else is
//! allowed. garden-init installs it on itself once the container is built, so every process
//! inherits it and a process start costs nothing for it.
//!
//! Compiled with `seccompiler` (pure Rust, no libseccomp): it checks the architecture and
//! kills calls of any other ABI (i386 binaries cannot sneak past the x86_64 numbers).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// When a listed call is refused.
#[derive(Debug, Clone, Copy)]
enum When {
    Always,
    /// Its first argument (clone and unshare flags) asks for any of these bits.
    AnyFlag(&'static [u64]),
    /// Its first argument is none of these values.
    NoneOf(&'static [u64]),
}

const NEW_NAMESPACES: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWTIME as u64,
];

/// personality(2) values Docker allows: PER_LINUX, PER_LINUX32, UNAME26 with either, and the
/// query 0xffffffff.
const HARMLESS_PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The refused calls (x86_64 and aarch64 share these names).
const DENIED: &[(libc::c_long, When)] = &[
    // Kernel keyrings are global: a container could read or plant the host's keys.
    (libc::SYS_keyctl, When::Always),
    (libc::SYS_add_key, When::Always),
    (libc::SYS_request_key, When::Always),
    // Kernel code and introspection.
    (libc::SYS_bpf, When::Always),
    (libc::SYS_perf_event_open, When::Always),
    (libc::SYS_userfaultfd, When::Always),
    (libc::SYS_kexec_load, When::Always),
    (libc::SYS_kexec_file_load, When::Always),
    (libc::SYS_init_module, When::Always),
    (libc::SYS_finit_module, When::Always),
    (libc::SYS_delete_module, When::Always),
    (libc::SYS_lookup_dcookie, When::Always),
    (libc::SYS_kcmp, When::Always),
    (libc::SYS_syslog, When::Always),
    (libc::SYS_io_uring_setup, When::Always),
    (libc::SYS_io_uring_enter, When::Always),
    (libc::SYS_io_uring_register, When::Always),
    // Namespaces: no new ones (user namespaces would give back every capability), no joining.
    (libc::SYS_clone, When::AnyFlag(NEW_NAMESPACES)),
    (libc::SYS_unshare, When::AnyFlag(NEW_NAMESPACES)),
    (libc::SYS_setns, When::Always),
    // Filesystems and mounts.
    (libc::SYS_mount, When::Always),
    (libc::SYS_umount2, When::Always),
    (libc::SYS_pivot_root, When::Always),
    (libc::SYS_open_tree, When::Always),
    (libc::SYS_move_mount, When::Always),
    (libc::SYS_fsopen, When::Always),
    (libc::SYS_fsconfig, When::Always),
    (libc::SYS_fsmount, When::Always),
    (libc::SYS_fspick, When::Always),
    (libc::SYS_mount_setattr, When::Always),
    (libc::SYS_open_by_handle_at, When::Always),
    (libc::SYS_name_to_handle_at, When::Always),
    (libc::SYS_quotactl, When::Always),
    (libc::SYS_swapon, When::Always),
    (libc::SYS_swapoff, When::Always),
    (libc::SYS_acct, When::Always),
    // The host's clock and power.
    (libc::SYS_settimeofday, When::Always),
    (libc::SYS_clock_settime, When::Always),
    (libc::SYS_clock_adjtime, When::Always),
    (libc::SYS_reboot, When::Always),
    (libc::SYS_vhangup, When::Always),
    // Raw I/O ports.
    (libc::SYS_iopl, When::Always),
    (libc::SYS_ioperm, When::Always),
    (libc::SYS_personality, When::NoneOf(HARMLESS_PERSONALITIES)),
];

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("compile seccomp profile: {0}")]
    Compile(#[from] seccompiler::BackendError),
    #[error("this architecture has no seccomp profile: {0}")]
    Arch(#[from] seccompiler::Error),
    #[error("install seccomp filter: {0}")]
    Install(std::io::Error),
}

fn rules(when: When) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let cond = |op, value| SeccompCondition::new(0, SeccompCmpArgLen::Qword, op, value);
    Ok(match when {
        When::Always => Vec::new(),
        When::AnyFlag(bits) => bits
            .iter()
            .map(|b| SeccompRule::new(vec![cond(SeccompCmpOp::MaskedEq(*b), *b)?]))
            .collect::<Result<_, _>>()?,
        When::NoneOf(values) => vec![SeccompRule::new(
            values
                .iter()
                .map(|v| cond(SeccompCmpOp::Ne, *v))
                .collect::<Result<_, _>>()?,
        )?],
    })
}

/// The filters, in installation order: the profile (EPERM), clone3 (ENOSYS: its flags live in
/// memory a filter cannot read, and ENOSYS makes libc fall back to clone, which is checked),
/// and a guard refusing the x32 ABI's numbers, which would otherwise dodge the profile.
pub fn default_profile() -> Result<Vec<BpfProgram>, SeccompError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(seccompiler::Error::from)?;
    let mut denied = BTreeMap::new();
    for (nr, when) in DENIED {
        denied.insert(*nr, rules(*when)?);
    }
    let profile = SeccompFilter::new(
        denied,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )?;
    let clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    let mut programs: Vec<BpfProgram> = vec![profile.try_into()?, clone3.try_into()?];
    if cfg!(target_arch = "x86_64") {
        programs.push(x32_guard());
    }
    Ok(programs)
}

/// `nr >= __X32_SYSCALL_BIT` → EPERM.
fn x32_guard() -> BpfProgram {
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let stmt = |code: u32, k: u32| seccompiler::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    vec![
        // A = seccomp_data.nr (offset 0)
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        seccompiler::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Install on the calling (single-threaded) process; its children inherit the filters. Needs
/// CAP_SYS_ADMIN in the process's user namespace, so that no_new_privs need not be set: root
/// processes keep setuid-free semantics as in Guardian, users get no_new_privs separately.
pub fn install(programs: &[BpfProgram]) -> Result<(), SeccompError> {
    for p in programs {
        let prog = libc::sock_fprog {
            len: p.len() as u16,
            filter: p.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: seccomp(SET_MODE_FILTER) copies the program from a valid sock_fprog.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(SeccompError::Install(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_compiles_for_this_machine() {
        let programs = default_profile().unwrap();
        assert!(programs.len() >= 2);
        assert!(programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
    }
}
