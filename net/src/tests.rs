//! Device tests against a real TAP inside a network namespace each test creates.

use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::*;
use vm_memory::GuestMemoryAtomic;

use crate::device::*;
use crate::frame::*;
use crate::guestq::{guest_memory, GuestQueue};

const GMAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);

/// A network namespace entered by the current (test) thread; deleted on drop.
struct Netns {
    name: String,
    orig: std::fs::File,
}

impl Netns {
    fn enter() -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "cordon-net-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let st = Command::new("ip").args(["netns", "add", &name]).status().unwrap_or_else(|e| {
            panic!("`ip` not found ({e}): install iproute2 (bash scripts/setup or apt-get install iproute2)")
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
        // SAFETY: back to the namespace we came from.
        unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) };
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

struct Guest {
    dev: NetDevice,
    rxq: Vec<GuestQueue>,
    txq: Vec<GuestQueue>,
    vrings: Vec<VringRwLock>,
    rx_len: u32,
}

fn acked(mrg: bool, csum: bool) -> u64 {
    let mut f = 1u64 << VIRTIO_F_VERSION_1;
    if mrg {
        f |= 1 << VIRTIO_NET_F_MRG_RXBUF;
    }
    if csum {
        f |= (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_TSO4);
    }
    f
}

impl Guest {
    fn new(cfg: NetConfig, features: u64, size: u16, rx_len: u32) -> Guest {
        let pairs = cfg.queue_pairs;
        let dev = NetDevice::new(cfg).expect("net device (needs root for /dev/net/tun)");
        let slot = (rx_len as u64).max(VNET_HDR_LEN as u64 + MAX_FRAME as u64);
        let (mem, bases) = guest_memory(2 * pairs, size, slot);
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let mut rxq = Vec::new();
        let mut txq = Vec::new();
        let mut vrings = Vec::new();
        for i in 0..pairs {
            let r = GuestQueue::new(&mem, bases[2 * i], size, slot);
            let t = GuestQueue::new(&mem, bases[2 * i + 1], size, slot);
            vrings.push(r.vring(&atomic));
            vrings.push(t.vring(&atomic));
            rxq.push(r);
            txq.push(t);
        }
        assert_eq!(
            dev.features() & features,
            features,
            "device offers the features"
        );
        dev.acked_features(features);
        dev.update_memory(atomic).unwrap();
        let mut g = Guest {
            dev,
            rxq,
            txq,
            vrings,
            rx_len,
        };
        for i in 0..pairs {
            g.refill(i);
        }
        g
    }

    fn refill(&mut self, pair: usize) {
        while self.rxq[pair].free_count() > 0 {
            self.rxq[pair].add(&[Err(self.rx_len)]);
        }
        self.dev.process((2 * pair) as u16, &self.vrings).unwrap();
    }

    fn send(&mut self, pair: usize, hdr: VnetHdr, frame: &[u8]) {
        let mut b = hdr.encode().to_vec();
        b.extend_from_slice(frame);
        self.txq[pair]
            .add(&[Ok(&b[..VNET_HDR_LEN]), Ok(&b[VNET_HDR_LEN..])])
            .unwrap();
        self.dev
            .process((2 * pair + 1) as u16, &self.vrings)
            .unwrap();
        assert_eq!(self.txq[pair].take_used().len(), 1, "TX buffer returned");
    }

    /// Waits for TAP traffic and returns delivered frames (vnet header, frame); merged
    /// buffers are joined using num_buffers.
    fn recv(&mut self, pair: usize, timeout_ms: i32) -> Vec<(VnetHdr, Vec<u8>)> {
        let mut p = libc::pollfd {
            fd: self.dev.host_event_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, timeout_ms) };
        self.dev
            .process(self.dev.host_event(), &self.vrings)
            .unwrap();
        let used = self.rxq[pair].take_used();
        let mut out = Vec::new();
        let mut it = used.into_iter();
        while let Some((_, b)) = it.next() {
            let mut h = [0u8; VNET_HDR_LEN];
            h.copy_from_slice(&b[..VNET_HDR_LEN]);
            let vh = VnetHdr::decode(&h);
            let mut frame = b[VNET_HDR_LEN..].to_vec();
            for _ in 1..vh.num_buffers {
                frame.extend_from_slice(&it.next().expect("merged buffer").1);
            }
            out.push((vh, frame));
        }
        self.refill(pair);
        out
    }

    /// Receives until `pred` matches a frame on any queue pair (a multi-queue TAP picks the
    /// queue of each host frame by its flow hash); answers the kernel's ARP requests
    /// meanwhile, on the pair they came from.
    fn recv_until(&mut self, pred: impl Fn(&[u8]) -> bool) -> (VnetHdr, Vec<u8>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pairs = self.rxq.len();
        for round in 0.. {
            let pair = round % pairs;
            assert!(
                Instant::now() < deadline,
                "expected frame never arrived on RX"
            );
            let timeout_ms = 200 / pairs as i32;
            for (h, f) in self.recv(pair, timeout_ms) {
                if pred(&f) {
                    return (h, f);
                }
                if is_arp(&f, 1) && f[38..42] == GUEST.octets() {
                    let reply = arp(
                        2,
                        &f[6..12],
                        GUEST,
                        &f[22..28],
                        Ipv4Addr::new(f[28], f[29], f[30], f[31]),
                    );
                    self.send(pair, VnetHdr::default(), &reply);
                }
            }
        }
        unreachable!("the deadline ends the loop")
    }
}

fn tap_cfg(name: &str, pairs: usize) -> NetConfig {
    NetConfig {
        tap: TapSource::Create {
            name: name.into(),
            host_ip: Some(HOST),
            netmask: Some(Ipv4Addr::new(255, 255, 255, 0)),
        },
        mac: Some(GMAC),
        queue_pairs: pairs,
    }
}

fn eth(dst: &[u8], src: &[u8], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(dst);
    f.extend_from_slice(src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn arp(op: u16, dst_mac: &[u8], spa: Ipv4Addr, tha: &[u8], tpa: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&GMAC);
    a.extend_from_slice(&spa.octets());
    a.extend_from_slice(tha);
    a.extend_from_slice(&tpa.octets());
    eth(dst_mac, &GMAC, 0x0806, &a)
}

fn is_arp(f: &[u8], op: u16) -> bool {
    f.len() >= 42 && f[12..14] == [8, 6] && f[20..22] == op.to_be_bytes()
}

fn csum(data: &[u8], init: u32) -> u16 {
    let mut s = init;
    for c in data.chunks(2) {
        s += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn ipv4(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&h, 0);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]); // checksum 0 = none (IPv4)
    u.extend_from_slice(payload);
    u
}

fn host_mac(g: &mut Guest) -> Vec<u8> {
    g.send(
        0,
        VnetHdr::default(),
        &arp(1, &[0xff; 6], GUEST, &[0; 6], HOST),
    );
    let (_, f) = g.recv_until(|f| is_arp(f, 2) && f[28..32] == HOST.octets());
    assert_eq!(&f[32..38], &GMAC, "ARP reply addressed to the guest");
    f[22..28].to_vec()
}

fn is_udp_to(f: &[u8], port: u16) -> bool {
    f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 17 && f[36..38] == port.to_be_bytes()
}

#[test]
fn arp_icmp_udp_both_directions() {
    let _ns = Netns::enter();
    let mut g = Guest::new(tap_cfg("ctap0", 1), acked(true, false), 64, 2048);
    assert_eq!(g.dev.tap_name(), "ctap0");
    // ARP request answered by the host stack.
    let hmac = host_mac(&mut g);
    // ICMP echo request; the reply comes back on RX.
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"cordon-ping");
    let c = csum(&icmp, 0);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    g.send(
        0,
        VnetHdr::default(),
        &eth(&hmac, &GMAC, 0x0800, &ipv4(1, GUEST, HOST, &icmp)),
    );
    let (_, f) = g.recv_until(|f| f.len() > 42 && f[12..14] == [8, 0] && f[23] == 1 && f[34] == 0);
    assert_eq!(&f[38..40], &[0x12, 0x34], "echo reply carries our id");
    assert!(f.ends_with(b"cordon-ping"));
    // UDP to a host socket.
    let sock = UdpSocket::bind((HOST, 5555)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.send(
        0,
        VnetHdr::default(),
        &eth(
            &hmac,
            &GMAC,
            0x0800,
            &ipv4(17, GUEST, HOST, &udp(4444, 5555, b"to-host")),
        ),
    );
    let mut b = [0u8; 64];
    let (n, from) = sock.recv_from(&mut b).unwrap();
    assert_eq!(&b[..n], b"to-host");
    assert_eq!(from, (GUEST, 4444).into());
    // Host traffic arrives on RX, including a frame larger than one RX buffer (merged).
    sock.send_to(b"to-guest", (GUEST, 4444)).unwrap();
    let (_, f) = g.recv_until(|f| is_udp_to(f, 4444));
    assert!(f.ends_with(b"to-guest"));
    let big: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
    sock.send_to(&big, (GUEST, 4444)).unwrap();
    let (h, f) = g.recv_until(|f| is_udp_to(f, 4444));
    assert!(h.num_buffers >= 1);
    assert_eq!(&f[42..], &big[..]);
    assert_eq!(g.dev.error_counts(), (0, 0));
}

#[test]
fn full_rx_queue_back_pressures_then_delivers_everything_in_order() {
    let _ns = Netns::enter();
    let mut g = Guest::new(tap_cfg("ctap1", 1), acked(true, false), 8, 2048);
    let hmac = host_mac(&mut g);
    let _ = hmac;
    let sock = UdpSocket::bind((HOST, 6000)).unwrap();
    // Take every RX buffer away by letting the queue fill: guest stops refilling.
    for i in 0..40u32 {
        sock.send_to(&i.to_be_bytes(), (GUEST, 7000)).unwrap();
    }
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut rounds = 0;
    while got.len() < 40 {
        assert!(
            Instant::now() < deadline,
            "only {} of 40 datagrams",
            got.len()
        );
        let mut p = libc::pollfd {
            fd: g.dev.host_event_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 100) };
        g.dev.process(g.dev.host_event(), &g.vrings).unwrap();
        // The device stops at 8 buffers: it must not mark more used, nor busy-loop.
        let used = g.rxq[0].take_used();
        assert!(used.len() <= 8);
        for (_, b) in used {
            let f = &b[VNET_HDR_LEN..];
            if is_udp_to(f, 7000) {
                got.push(u32::from_be_bytes(f[42..46].try_into().unwrap()));
            }
        }
        if rounds % 2 == 1 {
            // With an empty ring the TAP fd must be out of the interest set (no spinning).
            let mut p = libc::pollfd {
                fd: g.dev.host_event_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, 0) };
            assert_eq!(r, 0, "epoll must not report the TAP while RX is full");
        }
        rounds += 1;
        if rounds % 2 == 0 {
            g.refill(0);
        }
    }
    assert_eq!(
        got,
        (0..40).collect::<Vec<_>>(),
        "no datagram lost or reordered"
    );
}

/// Host→guest bulk TCP found this under a real guest (bench/results/guest.md): with
/// EVENT_IDX and merged RX buffers, a frame needing more buffers than the guest has posted
/// made the device spin (re-arming saw the posted-but-rewound buffers as new ones) without
/// ever signalling the frames it had already delivered, so the guest never refilled.
#[test]
fn event_idx_frame_larger_than_posted_buffers_waits_for_a_kick_without_spinning() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use vhost_user_backend::VringT;
    let _ns = Netns::enter();
    let features =
        acked(true, false) | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
    let mut g = Guest::new(tap_cfg("ctap9", 1), features, 16, 256);
    for v in &g.vrings {
        v.set_queue_event_idx(true);
    }
    g.dev.set_event_idx(true);
    let _ = host_mac(&mut g);
    let sock = UdpSocket::bind((HOST, 6100)).unwrap();
    // 1400-byte datagrams: 1454 bytes with the vnet header, 6 buffers of 256 each; 16
    // posted buffers hold two of them and leave a partial set for the third.
    for i in 0..3u8 {
        sock.send_to(&[i; 1400], (GUEST, 7100)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    // A spinning device never returns from process(): fail loudly instead of hanging.
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(20));
            if !done.load(Ordering::SeqCst) {
                eprintln!("net device spun in process_rx with a partial set of RX buffers");
                std::process::abort();
            }
        })
    };
    g.dev.process(g.dev.host_event(), &g.vrings).unwrap();
    done.store(true, Ordering::SeqCst);
    drop(watchdog);
    let first = g.rxq[0].take_used();
    let udp = |used: &[(u16, Vec<u8>)]| {
        used.iter()
            .filter(|(_, b)| b.len() > VNET_HDR_LEN && is_udp_to(&b[VNET_HDR_LEN..], 7100))
            .count()
    };
    assert_eq!(
        udp(&first),
        2,
        "two frames fit the posted buffers, the third waits"
    );
    // The device asked for a kick on the very next buffer the guest adds.
    let idx = g.rxq[0].avail_idx();
    assert_eq!(g.rxq[0].avail_event(), idx);
    assert!(g.rxq[0].would_kick(true, idx, idx.wrapping_add(1)));
    // The guest refills (and kicks): the waiting frame arrives, whole.
    let (h, f) = g.recv_until(|f| is_udp_to(f, 7100));
    assert_eq!(h.num_buffers, 6);
    assert_eq!(&f[42..], &[2u8; 1400][..]);
}

#[test]
fn malformed_tx_frames_are_refused_and_device_keeps_working() {
    let _ns = Netns::enter();
    let mut g = Guest::new(tap_cfg("ctap2", 1), acked(true, false), 32, 2048);
    let hmac = host_mac(&mut g);
    // Too short: 12-byte header + 4 bytes.
    g.txq[0].add(&[Ok(&[0u8; 16])]).unwrap();
    // Unknown GSO type.
    let bad = VnetHdr {
        gso_type: 9,
        ..Default::default()
    };
    let mut b = bad.encode().to_vec();
    b.extend_from_slice(&[0u8; 60]);
    g.txq[0].add(&[Ok(&b)]).unwrap();
    // Checksum offset outside the frame.
    let bad = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 500,
        csum_offset: 6,
        ..Default::default()
    };
    let mut b = bad.encode().to_vec();
    b.extend_from_slice(&[0u8; 60]);
    g.txq[0].add(&[Ok(&b)]).unwrap();
    g.dev.process(1, &g.vrings).unwrap();
    assert_eq!(g.txq[0].take_used().len(), 3, "bad frames are consumed");
    assert_eq!(g.dev.error_counts().0, 3, "and counted");
    let sock = UdpSocket::bind((HOST, 5556)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    g.send(
        0,
        VnetHdr::default(),
        &eth(
            &hmac,
            &GMAC,
            0x0800,
            &ipv4(17, GUEST, HOST, &udp(1, 5556, b"ok")),
        ),
    );
    let mut r = [0u8; 8];
    assert_eq!(sock.recv(&mut r).unwrap(), 2);
}

#[test]
fn checksum_offload_via_vnet_header_and_tunsetoffload() {
    let _ns = Netns::enter();
    let mut g = Guest::new(tap_cfg("ctap3", 1), acked(true, true), 32, 2048);
    let hmac = host_mac(&mut g);
    let sock = UdpSocket::bind((HOST, 5557)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // TX: UDP with only the pseudo-header sum filled in and NEEDS_CSUM: the kernel finishes it.
    let payload = b"partial-checksum";
    let mut u = udp(9, 5557, payload);
    let len = u.len() as u32;
    let mut ph = 0u32;
    for w in [GUEST.octets(), HOST.octets()] {
        ph += u16::from_be_bytes([w[0], w[1]]) as u32 + u16::from_be_bytes([w[2], w[3]]) as u32;
    }
    ph += 17 + len;
    while ph > 0xffff {
        ph = (ph & 0xffff) + (ph >> 16);
    }
    u[6..8].copy_from_slice(&(ph as u16).to_be_bytes());
    let h = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..Default::default()
    };
    g.send(0, h, &eth(&hmac, &GMAC, 0x0800, &ipv4(17, GUEST, HOST, &u)));
    let mut r = [0u8; 64];
    let n = sock
        .recv(&mut r)
        .expect("offloaded-checksum datagram delivered");
    assert_eq!(&r[..n], payload);
    // RX: with GUEST_CSUM acked the TAP passes partial checksums up (NEEDS_CSUM set).
    sock.send_to(b"x", (GUEST, 4000)).unwrap();
    let (h, _) = g.recv_until(|f| is_udp_to(f, 4000));
    assert_eq!(
        h.flags & F_NEEDS_CSUM,
        F_NEEDS_CSUM,
        "TUNSETOFFLOAD(CSUM) in effect"
    );
    // Without GUEST_CSUM the kernel completes checksums itself.
    drop(g);
    let mut g = Guest::new(tap_cfg("ctap4", 1), acked(true, false), 32, 2048);
    let _ = host_mac(&mut g);
    let s2 = UdpSocket::bind(("10.77.0.1", 0)).unwrap();
    s2.send_to(b"y", (GUEST, 4001)).unwrap();
    let (h, _) = g.recv_until(|f| is_udp_to(f, 4001));
    assert_eq!(h.flags & F_NEEDS_CSUM, 0);
}

#[test]
fn multiqueue_and_handed_over_tap_fd() {
    let _ns = Netns::enter();
    let mut g = Guest::new(tap_cfg("ctapmq", 2), acked(true, false), 32, 2048);
    assert_ne!(g.dev.features() & (1 << VIRTIO_NET_F_MQ), 0);
    assert_eq!(
        &g.dev.get_config(8, 2),
        &2u16.to_le_bytes(),
        "max_virtqueue_pairs"
    );
    assert_eq!(&g.dev.get_config(0, 6), &GMAC, "mac in config");
    let hmac = host_mac(&mut g);
    let sock = UdpSocket::bind((HOST, 5558)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for pair in 0..2 {
        let msg = format!("via-pair-{pair}");
        g.send(
            pair,
            VnetHdr::default(),
            &eth(
                &hmac,
                &GMAC,
                0x0800,
                &ipv4(17, GUEST, HOST, &udp(1, 5558, msg.as_bytes())),
            ),
        );
        let mut r = [0u8; 32];
        let n = sock.recv(&mut r).unwrap();
        assert_eq!(&r[..n], msg.as_bytes());
    }
    drop(g);
    // tap-fd: a parent opens the TAP, the device adopts the fd.
    let tap = crate::tap::Tap::create("ctapfd", 1).unwrap();
    tap.configure(Some(HOST), Some(Ipv4Addr::new(255, 255, 255, 0)))
        .unwrap();
    // SAFETY: dup of a live fd; the device takes ownership of the copy.
    let fd = unsafe { libc::dup(tap.fd(0)) };
    let cfg = NetConfig {
        tap: TapSource::Fd(fd),
        mac: Some(GMAC),
        queue_pairs: 1,
    };
    let mut g = Guest::new(cfg, acked(true, false), 32, 2048);
    let _ = host_mac(&mut g);
    // A non-TAP fd is refused with a clear error.
    let f = std::fs::File::open("/dev/null").unwrap();
    let fd = f.as_raw_fd();
    std::mem::forget(f);
    let err = NetDevice::new(NetConfig {
        tap: TapSource::Fd(fd),
        mac: None,
        queue_pairs: 1,
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("not a TAP"), "{err}");
}
