//! The host half of hybrid vsock: Unix sockets on one side, guest packets on the other.
//!
//! The muxer owns every connection and its own epoll set (the listener on `uds-path` and
//! each host stream). The device feeds it guest packets (`handle_guest_packet`) and asks it
//! for packets to deliver (`next_rx`); host socket readiness is handled in
//! `handle_host_events`. Nothing here touches guest memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use log::{debug, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::conn::{Conn, ConnState, CONN_BUF_ALLOC};
use crate::packet::*;

/// Upper bound of control packets waiting for RX buffers before TX processing pauses.
pub const MAX_CTRL_BACKLOG: usize = 4096;
/// Most concurrent connections (host- plus guest-initiated) the device keeps.
pub const MAX_CONNS: usize = 16384;
/// First host port handed out to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const LISTENER_TOKEN: u64 = 0;

/// Key of a connection: (host port, guest port).
pub type ConnKey = (u32, u32);

#[derive(Debug)]
enum Token {
    Handshake,
    Conn(ConnKey),
}

/// A host connection that has not sent its `CONNECT <port>` line yet.
#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// A control packet waiting for an RX buffer.
#[derive(Debug)]
enum Ctrl {
    /// A complete packet with no connection behind it (RST answers).
    Raw(Header),
    /// An op for a live connection; credit fields are filled in when it is sent.
    Op(ConnKey, u16, u32),
}

/// The connection table and host-side sockets of one vsock device.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<ConnKey, Conn>,
    handshakes: HashMap<u64, Handshake>,
    tokens: HashMap<u64, Token>,
    next_token: u64,
    next_local_port: u32,
    used_local_ports: HashSet<u32>,
    ctrl: VecDeque<Ctrl>,
    ready: VecDeque<ConnKey>,
}

impl Muxer {
    /// Binds the host listener at `uds_path` (replacing a stale socket file).
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Muxer> {
        if uds_path.exists() {
            std::fs::remove_file(uds_path)?;
        }
        let listener = UnixListener::bind(uds_path)?;
        set_nonblocking(listener.as_raw_fd())?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_TOKEN),
        )?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            tokens: HashMap::new(),
            next_token: 1,
            next_local_port: FIRST_LOCAL_PORT,
            used_local_ports: HashSet::new(),
            ctrl: VecDeque::new(),
            ready: VecDeque::new(),
        })
    }

    /// The muxer's epoll fd: readable whenever a host socket needs attention.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of live connections.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether there is something to deliver to the guest.
    pub fn has_rx(&self) -> bool {
        !self.ctrl.is_empty() || !self.ready.is_empty()
    }

    /// Whether TX processing should pause until the guest drains RX.
    pub fn tx_blocked(&self) -> bool {
        self.ctrl.len() >= MAX_CTRL_BACKLOG
    }

    /// Drops every connection (device reset or frontend gone).
    pub fn reset(&mut self) {
        for (_, c) in self.conns.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        for (_, h) in self.handshakes.drain() {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                h.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.tokens.clear();
        self.used_local_ports.clear();
        self.ctrl.clear();
        self.ready.clear();
    }

    fn alloc_token(&mut self, t: Token) -> u64 {
        let tok = self.next_token;
        self.next_token += 1;
        self.tokens.insert(tok, t);
        tok
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            if c.interest != u32::MAX {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    c.stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
            self.tokens.remove(&c.token);
            if c.local_port >= FIRST_LOCAL_PORT {
                self.used_local_ports.remove(&c.local_port);
            }
            debug!("vsock: closed {}:{}", c.local_port, c.peer_port);
        }
    }

    /// Resets a connection: RST to the guest and the host stream closed.
    fn reset_conn(&mut self, key: ConnKey) {
        if self.conns.contains_key(&key) {
            let mut h = Header::to_guest(self.guest_cid, key.0, key.1, OP_RST);
            h.buf_alloc = CONN_BUF_ALLOC;
            self.ctrl.push_back(Ctrl::Raw(h));
            self.remove_conn(key);
        }
    }

    /// Re-registers the connection's epoll interest after its state changed.
    fn update_interest(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let want_in = c.wants_read() && !c.in_ready;
        let want_out = c.pending_len() > 0;
        if c.hup {
            // Hung-up sockets stay out of epoll (they would fire forever); poll them directly.
            if want_in {
                c.in_ready = true;
                self.ready.push_back(key);
            }
            if want_out {
                if let Err(e) = c.flush() {
                    debug!("vsock: host write {}:{}: {e}", key.0, key.1);
                    self.reset_conn(key);
                    return;
                }
            }
            if c.close_done() {
                self.reset_conn(key);
            }
            return;
        }
        let mut ev = EventSet::empty();
        if want_in {
            ev |= EventSet::IN;
        }
        if want_out {
            ev |= EventSet::OUT;
        }
        let bits = ev.bits();
        if bits == c.interest {
            return;
        }
        let op = if c.interest == u32::MAX {
            ControlOperation::Add
        } else {
            ControlOperation::Modify
        };
        let fd = c.stream.as_raw_fd();
        let token = c.token;
        c.interest = bits;
        if let Err(e) = self.epoll.ctl(op, fd, EpollEvent::new(ev, token)) {
            warn!("vsock: epoll update for {}:{} failed: {e}", key.0, key.1);
            self.reset_conn(key);
        }
    }

    /// Handles one packet from the guest's TX queue. `payload` holds exactly `hdr.len`
    /// bytes. Invalid packets are answered with RST (or dropped if their source is forged).
    pub fn handle_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if let Err(e) = hdr.validate_tx(self.guest_cid, payload.len()) {
            warn!("vsock: bad packet from guest: {e}");
            match e {
                HeaderError::BadSrcCid { .. } | HeaderError::Truncated(_) => {}
                _ if hdr.op == OP_RST => {}
                _ => {
                    let key = (hdr.dst_port, hdr.src_port);
                    if hdr.dst_cid == HOST_CID && self.conns.contains_key(&key) {
                        self.reset_conn(key);
                    } else {
                        self.ctrl.push_back(Ctrl::Raw(hdr.rst_reply()));
                    }
                }
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.op == OP_REQUEST {
            self.guest_connect(hdr);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if hdr.op != OP_RST {
                debug!(
                    "vsock: op {} for unknown stream {}:{}",
                    hdr.op, key.0, key.1
                );
                self.ctrl.push_back(Ctrl::Raw(hdr.rst_reply()));
            }
            return;
        };
        let had_credit = c.peer_credit() > 0;
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        if !had_credit && c.wants_read() && !c.in_ready {
            // Credit reopened: try reading right away instead of waiting for epoll.
            c.in_ready = true;
            self.ready.push_back(key);
        }
        match hdr.op {
            OP_RESPONSE => {
                if c.state != ConnState::Connecting {
                    warn!("vsock: unexpected RESPONSE on {}:{}", key.0, key.1);
                    self.reset_conn(key);
                    return;
                }
                c.state = ConnState::Established;
                let ok = format!("OK {}\n", c.local_port);
                let mut failed = false;
                if let Err(e) = c.push_host_line(ok.as_bytes()) {
                    debug!("vsock: host gone before OK: {e}");
                    failed = true;
                }
                if !c.rx_prefix.is_empty() && !c.in_ready {
                    c.in_ready = true;
                    self.ready.push_back(key);
                }
                if failed {
                    self.reset_conn(key);
                    return;
                }
            }
            OP_RST => {
                self.remove_conn(key);
                return;
            }
            OP_SHUTDOWN => {
                c.guest_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                c.guest_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                if c.guest_shut_send && c.guest_shut_rcv {
                    // Full close: answer RST as Linux expects, but only once every guest
                    // byte reached the host (an RST now would drop what is still
                    // buffered; the host may be slower to read than the guest to close).
                    if c.flush().is_err() || c.pending_len() == 0 {
                        self.reset_conn(key);
                        return;
                    }
                    c.closing = true;
                    self.update_interest(key);
                    return;
                }
                if let Err(e) = c.flush() {
                    debug!("vsock: host write: {e}");
                    self.reset_conn(key);
                    return;
                }
            }
            OP_RW => {
                if c.state != ConnState::Established || c.guest_shut_send {
                    warn!(
                        "vsock: data on a stream not open for sending {}:{}",
                        key.0, key.1
                    );
                    self.reset_conn(key);
                    return;
                }
                if let Err(e) = c.push_guest_data(payload) {
                    warn!("vsock: stream {}:{}: {e}", key.0, key.1);
                    self.reset_conn(key);
                    return;
                }
                if c.credit_update_due() && c.pending_len() == 0 {
                    self.ctrl.push_back(Ctrl::Op(key, OP_CREDIT_UPDATE, 0));
                }
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => self.ctrl.push_back(Ctrl::Op(key, OP_CREDIT_UPDATE, 0)),
            _ => {}
        }
        self.update_interest(key);
    }

    /// Guest-initiated connection to host port `dst_port`: connect to `<uds-path>_<port>`.
    fn guest_connect(&mut self, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            warn!("vsock: duplicate REQUEST for {}:{}", key.0, key.1);
            self.reset_conn(key);
            return;
        }
        if self.conns.len() >= MAX_CONNS {
            warn!("vsock: connection limit {MAX_CONNS} reached");
            self.ctrl.push_back(Ctrl::Raw(hdr.rst_reply()));
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                debug!(
                    "vsock: guest connect to {}: {e}",
                    Path::new(&path).display()
                );
                self.ctrl.push_back(Ctrl::Raw(hdr.rst_reply()));
                return;
            }
        };
        let token = self.alloc_token(Token::Conn(key));
        let mut c = Conn::new(stream, token, key.0, key.1, ConnState::Established);
        c.peer_buf_alloc = hdr.buf_alloc;
        c.peer_fwd_cnt = hdr.fwd_cnt;
        self.conns.insert(key, c);
        self.ctrl.push_back(Ctrl::Op(key, OP_RESPONSE, 0));
        self.update_interest(key);
    }

    /// Processes readiness of host sockets (call when the epoll fd is readable).
    pub fn handle_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("vsock: epoll_wait: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let set = EventSet::from_bits_truncate(ev.events);
                self.host_event(ev.data(), set);
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn host_event(&mut self, token: u64, set: EventSet) {
        if token == LISTENER_TOKEN {
            self.accept_all();
            return;
        }
        match self.tokens.get(&token) {
            Some(Token::Handshake) => self.read_handshake(token),
            Some(Token::Conn(key)) => {
                let key = *key;
                let Some(c) = self.conns.get_mut(&key) else {
                    return;
                };
                if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    if c.interest != u32::MAX {
                        let _ = self.epoll.ctl(
                            ControlOperation::Delete,
                            c.stream.as_raw_fd(),
                            EpollEvent::default(),
                        );
                    }
                    c.hup = true;
                    c.interest = u32::MAX;
                }
                if set.contains(EventSet::OUT) || c.hup {
                    if let Err(e) = c.flush() {
                        debug!("vsock: host write {}:{}: {e}", key.0, key.1);
                        self.reset_conn(key);
                        return;
                    }
                    if c.close_done() {
                        self.reset_conn(key);
                        return;
                    }
                    if c.credit_update_due() {
                        self.ctrl.push_back(Ctrl::Op(key, OP_CREDIT_UPDATE, 0));
                    }
                }
                let c = self.conns.get_mut(&key).expect("present");
                if (set.contains(EventSet::IN) || c.hup)
                    && !c.in_ready
                    && c.state == ConnState::Established
                {
                    c.in_ready = true;
                    self.ready.push_back(key);
                }
                self.update_interest(key);
            }
            None => {}
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() + self.handshakes.len() >= MAX_CONNS {
                        warn!(
                            "vsock: connection limit {MAX_CONNS} reached, refusing host connection"
                        );
                        continue;
                    }
                    if set_nonblocking(stream.as_raw_fd()).is_err() {
                        continue;
                    }
                    let token = self.alloc_token(Token::Handshake);
                    if let Err(e) = self.epoll.ctl(
                        ControlOperation::Add,
                        stream.as_raw_fd(),
                        EpollEvent::new(EventSet::IN, token),
                    ) {
                        warn!("vsock: epoll add: {e}");
                        self.tokens.remove(&token);
                        continue;
                    }
                    self.handshakes.insert(
                        token,
                        Handshake {
                            stream,
                            buf: Vec::new(),
                        },
                    );
                    // The line is often there already.
                    self.read_handshake(token);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("vsock: accept on {}: {e}", self.uds_path.display());
                    return;
                }
            }
        }
    }

    fn drop_handshake(&mut self, token: u64) {
        if let Some(h) = self.handshakes.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                h.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.tokens.remove(&token);
    }

    fn read_handshake(&mut self, token: u64) {
        let Some(h) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut tmp = [0u8; 128];
        let n = match h.stream.read(&mut tmp) {
            Ok(0) => {
                self.drop_handshake(token);
                return;
            }
            Ok(n) => n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                return
            }
            Err(_) => {
                self.drop_handshake(token);
                return;
            }
        };
        h.buf.extend_from_slice(&tmp[..n]);
        let (port, used) = match parse_connect_line(&h.buf) {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                warn!("vsock: host handshake rejected: {e}");
                self.drop_handshake(token);
                return;
            }
        };
        let Some(h) = self.handshakes.remove(&token) else {
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            h.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        let Some(local) = self.alloc_local_port(port) else {
            warn!("vsock: no free host port");
            self.tokens.remove(&token);
            return;
        };
        let key = (local, port);
        self.tokens.insert(token, Token::Conn(key));
        let mut c = Conn::new(h.stream, token, local, port, ConnState::Connecting);
        c.rx_prefix = h.buf[used..].to_vec();
        self.conns.insert(key, c);
        self.used_local_ports.insert(local);
        self.ctrl.push_back(Ctrl::Op(key, OP_REQUEST, 0));
        self.update_interest(key);
    }

    fn alloc_local_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..MAX_CONNS * 2 {
            let p = self.next_local_port;
            self.next_local_port = if p == u32::MAX {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            if !self.used_local_ports.contains(&p) && !self.conns.contains_key(&(p, peer)) {
                return Some(p);
            }
        }
        None
    }

    fn fill_credit(&mut self, key: ConnKey, h: &mut Header) {
        if let Some(c) = self.conns.get_mut(&key) {
            h.buf_alloc = CONN_BUF_ALLOC;
            h.fwd_cnt = c.fwd_cnt;
            c.fwd_cnt_reported = c.fwd_cnt;
        }
    }

    /// Produces the next packet for the guest. Payload bytes (at most `max_payload`) go to
    /// `out`, whose length is the packet's `len`. Returns `None` when nothing is ready.
    pub fn next_rx(&mut self, max_payload: usize, out: &mut Vec<u8>) -> Option<Header> {
        out.clear();
        loop {
            if let Some(ctrl) = self.ctrl.pop_front() {
                match ctrl {
                    Ctrl::Raw(h) => return Some(h),
                    Ctrl::Op(key, op, flags) => {
                        if !self.conns.contains_key(&key) {
                            continue;
                        }
                        let mut h = Header::to_guest(self.guest_cid, key.0, key.1, op);
                        h.flags = flags;
                        self.fill_credit(key, &mut h);
                        return Some(h);
                    }
                }
            }
            let key = self.ready.pop_front()?;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.in_ready = false;
            if !c.wants_read() || max_payload == 0 {
                self.update_interest(key);
                if max_payload == 0 {
                    return None;
                }
                continue;
            }
            let want = (c.peer_credit() as usize)
                .min(max_payload)
                .min(MAX_PKT_PAYLOAD as usize);
            let n = if !c.rx_prefix.is_empty() {
                let n = want.min(c.rx_prefix.len());
                out.extend_from_slice(&c.rx_prefix[..n]);
                c.rx_prefix.drain(..n);
                Ok(n)
            } else {
                out.resize(want, 0);
                read_some(&mut c.stream, out)
            };
            match n {
                Ok(0) => {
                    out.clear();
                    c.host_eof = true;
                    let flags = if c.hup {
                        SHUTDOWN_SEND | SHUTDOWN_RCV
                    } else {
                        SHUTDOWN_SEND
                    };
                    self.ctrl.push_back(Ctrl::Op(key, OP_SHUTDOWN, flags));
                    self.update_interest(key);
                }
                Ok(n) => {
                    out.truncate(n);
                    c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                    c.in_ready = true;
                    self.ready.push_back(key);
                    let mut h = Header::to_guest(self.guest_cid, key.0, key.1, OP_RW);
                    h.len = n as u32;
                    self.fill_credit(key, &mut h);
                    return Some(h);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    out.clear();
                    self.update_interest(key);
                }
                Err(e) => {
                    out.clear();
                    debug!("vsock: host read {}:{}: {e}", key.0, key.1);
                    self.reset_conn(key);
                }
            }
        }
    }
}

impl Conn {
    /// Writes a short handshake line to the host socket (fresh socket: always fits).
    pub fn push_host_line(&mut self, line: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let n = self.stream.write(line)?;
        if n != line.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short handshake write",
            ));
        }
        Ok(())
    }
}

fn read_some(stream: &mut UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Sets O_NONBLOCK with fcntl (std's `set_nonblocking` uses the FIONBIO ioctl, which the
/// seccomp policy does not allow).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a caller-owned fd; results checked.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Connects to a listening Unix socket without ever blocking (a full backlog is an error).
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created by socket() and is owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of `len` bytes and fd is a live socket.
    let rc = unsafe {
        libc::connect(
            fd,
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}
