//! A process's stdio on gardend's side: the pipes or pty it was given, the reader tasks that
//! fan output out to every attached stream, and the stdin writer.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};

/// Chunks buffered for a stream that has not connected yet (Go keeps 4000), and the queue
/// depth of a connected one (beyond it the process is slowed down, not its output lost).
const STREAM_QUEUE: usize = 4000;
const READ_CHUNK: usize = 128 * 1024;

pub fn nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

pub fn cloexec(fd: &OwnedFd) -> std::io::Result<()> {
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

/// Register an fd with the reactor.
pub fn async_fd(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    nonblocking(&fd)?;
    // SAFETY: the AsyncFd owns the descriptor until it is dropped.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// What a connected stream may have queued and not yet written to its connection; beyond it
/// the pump stops reading, so a slow reader slows the process (its pipe fills up) instead of
/// growing gardend's memory.
const CONNECTED_BYTES: usize = 1 << 20;

/// Bytes handed to one connected stream and not yet consumed: each chunk carries a
/// [`Tracked`] owner that gives its bytes back when the connection drops it.
#[derive(Default)]
struct InFlight {
    bytes: AtomicUsize,
    drained: tokio::sync::Notify,
}

impl InFlight {
    /// Wait until the stream has room, or its receiver is gone.
    async fn room(&self, tx: &mpsc::Sender<Bytes>) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.bytes.load(Ordering::Acquire) < CONNECTED_BYTES || tx.is_closed() {
                return;
            }
            // A dropped receiver frees its queue (and notifies); the timeout only guards
            // against a receiver that is dropped without queued chunks.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drained).await;
        }
    }

    fn track(self: &Arc<Self>, data: Bytes) -> Bytes {
        self.bytes.fetch_add(data.len(), Ordering::AcqRel);
        Bytes::from_owner(Tracked {
            data,
            gauge: self.clone(),
        })
    }
}

/// A chunk's owner on its way to one connected stream.
struct Tracked {
    data: Bytes,
    gauge: Arc<InFlight>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.gauge
            .bytes
            .fetch_sub(self.data.len(), Ordering::AcqRel);
        self.gauge.drained.notify_waiters();
    }
}

struct Subscriber {
    stream_id: String,
    tx: mpsc::Sender<Bytes>,
    link: Arc<StreamLink>,
    in_flight: Arc<InFlight>,
    /// Bytes queued while nobody read this stream.
    unclaimed: usize,
    /// Never claimed in time: its output is dropped from now on, as Go's server does.
    abandoned: bool,
}

/// Whether a stream's HTTP request has arrived, shared by the hub and the pending stream.
#[derive(Default)]
pub struct StreamLink {
    connected: AtomicBool,
    notify: tokio::sync::Notify,
}

impl StreamLink {
    pub fn connect(&self) {
        self.connected.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// What an unclaimed stream may hold before the process has to wait for its reader.
const UNCLAIMED_BYTES: usize = 8 << 20;
/// How long the process waits for a stream's reader once that buffer is full.
const CLAIM_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Fan-out of one output stream (stdout or stderr) to the streams of every Run/Attach.
#[derive(Default)]
pub struct Hub {
    inner: Mutex<HubInner>,
}

#[derive(Default)]
struct HubInner {
    subs: Vec<Subscriber>,
    closed: bool,
    /// Output of an adopted process read while nobody was attached yet (at most
    /// BACKLOG_BYTES, the oldest dropped first), for the first stream that subscribes.
    backlog: Option<(std::collections::VecDeque<Bytes>, usize)>,
}

/// What an adopted process's output stream keeps for its first new reader.
const BACKLOG_BYTES: usize = 1 << 20;

/// A stream's receiving end, waiting for its HTTP request.
pub struct PendingStream {
    pub rx: mpsc::Receiver<Bytes>,
    pub link: Arc<StreamLink>,
}

impl Hub {
    /// A new subscriber; output produced from now on reaches it. On a closed hub the stream
    /// is simply empty.
    pub fn subscribe(&self, stream_id: &str) -> PendingStream {
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let link = Arc::new(StreamLink::default());
        let mut inner = self.inner.lock().expect("hub lock");
        let mut unclaimed = 0;
        if let Some((chunks, _)) = inner.backlog.take() {
            for chunk in chunks {
                unclaimed += chunk.len();
                let _ = tx.try_send(chunk);
            }
        }
        if !inner.closed {
            inner.subs.push(Subscriber {
                stream_id: stream_id.to_string(),
                tx,
                link: link.clone(),
                in_flight: Arc::default(),
                unclaimed,
                abandoned: false,
            });
        }
        PendingStream { rx, link }
    }

    /// A hub that keeps what is published before anyone subscribes (up to BACKLOG_BYTES) for
    /// the first subscriber: for a process adopted after a restart, whose output waited in
    /// its pipe while no gardend ran.
    pub fn with_backlog() -> Hub {
        let hub = Hub::default();
        hub.inner.lock().expect("hub lock").backlog = Some(Default::default());
        hub
    }

    /// Drop a session's subscriber (its client went away).
    pub fn unsubscribe(&self, stream_id: &str) {
        self.inner
            .lock()
            .expect("hub lock")
            .subs
            .retain(|s| s.stream_id != stream_id);
    }

    /// Hand a chunk to every subscriber. A connected reader gets back-pressure (the process
    /// waits rather than lose output) once CONNECTED_BYTES are queued for it; an unclaimed
    /// stream buffers up to UNCLAIMED_BYTES, then the process waits up to CLAIM_GRACE for its
    /// reader before that stream is abandoned.
    async fn publish(&self, data: Bytes) {
        let mut connected = Vec::new();
        let mut waiting = Vec::new();
        {
            let mut inner = self.inner.lock().expect("hub lock");
            if inner.subs.is_empty() {
                if let Some((chunks, bytes)) = inner.backlog.as_mut() {
                    *bytes += data.len();
                    chunks.push_back(data);
                    while *bytes > BACKLOG_BYTES {
                        let Some(old) = chunks.pop_front() else { break };
                        *bytes -= old.len();
                    }
                    return;
                }
            }
            for s in inner.subs.iter_mut().filter(|s| !s.abandoned) {
                if s.link.is_connected() {
                    connected.push((s.tx.clone(), s.in_flight.clone()));
                } else if s.unclaimed + data.len() <= UNCLAIMED_BYTES {
                    if s.tx.try_send(data.clone()).is_ok() {
                        s.unclaimed += data.len();
                    }
                } else {
                    waiting.push((s.stream_id.clone(), s.tx.clone(), s.link.clone()));
                }
            }
        }
        for (stream_id, tx, link) in waiting {
            let claimed = tokio::time::timeout(CLAIM_GRACE, async {
                while !link.is_connected() {
                    let notified = link.notify.notified();
                    if link.is_connected() {
                        break;
                    }
                    notified.await;
                }
            })
            .await
            .is_ok();
            if claimed {
                let in_flight = {
                    let inner = self.inner.lock().expect("hub lock");
                    inner
                        .subs
                        .iter()
                        .find(|s| s.stream_id == stream_id)
                        .map(|s| s.in_flight.clone())
                };
                connected.push((tx, in_flight.unwrap_or_default()));
            } else {
                let mut inner = self.inner.lock().expect("hub lock");
                if let Some(s) = inner.subs.iter_mut().find(|s| s.stream_id == stream_id) {
                    s.abandoned = true;
                }
            }
        }
        for (tx, in_flight) in connected {
            in_flight.room(&tx).await;
            let _ = tx.send(in_flight.track(data.clone())).await;
        }
    }

    /// No more output: every stream ends once drained.
    fn close(&self) {
        let mut inner = self.inner.lock().expect("hub lock");
        inner.closed = true;
        inner.subs.clear();
    }
}

/// How a pump decides that a process's output is complete once the process has exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// A pipe holds everything written before exit: the first EAGAIN after exit is the end.
    Pipe,
    /// A pty moves the slave's writes to the master asynchronously (the kernel's flip buffer
    /// is flushed by a worker), so EAGAIN right after exit can come before the last bytes.
    /// The master answers EIO once every slave fd is closed and all data was read; a
    /// background child still holding the slave gets this much idle time instead.
    Pty(std::time::Duration),
}

/// Read `fd` until EOF, or — once the process has left `Running` — until nothing more is buffered
/// (a background child may hold the pipe open forever). Then close the hub.
pub async fn pump(
    fd: Arc<AsyncFd<OwnedFd>>,
    hub: Arc<Hub>,
    mut state: watch::Receiver<super::ProcessState>,
    drain: Drain,
) {
    let mut buf = BytesMut::new();
    let mut draining = false;
    loop {
        let ready = if draining {
            None
        } else {
            tokio::select! {
                biased;
                r = fd.readable() => Some(r),
                _ = state.wait_for(|s| *s != super::ProcessState::Running) => None,
            }
        };
        match ready {
            Some(Ok(mut guard)) => match guard.try_io(|f| read(f.get_ref(), &mut buf)) {
                Ok(Ok(None)) => break,
                Ok(Ok(Some(chunk))) => hub.publish(chunk).await,
                Ok(Err(_)) => break,
                Err(_would_block) => continue,
            },
            Some(Err(_)) => break,
            None => {
                draining = true;
                match read(fd.get_ref(), &mut buf) {
                    Ok(None) => break,
                    Ok(Some(chunk)) => hub.publish(chunk).await,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => match drain {
                        // Everything the process wrote has been read.
                        Drain::Pipe => break,
                        Drain::Pty(idle) => match tokio::time::timeout(idle, fd.readable()).await {
                            Ok(Ok(mut guard)) => guard.clear_ready(),
                            Ok(Err(_)) | Err(_) => break,
                        },
                    },
                    Err(_) => break,
                }
            }
        }
    }
    hub.close();
    give_back_memory();
}

/// A flood's chunks came and went through malloc's arenas; hand the freed pages back to the
/// kernel now rather than keep them for a flood that may never come again.
fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// read(2) straight into the buffer the chunk is handed out from (no copy); `None` = EOF.
/// A pty master answers EIO once the slave side is closed, which is EOF for us.
fn read(fd: &OwnedFd, buf: &mut BytesMut) -> std::io::Result<Option<Bytes>> {
    buf.reserve(READ_CHUNK);
    let spare = buf.spare_capacity_mut();
    // SAFETY: read(2) writes at most `spare.len()` bytes into memory we own; we only expose
    // the `n` bytes it reports as written.
    let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EIO) => Ok(None),
            _ => Err(e),
        };
    }
    if n == 0 {
        return Ok(None);
    }
    // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(n as usize) };
    Ok(Some(buf.split().freeze()))
}

/// Where stdin messages go.
pub struct StdinSink {
    fd: Arc<AsyncFd<OwnedFd>>,
    /// A pty has no separate stdin to close: EOF is sent as ^D.
    tty: bool,
}

impl StdinSink {
    pub fn new(fd: Arc<AsyncFd<OwnedFd>>, tty: bool) -> Self {
        StdinSink { fd, tty }
    }

    pub async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard
                .try_io(|f| nix::unistd::write(f.get_ref(), data).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Stdin EOF. For a pipe the caller drops the sink, which closes it.
    pub async fn eof(&self) {
        if self.tty {
            let _ = self.write_all(&[4]).await;
        }
    }

    pub fn resize(&self, columns: u16, rows: u16) {
        if !self.tty {
            return;
        }
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ on our pty master with a valid winsize; the kernel sends SIGWINCH.
        unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

impl Hub {
    /// Close at once (a stream that will never carry output).
    pub fn close_now(&self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_backlog_goes_to_the_first_subscriber_only_and_is_bounded() {
        let hub = Hub::with_backlog();
        hub.publish(Bytes::from_static(b"old")).await;
        for _ in 0..3 {
            hub.publish(Bytes::from(vec![b'x'; BACKLOG_BYTES / 2]))
                .await;
        }
        hub.publish(Bytes::from_static(b"new")).await;
        let mut first = hub.subscribe("1");
        let mut got = Vec::new();
        while let Ok(chunk) = first.rx.try_recv() {
            got.extend_from_slice(&chunk);
        }
        assert!(got.len() <= BACKLOG_BYTES, "unbounded: {}", got.len());
        assert!(
            got.ends_with(b"new") && !got.starts_with(b"old"),
            "oldest dropped first"
        );
        let mut second = hub.subscribe("2");
        assert!(second.rx.try_recv().is_err(), "the backlog went twice");
        hub.publish(Bytes::from_static(b"live")).await;
        assert_eq!(&first.rx.try_recv().unwrap()[..], b"live");
        assert_eq!(&second.rx.try_recv().unwrap()[..], b"live");
    }

    #[tokio::test]
    async fn without_a_backlog_output_before_a_subscriber_is_not_kept() {
        let hub = Hub::default();
        hub.publish(Bytes::from_static(b"early")).await;
        let mut s = hub.subscribe("1");
        assert!(s.rx.try_recv().is_err());
    }
}
