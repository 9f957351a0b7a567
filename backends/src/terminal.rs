//! Raw input for a terminal a device reads from (`--serial ...,stdin` on a terminal), so
//! that every key reaches the guest as typed: no line editing, no local echo, no signals
//! from ^C (the guest's shell handles them). Output post-processing stays on, so the host's
//! own log lines on the same terminal still start at column 0.
//!
//! The unjailed process that opened the device keeps the saved settings and puts them back
//! with [`restore`] when it ends; jailed children never touch the terminal again.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Terminals put into raw mode by this process, with the settings to restore.
static SAVED: Mutex<Vec<(RawFd, libc::termios)>> = Mutex::new(Vec::new());

/// Puts terminal `fd` into raw input mode until [`restore`]. Returns false (and changes
/// nothing) when `fd` is not a terminal.
pub fn raw_input(fd: RawFd) -> io::Result<bool> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(fd) } != 1 {
        return Ok(false);
    }
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is a terminal and `saved` a valid termios to write into.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut raw = saved;
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut raw) };
    raw.c_oflag = saved.c_oflag;
    // SAFETY: fd is a terminal and `raw` a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut list = SAVED.lock().unwrap_or_else(|e| e.into_inner());
    if !list.iter().any(|(f, _)| *f == fd) {
        list.push((fd, saved));
    }
    Ok(true)
}

/// The local-mode flags (`c_lflag`: ICANON, ECHO, ISIG, ...) of terminal `fd`; for a pty
/// master, its slave's.
pub fn local_flags(fd: RawFd) -> io::Result<libc::tcflag_t> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid termios to write into; a bad fd is an error return.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t.c_lflag)
}

/// A new pseudo-terminal pair: (master, slave). For tests and tools that need a terminal.
pub fn openpty() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty writes two descriptors; the name, termios and winsize may be null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openpty succeeded: both descriptors are new and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) })
}

/// Puts back the settings of every terminal [`raw_input`] changed. Safe to call more than
/// once, and when nothing was changed.
pub fn restore() {
    let list = std::mem::take(&mut *SAVED.lock().unwrap_or_else(|e| e.into_inner()));
    for (fd, saved) in list {
        // SAFETY: restores the settings read from the same terminal in `raw_input`.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn pty() -> (OwnedFd, OwnedFd) {
        openpty().expect("openpty")
    }

    fn lflag(fd: RawFd) -> libc::tcflag_t {
        local_flags(fd).expect("tcgetattr")
    }

    #[test]
    fn a_terminal_goes_raw_and_comes_back() {
        let (_m, s) = pty();
        let fd = s.as_raw_fd();
        let before = lflag(fd);
        assert_ne!(before & libc::ICANON, 0, "a fresh pty is canonical");
        assert!(raw_input(fd).unwrap());
        let raw = lflag(fd);
        assert_eq!(raw & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
        restore();
        assert_eq!(lflag(fd), before, "settings restored");
        restore();
    }

    #[test]
    fn a_pipe_is_left_alone() {
        let mut p = [0; 2];
        // SAFETY: valid out-array.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        assert!(!raw_input(p[0]).unwrap());
        // SAFETY: closing our own pipe.
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
    }
}
