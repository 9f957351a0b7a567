//! Serving an already connected socket (`--fd N`).
//!
//! rust-vmm's `VhostUserDaemon` only accepts connections from a listener. For `--fd` we bind
//! a private listener in the abstract socket namespace, connect to it ourselves (before the
//! jail is entered), and relay whole vhost-user messages, file descriptors included, between
//! the inherited socket and that private connection. Only the control plane passes through
//! the relay: guest memory, kicks and calls are shared memory and eventfds, untouched.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::inflight::Inflight;
use crate::intercept::Interceptor;

/// vhost-user message header: request (u32), flags (u32), payload size (u32).
pub(crate) const HEADER_LEN: usize = 12;
/// Largest payload relayed; vhost-user messages are at most 4 KiB, GPU ones up to 64 KiB.
const MAX_PAYLOAD: usize = 64 * 1024;
/// Most descriptors one message may carry.
const MAX_FDS: usize = 32;

/// A private listener plus our own, already connected client end.
pub struct Relay {
    /// The listener the daemon accepts the relayed connection from.
    pub listener: UnixListener,
    inner: UnixStream,
    outer: UnixStream,
}

impl Relay {
    /// Binds a private abstract socket and connects to it (must happen before the jail).
    pub fn new(outer: UnixStream) -> io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cordon-fd-relay-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        let listener = UnixListener::bind_addr(&addr)?;
        let inner = UnixStream::connect_addr(&addr)?;
        Ok(Relay {
            listener,
            inner,
            outer,
        })
    }

    /// Descriptors the relay needs (to keep open in the jail).
    pub fn fds(&self) -> Vec<RawFd> {
        vec![
            self.listener.as_raw_fd(),
            self.inner.as_raw_fd(),
            self.outer.as_raw_fd(),
        ]
    }

    /// Starts the two copy threads and returns; they end when either side closes. With
    /// `inflight`, the frontend's inflight messages are answered on the way (see
    /// [`crate::intercept`]).
    pub fn start(self, inflight: Option<Arc<Inflight>>) -> io::Result<()> {
        pump_pair(self.outer, self.inner, inflight)
    }
}

/// Relays whole messages between the frontend's stream `outer` and the daemon's stream
/// `inner` on two threads; with `inflight`, GET/SET_INFLIGHT_FD are answered here.
pub fn pump_pair(
    outer: UnixStream,
    inner: UnixStream,
    inflight: Option<Arc<Inflight>>,
) -> io::Result<()> {
    let out_lock = Arc::new(Mutex::new(()));
    let (a_in, a_out) = (outer.try_clone()?, inner.try_clone()?);
    let (b_in, b_out) = (inner, outer);
    let a_reply = b_out.try_clone()?;
    let a_lock = out_lock.clone();
    thread::Builder::new()
        .name("vu-relay-in".into())
        .spawn(move || {
            let mut icpt = inflight.map(|i| Interceptor::new(i, a_reply, a_lock));
            pump(&a_in, &a_out, None, icpt.as_mut())
        })?;
    thread::Builder::new()
        .name("vu-relay-out".into())
        .spawn(move || pump(&b_in, &b_out, Some(&out_lock), None))?;
    Ok(())
}

/// Copies whole messages from `from` to `to` until EOF or error, then shuts both down.
fn pump(
    from: &UnixStream,
    to: &UnixStream,
    lock: Option<&Mutex<()>>,
    mut icpt: Option<&mut Interceptor>,
) {
    let mut buf = vec![0u8; HEADER_LEN + MAX_PAYLOAD];
    loop {
        let mut fds: Vec<OwnedFd> = Vec::new();
        let r = read_message(from, &mut buf, &mut fds).and_then(|n| {
            let Some(n) = n else { return Ok(false) };
            let fds = match icpt.as_deref_mut() {
                Some(i) => match i.intercept(&buf[..n], fds)? {
                    Some(fds) => fds,
                    None => return Ok(true),
                },
                None => fds,
            };
            let _guard = lock.map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
            send_all(to, &buf[..n], &fds)?;
            Ok(true)
        });
        match r {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                log::warn!("vhost-user relay: {e}; closing the connection");
                break;
            }
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Reads one whole message (header and bounded payload) into `buf`; its length, or None on
/// a clean EOF.
pub(crate) fn read_message(
    from: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Option<usize>> {
    let n = recv_exact(from, &mut buf[..HEADER_LEN], fds)?;
    if n == 0 {
        return Ok(None);
    }
    if n < HEADER_LEN {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "partial header",
        ));
    }
    let size = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if size > MAX_PAYLOAD || HEADER_LEN + size > buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message payload of {size} bytes is too large"),
        ));
    }
    if size > 0 {
        let m = recv_exact(from, &mut buf[HEADER_LEN..HEADER_LEN + size], fds)?;
        if m < size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "partial payload",
            ));
        }
    }
    Ok(Some(HEADER_LEN + size))
}

/// Reads exactly `buf.len()` bytes unless EOF comes first; collects passed descriptors.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = recv_with_fds(sock, &mut buf[got..], fds)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

const CMSG_SPACE: usize = 256; // >= CMSG_SPACE(MAX_FDS * 4) = 16 + 128

fn recv_with_fds(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut cmsg = [0u64; CMSG_SPACE / 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = CMSG_SPACE;
    let n = loop {
        // SAFETY: msg points at a valid iovec over `buf` and a control buffer of CMSG_SPACE bytes.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: walking the control messages the kernel wrote into `msg`.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is a valid cmsghdr inside the control buffer.
        let hdr = unsafe { &*c };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let data_len = hdr.cmsg_len as usize - unsafe { libc::CMSG_LEN(0) } as usize;
            let count = data_len / std::mem::size_of::<RawFd>();
            // SAFETY: the data of an SCM_RIGHTS message is `count` file descriptors.
            let data = unsafe { libc::CMSG_DATA(c) } as *const RawFd;
            for i in 0..count {
                // SAFETY: reading within the cmsg data; unaligned read to be safe.
                let fd = unsafe { std::ptr::read_unaligned(data.add(i)) };
                // SAFETY: the kernel just installed this descriptor for us; we own it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: advancing within the same control buffer.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many file descriptors in one message",
        ));
    }
    Ok(n)
}

pub(crate) fn send_all(sock: &UnixStream, data: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let mut sent = 0;
    let mut first = true;
    while sent < data.len() {
        let mut cmsg = [0u64; CMSG_SPACE / 8];
        let mut iov = libc::iovec {
            iov_base: data[sent..].as_ptr() as *mut libc::c_void,
            iov_len: data.len() - sent,
        };
        // SAFETY: zeroed msghdr is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if first && !fds.is_empty() {
            let bytes = std::mem::size_of_val(fds) as u32;
            // SAFETY: CMSG_SPACE is a constant computation.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(bytes) } as usize;
            msg.msg_control = cmsg.as_mut_ptr() as *mut libc::c_void;
            // SAFETY: the control buffer is large enough for MAX_FDS descriptors.
            let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
            // SAFETY: `c` points at the start of our control buffer.
            unsafe {
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(bytes) as usize;
                let p = libc::CMSG_DATA(c) as *mut RawFd;
                for (i, fd) in fds.iter().enumerate() {
                    std::ptr::write_unaligned(p.add(i), fd.as_raw_fd());
                }
            }
        }
        // SAFETY: msg references live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        first = false;
        sent += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn relays_messages_with_fds() {
        let (outer_peer, outer) = UnixStream::pair().unwrap();
        let relay = Relay::new(outer).unwrap();
        let (mut accepted, _) = relay.listener.accept().unwrap();
        relay.start(None).unwrap();
        // A message with payload and one fd, from the "frontend" side.
        let f = tempfile::tempfile().unwrap();
        let mut msg = vec![];
        msg.extend_from_slice(&5u32.to_le_bytes());
        msg.extend_from_slice(&1u32.to_le_bytes());
        msg.extend_from_slice(&4u32.to_le_bytes());
        msg.extend_from_slice(b"abcd");
        let owned = OwnedFd::from(f);
        send_all(&outer_peer, &msg, std::slice::from_ref(&owned)).unwrap();
        let mut got = vec![0u8; 16];
        let mut fds = vec![];
        recv_exact(&accepted, &mut got, &mut fds).unwrap();
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 1);
        // And a reply back.
        accepted.write_all(&msg).unwrap();
        let mut back = vec![0u8; 16];
        (&outer_peer).read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
        // Oversized payloads close the relay.
        let mut bad = vec![];
        bad.extend_from_slice(&5u32.to_le_bytes());
        bad.extend_from_slice(&1u32.to_le_bytes());
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        (&outer_peer).write_all(&bad).unwrap();
        let mut rest = vec![];
        let _ = accepted.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
}
