//! upload: take the single file at `from` out of the container (StreamOut gives a tar; its
//! first entry is the file) and POST its bytes to `to`, with `Content-MD5` and
//! `Content-Digest` headers and up to `upload_attempts` tries.

use std::io::{Read, Write};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine as _;
use md5::Digest as _;
use tokio::io::AsyncWriteExt;

use super::{human_size, CancellationToken, Ready, Step, StepEnv, StepError, StepResult};
use crate::action::UploadAction;
use crate::http::{self, Body, Url};
use crate::log::LogStreamer;

pub struct UploadStep {
    action: UploadAction,
    env: Arc<StepEnv>,
    streamer: LogStreamer,
}

struct Payload {
    file: tempfile::NamedTempFile,
    len: u64,
    md5: String,
    sha256: String,
}

impl UploadStep {
    pub fn new(action: UploadAction, env: Arc<StepEnv>, streamer: LogStreamer) -> Self {
        UploadStep {
            action,
            env,
            streamer,
        }
    }

    /// Log `what` (+ ` for <artifact>`) on stderr when an artifact is named; return it as an
    /// emittable error with `detail` appended.
    fn fail(&self, what: &str, detail: impl std::fmt::Display) -> StepError {
        let text = if self.action.artifact.is_empty() {
            what.to_string()
        } else {
            format!("{what} for {}", self.action.artifact)
        };
        if !self.action.artifact.is_empty() {
            self.streamer.err(&text);
        }
        StepError::Emittable(format!("{text}: {detail}"))
    }

    async fn fetch_payload(&self) -> Result<Payload, StepError> {
        let a = &self.action;
        let mut stream = self
            .env
            .garden
            .stream_out(&self.env.handle, &a.user, &a.from)
            .await
            .map_err(|e| self.fail("Failed to establish stream from container", e))?;
        let tar = tempfile::NamedTempFile::new()
            .map_err(|e| self.fail("Failed to create temp file", e))?;
        let mut out = tokio::fs::File::from_std(
            tar.reopen()
                .map_err(|e| self.fail("Failed to create temp file", e))?,
        );
        tokio::io::copy(&mut stream, &mut out)
            .await
            .map_err(|e| self.fail("Failed to establish stream from container", e))?;
        out.flush()
            .await
            .map_err(|e| self.fail("Failed to copy stream contents into temp file", e))?;
        drop(out);
        let from = a.from.clone();
        let r = tokio::task::spawn_blocking(move || first_entry(tar, &from)).await;
        match r {
            Ok(Ok(p)) => Ok(p),
            Ok(Err((what, detail))) => Err(self.fail(what, detail)),
            Err(e) => Err(self.fail("Failed to copy stream contents into temp file", e)),
        }
    }
}

type EntryError = (&'static str, String);

/// Copy the first tar entry into a new temp file, hashing it on the way.
fn first_entry(tar: tempfile::NamedTempFile, from: &str) -> Result<Payload, EntryError> {
    let find = "Failed to find first item in tar stream";
    let copy = "Failed to copy stream contents into temp file";
    let mut archive =
        tar::Archive::new(std::fs::File::open(tar.path()).map_err(|e| (find, e.to_string()))?);
    let mut entries = archive.entries().map_err(|e| (find, e.to_string()))?;
    let mut entry = match entries.next() {
        Some(Ok(e)) => e,
        Some(Err(e)) => return Err((find, e.to_string())),
        None => return Err((find, format!("{from} not found or empty"))),
    };
    let kind = entry.header().entry_type();
    if !kind.is_file() {
        return Err((find, format!("{from} is not a regular file")));
    }
    let mut out = tempfile::NamedTempFile::new()
        .map_err(|e| ("Failed to create temp file", e.to_string()))?;
    let (mut md5, mut sha256) = (md5::Md5::new(), sha2::Sha256::new());
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0u64;
    loop {
        let n = entry.read(&mut buf).map_err(|e| (copy, e.to_string()))?;
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
        sha256.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| (copy, e.to_string()))?;
        len += n as u64;
    }
    out.flush().map_err(|e| (copy, e.to_string()))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Payload {
        file: out,
        len,
        md5: b64.encode(md5.finalize()),
        sha256: b64.encode(sha256.finalize()),
    })
}

#[async_trait]
impl Step for UploadStep {
    async fn perform(&self, cancel: CancellationToken, ready: Ready) -> StepResult {
        ready.fire();
        let _slot = tokio::select! {
            s = self.env.config.upload_slots.acquire() => s.map_err(|_| StepError::Cancelled)?,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let a = &self.action;
        if !a.artifact.is_empty() {
            self.streamer.out(&format!("Uploading {}...", a.artifact));
        }
        // The URL is never echoed: it may carry credentials.
        let url = match Url::parse(&a.to) {
            Ok(u) => u,
            Err(e) => {
                if !a.artifact.is_empty() {
                    self.streamer
                        .err(&format!("Failed to parse URL for {}", a.artifact));
                }
                return Err(StepError::Other(e.to_string()));
            }
        };
        let payload = tokio::select! {
            p = self.fetch_payload() => p?,
            _ = cancel.cancelled() => return Err(StepError::Cancelled),
        };
        let headers = [
            ("Content-Type", "application/octet-stream".to_string()),
            ("Content-MD5", payload.md5.clone()),
            ("Content-Digest", format!("sha-256=:{}:", payload.sha256)),
        ];
        let mut last_error = String::new();
        for attempt in 1..=self.env.config.upload_attempts.max(1) {
            let file = payload
                .file
                .reopen()
                .map_err(|e| StepError::Other(e.to_string()))?;
            let body = Body {
                len: payload.len,
                reader: Box::new(tokio::fs::File::from_std(file)),
            };
            // Err((message, permanent)): a rejected certificate is not retried.
            let post = async {
                let resp =
                    http::request_with(&self.env.config.tls, "POST", &url, &headers, Some(body))
                        .await
                        .map_err(|e| (e.to_string(), e.is_permanent()))?;
                let status = resp.status;
                let _ = resp.read_body(|_| Ok(())).await;
                if status >= 400 {
                    return Err((format!("Upload failed: Status code {status}"), false));
                }
                Ok(())
            };
            let r = tokio::select! {
                r = post => r,
                _ = cancel.cancelled() => return Err(StepError::Cancelled),
            };
            match r {
                Ok(()) => {
                    if !a.artifact.is_empty() {
                        self.streamer.out(&format!(
                            "Uploaded {} ({})",
                            a.artifact,
                            human_size(payload.len)
                        ));
                    }
                    return Ok(());
                }
                Err((e, permanent)) => {
                    tracing::info!(attempt, error = %e, "upload attempt failed");
                    last_error = e;
                    if permanent {
                        break;
                    }
                }
            }
        }
        if !a.artifact.is_empty() {
            self.streamer
                .err(&format!("Failed to upload payload for {}", a.artifact));
        }
        Err(StepError::Other(last_error))
    }
}
