//! Turn a downloaded file into the uncompressed tar stream Garden's StreamIn wants, by
//! content sniffing: gzip is gunzipped (it must hold a tar), zip is rewritten entry by entry
//! (paths, modes and symlinks kept), tar (POSIX or GNU magic) is used as is, and anything
//! else is a single file wrapped in a one-entry tar (mode 0755, named after the URL).
//! Entry paths are not judged here: hostile entries are StreamIn's to reject.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gzip stream does not hold a tar archive")]
    GzipNotTar,
    #[error("bad zip archive: {0}")]
    Zip(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Io { context, source }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gzip,
    Zip,
    Tar,
    Plain,
}

fn sniff_bytes(head: &[u8]) -> Kind {
    if head.starts_with(&[0x1f, 0x8b]) {
        Kind::Gzip
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Kind::Zip
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Kind::Tar
    } else {
        Kind::Plain
    }
}

/// What `path` holds, judged by its first bytes.
pub fn sniff(path: &Path) -> Result<Kind, ArchiveError> {
    let mut f = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    let mut head = vec![0u8; 512];
    let n = read_up_to(&mut f, &mut head).map_err(io(format!("reading {}", path.display())))?;
    Ok(sniff_bytes(&head[..n]))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Write the tar form of `raw` to `out`; `file_name` names a wrapped single file.
pub fn to_tar(raw: &Path, out: &Path, file_name: &str) -> Result<Kind, ArchiveError> {
    let kind = sniff(raw)?;
    let create = || File::create(out).map_err(io(format!("creating {}", out.display())));
    let open = || File::open(raw).map_err(io(format!("opening {}", raw.display())));
    match kind {
        Kind::Tar => {
            std::fs::copy(raw, out).map_err(io(format!("copying to {}", out.display())))?;
        }
        Kind::Gzip => {
            let mut gz = flate2::read::GzDecoder::new(BufReader::new(open()?));
            let mut w = BufWriter::new(create()?);
            std::io::copy(&mut gz, &mut w).map_err(io("gunzipping"))?;
            w.flush().map_err(io("gunzipping"))?;
            drop(w);
            if sniff(out)? != Kind::Tar {
                return Err(ArchiveError::GzipNotTar);
            }
        }
        Kind::Zip => zip_to_tar(open()?, create()?)?,
        Kind::Plain => {
            let mut f = open()?;
            let len = f.seek(SeekFrom::End(0)).map_err(io("sizing download"))?;
            f.seek(SeekFrom::Start(0)).map_err(io("sizing download"))?;
            let mut b = tar::Builder::new(BufWriter::new(create()?));
            let mut h = tar::Header::new_gnu();
            h.set_size(len);
            h.set_mode(0o755);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mtime(now());
            b.append_data(&mut h, file_name, f)
                .map_err(io("wrapping file in tar"))?;
            b.into_inner()
                .and_then(|mut w| w.flush())
                .map_err(io("wrapping file in tar"))?;
        }
    }
    Ok(kind)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn zip_to_tar(input: File, output: File) -> Result<(), ArchiveError> {
    let mut zip = zip::ZipArchive::new(BufReader::new(input))
        .map_err(|e| ArchiveError::Zip(e.to_string()))?;
    let mut b = tar::Builder::new(BufWriter::new(output));
    let mtime = now();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| ArchiveError::Zip(e.to_string()))?;
        let name = entry.name().to_string();
        let unix = entry.unix_mode();
        let mut h = tar::Header::new_gnu();
        h.set_mtime(mtime);
        let ctx = format!("zip entry {name:?}");
        if unix.is_some_and(|m| m & 0o170000 == 0o120000) {
            let mut target = String::new();
            entry.read_to_string(&mut target).map_err(io(ctx.clone()))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, &name, &target).map_err(io(ctx))?;
        } else if entry.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            h.set_mode(unix.map(|m| m & 0o7777).unwrap_or(0o755));
            b.append_data(&mut h, &name, std::io::empty())
                .map_err(io(ctx))?;
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(entry.size());
            h.set_mode(unix.map(|m| m & 0o7777).unwrap_or(0o644));
            b.append_data(&mut h, &name, &mut entry).map_err(io(ctx))?;
        }
    }
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io("writing tar"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_path: &Path) -> Vec<(String, tar::EntryType, u32, Vec<u8>)> {
        let mut a = tar::Archive::new(File::open(tar_path).unwrap());
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let kind = e.header().entry_type();
                let mode = e.header().mode().unwrap();
                let mut data = Vec::new();
                if kind == tar::EntryType::Symlink {
                    data = e
                        .link_name()
                        .unwrap()
                        .unwrap()
                        .to_string_lossy()
                        .as_bytes()
                        .to_vec();
                } else {
                    e.read_to_end(&mut data).unwrap();
                }
                (name, kind, mode, data)
            })
            .collect()
    }

    #[test]
    fn plain_file_is_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, b"#!/bin/sh\necho hi\n").unwrap();
        let out = dir.path().join("out.tar");
        assert_eq!(to_tar(&raw, &out, "hello.sh").unwrap(), Kind::Plain);
        let e = entries(&out);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "hello.sh");
        assert_eq!(e[0].2, 0o755);
        assert_eq!(e[0].3, b"#!/bin/sh\necho hi\n");
    }

    #[test]
    fn tgz_is_gunzipped_and_gzip_of_non_tar_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o600);
        b.append_data(&mut h, "d/f", &b"ok"[..]).unwrap();
        let tar_bytes = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar_bytes).unwrap();
        let raw = dir.path().join("raw");
        std::fs::write(&raw, gz.finish().unwrap()).unwrap();
        let out = dir.path().join("out.tar");
        assert_eq!(to_tar(&raw, &out, "x").unwrap(), Kind::Gzip);
        assert_eq!(
            entries(&out),
            vec![(
                "d/f".to_string(),
                tar::EntryType::Regular,
                0o600,
                b"ok".to_vec()
            )]
        );

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"just text").unwrap();
        std::fs::write(&raw, gz.finish().unwrap()).unwrap();
        assert!(matches!(
            to_tar(&raw, &out, "x"),
            Err(ArchiveError::GzipNotTar)
        ));
    }

    #[test]
    fn zip_keeps_modes_dirs_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        {
            let mut z = zip::ZipWriter::new(File::create(&raw).unwrap());
            let opts = zip::write::SimpleFileOptions::default();
            z.add_directory("app/", opts.unix_permissions(0o755))
                .unwrap();
            z.start_file("app/run.sh", opts.unix_permissions(0o755))
                .unwrap();
            z.write_all(b"echo run").unwrap();
            z.add_symlink("app/link", "run.sh", opts).unwrap();
            z.finish().unwrap();
        }
        let out = dir.path().join("out.tar");
        assert_eq!(to_tar(&raw, &out, "x").unwrap(), Kind::Zip);
        let e = entries(&out);
        assert_eq!(e[0].0, "app/");
        assert_eq!(e[0].1, tar::EntryType::Directory);
        assert_eq!(
            (e[1].0.as_str(), e[1].2, e[1].3.as_slice()),
            ("app/run.sh", 0o755, &b"echo run"[..])
        );
        assert_eq!(
            (e[2].0.as_str(), e[2].1, e[2].3.as_slice()),
            ("app/link", tar::EntryType::Symlink, &b"run.sh"[..])
        );
    }
}
