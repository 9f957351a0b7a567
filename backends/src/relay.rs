//! Serving an already connected socket (`--fd N`).
//!
//! rust-vmm's `VhostUserDaemon` only accepts connections from a listener. For `--fd` we bind
//! a private listener in the abstract socket namespace, connect to it ourselves (before the
//! jail is entered), and relay whole vhost-user messages, file descriptors included, between
//! the inherited socket and that private connection. Only the control plane passes through
//! the relay: guest memory, kicks and calls are shared memory and eventfds, untouched.
//!
//! The same relay, with [`Relay::start_with_fixups`], also sits in front of devices whose
//! frontends break a rule rust-vmm's request handler enforces (see [`Fixups`]); then it is
//! created per connection inside the jail (its private listener is an abstract socket of the
//! jail's own network namespace).

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

/// vhost-user request codes the fix-ups look at.
const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;
/// Header flags: protocol version 1, reply, need-reply.
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// `VHOST_USER_F_PROTOCOL_FEATURES`, a backend-only virtio feature bit.
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;

/// Frontend quirks the relay absorbs before the daemon sees the messages.
///
/// QEMU's vhost-user-net (`virtio-net-pci` + `-netdev vhost-user`) sends
/// `SET_VRING_ENABLE` before `SET_FEATURES`: when the device is realized, and again when the
/// guest driver starts it (it restores the enable state, then sends `SET_FEATURES`; it checks
/// the offered, not the acknowledged, `VHOST_USER_F_PROTOCOL_FEATURES`). rust-vmm's handler
/// answers such a message with an "inactive feature" error and drops the frontend. The relay
/// acknowledges it itself (`0` = success, when a reply was asked for), remembers the state
/// per vring, and replays it to the daemon right after a `SET_FEATURES` that acknowledges
/// PROTOCOL_FEATURES (without it, the rings start enabled anyway).
#[derive(Debug, Default)]
pub struct Fixups {
    /// The frontend acknowledged `VHOST_USER_F_PROTOCOL_FEATURES` with `SET_FEATURES`.
    protocol_features_acked: bool,
    /// Enable states (vring index -> 0/1) absorbed and not replayed yet.
    pending: std::collections::BTreeMap<u32, u32>,
}

/// What the relay does with one frontend message.
#[derive(Debug, PartialEq, Eq)]
pub enum Fix {
    /// Forward it unchanged.
    Forward,
    /// Do not forward it; send this reply (if any) back to the frontend.
    Absorb(Option<Vec<u8>>),
    /// Forward it, then these messages (to the daemon, no reply expected).
    ForwardThen(Vec<Vec<u8>>),
}

fn message(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + payload.len());
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    m.extend_from_slice(payload);
    m
}

impl Fixups {
    /// Decides what to do with one frontend message (`msg` = header + payload).
    pub fn check(&mut self, msg: &[u8]) -> Fix {
        let word = |i: usize| {
            msg.get(i..i + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (Some(request), Some(flags)) = (word(0), word(4)) else {
            return Fix::Forward;
        };
        match request {
            SET_FEATURES => {
                let Some(f) = msg.get(HEADER_LEN..HEADER_LEN + 8) else {
                    return Fix::Forward;
                };
                let mut b = [0u8; 8];
                b.copy_from_slice(f);
                self.protocol_features_acked = u64::from_le_bytes(b) & PROTOCOL_FEATURES_BIT != 0;
                if !self.protocol_features_acked || self.pending.is_empty() {
                    return Fix::Forward;
                }
                let replay = std::mem::take(&mut self.pending)
                    .into_iter()
                    .map(|(index, num)| {
                        let mut p = index.to_le_bytes().to_vec();
                        p.extend_from_slice(&num.to_le_bytes());
                        message(SET_VRING_ENABLE, FLAG_VERSION, &p)
                    })
                    .collect();
                Fix::ForwardThen(replay)
            }
            SET_VRING_ENABLE if !self.protocol_features_acked => {
                let (Some(index), Some(num)) = (word(HEADER_LEN), word(HEADER_LEN + 4)) else {
                    return Fix::Forward;
                };
                if num > 1 || self.pending.len() >= 256 && !self.pending.contains_key(&index) {
                    // Malformed: let the daemon reject it.
                    return Fix::Forward;
                }
                self.pending.insert(index, num);
                let reply = (flags & FLAG_NEED_REPLY != 0).then(|| {
                    message(
                        SET_VRING_ENABLE,
                        FLAG_VERSION | FLAG_REPLY,
                        &0u64.to_le_bytes(),
                    )
                });
                Fix::Absorb(reply)
            }
            _ => Fix::Forward,
        }
    }
}

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

    /// Starts the two copy threads and returns; they end when either side closes.
    pub fn start(self) -> io::Result<()> {
        self.start_full(None, None)
    }

    /// Like [`start`](Self::start), applying [`Fixups`] to the frontend's messages.
    pub fn start_with_fixups(self) -> io::Result<()> {
        self.start_full(Some(Fixups::default()), None)
    }

    /// Like [`start`](Self::start), with optional [`Fixups`] and, with `inflight`, the
    /// frontend's GET/SET_INFLIGHT_FD answered on the way ([`crate::intercept`]).
    pub fn start_full(
        self,
        fixups: Option<Fixups>,
        inflight: Option<Arc<Inflight>>,
    ) -> io::Result<()> {
        // Both threads may write to the frontend (replies, and answers given by the relay
        // itself): whole messages only, one at a time.
        let lock = Arc::new(Mutex::new(()));
        let (a_in, a_out) = (self.outer.try_clone()?, self.inner.try_clone()?);
        let (b_in, b_out) = (self.inner, self.outer);
        let reply = b_out.try_clone()?;
        let a_lock = lock.clone();
        thread::Builder::new()
            .name("fd-relay-in".into())
            .spawn(move || {
                let mut icpt = inflight.map(|i| Interceptor::new(i, reply, a_lock.clone()));
                let mut side = InSide {
                    fixups,
                    icpt: icpt.as_mut(),
                    lock: &a_lock,
                };
                pump(&a_in, &a_out, Some(&mut side), None)
            })?;
        thread::Builder::new()
            .name("fd-relay-out".into())
            .spawn(move || pump(&b_in, &b_out, None, Some(&lock)))?;
        Ok(())
    }
}

/// What the frontend-to-daemon direction applies.
struct InSide<'a> {
    fixups: Option<Fixups>,
    icpt: Option<&'a mut Interceptor>,
    lock: &'a Mutex<()>,
}

/// Copies whole messages from `from` to `to` until EOF or error, then shuts both down.
/// `lock` serialises writes to `to`.
fn pump(
    from: &UnixStream,
    to: &UnixStream,
    mut side: Option<&mut InSide<'_>>,
    lock: Option<&Mutex<()>>,
) {
    let mut buf = vec![0u8; HEADER_LEN + MAX_PAYLOAD];
    loop {
        match relay_one(from, to, &mut buf, side.as_deref_mut(), lock) {
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

fn locked<T>(lock: Option<&Mutex<()>>, f: impl FnOnce() -> T) -> T {
    let _g = lock.map(|l| l.lock().unwrap_or_else(|e| e.into_inner()));
    f()
}

/// Relays one message; Ok(false) on clean EOF.
fn relay_one(
    from: &UnixStream,
    to: &UnixStream,
    buf: &mut [u8],
    side: Option<&mut InSide<'_>>,
    lock: Option<&Mutex<()>>,
) -> io::Result<bool> {
    let mut fds: Vec<OwnedFd> = Vec::new();
    let n = recv_exact(from, &mut buf[..HEADER_LEN], &mut fds)?;
    if n == 0 {
        return Ok(false);
    }
    if n < HEADER_LEN {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "partial header",
        ));
    }
    let size = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message payload of {size} bytes is too large"),
        ));
    }
    if size > 0 {
        let m = recv_exact(from, &mut buf[HEADER_LEN..HEADER_LEN + size], &mut fds)?;
        if m < size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "partial payload",
            ));
        }
    }
    let msg = &buf[..HEADER_LEN + size];
    let Some(side) = side else {
        locked(lock, || send_all(to, msg, &fds))?;
        return Ok(true);
    };
    // Inflight messages are answered here (or end the connection when malformed).
    if let Some(i) = side.icpt.as_deref_mut() {
        match i.intercept(msg, fds)? {
            Some(f) => fds = f,
            None => return Ok(true),
        }
    }
    let fix = match side.fixups.as_mut() {
        Some(f) => f.check(msg),
        None => Fix::Forward,
    };
    match fix {
        Fix::Forward => send_all(to, msg, &fds)?,
        Fix::Absorb(reply) => {
            log::debug!("relay: absorbed a SET_VRING_ENABLE sent before SET_FEATURES");
            if let Some(r) = reply {
                locked(Some(side.lock), || send_all(from, &r, &[]))?;
            }
        }
        Fix::ForwardThen(replay) => {
            send_all(to, msg, &fds)?;
            log::info!(
                "relay: replaying {} vring enable state(s) the frontend sent before \
                 SET_FEATURES (QEMU vhost-user-net)",
                replay.len()
            );
            for m in replay {
                send_all(to, &m, &[])?;
            }
        }
    }
    Ok(true)
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
        relay.start().unwrap();
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

    #[test]
    fn early_vring_enable_is_answered_then_replayed_after_set_features() {
        let mut f = Fixups::default();
        let enable = |index: u32, num: u32, flags: u32| {
            let mut p = index.to_le_bytes().to_vec();
            p.extend_from_slice(&num.to_le_bytes());
            message(SET_VRING_ENABLE, flags, &p)
        };
        // Before SET_FEATURES: absorbed, answered only when a reply is asked for.
        let reply = message(SET_VRING_ENABLE, FLAG_VERSION | FLAG_REPLY, &[0; 8]);
        assert_eq!(
            f.check(&enable(0, 1, FLAG_VERSION | FLAG_NEED_REPLY)),
            Fix::Absorb(Some(reply))
        );
        assert_eq!(f.check(&enable(1, 0, FLAG_VERSION)), Fix::Absorb(None));
        assert_eq!(f.check(&enable(1, 1, FLAG_VERSION)), Fix::Absorb(None));
        // Malformed values are left to the daemon.
        assert_eq!(f.check(&enable(0, 7, FLAG_VERSION)), Fix::Forward);
        assert_eq!(f.check(&[1, 2, 3]), Fix::Forward);
        // SET_FEATURES with PROTOCOL_FEATURES: forwarded, then the last state of each ring.
        let features = message(
            SET_FEATURES,
            FLAG_VERSION,
            &(PROTOCOL_FEATURES_BIT | 1).to_le_bytes(),
        );
        assert_eq!(
            f.check(&features),
            Fix::ForwardThen(vec![enable(0, 1, FLAG_VERSION), enable(1, 1, FLAG_VERSION)])
        );
        // Afterwards everything passes.
        assert_eq!(f.check(&enable(0, 0, FLAG_NEED_REPLY)), Fix::Forward);
        assert_eq!(f.check(&features), Fix::Forward);
        // Without PROTOCOL_FEATURES nothing is replayed (the rings start enabled).
        let mut g = Fixups::default();
        assert_eq!(g.check(&enable(0, 1, FLAG_VERSION)), Fix::Absorb(None));
        assert_eq!(
            g.check(&message(SET_FEATURES, FLAG_VERSION, &1u64.to_le_bytes())),
            Fix::Forward
        );
    }
}
