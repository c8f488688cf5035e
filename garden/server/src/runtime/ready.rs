//! What garden-init says while it builds a container (its fd 3), and gardend's one answer.
//!
//! garden-init first builds the container's root: the overlay (whose mount makes and checks
//! its work directory), the copy-up of /etc/hosts, mount points. Those are the setup's writes
//! to the host's disk. Then it sends [`JOIN`] and waits. gardend moves it into the container's
//! cgroups and answers with one byte. Only then does garden-init make its cgroup namespace
//! (rooted where it now stands) and finish, with "ok" or why not, and EOF.
//!
//! Why the join waits for the disk writes: the page cache they bring in (the file system's
//! metadata buffers) is charged to the memory cgroup of the writer. A removed memory cgroup
//! lives on, with its kernel tables, as long as one page charged to it stays cached. Joined
//! before its setup, every destroyed container left its memory cgroup behind: 1,017 after a
//! ramp of 1,000, with 0.8 GiB of kernel memory, until the page cache was dropped. Joined
//! after, none stays (bench/README.md, issue 19 step 7).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use crate::init::proto::JOIN;

use super::RuntimeError;

/// A socket pair: gardend's end (non-blocking, for the reactor) and garden-init's (fd 3).
pub fn channel() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let flags = nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok((ours, theirs))
}

/// Follow garden-init's setup on `ours`: run `join` when it asks (a future, not polled
/// before; joining waits for RCU grace periods, so it belongs off the reactor's threads), then
/// wait for its "ok".
/// `who` names it in the error when it goes away without a word. The caller bounds the wait
/// and kills the init on an error.
pub async fn await_ready(
    ours: OwnedFd,
    who: &str,
    join: impl std::future::Future<Output = Result<(), RuntimeError>>,
) -> Result<(), RuntimeError> {
    let io = |e: std::io::Error| RuntimeError::Setup(format!("read {who}'s setup channel: {e}"));
    let mut s =
        tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(ours)).map_err(io)?;
    let mut said = Vec::new();
    // Until it asks to join, or says something else (why it failed) and leaves.
    while said.len() < JOIN.len() && JOIN.starts_with(&said) {
        if s.read_buf(&mut said).await.map_err(io)? == 0 {
            break;
        }
    }
    let mut rest = if said.starts_with(JOIN) {
        join.await?;
        // A failed write means it is gone: what it said before going is the better error.
        let _ = s.write_all(b"g").await;
        said.split_off(JOIN.len())
    } else {
        said
    };
    s.read_to_end(&mut rest).await.map_err(io)?;
    match String::from_utf8_lossy(&rest).as_ref() {
        "ok" => Ok(()),
        "" => Err(RuntimeError::Setup(format!("{who} exited during setup"))),
        why => Err(RuntimeError::Setup(why.to_string())),
    }
}

/// How long an init may take to build its container.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// [`await_ready`] for the init `pid`, bounded by [`SETUP_TIMEOUT`]: past it, the error says
/// where the init hangs (its state and the tail of `log`).
pub async fn await_ready_in_time(
    ours: OwnedFd,
    who: &str,
    pid: i32,
    log: &Path,
    join: impl std::future::Future<Output = Result<(), RuntimeError>>,
) -> Result<(), RuntimeError> {
    match tokio::time::timeout(SETUP_TIMEOUT, await_ready(ours, who, join)).await {
        Ok(r) => r,
        Err(_) => Err(RuntimeError::NotReady {
            timeout: SETUP_TIMEOUT,
            state: super::stuck_state(pid, log),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Play garden-init on the other end: `script` gets its end of the channel.
    async fn run(
        script: impl FnOnce(std::fs::File) + Send + 'static,
        join: impl std::future::Future<Output = Result<(), RuntimeError>>,
    ) -> Result<(), RuntimeError> {
        let (ours, theirs) = channel().expect("socketpair");
        let init = std::thread::spawn(move || script(std::fs::File::from(theirs)));
        let r = await_ready(ours, "garden-init", join).await;
        init.join().expect("init thread");
        r
    }

    /// As garden-init: ask to join; how many bytes gardend answered (0: it gave up).
    fn ask(f: &mut std::fs::File) -> usize {
        f.write_all(JOIN).unwrap();
        let mut b = [0u8; 1];
        f.read(&mut b).unwrap()
    }

    /// The message of a setup error.
    fn why(r: &Result<(), RuntimeError>) -> Option<&str> {
        match r {
            Err(RuntimeError::Setup(m)) => Some(m),
            _ => None,
        }
    }

    #[tokio::test]
    async fn joins_once_asked_then_waits_for_ok() {
        let joins = AtomicUsize::new(0);
        let r = run(
            |mut f| {
                f.write_all(b"jo").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
                f.write_all(b"in\n").unwrap();
                let mut b = [0u8; 1];
                f.read_exact(&mut b).unwrap();
                assert_eq!(&b, b"g");
                f.write_all(b"ok").unwrap();
            },
            async {
                joins.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        )
        .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(joins.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_before_the_join_is_reported_without_joining() {
        let r = run(
            |mut f| f.write_all(b"mount overlay: EINVAL").unwrap(),
            async { panic!("must not join") },
        )
        .await;
        assert_eq!(why(&r), Some("mount overlay: EINVAL"), "{r:?}");
        let r = run(drop, async { panic!("must not join") }).await;
        assert_eq!(why(&r), Some("garden-init exited during setup"), "{r:?}");
    }

    #[tokio::test]
    async fn a_failure_after_the_join_is_reported() {
        let r = run(
            |mut f| {
                assert_eq!(ask(&mut f), 1);
                f.write_all(b"pivot_root: EBUSY").unwrap();
            },
            async { Ok(()) },
        )
        .await;
        assert_eq!(why(&r), Some("pivot_root: EBUSY"), "{r:?}");
    }

    #[tokio::test]
    async fn a_failed_join_is_returned_and_the_init_sees_eof() {
        // gardend drops its end without answering: garden-init gives up.
        let r = run(|mut f| assert_eq!(ask(&mut f), 0), async {
            Err(RuntimeError::Setup("join cgroup: ENOENT".into()))
        })
        .await;
        assert_eq!(why(&r), Some("join cgroup: ENOENT"), "{r:?}");
    }
}
