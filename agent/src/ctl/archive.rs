//! Zipping a directory the way `cf push` uploads an app (and the way admin buildpacks are
//! packaged): deflated files under relative names, with their unix modes (so scripts stay
//! executable after unzip) and symlinks kept as symlinks.

use std::io::{Cursor, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: the name is not UTF-8")]
    Name { path: String },
    #[error("zipping {path}: {source}")]
    Zip {
        path: String,
        source: zip::result::ZipError,
    },
    #[error("{path} is not a directory")]
    NotADirectory { path: String },
}

/// Names never put in an app package: version-control state.
const SKIPPED: &[&str] = &[".git", ".hg", ".svn"];

/// The zip of everything under `dir` (names relative to it, directories with a trailing
/// `/`, sorted so the same tree gives the same listing).
pub fn zip_dir(dir: &Path) -> Result<Vec<u8>, ArchiveError> {
    let meta = std::fs::metadata(dir).map_err(|source| ArchiveError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ArchiveError::NotADirectory {
            path: dir.display().to_string(),
        });
    }
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    add_tree(&mut zip, dir, "")?;
    let out = zip.finish().map_err(|source| ArchiveError::Zip {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(out.into_inner())
}

fn add_tree(
    zip: &mut ZipWriter<Cursor<Vec<u8>>>,
    dir: &Path,
    prefix: &str,
) -> Result<(), ArchiveError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ArchiveError::Io { path, source }
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| ArchiveError::Name {
                path: path.display().to_string(),
            })?;
        if prefix.is_empty() && SKIPPED.contains(&name.as_str()) {
            continue;
        }
        let rel = format!("{prefix}{name}");
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let mode = meta.permissions().mode() & 0o7777;
        let zipped = |source| ArchiveError::Zip {
            path: path.display().to_string(),
            source,
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            let target = target.to_str().ok_or_else(|| ArchiveError::Name {
                path: path.display().to_string(),
            })?;
            zip.add_symlink(rel, target, SimpleFileOptions::default())
                .map_err(zipped)?;
        } else if ft.is_dir() {
            let opts = SimpleFileOptions::default().unix_permissions(mode);
            zip.add_directory(format!("{rel}/"), opts).map_err(zipped)?;
            add_tree(zip, &path, &format!("{rel}/"))?;
        } else if ft.is_file() {
            let opts = SimpleFileOptions::default()
                .compression_method(CompressionMethod::Deflated)
                .unix_permissions(mode)
                .large_file(meta.len() >= u32::MAX as u64);
            zip.start_file(rel, opts).map_err(zipped)?;
            let mut f = std::fs::File::open(&path).map_err(io(&path))?;
            std::io::copy(&mut f, zip).map_err(io(&path))?;
            zip.flush().map_err(io(&path))?;
        }
        // Sockets, fifos and devices have no place in an app package.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn zips_files_dirs_modes_and_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        std::fs::write(d.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::create_dir_all(d.join("bin/empty")).unwrap();
        std::fs::write(d.join("bin/run"), "#!/bin/sh\necho run\n").unwrap();
        std::fs::set_permissions(d.join("bin/run"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("index.html", d.join("home.html")).unwrap();
        std::fs::create_dir(d.join(".git")).unwrap();
        std::fs::write(d.join(".git/HEAD"), "ref").unwrap();
        std::fs::write(d.join(".profile"), "export A=1").unwrap();

        let bytes = zip_dir(d).unwrap();
        let mut z = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        let mut names: Vec<String> = z.file_names().map(str::to_string).collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".profile",
                "bin/",
                "bin/empty/",
                "bin/run",
                "home.html",
                "index.html"
            ]
        );
        {
            let mut run = z.by_name("bin/run").unwrap();
            assert_eq!(run.compression(), CompressionMethod::Deflated);
            assert_eq!(run.unix_mode().unwrap() & 0o777, 0o755);
            let mut text = String::new();
            run.read_to_string(&mut text).unwrap();
            assert_eq!(text, "#!/bin/sh\necho run\n");
        }
        {
            let link = z.by_name("home.html").unwrap();
            assert!(link.is_symlink());
        }
        {
            let mut link = z.by_name("home.html").unwrap();
            let mut target = String::new();
            link.read_to_string(&mut target).unwrap();
            assert_eq!(target, "index.html");
        }
        assert!(z.by_name("bin/empty/").unwrap().is_dir());

        // Unzipping gives the tree back, executable bit included.
        let out = tempfile::tempdir().unwrap();
        z.extract(out.path()).unwrap();
        let mode = std::fs::metadata(out.path().join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_to_string(out.path().join("index.html")).unwrap(),
            "<h1>hi</h1>"
        );
    }

    #[test]
    fn a_file_or_missing_path_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "x").unwrap();
        assert!(matches!(
            zip_dir(&tmp.path().join("f")),
            Err(ArchiveError::NotADirectory { .. })
        ));
        assert!(matches!(
            zip_dir(&tmp.path().join("missing")),
            Err(ArchiveError::Io { .. })
        ));
    }
}
