//! Fuzz vhost-user message handling: the whole Cordon serving path (the `--fd` relay,
//! rust-vmm's request handler, Cordon's memory checks, the rng device) fed a hostile message
//! stream over a real socket.
//!
//! Input: a sequence of chunks `[flags u8][len u16 LE][len bytes]`; each chunk is sent with
//! one sendmsg. Flag bit 0 attaches a 64 KiB memfd, bit 1 an eventfd (what SET_MEM_TABLE and
//! SET_VRING_KICK/CALL expect).
#![no_main]

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use cordon_backends::{serve, Endpoint, ServeOptions};
use libfuzzer_sys::fuzz_target;

fn memfd() -> Option<OwnedFd> {
    // SAFETY: memfd_create with a static NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fresh fd we own.
    let f = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on our memfd.
    unsafe { libc::ftruncate(f.as_raw_fd(), 64 * 1024) };
    Some(f)
}

fn eventfd() -> Option<OwnedFd> {
    // SAFETY: plain eventfd creation.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    // SAFETY: fresh fd we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(sock: &UnixStream, data: &[u8], fds: &[RawFd]) {
    let mut cmsg = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: zeroed msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let bytes = (fds.len() * 4) as u32;
        // SAFETY: constant computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as usize;
        msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
        // SAFETY: cmsg buffer (64 bytes) holds one header and two fds.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c) as *mut RawFd, fds.len());
        }
    }
    // SAFETY: msg references live buffers.
    unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
}

fuzz_target!(|data: &[u8]| {
    let Ok((ours, theirs)) = UnixStream::pair() else {
        return;
    };
    let server = std::thread::spawn(move || {
        let opts = ServeOptions {
            name: "fuzz".into(),
            once: true,
            jail: None,
            supervised: true,
        };
        let _ = serve(Arc::new(cordon_rng::Rng::new()), Endpoint::Stream(theirs), opts);
    });
    let mut rest = data;
    while rest.len() >= 3 {
        let flags = rest[0];
        let len = (u16::from_le_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3);
        let chunk = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let mut keep = Vec::new();
        if flags & 1 != 0 {
            keep.extend(memfd());
        }
        if flags & 2 != 0 {
            keep.extend(eventfd());
        }
        let fds: Vec<RawFd> = keep.iter().map(|f| f.as_raw_fd()).collect();
        send(&ours, chunk, &fds);
    }
    let _ = ours.shutdown(std::net::Shutdown::Write);
    let _ = ours.set_read_timeout(Some(Duration::from_secs(2)));
    let mut sink = Vec::new();
    let _ = (&ours).read_to_end(&mut sink);
    drop(ours);
    let _ = server.join();
});
