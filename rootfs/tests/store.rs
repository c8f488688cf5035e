//! The layer store on hand-built OCI layouts: whiteouts in overlayfs form, image config,
//! one unpack per layer, digest checks leaving nothing behind, zstd layers, GC.
//! (Registry pulls are driven end to end in tests/tests/garden_images.rs.)

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::RawTar;
use rootfs::digest::Digest;
use rootfs::{Credentials, RootfsError, Store, StoreConfig};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An OCI layout under construction: blobs plus one tagged manifest.
struct Layout {
    dir: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
        }
    }

    fn blob(&self, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        fs::write(self.dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        d
    }

    /// Writes layers (uncompressed tars, compressed by `compress`), config and manifest,
    /// tagged `tag` in index.json.
    fn image(&self, tag: &str, layers: &[Vec<u8>], compress: fn(&[u8]) -> Vec<u8>) {
        let mut diff_ids = Vec::new();
        let mut descs = Vec::new();
        for tar in layers {
            diff_ids.push(Digest::of(tar).to_string());
            let blob = compress(tar);
            let d = self.blob(&blob);
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d.to_string(), "size": blob.len()
            }));
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin", "FROM_CONFIG=yes"], "User": "1000:1000",
                       "WorkingDir": "/srv"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        });
        let config = serde_json::to_vec(&config).unwrap();
        let cd = self.blob(&config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cd.to_string(), "size": config.len()},
            "layers": descs
        }))
        .unwrap();
        let md = self.blob(&manifest);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md.to_string(), "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag}}]
        });
        fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&index).unwrap(),
        )
        .unwrap();
    }
}

fn base_layer() -> Vec<u8> {
    RawTar::new()
        .dir("a/", 0o755)
        .file("a/keep", 0o644, b"keep")
        .file("a/gone", 0o644, b"gone")
        .dir("d/", 0o755)
        .file("d/x", 0o644, b"x")
        .finish()
}

fn top_layer() -> Vec<u8> {
    RawTar::new()
        .file("/a/.wh.gone", 0o644, b"")
        .file("d/.wh..wh..opq", 0o644, b"")
        .file("d/z", 0o644, b"z")
        .add(
            b"a/evil",
            tar::EntryType::Regular,
            0o644,
            None,
            b"",
            &[(b"SCHILY.xattr.trusted.overlay.redirect", b"/etc")],
        )
        .finish()
}

fn store(root: &Path, gc: Option<u64>) -> Store {
    Store::open(
        &root.join("images"),
        &root.join("layers"),
        StoreConfig {
            insecure_registries: vec![],
            gc_threshold: gc,
        },
    )
    .unwrap()
}

fn tmp_entries(root: &Path) -> Vec<String> {
    fs::read_dir(root.join("images/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn layout_layers_whiteouts_and_config() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(&tmp.path().join("layout"));
    layout.image("v1", &[base_layer(), top_layer()], gzip);
    let s = store(tmp.path(), None);
    let uri = format!("oci://{}#v1", tmp.path().join("layout").display());
    let plan = s
        .resolve(&uri, &Credentials::default(), Path::new("/"))
        .unwrap();
    assert_eq!(plan.lower_dirs.len(), 2);
    assert_eq!(plan.env, vec!["PATH=/bin", "FROM_CONFIG=yes"]);
    assert_eq!(plan.user, "1000:1000");
    assert_eq!(plan.workdir, "/srv");
    let (top, base) = (&plan.lower_dirs[0], &plan.lower_dirs[1]);
    // Short links, so many layers fit in one mount option.
    assert!(top.file_name().unwrap().len() == 12, "{}", top.display());
    assert_eq!(fs::read(base.join("a/gone")).unwrap(), b"gone");
    let wh = fs::symlink_metadata(top.join("a/gone")).unwrap();
    assert!(wh.file_type().is_char_device(), "whiteout is a char device");
    assert_eq!(wh.rdev(), 0);
    assert!(!top.join("a/.wh.gone").exists());
    assert!(!top.join("d/.wh..wh..opq").exists());
    assert_eq!(
        xattr::get(top.join("d"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(
        xattr::get(top.join("a/evil"), "trusted.overlay.redirect").unwrap(),
        None,
        "a layer's own overlay xattrs are dropped"
    );
    assert!(tmp_entries(tmp.path()).is_empty());

    // Again: nothing unpacked anew.
    let ino = fs::metadata(top.join("d/z")).unwrap().ino();
    let again = s
        .resolve(&uri, &Credentials::default(), Path::new("/"))
        .unwrap();
    assert_eq!(again, plan);
    assert_eq!(fs::metadata(top.join("d/z")).unwrap().ino(), ino);

    // The default tag is `latest`, which this layout lacks.
    let latest = format!("oci://{}", tmp.path().join("layout").display());
    let err = s
        .resolve(&latest, &Credentials::default(), Path::new("/"))
        .unwrap_err();
    assert!(err.to_string().contains("\"latest\""), "{err}");
}

#[test]
fn corrupt_blobs_leave_nothing() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(&tmp.path().join("layout"));
    layout.image("latest", &[base_layer()], gzip);
    // Flip the layer blob's content (same name, other bytes).
    let blobs = tmp.path().join("layout/blobs/sha256");
    let layer_blob = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| fs::read(p).unwrap().starts_with(&[0x1f, 0x8b]))
        .unwrap();
    fs::write(
        &layer_blob,
        gzip(&RawTar::new().file("other", 0o644, b"o").finish()),
    )
    .unwrap();
    let s = store(tmp.path(), None);
    let uri = format!("oci://{}", tmp.path().join("layout").display());
    let err = s
        .resolve(&uri, &Credentials::default(), Path::new("/"))
        .unwrap_err();
    assert!(matches!(err, RootfsError::DigestMismatch { .. }), "{err:?}");
    assert!(tmp_entries(tmp.path()).is_empty());
    assert_eq!(
        fs::read_dir(tmp.path().join("images/layers"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn zstd_layers_and_gc() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(&tmp.path().join("layout"));
    layout.image("latest", &[base_layer(), top_layer()], |b| {
        zstd::encode_all(b, 3).unwrap()
    });
    let s = store(tmp.path(), Some(0));
    let uri = format!("oci://{}", tmp.path().join("layout").display());
    let a = s
        .resolve(&uri, &Credentials::default(), Path::new("/"))
        .unwrap();
    let b = s
        .resolve(&uri, &Credentials::default(), Path::new("/"))
        .unwrap();
    assert_eq!(fs::read(a.lower_dirs[1].join("a/keep")).unwrap(), b"keep");
    s.release(&a.lower_dirs);
    assert!(a.lower_dirs[0].exists(), "still pinned by b");
    s.release(&b.lower_dirs);
    assert!(!a.lower_dirs[0].exists() && !a.lower_dirs[1].exists());
    assert_eq!(
        fs::read_dir(tmp.path().join("images/layers"))
            .unwrap()
            .count(),
        0
    );
    assert!(tmp_entries(tmp.path()).is_empty());
}

/// A hostile layer carries the host's disk (block 8:0) and /dev/mem (char 1:1): neither may
/// reach a container, whose root overlay is not `nodev`. Overlay whiteouts (char 0:0) stay.
#[test]
fn device_nodes_in_layers_are_dropped() {
    test_support::require_root!();
    let dev = |name: &str, kind: tar::EntryType, major: u32, minor: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(kind);
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        h
    };
    let mut b = tar::Builder::new(Vec::new());
    for h in [
        dev("disk", tar::EntryType::Block, 8, 0),
        dev("mem", tar::EntryType::Char, 1, 1),
        dev("whiteout", tar::EntryType::Char, 0, 0),
    ] {
        b.append(&h, &[][..]).unwrap();
    }
    let hostile = b.into_inner().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(&tmp.path().join("layout"));
    layout.image("latest", &[base_layer(), hostile], gzip);
    let s = store(tmp.path(), None);
    let uri = format!("oci://{}", tmp.path().join("layout").display());
    let plan = s
        .resolve(&uri, &Credentials::default(), Path::new("/"))
        .unwrap();
    let top = &plan.lower_dirs[0];
    assert!(fs::symlink_metadata(top.join("disk")).is_err());
    assert!(fs::symlink_metadata(top.join("mem")).is_err());
    let wh = fs::symlink_metadata(top.join("whiteout")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
}

/// More layers than one overlay mount option holds: a clear error, not a failed mount.
#[test]
fn too_many_layers_fail_clearly() {
    test_support::require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(&tmp.path().join("layout"));
    let layers: Vec<Vec<u8>> = (0..150)
        .map(|i| RawTar::new().file(&format!("f{i}"), 0o644, b"x").finish())
        .collect();
    layout.image("latest", &layers, gzip);
    let s = store(tmp.path(), None);
    let uri = format!("oci://{}", tmp.path().join("layout").display());
    let err = s
        .resolve(&uri, &Credentials::default(), Path::new("/"))
        .unwrap_err();
    assert!(err.to_string().contains("150 layers need"), "{err}");
    assert_eq!(
        fs::read_dir(tmp.path().join("images/layers"))
            .unwrap()
            .count(),
        0
    );
}
