//! One vsock stream connection between a guest port and a host Unix stream.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;

/// Bytes of guest data the device buffers per connection (its advertised `buf_alloc`).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;

/// Lifecycle of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent to the guest, waiting for its RESPONSE.
    Connecting,
    /// Both sides agreed; data may flow.
    Established,
}

/// State of one stream: the host socket plus both directions' credit accounting.
#[derive(Debug)]
pub struct Conn {
    /// The host side of the stream.
    pub stream: UnixStream,
    /// Epoll token of `stream`.
    pub token: u64,
    /// Host-side vsock port.
    pub local_port: u32,
    /// Guest-side vsock port.
    pub peer_port: u32,
    /// Lifecycle state.
    pub state: ConnState,
    /// Guest bytes received but not yet written to `stream` (starting at `pending_off`).
    pub pending: Vec<u8>,
    /// Offset of the first unwritten byte in `pending`.
    pub pending_off: usize,
    /// Host bytes read before the handshake completed, to be sent to the guest first.
    pub rx_prefix: Vec<u8>,
    /// Guest bytes forwarded to the host so far (our `fwd_cnt`).
    pub fwd_cnt: u32,
    /// `fwd_cnt` value last told to the guest.
    pub fwd_cnt_reported: u32,
    /// Bytes sent to the guest so far.
    pub rx_cnt: u32,
    /// Guest's receive buffer size.
    pub peer_buf_alloc: u32,
    /// Guest's consumed-bytes counter.
    pub peer_fwd_cnt: u32,
    /// Guest promised to send no more data.
    pub guest_shut_send: bool,
    /// Guest will receive no more data.
    pub guest_shut_rcv: bool,
    /// The host side reached end of stream.
    pub host_eof: bool,
    /// The host socket reported hang-up; it is no longer in the epoll set.
    pub hup: bool,
    /// Whether the write half of `stream` was shut down already.
    pub shut_write_done: bool,
    /// The guest closed both directions while guest data still waited for the host:
    /// the stream lives on until `pending` is written, then the guest gets its RST.
    pub closing: bool,
    /// The connection is in the RX ready list.
    pub in_ready: bool,
    /// Epoll interest currently registered (`u32::MAX` = not registered).
    pub interest: u32,
}

impl Conn {
    /// A new connection over `stream`.
    pub fn new(
        stream: UnixStream,
        token: u64,
        local_port: u32,
        peer_port: u32,
        state: ConnState,
    ) -> Conn {
        Conn {
            stream,
            token,
            local_port,
            peer_port,
            state,
            pending: Vec::new(),
            pending_off: 0,
            rx_prefix: Vec::new(),
            fwd_cnt: 0,
            fwd_cnt_reported: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_eof: false,
            hup: false,
            shut_write_done: false,
            closing: false,
            in_ready: false,
            interest: u32::MAX,
        }
    }

    /// Bytes the guest can still receive right now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest bytes buffered, waiting for the host socket.
    pub fn pending_len(&self) -> usize {
        self.pending.len() - self.pending_off
    }

    /// Whether host data should be read for the guest now.
    pub fn wants_read(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && !self.guest_shut_rcv
            && (self.peer_credit() > 0)
    }

    /// Queues guest data and writes as much as the host socket takes.
    ///
    /// Fails (the stream must be reset) if the guest overran its credit or the host
    /// socket broke.
    pub fn push_guest_data(&mut self, data: &[u8]) -> io::Result<()> {
        if self.pending_len() + data.len() > CONN_BUF_ALLOC as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "guest sent more than the advertised credit",
            ));
        }
        if self.pending_len() == 0 {
            self.pending.clear();
            self.pending_off = 0;
            let n = write_some(&mut self.stream, data)?;
            self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
            self.pending.extend_from_slice(&data[n..]);
        } else {
            self.pending.extend_from_slice(data);
            self.flush()?;
        }
        Ok(())
    }

    /// Writes buffered guest data to the host socket; applies a pending write shutdown
    /// once everything is out.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.pending_len() > 0 {
            let n = write_some(&mut self.stream, &self.pending[self.pending_off..])?;
            if n == 0 {
                break;
            }
            self.pending_off += n;
            self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        }
        if self.pending_len() == 0 {
            self.pending.clear();
            self.pending_off = 0;
            if self.guest_shut_send && !self.shut_write_done {
                self.shut_write_done = true;
                // The host may have closed already; a failed shutdown changes nothing.
                let _ = self.stream.shutdown(std::net::Shutdown::Write);
            }
        } else if self.pending_off > 64 * 1024 {
            self.pending.drain(..self.pending_off);
            self.pending_off = 0;
        }
        Ok(())
    }

    /// Whether a closing stream has written everything and can be reset now.
    pub fn close_done(&self) -> bool {
        self.closing && self.pending_len() == 0
    }

    /// Whether the guest should be told about freed buffer space now.
    pub fn credit_update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_reported) >= CONN_BUF_ALLOC / 2
    }
}

/// Writes what the socket accepts without blocking; `Ok(0)` when it would block.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    loop {
        match stream.write(data) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}
