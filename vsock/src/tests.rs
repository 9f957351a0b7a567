//! Device tests: a guest vsock stack built on real split virtqueues in guest memory, real
//! Unix sockets on the host side.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use vm_memory::GuestMemoryAtomic;

use crate::conn::CONN_BUF_ALLOC;
use crate::device::*;
use crate::guestq::{guest_memory, GuestQueue};
use crate::packet::*;

const CID: u64 = 3;

struct Guest {
    dev: std::sync::Arc<VsockDevice>,
    rxq: GuestQueue,
    txq: GuestQueue,
    vrings: Vec<VringRwLock>,
    rx_len: u32,
    dir: tempfile::TempDir,
}

impl Guest {
    fn new(size: u16, rx_len: u32) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let dev = std::sync::Arc::new(
            VsockDevice::new(VsockConfig {
                guest_cid: CID,
                uds_path: dir.path().join("v.sock"),
            })
            .unwrap(),
        );
        let slot = (rx_len as u64).max(HDR_LEN as u64 + MAX_PKT_PAYLOAD as u64);
        let (mem, bases) = guest_memory(3, size, slot);
        let rxq = GuestQueue::new(&mem, bases[0], size, slot);
        let txq = GuestQueue::new(&mem, bases[1], size, slot);
        let evq = GuestQueue::new(&mem, bases[2], size, slot);
        let atomic = GuestMemoryAtomic::new(mem);
        let vrings = vec![rxq.vring(&atomic), txq.vring(&atomic), evq.vring(&atomic)];
        dev.update_memory(atomic).unwrap();
        let mut g = Guest {
            dev,
            rxq,
            txq,
            vrings,
            rx_len,
            dir,
        };
        g.refill_rx();
        g
    }

    fn uds(&self) -> std::path::PathBuf {
        self.dir.path().join("v.sock")
    }

    fn refill_rx(&mut self) {
        while self.rxq.free_count() > 0 {
            self.rxq.add(&[Err(self.rx_len)]);
        }
    }

    fn send(&mut self, h: Header, payload: &[u8]) {
        let hb = h.encode();
        if self.txq.free_count() < 2 {
            self.dev.process(TX_QUEUE, &self.vrings).unwrap();
            self.txq.take_used();
        }
        if payload.is_empty() {
            self.txq.add(&[Ok(&hb)]).unwrap();
        } else {
            self.txq.add(&[Ok(&hb), Ok(payload)]).unwrap();
        }
        self.dev.process(TX_QUEUE, &self.vrings).unwrap();
        self.txq.take_used();
    }

    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.dev.process(RX_QUEUE, &self.vrings).unwrap();
        let out = self
            .rxq
            .take_used()
            .into_iter()
            .map(|(_, b)| {
                let h = Header::decode(&b).unwrap();
                assert_eq!(
                    h.len as usize,
                    b.len() - HDR_LEN,
                    "len matches the bytes written"
                );
                (h, b[HDR_LEN..].to_vec())
            })
            .collect();
        self.refill_rx();
        out
    }

    fn pump_host(&mut self, timeout_ms: i32) {
        let mut p = libc::pollfd {
            fd: self.dev.host_event_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, timeout_ms) };
        self.dev.process(HOST_EVENT, &self.vrings).unwrap();
    }

    fn hdr(&self, src_port: u32, dst_port: u32, op: u16) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 1 << 20,
            ..Default::default()
        }
    }
}

/// Host connects with `CONNECT port`; returns (stream, assigned host port).
fn host_connect(g: &mut Guest, port: u32, guest_port_accepts: bool) -> Option<(UnixStream, u32)> {
    let mut s = UnixStream::connect(g.uds()).unwrap();
    writeln!(s, "CONNECT {port}").unwrap();
    g.pump_host(1000);
    g.pump_host(10);
    let pk = g.recv();
    assert_eq!(pk.len(), 1, "one REQUEST: {pk:?}");
    let (h, _) = pk[0];
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.dst_port),
        (OP_REQUEST, HOST_CID, CID, port)
    );
    let reply = if guest_port_accepts {
        OP_RESPONSE
    } else {
        OP_RST
    };
    g.send(g.hdr(port, h.src_port, reply), &[]);
    let mut line = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return None,
            Ok(_) => {
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            Err(e) => panic!("reading OK line: {e}"),
        }
    }
    assert_eq!(
        String::from_utf8(line).unwrap(),
        format!("OK {}\n", h.src_port)
    );
    Some((s, h.src_port))
}

#[test]
fn host_initiated_stream_both_directions() {
    let mut g = Guest::new(64, 4096);
    let (mut s, hp) = host_connect(&mut g, 52, true).expect("connected");
    // Guest -> host.
    g.send(
        Header {
            len: 5,
            ..g.hdr(52, hp, OP_RW)
        },
        b"hello",
    );
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    // Host -> guest.
    s.write_all(b"world!").unwrap();
    g.pump_host(1000);
    let pk = g.recv();
    assert_eq!(pk.len(), 1);
    assert_eq!(
        (pk[0].0.op, pk[0].0.src_port, pk[0].0.dst_port),
        (OP_RW, hp, 52)
    );
    assert_eq!(pk[0].1, b"world!");
    assert_eq!(pk[0].0.buf_alloc, CONN_BUF_ALLOC);
    assert_eq!(pk[0].0.fwd_cnt, 5, "fwd_cnt counts forwarded guest bytes");
    // Host closes: the guest sees a SHUTDOWN, answers RST, the stream is gone.
    drop(s);
    g.pump_host(1000);
    let pk = g.recv();
    assert_eq!(pk.len(), 1, "{pk:?}");
    assert_eq!(pk[0].0.op, OP_SHUTDOWN);
    assert_eq!(pk[0].0.flags & SHUTDOWN_SEND, SHUTDOWN_SEND);
    g.send(g.hdr(52, hp, OP_RST), &[]);
    assert_eq!(g.dev.conn_count(), 0);
}

#[test]
fn host_connect_refused_by_guest_closes_host_socket() {
    let mut g = Guest::new(16, 4096);
    assert!(
        host_connect(&mut g, 99, false).is_none(),
        "RST from the guest closes the host stream"
    );
    assert_eq!(g.dev.conn_count(), 0);
}

#[test]
fn bad_handshake_is_rejected() {
    let mut g = Guest::new(16, 4096);
    let mut s = UnixStream::connect(g.uds()).unwrap();
    s.write_all(b"HELLO 5\n").unwrap();
    g.pump_host(1000);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(
        s.read(&mut b).unwrap(),
        0,
        "device closed the bad handshake"
    );
    assert!(g.recv().is_empty(), "nothing reaches the guest");
}

#[test]
fn guest_initiated_stream_and_refusal() {
    let mut g = Guest::new(64, 4096);
    let mut p = g.uds().into_os_string();
    p.push("_1234");
    let l = UnixListener::bind(&p).unwrap();
    g.send(g.hdr(40000, 1234, OP_REQUEST), &[]);
    let pk = g.recv();
    assert_eq!(pk.len(), 1);
    assert_eq!(
        (pk[0].0.op, pk[0].0.src_port, pk[0].0.dst_port),
        (OP_RESPONSE, 1234, 40000)
    );
    let (mut s, _) = l.accept().unwrap();
    g.send(
        Header {
            len: 3,
            ..g.hdr(40000, 1234, OP_RW)
        },
        b"abc",
    );
    let mut b = [0u8; 3];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"abc");
    s.write_all(b"xyz").unwrap();
    g.pump_host(1000);
    let pk = g.recv();
    assert_eq!(pk[0].1, b"xyz");
    // Guest half-closes its sending side: host reads EOF but can still write.
    g.send(
        Header {
            flags: SHUTDOWN_SEND,
            ..g.hdr(40000, 1234, OP_SHUTDOWN)
        },
        &[],
    );
    assert_eq!(
        s.read(&mut b).unwrap(),
        0,
        "host sees EOF after guest SHUTDOWN(SEND)"
    );
    s.write_all(b"late").unwrap();
    g.pump_host(1000);
    assert_eq!(g.recv()[0].1, b"late");
    // Full shutdown: device answers RST.
    g.send(
        Header {
            flags: SHUTDOWN_SEND | SHUTDOWN_RCV,
            ..g.hdr(40000, 1234, OP_SHUTDOWN)
        },
        &[],
    );
    let pk = g.recv();
    assert_eq!(pk.last().unwrap().0.op, OP_RST);
    assert_eq!(g.dev.conn_count(), 0);
    // Nobody listens on port 7: RST.
    g.send(g.hdr(40001, 7, OP_REQUEST), &[]);
    let pk = g.recv();
    assert_eq!((pk[0].0.op, pk[0].0.dst_port), (OP_RST, 40001));
}

#[test]
fn malformed_packets_get_rst_or_are_dropped() {
    let mut g = Guest::new(64, 4096);
    // Forged source CID: dropped (cannot be answered), nothing happens.
    g.send(
        Header {
            src_cid: 9,
            ..g.hdr(1, 2, OP_REQUEST)
        },
        &[],
    );
    assert!(g.recv().is_empty());
    // Wrong destination CID, bad type, bad op, RW to an unknown stream: RST each.
    g.send(
        Header {
            dst_cid: 77,
            ..g.hdr(1, 2, OP_REQUEST)
        },
        &[],
    );
    g.send(
        Header {
            type_: 2,
            ..g.hdr(1, 2, OP_REQUEST)
        },
        &[],
    );
    g.send(g.hdr(1, 2, 42), &[]);
    g.send(
        Header {
            len: 2,
            ..g.hdr(1, 2, OP_RW)
        },
        b"zz",
    );
    // Length larger than the bytes present.
    g.send(
        Header {
            len: 1000,
            ..g.hdr(1, 2, OP_RW)
        },
        b"short",
    );
    let pk = g.recv();
    assert_eq!(pk.len(), 5, "{pk:?}");
    assert!(pk.iter().all(|(h, _)| h.op == OP_RST && h.dst_port == 1));
    // A bare truncated header.
    g.txq.add(&[Ok(&[1, 2, 3])]).unwrap();
    g.dev.process(TX_QUEUE, &g.vrings).unwrap();
    assert_eq!(g.txq.take_used().len(), 1, "truncated packet consumed");
    assert!(g.recv().is_empty());
    // RX buffer too small for a header: consumed with length 0, device keeps working.
    let mut g = Guest::new(8, 16);
    g.send(g.hdr(1, 2, OP_RW), &[]);
    let pk = g.rxq.take_used();
    assert!(pk.is_empty() || pk.iter().all(|(_, b)| b.is_empty()));
}

#[test]
fn credit_limits_host_to_guest_and_updates_resume() {
    let mut g = Guest::new(64, 4096);
    let (mut s, hp) = host_connect(&mut g, 60, true).expect("connected");
    // Tell the device the guest only has 1000 bytes of buffer.
    g.send(
        Header {
            buf_alloc: 1000,
            fwd_cnt: 0,
            ..g.hdr(60, hp, OP_CREDIT_UPDATE)
        },
        &[],
    );
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    s.write_all(&data).unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        g.pump_host(100);
        for (h, p) in g.recv() {
            assert_eq!(h.op, OP_RW);
            got.extend_from_slice(&p);
        }
    }
    assert_eq!(got.len(), 1000, "device stops at the guest's credit");
    // Guest consumes and grants more.
    g.send(
        Header {
            buf_alloc: 1000,
            fwd_cnt: 1000,
            ..g.hdr(60, hp, OP_CREDIT_UPDATE)
        },
        &[],
    );
    for (_, p) in g.recv() {
        got.extend_from_slice(&p);
    }
    assert_eq!(got.len(), 2000);
    g.send(
        Header {
            buf_alloc: 1 << 20,
            fwd_cnt: 2000,
            ..g.hdr(60, hp, OP_CREDIT_UPDATE)
        },
        &[],
    );
    for (_, p) in g.recv() {
        got.extend_from_slice(&p);
    }
    assert_eq!(got, data, "no byte lost or reordered");
}

#[test]
fn guest_overrunning_credit_is_reset() {
    let mut g = Guest::new(64, 4096);
    let mut p = g.uds().into_os_string();
    p.push("_5");
    let l = UnixListener::bind(&p).unwrap();
    g.send(g.hdr(100, 5, OP_REQUEST), &[]);
    g.recv();
    let (s, _) = l.accept().unwrap();
    // Host never reads: the socket buffer fills, then the guest exceeds buf_alloc.
    let chunk = vec![0u8; 60000];
    let mut rst = false;
    for _ in 0..((CONN_BUF_ALLOC as usize * 4) / chunk.len() + 20) {
        g.send(
            Header {
                len: chunk.len() as u32,
                ..g.hdr(100, 5, OP_RW)
            },
            &chunk,
        );
        if g.recv().iter().any(|(h, _)| h.op == OP_RST) {
            rst = true;
            break;
        }
    }
    assert!(rst, "overrun answered with RST");
    assert_eq!(g.dev.conn_count(), 0);
    drop(s);
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn large_transfers_both_directions_hash_equal() {
    const SIZE: usize = 8 << 20;
    let mut g = Guest::new(256, 16 * 1024);
    let (s, hp) = host_connect(&mut g, 77, true).expect("connected");
    let data = pattern(1, SIZE);
    let want = Sha256::digest(&data);
    // Host -> guest in a thread; the guest grants credit as it consumes.
    let mut ws = s.try_clone().unwrap();
    let d2 = data.clone();
    let writer = std::thread::spawn(move || ws.write_all(&d2).unwrap());
    let mut hasher = Sha256::new();
    let mut got = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < SIZE {
        assert!(Instant::now() < deadline, "host->guest stalled at {got}");
        g.pump_host(100);
        let pk = g.recv();
        let mut n = 0;
        for (h, p) in pk {
            assert_eq!(h.op, OP_RW);
            hasher.update(&p);
            n += p.len();
        }
        if n > 0 {
            got += n;
            g.send(
                Header {
                    buf_alloc: 1 << 20,
                    fwd_cnt: got as u32,
                    ..g.hdr(77, hp, OP_CREDIT_UPDATE)
                },
                &[],
            );
        }
    }
    writer.join().unwrap();
    assert_eq!(hasher.finalize(), want);
    // Guest -> host, respecting the device's credit.
    let mut rs = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while n < SIZE {
            let k = rs.read(&mut buf).unwrap();
            assert!(k > 0);
            h.update(&buf[..k]);
            n += k;
        }
        h.finalize()
    });
    let mut sent = 0usize;
    let mut peer_fwd = 0u32;
    while sent < SIZE {
        let credit = CONN_BUF_ALLOC as usize - (sent as u32).wrapping_sub(peer_fwd) as usize;
        if credit == 0 {
            g.pump_host(100);
            for (h, _) in g.recv() {
                peer_fwd = h.fwd_cnt;
            }
            continue;
        }
        let n = credit.min(60000).min(SIZE - sent);
        g.send(
            Header {
                len: n as u32,
                ..g.hdr(77, hp, OP_RW)
            },
            &data[sent..sent + n],
        );
        sent += n;
        for (h, _) in g.recv() {
            peer_fwd = h.fwd_cnt;
        }
    }
    // The tail may still sit in the device's buffer, waiting for the socket to drain.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "guest->host tail stalled");
        g.pump_host(50);
        g.recv();
    }
    assert_eq!(reader.join().unwrap(), want);
}

#[test]
fn thousand_concurrent_streams_and_one_dead_peer() {
    const N: u32 = 1000;
    // Both ends of 1000 streams live in this process: make sure the fd limit allows it.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < 4096 {
            lim.rlim_cur = lim.rlim_max.min(8192);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    assert!(
        lim.rlim_cur >= 2100 || lim.rlim_cur == 0,
        "RLIMIT_NOFILE {} too low for 1000 streams (raise the hard limit)",
        lim.rlim_cur
    );
    let mut g = Guest::new(1024, 4096);
    // Host-initiated: open N streams, all pending at once.
    let mut streams = Vec::new();
    for i in 0..N {
        let mut s = UnixStream::connect(g.uds()).unwrap();
        writeln!(s, "CONNECT {}", 1000 + i).unwrap();
        streams.push(s);
        if i % 100 == 99 {
            g.pump_host(0);
        }
    }
    let mut assigned: HashMap<u32, u32> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while assigned.len() < N as usize {
        assert!(
            Instant::now() < deadline,
            "only {} REQUESTs",
            assigned.len()
        );
        g.pump_host(50);
        let pk = g.recv();
        for (h, _) in &pk {
            assert_eq!(h.op, OP_REQUEST);
            assigned.insert(h.dst_port, h.src_port);
        }
        for (h, _) in pk {
            g.send(g.hdr(h.dst_port, h.src_port, OP_RESPONSE), &[]);
        }
    }
    assert_eq!(g.dev.conn_count(), N as usize);
    for (i, s) in streams.iter_mut().enumerate() {
        let mut line = String::new();
        let mut b = [0u8; 1];
        while !line.ends_with('\n') {
            s.read_exact(&mut b).unwrap();
            line.push(b[0] as char);
        }
        assert_eq!(line, format!("OK {}\n", assigned[&(1000 + i as u32)]));
    }
    // Every stream carries its own message each way.
    for (i, s) in streams.iter_mut().enumerate() {
        s.write_all(format!("from-host-{i};").as_bytes()).unwrap();
    }
    let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.values().map(|v| v.len()).sum::<usize>()
        < (0..N).map(|i| format!("from-host-{i};").len()).sum()
    {
        assert!(Instant::now() < deadline, "host->guest incomplete");
        g.pump_host(50);
        for (h, p) in g.recv() {
            assert_eq!(h.op, OP_RW);
            got.entry(h.dst_port).or_default().extend_from_slice(&p);
        }
    }
    for i in 0..N {
        assert_eq!(got[&(1000 + i)], format!("from-host-{i};").as_bytes());
        let msg = format!("from-guest-{i};");
        g.send(
            Header {
                len: msg.len() as u32,
                ..g.hdr(1000 + i, assigned[&(1000 + i)], OP_RW)
            },
            msg.as_bytes(),
        );
    }
    for (i, s) in streams.iter_mut().enumerate() {
        let want = format!("from-guest-{i};");
        let mut b = vec![0u8; want.len()];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b, want.as_bytes());
    }
    // One host peer dies: only its stream is shut down.
    let dead = streams.remove(500);
    drop(dead);
    g.pump_host(1000);
    let pk = g.recv();
    assert_eq!(pk.len(), 1, "{pk:?}");
    assert_eq!((pk[0].0.op, pk[0].0.dst_port), (OP_SHUTDOWN, 1500));
    g.send(g.hdr(1500, assigned[&1500], OP_RST), &[]);
    assert_eq!(g.dev.conn_count(), N as usize - 1);
    // Others still work.
    streams[500].write_all(b"still-alive").unwrap();
    g.pump_host(1000);
    let pk = g.recv();
    assert_eq!(
        (pk[0].0.dst_port, pk[0].1.as_slice()),
        (1501, &b"still-alive"[..])
    );
    // Guest resets one stream: only that host socket sees EOF.
    g.send(g.hdr(1001, assigned[&1001], OP_RST), &[]);
    let mut b = [0u8; 1];
    assert_eq!(streams[1].read(&mut b).unwrap(), 0);
    streams[2].set_nonblocking(true).unwrap();
    assert!(
        streams[2].read(&mut b).is_err(),
        "neighbour stream untouched"
    );
    let _ = streams[2].as_raw_fd();
}

#[test]
fn rx_queue_full_back_pressures_without_loss() {
    // 4 RX buffers only: data waits in the host socket until the guest adds buffers.
    let mut g = Guest::new(4, 128);
    let (mut s, hp) = host_connect(&mut g, 9, true).expect("connected");
    let data = pattern(9, 20000);
    s.write_all(&data).unwrap();
    g.pump_host(1000);
    let mut got = Vec::new();
    for _ in 0..1000 {
        // Do not refill before processing: the device must stop, not drop.
        g.dev.process(RX_QUEUE, &g.vrings).unwrap();
        for (_, b) in g.rxq.take_used() {
            let h = Header::decode(&b).unwrap();
            assert_eq!(h.dst_port, 9);
            got.extend_from_slice(&b[HDR_LEN..]);
        }
        g.refill_rx();
        if got.len() == data.len() {
            break;
        }
    }
    assert_eq!(got, data);
    let _ = hp;
}

/// Runs `process(event)` on another thread; fails (instead of hanging the suite) if the
/// device does not return: a worker that never returns never sees the guest's next kick.
fn process_returns(g: &Guest, event: u16) {
    let dev = g.dev.clone();
    let vrings = g.vrings.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = dev.process(event, &vrings);
        let _ = tx.send(r.is_ok());
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(ok) => assert!(ok, "process({event}) failed"),
        Err(_) => panic!("process({event}) did not return: the worker thread spins"),
    }
}

/// Regression (real Linux guests hung in connect()): with VIRTIO_RING_F_EVENT_IDX, a
/// driver keeps its RX queue full. Handling an RX kick with nothing to send used to loop
/// forever ("buffers available" taken for "work to do"), holding the device lock, so the
/// guest's TX kick (the connection REQUEST) was never serviced.
#[test]
fn event_idx_full_rx_queue_does_not_starve_tx() {
    let mut g = Guest::new(64, 4096);
    for v in &g.vrings {
        v.set_queue_event_idx(true);
    }
    g.dev.set_event_idx(true);
    let listener = UnixListener::bind(format!("{}_5000", g.uds().display())).unwrap();
    // The driver filled RX and kicked: nothing to send, the worker must return.
    process_returns(&g, RX_QUEUE);
    process_returns(&g, TX_QUEUE);
    assert!(g.rxq.take_used().is_empty());
    // The guest connects: it must decide to kick, and the kick must bring the RESPONSE.
    for round in 0..3u32 {
        let old = g.txq.avail_idx();
        let hb = g.hdr(40000 + round, 5000, OP_REQUEST).encode();
        g.txq.add(&[Ok(&hb)]).unwrap();
        assert!(
            g.txq.would_kick(true, old, g.txq.avail_idx()),
            "round {round}: the device left avail_event at {} so the guest never kicks",
            g.txq.avail_event()
        );
        process_returns(&g, TX_QUEUE);
        g.txq.take_used();
        let (_s, _) = listener.accept().unwrap();
        let pk: Vec<_> = g.rxq.take_used();
        assert_eq!(pk.len(), 1, "round {round}: one RESPONSE");
        let h = Header::decode(&pk[0].1).unwrap();
        assert_eq!(
            (h.op, h.src_port, h.dst_port),
            (OP_RESPONSE, 5000, 40000 + round)
        );
        g.refill_rx();
        process_returns(&g, RX_QUEUE);
    }
}

/// Without EVENT_IDX the device suppresses kicks (VRING_USED_F_NO_NOTIFY) while it drains
/// TX; it must lift the suppression afterwards or the guest never kicks again.
#[test]
fn tx_notifications_reenabled_without_event_idx() {
    let mut g = Guest::new(16, 4096);
    for round in 0..3u32 {
        let old = g.txq.avail_idx();
        g.send(g.hdr(100 + round, 7, OP_REQUEST), &[]);
        assert!(
            g.txq.would_kick(false, old, g.txq.avail_idx() + 1),
            "round {round}: TX left with VRING_USED_F_NO_NOTIFY set"
        );
        let pk = g.recv();
        assert_eq!(pk[0].0.op, OP_RST, "nobody listens on host port 7");
    }
}

/// A host connection that arrives before the frontend enabled the queues waits in the
/// device; nothing touches a queue that is not enabled, and the REQUEST goes out once
/// it is.
#[test]
fn host_connect_waits_for_enabled_queues() {
    let mut g = Guest::new(16, 4096);
    for v in &g.vrings {
        v.set_enabled(false);
    }
    let mut s = UnixStream::connect(g.uds()).unwrap();
    writeln!(s, "CONNECT 77").unwrap();
    g.pump_host(1000);
    g.pump_host(10);
    assert!(g.rxq.take_used().is_empty(), "RX used while disabled");
    for v in &g.vrings {
        v.set_enabled(true);
    }
    let pk = g.recv();
    assert_eq!(pk.len(), 1, "{pk:?}");
    assert_eq!((pk[0].0.op, pk[0].0.dst_port), (OP_REQUEST, 77));
}

/// Rings for a device whose frontend resumed RX and TX at `base` (as after a reconnect to
/// a restarted backend), with four event buffers posted; returns (device, event queue,
/// vrings, its socket directory).
fn resumed_device(base: u16) -> (VsockDevice, GuestQueue, Vec<VringRwLock>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let dev = VsockDevice::new(VsockConfig {
        guest_cid: CID,
        uds_path: dir.path().join("v.sock"),
    })
    .unwrap();
    let slot = 4096;
    let (mem, bases) = guest_memory(3, 16, slot);
    let rxq = GuestQueue::new(&mem, bases[0], 16, slot);
    let txq = GuestQueue::new(&mem, bases[1], 16, slot);
    let mut evq = GuestQueue::new(&mem, bases[2], 16, slot);
    let atomic = GuestMemoryAtomic::new(mem);
    let vrings = vec![rxq.vring(&atomic), txq.vring(&atomic), evq.vring(&atomic)];
    for v in &vrings[..2] {
        v.set_queue_next_avail(base);
    }
    for _ in 0..4 {
        evq.add(&[Err(8)]);
    }
    dev.update_memory(atomic).unwrap();
    (dev, evq, vrings, dir)
}

/// A frontend that resumes rings in use (a restarted backend under a running guest) gets
/// exactly one VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, from the reset timer alone (the guest
/// may be idle), so the guest resets its streams instead of waiting on them forever.
#[test]
fn resumed_rings_get_one_transport_reset_event() {
    let (dev, mut evq, vrings, _dir) = resumed_device(7);
    dev.process(RESET_TIMER_EVENT, &vrings).unwrap();
    let used = evq.take_used();
    assert_eq!(used.len(), 1, "one event: {used:?}");
    assert_eq!(
        used[0].1,
        VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes().to_vec()
    );
    dev.process(RESET_TIMER_EVENT, &vrings).unwrap();
    dev.process(EVT_QUEUE, &vrings).unwrap();
    assert!(evq.take_used().is_empty(), "only one reset per connection");
}

/// A fresh guest (rings start at 0) gets no reset event.
#[test]
fn fresh_rings_get_no_transport_reset_event() {
    let (dev, mut evq, vrings, _dir) = resumed_device(0);
    dev.process(RESET_TIMER_EVENT, &vrings).unwrap();
    dev.process(EVT_QUEUE, &vrings).unwrap();
    assert!(evq.take_used().is_empty());
}

/// A reset-timer event before the frontend sent its memory table (or after the timer was
/// disarmed) returns at once: the timer fd is non-blocking and drained first, so neither
/// a blocked worker nor a level-triggered spin can follow.
#[test]
fn reset_timer_event_without_memory_or_expiry_returns_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let dev = VsockDevice::new(VsockConfig {
        guest_cid: CID,
        uds_path: dir.path().join("v.sock"),
    })
    .unwrap();
    let (mem, bases) = guest_memory(3, 16, 4096);
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let vrings: Vec<VringRwLock> = (0..3)
        .map(|i| GuestQueue::new(&mem, bases[i], 16, 4096).vring(&atomic))
        .collect();
    let start = Instant::now();
    dev.process(RESET_TIMER_EVENT, &vrings).unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[test]
fn guest_close_with_unread_host_data_delivers_everything_before_rst() {
    let mut g = Guest::new(256, 4096);
    let (mut s, hp) = host_connect(&mut g, 61, true).expect("connected");
    // The host does not read yet: its socket buffer fills and the device buffers the rest.
    let data = pattern(7, 400 * 1024);
    for chunk in data.chunks(16 * 1024) {
        g.send(
            Header {
                len: chunk.len() as u32,
                ..g.hdr(61, hp, OP_RW)
            },
            chunk,
        );
    }
    // The guest closes both directions right after its last byte (what close() does).
    g.send(
        Header {
            flags: SHUTDOWN_SEND | SHUTDOWN_RCV,
            ..g.hdr(61, hp, OP_SHUTDOWN)
        },
        &[],
    );
    assert!(
        !g.recv().iter().any(|(h, _)| h.op == OP_RST),
        "no RST while guest data is still waiting for the host"
    );
    assert_eq!(
        g.dev.conn_count(),
        1,
        "the closing stream lives until flushed"
    );
    s.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => g.pump_host(10),
            Err(e) => panic!("host read: {e}"),
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no EOF");
    }
    assert_eq!(got.len(), data.len(), "every guest byte reached the host");
    assert!(got == data, "in order and intact");
    let pk = g.recv();
    assert_eq!(pk.last().map(|p| p.0.op), Some(OP_RST), "{pk:?}");
    assert_eq!(g.dev.conn_count(), 0);
}
