//! Capability sets, as Guardian gives them: what garden-init keeps for itself once the
//! container is built, and what a process gets at exec.
//!
//! A process running as root gets its bounding set as permitted and effective at exec, so the
//! bounding set (and the inheritable set, which Guardian fills the same) is all a process
//! start has to shape; non-root processes lose everything at setuid and get no_new_privs, so
//! no setuid or file-capability binary gives anything back.

use caps::{CapSet, Capability, CapsHashSet};

/// The bounding set of an unprivileged container's processes: Guardian's and Docker's default
/// (`a80425fb`). CAP_MKNOD is safe with it because the device allowlist (cgroup) only lets
/// the standard character devices be opened, whatever nodes a process makes.
pub const UNPRIVILEGED: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_NET_RAW,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_MKNOD,
    Capability::CAP_AUDIT_WRITE,
    Capability::CAP_SETFCAP,
];

/// What garden-init itself still needs after setup: set users and groups (and shape its
/// children's sets), chown and chmod terminals and working directories, read the image's
/// files and create directories anywhere, signal every process.
const INIT: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_KILL,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETPCAP,
];

/// What decides a container's sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Container {
    pub privileged: bool,
    /// Device nodes are harmless (the devices cgroup allowlists what may be opened).
    pub mknod: bool,
}

/// Which sets a new process gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Guardian's unprivileged set for every user (less CAP_MKNOD without a device allowlist).
    Unprivileged { mknod: bool },
    /// A privileged container's root: everything this kernel has.
    PrivilegedRoot,
    /// A privileged container's other users: Guardian bounds them to the unprivileged set plus
    /// CAP_SYS_ADMIN (`a82425fb`).
    PrivilegedUser,
}

impl Profile {
    pub fn new(c: Container, uid: u32) -> Profile {
        match (c.privileged, uid) {
            (false, _) => Profile::Unprivileged { mknod: c.mknod },
            (true, 0) => Profile::PrivilegedRoot,
            (true, _) => Profile::PrivilegedUser,
        }
    }

    fn set(self) -> CapsHashSet {
        match self {
            Profile::Unprivileged { mknod } => UNPRIVILEGED
                .iter()
                .copied()
                .filter(|c| mknod || *c != Capability::CAP_MKNOD)
                .collect(),
            Profile::PrivilegedRoot => caps::all(),
            Profile::PrivilegedUser => UNPRIVILEGED
                .iter()
                .copied()
                .chain([Capability::CAP_SYS_ADMIN])
                .collect(),
        }
    }
}

/// After setup: init keeps [`INIT`] as permitted and effective. Its bounding set stays whole in
/// a privileged container (root processes there get everything at exec) and shrinks to the
/// unprivileged set otherwise, so no child can ever regain more.
pub fn drop_for_init(c: Container) -> Result<(), caps::errors::CapsError> {
    if !c.privileged {
        restrict_bounding(&Profile::new(c, 0).set())?;
    }
    let keep: CapsHashSet = INIT.iter().copied().collect();
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new())?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    Ok(())
}

/// In a new process before setuid and exec: its bounding and inheritable sets.
pub fn shape_process(profile: Profile) -> Result<(), caps::errors::CapsError> {
    let set = profile.set();
    restrict_bounding(&set)?;
    // Inheritable may only grow within the bounding set, with CAP_SETPCAP.
    let inheritable: CapsHashSet = set
        .intersection(&caps::read(None, CapSet::Bounding)?)
        .copied()
        .collect();
    caps::set(None, CapSet::Inheritable, &inheritable)
}

fn restrict_bounding(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    for cap in caps::read(None, CapSet::Bounding)? {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    Ok(())
}
