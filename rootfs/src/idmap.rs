//! User-namespace id mappings: which host id a container id is stored as on disk, and back.
//!
//! Pure arithmetic over `/proc/<pid>/uid_map`-style ranges, shared by the runtime (which writes
//! the maps), StreamIn/StreamOut (which own and report files in container ids) and the
//! chown'd-copy fallback for image layers.

/// One line of a `uid_map`/`gid_map`: `size` ids from `container` up map to `host` up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// The id the kernel reports for a host id without a mapping in the namespace (`overflowuid`).
pub const OVERFLOW_ID: u32 = 65534;

/// The highest valid id; `u32::MAX` is `(uid_t)-1`. Guardian maps container root to it
/// ("maximus"), so container root is nobody in particular on the host.
pub const MAXIMUS: u32 = u32::MAX - 1;

/// The uid and gid maps of one user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMapping {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// Why a mapping cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdMapError {
    #[error("{kind} map: start {start} + length {length} runs past {MAXIMUS}, which belongs to container root")]
    TooLong {
        kind: &'static str,
        start: u32,
        length: u32,
    },
    #[error("{kind} map: start must be at least 1 (host root may not be mapped)")]
    HostRoot { kind: &'static str },
}

impl IdRange {
    fn to_host(self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.container)?;
        (off < self.size).then(|| self.host + off)
    }
    fn to_container(self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.host)?;
        (off < self.size).then(|| self.container + off)
    }
}

/// Guardian's layout: container root is [`MAXIMUS`]; container ids `1..=length` are host ids
/// `start..start+length`. `length` defaults to everything from `start` up to below maximus.
fn guardian_ranges(
    kind: &'static str,
    start: u32,
    length: Option<u32>,
) -> Result<Vec<IdRange>, IdMapError> {
    if start == 0 {
        return Err(IdMapError::HostRoot { kind });
    }
    let room = MAXIMUS.saturating_sub(start);
    let length = length.unwrap_or(room);
    if length > room {
        return Err(IdMapError::TooLong {
            kind,
            start,
            length,
        });
    }
    let mut ranges = vec![IdRange {
        container: 0,
        host: MAXIMUS,
        size: 1,
    }];
    if length > 0 {
        ranges.push(IdRange {
            container: 1,
            host: start,
            size: length,
        });
    }
    Ok(ranges)
}

impl IdMapping {
    /// Guardian's unprivileged mapping from its `--uid-map-*`/`--gid-map-*` settings (`None`
    /// length = up to maximus). The default (start 1) gives `0 4294967294 1`, `1 1 4294967293`.
    pub fn guardian(
        uid_start: u32,
        uid_length: Option<u32>,
        gid_start: u32,
        gid_length: Option<u32>,
    ) -> Result<IdMapping, IdMapError> {
        Ok(IdMapping {
            uids: guardian_ranges("uid", uid_start, uid_length)?,
            gids: guardian_ranges("gid", gid_start, gid_length)?,
        })
    }

    /// The host uid a container uid is stored as on disk; `None` outside the mapping.
    pub fn uid_to_host(&self, uid: u32) -> Option<u32> {
        self.uids.iter().find_map(|r| r.to_host(uid))
    }
    pub fn gid_to_host(&self, gid: u32) -> Option<u32> {
        self.gids.iter().find_map(|r| r.to_host(gid))
    }
    /// The container uid of an on-disk (host) uid, [`OVERFLOW_ID`] when it has none, as the
    /// kernel shows it inside.
    pub fn uid_to_container(&self, uid: u32) -> u32 {
        self.uids
            .iter()
            .find_map(|r| r.to_container(uid))
            .unwrap_or(OVERFLOW_ID)
    }
    pub fn gid_to_container(&self, gid: u32) -> u32 {
        self.gids
            .iter()
            .find_map(|r| r.to_container(gid))
            .unwrap_or(OVERFLOW_ID)
    }

    /// Container root's host ids (the owner of the container's own directories).
    pub fn root(&self) -> (u32, u32) {
        (
            self.uid_to_host(0).unwrap_or(OVERFLOW_ID),
            self.gid_to_host(0).unwrap_or(OVERFLOW_ID),
        )
    }

    /// The text of `/proc/<pid>/uid_map` (`uids`) or `gid_map`.
    pub fn map_file(ranges: &[IdRange]) -> String {
        ranges
            .iter()
            .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
            .collect()
    }

    /// A short stable name for caches keyed by mapping.
    pub fn key(&self) -> String {
        let part = |rs: &[IdRange]| {
            rs.iter()
                .map(|r| format!("{}-{}-{}", r.container, r.host, r.size))
                .collect::<Vec<_>>()
                .join("_")
        };
        format!("u{}.g{}", part(&self.uids), part(&self.gids))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guardian_default_maps_root_to_maximus_and_shifts_nothing_else() {
        let m = IdMapping::guardian(1, None, 1, None).unwrap();
        assert_eq!(
            IdMapping::map_file(&m.uids),
            "0 4294967294 1\n1 1 4294967293\n"
        );
        assert_eq!(m.uid_to_host(0), Some(MAXIMUS));
        assert_eq!(m.uid_to_host(1000), Some(1000));
        assert_eq!(m.uid_to_host(MAXIMUS), None);
        assert_eq!(m.uid_to_container(MAXIMUS), 0);
        assert_eq!(m.uid_to_container(0), OVERFLOW_ID, "host root is unmapped");
        assert_eq!(m.root(), (MAXIMUS, MAXIMUS));
    }

    #[test]
    fn subordinate_ranges_shift_ids() {
        let m = IdMapping::guardian(100000, Some(65536), 200000, Some(10)).unwrap();
        assert_eq!(m.uid_to_host(1), Some(100000));
        assert_eq!(m.uid_to_host(65536), Some(165535));
        assert_eq!(m.uid_to_host(65537), None);
        assert_eq!(m.gid_to_host(10), Some(200009));
        assert_eq!(m.gid_to_container(200000), 1);
        assert_eq!(m.uid_to_container(99999), OVERFLOW_ID);
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(IdMapping::guardian(0, None, 1, None).is_err());
        assert!(IdMapping::guardian(1, Some(MAXIMUS), 1, None).is_err());
        assert!(IdMapping::guardian(1, None, 5, Some(u32::MAX)).is_err());
        assert!(IdMapping::guardian(MAXIMUS, None, 1, None).is_ok());
    }
}

/// Run `f` on this thread with filesystem ids `uid`/`gid` (host ids) and every capability
/// the thread had, then go back to host root's. gardend creates files inside a container's
/// root this way: a filesystem mounted in the container's user namespace refuses (EOVERFLOW)
/// to create files for a host id it does not map, such as host root.
///
/// Credentials are per thread in Linux, so only the calling thread is affected.
pub fn as_fs_ids<T>(uid: u32, gid: u32, f: impl FnOnce() -> T) -> T {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            // Back to fsuid 0: the kernel re-raises the file capabilities from the permitted set.
            nix::unistd::setfsgid(nix::unistd::Gid::from_raw(0));
            nix::unistd::setfsuid(nix::unistd::Uid::from_raw(0));
        }
    }
    let _restore = Restore;
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
    // Leaving fsuid 0 dropped CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER... from the effective
    // set; they are still permitted, so raise them again.
    raise_effective();
    f()
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

fn raise_effective() {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset of the calling thread with version-3 sized buffers.
    unsafe {
        if libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        ) != 0
        {
            return;
        }
        for d in &mut data {
            d.effective = d.permitted;
        }
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        );
    }
}
