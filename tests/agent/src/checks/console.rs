//! `console`: guest output reaches the host and host input reaches the guest over a virtio
//! console port (/dev/hvc0).

use crate::hex;
use crate::report::Outcome;
use crate::spec::CheckSpec;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;

fn make_raw(fd: i32) -> Result<(), String> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; t is a valid termios.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(format!("tcgetattr: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: t is a valid termios.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: fd is open; t is a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(format!("tcsetattr: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `console[:dev=hvc0][:out=HEX][:in=HEX]`: writes `out` followed by a newline; then, if
/// `in` is given, reads until that many bytes arrived and compares.
pub fn console(c: &CheckSpec) -> Result<Outcome, String> {
    let dev = format!("/dev/{}", c.str_or("dev", "hvc0"));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .map_err(|e| format!("open {dev}: {e}"))?;
    make_raw(f.as_raw_fd())?;
    let mut out = Outcome::pass(format!("console {dev}"));
    if let Some(data) = c.hex("out")? {
        f.write_all(&data)
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.flush())
            .map_err(|e| format!("write {dev}: {e}"))?;
        out = out.with("sent", data.len());
    }
    if let Some(expect) = c.hex("in")? {
        let mut got = vec![0u8; expect.len()];
        f.read_exact(&mut got)
            .map_err(|e| format!("read {dev}: {e}"))?;
        out = out.with("received", hex::encode(&got));
        if got != expect {
            out.ok = false;
            out.detail = format!(
                "expected {}, got {}",
                hex::encode(&expect),
                hex::encode(&got)
            );
        }
    }
    Ok(out)
}
