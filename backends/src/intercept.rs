//! The message proxy in front of rust-vmm's vhost-user daemon for devices that offer
//! VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD.
//!
//! `vhost-user-backend` 0.24 answers GET_INFLIGHT_FD / SET_INFLIGHT_FD with an error and its
//! request handler is private, so Cordon relays the frontend's messages to the daemon over a
//! private socket and answers these two itself ([`crate::inflight`]). Everything else passes
//! through untouched (whole messages, descriptors included). The proxy also:
//! - notes the acked protocol features (SET_PROTOCOL_FEATURES), so the two messages are only
//!   answered when the feature was negotiated (otherwise the daemon refuses them as before);
//! - kicks a queue once after its SET_VRING_KICK while an inflight region is set: a guest
//!   that waits for an in-flight request sends no new kick, and the re-run must start anyway.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use crate::inflight::Inflight;
use crate::relay::{send_all, HEADER_LEN};

const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_KICK: u32 = 12;
const GET_INFLIGHT_FD: u32 = 31;
const SET_INFLIGHT_FD: u32 = 32;
/// Protocol feature bit of INFLIGHT_SHMFD.
const F_INFLIGHT_SHMFD: u64 = 1 << 12;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
/// Payload of both inflight messages: mmap_size u64, mmap_offset u64, num_queues u16,
/// queue_size u16, 4 bytes of padding (the C struct's size).
const INFLIGHT_PAYLOAD: usize = 24;

/// Answers the inflight messages of one connection.
pub struct Interceptor {
    inflight: Arc<Inflight>,
    reply: UnixStream,
    lock: Arc<Mutex<()>>,
    protocol: u64,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Interceptor {
    /// `reply` is the frontend's stream; `lock` serialises writes to it with the relay
    /// thread that forwards the daemon's replies.
    pub fn new(inflight: Arc<Inflight>, reply: UnixStream, lock: Arc<Mutex<()>>) -> Self {
        Interceptor {
            inflight,
            reply,
            lock,
            protocol: 0,
        }
    }

    fn send(&self, request: u32, payload: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
        let mut msg = Vec::with_capacity(HEADER_LEN + payload.len());
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
        msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        msg.extend_from_slice(payload);
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        send_all(&self.reply, &msg, fds)
    }

    /// Looks at one frontend message: `Ok(Some(fds))` forwards it (with these descriptors),
    /// `Ok(None)` means it was answered here, `Err` ends the connection (malformed).
    pub fn intercept(&mut self, msg: &[u8], fds: Vec<OwnedFd>) -> io::Result<Option<Vec<OwnedFd>>> {
        let word = |i: usize| u32::from_le_bytes([msg[i], msg[i + 1], msg[i + 2], msg[i + 3]]);
        let (request, flags) = (word(0), word(4));
        let payload = &msg[HEADER_LEN..];
        let negotiated = self.protocol & F_INFLIGHT_SHMFD != 0;
        match request {
            SET_PROTOCOL_FEATURES if payload.len() == 8 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(payload);
                self.protocol = u64::from_le_bytes(b);
                Ok(Some(fds))
            }
            GET_INFLIGHT_FD if negotiated => self.get(payload, fds).map(|()| None),
            SET_INFLIGHT_FD if negotiated => self.set(payload, flags, fds).map(|()| None),
            SET_VRING_KICK if fds.len() == 1 && self.inflight.active() => {
                // Forward first; the eventfd keeps the count until the worker reads it.
                let kick = fds[0].try_clone()?;
                Ok(Some(self.kick_after(fds, kick)))
            }
            _ => Ok(Some(fds)),
        }
    }

    fn kick_after(&self, fds: Vec<OwnedFd>, kick: OwnedFd) -> Vec<OwnedFd> {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a valid buffer to an fd we own (a dup of the kick fd);
        // a non-eventfd just fails, which is harmless.
        let r = unsafe { libc::write(kick.as_raw_fd(), one.as_ptr() as *const libc::c_void, 8) };
        if r != 8 {
            log::debug!("inflight: self-kick: {}", io::Error::last_os_error());
        }
        fds
    }

    fn parse(payload: &[u8]) -> io::Result<(u64, u64, u16, u16)> {
        if payload.len() != INFLIGHT_PAYLOAD {
            return Err(invalid(format!(
                "inflight message of {} bytes, expected {INFLIGHT_PAYLOAD}",
                payload.len()
            )));
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let u16_at = |i: usize| u16::from_le_bytes([payload[i], payload[i + 1]]);
        Ok((u64_at(0), u64_at(8), u16_at(16), u16_at(18)))
    }

    fn get(&self, payload: &[u8], fds: Vec<OwnedFd>) -> io::Result<()> {
        if !fds.is_empty() {
            return Err(invalid("GET_INFLIGHT_FD with descriptors attached".into()));
        }
        let (_, _, num_queues, queue_size) = Self::parse(payload)?;
        let (size, file) = self
            .inflight
            .get_fd(num_queues, queue_size)
            .map_err(|e| invalid(format!("GET_INFLIGHT_FD: {e}")))?;
        log::info!(
            "inflight: region of {size} bytes for {num_queues} queue(s) of {queue_size} handed out"
        );
        let mut reply = [0u8; INFLIGHT_PAYLOAD];
        reply[0..8].copy_from_slice(&size.to_le_bytes());
        reply[16..18].copy_from_slice(&num_queues.to_le_bytes());
        reply[18..20].copy_from_slice(&queue_size.to_le_bytes());
        self.send(GET_INFLIGHT_FD, &reply, &[OwnedFd::from(file)])
    }

    fn set(&self, payload: &[u8], flags: u32, mut fds: Vec<OwnedFd>) -> io::Result<()> {
        if fds.len() != 1 {
            return Err(invalid(format!(
                "SET_INFLIGHT_FD with {} descriptors, expected 1",
                fds.len()
            )));
        }
        let (size, offset, num_queues, queue_size) = Self::parse(payload)?;
        let file = File::from(fds.remove(0));
        let r = self
            .inflight
            .set_fd(file, size, offset, num_queues, queue_size);
        match &r {
            Ok(()) => log::info!(
                "inflight: region of {size} bytes for {num_queues} queue(s) of {queue_size} adopted"
            ),
            Err(e) => log::warn!("SET_INFLIGHT_FD refused: {e}"),
        }
        if flags & FLAG_NEED_REPLY != 0 {
            let code: u64 = if r.is_ok() { 0 } else { 1 };
            self.send(SET_INFLIGHT_FD, &code.to_le_bytes(), &[])?;
        }
        Ok(())
    }
}
