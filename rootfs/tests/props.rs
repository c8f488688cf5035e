//! Property tests (proptest) for the safe tar extractor: any byte stream, and any archive of
//! hostile names and links, never panics and never writes outside the root; a tree packed
//! and extracted again is the same tree. Bounded for CI by `PROPTEST_CASES` (default below).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use rootfs::{extract, pack, Owner};

fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The caller's own ids: extraction chowns, which only root may do to others.
fn me() -> Owner {
    Owner {
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    }
}

/// A scratch dir holding `a/b/root` (the container root) and nothing else: whatever appears
/// outside the root is an escape.
struct Scene {
    tmp: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("a/b/root")).unwrap();
        Scene { tmp }
    }
    fn root(&self) -> PathBuf {
        self.tmp.path().join("a/b/root")
    }
    fn extract(&self, dest: &str, tar: &[u8]) -> Result<(), String> {
        let root = File::open(self.root()).unwrap();
        extract(root.as_fd(), Path::new(dest), tar, me())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    /// Everything below the scratch dir but outside the root.
    fn outside(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.tmp.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p == self.root() {
                    continue;
                }
                if p == self.tmp.path().join("a") || p == self.tmp.path().join("a/b") {
                    stack.push(p);
                    continue;
                }
                found.push(p);
            }
        }
        found
    }
}

/// One archive member as a test describes it.
#[derive(Debug, Clone)]
enum Member {
    File(String, Vec<u8>),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
}

/// Names from a small alphabet with `..`, `/`, `.` and absolute prefixes mixed in.
fn hostile_name() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("..".to_string()),
            Just(".".to_string()),
            Just("".to_string()),
            Just("/".to_string()),
            "[a-c]{1,3}",
        ],
        1..5,
    )
    .prop_map(|parts| parts.join("/"))
}

fn member() -> impl Strategy<Value = Member> {
    prop_oneof![
        (hostile_name(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(n, d)| Member::File(n, d)),
        hostile_name().prop_map(Member::Dir),
        (hostile_name(), hostile_name()).prop_map(|(n, t)| Member::Symlink(n, t)),
        (hostile_name(), hostile_name()).prop_map(|(n, t)| Member::Hardlink(n, t)),
    ]
}

/// A raw ustar archive of `members`, names written as given (the tar crate's builder would
/// refuse the hostile ones).
fn raw_tar(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let (name, kind, link, data): (&str, u8, &str, &[u8]) = match m {
            Member::File(n, d) => (n, b'0', "", d),
            Member::Dir(n) => (n, b'5', "", &[]),
            Member::Symlink(n, t) => (n, b'2', t, &[]),
            Member::Hardlink(n, t) => (n, b'1', t, &[]),
        };
        let mut h = [0u8; 512];
        let copy = |h: &mut [u8; 512], at: usize, max: usize, s: &[u8]| {
            let n = s.len().min(max);
            h[at..at + n].copy_from_slice(&s[..n]);
        };
        copy(&mut h, 0, 100, name.as_bytes());
        copy(&mut h, 100, 8, b"0000755\0");
        copy(&mut h, 108, 8, b"0000000\0");
        copy(&mut h, 116, 8, b"0000000\0");
        copy(&mut h, 124, 12, format!("{:011o}\0", data.len()).as_bytes());
        copy(&mut h, 136, 12, b"00000000000\0");
        h[156] = kind;
        copy(&mut h, 157, 100, link.as_bytes());
        copy(&mut h, 257, 8, b"ustar\x0000");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        copy(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A tree of plain names: relative path -> contents (`None` for a directory).
fn tree() -> impl Strategy<Value = BTreeMap<String, Option<Vec<u8>>>> {
    prop::collection::btree_map(
        prop::collection::vec("[a-e]{1,4}", 1..4).prop_map(|p| p.join("/")),
        prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..2048)),
        0..12,
    )
}

/// Make `tree` under `dir`; entries whose parent is a file are skipped. What was made.
fn make_tree(
    dir: &Path,
    tree: &BTreeMap<String, Option<Vec<u8>>>,
) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut made = BTreeMap::new();
    for (path, content) in tree {
        let p = dir.join(path);
        let ok = match content {
            None => fs::create_dir_all(&p).is_ok(),
            Some(data) => {
                p.parent().is_some_and(|d| fs::create_dir_all(d).is_ok())
                    && !p.is_dir()
                    && fs::write(&p, data).is_ok()
            }
        };
        if ok {
            made.insert(path.clone(), content.clone());
        }
    }
    made
}

/// Every file's contents and every directory below `dir`, by relative path.
fn read_tree(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(fs::read(&p).unwrap()));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn hostile_archives_stay_inside_the_root(members in prop::collection::vec(member(), 1..8)) {
        let scene = Scene::new();
        let _ = scene.extract("/dst", &raw_tar(&members));
        prop_assert_eq!(scene.outside(), Vec::<PathBuf>::new());
    }

    #[test]
    fn any_bytes_never_panic(noise in prop::collection::vec(any::<u8>(), 0..3000)) {
        let scene = Scene::new();
        let _ = scene.extract("/", &noise);
        prop_assert_eq!(scene.outside(), Vec::<PathBuf>::new());
    }

    #[test]
    fn edited_archives_never_panic(
        members in prop::collection::vec(member(), 1..4),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut tar = raw_tar(&members);
        for (at, byte) in edits {
            let i = at.index(tar.len());
            tar[i] = byte;
        }
        let scene = Scene::new();
        let _ = scene.extract("/dst", &tar);
        prop_assert_eq!(scene.outside(), Vec::<PathBuf>::new());
    }

    #[test]
    fn packed_trees_extract_to_the_same_tree(spec in tree()) {
        let from = Scene::new();
        let src = from.root().join("src");
        fs::create_dir(&src).unwrap();
        let made = make_tree(&src, &spec);
        let mut tar = Vec::new();
        // A source ending in `/` packs the directory's contents.
        pack(File::open(from.root()).unwrap().as_fd(), Path::new("/src/"), &mut tar).unwrap();

        let to = Scene::new();
        to.extract("/dst", &tar).unwrap();
        prop_assert_eq!(read_tree(&src), read_tree(&to.root().join("dst")));
        prop_assert!(made.keys().all(|k| src.join(k).exists()));
    }
}
