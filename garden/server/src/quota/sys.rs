//! The kernel interfaces behind the quota store: loop devices (LOOP_CONFIGURE with
//! autoclear), the project id of a directory (FS_IOC_FS{GET,SET}XATTR), and project quota
//! records (quotactl_fd with the generic Q_{GET,SET}QUOTA, which XFS implements).

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use super::{io, open_dir, raw, QuotaError, Result};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801C_581F;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401C_5820;
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

const PRJQUOTA: u32 = 2;
const Q_GETQUOTA: u32 = 0x80_0007;
const Q_SETQUOTA: u32 = 0x80_0008;
const Q_GETINFO: u32 = 0x80_0005;
const QIF_BLIMITS: u32 = 1;
const QIF_ILIMITS: u32 = 4;

#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

#[repr(C)]
#[derive(Default)]
struct IfDqblk {
    bhardlimit: u64,
    bsoftlimit: u64,
    curspace: u64,
    ihardlimit: u64,
    isoftlimit: u64,
    curinodes: u64,
    btime: u64,
    itime: u64,
    valid: u32,
}

#[repr(C)]
#[derive(Default)]
struct IfDqinfo {
    bgrace: u64,
    igrace: u64,
    flags: u32,
    valid: u32,
}

/// One project's limits (0 = none) and usage, in bytes and inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub bytes_hard: u64,
    pub bytes_soft: u64,
    pub inodes_hard: u64,
    pub inodes_soft: u64,
    pub bytes_used: u64,
    pub inodes_used: u64,
}

fn quotactl_fd(dir: &Path, cmd: i32, id: u32, addr: *mut libc::c_void) -> std::io::Result<()> {
    let f = fs::File::open(dir)?;
    // SAFETY: quotactl_fd(2) with an open fd and `addr` pointing at the struct `cmd` expects.
    let r = unsafe { libc::syscall(libc::SYS_quotactl_fd, f.as_raw_fd(), cmd, id, addr) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// QCMD(cmd, PRJQUOTA): the sub-command shifted over the quota type (high bit set, as C's).
fn qcmd(cmd: u32) -> i32 {
    ((cmd << 8) | PRJQUOTA) as i32
}

/// Whether project quota is on for the filesystem at `mount` (Q_GETINFO fails otherwise).
pub fn quota_state(mount: &Path) -> std::io::Result<()> {
    let mut info = IfDqinfo::default();
    quotactl_fd(
        mount,
        qcmd(Q_GETINFO),
        0,
        (&mut info as *mut IfDqinfo).cast(),
    )
}

/// Set project `id`'s limits on the filesystem at `mount`.
pub fn set_quota(mount: &Path, id: u32, q: &Quota) -> Result<()> {
    let mut d = IfDqblk {
        // Block limits are in 1 KiB quota blocks.
        bhardlimit: q.bytes_hard.div_ceil(1024),
        bsoftlimit: q.bytes_soft.div_ceil(1024),
        ihardlimit: q.inodes_hard,
        isoftlimit: q.inodes_soft,
        valid: QIF_BLIMITS | QIF_ILIMITS,
        ..Default::default()
    };
    quotactl_fd(mount, qcmd(Q_SETQUOTA), id, (&mut d as *mut IfDqblk).cast()).map_err(|e| {
        QuotaError::Setup(format!(
            "set quota of project {id} on {}: {e}",
            mount.display()
        ))
    })
}

/// Read project `id`'s record; a project XFS has no record for reads as all zero.
pub fn get_quota(mount: &Path, id: u32) -> Result<Quota> {
    let mut d = IfDqblk::default();
    match quotactl_fd(mount, qcmd(Q_GETQUOTA), id, (&mut d as *mut IfDqblk).cast()) {
        Ok(()) => Ok(Quota {
            bytes_hard: d.bhardlimit * 1024,
            bytes_soft: d.bsoftlimit * 1024,
            inodes_hard: d.ihardlimit,
            inodes_soft: d.isoftlimit,
            bytes_used: d.curspace,
            inodes_used: d.curinodes,
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(Quota::default()),
        Err(e) => Err(QuotaError::Setup(format!(
            "read quota of project {id} on {}: {e}",
            mount.display()
        ))),
    }
}

/// The project id of a file or directory.
pub fn project_of(path: &Path) -> Result<u32> {
    let f = open_dir(path)?;
    let mut x = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR fills a struct fsxattr.
    if unsafe { libc::ioctl(raw(&f), FS_IOC_FSGETXATTR, &mut x) } < 0 {
        return Err(io("get project of", path)(std::io::Error::last_os_error()));
    }
    Ok(x.projid)
}

/// Put directory `path` in project `id`, inherited by everything created below it.
pub fn set_project(path: &Path, id: u32) -> Result<()> {
    let f = open_dir(path)?;
    let mut x = FsXattr::default();
    // SAFETY: FS_IOC_FSGETXATTR / FSSETXATTR read and write a struct fsxattr.
    unsafe {
        if libc::ioctl(raw(&f), FS_IOC_FSGETXATTR, &mut x) < 0 {
            return Err(io("get project of", path)(std::io::Error::last_os_error()));
        }
        x.projid = id;
        x.xflags |= FS_XFLAG_PROJINHERIT;
        if libc::ioctl(raw(&f), FS_IOC_FSSETXATTR, &x) < 0 {
            return Err(io("set project of", path)(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Attach `image` to a free loop device (detached automatically when unmounted) and mount it
/// as `fstype` at `target` with `options`.
pub fn mount_loop(image: &Path, target: &Path, fstype: &str, options: &str) -> Result<()> {
    let backing = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io("open", image))?;
    let control = Path::new("/dev/loop-control");
    let ctl = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(control)
        .map_err(io("open", control))?;
    // Another process may take the free device between GET_FREE and CONFIGURE: retry.
    for _ in 0..20 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            return Err(io("find a free loop device via", control)(
                std::io::Error::last_os_error(),
            ));
        }
        let dev = format!("/dev/loop{n}");
        let dev_path = Path::new(&dev);
        let loop_dev = match fs::OpenOptions::new().read(true).write(true).open(dev_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(io("open", dev_path)(e)),
        };
        // SAFETY: all-zero is a valid loop_config; fields set below.
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = backing.as_raw_fd() as u32;
        config.info.flags = LO_FLAGS_AUTOCLEAR;
        let name = image.as_os_str().as_encoded_bytes();
        let len = name.len().min(63);
        config.info.file_name[..len].copy_from_slice(&name[..len]);
        // SAFETY: LOOP_CONFIGURE reads a struct loop_config.
        if unsafe { libc::ioctl(loop_dev.as_raw_fd(), LOOP_CONFIGURE, &config) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(io("configure", dev_path)(e));
        }
        let mounted = nix::mount::mount(
            Some(dev_path),
            target,
            Some(fstype),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(options),
        );
        // With autoclear, closing our handle after a failed mount detaches the device; after a
        // successful one, unmounting does.
        drop(loop_dev);
        return mounted.map_err(|e| {
            QuotaError::Setup(format!(
                "mount {} ({dev}) on {} as {fstype} with {options:?}: {e}",
                image.display(),
                target.display()
            ))
        });
    }
    Err(QuotaError::Setup(
        "no free loop device after 20 attempts".into(),
    ))
}
