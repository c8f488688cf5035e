//! Root filesystems for containers.
//!
//! - [`image`]: turns a Garden `image.uri` / `rootfs` value into the directories the runtime
//!   mounts as overlay lower layers (directories as-is, local tarballs unpacked once into a
//!   content-addressed layer cache).
//! - [`store`]: the layer store: `docker://` registry images ([`registry`]), OCI layouts and
//!   Diego's `preloaded+layer://`, each layer unpacked once by chain id ([`digest`]) into
//!   overlay lower dirs; references are parsed by [`reference`].
//! - [`busybox`]: builds the small default rootfs `gardend` embeds, from the host's static busybox.
//! - [`safe_tar`]: StreamIn / StreamOut. Everything is resolved relative to a directory fd that
//!   stands for the container's `/` (openat2 with `RESOLVE_IN_ROOT`), so hostile archives or
//!   symlinks planted inside a container can never make the host write or read outside it.

pub mod busybox;
pub mod digest;
pub mod idmap;
pub mod image;
pub mod mapped_copy;
pub mod reference;
pub mod registry;
pub mod safe_tar;
pub mod store;

use std::io;
use std::path::PathBuf;

pub use busybox::ensure_busybox_rootfs;
pub use idmap::{IdMapping, IdRange};
pub use image::{resolve, RootfsPlan};
pub use registry::Credentials;
pub use safe_tar::{
    exists_in_root, extract, extract_as_user, open_in_root, pack, pack_as_user, pack_mapped,
    read_in_root, ExtractStats, Owner,
};
pub use store::{GcStats, Store, StoreConfig};

/// Everything that can go wrong in this crate. Messages are lower-case and name the path,
/// URI or tar entry involved, because they end up verbatim in Garden error responses.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A URI scheme this runtime cannot (yet) provide, e.g. `docker://` or `oci://`.
    #[error("unsupported rootfs uri scheme {scheme:?} in {uri:?}: supported are plain absolute paths, file://, raw://, docker://, oci:// and preloaded+layer://")]
    UnsupportedScheme { uri: String, scheme: String },
    /// A malformed URI or a path that is not absolute.
    #[error("invalid rootfs uri {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    /// A path argument that is not usable, e.g. relative where an absolute path is required.
    #[error("invalid path {}: {reason}", path.display())]
    InvalidPath { path: PathBuf, reason: String },
    /// A path the caller named does not exist (rootfs, tarball or StreamOut source).
    #[error("{} does not exist", path.display())]
    NotFound { path: PathBuf },
    /// A path exists but is neither a directory nor a recognised tarball.
    #[error("{} is neither a directory nor a tarball (.tar, .tar.gz, .tgz)", path.display())]
    NotARootfs { path: PathBuf },
    /// A system call on a path failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A tar entry that would escape the destination or that we refuse to create.
    #[error("refusing tar entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    /// A tar entry that could not be placed, e.g. because its parent is not a directory
    /// (such as a symlink from the same archive that is not created until the end).
    #[error("tar entry {entry:?}: {source}")]
    Entry {
        entry: String,
        #[source]
        source: Box<RootfsError>,
    },
    /// The archive itself is unreadable: bad checksum, truncated data, ...
    #[error("corrupt or truncated tar archive{}: {source}", at_entry(entry))]
    CorruptArchive {
        entry: Option<String>,
        #[source]
        source: io::Error,
    },
    /// Unpacking a rootfs tarball into the layer cache failed.
    #[error("unpacking rootfs tarball {}: {source}", path.display())]
    Layer {
        path: PathBuf,
        #[source]
        source: Box<RootfsError>,
    },
    /// Writing the tar stream for StreamOut failed (usually the client went away).
    #[error("writing tar stream for {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Pulling an image failed: registry, network, layout or format trouble.
    #[error("image {image}: {reason}")]
    Image { image: String, reason: String },
    /// The registry refused the (missing or wrong) credentials.
    #[error("image {image}: unauthorized: {reason}")]
    Unauthorized { image: String, reason: String },
    /// Content did not match the digest it was asked for by.
    #[error("{what}: digest mismatch: expected {expected}, got {got}")]
    DigestMismatch {
        what: String,
        expected: String,
        got: String,
    },
    /// The host busybox cannot be used for the default rootfs.
    #[error("{}: {reason}", path.display())]
    Busybox { path: PathBuf, reason: String },
}

fn at_entry(entry: &Option<String>) -> String {
    match entry {
        Some(e) => format!(" near entry {e:?}"),
        None => String::new(),
    }
}

impl RootfsError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
        source: impl Into<io::Error>,
    ) -> Self {
        RootfsError::Io {
            op,
            path: path.into(),
            source: source.into(),
        }
    }

    /// True when the underlying cause is a missing file or directory.
    pub fn is_not_found(&self) -> bool {
        match self {
            RootfsError::NotFound { .. } => true,
            RootfsError::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            RootfsError::Entry { source, .. } => source.is_not_found(),
            _ => false,
        }
    }
}
