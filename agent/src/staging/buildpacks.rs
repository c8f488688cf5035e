//! Admin buildpacks on the host (spec §5 step 2): `<base_dir>/admin_buildpacks/<key>` holds
//! the unzipped buildpack of each key, downloaded once (one download at a time, 3 tries) and
//! reused by every later staging that offers the same key. Keys a staging request no longer
//! offers are deleted unless a running staging still copies them into its container.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::protocol::AdminBuildpack;

/// Tries per buildpack download.
const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(600);

pub struct AdminBuildpacks {
    dir: PathBuf,
    /// One download (and one sweep) at a time.
    lock: tokio::sync::Mutex<()>,
    /// Keys a running staging is using, with how many stagings use them.
    in_use: Mutex<HashMap<String, usize>>,
}

/// A key is a directory name: no separators, no `.`/`..`, nothing a shell would mangle.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 200
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Holds keys in use until dropped.
pub struct InUse<'a> {
    owner: &'a AdminBuildpacks,
    keys: Vec<String>,
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        let mut m = self.owner.in_use.lock().unwrap();
        for k in &self.keys {
            if let Some(n) = m.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    m.remove(k);
                }
            }
        }
    }
}

impl AdminBuildpacks {
    pub fn new(dir: PathBuf) -> AdminBuildpacks {
        AdminBuildpacks {
            dir,
            lock: tokio::sync::Mutex::new(()),
            in_use: Mutex::new(HashMap::new()),
        }
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Make the `needed` buildpacks present (downloading the missing ones), drop the ones
    /// neither `offered` by this request nor in use by another staging, and mark both in use
    /// until the guard is dropped.
    pub async fn sync(
        &self,
        offered: &[AdminBuildpack],
        needed: &[AdminBuildpack],
    ) -> Result<InUse<'_>, String> {
        let guard = InUse {
            owner: self,
            keys: offered.iter().map(|b| b.key.clone()).collect(),
        };
        {
            let mut m = self.in_use.lock().unwrap();
            for k in &guard.keys {
                *m.entry(k.clone()).or_default() += 1;
            }
        }
        let _one = self.lock.lock().await;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        for bp in needed {
            if !valid_key(&bp.key) {
                return Err(format!("invalid admin buildpack key {:?}", bp.key));
            }
            if self.path(&bp.key).is_dir() {
                continue;
            }
            tracing::info!(key = %bp.key, url = %bp.url, "downloading admin buildpack");
            self.download(bp)
                .await
                .map_err(|e| format!("Error downloading buildpack {}: {e}", bp.key))?;
        }
        self.sweep();
        Ok(guard)
    }

    fn sweep(&self) {
        let keep: Vec<String> = self.in_use.lock().unwrap().keys().cloned().collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                tracing::info!(key = %name, "deleting admin buildpack no longer offered");
                let _ = std::fs::remove_dir_all(e.path());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    async fn download(&self, bp: &AdminBuildpack) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        let mut attempt = 1;
        let bytes = loop {
            let r = async {
                let resp = client
                    .get(&bp.url)
                    .send()
                    .await
                    .map_err(|e| (true, e.to_string()))?;
                let status = resp.status().as_u16();
                if status != 200 {
                    return Err((status >= 500, format!("HTTP status: {status}")));
                }
                resp.bytes().await.map_err(|e| (true, e.to_string()))
            }
            .await;
            match r {
                Ok(b) => break b,
                Err((retry, e)) if retry && attempt < ATTEMPTS => {
                    tracing::info!(key = %bp.key, attempt, error = %e, "buildpack download failed, retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err((_, e)) => return Err(e),
            }
        };
        let dir = self.dir.clone();
        let key = bp.key.clone();
        tokio::task::spawn_blocking(move || unpack(&dir, &key, &bytes))
            .await
            .map_err(|e| e.to_string())?
    }
}

/// Unzip (or untar) `bytes` into `<dir>/<key>`, atomically (a temp dir renamed into place).
fn unpack(dir: &Path, key: &str, bytes: &[u8]) -> Result<(), String> {
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(dir)
        .map_err(|e| e.to_string())?;
    let raw = tmp.path().join("raw");
    std::fs::write(&raw, bytes).map_err(|e| e.to_string())?;
    let tar = tmp.path().join("raw.tar");
    executor::archive::to_tar(&raw, &tar, "buildpack.zip").map_err(|e| e.to_string())?;
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).map_err(|e| e.to_string())?;
    let f = std::fs::File::open(&tar).map_err(|e| e.to_string())?;
    let mut archive = tar::Archive::new(f);
    archive.set_preserve_permissions(true);
    archive
        .unpack(&out)
        .map_err(|e| format!("cannot unpack: {e}"))?;
    // Everything readable by the container's vcap, whatever the zip said.
    make_readable(&out);
    std::fs::rename(&out, dir.join(key)).map_err(|e| e.to_string())
}

fn make_readable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return;
    };
    if meta.file_type().is_symlink() {
        return;
    }
    let mode = meta.permissions().mode();
    let want = if meta.is_dir() {
        mode | 0o755
    } else {
        mode | 0o644
    };
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(want & 0o7777));
    if meta.is_dir() {
        if let Ok(entries) = std::fs::read_dir(p) {
            for e in entries.flatten() {
                make_readable(&e.path());
            }
        }
    }
}

/// A tar of `dir` (for streaming into a container), written to a temp file.
pub fn tar_dir(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let f = tempfile::NamedTempFile::new()?;
    let mut b = tar::Builder::new(f.reopen()?);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    b.append_dir_all(".", dir)?;
    b.into_inner()?.sync_all()?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_plain_names() {
        assert!(valid_key("ruby_buildpack-1.2"));
        for bad in ["", ".", "..", "a/b", "a b", "$(x)"] {
            assert!(!valid_key(bad), "{bad:?}");
        }
    }
}
