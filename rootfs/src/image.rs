//! Resolving a Garden rootfs URI (`image.uri` or legacy `rootfs`) into overlay lower layers.
//!
//! Local forms: `""` (the server's default rootfs), `raw:///dir`, `file:///dir`, and plain
//! absolute paths to a directory or a tarball. Tarballs are unpacked once into a layer cache
//! keyed by the sha256 of their bytes. Registry (`docker://`), OCI layout (`oci://`) and
//! `preloaded+layer://` images need the layer store ([`crate::store::Store::resolve`]); here
//! they are refused with [`RootfsError::UnsupportedScheme`].

use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::reference::percent_decode;
use crate::safe_tar::{extract_with, ExtractOptions, Ownership};
use crate::RootfsError;

/// What the runtime needs to assemble a container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RootfsPlan {
    /// Read-only layers, top first (the order overlayfs `lowerdir=` wants).
    pub lower_dirs: Vec<PathBuf>,
    /// Environment from the image config (`KEY=value`); empty for plain directories.
    pub env: Vec<String>,
    /// The image config's user (`name`, `uid`, `uid:gid`...); empty = none given.
    pub user: String,
    /// The image config's working directory; empty = none given.
    pub workdir: String,
}

impl RootfsPlan {
    /// A plan of one plain directory.
    pub fn single(dir: PathBuf) -> Self {
        RootfsPlan {
            lower_dirs: vec![dir],
            ..RootfsPlan::default()
        }
    }
}

/// Resolves `uri` into the layers to mount. `default` is used for an empty URI; tarballs are
/// unpacked under `cache_dir/layers/<sha256>` (safe against concurrent resolves of the same
/// tarball: each unpacks into a private temp dir and the first atomic rename wins).
pub fn resolve(uri: &str, default: &Path, cache_dir: &Path) -> Result<RootfsPlan, RootfsError> {
    if uri.is_empty() {
        return local(default, cache_dir);
    }
    let invalid = |reason: &str| RootfsError::InvalidUri {
        uri: uri.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = split_scheme(uri);
    let path = match scheme {
        None => strip_query(uri),
        Some("raw") | Some("file") => {
            let rest = strip_query(rest);
            let Some(slash) = rest.find('/') else {
                return Err(invalid(
                    "expected an absolute path, e.g. raw:///path/to/rootfs",
                ));
            };
            let host = &rest[..slash];
            if !host.is_empty() && host != "localhost" {
                return Err(invalid(
                    "expected an empty host and an absolute path, e.g. raw:///path/to/rootfs",
                ));
            }
            &rest[slash..]
        }
        Some(other) => {
            return Err(RootfsError::UnsupportedScheme {
                uri: uri.to_string(),
                scheme: other.to_string(),
            })
        }
    };
    let path = percent_decode(path).ok_or_else(|| invalid("bad percent-encoding"))?;
    if !path.starts_with('/') {
        return Err(invalid("rootfs paths must be absolute"));
    }
    let path = PathBuf::from(path);
    if scheme == Some("raw") {
        // Used as-is: must be a directory, never unpacked or copied.
        return match fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(RootfsPlan::single(path)),
            Ok(_) => Err(RootfsError::InvalidPath {
                path,
                reason: "raw:// rootfs must be a directory".into(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(RootfsError::NotFound { path }),
            Err(e) => Err(RootfsError::io("stat", path, e)),
        };
    }
    local(&path, cache_dir)
}

/// `scheme://rest`, with scheme as RFC 3986 allows (letters, digits, `+`, `-`, `.`).
fn split_scheme(uri: &str) -> (Option<&str>, &str) {
    if let Some(i) = uri.find("://") {
        let scheme = &uri[..i];
        let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if valid {
            return (Some(scheme), &uri[i + 3..]);
        }
    }
    (None, uri)
}

/// Garden (Go's url.Parse) ignores the query and fragment of a rootfs URI.
fn strip_query(s: &str) -> &str {
    let end = s.find(['?', '#']).unwrap_or(s.len());
    &s[..end]
}

/// Move the directory `tmp`, once `built` succeeded, into place at `target`. A concurrent
/// builder of the same content that got there first wins and ours is dropped; `tmp` never
/// outlives the call. True when ours is the one now at `target`.
pub(crate) fn publish_dir(
    tmp: &Path,
    built: Result<(), RootfsError>,
    target: &Path,
) -> Result<bool, RootfsError> {
    let published = built.and_then(|()| match fs::rename(tmp, target) {
        Ok(()) => Ok(true),
        Err(_) if target.is_dir() => Ok(false),
        Err(e) => Err(RootfsError::io("rename", target, e)),
    });
    if !matches!(published, Ok(true)) {
        let _ = fs::remove_dir_all(tmp);
    }
    published
}

/// A local directory (used directly) or tarball (unpacked into the cache).
fn local(path: &Path, cache_dir: &Path) -> Result<RootfsPlan, RootfsError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RootfsError::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(RootfsError::io("stat", path, e)),
    };
    if meta.is_dir() {
        return Ok(RootfsPlan::single(path.to_path_buf()));
    }
    if !meta.is_file() {
        return Err(RootfsError::NotARootfs {
            path: path.to_path_buf(),
        });
    }
    let layer = unpack_tarball(path, cache_dir)?;
    Ok(RootfsPlan::single(layer))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name unique across threads and processes, for temp dirs next to their final place.
pub(crate) fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn unpack_tarball(path: &Path, cache_dir: &Path) -> Result<PathBuf, RootfsError> {
    let mut file = File::open(path).map_err(|e| RootfsError::io("open", path, e))?;
    let mut head = [0u8; 512];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RootfsError::io("read", path, e)),
        }
    }
    let gzip = got >= 2 && head[..2] == [0x1f, 0x8b];
    let ustar = got >= 262 && &head[257..262] == b"ustar";
    let name = path.to_string_lossy();
    let named_tar = [".tar", ".tar.gz", ".tgz"]
        .iter()
        .any(|s| name.ends_with(s));
    if !(gzip || ustar || named_tar) {
        return Err(RootfsError::NotARootfs {
            path: path.to_path_buf(),
        });
    }

    file.rewind()
        .map_err(|e| RootfsError::io("read", path, e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|e| RootfsError::io("read", path, e))?;
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();

    let layers = cache_dir.join("layers");
    let target = layers.join(&digest);
    if target.is_dir() {
        tracing::debug!(tarball = %path.display(), layer = %target.display(), "reusing cached layer");
        return Ok(target);
    }
    fs::create_dir_all(&layers).map_err(|e| RootfsError::io("create directory", &layers, e))?;
    let tmp = layers.join(format!(".tmp-{digest}-{}", unique_suffix()));
    fs::create_dir(&tmp).map_err(|e| RootfsError::io("create directory", &tmp, e))?;

    let result = (|| {
        file.rewind()
            .map_err(|e| RootfsError::io("read", path, e))?;
        let root = File::open(&tmp).map_err(|e| RootfsError::io("open", &tmp, e))?;
        let reader: Box<dyn Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(io::BufReader::new(file)))
        } else {
            Box::new(io::BufReader::new(file))
        };
        extract_with(
            root.as_fd(),
            Path::new("/"),
            reader,
            ExtractOptions {
                ownership: Ownership::FromArchive,
                allow_devices: true,
                restrict: None,
                image_layer: false,
            },
        )
        .map_err(|e| RootfsError::Layer {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
            .map_err(|e| RootfsError::io("chmod", &tmp, e))?;
        Ok(())
    })();
    if publish_dir(&tmp, result, &target)? {
        tracing::info!(tarball = %path.display(), layer = %target.display(), "unpacked rootfs tarball");
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(split_scheme("raw:///a"), (Some("raw"), "/a"));
        assert_eq!(
            split_scheme("preloaded+layer:///a"),
            (Some("preloaded+layer"), "/a")
        );
        assert_eq!(split_scheme("/a://b"), (None, "/a://b"));
        assert_eq!(strip_query("/a/b?x=1#f"), "/a/b");
        assert_eq!(percent_decode("/a%20b").as_deref(), Some("/a b"));
        assert_eq!(percent_decode("/a%2"), None);
    }
}
