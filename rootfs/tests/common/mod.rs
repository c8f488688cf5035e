//! Helpers shared by the integration tests: hand-built (possibly hostile) tar streams.
#![allow(dead_code)]

use tar::{EntryType, Header};

/// Builds tar streams byte by byte, so names the `tar` crate would refuse (`..`, absolute)
/// can be written straight into the header.
#[derive(Default)]
pub struct RawTar {
    pub buf: Vec<u8>,
}

impl RawTar {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one member. `pax` records go into a PAX extended header before it.
    pub fn add(
        &mut self,
        name: &[u8],
        kind: EntryType,
        mode: u32,
        link: Option<&[u8]>,
        data: &[u8],
        pax: &[(&[u8], &[u8])],
    ) -> &mut Self {
        if !pax.is_empty() {
            let mut records = Vec::new();
            for (k, v) in pax {
                records.extend(pax_record(k, v));
            }
            self.raw(
                b"PaxHeaders/x",
                EntryType::XHeader,
                0o644,
                None,
                &records,
                0,
            );
        }
        self.raw(name, kind, mode, link, data, 1_600_000_000);
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.add(name.as_bytes(), EntryType::Regular, mode, None, data, &[])
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.add(name.as_bytes(), EntryType::Directory, mode, None, b"", &[])
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.add(
            name.as_bytes(),
            EntryType::Symlink,
            0o777,
            Some(target.as_bytes()),
            b"",
            &[],
        )
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.add(
            name.as_bytes(),
            EntryType::Link,
            0o644,
            Some(target.as_bytes()),
            b"",
            &[],
        )
    }

    fn raw(
        &mut self,
        name: &[u8],
        kind: EntryType,
        mode: u32,
        link: Option<&[u8]>,
        data: &[u8],
        mtime: u64,
    ) {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        let b = h.as_mut_bytes();
        b[..name.len()].copy_from_slice(name);
        if let Some(l) = link {
            b[157..157 + l.len()].copy_from_slice(l);
        }
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(data);
        let rem = data.len() % 512;
        if rem != 0 {
            self.buf.extend(std::iter::repeat_n(0u8, 512 - rem));
        }
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = self.buf.clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
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

/// Names of the members of a tar stream, in order.
pub fn member_names(tar_bytes: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar_bytes);
    a.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}
