//! StreamIn / StreamOut: tar extraction into, and packing out of, a container's filesystem.
//!
//! The container's `/` is given as a directory fd (typically an open `/proc/<pid>/root`).
//! Every path is resolved with openat2(2) and `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, so
//! `..` and absolute symlinks planted inside the container are clamped to that root exactly as
//! they would be for a process inside it, and can never reach the host. Final components are
//! created or opened relative to an already-resolved parent fd with `O_NOFOLLOW`, so a symlink
//! is never followed to write a file.
//!
//! Archive names are additionally validated (no absolute names, no `..`, no symlink targets
//! climbing above `/`, no device nodes) so that hostile archives fail loudly instead of being
//! silently clamped. As GNU tar does, archive symlinks whose target is absolute or contains
//! `..` exist only as placeholder files until the archive ends, so no later entry is ever
//! written through them (`link -> /etc` then `link/x` fails: "not a directory").
//!
//! For users other than container root, [`extract_as_user`] and [`pack_as_user`] emulate the
//! permission checks tar running as that user would meet.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmod, fstat, fstatat, futimens, mkdirat, mknodat, utimensat, FileStat, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use tar::EntryType;
use xattr::FileExt;

use crate::idmap::IdMapping;
use crate::RootfsError;

type Result<T, E = RootfsError> = std::result::Result<T, E>;

/// The uid/gid (as stored on disk, i.e. host ids) that StreamIn gives every created file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// What an extraction created, for logging and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExtractStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub fifos: u64,
    pub devices: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
}

/// Who owns extracted entries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ownership {
    /// StreamIn: everything belongs to the streaming user.
    Fixed(Owner),
    /// Image layers: keep the uid/gid recorded in the archive.
    FromArchive,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct ExtractOptions<'a> {
    pub ownership: Ownership,
    /// Image layers legitimately carry `/dev` nodes; StreamIn must not create them.
    pub allow_devices: bool,
    /// Emulate the permission checks tar would meet running as an unprivileged user.
    pub restrict: Option<Restrict<'a>>,
    /// Image layers: device nodes other than 0:0 whiteouts are skipped, names may start with `/` (umoci and others write `/` for the root; as
    /// GNU tar does, it is dropped), and OCI whiteouts (`.wh.<name>`, `.wh..wh..opq`) into overlayfs's own
    /// (a 0/0 character device, the `trusted.overlay.opaque` xattr) and drop any
    /// `trusted.overlay.*` xattr the archive carries, so a layer cannot steer overlayfs.
    pub image_layer: bool,
}

/// What an OCI whiteout entry asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Whiteout {
    /// `.wh..wh..opq`: hide everything lower layers have in this directory.
    Opaque,
    /// `.wh.<name>`: hide `<name>` of lower layers.
    Remove(OsString),
}

/// The whiteout an archive member's base name stands for, if any; `Err` for a whiteout that
/// names nothing usable (`.wh.`, `.wh..`, `.wh...`).
pub(crate) fn whiteout(base: &OsStr) -> Result<Option<Whiteout>, String> {
    let b = base.as_bytes();
    if b == b".wh..wh..opq" {
        return Ok(Some(Whiteout::Opaque));
    }
    let Some(name) = b.strip_prefix(b".wh.") else {
        return Ok(None);
    };
    match name {
        b"" | b"." | b".." => Err(format!(
            "whiteout {:?} names no file",
            String::from_utf8_lossy(b)
        )),
        _ => Ok(Some(Whiteout::Remove(
            OsStr::from_bytes(name).to_os_string(),
        ))),
    }
}

/// The xattr overlayfs reads to make a lower directory opaque.
const OVERLAY_OPAQUE: &str = "trusted.overlay.opaque";
const OVERLAY_OPAQUE_USER: &str = "user.overlay.opaque";

/// An unprivileged user's identity for DAC checks (on-disk ids).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Restrict<'a> {
    uid: u32,
    gid: u32,
    groups: &'a [u32],
}

impl<'a> Restrict<'a> {
    fn new(owner: Owner, groups: &'a [u32]) -> Self {
        Restrict {
            uid: owner.uid,
            gid: owner.gid,
            groups,
        }
    }

    fn owns(&self, st: &FileStat) -> bool {
        st.st_uid == self.uid
    }

    /// The `rwx` bits of `st` that apply to this user (owner, group or other class).
    fn access_bits(&self, st: &FileStat) -> u32 {
        let mode = st.st_mode;
        let bits = if st.st_uid == self.uid {
            mode >> 6
        } else if st.st_gid == self.gid || self.groups.contains(&st.st_gid) {
            mode >> 3
        } else {
            mode
        };
        bits & 0o7
    }

    /// Write and search permission on a directory, i.e. may create or remove entries in it.
    fn may_modify_dir(&self, st: &FileStat) -> bool {
        self.access_bits(st) & 0o3 == 0o3
    }

    /// Search permission: may resolve names inside the directory.
    fn may_search(&self, st: &FileStat) -> bool {
        self.access_bits(st) & 0o1 != 0
    }

    /// What `tar -c` needs to archive `st`: read on a file, read and search on a directory
    /// (to list it and stat its children). Symlinks, fifos and devices are only stat'ed.
    fn may_pack(&self, st: &FileStat) -> bool {
        let bits = self.access_bits(st);
        if is_type(st, SFlag::S_IFDIR) {
            bits & 0o5 == 0o5
        } else if is_type(st, SFlag::S_IFREG) {
            bits & 0o4 != 0
        } else {
            true
        }
    }
}

/// Fails with EACCES ("Permission denied") if `restrict` may not create entries in `dir`.
fn check_create(restrict: Option<Restrict<'_>>, dir: &OwnedFd, path: &Path) -> Result<()> {
    if let Some(r) = restrict {
        let st = fstat(dir).map_err(|e| RootfsError::io("stat", path, e))?;
        if !r.may_modify_dir(&st) {
            return Err(RootfsError::io("create", path, Errno::EACCES));
        }
    }
    Ok(())
}

const RESOLVE: ResolveFlag = ResolveFlag::RESOLVE_IN_ROOT.union(ResolveFlag::RESOLVE_NO_MAGICLINKS);
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

/// Opens `path` (absolute or not, it is always taken relative to `root`) as a process chrooted
/// at `root` would, but without ever leaving `root`: `..` at the root stays there, absolute
/// symlinks restart at `root`, magic links such as `/proc/self/root` are refused.
pub fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd> {
    open_in_root_raw(root, path.as_os_str().as_bytes(), flags, mode)
        .map_err(|e| RootfsError::io("open", path, e))
}

/// The start of a file inside `root` (at most `limit` bytes), e.g. the container's
/// /etc/passwd; resolved like [`open_in_root`].
pub fn read_in_root(root: BorrowedFd<'_>, path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let fd = open_in_root(root, path, OFlag::O_RDONLY, Mode::empty())?;
    let mut out = Vec::new();
    std::fs::File::from(fd)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|e| RootfsError::io("read", path, e))?;
    Ok(out)
}

/// Whether `path` exists inside `root` (the last component is not followed).
pub fn exists_in_root(root: BorrowedFd<'_>, path: &Path) -> Result<()> {
    open_in_root(root, path, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty()).map(drop)
}

fn open_in_root_raw(
    root: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlag,
    mode: Mode,
) -> nix::Result<OwnedFd> {
    let trimmed: &[u8] = {
        let mut p = path;
        while let [b'/', rest @ ..] = p {
            p = rest;
        }
        if p.is_empty() {
            b"."
        } else {
            p
        }
    };
    // openat2 rejects a non-zero mode unless a file may be created.
    let mode = if flags.intersects(OFlag::O_CREAT | OFlag::O_TMPFILE) {
        mode
    } else {
        Mode::empty()
    };
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(RESOLVE);
    let path = OsStr::from_bytes(trimmed);
    // EAGAIN: a concurrent rename inside the root made the kernel unsure; retrying is the
    // documented answer.
    let mut attempts = 0;
    loop {
        match openat2(root, path, how) {
            Err(Errno::EAGAIN) if attempts < 32 => attempts += 1,
            other => return other,
        }
    }
}

/// Lexically normalised components of an absolute in-container path (`.` dropped, `..` pops
/// but never above `/`, as the kernel does at a root).
fn normalize_abs(path: &Path) -> Result<Vec<OsString>> {
    let bytes = path.as_os_str().as_bytes();
    if !bytes.starts_with(b"/") {
        return Err(RootfsError::InvalidPath {
            path: path.to_path_buf(),
            reason: "must be an absolute path inside the container".into(),
        });
    }
    let mut out: Vec<OsString> = Vec::new();
    for c in bytes.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

fn join_abs(comps: &[OsString]) -> PathBuf {
    let mut p = PathBuf::from("/");
    for c in comps {
        p.push(c);
    }
    p
}

/// Components of a tar member name, relative to the extraction directory.
fn archive_relative(name: &[u8]) -> Result<Vec<OsString>, String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.starts_with(b"/") {
        return Err("absolute names are not allowed".into());
    }
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("names containing '..' are not allowed".into()),
            c => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

/// True if `target`, resolved lexically from the directory `link_dir` (in-container
/// components), climbs above the container's `/`.
fn symlink_escapes(link_dir: &[OsString], target: &[u8]) -> bool {
    let mut depth = if target.starts_with(b"/") {
        0
    } else {
        link_dir.len()
    };
    for c in target.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if depth == 0 {
                    return true;
                }
                depth -= 1;
            }
            _ => depth += 1,
        }
    }
    false
}

/// StreamIn for an unprivileged user: like [`extract`], but fails with "Permission denied"
/// where tar running as that user would (creating or replacing entries in directories the
/// user cannot write, sticky-directory rules, hard links to files the user does not own).
/// `groups` are the user's supplementary gids. Use [`extract`] for container root.
pub fn extract_as_user<R: Read>(
    root: BorrowedFd<'_>,
    destination: &Path,
    reader: R,
    owner: Owner,
    groups: &[u32],
) -> Result<ExtractStats> {
    extract_with(
        root,
        destination,
        reader,
        ExtractOptions {
            ownership: Ownership::Fixed(owner),
            allow_devices: false,
            restrict: Some(Restrict::new(owner, groups)),
            image_layer: false,
        },
    )
}

/// StreamIn: unpacks the tar stream `reader` at `destination` (absolute, inside `root`).
///
/// The destination is created like `mkdir -p` (new directories 0755, owned by `owner`).
/// Every created entry is owned by `owner`; modes (including setuid/setgid/sticky), mtimes and
/// `SCHILY.xattr.*` extended attributes are preserved. Hostile entries (absolute names, `..`,
/// symlinks climbing above `/`, hard links leaving the destination, device nodes) and
/// corrupt or truncated archives fail with an error naming the entry. Entries are streamed:
/// file contents are never held in memory.
pub fn extract<R: Read>(
    root: BorrowedFd<'_>,
    destination: &Path,
    reader: R,
    owner: Owner,
) -> Result<ExtractStats> {
    extract_with(
        root,
        destination,
        reader,
        ExtractOptions {
            ownership: Ownership::Fixed(owner),
            allow_devices: false,
            restrict: None,
            image_layer: false,
        },
    )
}

pub(crate) fn extract_with<R: Read>(
    root: BorrowedFd<'_>,
    destination: &Path,
    reader: R,
    opts: ExtractOptions<'_>,
) -> Result<ExtractStats> {
    let dest = normalize_abs(destination)?;
    let dir_owner = match opts.ownership {
        Ownership::Fixed(o) => o,
        Ownership::FromArchive => Owner::ROOT,
    };
    mkdir_p(root, &dest, dir_owner, opts.restrict)?;

    let mut ex = Extractor {
        root,
        dest,
        opts,
        dir_owner,
        stats: ExtractStats::default(),
        dir_times: Vec::new(),
        delayed: Vec::new(),
        placeholders: HashMap::new(),
    };
    let unpacked = ex.unpack(reader);
    // Like GNU tar, the delayed symlinks are made real even when a later entry failed: they
    // are valid entries, and their placeholders must not be left behind.
    let linked = ex.apply_delayed_symlinks();
    match (unpacked, linked) {
        (Err(e), Err(late)) => {
            tracing::warn!(error = %late, "creating delayed symlinks after a failed extraction");
            return Err(e);
        }
        (Err(e), Ok(())) | (Ok(()), Err(e)) => return Err(e),
        (Ok(()), Ok(())) => {}
    }
    // Directory mtimes last: creating their children bumped them.
    for (path, mtime) in ex.dir_times.iter().rev() {
        let fd = open_in_root(root, path, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())?;
        futimens(&fd, &TimeSpec::UTIME_OMIT, mtime)
            .map_err(|e| RootfsError::io("set mtime of", path, e))?;
    }
    Ok(ex.stats)
}

/// `mkdir -p` of an in-container path; returns the final directory's fd.
fn mkdir_p(
    root: BorrowedFd<'_>,
    comps: &[OsString],
    owner: Owner,
    restrict: Option<Restrict<'_>>,
) -> Result<OwnedFd> {
    let mut cur = open_in_root(root, Path::new("/"), DIR_FLAGS, Mode::empty())?;
    for i in 0..comps.len() {
        let path = join_abs(&comps[..=i]);
        match open_in_root_raw(root, path.as_os_str().as_bytes(), DIR_FLAGS, Mode::empty()) {
            Ok(fd) => cur = fd,
            Err(Errno::ENOENT) => {
                let name = comps[i].as_os_str();
                check_create(restrict, &cur, &path)?;
                match mkdirat(&cur, name, Mode::from_bits_truncate(0o700)) {
                    Ok(()) => {
                        let fd = openat(&cur, name, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())
                            .map_err(|e| RootfsError::io("open", &path, e))?;
                        fchown(
                            &fd,
                            Some(Uid::from_raw(owner.uid)),
                            Some(Gid::from_raw(owner.gid)),
                        )
                        .map_err(|e| RootfsError::io("chown", &path, e))?;
                        fchmod(&fd, Mode::from_bits_truncate(0o755))
                            .map_err(|e| RootfsError::io("chmod", &path, e))?;
                        cur = fd;
                    }
                    // Lost a race with a concurrent creator: use theirs.
                    Err(Errno::EEXIST) => {
                        cur = open_in_root(root, &path, DIR_FLAGS, Mode::empty())?
                    }
                    Err(e) => return Err(RootfsError::io("mkdir", &path, e)),
                }
            }
            Err(e) => return Err(RootfsError::io("open", &path, e)),
        }
    }
    Ok(cur)
}

struct Extractor<'a> {
    root: BorrowedFd<'a>,
    dest: Vec<OsString>,
    opts: ExtractOptions<'a>,
    dir_owner: Owner,
    stats: ExtractStats,
    dir_times: Vec<(PathBuf, TimeSpec)>,
    /// Symlinks whose creation waits for the end of the archive (see [`is_delayed_target`]).
    delayed: Vec<DelayedSymlink>,
    /// (st_dev, st_ino) of each live placeholder -> its index in `delayed`.
    placeholders: HashMap<(u64, u64), usize>,
}

/// An archive symlink that exists as an empty placeholder file until the archive ends, so
/// later entries cannot be written through it (`link -> /etc` then `link/passwd` fails with
/// "not a directory", as with GNU tar). The placeholder is identified by its inode: a path
/// that no longer holds that inode was replaced by a later entry and gets no symlink.
struct DelayedSymlink {
    target: Vec<u8>,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    key: (u64, u64),
    /// In-container paths holding the placeholder (more than one after hard links to it).
    paths: Vec<PathBuf>,
}

/// GNU tar's rule for which archive symlinks to create only at the end: those that could
/// lead a later entry outside the directory being extracted (absolute, or containing `..`).
fn is_delayed_target(target: &[u8]) -> bool {
    target.starts_with(b"/") || target.split(|b| *b == b'/').any(|c| c == b"..")
}

fn inode_key(st: &FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Metadata of one entry, gathered before its data is read.
struct Meta {
    uid: u32,
    gid: u32,
    mode: Mode,
    mtime: TimeSpec,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Fifo,
    Device(SFlag, libc::dev_t),
}

impl Extractor<'_> {
    fn unsafe_entry(name: &str, reason: impl Into<String>) -> RootfsError {
        RootfsError::UnsafeEntry {
            entry: name.to_string(),
            reason: reason.into(),
        }
    }

    fn corrupt(name: &str, source: io::Error) -> RootfsError {
        RootfsError::CorruptArchive {
            entry: Some(name.to_string()),
            source,
        }
    }

    fn unpack<R: Read>(&mut self, reader: R) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|source| RootfsError::CorruptArchive {
                entry: None,
                source,
            })?;
        let mut last: Option<String> = None;
        for entry in entries {
            let mut entry = entry.map_err(|source| RootfsError::CorruptArchive {
                entry: last.clone(),
                source,
            })?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            self.entry(&mut entry, &name)?;
            last = Some(name);
        }
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<()> {
        let path_bytes = entry.path_bytes().into_owned();
        let header = entry.header();
        let etype = header.entry_type();
        let link = || -> Result<Vec<u8>> {
            match entry.link_name_bytes() {
                Some(l) if !l.is_empty() => Ok(l.into_owned()),
                _ => Err(Self::unsafe_entry(name, "link without a target")),
            }
        };
        let kind = match etype {
            EntryType::XGlobalHeader => return Ok(()),
            EntryType::Regular if path_bytes.ends_with(b"/") => Kind::Dir,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink(link()?),
            EntryType::Link => Kind::Hardlink(link()?),
            EntryType::Fifo => Kind::Fifo,
            EntryType::Char | EntryType::Block => {
                if !self.opts.allow_devices {
                    return Err(Self::unsafe_entry(name, "device nodes are not allowed"));
                }
                let major = header
                    .device_major()
                    .map_err(|e| Self::corrupt(name, e))?
                    .unwrap_or(0);
                let minor = header
                    .device_minor()
                    .map_err(|e| Self::corrupt(name, e))?
                    .unwrap_or(0);
                let kind = if etype == EntryType::Char {
                    SFlag::S_IFCHR
                } else {
                    SFlag::S_IFBLK
                };
                // Registry images are untrusted and the root overlay is not `nodev`: a layer's
                // block or char device (say 8:0, the host's disk) would hand the container the
                // host's hardware. Only 0:0 character devices, overlayfs's whiteouts, stay.
                if self.opts.image_layer && !(kind == SFlag::S_IFCHR && major == 0 && minor == 0) {
                    tracing::warn!(
                        entry = name,
                        major,
                        minor,
                        "skipping a device node in an image layer"
                    );
                    return Ok(());
                }
                Kind::Device(kind, libc::makedev(major, minor))
            }
            other => {
                return Err(Self::unsafe_entry(
                    name,
                    format!("unsupported entry type {other:?}"),
                ))
            }
        };

        let rel = archive_relative(self.layer_name(&path_bytes))
            .map_err(|r| Self::unsafe_entry(name, r))?;
        let Some((base, parent_rel)) = rel.split_last() else {
            // `./`: the destination itself, which already exists; keep its metadata.
            return match kind {
                Kind::Dir => Ok(()),
                _ => Err(Self::unsafe_entry(
                    name,
                    "only a directory may name the destination itself",
                )),
            };
        };
        let mut parent: Vec<OsString> = self.dest.clone();
        parent.extend(parent_rel.iter().cloned());
        if self.opts.image_layer {
            if let Some(w) = whiteout(base).map_err(|r| Self::unsafe_entry(name, r))? {
                return self.apply_whiteout(w, &parent, name);
            }
        }
        let full = {
            let mut f = join_abs(&parent);
            f.push(base);
            f
        };

        let meta = self.meta(entry, name)?;
        let parent_fd = self.open_parent(&parent).map_err(|e| RootfsError::Entry {
            entry: name.to_string(),
            source: Box::new(e),
        })?;
        let restrict = self.opts.restrict;
        let base = base.as_os_str();
        match kind {
            Kind::File => {
                self.replace(&parent_fd, base, &full)?;
                let fd = openat(
                    &parent_fd,
                    base,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| RootfsError::io("create", &full, e))?;
                let mut file = File::from(fd);
                let written = copy_entry(entry, &mut file, name, &full)?;
                if etype != EntryType::GNUSparse && written != entry.size() {
                    return Err(Self::corrupt(
                        name,
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("archive ended after {written} of {} bytes", entry.size()),
                        ),
                    ));
                }
                apply_fd_meta(&file, &meta, true, true, &full)?;
                self.stats.files += 1;
                self.stats.bytes += written;
            }
            Kind::Dir => {
                let created = match fstatat(&parent_fd, base, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) if is_type(&st, SFlag::S_IFDIR) => false,
                    Ok(_) => {
                        self.replace(&parent_fd, base, &full)?;
                        true
                    }
                    Err(Errno::ENOENT) => {
                        check_create(restrict, &parent_fd, &full)?;
                        true
                    }
                    Err(e) => return Err(RootfsError::io("stat", &full, e)),
                };
                let created = created
                    && match mkdirat(&parent_fd, base, Mode::from_bits_truncate(0o700)) {
                        Ok(()) => true,
                        Err(Errno::EEXIST) => false,
                        Err(e) => return Err(RootfsError::io("mkdir", &full, e)),
                    };
                let fd = openat(
                    &parent_fd,
                    base,
                    DIR_FLAGS | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(|e| RootfsError::io("open", &full, e))?;
                let file = File::from(fd);
                // An unprivileged user cannot change an existing directory it does not own;
                // tar would leave it alone too.
                let foreign = match restrict {
                    Some(r) if !created => {
                        let st = fstat(&file).map_err(|e| RootfsError::io("stat", &full, e))?;
                        !r.owns(&st)
                    }
                    _ => false,
                };
                if !foreign {
                    apply_fd_meta(&file, &meta, created, false, &full)?;
                    self.dir_times.push((full, meta.mtime));
                }
                self.stats.dirs += 1;
            }
            Kind::Symlink(target) => {
                if symlink_escapes(&parent, &target) {
                    return Err(Self::unsafe_entry(
                        name,
                        format!(
                            "symlink target {:?} climbs above the container root",
                            String::from_utf8_lossy(&target)
                        ),
                    ));
                }
                self.replace(&parent_fd, base, &full)?;
                if is_delayed_target(&target) {
                    self.create_placeholder(&parent_fd, base, full, target, &meta)?;
                } else {
                    create_symlink(&parent_fd, base, &target, &meta, &full)?;
                    self.stats.symlinks += 1;
                }
            }
            Kind::Hardlink(target) => {
                let trel = archive_relative(self.layer_name(&target)).map_err(|r| {
                    Self::unsafe_entry(
                        name,
                        format!(
                            "hard link target {:?}: {r}",
                            String::from_utf8_lossy(&target)
                        ),
                    )
                })?;
                let Some((tbase, tparent_rel)) = trel.split_last() else {
                    return Err(Self::unsafe_entry(
                        name,
                        "hard link to the destination directory",
                    ));
                };
                let mut tparent = self.dest.clone();
                tparent.extend(tparent_rel.iter().cloned());
                if tparent == parent && tbase.as_os_str() == base {
                    return Ok(()); // a link to itself: already there
                }
                let tparent_path = join_abs(&tparent);
                let tparent_fd = open_in_root(self.root, &tparent_path, DIR_FLAGS, Mode::empty())?;
                if let Some(r) = restrict {
                    // protected_hardlinks: no links to other users' files.
                    let st = fstatat(&tparent_fd, tbase.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_err(|e| RootfsError::io("hard link", &full, e))?;
                    if !r.owns(&st) {
                        return Err(RootfsError::io("hard link", &full, Errno::EPERM));
                    }
                }
                // A link to a placeholder becomes a second copy of the delayed symlink.
                let placeholder =
                    match fstatat(&tparent_fd, tbase.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                        Ok(st) => self.placeholders.get(&inode_key(&st)).copied(),
                        Err(_) => None, // linkat below reports it
                    };
                self.replace(&parent_fd, base, &full)?;
                linkat(
                    &tparent_fd,
                    tbase.as_os_str(),
                    &parent_fd,
                    base,
                    AtFlags::empty(),
                )
                .map_err(|e| {
                    RootfsError::io(
                        "hard link",
                        &full,
                        io::Error::new(
                            io::Error::from(e).kind(),
                            format!("to {}: {e}", tparent_path.join(tbase).display()),
                        ),
                    )
                })?;
                if let Some(i) = placeholder {
                    self.delayed[i].paths.push(full);
                }
                self.stats.hardlinks += 1;
            }
            Kind::Fifo | Kind::Device(..) => {
                let (sflag, dev) = match kind {
                    Kind::Device(s, d) => (s, d),
                    _ => (SFlag::S_IFIFO, 0),
                };
                self.replace(&parent_fd, base, &full)?;
                mknodat(
                    &parent_fd,
                    base,
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(|e| RootfsError::io("mknod", &full, e))?;
                // O_PATH never opens the device or blocks on the fifo; the fd pins the node
                // we created so metadata cannot be redirected through a swapped-in symlink.
                let fd = openat(
                    &parent_fd,
                    base,
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| RootfsError::io("open", &full, e))?;
                let st = fstat(&fd).map_err(|e| RootfsError::io("stat", &full, e))?;
                if !is_type(&st, sflag) {
                    return Err(RootfsError::io(
                        "mknod",
                        &full,
                        io::Error::other("node was replaced while extracting"),
                    ));
                }
                fchownat(
                    &fd,
                    "",
                    Some(Uid::from_raw(meta.uid)),
                    Some(Gid::from_raw(meta.gid)),
                    AtFlags::AT_EMPTY_PATH,
                )
                .map_err(|e| RootfsError::io("chown", &full, e))?;
                std::fs::set_permissions(
                    format!("/proc/self/fd/{}", fd.as_raw_fd()),
                    std::fs::Permissions::from_mode(meta.mode.bits()),
                )
                .map_err(|e| RootfsError::io("chmod", &full, e))?;
                utimensat(
                    &parent_fd,
                    base,
                    &TimeSpec::UTIME_OMIT,
                    &meta.mtime,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|e| RootfsError::io("set mtime of", &full, e))?;
                if sflag == SFlag::S_IFIFO {
                    self.stats.fifos += 1;
                } else {
                    self.stats.devices += 1;
                }
            }
        }
        Ok(())
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta> {
        let header = entry.header();
        let mode = header.mode().map_err(|e| Self::corrupt(name, e))? & 0o7777;
        let (uid, gid) = match self.opts.ownership {
            Ownership::Fixed(o) => (o.uid, o.gid),
            Ownership::FromArchive => {
                let uid = header.uid().map_err(|e| Self::corrupt(name, e))?;
                let gid = header.gid().map_err(|e| Self::corrupt(name, e))?;
                (
                    u32::try_from(uid)
                        .map_err(|_| Self::unsafe_entry(name, format!("uid {uid} out of range")))?,
                    u32::try_from(gid)
                        .map_err(|_| Self::unsafe_entry(name, format!("gid {gid} out of range")))?,
                )
            }
        };
        let mut mtime = header.mtime().map_err(|e| Self::corrupt(name, e))?;
        let mut mtime_nsec = 0;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| Self::corrupt(name, e))? {
            for ext in pax {
                let ext = ext.map_err(|e| Self::corrupt(name, e))?;
                let key = ext.key_bytes();
                if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                    if self.opts.image_layer
                        && (attr.starts_with(b"trusted.overlay.")
                            || attr.starts_with(b"user.overlay."))
                    {
                        continue;
                    }
                    xattrs.push((
                        OsStr::from_bytes(attr).to_os_string(),
                        ext.value_bytes().to_vec(),
                    ));
                } else if key == b"mtime" {
                    if let Some((s, ns)) = parse_pax_time(ext.value_bytes()) {
                        mtime = s;
                        mtime_nsec = ns;
                    }
                }
            }
        }
        Ok(Meta {
            uid,
            gid,
            mode: Mode::from_bits_truncate(mode as libc::mode_t),
            mtime: TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), mtime_nsec),
            xattrs,
        })
    }

    /// Removes what sits at `base` (see [`remove_existing`]); a removed placeholder loses
    /// the paths that no longer hold it, and is forgotten once none do, so that a later file
    /// reusing its inode number is never mistaken for it.
    fn replace(&mut self, parent_fd: &OwnedFd, base: &OsStr, full: &Path) -> Result<()> {
        let Some(removed) = remove_existing(parent_fd, base, full, self.opts.restrict)? else {
            return Ok(());
        };
        let key = inode_key(&removed);
        let Some(&i) = self.placeholders.get(&key) else {
            return Ok(());
        };
        let root = self.root;
        self.delayed[i]
            .paths
            .retain(|p| holds_inode(root, p, key).unwrap_or(false));
        if self.delayed[i].paths.is_empty() {
            self.placeholders.remove(&key);
        }
        Ok(())
    }

    /// Creates the empty, mode 0 stand-in for a delayed symlink at `base`.
    fn create_placeholder(
        &mut self,
        parent_fd: &OwnedFd,
        base: &OsStr,
        full: PathBuf,
        target: Vec<u8>,
        meta: &Meta,
    ) -> Result<()> {
        let fd = openat(
            parent_fd,
            base,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RootfsError::io("create", &full, e))?;
        // Owned like the symlink will be, so hard links to it pass the same checks.
        fchown(
            &fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| RootfsError::io("chown", &full, e))?;
        let st = fstat(&fd).map_err(|e| RootfsError::io("stat", &full, e))?;
        let key = inode_key(&st);
        self.placeholders.insert(key, self.delayed.len());
        self.delayed.push(DelayedSymlink {
            target,
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime,
            key,
            paths: vec![full],
        });
        Ok(())
    }

    /// Turns every placeholder still in place into its symlink.
    fn apply_delayed_symlinks(&mut self) -> Result<()> {
        let delayed = std::mem::take(&mut self.delayed);
        self.placeholders.clear();
        for link in delayed {
            let meta = Meta {
                uid: link.uid,
                gid: link.gid,
                mode: Mode::empty(),
                mtime: link.mtime,
                xattrs: Vec::new(),
            };
            let mut made = false;
            for path in &link.paths {
                let (Some(parent), Some(base)) = (path.parent(), path.file_name()) else {
                    continue;
                };
                let parent_fd = match open_in_root(self.root, parent, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                };
                match fstatat(&parent_fd, base, AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) if inode_key(&st) == link.key => {}
                    Ok(_) | Err(Errno::ENOENT) => continue, // replaced by a later entry
                    Err(e) => return Err(RootfsError::io("stat", path, e)),
                }
                unlinkat(&parent_fd, base, UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| RootfsError::io("replace", path, e))?;
                create_symlink(&parent_fd, base, &link.target, &meta, path)?;
                made = true;
            }
            if made {
                self.stats.symlinks += 1;
            }
        }
        Ok(())
    }

    /// An image layer's member name without leading slashes (elsewhere: as is).
    fn layer_name<'n>(&self, name: &'n [u8]) -> &'n [u8] {
        if !self.opts.image_layer {
            return name;
        }
        let mut n = name;
        while let [b'/', rest @ ..] = n {
            n = rest;
        }
        if n.is_empty() && !name.is_empty() {
            b"."
        } else {
            n
        }
    }

    /// Records a whiteout the way overlayfs reads it in a lower layer. A whiteout for a name
    /// this same layer already holds is ignored: whiteouts only hide lower layers' files.
    fn apply_whiteout(&mut self, w: Whiteout, parent: &[OsString], name: &str) -> Result<()> {
        let entry_err = |e: RootfsError| RootfsError::Entry {
            entry: name.to_string(),
            source: Box::new(e),
        };
        let parent_fd = self.open_parent(parent).map_err(entry_err)?;
        let dir = join_abs(parent);
        match w {
            Whiteout::Opaque => {
                let dir_file = File::from(parent_fd);
                // The `user.` twin is what an overlay mounted in a user namespace reads
                // (`userxattr`): there trusted.* xattrs are out of reach.
                dir_file
                    .set_xattr(OVERLAY_OPAQUE, b"y")
                    .and_then(|()| dir_file.set_xattr(OVERLAY_OPAQUE_USER, b"y"))
                    .map_err(|e| entry_err(RootfsError::io("set opaque xattr on", &dir, e)))
            }
            Whiteout::Remove(target) => {
                let full = dir.join(&target);
                match fstatat(&parent_fd, target.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(_) => return Ok(()),
                    Err(Errno::ENOENT) => {}
                    Err(e) => return Err(entry_err(RootfsError::io("stat", &full, e))),
                }
                mknodat(
                    &parent_fd,
                    target.as_os_str(),
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    libc::makedev(0, 0),
                )
                .map_err(|e| entry_err(RootfsError::io("create whiteout", &full, e)))
            }
        }
    }

    /// The fd of an entry's parent directory, creating missing directories like tar does.
    fn open_parent(&self, parent: &[OsString]) -> Result<OwnedFd> {
        let path = join_abs(parent);
        match open_in_root_raw(
            self.root,
            path.as_os_str().as_bytes(),
            DIR_FLAGS,
            Mode::empty(),
        ) {
            Ok(fd) => Ok(fd),
            Err(Errno::ENOENT) => mkdir_p(self.root, parent, self.dir_owner, self.opts.restrict),
            Err(e) => Err(RootfsError::io("open", path, e)),
        }
    }
}

/// True if the in-container `path` (not followed if it is itself a symlink) is the inode `key`.
fn holds_inode(root: BorrowedFd<'_>, path: &Path, key: (u64, u64)) -> Result<bool> {
    let (Some(parent), Some(base)) = (path.parent(), path.file_name()) else {
        return Ok(false);
    };
    let parent_fd = open_in_root(root, parent, DIR_FLAGS, Mode::empty())?;
    match fstatat(&parent_fd, base, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(inode_key(&st) == key),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(RootfsError::io("stat", path, e)),
    }
}

/// `ln -s target base` in `parent_fd`, owned and timestamped from `meta`.
fn create_symlink(
    parent_fd: &OwnedFd,
    base: &OsStr,
    target: &[u8],
    meta: &Meta,
    full: &Path,
) -> Result<()> {
    symlinkat(OsStr::from_bytes(target), parent_fd, base)
        .map_err(|e| RootfsError::io("symlink", full, e))?;
    fchownat(
        parent_fd,
        base,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| RootfsError::io("chown", full, e))?;
    utimensat(
        parent_fd,
        base,
        &TimeSpec::UTIME_OMIT,
        &meta.mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| RootfsError::io("set mtime of", full, e))
}

fn is_type(st: &FileStat, kind: SFlag) -> bool {
    (st.st_mode & SFlag::S_IFMT.bits()) == kind.bits()
}

/// Removes whatever non-directory (or empty directory) sits at `name`, so the new entry is
/// created fresh rather than written through an existing symlink or hard link.
/// Also performs the (emulated) permission check for creating an entry at `name`.
/// Returns what was there.
fn remove_existing(
    parent: &OwnedFd,
    name: &OsStr,
    full: &Path,
    restrict: Option<Restrict<'_>>,
) -> Result<Option<FileStat>> {
    check_create(restrict, parent, full)?;
    match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(RootfsError::io("stat", full, e)),
        Ok(st) => {
            if let Some(r) = restrict {
                let dir = fstat(parent).map_err(|e| RootfsError::io("stat", full, e))?;
                let sticky = dir.st_mode & libc::S_ISVTX != 0;
                if sticky && !r.owns(&st) && !r.owns(&dir) {
                    return Err(RootfsError::io("replace", full, Errno::EACCES));
                }
            }
            let flag = if is_type(&st, SFlag::S_IFDIR) {
                UnlinkatFlags::RemoveDir
            } else {
                UnlinkatFlags::NoRemoveDir
            };
            match unlinkat(parent, name, flag) {
                Ok(()) | Err(Errno::ENOENT) => Ok(Some(st)),
                Err(e) => Err(RootfsError::io("replace", full, e)),
            }
        }
    }
}

/// Streams an entry's data into `out`; read failures are archive corruption, write
/// failures are the destination's.
fn copy_entry(src: &mut impl Read, out: &mut File, name: &str, full: &Path) -> Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Extractor::corrupt(name, e)),
        };
        out.write_all(&buf[..n])
            .map_err(|e| RootfsError::io("write", full, e))?;
        total += n as u64;
    }
}

/// chown (first, since it clears setuid bits), chmod, xattrs (after chown and data, which
/// clear `security.capability`), mtime (directories get theirs at the end).
fn apply_fd_meta(
    file: &File,
    meta: &Meta,
    chown: bool,
    set_mtime: bool,
    full: &Path,
) -> Result<()> {
    if chown {
        fchown(
            file,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )
        .map_err(|e| RootfsError::io("chown", full, e))?;
    }
    fchmod(file, meta.mode).map_err(|e| RootfsError::io("chmod", full, e))?;
    for (k, v) in &meta.xattrs {
        file.set_xattr(k, v).map_err(|e| {
            RootfsError::io(
                "set xattr",
                full,
                io::Error::new(e.kind(), format!("{}: {e}", k.to_string_lossy())),
            )
        })?;
    }
    if set_mtime {
        futimens(file, &TimeSpec::UTIME_OMIT, &meta.mtime)
            .map_err(|e| RootfsError::io("set mtime of", full, e))?;
    }
    Ok(())
}

/// PAX times are decimal seconds with an optional fraction, e.g. `1700000000.5`.
fn parse_pax_time(v: &[u8]) -> Option<(u64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        nanos += i64::from(c.to_digit(10)?) * 10i64.pow(8 - i as u32);
    }
    Some((secs, nanos))
}

// ---------------------------------------------------------------------------------------
// StreamOut

/// StreamOut: writes a tar stream of `source` (absolute, inside `root`) to `writer`.
///
/// A source ending in `/` yields the directory's contents as `./`, `./file`, ...; otherwise
/// the final component itself (`dir/`, `dir/file`, or a single file), like
/// `tar -C dirname(S) -c basename(S)`. Symlinks are stored as symlinks and never followed
/// (except those in the source path itself, resolved inside the root); hard links are stored
/// as separate files; sockets are skipped. Modes, uid/gid, mtimes and xattrs are preserved.
pub fn pack<W: Write>(root: BorrowedFd<'_>, source: &Path, writer: W) -> Result<()> {
    pack_with(root, source, writer, None, None)
}

/// StreamOut for an unprivileged user: like [`pack`], but with the permission checks
/// `tar -c` running as that user would meet (search on every directory leading to the
/// source, read on files, read and search on directories; `owner` and the supplementary
/// `groups` are on-disk ids). An unreadable source fails before anything is written; an
/// unreadable entry deeper in the tree fails the stream there, leaving it truncated.
pub fn pack_as_user<W: Write>(
    root: BorrowedFd<'_>,
    source: &Path,
    writer: W,
    owner: Owner,
    groups: &[u32],
) -> Result<()> {
    pack_with(
        root,
        source,
        writer,
        Some(Restrict::new(owner, groups)),
        None,
    )
}

/// StreamOut from a container with a user namespace: [`pack`] (`user` = `None`, container
/// root) or [`pack_as_user`] (`user`: on-disk owner ids and groups), with every entry's
/// uid/gid translated from on-disk (host) ids to the ids the container sees, as `tar` running
/// inside the namespace would record them.
pub fn pack_mapped<W: Write>(
    root: BorrowedFd<'_>,
    source: &Path,
    writer: W,
    user: Option<(Owner, &[u32])>,
    ids: &IdMapping,
) -> Result<()> {
    let restrict = user.map(|(owner, groups)| Restrict::new(owner, groups));
    pack_with(root, source, writer, restrict, Some(ids))
}

/// The checks [`pack_as_user`] makes before writing its first byte, without packing: lets
/// a server answer "permission denied" (or "does not exist") as an error reply instead of
/// an empty stream.
pub fn check_readable_as_user(
    root: BorrowedFd<'_>,
    source: &Path,
    owner: Owner,
    groups: &[u32],
) -> Result<()> {
    open_source(root, source, Some(Restrict::new(owner, groups))).map(drop)
}

/// The resolved StreamOut source.
enum Source {
    /// `tar -C parent -c base`.
    Entry {
        parent: OwnedFd,
        base: OsString,
        st: FileStat,
    },
    /// A source ending in `/`: the directory's contents as `./...`.
    Contents { dir: OwnedFd, st: FileStat },
}

/// Resolves `source` and, for a restricted user, checks search permission on the
/// directories leading to it and read permission on the source itself.
fn open_source(
    root: BorrowedFd<'_>,
    source: &Path,
    restrict: Option<Restrict<'_>>,
) -> Result<Source> {
    let comps = normalize_abs(source)?;
    let not_found = |e: Errno, op| {
        if e == Errno::ENOENT {
            RootfsError::NotFound {
                path: source.to_path_buf(),
            }
        } else {
            RootfsError::io(op, source, e)
        }
    };
    let denied = || RootfsError::io("open", source, Errno::EACCES);
    let trailing = source.as_os_str().as_bytes().ends_with(b"/");
    let (resolved, leading) = match comps.split_last() {
        Some((base, parent)) if !trailing => (Some(base), parent),
        Some((_, parent)) => (None, parent),
        None => (None, &comps[..]),
    };
    if let Some(r) = restrict {
        // `/`, then each lexical prefix: what path resolution walks through for a process.
        for i in 0..=leading.len() {
            let dir = join_abs(&leading[..i]);
            let fd = open_in_root_raw(root, dir.as_os_str().as_bytes(), DIR_FLAGS, Mode::empty())
                .map_err(|e| not_found(e, "open"))?;
            let st = fstat(&fd).map_err(|e| RootfsError::io("stat", &dir, e))?;
            if !r.may_search(&st) {
                return Err(denied());
            }
        }
    }
    let source = match resolved {
        Some(base) => {
            let parent_path = join_abs(leading);
            let parent = open_in_root_raw(
                root,
                parent_path.as_os_str().as_bytes(),
                DIR_FLAGS,
                Mode::empty(),
            )
            .map_err(|e| not_found(e, "open"))?;
            let st = fstatat(&parent, base.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| not_found(e, "stat"))?;
            Source::Entry {
                parent,
                base: base.clone(),
                st,
            }
        }
        None => {
            let dir = open_in_root_raw(
                root,
                source.as_os_str().as_bytes(),
                DIR_FLAGS,
                Mode::empty(),
            )
            .map_err(|e| not_found(e, "open"))?;
            let st = fstat(&dir).map_err(|e| RootfsError::io("stat", source, e))?;
            Source::Contents { dir, st }
        }
    };
    let st = match &source {
        Source::Entry { st, .. } | Source::Contents { st, .. } => st,
    };
    match restrict {
        Some(r) if !r.may_pack(st) => Err(denied()),
        _ => Ok(source),
    }
}

fn pack_with<W: Write>(
    root: BorrowedFd<'_>,
    source: &Path,
    writer: W,
    restrict: Option<Restrict<'_>>,
    ids: Option<&IdMapping>,
) -> Result<()> {
    let resolved = open_source(root, source, restrict)?;
    let mut out = TarWriter {
        w: writer,
        source: source.to_path_buf(),
        restrict,
        ids,
    };
    match resolved {
        Source::Entry { parent, base, st } => {
            let name = base.as_bytes().to_vec();
            if let Some((fd, st)) = out.add(&parent, &base, &name, &st)? {
                out.walk(fd, name, &st)?;
            }
        }
        Source::Contents { dir, st } => out.walk(dir, b".".to_vec(), &st)?,
    }
    out.finish()
}

/// The longest archive name StreamOut writes: deeper trees fail cleanly there rather than
/// producing archives that grow with the square of their depth.
pub const MAX_ARCHIVE_NAME: usize = 16 * 1024;

/// How many directories of the path being packed are kept open; shallower ones are
/// reopened through `..` (and checked to be the same inode) when the walk climbs back.
const OPEN_DIRS: usize = 64;

/// One directory of the path being packed.
struct Frame {
    /// `None` for a directory more than [`OPEN_DIRS`] above the deepest one.
    fd: Option<OwnedFd>,
    key: (u64, u64),
    arcname: Vec<u8>,
    children: std::vec::IntoIter<OsString>,
}

fn shown(arcname: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(arcname))
}

struct TarWriter<'a, W: Write> {
    w: W,
    source: PathBuf,
    restrict: Option<Restrict<'a>>,
    /// Translate on-disk ids to the container's view.
    ids: Option<&'a IdMapping>,
}

impl<W: Write> TarWriter<'_, W> {
    /// Fails with EACCES where `tar -c` as the restricted user could not read `st`.
    fn check_readable(&self, st: &FileStat, display: &Path) -> Result<()> {
        match self.restrict {
            Some(r) if !r.may_pack(st) => Err(RootfsError::io("open", display, Errno::EACCES)),
            _ => Ok(()),
        }
    }

    fn werr(&self, e: io::Error) -> RootfsError {
        RootfsError::Write {
            path: self.source.clone(),
            source: e,
        }
    }

    /// Writes the entry for `name` in `dirfd`, except for a directory, which it opens and
    /// returns for [`Self::walk`] to enter (so no call recurses with the tree's depth).
    fn add(
        &mut self,
        dirfd: &OwnedFd,
        name: &OsStr,
        arcname: &[u8],
        st: &FileStat,
    ) -> Result<Option<(OwnedFd, FileStat)>> {
        let shown = || shown(arcname);
        let fmt = st.st_mode & SFlag::S_IFMT.bits();
        if fmt == SFlag::S_IFDIR.bits() {
            let fd = match openat(dirfd, name, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Ok(None), // removed while packing
                Err(e) => return Err(RootfsError::io("open", shown(), e)),
            };
            let st = fstat(&fd).map_err(|e| RootfsError::io("stat", shown(), e))?;
            return Ok(Some((fd, st)));
        }
        self.add_leaf(dirfd, name, arcname, st).map(|()| None)
    }

    fn add_leaf(
        &mut self,
        dirfd: &OwnedFd,
        name: &OsStr,
        arcname: &[u8],
        st: &FileStat,
    ) -> Result<()> {
        let shown = || shown(arcname);
        let fmt = st.st_mode & SFlag::S_IFMT.bits();
        if fmt == SFlag::S_IFREG.bits() {
            let fd = match openat(
                dirfd,
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(RootfsError::io("open", shown(), e)),
            };
            let st = fstat(&fd).map_err(|e| RootfsError::io("stat", shown(), e))?;
            if !is_type(&st, SFlag::S_IFREG) {
                return Ok(()); // swapped for something else while packing
            }
            self.check_readable(&st, &shown())?;
            let file = File::from(fd);
            let xattrs = list_xattrs(&file);
            let mut header = header_for(&st, EntryType::Regular);
            header.set_size(st.st_size as u64);
            self.entry(header, arcname, None, &xattrs)?;
            self.data(file, st.st_size as u64, &shown())
        } else if fmt == SFlag::S_IFLNK.bits() {
            let target = match readlinkat(dirfd, name) {
                Ok(t) => t,
                Err(Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(RootfsError::io("readlink", shown(), e)),
            };
            let header = header_for(st, EntryType::Symlink);
            self.entry(header, arcname, Some(target.as_bytes()), &[])
        } else if fmt == SFlag::S_IFIFO.bits() {
            self.entry(header_for(st, EntryType::Fifo), arcname, None, &[])
        } else if fmt == SFlag::S_IFCHR.bits() || fmt == SFlag::S_IFBLK.bits() {
            let kind = if fmt == SFlag::S_IFCHR.bits() {
                EntryType::Char
            } else {
                EntryType::Block
            };
            let mut header = header_for(st, kind);
            let major = nix::sys::stat::major(st.st_rdev) as u32;
            let minor = nix::sys::stat::minor(st.st_rdev) as u32;
            header.set_device_major(major).map_err(|e| self.werr(e))?;
            header.set_device_minor(minor).map_err(|e| self.werr(e))?;
            self.entry(header, arcname, None, &[])
        } else {
            tracing::debug!(path = %shown().display(), "stream out: skipping socket");
            Ok(())
        }
    }

    /// Packs the directory `fd` and everything below it, depth first in name order, with
    /// an explicit stack: a container controls the depth.
    fn walk(&mut self, fd: OwnedFd, arcname: Vec<u8>, st: &FileStat) -> Result<()> {
        let mut stack = vec![self.enter(fd, arcname, st)?];
        while let Some(top) = stack.last_mut() {
            let Some(child) = top.children.next() else {
                let done = stack.pop().expect("the loop saw a top frame");
                if let Some(parent) = stack.last_mut() {
                    if parent.fd.is_none() {
                        let below = done.fd.as_ref().expect("the top frame holds its fd");
                        parent.fd = Some(reopen_parent(below, parent.key, &parent.arcname)?);
                    }
                }
                continue;
            };
            let dirfd = top.fd.as_ref().expect("the top frame holds its fd");
            let mut childname = top.arcname.clone();
            childname.push(b'/');
            childname.extend_from_slice(child.as_bytes());
            let st = match fstatat(dirfd, child.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(RootfsError::io("stat", shown(&childname), e)),
            };
            if childname.len() > MAX_ARCHIVE_NAME {
                return Err(RootfsError::InvalidPath {
                    path: self.source.clone(),
                    reason: format!(
                        "holds a path longer than {MAX_ARCHIVE_NAME} bytes, too deep to stream out"
                    ),
                });
            }
            if let Some((fd, st)) = self.add(dirfd, &child, &childname, &st)? {
                let frame = self.enter(fd, childname, &st)?;
                if stack.len() >= OPEN_DIRS {
                    let far = stack.len() - OPEN_DIRS;
                    stack[far].fd = None;
                }
                stack.push(frame);
            }
        }
        Ok(())
    }

    /// Writes a directory's entry and lists its children.
    fn enter(&mut self, fd: OwnedFd, arcname: Vec<u8>, st: &FileStat) -> Result<Frame> {
        let display = shown(&arcname);
        self.check_readable(st, &display)?;
        let file = File::from(fd);
        let xattrs = list_xattrs(&file);
        let mut name = arcname.clone();
        name.push(b'/');
        self.entry(header_for(st, EntryType::Directory), &name, None, &xattrs)?;

        let listing_fd = file
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| RootfsError::io("open", &display, e))?;
        let mut dir = nix::dir::Dir::from_fd(listing_fd)
            .map_err(|e| RootfsError::io("read directory", &display, e))?;
        let mut children: Vec<OsString> = Vec::new();
        for ent in dir.iter() {
            let ent = ent.map_err(|e| RootfsError::io("read directory", &display, e))?;
            let n = ent.file_name().to_bytes();
            if n != b"." && n != b".." {
                children.push(OsStr::from_bytes(n).to_os_string());
            }
        }
        drop(dir);
        children.sort();
        Ok(Frame {
            fd: Some(OwnedFd::from(file)),
            key: inode_key(st),
            arcname,
            children: children.into_iter(),
        })
    }

    /// Writes a header (with GNU long-name/long-link and PAX xattr records as needed).
    fn entry(
        &mut self,
        mut header: tar::Header,
        name: &[u8],
        link: Option<&[u8]>,
        xattrs: &[(OsString, Vec<u8>)],
    ) -> Result<()> {
        if let Some(ids) = self.ids {
            let (uid, gid) = (header.uid(), header.gid());
            if let (Ok(uid), Ok(gid)) = (uid, gid) {
                let uid = u32::try_from(uid).unwrap_or(u32::MAX);
                let gid = u32::try_from(gid).unwrap_or(u32::MAX);
                header.set_uid(u64::from(ids.uid_to_container(uid)));
                header.set_gid(u64::from(ids.gid_to_container(gid)));
            }
        }
        if !xattrs.is_empty() {
            let mut records = Vec::new();
            for (k, v) in xattrs {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(k.as_bytes());
                records.extend(pax_record(&key, v));
            }
            self.special(b"././@PaxHeader", EntryType::XHeader, &records)?;
        }
        if name.len() > 100 {
            let mut n = name.to_vec();
            n.push(0);
            self.special(b"././@LongLink", EntryType::GNULongName, &n)?;
        }
        if let Some(link) = link.filter(|l| l.len() > 100) {
            let mut l = link.to_vec();
            l.push(0);
            self.special(b"././@LongLink", EntryType::GNULongLink, &l)?;
        }
        set_name_field(&mut header, name, link);
        header.set_cksum();
        self.w
            .write_all(header.as_bytes())
            .map_err(|e| self.werr(e))
    }

    fn special(&mut self, name: &[u8], kind: EntryType, data: &[u8]) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        set_name_field(&mut h, name, None);
        h.set_cksum();
        self.w.write_all(h.as_bytes()).map_err(|e| self.werr(e))?;
        self.w.write_all(data).map_err(|e| self.werr(e))?;
        self.pad(data.len() as u64)
    }

    /// Exactly `size` bytes of file data: a file that shrank is padded with zeros (as GNU
    /// tar does) and one that grew is cut, so the archive stays well-formed.
    fn data(&mut self, mut file: File, size: u64, display: &Path) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    buf[..want].fill(0);
                    want
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RootfsError::io("read", display, e)),
            };
            self.w.write_all(&buf[..n]).map_err(|e| self.werr(e))?;
            left -= n as u64;
        }
        self.pad(size)
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let rem = (len % 512) as usize;
        if rem != 0 {
            self.w
                .write_all(&[0u8; 512][..512 - rem])
                .map_err(|e| self.werr(e))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.w.write_all(&[0u8; 1024]).map_err(|e| self.werr(e))?;
        self.w.flush().map_err(|e| self.werr(e))
    }
}

/// Reopens the directory above `below` through `..`, refusing anything but the inode packed
/// before (the tree changed under the walk: it fails rather than stray elsewhere).
fn reopen_parent(below: &OwnedFd, key: (u64, u64), arcname: &[u8]) -> Result<OwnedFd> {
    let fd = openat(below, "..", DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())
        .map_err(|e| RootfsError::io("open", shown(arcname), e))?;
    let st = fstat(&fd).map_err(|e| RootfsError::io("stat", shown(arcname), e))?;
    if inode_key(&st) != key {
        return Err(RootfsError::io(
            "reopen (moved while packing)",
            shown(arcname),
            Errno::ESTALE,
        ));
    }
    Ok(fd)
}

fn header_for(st: &FileStat, kind: EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_size(0);
    h
}

/// Writes raw name bytes (truncated; the long-name record carries the full one). The tar
/// crate's `set_path` would strip the `./` prefix StreamOut must produce.
fn set_name_field(h: &mut tar::Header, name: &[u8], link: Option<&[u8]>) {
    let bytes = h.as_mut_bytes();
    bytes[..100].fill(0);
    let n = name.len().min(100);
    bytes[..n].copy_from_slice(&name[..n]);
    if let Some(link) = link {
        bytes[157..257].fill(0);
        let n = link.len().min(100);
        bytes[157..157 + n].copy_from_slice(&link[..n]);
    }
}

/// One PAX extended-header record: `"<len> <key>=<value>\n"`, where len counts itself.
pub(crate) fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut rec = format!("{len} ").into_bytes();
    rec.extend_from_slice(key);
    rec.push(b'=');
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

fn list_xattrs(file: &File) -> Vec<(OsString, Vec<u8>)> {
    let Ok(names) = file.list_xattr() else {
        return Vec::new();
    };
    names
        .filter_map(|n| match file.get_xattr(&n) {
            Ok(Some(v)) => Some((n, v)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names() {
        assert_eq!(
            archive_relative(b"./a/b/").unwrap(),
            vec![OsString::from("a"), OsString::from("b")]
        );
        assert!(archive_relative(b"./").unwrap().is_empty());
        assert!(archive_relative(b"/abs").is_err());
        assert!(archive_relative(b"a/../../evil").is_err());
        assert!(archive_relative(b"..").is_err());
        assert!(archive_relative(b"").is_err());
    }

    #[test]
    fn whiteout_names() {
        let w = |s: &str| whiteout(OsStr::new(s));
        assert_eq!(w(".wh..wh..opq"), Ok(Some(Whiteout::Opaque)));
        assert_eq!(w(".wh.gone"), Ok(Some(Whiteout::Remove("gone".into()))));
        assert_eq!(
            w(".wh..hidden"),
            Ok(Some(Whiteout::Remove(".hidden".into())))
        );
        assert_eq!(w("plain"), Ok(None));
        assert_eq!(w("x.wh.y"), Ok(None));
        assert!(w(".wh.").is_err());
        assert!(w(".wh..").is_err());
        assert!(w(".wh...").is_err());
    }

    #[test]
    fn symlink_escape_is_lexical_from_link_dir() {
        let dir = vec![OsString::from("dst")];
        assert!(symlink_escapes(&dir, b"../../.."));
        assert!(!symlink_escapes(&dir, b"../etc"));
        assert!(!symlink_escapes(&dir, b"/"));
        assert!(symlink_escapes(&dir, b"/.."));
        assert!(symlink_escapes(&[], b".."));
        assert!(!symlink_escapes(&[], b"a/../b"));
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for (k, v) in [
            (&b"a"[..], &b"b"[..]),
            (b"SCHILY.xattr.user.test", &[7u8; 93][..]),
        ] {
            let rec = pax_record(k, v);
            let (len, _) =
                std::str::from_utf8(&rec[..rec.iter().position(|b| *b == b' ').unwrap()])
                    .map(|s| (s.parse::<usize>().unwrap(), ()))
                    .unwrap();
            assert_eq!(len, rec.len());
        }
    }

    #[test]
    fn pax_time() {
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
    }

    #[test]
    fn normalize_clamps_at_root() {
        assert_eq!(
            normalize_abs(Path::new("/../a/./b/..")).unwrap(),
            vec![OsString::from("a")]
        );
        assert!(normalize_abs(Path::new("rel")).is_err());
    }
}
