//! The local terminal: is a stream a tty, its window size, and raw mode that is always undone.

use std::io::IsTerminal;
use std::os::fd::{AsFd, BorrowedFd};

use garden_api::WindowSize;
use nix::sys::termios::{self, SetArg, Termios};

pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}

/// The window size of the first of stdin, stdout, stderr that is a terminal.
pub fn window_size() -> Option<WindowSize> {
    [0, 1, 2].into_iter().find_map(window_size_of)
}

fn window_size_of(fd: i32) -> Option<WindowSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass; the fd is one of ours.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some(WindowSize {
        columns: ws.ws_col,
        rows: ws.ws_row,
    })
}

/// Puts stdin's terminal into raw mode; the previous settings come back on drop (and thus on
/// every return path, including errors).
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    pub fn enable() -> nix::Result<RawMode> {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSADRAIN, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: fd 0 stays open for the life of the process.
        let fd = unsafe { BorrowedFd::borrow_raw(0) };
        let _ = termios::tcsetattr(fd, SetArg::TCSADRAIN, &self.saved);
    }
}
