//! The real `vsock-device` binary, jailed (namespaces + seccomp policy), driven through the
//! vhost-user frontend library acting as the guest's vsock stack.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cordon_frontend::vhost_user::{Buffer, DriverConfig, VhostUserDriver};
use cordon_vsock::packet::*;
use sha2::{Digest, Sha256};
use vm_memory::GuestAddress;

const T: Duration = Duration::from_secs(10);
const CID: u64 = 3;
const RX_BUF: usize = 4096;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The guest side: RX buffers posted, TX packets sent, all through vhost-user.
struct Guest {
    drv: VhostUserDriver,
    rx_bufs: HashMap<u16, GuestAddress>,
    tx_buf: GuestAddress,
}

impl Guest {
    fn connect(sock: &std::path::Path) -> Guest {
        let mut cfg = DriverConfig::new(3);
        cfg.mem_size = 64 << 20;
        let mut drv = VhostUserDriver::connect(sock, cfg).expect("vhost-user connect");
        let cid = drv.config(0, 8).unwrap();
        assert_eq!(
            u64::from_le_bytes(cid.clone().try_into().unwrap()),
            CID,
            "guest_cid in config space"
        );
        // Frontends that use virtio-pci config offsets (0x100 + offset) get the same bytes.
        assert_eq!(drv.config(0x100, 8).unwrap(), cid, "GET_CONFIG at 0x100");
        let tx_buf = drv.alloc(HDR_LEN + 65536).unwrap();
        let mut g = Guest {
            drv,
            rx_bufs: HashMap::new(),
            tx_buf,
        };
        for _ in 0..128 {
            let a = g.drv.alloc(RX_BUF).unwrap();
            let head = g
                .drv
                .submit(
                    0,
                    &[Buffer {
                        addr: a,
                        len: RX_BUF as u32,
                        writable: true,
                    }],
                )
                .unwrap();
            g.rx_bufs.insert(head, a);
        }
        g
    }

    fn send(&mut self, h: Header, payload: &[u8]) {
        let mut b = h.encode().to_vec();
        b.extend_from_slice(payload);
        self.drv.write(self.tx_buf, &b).unwrap();
        let head = self
            .drv
            .submit(
                1,
                &[Buffer {
                    addr: self.tx_buf,
                    len: b.len() as u32,
                    writable: false,
                }],
            )
            .unwrap();
        self.drv.wait_for(1, head, T).expect("TX completion");
    }

    /// Received packets (re-posting each RX buffer).
    fn recv(&mut self, timeout: Duration) -> Vec<(Header, Vec<u8>)> {
        let used = match self.drv.wait(0, timeout) {
            Ok(u) => u,
            Err(_) => return Vec::new(),
        };
        // Read every completed buffer first: re-posting may reuse descriptor indices.
        let mut out = Vec::new();
        let mut free = Vec::new();
        for u in used {
            let a = self.rx_bufs.remove(&u.head).expect("known RX buffer");
            let b = self.drv.read(a, u.len as usize).unwrap();
            let h = Header::decode(&b).expect("header");
            out.push((h, b[HDR_LEN..].to_vec()));
            free.push(a);
        }
        for a in free {
            let head = self
                .drv
                .submit(
                    0,
                    &[Buffer {
                        addr: a,
                        len: RX_BUF as u32,
                        writable: true,
                    }],
                )
                .unwrap();
            self.rx_bufs.insert(head, a);
        }
        out
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

fn spawn(sock: &std::path::Path, uds: &std::path::Path) -> Kill {
    let d = Kill(
        Command::new(env!("CARGO_BIN_EXE_vsock-device"))
            .args([
                "--socket-path",
                sock.to_str().unwrap(),
                "--uds-path",
                uds.to_str().unwrap(),
                "--cid",
                "3",
            ])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vsock-device"),
    );
    d
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x = 0x1234_5678u32;
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
fn host_and_guest_initiated_streams_through_the_jailed_binary() {
    const SIZE: usize = 2 << 20;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vhost.sock");
    let uds = dir.path().join("v.sock");
    let _d = spawn(&sock, &uds);
    let mut g = Guest::connect(&sock);

    // Host-initiated.
    let mut s = UnixStream::connect(&uds).unwrap();
    s.write_all(b"CONNECT 1234\n").unwrap();
    let pk = g.recv(T);
    assert_eq!(pk.len(), 1);
    let (req, _) = pk[0];
    assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 1234, CID));
    let hp = req.src_port;
    g.send(g.hdr(1234, hp, OP_RESPONSE), &[]);
    let mut line = [0u8; 64];
    s.set_read_timeout(Some(T)).unwrap();
    let n = s.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {hp}\n").as_bytes());

    // Host -> guest, 2 MiB, hashed; the guest grants credit as it consumes.
    let data = pattern(SIZE);
    let want = Sha256::digest(&data);
    let mut ws = s.try_clone().unwrap();
    let d2 = data.clone();
    let writer = std::thread::spawn(move || ws.write_all(&d2).unwrap());
    let mut h = Sha256::new();
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < SIZE {
        assert!(Instant::now() < deadline, "host->guest stalled at {got}");
        let mut n = 0;
        for (hd, p) in g.recv(Duration::from_millis(500)) {
            assert_eq!((hd.op, hd.src_port, hd.dst_port), (OP_RW, hp, 1234));
            h.update(&p);
            n += p.len();
        }
        if n > 0 {
            got += n;
            g.send(
                Header {
                    fwd_cnt: got as u32,
                    ..g.hdr(1234, hp, OP_CREDIT_UPDATE)
                },
                &[],
            );
        }
    }
    writer.join().unwrap();
    assert_eq!(h.finalize(), want, "host->guest bytes intact");

    // Guest -> host, 2 MiB, within the device's credit.
    let mut rs = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 65536];
        let mut n = 0;
        while n < SIZE {
            let k = rs.read(&mut buf).unwrap();
            assert!(k > 0, "EOF after {n}");
            h.update(&buf[..k]);
            n += k;
        }
        h.finalize()
    });
    let (mut sent, mut peer_fwd, mut peer_buf) = (0usize, 0u32, 256 * 1024u32);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < SIZE {
        assert!(Instant::now() < deadline, "guest->host stalled at {sent}");
        let credit = peer_buf.saturating_sub((sent as u32).wrapping_sub(peer_fwd)) as usize;
        if credit == 0 {
            for (hd, _) in g.recv(Duration::from_millis(200)) {
                peer_fwd = hd.fwd_cnt;
                peer_buf = hd.buf_alloc;
            }
            continue;
        }
        let n = credit.min(32768).min(SIZE - sent);
        g.send(
            Header {
                len: n as u32,
                ..g.hdr(1234, hp, OP_RW)
            },
            &data[sent..sent + n],
        );
        sent += n;
        for (hd, _) in g.recv(Duration::from_millis(0)) {
            peer_fwd = hd.fwd_cnt;
            peer_buf = hd.buf_alloc;
        }
    }
    assert_eq!(reader.join().unwrap(), want, "guest->host bytes intact");

    // Guest-initiated to host port 5000: the device connects to `<uds>_5000` from its jail.
    let mut p = uds.clone().into_os_string();
    p.push("_5000");
    let l = UnixListener::bind(&p).unwrap();
    // Drain leftover credit updates of the first stream.
    while !g.recv(Duration::from_millis(200)).is_empty() {}
    g.send(g.hdr(700, 5000, OP_REQUEST), &[]);
    let pk = g.recv(T);
    assert_eq!(
        (pk[0].0.op, pk[0].0.src_port, pk[0].0.dst_port),
        (OP_RESPONSE, 5000, 700)
    );
    let (mut hs, _) = l.accept().unwrap();
    g.send(
        Header {
            len: 5,
            ..g.hdr(700, 5000, OP_RW)
        },
        b"hello",
    );
    let mut b = [0u8; 5];
    hs.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    hs.write_all(b"back").unwrap();
    let pk = g.recv(T);
    assert_eq!(pk[0].1, b"back");
    // Nobody listening on 5001: RST. A forged length: RST, and the device keeps serving.
    g.send(g.hdr(701, 5001, OP_REQUEST), &[]);
    assert_eq!(g.recv(T)[0].0.op, OP_RST);
    g.send(
        Header {
            len: 9999,
            ..g.hdr(700, 5000, OP_RW)
        },
        b"x",
    );
    assert_eq!(g.recv(T)[0].0.op, OP_RST);
    g.send(g.hdr(702, 5000, OP_REQUEST), &[]);
    assert_eq!(g.recv(T)[0].0.op, OP_RESPONSE);
}
