//! Hybrid-vsock benchmark helpers: a minimal guest vsock stack over the vhost-user driver.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cordon_frontend::vhost_user::{Buffer, DriverConfig, VhostUserDriver};
use vm_memory::GuestAddress;

const HDR_LEN: usize = 44;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
/// Guest CID used by the benchmark.
pub const CID: u64 = 3;
const RX_BUF: usize = 64 * 1024 + HDR_LEN;
const T: Duration = Duration::from_secs(10);

/// A packet header (little-endian wire form of `struct virtio_vsock_hdr`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Hdr {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Operation.
    pub op: u16,
    /// Flags.
    pub flags: u32,
    /// Receive buffer size.
    pub buf_alloc: u32,
    /// Forwarded count.
    pub fwd_cnt: u32,
}

impl Hdr {
    fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&1u16.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Hdr {
        let u32a = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        Hdr {
            src_cid: u64::from_le_bytes(b[0..8].try_into().unwrap_or_default()),
            dst_cid: u64::from_le_bytes(b[8..16].try_into().unwrap_or_default()),
            src_port: u32a(16),
            dst_port: u32a(20),
            len: u32a(24),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32a(32),
            buf_alloc: u32a(36),
            fwd_cnt: u32a(40),
        }
    }

    fn to_host(src_port: u32, dst_port: u32, op: u16) -> Hdr {
        Hdr {
            src_cid: CID,
            dst_cid: 2,
            src_port,
            dst_port,
            op,
            buf_alloc: 4 << 20,
            ..Default::default()
        }
    }
}

/// The guest side of one vsock device.
pub struct Guest {
    drv: VhostUserDriver,
    rx: HashMap<u16, GuestAddress>,
    tx: GuestAddress,
}

impl Guest {
    /// Connects to the device's vhost-user socket and posts RX buffers.
    pub fn connect(sock: &Path) -> anyhow::Result<Guest> {
        let mut cfg = DriverConfig::new(3);
        cfg.mem_size = 64 << 20;
        let mut drv = VhostUserDriver::connect(sock, cfg).context("vhost-user connect")?;
        let tx = drv.alloc(HDR_LEN + 65536)?;
        let mut g = Guest {
            drv,
            rx: HashMap::new(),
            tx,
        };
        for _ in 0..128 {
            let a = g.drv.alloc(RX_BUF)?;
            let h = g.drv.submit(
                0,
                &[Buffer {
                    addr: a,
                    len: RX_BUF as u32,
                    writable: true,
                }],
            )?;
            g.rx.insert(h, a);
        }
        Ok(g)
    }

    /// Sends one packet on TX and waits for it to be consumed.
    pub fn send(&mut self, h: Hdr, payload: &[u8]) -> anyhow::Result<()> {
        let mut b = h.encode().to_vec();
        b.extend_from_slice(payload);
        self.drv.write(self.tx, &b)?;
        let head = self.drv.submit(
            1,
            &[Buffer {
                addr: self.tx,
                len: b.len() as u32,
                writable: false,
            }],
        )?;
        self.drv.wait_for(1, head, T)?;
        Ok(())
    }

    /// Receives packets (header + payload length), re-posting buffers.
    pub fn recv(
        &mut self,
        timeout: Duration,
        mut each: impl FnMut(Hdr, &[u8]),
    ) -> anyhow::Result<usize> {
        let used = match self.drv.wait(0, timeout) {
            Ok(u) => u,
            Err(_) => return Ok(0),
        };
        let n = used.len();
        let mut free = Vec::new();
        for u in used {
            let a = self.rx.remove(&u.head).context("unknown RX head")?;
            let b = self.drv.read(a, u.len as usize)?;
            if b.len() >= HDR_LEN {
                each(Hdr::decode(&b), &b[HDR_LEN..]);
            }
            free.push(a);
        }
        for a in free {
            let h = self.drv.submit(
                0,
                &[Buffer {
                    addr: a,
                    len: RX_BUF as u32,
                    writable: true,
                }],
            )?;
            self.rx.insert(h, a);
        }
        Ok(n)
    }

    /// Host-initiated connection to guest port `port`; returns (stream, host port).
    pub fn host_connect(&mut self, uds: &Path, port: u32) -> anyhow::Result<(UnixStream, u32)> {
        let mut s = UnixStream::connect(uds)?;
        s.write_all(format!("CONNECT {port}\n").as_bytes())?;
        let mut req = None;
        let deadline = Instant::now() + T;
        while req.is_none() {
            if Instant::now() > deadline {
                bail!("no REQUEST for port {port}");
            }
            self.recv(Duration::from_millis(100), |h, _| {
                if h.op == OP_REQUEST && h.dst_port == port {
                    req = Some(h);
                }
            })?;
        }
        let req = req.unwrap_or_default();
        self.send(Hdr::to_host(port, req.src_port, OP_RESPONSE), &[])?;
        let mut line = Vec::new();
        let mut c = [0u8; 1];
        s.set_read_timeout(Some(T))?;
        while !line.ends_with(b"\n") {
            if s.read(&mut c)? == 0 {
                bail!("host stream closed before OK");
            }
            line.push(c[0]);
        }
        if !line.starts_with(b"OK ") {
            bail!("bad handshake reply {line:?}");
        }
        Ok((s, req.src_port))
    }

    /// Closes a stream from the guest side (full shutdown, waits for the RST).
    pub fn close(&mut self, port: u32, host_port: u32) -> anyhow::Result<()> {
        self.send(
            Hdr {
                flags: 3,
                ..Hdr::to_host(port, host_port, OP_SHUTDOWN)
            },
            &[],
        )?;
        let deadline = Instant::now() + T;
        let mut done = false;
        while !done && Instant::now() < deadline {
            self.recv(Duration::from_millis(100), |h, _| {
                done |= h.op == OP_RST && h.dst_port == port
            })?;
        }
        Ok(())
    }

    /// Host writes `total` bytes; the guest receives them. Returns bytes/s.
    pub fn host_to_guest(
        &mut self,
        s: &UnixStream,
        port: u32,
        hp: u32,
        total: usize,
    ) -> anyhow::Result<f64> {
        let mut ws = s.try_clone()?;
        let writer = std::thread::spawn(move || {
            let buf = vec![0x5au8; 256 * 1024];
            let mut left = total;
            while left > 0 {
                let n = left.min(buf.len());
                if ws.write_all(&buf[..n]).is_err() {
                    return;
                }
                left -= n;
            }
        });
        let start = Instant::now();
        let mut got = 0usize;
        let mut granted = 0usize;
        while got < total {
            if start.elapsed() > Duration::from_secs(120) {
                bail!("host->guest stalled at {got}");
            }
            self.recv(Duration::from_millis(200), |h, p| {
                if h.op == OP_RW {
                    got += p.len();
                }
            })?;
            if got - granted >= 1 << 20 || got == total {
                granted = got;
                self.send(
                    Hdr {
                        fwd_cnt: got as u32,
                        ..Hdr::to_host(port, hp, OP_CREDIT_UPDATE)
                    },
                    &[],
                )?;
            }
        }
        let el = start.elapsed().as_secs_f64();
        let _ = writer.join();
        Ok(total as f64 / el)
    }

    /// The guest sends `total` bytes in 64 KiB packets within the device's credit; the host
    /// reads them. Returns bytes/s.
    pub fn guest_to_host(
        &mut self,
        s: &UnixStream,
        port: u32,
        hp: u32,
        total: usize,
    ) -> anyhow::Result<f64> {
        let mut rs = s.try_clone()?;
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0;
            while n < total {
                match rs.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            n
        });
        let payload = vec![0xa5u8; 65536];
        let start = Instant::now();
        let (mut sent, mut fwd, mut alloc) = (0usize, 0u32, 0u32);
        // Learn the device's buffer size from its packets (the RESPONSE carried it).
        self.send(Hdr::to_host(port, hp, 7), &[])?;
        while alloc == 0 {
            self.recv(Duration::from_millis(200), |h, _| {
                if h.buf_alloc > 0 {
                    alloc = h.buf_alloc;
                    fwd = h.fwd_cnt;
                }
            })?;
            if start.elapsed() > T {
                bail!("no credit information from the device");
            }
        }
        while sent < total {
            if start.elapsed() > Duration::from_secs(120) {
                bail!("guest->host stalled at {sent}");
            }
            let credit = alloc.saturating_sub((sent as u32).wrapping_sub(fwd)) as usize;
            if credit == 0 {
                self.recv(Duration::from_millis(50), |h, _| {
                    if h.op == OP_CREDIT_UPDATE || h.op == OP_RW {
                        fwd = h.fwd_cnt;
                        alloc = h.buf_alloc;
                    }
                })?;
                continue;
            }
            let n = credit.min(payload.len()).min(total - sent);
            self.send(
                Hdr {
                    len: n as u32,
                    ..Hdr::to_host(port, hp, OP_RW)
                },
                &payload[..n],
            )?;
            sent += n;
            self.recv(Duration::ZERO, |h, _| {
                if h.op == OP_CREDIT_UPDATE || h.op == OP_RW {
                    fwd = h.fwd_cnt;
                    alloc = h.buf_alloc;
                }
            })?;
        }
        let got = reader.join().unwrap_or(0);
        let el = start.elapsed().as_secs_f64();
        if got != total {
            bail!("host received {got} of {total} bytes");
        }
        Ok(total as f64 / el)
    }
}
