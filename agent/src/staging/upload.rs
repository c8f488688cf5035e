//! Uploads of a staging's results (spec §5 step 6): `multipart/form-data` with the file in
//! field `upload[droplet]` named `droplet.tgz` (the DEA used that field for the build cache
//! too), up to [`ATTEMPTS`] tries on connection errors and 5xx.

use std::path::Path;
use std::time::Duration;

/// Tries per upload.
pub const ATTEMPTS: u32 = 3;
/// A request that moves nothing for this long fails (the DEA's inactivity timeout).
const INACTIVITY: Duration = Duration::from_secs(30);

/// Why an upload failed, as the completion reply's `error` says it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("Error uploading: (Upload failed - status {0})")]
    Status(u16),
    #[error("Error uploading: (Upload failed - {0})")]
    Failed(String),
}

impl UploadError {
    fn retryable(&self) -> bool {
        match self {
            UploadError::Status(s) => *s >= 500,
            UploadError::Failed(_) => true,
        }
    }
}

async fn upload_once(
    client: &reqwest::Client,
    url: &str,
    file: &Path,
    len: u64,
) -> Result<(), UploadError> {
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| UploadError::Failed(format!("cannot open {}: {e}", file.display())))?;
    let body = reqwest::Body::wrap_stream(tokio_util_stream(f));
    let part = reqwest::multipart::Part::stream_with_length(body, len)
        .file_name("droplet.tgz")
        .mime_str("application/octet-stream")
        .map_err(|e| UploadError::Failed(e.to_string()))?;
    let form = reqwest::multipart::Form::new().part("upload[droplet]", part);
    let resp = client
        .post(url)
        .multipart(form)
        .send()
        .await
        .map_err(|e| UploadError::Failed(error_chain(&e)))?;
    let status = resp.status().as_u16();
    if status >= 300 {
        return Err(UploadError::Status(status));
    }
    Ok(())
}

/// Read a file as a stream of byte chunks.
fn tokio_util_stream(
    f: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// POST `file` to `url` as `upload[droplet]`, retrying connection errors and 5xx.
pub async fn upload(url: &str, file: &Path) -> Result<(), UploadError> {
    let len = tokio::fs::metadata(file)
        .await
        .map_err(|e| UploadError::Failed(format!("cannot read {}: {e}", file.display())))?
        .len();
    let client = reqwest::Client::builder()
        .connect_timeout(INACTIVITY)
        .read_timeout(INACTIVITY)
        .build()
        .map_err(|e| UploadError::Failed(e.to_string()))?;
    let mut attempt = 1;
    loop {
        match upload_once(&client, url, file, len).await {
            Ok(()) => return Ok(()),
            Err(e) if e.retryable() && attempt < ATTEMPTS => {
                tracing::info!(url, attempt, error = %e, "upload failed, retrying");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}
