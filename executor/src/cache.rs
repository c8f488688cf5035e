//! The cell's download cache. A download with a `cache_key` is stored (in its tar form) under
//! `<dir>/<md5(cache_key)>.tar` together with the response's `ETag`/`Last-Modified`; the next
//! fetch of that key revalidates with `If-None-Match`/`If-Modified-Since`, and a `304` serves
//! the stored copy without transferring a body. One fetch per key runs at a time (others wait
//! and then revalidate), entries are evicted least-recently-used first when the size budget
//! would be exceeded, and the index survives restarts in `saved_cache.json`.
//!
//! Checksums are computed over the raw downloaded bytes (md5, sha1 and sha256 at once, so a
//! cache hit can be checked against whatever digest the next caller asks for) and verified
//! before anything is handed out.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use md5::Digest as _;
use serde::{Deserialize, Serialize};
use tempfile::TempPath;

use crate::archive::{self, ArchiveError};
use crate::http::{self, HttpError, Tls, Url};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("Download failed: Status code {0}")]
    Status(u16),
    #[error("Checksum failed: {algorithm} checksum mismatch: expected '{expected}', got '{got}'")]
    Checksum {
        algorithm: String,
        expected: String,
        got: String,
    },
    #[error("unsupported checksum algorithm {0:?}")]
    Algorithm(String),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("download timed out after {0:?}")]
    Timeout(Duration),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
    let context = context.into();
    move |source| FetchError::Io { context, source }
}

/// An expected digest of the downloaded bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// `md5`, `sha1` or `sha256` (any case; normalised).
    pub algorithm: String,
    pub value: String,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_bytes: u64,
    /// Attempts per fetch (network errors and 5xx are retried; 4xx and checksum errors not).
    pub attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub request_timeout: Duration,
    /// Verification of `https://` servers (system roots unless set).
    pub tls: Tls,
    /// Treat a requested checksum as naming the content (a droplet's SHA1): an entry whose
    /// stored digest matches is served without asking the server, and a checksummed download
    /// is stored even when the server sends no ETag/Last-Modified. Off by default.
    pub content_addressed: bool,
}

impl CacheConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CacheConfig {
            dir: dir.into(),
            max_bytes: 10 << 30,
            attempts: 4,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(5),
            request_timeout: Duration::from_secs(600),
            tls: Tls::default(),
            content_addressed: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Digests {
    md5: String,
    sha1: String,
    sha256: String,
}

impl Digests {
    fn get(&self, algorithm: &str) -> Option<&str> {
        match algorithm {
            "md5" => Some(&self.md5),
            "sha1" => Some(&self.sha1),
            "sha256" => Some(&self.sha256),
            _ => None,
        }
    }

    fn verify(&self, want: Option<&Checksum>) -> Result<(), FetchError> {
        let Some(want) = want else { return Ok(()) };
        let algorithm = want.algorithm.to_ascii_lowercase();
        let got = self
            .get(&algorithm)
            .ok_or_else(|| FetchError::Algorithm(want.algorithm.clone()))?;
        let expected = want.value.to_ascii_lowercase();
        if got != expected {
            return Err(FetchError::Checksum {
                algorithm,
                expected,
                got: got.to_string(),
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    /// Size of the stored tar.
    size: u64,
    etag: Option<String>,
    last_modified: Option<String>,
    /// Logical clock of the last use (higher = more recent).
    last_access: u64,
    digests: Digests,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    entries: HashMap<String, Entry>,
    clock: u64,
}

impl Index {
    fn total(&self) -> u64 {
        self.entries.values().map(|e| e.size).sum()
    }
}

/// A fetched artifact in tar form, open for reading. Evicting or replacing its cache entry
/// meanwhile is safe: the open file keeps the data alive.
#[derive(Debug)]
pub struct Fetched {
    pub tar: File,
    /// Bytes transferred over the network (0 on a cache hit).
    pub downloaded: u64,
    pub cache_hit: bool,
    _temp: Option<TempPath>,
}

/// See the module docs.
pub struct DownloadCache {
    config: CacheConfig,
    // std mutexes: nothing awaits while they are held.
    index: Mutex<Index>,
    key_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for DownloadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadCache")
            .field("dir", &self.config.dir)
            .finish()
    }
}

const INDEX_FILE: &str = "saved_cache.json";

impl DownloadCache {
    /// Open (or create) the cache at `config.dir`, reloading its index and deleting files the
    /// index does not know.
    pub fn open(config: CacheConfig) -> Result<DownloadCache, FetchError> {
        let dir = &config.dir;
        std::fs::create_dir_all(dir.join("tmp"))
            .map_err(io(format!("creating {}", dir.display())))?;
        let mut index: Index = std::fs::read(dir.join(INDEX_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        index
            .entries
            .retain(|k, _| dir.join(format!("{k}.tar")).is_file());
        for f in std::fs::read_dir(dir)
            .map_err(io(format!("listing {}", dir.display())))?
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            let tracked = name
                .strip_suffix(".tar")
                .is_some_and(|k| index.entries.contains_key(k));
            if name != INDEX_FILE && name != "tmp" && !tracked {
                let _ = std::fs::remove_file(f.path());
            }
        }
        for f in std::fs::read_dir(dir.join("tmp"))
            .map_err(io("listing tmp"))?
            .flatten()
        {
            let _ = std::fs::remove_file(f.path());
        }
        Ok(DownloadCache {
            config,
            index: Mutex::new(index),
            key_locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// Total size of the stored entries.
    pub fn size(&self) -> u64 {
        self.index.lock().unwrap().total()
    }

    /// Whether `cache_key` currently has a stored entry.
    pub fn contains(&self, cache_key: &str) -> bool {
        self.index
            .lock()
            .unwrap()
            .entries
            .contains_key(&key_hash(cache_key))
    }

    /// Fetch `url` as a tar. An empty `cache_key` bypasses the cache.
    pub async fn fetch(
        &self,
        url: &str,
        cache_key: &str,
        checksum: Option<&Checksum>,
    ) -> Result<Fetched, FetchError> {
        if let Some(c) = checksum {
            if Digests::default()
                .get(&c.algorithm.to_ascii_lowercase())
                .is_none()
            {
                return Err(FetchError::Algorithm(c.algorithm.clone()));
            }
        }
        let url_parsed = Url::parse(url)?;
        let file_name = url_parsed.file_name().unwrap_or_else(|| "download".into());
        if cache_key.is_empty() {
            let fresh = self.download_with_retries(&url_parsed, None).await?;
            let Some(fresh) = fresh else {
                return Err(FetchError::Status(304));
            };
            fresh.digests.verify(checksum)?;
            let tar = self.transform(fresh.raw, &file_name).await?;
            return self.open_temp(tar, fresh.len);
        }

        let key = key_hash(cache_key);
        let lock = self
            .key_locks
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;

        let known = self.index.lock().unwrap().entries.get(&key).cloned();
        if let (true, Some(want), Some(entry)) = (self.config.content_addressed, checksum, &known) {
            if entry.digests.verify(Some(want)).is_ok() {
                let path = self.entry_path(&key);
                if let Ok(tar) = File::open(&path) {
                    self.touch(&key);
                    return Ok(Fetched {
                        tar,
                        downloaded: 0,
                        cache_hit: true,
                        _temp: None,
                    });
                }
            }
        }
        let fresh = self
            .download_with_retries(&url_parsed, known.as_ref())
            .await?;
        let Some(fresh) = fresh else {
            // 304: serve the stored copy.
            let entry = known.expect("a 304 is only possible after a conditional request");
            entry.digests.verify(checksum)?;
            let path = self.entry_path(&key);
            let tar =
                File::open(&path).map_err(io(format!("opening cached {}", path.display())))?;
            self.touch(&key);
            return Ok(Fetched {
                tar,
                downloaded: 0,
                cache_hit: true,
                _temp: None,
            });
        };
        fresh.digests.verify(checksum)?;
        let tar = self.transform(fresh.raw, &file_name).await?;
        let immutable = self.config.content_addressed && checksum.is_some();
        if fresh.etag.is_none() && fresh.last_modified.is_none() && !immutable {
            // Nothing to revalidate with: not cached, and any old entry is stale.
            self.remove(&key);
            return self.open_temp(tar, fresh.len);
        }
        let size = std::fs::metadata(&tar).map_err(io("sizing tar"))?.len();
        if !self.make_room(&key, size) {
            self.remove(&key);
            return self.open_temp(tar, fresh.len);
        }
        let path = self.entry_path(&key);
        // Keep the TempPath alive until the rename so the file is not deleted under us.
        std::fs::rename(&tar, &path).map_err(io(format!("storing {}", path.display())))?;
        let _ = tar.keep();
        let file = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        {
            let mut index = self.index.lock().unwrap();
            index.clock += 1;
            let last_access = index.clock;
            index.entries.insert(
                key,
                Entry {
                    size,
                    etag: fresh.etag,
                    last_modified: fresh.last_modified,
                    last_access,
                    digests: fresh.digests,
                },
            );
        }
        self.save();
        Ok(Fetched {
            tar: file,
            downloaded: fresh.len,
            cache_hit: false,
            _temp: None,
        })
    }

    /// Store the local file `raw` under `cache_key` as if it had been downloaded (for an
    /// artifact the caller made itself, such as a staged droplet). It has no validators, so
    /// only a content-addressed fetch whose checksum matches is served from it.
    pub async fn insert(
        &self,
        cache_key: &str,
        raw: &Path,
        file_name: &str,
    ) -> Result<(), FetchError> {
        let key = key_hash(cache_key);
        let lock = self
            .key_locks
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let _guard = lock.lock().await;
        let copy = self.temp_path()?;
        let (src, dst) = (raw.to_path_buf(), copy.to_path_buf());
        let digests = tokio::task::spawn_blocking(move || -> std::io::Result<Digests> {
            let mut input = File::open(&src)?;
            let mut out = std::io::BufWriter::new(File::create(&dst)?);
            let (mut md5, mut sha1, mut sha256) =
                (md5::Md5::new(), sha1::Sha1::new(), sha2::Sha256::new());
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = std::io::Read::read(&mut input, &mut buf)?;
                if n == 0 {
                    break;
                }
                md5.update(&buf[..n]);
                sha1.update(&buf[..n]);
                sha256.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
            out.flush()?;
            Ok(Digests {
                md5: hex(&md5.finalize()),
                sha1: hex(&sha1.finalize()),
                sha256: hex(&sha256.finalize()),
            })
        })
        .await
        .map_err(|e| FetchError::Io {
            context: "copy task".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(io(format!("copying {}", raw.display())))?;
        let tar = self.transform(copy, file_name).await?;
        let size = std::fs::metadata(&tar).map_err(io("sizing tar"))?.len();
        if !self.make_room(&key, size) {
            return Ok(());
        }
        let path = self.entry_path(&key);
        std::fs::rename(&tar, &path).map_err(io(format!("storing {}", path.display())))?;
        let _ = tar.keep();
        {
            let mut index = self.index.lock().unwrap();
            index.clock += 1;
            let last_access = index.clock;
            index.entries.insert(
                key,
                Entry {
                    size,
                    etag: None,
                    last_modified: None,
                    last_access,
                    digests,
                },
            );
        }
        self.save();
        Ok(())
    }

    fn entry_path(&self, key: &str) -> PathBuf {
        self.config.dir.join(format!("{key}.tar"))
    }

    fn open_temp(&self, tar: TempPath, downloaded: u64) -> Result<Fetched, FetchError> {
        let file = File::open(&tar).map_err(io("opening downloaded tar"))?;
        Ok(Fetched {
            tar: file,
            downloaded,
            cache_hit: false,
            _temp: Some(tar),
        })
    }

    fn touch(&self, key: &str) {
        let mut index = self.index.lock().unwrap();
        index.clock += 1;
        let clock = index.clock;
        if let Some(e) = index.entries.get_mut(key) {
            e.last_access = clock;
        }
        drop(index);
        self.save();
    }

    fn remove(&self, key: &str) {
        if self.index.lock().unwrap().entries.remove(key).is_some() {
            let _ = std::fs::remove_file(self.entry_path(key));
            self.save();
        }
    }

    /// Evict least-recently-used entries (other than `key`, which is being replaced) until
    /// `size` more bytes fit. False if they cannot fit at all.
    fn make_room(&self, key: &str, size: u64) -> bool {
        if size > self.config.max_bytes {
            return false;
        }
        let mut index = self.index.lock().unwrap();
        let mut evicted = Vec::new();
        loop {
            let used: u64 = index
                .entries
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .map(|(_, e)| e.size)
                .sum();
            if used + size <= self.config.max_bytes {
                break;
            }
            let victim = index
                .entries
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .min_by_key(|(_, e)| e.last_access)
                .map(|(k, _)| k.clone());
            match victim {
                Some(v) => {
                    index.entries.remove(&v);
                    evicted.push(v);
                }
                None => break,
            }
        }
        drop(index);
        for v in evicted {
            tracing::info!(key = %v, "evicting cached download");
            let _ = std::fs::remove_file(self.entry_path(&v));
        }
        true
    }

    fn save(&self) {
        let json = serde_json::to_vec(&*self.index.lock().unwrap()).unwrap_or_default();
        let tmp = self.config.dir.join(format!("{INDEX_FILE}.tmp"));
        let ok = File::create(&tmp)
            .and_then(|mut f| f.write_all(&json))
            .is_ok();
        if ok {
            let _ = std::fs::rename(&tmp, self.config.dir.join(INDEX_FILE));
        }
    }

    async fn transform(&self, raw: TempPath, file_name: &str) -> Result<TempPath, FetchError> {
        let out = self.temp_path()?;
        let name = file_name.to_string();
        let out = tokio::task::spawn_blocking(move || {
            archive::to_tar(&raw, &out, &name)?;
            Ok::<_, FetchError>(out)
        })
        .await
        .map_err(|e| FetchError::Io {
            context: "archive task".into(),
            source: std::io::Error::other(e),
        })??;
        Ok(out)
    }

    fn temp_path(&self) -> Result<TempPath, FetchError> {
        Ok(tempfile::NamedTempFile::new_in(self.config.dir.join("tmp"))
            .map_err(io("creating temp file"))?
            .into_temp_path())
    }

    async fn download_with_retries(
        &self,
        url: &Url,
        known: Option<&Entry>,
    ) -> Result<Option<Fresh>, FetchError> {
        let mut delay = self.config.backoff_base;
        let mut attempt = 1;
        loop {
            let r =
                tokio::time::timeout(self.config.request_timeout, self.download_once(url, known))
                    .await;
            let r = r.unwrap_or(Err(FetchError::Timeout(self.config.request_timeout)));
            let retryable = match &r {
                Ok(_) => false,
                Err(FetchError::Status(s)) => *s >= 500,
                Err(FetchError::Http(e)) if e.is_permanent() => false,
                Err(FetchError::Http(_) | FetchError::Timeout(_)) => true,
                Err(_) => false,
            };
            if !retryable || attempt >= self.config.attempts {
                return r;
            }
            tracing::info!(attempt, error = %r.as_ref().err().map(|e| e.to_string()).unwrap_or_default(), "download failed, retrying");
            // Jitter: up to a quarter of the delay, from the clock's sub-second noise.
            let noise = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            let jitter = delay.mul_f64((noise % 1000) as f64 / 4000.0);
            tokio::time::sleep(delay + jitter).await;
            delay = (delay * 2).min(self.config.backoff_max);
            attempt += 1;
        }
    }

    /// One GET; `Ok(None)` = 304 Not Modified.
    async fn download_once(
        &self,
        url: &Url,
        known: Option<&Entry>,
    ) -> Result<Option<Fresh>, FetchError> {
        let mut headers = Vec::new();
        if let Some(e) = known {
            if let Some(etag) = &e.etag {
                headers.push(("If-None-Match", etag.clone()));
            }
            if let Some(lm) = &e.last_modified {
                headers.push(("If-Modified-Since", lm.clone()));
            }
        }
        let resp = http::request_with(&self.config.tls, "GET", url, &headers, None).await?;
        match resp.status {
            304 if known.is_some() => return Ok(None),
            200 => {}
            s => return Err(FetchError::Status(s)),
        }
        let etag = resp.header("etag").map(str::to_string);
        let last_modified = resp.header("last-modified").map(str::to_string);
        let raw = self.temp_path()?;
        let mut file =
            std::io::BufWriter::new(File::create(&raw).map_err(io("creating download file"))?);
        let (mut md5, mut sha1, mut sha256) =
            (md5::Md5::new(), sha1::Sha1::new(), sha2::Sha256::new());
        let len = resp
            .read_body(|chunk| {
                md5.update(chunk);
                sha1.update(chunk);
                sha256.update(chunk);
                file.write_all(chunk)
            })
            .await?;
        file.flush().map_err(io("writing download file"))?;
        let digests = Digests {
            md5: hex(&md5.finalize()),
            sha1: hex(&sha1.finalize()),
            sha256: hex(&sha256.finalize()),
        };
        Ok(Some(Fresh {
            raw,
            len,
            etag,
            last_modified,
            digests,
        }))
    }
}

struct Fresh {
    raw: TempPath,
    len: u64,
    etag: Option<String>,
    last_modified: Option<String>,
    digests: Digests,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_hash(cache_key: &str) -> String {
    hex(&md5::Md5::digest(cache_key.as_bytes()))
}

/// Convenience for callers that have a path rather than a config.
pub fn open_at(dir: &Path, max_bytes: u64) -> Result<DownloadCache, FetchError> {
    let mut c = CacheConfig::new(dir);
    c.max_bytes = max_bytes;
    DownloadCache::open(c)
}

#[cfg(test)]
pub(crate) mod tests;
