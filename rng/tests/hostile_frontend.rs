//! A hostile frontend against the real, jailed `rng-device`: every attack must end in an
//! error reply, a dropped request or a logged disconnect, and the backend must keep serving
//! the next (honest) frontend.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cordon_frontend::vhost_user::{
    create_guest_memory, DriverConfig, DriverQueue, VhostUserConnection, VhostUserDriver,
};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend};

const T: Duration = Duration::from_secs(10);
const VERSION_1: u64 = 1 << 32;

struct Backend {
    child: Child,
    sock: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Backend {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("rng.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_rng-device"))
            .args(["--socket-path", sock.to_str().unwrap()])
            .stderr(if std::env::var_os("HOSTILE_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        Backend {
            child,
            sock,
            _dir: dir,
        }
    }

    /// The backend is alive and an honest frontend gets random bytes.
    fn still_serves(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "backend died");
        let mut d = VhostUserDriver::connect(&self.sock, DriverConfig::new(1)).unwrap();
        let c = d.request(0, &[], &[32], T).unwrap();
        assert_eq!(c.len, 32);
        assert!(self.child.try_wait().unwrap().is_none(), "backend died");
    }

    fn conn(&self) -> VhostUserConnection {
        VhostUserConnection::connect(&self.sock, 1, T).unwrap()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn protocol() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
}

#[test]
fn memory_region_larger_than_its_memfd_is_refused() {
    let mut b = Backend::start();
    {
        let mut c = b.conn();
        c.negotiate(VERSION_1, protocol()).unwrap();
        let mem = create_guest_memory(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let r = mem.mem.iter().next().unwrap();
        let mut info = VhostUserMemoryRegionInfo::from_guest_region(r).unwrap();
        info.memory_size = 1 << 30; // claims 1 GiB backed by a 1 MiB memfd
        let res = c.frontend().set_mem_table(&[info]);
        assert!(res.is_err(), "oversized region accepted");
    }
    b.still_serves();
}

#[test]
fn overlapping_and_overflowing_regions_are_refused() {
    let mut b = Backend::start();
    {
        let mut c = b.conn();
        c.negotiate(VERSION_1, protocol()).unwrap();
        let mem = create_guest_memory(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let r = mem.mem.iter().next().unwrap();
        let info = VhostUserMemoryRegionInfo::from_guest_region(r).unwrap();
        let mut wrap = info;
        wrap.guest_phys_addr = u64::MAX - 4095;
        let res = c.frontend().set_mem_table(&[info, info]);
        assert!(res.is_err(), "overlapping regions accepted");
        let _ = c.frontend().set_mem_table(&[wrap]);
    }
    b.still_serves();
}

#[test]
fn vring_outside_guest_memory_is_refused() {
    let mut b = Backend::start();
    {
        let mut c = b.conn();
        c.negotiate(VERSION_1, protocol()).unwrap();
        let mem = create_guest_memory(&[(GuestAddress(0), 1 << 20)]).unwrap();
        c.set_mem_table(&mem.mem).unwrap();
        let q = DriverQueue::new(&mem.mem, GuestAddress(0), 256).unwrap();
        let cfg = VringConfigData {
            queue_max_size: 256,
            queue_size: 256,
            flags: 0,
            desc_table_addr: 0x1000, // not a frontend virtual address of any region
            used_ring_addr: 0x2000,
            avail_ring_addr: 0x3000,
            log_addr: None,
        };
        assert!(c.setup_vring_raw(0, &q, &cfg).is_err());
        let _ = q.kick();
    }
    b.still_serves();
}

#[test]
fn hostile_descriptors_do_not_hurt() {
    let mut b = Backend::start();
    {
        let mut d = VhostUserDriver::connect(&b.sock, DriverConfig::new(1)).unwrap();
        let buf = d.alloc(64).unwrap();
        let mem = d.memory().clone();
        let q = d.queue(0).unwrap();
        // 1. A descriptor loop: 0 -> 1 -> 0, device-writable.
        q.write_desc(&mem, 0, buf.0, 16, 1 | 2, 1).unwrap();
        q.write_desc(&mem, 1, buf.0 + 16, 16, 1 | 2, 0).unwrap();
        q.publish(&mem, 0).unwrap();
        // 2. A buffer far outside guest memory.
        q.write_desc(&mem, 2, 1 << 40, 4096, 2, 0).unwrap();
        q.publish(&mem, 2).unwrap();
        // 3. An oversized buffer (4 GiB - 1) starting inside memory.
        q.write_desc(&mem, 3, buf.0, u32::MAX, 2, 0).unwrap();
        q.publish(&mem, 3).unwrap();
        // 4. A head index beyond the queue size.
        q.publish(&mem, 300).unwrap();
        q.kick().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // The used ring never reports more than the guest offered.
        let used_idx: u16 = {
            use vm_memory::Bytes;
            mem.read_obj(GuestAddress(q.used_ring().0 + 2)).unwrap()
        };
        for i in 0..used_idx.min(256) {
            use vm_memory::Bytes;
            let len: u32 = mem
                .read_obj(GuestAddress(q.used_ring().0 + 4 + 8 * i as u64 + 4))
                .unwrap();
            assert!(len <= 32, "device claims {len} bytes written");
        }
    }
    b.still_serves();
}

#[test]
fn avail_index_far_ahead_is_refused() {
    let mut b = Backend::start();
    // With and without EVENT_IDX (with it, a naive loop would spin forever re-arming
    // notifications that report "more available").
    for features in [0, 1 << 29] {
        let cfg = DriverConfig::new(1).with_features(features);
        let mut d = VhostUserDriver::connect(&b.sock, cfg).unwrap();
        let mem = d.memory().clone();
        let q = d.queue(0).unwrap();
        use vm_memory::Bytes;
        mem.write_obj(5000u16, GuestAddress(q.avail_ring().0 + 2))
            .unwrap();
        q.kick().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    b.still_serves();
}

fn raw(sock: &Path, bytes: &[u8]) {
    // Wait for the socket (the backend may still be starting).
    drop(VhostUserConnection::connect(sock, 1, T).unwrap());
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 64];
    let _ = std::io::Read::read(&mut s, &mut buf);
}

fn header(req: u32, flags: u32, size: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&req.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&size.to_le_bytes());
    v
}

#[test]
fn malformed_messages_end_in_a_clean_disconnect() {
    let mut b = Backend::start();
    // Unknown request code.
    raw(&b.sock, &header(0xdead, 1, 0));
    b.still_serves();
    // Huge payload size.
    raw(&b.sock, &header(1, 1, 0x1000_0000));
    b.still_serves();
    // Truncated header, then garbage.
    raw(&b.sock, &[1, 0, 0]);
    raw(&b.sock, &[0xff; 4096]);
    // SET_MEM_TABLE claiming 8 regions without any fd.
    let mut m = header(5, 1, 8 + 32 * 8);
    m.extend_from_slice(&8u32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(&[0x41; 32 * 8]);
    raw(&b.sock, &m);
    // GET_CONFIG with an out-of-range size.
    let mut g = header(24, 1, 12 + 8);
    g.extend_from_slice(&0u32.to_le_bytes());
    g.extend_from_slice(&0xffff_fff0u32.to_le_bytes());
    g.extend_from_slice(&0u32.to_le_bytes());
    g.extend_from_slice(&[0; 8]);
    raw(&b.sock, &g);
    b.still_serves();
}
