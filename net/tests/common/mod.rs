//! Helpers shared by the jailed-binary net tests (also used by cli/tests/devices_net.rs):
//! a network namespace the test creates, the guest side of a virtio-net device driven
//! through the vhost-user frontend library, and frame builders.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cordon_frontend::vhost_user::{Buffer, DriverConfig, VhostUserDriver};
use vm_memory::GuestAddress;

/// Guest MAC used by every test.
pub const GMAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
/// virtio-net header length with VERSION_1.
pub const VNET_HDR_LEN: usize = 12;
/// VIRTIO_NET_F_MAC.
pub const F_MAC: u64 = 1 << 5;
/// VIRTIO_NET_F_MRG_RXBUF.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// VIRTIO_NET_F_STATUS.
pub const F_STATUS: u64 = 1 << 16;
/// RX buffer size: smaller than a full frame, so large frames use merged buffers.
const RX_BUF: u32 = 1024;
const T: Duration = Duration::from_secs(10);

/// Kills and reaps a child on drop.
pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A network namespace entered by the current (test) thread, and so by every process it
/// spawns; deleted on drop.
pub struct Netns {
    name: String,
    orig: std::fs::File,
}

impl Netns {
    /// `ip netns add` a fresh namespace and enter it (this thread only).
    pub fn enter() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cordon-netj-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap_or_else(|e| {
                panic!("`ip` not found ({e}): apt-get install iproute2 (bash scripts/setup)")
            });
        assert!(
            st.success(),
            "ip netns add {name} failed (tests need root and iproute2)"
        );
        let orig = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        let ns = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        // SAFETY: setns on valid namespace fds; affects only this thread.
        let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        Netns { name, orig }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // SAFETY: back to the namespace this thread came from.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Follows the single-child chain below `pid` to its leaf (the jailed device process).
pub fn leaf_descendant(mut pid: u32) -> u32 {
    loop {
        let kids: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        match kids.as_slice() {
            [only] => pid = *only,
            _ => return pid,
        }
    }
}

/// `Key:` field of /proc/`pid`/status.
pub fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// Asserts that `pid` runs under a seccomp filter, without privileges, in its own network
/// namespace (so it cannot reach any interface, only the TAP fd it holds).
pub fn assert_jailed(pid: u32) {
    assert_eq!(
        status_field(pid, "Seccomp:"),
        "2",
        "pid {pid}: seccomp filter"
    );
    assert_eq!(
        status_field(pid, "NoNewPrivs:"),
        "1",
        "pid {pid}: no_new_privs"
    );
    assert_eq!(
        status_field(pid, "CapEff:"),
        "0000000000000000",
        "pid {pid}: no capabilities"
    );
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    assert_ne!(theirs, ours, "pid {pid}: own network namespace");
}

/// The guest's side of the net device: RX buffers posted, frames sent on TX.
pub struct Guest {
    /// The frontend driver.
    pub drv: VhostUserDriver,
    rx: HashMap<u16, GuestAddress>,
    tx: GuestAddress,
    /// Used RX buffers not yet joined into a frame (a merged frame still arriving).
    pending: Vec<Vec<u8>>,
    /// Guest IPv4 address (ARP requests for it are answered).
    pub ip: Ipv4Addr,
}

impl Guest {
    /// Connects to the backend at `sock`, acks MAC/STATUS/MRG_RXBUF, posts 64 RX buffers.
    pub fn connect(sock: &Path, ip: Ipv4Addr) -> Guest {
        let cfg = DriverConfig::new(2).with_features(F_MAC | F_STATUS | F_MRG_RXBUF);
        let drv = VhostUserDriver::connect(sock, cfg).expect("vhost-user connect");
        let mut g = Guest {
            drv,
            rx: HashMap::new(),
            tx: GuestAddress(0),
            pending: Vec::new(),
            ip,
        };
        g.tx = g.drv.alloc(VNET_HDR_LEN + 65536).unwrap();
        for _ in 0..64 {
            let a = g.drv.alloc(RX_BUF as usize).unwrap();
            g.post(a);
        }
        g
    }

    fn post(&mut self, a: GuestAddress) {
        let head = self
            .drv
            .submit(
                0,
                &[Buffer {
                    addr: a,
                    len: RX_BUF,
                    writable: true,
                }],
            )
            .unwrap();
        self.rx.insert(head, a);
    }

    /// Sends one frame (zero vnet header) and waits for the TX completion.
    pub fn send(&mut self, frame: &[u8]) {
        let mut b = vec![0u8; VNET_HDR_LEN];
        b.extend_from_slice(frame);
        self.drv.write(self.tx, &b).unwrap();
        let head = self
            .drv
            .submit(
                1,
                &[Buffer {
                    addr: self.tx,
                    len: b.len() as u32,
                    writable: false,
                }],
            )
            .unwrap();
        self.drv.wait_for(1, head, T).expect("TX completion");
    }

    /// Frames received within `timeout` (merged buffers joined), RX buffers re-posted.
    pub fn recv(&mut self, timeout: Duration) -> Vec<Vec<u8>> {
        let used = self.drv.wait(0, timeout).unwrap_or_default();
        // Read every completed buffer before re-posting: re-posting reuses descriptor ids.
        let mut free = Vec::new();
        for u in used {
            let a = self.rx.remove(&u.head).expect("known RX buffer");
            self.pending.push(self.drv.read(a, u.len as usize).unwrap());
            free.push(a);
        }
        for a in free {
            self.post(a);
        }
        let mut out = Vec::new();
        while let Some(b) = self.pending.first() {
            assert!(b.len() >= VNET_HDR_LEN, "RX buffer shorter than the header");
            let n = u16::from_le_bytes([b[10], b[11]]).max(1) as usize;
            if self.pending.len() < n {
                break; // the rest of a merged frame is still on its way
            }
            let mut parts = self.pending.drain(..n);
            let mut f = parts
                .next()
                .map(|b| b[VNET_HDR_LEN..].to_vec())
                .unwrap_or_default();
            for p in parts {
                f.extend_from_slice(&p);
            }
            out.push(f);
        }
        out
    }

    /// Receives until `pred` matches a frame, answering ARP requests for the guest meanwhile.
    pub fn recv_until(&mut self, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + T;
        loop {
            assert!(
                Instant::now() < deadline,
                "expected frame never arrived on RX"
            );
            for f in self.recv(Duration::from_millis(200)) {
                if pred(&f) {
                    return f;
                }
                if is_arp(&f, 1) && f[38..42] == self.ip.octets() {
                    let spa = Ipv4Addr::new(f[28], f[29], f[30], f[31]);
                    let reply = arp(2, &f[6..12], self.ip, &f[22..28], spa);
                    self.send(&reply);
                }
            }
        }
    }

    /// ARP-resolves `host` through the device; returns its MAC.
    pub fn resolve(&mut self, host: Ipv4Addr) -> Vec<u8> {
        let ip = self.ip;
        self.send(&arp(1, &[0xff; 6], ip, &[0; 6], host));
        let f = self.recv_until(|f| is_arp(f, 2) && f[28..32] == host.octets());
        assert_eq!(&f[32..38], &GMAC, "ARP reply addressed to the guest");
        f[22..28].to_vec()
    }
}

/// Ethernet frame from the guest MAC.
pub fn eth(dst: &[u8], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&GMAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// ARP packet from the guest.
pub fn arp(op: u16, dst_mac: &[u8], spa: Ipv4Addr, tha: &[u8], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&GMAC);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(tha);
    a.extend_from_slice(&tpa.octets());
    eth(dst_mac, 0x0806, &a)
}

/// Whether `f` is an ARP packet with opcode `op`.
pub fn is_arp(f: &[u8], op: u16) -> bool {
    f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == op.to_be_bytes()
}

/// Internet checksum.
pub fn csum(data: &[u8]) -> u16 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// IPv4 packet.
pub fn ipv4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

/// UDP datagram without checksum.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// ICMP echo request with `id` and `payload`.
pub fn icmp_echo(id: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&[0, 1]);
    icmp.extend_from_slice(payload);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    icmp
}

/// Whether `f` is an IPv4 UDP frame to `port`.
pub fn is_udp_to(f: &[u8], port: u16) -> bool {
    f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 17 && f[36..38] == port.to_be_bytes()
}

/// Whether `f` is an ICMP echo reply.
pub fn is_echo_reply(f: &[u8]) -> bool {
    f.len() > 42 && f[12..14] == [8, 0] && f[23] == 1 && f[34] == 0
}

/// The whole user-visible check through a running device: ARP answered by the host stack,
/// ICMP echo answered on RX, UDP to a host socket, host UDP (one buffer and merged) on RX.
pub fn exercise(g: &mut Guest, host: Ipv4Addr, port: u16) {
    let hmac = g.resolve(host);
    g.send(&eth(
        &hmac,
        0x0800,
        &ipv4(1, g.ip, host, &icmp_echo(0x4321, b"jailed-ping")),
    ));
    let f = g.recv_until(is_echo_reply);
    assert_eq!(&f[38..40], &[0x43, 0x21], "echo reply carries our id");
    assert!(f.ends_with(b"jailed-ping"));
    let sock = std::net::UdpSocket::bind((host, port)).unwrap();
    sock.set_read_timeout(Some(T)).unwrap();
    g.send(&eth(
        &hmac,
        0x0800,
        &ipv4(17, g.ip, host, &udp(4444, port, b"to-host")),
    ));
    let mut b = [0u8; 64];
    let (n, from) = sock.recv_from(&mut b).expect("datagram from the guest");
    assert_eq!(&b[..n], b"to-host");
    assert_eq!(from, (g.ip, 4444).into());
    sock.send_to(b"to-guest", (g.ip, 4444)).unwrap();
    let f = g.recv_until(|f| is_udp_to(f, 4444));
    assert!(f.ends_with(b"to-guest"));
    let big: Vec<u8> = (0..1400u32).map(|i| (i * 7) as u8).collect();
    sock.send_to(&big, (g.ip, 4445)).unwrap();
    let f = g.recv_until(|f| is_udp_to(f, 4445));
    assert_eq!(
        &f[42..],
        &big[..],
        "a frame larger than one RX buffer, merged"
    );
}
