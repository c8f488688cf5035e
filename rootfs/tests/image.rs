//! Rootfs URI resolution and the tarball layer cache.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::RawTar;
use rootfs::{resolve, RootfsError, RootfsPlan};

fn plan(dir: &Path) -> RootfsPlan {
    RootfsPlan::single(dir.to_path_buf())
}

struct Dirs {
    tmp: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("default")).unwrap();
        fs::create_dir(tmp.path().join("image")).unwrap();
        Dirs { tmp }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }
    fn cache(&self) -> PathBuf {
        self.p("cache")
    }
    fn resolve(&self, uri: &str) -> Result<RootfsPlan, RootfsError> {
        resolve(uri, &self.p("default"), &self.cache())
    }
    /// Layer dirs plus leftover temp dirs in the cache.
    fn cache_entries(&self) -> Vec<String> {
        match fs::read_dir(self.cache().join("layers")) {
            Ok(rd) => {
                let mut v: Vec<String> = rd
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                v
            }
            Err(_) => vec![],
        }
    }
}

fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    b.append_data(&mut h, "etc/", &[][..]).unwrap();
    let content = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_mtime(0);
    h.set_size(content.len() as u64);
    b.append_data(&mut h, "etc/passwd", &content[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    b.append_link(&mut h, "bin", "/usr/bin").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_mode(0o666);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    b.append_data(&mut h, "dev/null", &[][..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn empty_uri_is_the_default() {
    let d = Dirs::new();
    assert_eq!(d.resolve("").unwrap(), plan(&d.p("default")));
}

#[test]
fn directories_via_plain_path_raw_and_file() {
    let d = Dirs::new();
    let image = d.p("image");
    let s = image.display();
    assert_eq!(d.resolve(&format!("{s}")).unwrap(), plan(&image));
    assert_eq!(d.resolve(&format!("raw://{s}")).unwrap(), plan(&image));
    assert_eq!(d.resolve(&format!("file://{s}")).unwrap(), plan(&image));
    // Garden ignores the query/fragment of the URI.
    assert_eq!(
        d.resolve(&format!("{s}?ignored=1#frag")).unwrap(),
        plan(&image)
    );
    assert!(d.cache_entries().is_empty(), "directories are never copied");
}

#[test]
fn missing_paths_name_the_path() {
    let d = Dirs::new();
    let missing = d.p("nope");
    for uri in [
        missing.display().to_string(),
        format!("raw://{}", missing.display()),
    ] {
        let err = d.resolve(&uri).unwrap_err();
        assert!(matches!(err, RootfsError::NotFound { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn relative_and_malformed_uris_are_errors() {
    let d = Dirs::new();
    for uri in [
        "some/dir",
        "./dir",
        "raw://relative",
        "raw://host/abs",
        "file:dir",
    ] {
        let err = d.resolve(uri).unwrap_err();
        assert!(
            matches!(err, RootfsError::InvalidUri { .. }),
            "{uri}: {err:?}"
        );
    }
}

#[test]
fn registry_and_oci_schemes_are_unsupported() {
    let d = Dirs::new();
    for (uri, scheme) in [
        ("docker:///busybox#1.36", "docker"),
        ("docker://registry.example/repo#tag", "docker"),
        ("oci:///some/layout", "oci"),
        ("preloaded+layer:///base?layer=x", "preloaded+layer"),
    ] {
        let err = d.resolve(uri).unwrap_err();
        match &err {
            RootfsError::UnsupportedScheme { scheme: s, .. } => assert_eq!(s, scheme),
            other => panic!("{uri}: {other:?}"),
        }
        assert!(err.to_string().contains(scheme), "{err}");
    }
}

#[test]
fn tarball_is_unpacked_once_into_the_cache() {
    test_support::require_root!();
    let d = Dirs::new();
    let tarball = d.p("rootfs.tar");
    fs::write(&tarball, sample_tar()).unwrap();

    let first = d.resolve(tarball.to_str().unwrap()).unwrap();
    assert_eq!(first.lower_dirs.len(), 1);
    let layer = &first.lower_dirs[0];
    assert!(layer.starts_with(d.cache().join("layers")));
    assert_eq!(layer.file_name().unwrap().len(), 64, "sha256 hex key");
    let passwd = fs::metadata(layer.join("etc/passwd")).unwrap();
    assert_eq!(
        (passwd.uid(), passwd.gid()),
        (1234, 4321),
        "image ownership kept"
    );
    assert_eq!(
        fs::read_link(layer.join("bin")).unwrap(),
        Path::new("/usr/bin")
    );
    assert_eq!(
        fs::metadata(layer.join("dev/null")).unwrap().rdev(),
        libc::makedev(1, 3)
    );
    assert_eq!(fs::metadata(layer).unwrap().mode() & 0o7777, 0o755);

    // Second resolve reuses the unpacked layer instead of unpacking again.
    fs::write(layer.join("marker"), b"").unwrap();
    let second = d.resolve(&format!("file://{}", tarball.display())).unwrap();
    assert_eq!(second, first);
    assert!(layer.join("marker").exists());
    assert_eq!(d.cache_entries().len(), 1);

    // Same bytes under another name share the layer; different bytes get their own.
    let copy = d.p("copy.tar");
    fs::copy(&tarball, &copy).unwrap();
    assert_eq!(d.resolve(copy.to_str().unwrap()).unwrap(), first);
    let mut other = sample_tar();
    other.extend_from_slice(&[0u8; 512]);
    let other_path = d.p("other.tar");
    fs::write(&other_path, other).unwrap();
    assert_ne!(d.resolve(other_path.to_str().unwrap()).unwrap(), first);
}

#[test]
fn gzipped_tarball() {
    test_support::require_root!();
    let d = Dirs::new();
    let tgz = d.p("rootfs.tgz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&sample_tar()).unwrap();
    fs::write(&tgz, enc.finish().unwrap()).unwrap();
    let plan = d.resolve(tgz.to_str().unwrap()).unwrap();
    assert_eq!(
        fs::read(plan.lower_dirs[0].join("etc/passwd")).unwrap(),
        b"root:x:0:0:root:/root:/bin/sh\n"
    );
}

#[test]
fn concurrent_resolves_agree_and_leave_no_temp_dirs() {
    test_support::require_root!();
    let d = Dirs::new();
    let tarball = d.p("rootfs.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut big = RawTar::new();
    for i in 0..50 {
        big.file(&format!("f{i}"), 0o644, &vec![i as u8; 20_000]);
    }
    enc.write_all(&big.finish()).unwrap();
    fs::write(&tarball, enc.finish().unwrap()).unwrap();

    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| d.resolve(tarball.to_str().unwrap()).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(results.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(d.cache_entries().len(), 1, "{:?}", d.cache_entries());
    assert_eq!(
        fs::read(results[0].lower_dirs[0].join("f49")).unwrap(),
        vec![49u8; 20_000]
    );
}

#[test]
fn bad_tarballs_fail_without_polluting_the_cache() {
    let d = Dirs::new();
    let not_tar = d.p("notes.txt");
    fs::write(&not_tar, b"just some text").unwrap();
    let err = d.resolve(not_tar.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, RootfsError::NotARootfs { .. }), "{err:?}");

    let truncated = d.p("broken.tar");
    let full = RawTar::new().file("f", 0o644, &[1u8; 4096]).finish();
    fs::write(&truncated, &full[..1500]).unwrap();
    let err = d.resolve(truncated.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, RootfsError::Layer { .. }), "{err:?}");
    assert!(err.to_string().contains("broken.tar"), "{err}");
    assert!(d.cache_entries().is_empty(), "{:?}", d.cache_entries());

    let hostile = d.p("hostile.tar");
    fs::write(
        &hostile,
        RawTar::new().file("../escape", 0o644, b"x").finish(),
    )
    .unwrap();
    let err = d.resolve(hostile.to_str().unwrap()).unwrap_err();
    assert!(err.to_string().contains("../escape"), "{err}");
    assert!(!d.cache().join("escape").exists());
    assert!(d.cache_entries().is_empty());
}
