//! Byte plumbing between the local process and the server: unbuffered writers for our own
//! stdout/stderr, and a byte counter with a progress line for long transfers.

use std::io::Write;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::format;

/// Writes straight to a duplicate of fd 1 or 2, without the line buffering of
/// `std::io::stdout`, so a shell prompt without a newline shows up at once. The write itself
/// blocks the calling worker; that only happens when whoever reads our output is slower than the
/// server, which is the back-pressure we want anyway.
pub struct StdWriter {
    file: std::fs::File,
}

impl StdWriter {
    pub fn stdout() -> std::io::Result<StdWriter> {
        Ok(StdWriter {
            file: std::io::stdout().as_fd().try_clone_to_owned()?.into(),
        })
    }

    pub fn stderr() -> std::io::Result<StdWriter> {
        Ok(StdWriter {
            file: std::io::stderr().as_fd().try_clone_to_owned()?.into(),
        })
    }
}

impl AsyncWrite for StdWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let file = &mut self.get_mut().file;
        loop {
            match file.write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Counts the bytes read through it.
pub struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R> Counted<R> {
    pub fn new(inner: R) -> (Counted<R>, Arc<AtomicU64>) {
        let count = Arc::new(AtomicU64::new(0));
        (
            Counted {
                inner,
                count: count.clone(),
            },
            count,
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.count.fetch_add(n, Ordering::Relaxed);
        res
    }
}

/// A progress line on stderr, redrawn a few times a second while a transfer runs. It exists
/// only when stderr is a terminal, so pipes and logs stay clean.
pub struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: String, count: Arc<AtomicU64>) -> Progress {
        if !crate::term::stderr_is_tty() {
            return Progress { task: None };
        }
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = count.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = format::bytes((n as f64 / secs) as u64);
                eprint!("\r\x1b[K{label}: {} ({rate}/s)", format::bytes(n));
            }
        });
        Progress { task: Some(task) }
    }

    /// Stops redrawing and erases the line.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            eprint!("\r\x1b[K");
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}
