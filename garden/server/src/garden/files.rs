//! StreamIn and StreamOut: tar into and out of the container's root, as the given user,
//! through `rootfs`'s openat2-based extractor and packer.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{generic, Garden, Result};
use crate::init::user;
use crate::service::Reply;
use garden_api::GardenError;

impl Garden {
    /// Resolve a user inside the container and a path relative to its home.
    fn user_and_path(
        root: &OwnedFd,
        user_spec: &str,
        path: &str,
    ) -> std::result::Result<(user::User, PathBuf), String> {
        let read = |p: &str| -> String {
            rootfs::read_in_root(root.as_fd(), Path::new(p), 4 << 20)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let u = user::resolve(user_spec, &read("/etc/passwd"), &read("/etc/group"))?;
        let path = if path.is_empty() {
            PathBuf::from(&u.home)
        } else if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            Path::new(&u.home).join(path)
        };
        Ok((u, path))
    }

    pub(super) async fn stream_in(
        &self,
        handle: &str,
        user_spec: &str,
        destination: &str,
        body: crate::service::Body,
    ) -> Result<()> {
        let c = self.lookup(handle)?;
        let _g = c.activity.guard();
        let root = c
            .sandbox
            .open_root()
            .map_err(|e| generic(format!("error streaming in: open container root: {e}")))?;
        let user_spec = user_spec.to_string();
        let destination = destination.to_string();
        let ids = c.ids.clone();
        tokio::task::spawn_blocking(move || {
            let (u, dest) = Garden::user_and_path(&root, &user_spec, &destination)
                .map_err(|e| format!("error streaming in: {e}"))?;
            let u = on_disk(u, ids.as_ref()).map_err(|e| format!("error streaming in: {e}"))?;
            let reader = ChannelReader {
                rx: body,
                current: Bytes::new(),
            };
            let owner = rootfs::Owner {
                uid: u.uid,
                gid: u.gid,
            };
            // Root may write anywhere; anyone else only where their permissions allow, as
            // Guardian's `tar` running as that user would.
            let extract = || {
                if u.is_root {
                    rootfs::extract(root.as_fd(), &dest, reader, owner)
                } else {
                    rootfs::safe_tar::extract_as_user(root.as_fd(), &dest, reader, owner, &u.groups)
                }
            };
            // With a user namespace, files are created as container root (host root has no
            // id in the container's filesystem), then given to the user.
            let extracted = match &ids {
                Some(ids) => {
                    let (uid, gid) = ids.root();
                    rootfs::idmap::as_fs_ids(uid, gid, extract)
                }
                None => extract(),
            };
            extracted
                .map(|_| ())
                .map_err(|e| format!("error streaming in: {e}"))
        })
        .await
        .map_err(generic)?
        .map_err(GardenError::generic)
    }

    pub(super) async fn stream_out(
        &self,
        handle: &str,
        user_spec: &str,
        source: &str,
    ) -> Result<Reply> {
        let c = self.lookup(handle)?;
        let guard = c.activity.guard();
        let root = c
            .sandbox
            .open_root()
            .map_err(|e| generic(format!("error streaming out: open container root: {e}")))?;
        let (u, src) = Garden::user_and_path(&root, user_spec, source)
            .map_err(|e| generic(format!("error streaming out: {e}")))?;
        let ids = c.ids.clone();
        let u =
            on_disk(u, ids.as_ref()).map_err(|e| generic(format!("error streaming out: {e}")))?;
        // Anyone but root reads only what their permissions allow, as Guardian's `tar`
        // running as that user would; an unreadable source is an error reply, not a stream.
        let owner = rootfs::Owner {
            uid: u.uid,
            gid: u.gid,
        };
        if !u.is_root {
            rootfs::safe_tar::check_readable_as_user(root.as_fd(), &src, owner, &u.groups)
                .map_err(|e| generic(format!("error streaming out: {e}")))?;
        }
        // Report a missing source as an error reply, before any byte is sent.
        let probe = rootfs::exists_in_root(root.as_fd(), &src);
        if let Err(e) = probe {
            return Err(generic(format!(
                "error streaming out: {}: {e}",
                src.display()
            )));
        }
        let (tx, rx) = mpsc::channel(16);
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            let mut w = ChannelWriter {
                tx: tx.clone(),
                buf: Vec::with_capacity(CHANNEL_CHUNK),
            };
            let user = (!u.is_root).then_some((owner, u.groups.as_slice()));
            let packed = match (&ids, user) {
                (Some(ids), user) => rootfs::pack_mapped(root.as_fd(), &src, &mut w, user, ids),
                (None, None) => rootfs::pack(root.as_fd(), &src, &mut w),
                (None, Some((owner, groups))) => {
                    rootfs::safe_tar::pack_as_user(root.as_fd(), &src, &mut w, owner, groups)
                }
            };
            let result = packed
                .map_err(std::io::Error::other)
                .and_then(|_| w.flush());
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(Reply::Tar(rx))
    }
}

/// A container user as files on disk know it: host ids (through the container's user
/// namespace mapping, if it has one).
struct DiskUser {
    is_root: bool,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

fn on_disk(
    u: user::User,
    ids: Option<&rootfs::IdMapping>,
) -> std::result::Result<DiskUser, String> {
    let is_root = u.uid == 0;
    let Some(ids) = ids else {
        return Ok(DiskUser {
            is_root,
            uid: u.uid,
            gid: u.gid,
            groups: u.groups,
        });
    };
    let unmapped = |what: &str, id: u32| format!("{what} {id} is not mapped into the container");
    Ok(DiskUser {
        is_root,
        uid: ids
            .uid_to_host(u.uid)
            .ok_or_else(|| unmapped("uid", u.uid))?,
        gid: ids
            .gid_to_host(u.gid)
            .ok_or_else(|| unmapped("gid", u.gid))?,
        groups: u
            .groups
            .iter()
            .filter_map(|g| ids.gid_to_host(*g))
            .collect(),
    })
}

/// Adapts StreamIn's body channel to `Read` for the blocking tar extractor.
struct ChannelReader {
    rx: crate::service::Body,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => self.current = b,
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

const CHANNEL_CHUNK: usize = 256 * 1024;

/// Adapts StreamOut's channel to `Write` for the blocking tar packer.
struct ChannelWriter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHANNEL_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CHANNEL_CHUNK),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}
