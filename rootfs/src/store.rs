//! The content-addressed layer store: images from registries (`docker://`), OCI layouts
//! (`oci://`) and Diego's droplet layers (`preloaded+layer://`), each layer unpacked once.
//!
//! Layout under `<state>/images/`:
//! - `layers/<chain id hex>/`: one unpacked layer, whiteouts in overlayfs's form, read-only
//!   to everyone (it is shared by every container of every image that has it).
//! - `l/<12 hex>`: a short symlink to each layer; containers mount these, so a mount option
//!   of many layers stays within the kernel's one-page limit.
//! - `configs/<hex>.json`: image config blobs, so a cached image pulls nothing but its manifest.
//! - `tmp/`: unpacks and downloads in progress; emptied at start and after every failure.
//!
//! Layers are written to `tmp/` and renamed into place, one writer per chain id (a lock per
//! id deduplicates concurrent pulls of one image). Containers pin the layers they mount
//! ([`Store::resolve`] / [`Store::release`]); garbage collection removes the unpinned ones
//! once the store exceeds its threshold, never while a resolve is under way.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::digest::{chain_ids, Digest, Hashing};
use crate::image::{unique_suffix, RootfsPlan};
use crate::reference::{self, DockerRef, ImageSource, Tagged};
use crate::registry::{self, Credentials, Registry, MAX_MANIFEST};
use crate::safe_tar::{extract_with, ExtractOptions, Ownership};
use crate::RootfsError;

type Result<T, E = RootfsError> = std::result::Result<T, E>;

/// How the store is run (gardend's flags).
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// `host[:port]` of registries reached over plain HTTP (`--insecure-docker-registry`).
    pub insecure_registries: Vec<String>,
    /// Collect unused layers once the store holds more than this many bytes; `None` never.
    pub gc_threshold: Option<u64>,
}

/// What one garbage collection did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcStats {
    pub bytes_before: u64,
    pub layers_removed: u64,
    pub bytes_removed: u64,
}

/// The layer store of one gardend.
pub struct Store {
    root: PathBuf,
    /// Where plain tarball rootfses are cached (see [`crate::image::resolve`]).
    tarball_cache: PathBuf,
    insecure: Arc<Vec<String>>,
    gc_threshold: Option<u64>,
    client: OnceLock<reqwest::blocking::Client>,
    /// Resolves hold it shared until their layers are pinned; GC holds it exclusively.
    gc: RwLock<()>,
    /// Pins per layer link path (several containers share a layer).
    pins: Mutex<HashMap<PathBuf, usize>>,
    /// One lock per key being written (chain id, config digest), so one writer unpacks it.
    writing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Mount options are one page; what the layers may take of it, leaving room for the upper
/// and work dirs (about 200 bytes). With the short links that is ~95 layers under
/// `/var/lib/gardend`; Docker itself stops at 127.
const MAX_LOWERDIR_OPTION: usize = 3800;

/// The overlayfs whiteout / opaque forms need these dirs readable by everyone.
const LAYER_MODE: u32 = 0o755;

impl Store {
    /// Opens (creating) the store at `root`; what a crash left in `tmp/` is removed.
    pub fn open(root: &Path, tarball_cache: &Path, config: StoreConfig) -> Result<Store> {
        for d in ["layers", "l", "configs", "tmp"] {
            let dir = root.join(d);
            fs::create_dir_all(&dir).map_err(|e| RootfsError::io("create directory", &dir, e))?;
        }
        let tmp = root.join("tmp");
        if let Ok(entries) = fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let _ = remove_any(&e.path());
            }
        }
        Ok(Store {
            root: root.to_path_buf(),
            tarball_cache: tarball_cache.to_path_buf(),
            insecure: Arc::new(config.insecure_registries),
            gc_threshold: config.gc_threshold,
            client: OnceLock::new(),
            gc: RwLock::new(()),
            pins: Mutex::default(),
            writing: Mutex::default(),
        })
    }

    /// The store's directory (`<state>/images`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves any Garden rootfs URI into the layers to mount, pulling and unpacking what is
    /// missing; the store's layers in the plan stay pinned until [`Store::release`].
    /// `default` is the rootfs for an empty URI.
    pub fn resolve(&self, uri: &str, creds: &Credentials, default: &Path) -> Result<RootfsPlan> {
        let source = reference::parse(uri).map_err(|reason| RootfsError::InvalidUri {
            uri: uri.to_string(),
            reason,
        })?;
        let Some(source) = source else {
            return crate::image::resolve(uri, default, &self.tarball_cache);
        };
        let _shared = self.gc.read().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let plan = match &source {
            ImageSource::Docker(r) => self.pull_registry(r, creds)?,
            ImageSource::OciLayout { path, tag } => self.pull_layout(path, tag)?,
            ImageSource::PreloadedLayer {
                base,
                layer_url,
                layer_path,
                layer_digest,
            } => self.preloaded_layer(base, layer_url, layer_path, layer_digest)?,
        };
        self.pin(&plan.lower_dirs);
        tracing::info!(
            image = uri,
            layers = plan.lower_dirs.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "image ready"
        );
        Ok(plan)
    }

    /// Pins the store's layers among `lower_dirs` once more (a plan used again, such as the
    /// default rootfs); each pin is undone by one [`Store::release`].
    pub fn pin(&self, lower_dirs: &[PathBuf]) {
        let mut pins = self.pins.lock().expect("pins lock");
        for l in lower_dirs.iter().filter(|l| l.starts_with(&self.root)) {
            *pins.entry(l.clone()).or_default() += 1;
        }
    }

    /// Unpins the layers a container no longer mounts (its plan's `lower_dirs`), then
    /// collects garbage if the store is over its threshold.
    pub fn release(&self, lower_dirs: &[PathBuf]) {
        {
            let mut pins = self.pins.lock().expect("pins lock");
            for l in lower_dirs {
                if let Some(n) = pins.get_mut(l) {
                    *n -= 1;
                    if *n == 0 {
                        pins.remove(l);
                    }
                }
            }
        }
        if let Err(e) = self.collect_garbage() {
            tracing::warn!(error = %e, "layer garbage collection");
        }
    }

    /// Removes every layer no container pins, if the store holds more than the threshold.
    pub fn collect_garbage(&self) -> Result<GcStats> {
        let Some(threshold) = self.gc_threshold else {
            return Ok(GcStats::default());
        };
        let _exclusive = self.gc.write().unwrap_or_else(|e| e.into_inner());
        let layers = self.root.join("layers");
        let mut stats = GcStats {
            bytes_before: du(&layers),
            ..GcStats::default()
        };
        if stats.bytes_before <= threshold {
            return Ok(stats);
        }
        let pins = self.pins.lock().expect("pins lock").clone();
        let entries = fs::read_dir(&layers).map_err(|e| RootfsError::io("read", &layers, e))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let link = self.link_path(&name);
            if pins.contains_key(&link) {
                continue;
            }
            let size = du(&e.path());
            // Link first: a half-removed layer must never be mounted.
            let _ = fs::remove_file(&link);
            let doomed = self
                .root
                .join("tmp")
                .join(format!("gc-{name}-{}", unique_suffix()));
            if fs::rename(e.path(), &doomed).is_ok() {
                let _ = remove_any(&doomed);
                stats.layers_removed += 1;
                stats.bytes_removed += size;
            }
        }
        tracing::info!(
            threshold,
            bytes_before = stats.bytes_before,
            layers_removed = stats.layers_removed,
            bytes_removed = stats.bytes_removed,
            "collected unused layers"
        );
        Ok(stats)
    }

    fn client(&self) -> Result<&reqwest::blocking::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = registry::client(self.insecure.clone())?;
        Ok(self.client.get_or_init(|| c))
    }

    fn link_path(&self, hex: &str) -> PathBuf {
        self.root.join("l").join(&hex[..hex.len().min(12)])
    }

    fn key_lock(&self, key: &str) -> Arc<Mutex<()>> {
        self.writing
            .lock()
            .expect("writing lock")
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    fn forget_lock(&self, key: &str) {
        let mut w = self.writing.lock().expect("writing lock");
        if w.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            w.remove(key);
        }
    }

    fn pull_registry(&self, image: &DockerRef, creds: &Credentials) -> Result<RootfsPlan> {
        let client = self.client()?;
        let reg = Registry::new(client, image, creds.clone(), &self.insecure);
        let name = image.to_string();
        let (bytes, media_type) = reg.manifest(&image.reference)?;
        tracing::info!(image = %name, media_type, "fetched manifest");
        let manifest = select_manifest(&name, bytes, &mut |d| {
            reg.manifest(&Tagged::Digest(d.clone())).map(|(b, _)| b)
        })?;
        self.unpack_image(&name, &manifest, &mut |d| {
            Ok(Box::new(reg.blob(d)?) as Box<dyn Read>)
        })
    }

    fn pull_layout(&self, path: &Path, tag: &str) -> Result<RootfsPlan> {
        let name = format!("{}#{tag}", path.display());
        let err = |reason: String| RootfsError::Image {
            image: name.clone(),
            reason,
        };
        let index_path = path.join("index.json");
        let index = read_limited(&index_path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => err("not an OCI image layout (no index.json)".into()),
            _ => err(format!("reading index.json: {e}")),
        })?;
        let index: ImageIndex =
            serde_json::from_slice(&index).map_err(|e| err(format!("index.json: {e}")))?;
        let wanted = index.manifests().iter().find(|m| {
            m.annotations()
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                .is_some_and(|r| r == tag)
        });
        let Some(desc) = wanted else {
            return Err(err(format!("no manifest tagged {tag:?} in index.json")));
        };
        let blobs = path.join("blobs");
        let blob_path = |d: &Digest| blobs.join("sha256").join(d.hex());
        let digest = descriptor_digest(&name, desc)?;
        let read_manifest = |d: &Digest| -> Result<Vec<u8>> {
            let bytes =
                read_limited(&blob_path(d)).map_err(|e| err(format!("manifest {d}: {e}")))?;
            let got = Digest::of(&bytes);
            if &got != d {
                return Err(RootfsError::DigestMismatch {
                    what: format!("manifest of {name}"),
                    expected: d.to_string(),
                    got: got.to_string(),
                });
            }
            Ok(bytes)
        };
        let top = read_manifest(&digest)?;
        let manifest = select_manifest(&name, top, &mut |d| read_manifest(d))?;
        self.unpack_image(&name, &manifest, &mut |d| {
            let p = blob_path(d);
            let f = File::open(&p).map_err(|e| err(format!("blob {d}: {e}")))?;
            Ok(Box::new(f) as Box<dyn Read>)
        })
    }

    /// The config (cached by digest) and every layer of `manifest`, then the plan.
    fn unpack_image(
        &self,
        name: &str,
        manifest: &ImageManifest,
        blob: &mut dyn FnMut(&Digest) -> Result<Box<dyn Read>>,
    ) -> Result<RootfsPlan> {
        let err = |reason: String| RootfsError::Image {
            image: name.to_string(),
            reason,
        };
        let config_digest = descriptor_digest(name, manifest.config())?;
        let config_bytes = self.config_blob(name, &config_digest, blob)?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| err(format!("image config: {e}")))?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d).map_err(|e| err(format!("diff id {d:?}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        let layers = manifest.layers();
        if diff_ids.len() != layers.len() {
            return Err(err(format!(
                "the manifest has {} layers but the config {} diff ids",
                layers.len(),
                diff_ids.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        // Checked before pulling anything: the links' names follow from the chain ids.
        let option_len: usize = chains
            .iter()
            .map(|c| self.link_path(c.hex()).as_os_str().len() + 1)
            .sum();
        if option_len > MAX_LOWERDIR_OPTION {
            return Err(err(format!(
                "{} layers need {option_len} bytes of overlay lowerdir option; at most {} fit in one mount",
                chains.len(),
                MAX_LOWERDIR_OPTION
            )));
        }
        let mut lower_dirs = Vec::with_capacity(layers.len());
        for (i, desc) in layers.iter().enumerate() {
            let digest = descriptor_digest(name, desc)?;
            let link = self.ensure_layer(
                &LayerJob {
                    image: name,
                    index: i + 1,
                    count: layers.len(),
                    key: &chains[i],
                    blob_digest: &digest,
                    size: Some(desc.size()),
                    diff_id: Some(&diff_ids[i]),
                    dest: Path::new("/"),
                    base: None,
                },
                &mut || blob(&digest),
            )?;
            lower_dirs.push(link);
        }
        lower_dirs.reverse(); // overlayfs wants the top layer first
        let c = config.config().clone().unwrap_or_default();
        Ok(RootfsPlan {
            lower_dirs,
            env: c.env().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
            workdir: c.working_dir().clone().unwrap_or_default(),
        })
    }

    /// The image config blob, from the cache or fetched, verified either way.
    fn config_blob(
        &self,
        name: &str,
        digest: &Digest,
        blob: &mut dyn FnMut(&Digest) -> Result<Box<dyn Read>>,
    ) -> Result<Vec<u8>> {
        let key = format!("config-{}", digest.hex());
        let lock = self.key_lock(&key);
        let result = {
            let _writer = lock.lock().unwrap_or_else(|e| e.into_inner());
            self.config_blob_locked(name, digest, blob)
        };
        drop(lock);
        self.forget_lock(&key);
        result
    }

    /// [`Store::config_blob`] under the digest's lock: one fetch however many pulls wait.
    fn config_blob_locked(
        &self,
        name: &str,
        digest: &Digest,
        blob: &mut dyn FnMut(&Digest) -> Result<Box<dyn Read>>,
    ) -> Result<Vec<u8>> {
        let path = self
            .root
            .join("configs")
            .join(format!("{}.json", digest.hex()));
        if let Ok(bytes) = read_limited(&path) {
            if &Digest::of(&bytes) == digest {
                return Ok(bytes);
            }
        }
        let mut bytes = Vec::new();
        blob(digest)?
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| RootfsError::Image {
                image: name.to_string(),
                reason: format!("reading config {digest}: {e}"),
            })?;
        let got = Digest::of(&bytes);
        if &got != digest {
            return Err(RootfsError::DigestMismatch {
                what: format!("config of {name}"),
                expected: digest.to_string(),
                got: got.to_string(),
            });
        }
        let tmp = self
            .root
            .join("tmp")
            .join(format!("config-{}", unique_suffix()));
        fs::write(&tmp, &bytes).map_err(|e| RootfsError::io("write", &tmp, e))?;
        if let Err(e) = fs::rename(&tmp, &path) {
            let _ = fs::remove_file(&tmp);
            return Err(RootfsError::io("rename", &path, e));
        }
        Ok(bytes)
    }

    /// Diego's droplet layer: the tarball at `url`, verified against `digest`, unpacked at
    /// `layer_path` in a layer of its own (once per digest and path) above `base`.
    fn preloaded_layer(
        &self,
        base: &Path,
        url: &str,
        layer_path: &str,
        digest: &Digest,
    ) -> Result<RootfsPlan> {
        match fs::metadata(base) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(RootfsError::InvalidPath {
                    path: base.to_path_buf(),
                    reason: "the preloaded rootfs must be a directory".into(),
                })
            }
            Err(_) => {
                return Err(RootfsError::NotFound {
                    path: base.to_path_buf(),
                })
            }
        }
        let key = Digest::of(format!("preloaded {digest} {layer_path}").as_bytes());
        let client = self.client()?;
        let link = self.ensure_layer(
            &LayerJob {
                image: url,
                index: 1,
                count: 1,
                key: &key,
                blob_digest: digest,
                size: None,
                diff_id: None,
                dest: Path::new(layer_path),
                base: Some(base),
            },
            &mut || {
                let resp = client.get(url).send().map_err(|e| RootfsError::Image {
                    image: url.to_string(),
                    reason: registry::chain(&e),
                })?;
                if !resp.status().is_success() {
                    return Err(RootfsError::Image {
                        image: url.to_string(),
                        reason: format!("download answered {}", resp.status()),
                    });
                }
                Ok(Box::new(resp) as Box<dyn Read>)
            },
        )?;
        Ok(RootfsPlan {
            lower_dirs: vec![link, base.to_path_buf()],
            ..RootfsPlan::default()
        })
    }

    /// The short link of layer `job.key`, unpacking it first unless it is already stored.
    fn ensure_layer(
        &self,
        job: &LayerJob<'_>,
        open: &mut dyn FnMut() -> Result<Box<dyn Read>>,
    ) -> Result<PathBuf> {
        let hex = job.key.hex();
        let dir = self.root.join("layers").join(hex);
        let link = self.link_path(hex);
        let lock = self.key_lock(hex);
        let result = (|| {
            let _writer = lock.lock().unwrap_or_else(|e| e.into_inner());
            if !dir.is_dir() {
                self.unpack_layer(job, open, &dir)?;
            } else {
                tracing::info!(
                    image = job.image,
                    layer = format!("{}/{}", job.index, job.count),
                    digest = %job.blob_digest,
                    "layer already stored"
                );
            }
            self.ensure_link(hex, &link)
        })();
        drop(lock);
        self.forget_lock(hex);
        result.map(|()| link)
    }

    fn ensure_link(&self, hex: &str, link: &Path) -> Result<()> {
        let target = Path::new("../layers").join(hex);
        match fs::read_link(link) {
            Ok(t) if t == target => return Ok(()),
            Ok(_) => {
                return Err(RootfsError::Image {
                    image: hex.to_string(),
                    reason: format!(
                        "short layer id {} is taken by another layer",
                        link.display()
                    ),
                })
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&target, link)
            .or_else(|e| match fs::read_link(link) {
                Ok(t) if t == target => Ok(()),
                _ => Err(e),
            })
            .map_err(|e| RootfsError::io("symlink", link, e))
    }

    /// Streams the blob through digest checks and the decompressor into the safe extractor,
    /// in `tmp/`; renamed into place only when every digest matched.
    fn unpack_layer(
        &self,
        job: &LayerJob<'_>,
        open: &mut dyn FnMut() -> Result<Box<dyn Read>>,
        dir: &Path,
    ) -> Result<()> {
        let started = Instant::now();
        tracing::info!(
            image = job.image,
            layer = format!("{}/{}", job.index, job.count),
            digest = %job.blob_digest,
            size = job.size,
            "pulling layer"
        );
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}-{}", job.key.hex(), unique_suffix()));
        fs::create_dir(&tmp).map_err(|e| RootfsError::io("create directory", &tmp, e))?;
        let result = (|| {
            if let Some(base) = job.base {
                copy_parents(&tmp, base, job.dest)?;
            }
            let source = open()?;
            let mut blob = Hashing::new(Progress::new(source, job));
            let layer_err = |e: RootfsError| RootfsError::Layer {
                path: PathBuf::from(format!("{} layer {}", job.image, job.blob_digest)),
                source: Box::new(e),
            };
            let read_err = |e: io::Error| RootfsError::Image {
                image: job.image.to_string(),
                reason: format!("reading layer {}: {e}", job.blob_digest),
            };
            let (diff, _) = {
                let mut buf = BufReader::with_capacity(1 << 16, &mut blob);
                let head = buf.fill_buf().map_err(read_err)?;
                let decoded: Box<dyn Read + '_> = if head.starts_with(&[0x1f, 0x8b]) {
                    Box::new(flate2::bufread::MultiGzDecoder::new(buf))
                } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    Box::new(zstd::stream::read::Decoder::with_buffer(buf).map_err(read_err)?)
                } else {
                    Box::new(buf)
                };
                let mut tar = Hashing::new(decoded);
                let root = File::open(&tmp).map_err(|e| RootfsError::io("open", &tmp, e))?;
                extract_with(
                    root.as_fd(),
                    job.dest,
                    &mut tar,
                    ExtractOptions {
                        ownership: Ownership::FromArchive,
                        allow_devices: true,
                        restrict: None,
                        image_layer: true,
                    },
                )
                .map_err(layer_err)?;
                tar.finish().map_err(read_err)?
            };
            let (got, bytes) = blob.finish().map_err(read_err)?;
            if &got != job.blob_digest {
                return Err(RootfsError::DigestMismatch {
                    what: format!("layer of {}", job.image),
                    expected: job.blob_digest.to_string(),
                    got: got.to_string(),
                });
            }
            if let Some(size) = job.size.filter(|s| *s != bytes) {
                return Err(RootfsError::Image {
                    image: job.image.to_string(),
                    reason: format!("layer {got} has {bytes} bytes, the manifest says {size}"),
                });
            }
            if let Some(want) = job.diff_id.filter(|d| **d != diff) {
                return Err(RootfsError::DigestMismatch {
                    what: format!("uncompressed layer of {}", job.image),
                    expected: want.to_string(),
                    got: diff.to_string(),
                });
            }
            fs::set_permissions(&tmp, fs::Permissions::from_mode(LAYER_MODE))
                .map_err(|e| RootfsError::io("chmod", &tmp, e))?;
            Ok(bytes)
        })();
        let bytes = match result {
            Ok(b) => b,
            Err(e) => {
                let _ = remove_any(&tmp);
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&tmp, dir) {
            let _ = remove_any(&tmp);
            if !dir.is_dir() {
                return Err(RootfsError::io("rename", dir, e));
            }
        }
        tracing::info!(
            image = job.image,
            layer = format!("{}/{}", job.index, job.count),
            digest = %job.blob_digest,
            bytes,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "layer unpacked"
        );
        Ok(())
    }
}

/// One layer to make sure of.
struct LayerJob<'a> {
    image: &'a str,
    index: usize,
    count: usize,
    /// What the layer is stored by: its chain id (or, for droplets, digest and path).
    key: &'a Digest,
    blob_digest: &'a Digest,
    size: Option<u64>,
    diff_id: Option<&'a Digest>,
    /// Where in the layer the tarball goes.
    dest: &'a Path,
    /// The rootfs the layer sits on: the directories leading to `dest` copy its owners and
    /// modes, so the layer does not change them (droplets go to a vcap-owned `/home/vcap`).
    base: Option<&'a Path>,
}

/// Creates `dest`'s ancestors (and itself) under `tmp` as `base` has them.
fn copy_parents(tmp: &Path, base: &Path, dest: &Path) -> Result<()> {
    use std::os::unix::fs::chown;
    let mut rel = PathBuf::new();
    for c in dest.components().skip(1) {
        rel.push(c);
        let Ok(m) = fs::metadata(base.join(&rel)) else {
            break;
        };
        if !m.is_dir() {
            break;
        }
        let dir = tmp.join(&rel);
        if let Err(e) = fs::create_dir(&dir) {
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(RootfsError::io("create directory", &dir, e));
            }
        }
        chown(&dir, Some(m.uid()), Some(m.gid())).map_err(|e| RootfsError::io("chown", &dir, e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(|e| RootfsError::io("chmod", &dir, e))?;
    }
    Ok(())
}

/// Logs a pull's progress every 16 MiB.
struct Progress<'a, R> {
    inner: R,
    job: &'a LayerJob<'a>,
    bytes: u64,
    next: u64,
}

const PROGRESS_EVERY: u64 = 16 << 20;

impl<'a, R: Read> Progress<'a, R> {
    fn new(inner: R, job: &'a LayerJob<'a>) -> Self {
        Progress {
            inner,
            job,
            bytes: 0,
            next: PROGRESS_EVERY,
        }
    }
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.bytes >= self.next {
            self.next += PROGRESS_EVERY;
            tracing::info!(
                image = self.job.image,
                layer = format!("{}/{}", self.job.index, self.job.count),
                bytes = self.bytes,
                total = self.job.size,
                "pull progress"
            );
        }
        Ok(n)
    }
}

/// The image manifest `bytes` stand for: itself, or, for an index / manifest list, the
/// linux/amd64 entry's (fetched with `fetch`, at most two levels deep).
fn select_manifest(
    name: &str,
    mut bytes: Vec<u8>,
    fetch: &mut dyn FnMut(&Digest) -> Result<Vec<u8>>,
) -> Result<ImageManifest> {
    let err = |reason: String| RootfsError::Image {
        image: name.to_string(),
        reason,
    };
    for _ in 0..3 {
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| err(format!("manifest: {e}")))?;
        if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
            return Err(err("schema 1 manifests are not supported".into()));
        }
        if v.get("manifests").is_some() {
            let index: ImageIndex =
                serde_json::from_value(v).map_err(|e| err(format!("index: {e}")))?;
            let entry = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
                    })
                })
                .ok_or_else(|| err("the index has no linux/amd64 manifest".into()))?;
            let d = descriptor_digest(name, entry)?;
            bytes = fetch(&d)?;
            continue;
        }
        if v.get("layers").is_some() {
            return serde_json::from_value(v).map_err(|e| err(format!("manifest: {e}")));
        }
        return Err(err("neither an image manifest nor an index".into()));
    }
    Err(err("indexes nested too deep".into()))
}

fn descriptor_digest(name: &str, d: &Descriptor) -> Result<Digest> {
    let s = d.digest().to_string();
    Digest::parse(&s).map_err(|e| RootfsError::Image {
        image: name.to_string(),
        reason: format!("digest {s:?}: {e}"),
    })
}

/// A small metadata file, refusing anything beyond the manifest size limit.
fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)?
        .take(MAX_MANIFEST + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_MANIFEST {
        return Err(io::Error::other("larger than 4 MiB"));
    }
    Ok(bytes)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// Allocated bytes under `dir`, not crossing file systems.
fn du(dir: &Path) -> u64 {
    let dev = fs::symlink_metadata(dir).map(|m| m.dev()).unwrap_or(0);
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() && m.dev() == dev {
                stack.push(e.path());
            }
        }
    }
    total
}
