//! The real `block-device` binary, jailed, driven through Cordon's vhost-user frontend driver
//! over a real Unix socket, on a real image file.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cordon_frontend::vhost_user::{DriverConfig, VhostUserDriver};

const T: Duration = Duration::from_secs(10);
const IMG_SIZE: u64 = 8 << 20;
const SECTORS: u64 = IMG_SIZE / 512;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
const BLK_FEATURES: u64 =
    F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH | F_MQ | F_DISCARD | F_WRITE_ZEROES;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    img: PathBuf,
    sock: PathBuf,
}

/// A temp dir with an 8 MiB image whose sector `n` is filled with byte `n % 251`.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    let mut data = vec![0u8; IMG_SIZE as usize];
    for (i, chunk) in data.chunks_mut(512).enumerate() {
        chunk.fill((i % 251) as u8);
    }
    std::fs::write(&img, &data).unwrap();
    let sock = dir.path().join("blk.sock");
    Setup {
        _dir: dir,
        img,
        sock,
    }
}

/// The device command; `BLOCK_DEVICE_WRAPPER` (e.g. `strace -f -o /tmp/blk.trace`) prefixes
/// it, to collect syscall traces for the seccomp policy.
fn device_command() -> Command {
    let bin = env!("CARGO_BIN_EXE_block-device");
    match std::env::var("BLOCK_DEVICE_WRAPPER") {
        Ok(w) if !w.trim().is_empty() => {
            let mut parts = w.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or("env"));
            c.args(parts).arg(bin);
            c
        }
        _ => Command::new(bin),
    }
}

fn spawn(s: &Setup, file_arg: &str, extra: &[&str]) -> Kill {
    Kill(
        device_command()
            .args([
                "--socket-path",
                s.sock.to_str().unwrap(),
                "--file",
                file_arg,
            ])
            .args(extra)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn block-device"),
    )
}

fn connect(s: &Setup, queues: usize) -> VhostUserDriver {
    VhostUserDriver::connect(
        &s.sock,
        DriverConfig::new(queues).with_features(BLK_FEATURES),
    )
    .expect("connect to block-device")
}

fn hdr(kind: u32, sector: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&kind.to_le_bytes());
    b[8..16].copy_from_slice(&sector.to_le_bytes());
    b
}

fn seg(sector: u64, num: u32, flags: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..8].copy_from_slice(&sector.to_le_bytes());
    b[8..12].copy_from_slice(&num.to_le_bytes());
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    b
}

/// OUT request on queue `q`; returns (status, used len).
fn write(d: &mut VhostUserDriver, q: usize, sector: u64, data: &[u8]) -> (u8, u32) {
    let c = d.request(q, &[&hdr(T_OUT, sector), data], &[1], T).unwrap();
    (c.written[0][0], c.len)
}

/// IN request; returns (status, data, used len).
fn read(d: &mut VhostUserDriver, q: usize, sector: u64, len: usize) -> (u8, Vec<u8>, u32) {
    let c = d.request(q, &[&hdr(T_IN, sector)], &[len, 1], T).unwrap();
    (c.written[1][0], c.written[0].clone(), c.len)
}

fn simple(d: &mut VhostUserDriver, kind: u32, payload: &[u8]) -> u8 {
    let c = if payload.is_empty() {
        d.request(0, &[&hdr(kind, 0)], &[1], T).unwrap()
    } else {
        d.request(0, &[&hdr(kind, 0), payload], &[1], T).unwrap()
    };
    c.written[0][0]
}

fn file_bytes(p: &Path, off: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(p).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, off).unwrap();
    v
}

fn wait_exit(c: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(st) = c.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn write_then_read_back_flush_and_persist() {
    let s = setup();
    let _d = spawn(&s, s.img.to_str().unwrap(), &[]);
    let mut d = connect(&s, 1);
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 13 % 256) as u8).collect();
    assert_eq!(write(&mut d, 0, 100, &data), (S_OK, 1));
    let (st, back, len) = read(&mut d, 0, 100, 8192);
    assert_eq!((st, len), (S_OK, 8193));
    assert_eq!(back, data);
    // Neighbours untouched.
    let (_, before, _) = read(&mut d, 0, 99, 512);
    assert!(before.iter().all(|&b| b == 99));
    let (_, after, _) = read(&mut d, 0, 116, 512);
    assert!(after.iter().all(|&b| b == 116));
    assert_eq!(simple(&mut d, T_FLUSH, &[]), S_OK);
    assert_eq!(file_bytes(&s.img, 100 * 512, 8192), data);
    // Unknown request types are UNSUPP.
    assert_eq!(simple(&mut d, 99, &[]), S_UNSUPP);
}

#[test]
fn config_space_capacity_and_features() {
    let s = setup();
    let _d = spawn(&s, s.img.to_str().unwrap(), &["--num-queues", "2"]);
    let mut d = connect(&s, 2);
    let cfg = d.config(0, 60).unwrap();
    assert_eq!(u64::from_le_bytes(cfg[0..8].try_into().unwrap()), SECTORS);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 512);
    assert_eq!(u16::from_le_bytes(cfg[34..36].try_into().unwrap()), 2);
    assert!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()) >= 1);
    assert!(u32::from_le_bytes(cfg[40..44].try_into().unwrap()) >= 1); // max_discard_seg
    let f = d.features();
    assert_eq!(f & F_RO, 0);
    assert_ne!(f & F_FLUSH, 0);
    assert_ne!(f & F_DISCARD, 0);
    assert_ne!(f & F_WRITE_ZEROES, 0);
    // The second queue serves requests too.
    assert_eq!(write(&mut d, 1, 7, &[0x42; 512]), (S_OK, 1));
    let (st, back, _) = read(&mut d, 0, 7, 512);
    assert_eq!(st, S_OK);
    assert_eq!(back, vec![0x42; 512]);
}

#[test]
fn discard_and_write_zeroes_read_back_zero() {
    let s = setup();
    let _d = spawn(&s, s.img.to_str().unwrap(), &[]);
    let mut d = connect(&s, 1);
    let blocks_before = std::fs::metadata(&s.img).unwrap().blocks();
    let mut segs = Vec::new();
    segs.extend_from_slice(&seg(2048, 2048, 0)); // 1 MiB at 1 MiB
    segs.extend_from_slice(&seg(8, 1, 0));
    assert_eq!(simple(&mut d, T_DISCARD, &segs), S_OK);
    let (st, z, _) = read(&mut d, 0, 2048, 2048 * 512);
    assert_eq!(st, S_OK);
    assert!(z.iter().all(|&b| b == 0), "discarded range not zero");
    let (_, z, _) = read(&mut d, 0, 8, 512);
    assert!(z.iter().all(|&b| b == 0));
    let (_, keep, _) = read(&mut d, 0, 9, 512);
    assert!(keep.iter().all(|&b| b == 9));
    assert!(
        std::fs::metadata(&s.img).unwrap().blocks() < blocks_before,
        "no hole punched"
    );
    assert_eq!(std::fs::metadata(&s.img).unwrap().len(), IMG_SIZE);

    assert_eq!(simple(&mut d, T_WRITE_ZEROES, &seg(20, 4, 0)), S_OK);
    let (_, z, _) = read(&mut d, 0, 20, 4 * 512);
    assert!(z.iter().all(|&b| b == 0));
    assert_eq!(file_bytes(&s.img, 24 * 512, 1), vec![24]);
    // Discard with the UNMAP flag is UNSUPP; a bad segment fails the whole request.
    assert_eq!(simple(&mut d, T_DISCARD, &seg(30, 1, 1)), S_UNSUPP);
    let mut bad = seg(40, 1, 0).to_vec();
    bad.extend_from_slice(&seg(SECTORS, 1, 0));
    assert_eq!(simple(&mut d, T_DISCARD, &bad), S_IOERR);
    assert_eq!(file_bytes(&s.img, 40 * 512, 1), vec![40]);
}

#[test]
fn get_id_returns_the_configured_id() {
    let s = setup();
    let _d = spawn(&s, s.img.to_str().unwrap(), &["--id", "cordon-disk-7"]);
    let mut d = connect(&s, 1);
    let c = d.request(0, &[&hdr(T_GET_ID, 0)], &[20, 1], T).unwrap();
    assert_eq!(c.written[1][0], S_OK);
    assert_eq!(&c.written[0][..13], b"cordon-disk-7");
    assert!(c.written[0][13..].iter().all(|&b| b == 0));
    assert_eq!(c.len, 21);
}

#[test]
fn read_only_refuses_writes_and_changes_nothing() {
    let s = setup();
    let arg = format!("{}:read-only", s.img.display());
    let _d = spawn(&s, &arg, &[]);
    let mut d = connect(&s, 1);
    assert_ne!(d.features() & F_RO, 0);
    assert_eq!(d.features() & (F_DISCARD | F_WRITE_ZEROES), 0);
    let before = std::fs::read(&s.img).unwrap();
    assert_eq!(write(&mut d, 0, 0, &[0xee; 4096]).0, S_IOERR);
    assert_ne!(simple(&mut d, T_DISCARD, &seg(0, 8, 0)), S_OK);
    assert_ne!(simple(&mut d, T_WRITE_ZEROES, &seg(0, 8, 0)), S_OK);
    let (st, back, _) = read(&mut d, 0, 3, 512);
    assert_eq!(st, S_OK);
    assert!(back.iter().all(|&b| b == 3));
    assert_eq!(std::fs::read(&s.img).unwrap(), before);
}

#[test]
fn out_of_range_and_malformed_requests_are_ioerr() {
    let s = setup();
    let _d = spawn(&s, s.img.to_str().unwrap(), &[]);
    let mut d = connect(&s, 1);
    let before = std::fs::read(&s.img).unwrap();
    assert_eq!(read(&mut d, 0, SECTORS, 512).0, S_IOERR);
    assert_eq!(read(&mut d, 0, SECTORS - 1, 1024).0, S_IOERR);
    assert_eq!(read(&mut d, 0, u64::MAX, 512).0, S_IOERR);
    assert_eq!(write(&mut d, 0, SECTORS - 1, &[1; 1024]).0, S_IOERR);
    assert_eq!(write(&mut d, 0, 0, &[1; 100]).0, S_IOERR); // not whole sectors
                                                           // Header too short.
    let c = d.request(0, &[&[0u8; 8]], &[1], T).unwrap();
    assert_eq!(c.written[0][0], S_IOERR);
    assert_eq!(std::fs::read(&s.img).unwrap(), before);
    // The last sector is fine, and the device still serves after all that.
    let (st, last, _) = read(&mut d, 0, SECTORS - 1, 512);
    assert_eq!(st, S_OK);
    assert!(last.iter().all(|&b| b == ((SECTORS - 1) % 251) as u8));
}

#[test]
fn second_writable_backend_on_the_same_image_is_refused() {
    let s = setup();
    let _first = spawn(&s, s.img.to_str().unwrap(), &[]);
    // Wait until the first one holds the lock (it is listening).
    drop(connect(&s, 1));
    for file_arg in [
        s.img.display().to_string(),
        format!("{}:read-only", s.img.display()),
    ] {
        let sock2 = s.sock.with_file_name("second.sock");
        let out = Command::new(env!("CARGO_BIN_EXE_block-device"))
            .args([
                "--socket-path",
                sock2.to_str().unwrap(),
                "--file",
                &file_arg,
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = Kill(out);
        let st = wait_exit(&mut child.0, T).expect("second block-device kept running");
        assert!(!st.success());
        let mut err = String::new();
        use std::io::Read;
        child
            .0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(err.contains("in use"), "stderr: {err}");
    }
}

#[test]
fn read_only_backends_share_an_image() {
    let s = setup();
    let arg = format!("{}:read-only", s.img.display());
    let _a = spawn(&s, &arg, &[]);
    drop(connect(&s, 1));
    let s2 = Setup {
        _dir: tempfile::tempdir().unwrap(),
        img: s.img.clone(),
        sock: s.sock.with_file_name("b.sock"),
    };
    let _b = spawn(&s2, &arg, &[]);
    let mut d = connect(&s2, 1);
    assert_eq!(read(&mut d, 0, 5, 512).0, S_OK);
}

#[test]
fn data_survives_a_frontend_reconnect() {
    let s = setup();
    let _d = spawn(&s, s.img.to_str().unwrap(), &[]);
    {
        let mut d = connect(&s, 1);
        assert_eq!(write(&mut d, 0, 50, &[0x77; 1024]).0, S_OK);
    }
    let mut d = connect(&s, 1);
    let (st, back, _) = read(&mut d, 0, 50, 1024);
    assert_eq!(st, S_OK);
    assert_eq!(back, vec![0x77; 1024]);
}

#[test]
fn direct_mode_round_trip() {
    let s = setup();
    let _d = spawn(&s, s.img.to_str().unwrap(), &["--direct"]);
    let mut d = connect(&s, 1);
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(write(&mut d, 0, 64, &data).0, S_OK);
    assert_eq!(read(&mut d, 0, 64, 4096).1, data);
    // Sub-4K, 512-aligned request.
    assert_eq!(write(&mut d, 0, 3, &[9; 512]).0, S_OK);
    assert_eq!(file_bytes(&s.img, 3 * 512, 512), vec![9; 512]);
}

#[test]
fn event_idx_device_publishes_avail_event() {
    const F_EVENT_IDX: u64 = 1 << 29;
    let s = setup();
    let _d = spawn(&s, s.img.to_str().unwrap(), &["--poll-us", "0"]);
    let mut d = VhostUserDriver::connect(
        &s.sock,
        DriverConfig::new(1).with_features(BLK_FEATURES | F_EVENT_IDX),
    )
    .unwrap();
    assert_ne!(d.features() & F_EVENT_IDX, 0, "EVENT_IDX not offered");
    let (size, avail, used) = {
        let q = d.queue(0).unwrap();
        (q.size() as u64, q.avail_ring(), q.used_ring())
    };
    // Driver side of EVENT_IDX: ask for a call after every completion (used_event = next used).
    for i in 0..5u16 {
        d.write(
            vm_memory::GuestAddress(avail.0 + 4 + 2 * size),
            &i.to_le_bytes(),
        )
        .unwrap();
        assert_eq!(write(&mut d, 0, 10 + u64::from(i), &[i as u8; 512]).0, S_OK);
        // Device side: avail_event (after the used ring) tells the driver which avail index
        // needs a kick: the next one it has not consumed yet. The device updates it right
        // after completing, so allow it a moment.
        let start = Instant::now();
        let ev = loop {
            let ev = d
                .read(vm_memory::GuestAddress(used.0 + 4 + 8 * size), 2)
                .unwrap();
            let ev = u16::from_le_bytes([ev[0], ev[1]]);
            if ev == i + 1 || start.elapsed() > Duration::from_secs(2) {
                break ev;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(ev, i + 1);
    }
    assert_eq!(read(&mut d, 0, 12, 512).1, vec![2u8; 512]);
}

/// Thread names (`comm`) of `pid` and every process below it.
fn thread_names_below(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in rd.flatten() {
                let tid = t.file_name().to_string_lossy().to_string();
                if let Ok(c) = std::fs::read_to_string(format!("/proc/{p}/task/{tid}/comm")) {
                    names.push(c.trim().to_string());
                }
                if let Ok(ch) = std::fs::read_to_string(format!("/proc/{p}/task/{tid}/children")) {
                    todo.extend(ch.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
                }
            }
        }
    }
    names
}

/// 32 writes, flushes, discards and write-zeroes in flight at once, then 32 reads in flight:
/// every request completes exactly once with status OK, completion order may differ from
/// submission order, and the image holds exactly what was written. Run buffered and O_DIRECT,
/// with EVENT_IDX, and check the blocking requests really ran on the queue's I/O threads.
#[test]
fn many_requests_in_flight_on_io_threads() {
    use cordon_frontend::vhost_user::Buffer;
    use vm_memory::{Bytes, GuestAddress};
    const F_EVENT_IDX: u64 = 1 << 29;
    const N: usize = 32;
    for direct in [false, true] {
        let s = setup();
        let extra: &[&str] = if direct { &["--direct"] } else { &[] };
        let dev = spawn(&s, s.img.to_str().unwrap(), extra);
        let mut d = VhostUserDriver::connect(
            &s.sock,
            DriverConfig::new(1).with_features(BLK_FEATURES | F_EVENT_IDX),
        )
        .unwrap();
        let mem = d.memory().clone();
        // Slot i: header, 4 KiB page-aligned data, status.
        let mut slots = Vec::new();
        for _ in 0..N {
            let raw = d.alloc(2 * 4096).unwrap();
            let data = GuestAddress((raw.0 + 4095) & !4095);
            slots.push((d.alloc(16).unwrap(), data, d.alloc(1).unwrap()));
        }
        let submit =
            |d: &mut VhostUserDriver, i: usize, kind: u32, sector: u64, data_dir: Option<bool>| {
                let (h, data, st) = slots[i];
                mem.write_slice(&hdr(kind, sector), h).unwrap();
                mem.write_obj(0xffu8, st).unwrap();
                let mut bufs = vec![Buffer {
                    addr: h,
                    len: 16,
                    writable: false,
                }];
                if let Some(writable) = data_dir {
                    let len = if kind == T_DISCARD || kind == T_WRITE_ZEROES {
                        16
                    } else {
                        4096
                    };
                    bufs.push(Buffer {
                        addr: data,
                        len,
                        writable,
                    });
                }
                bufs.push(Buffer {
                    addr: st,
                    len: 1,
                    writable: true,
                });
                d.queue(0).unwrap().add(&mem, &bufs).unwrap()
            };
        let collect = |d: &mut VhostUserDriver, heads: &[u16]| -> Vec<u16> {
            let mut order = Vec::new();
            let start = Instant::now();
            while order.len() < heads.len() {
                assert!(
                    start.elapsed() < T,
                    "only {} of {} completed",
                    order.len(),
                    heads.len()
                );
                for u in d.queue(0).unwrap().wait_used(&mem, T).unwrap() {
                    assert!(
                        heads.contains(&u.head) && !order.contains(&u.head),
                        "bad head {}",
                        u.head
                    );
                    order.push(u.head);
                }
            }
            order
        };
        // Phase 1: writes of distinct patterns to sectors 8*i, with a flush, a discard and a
        // write-zeroes among them (on other sectors).
        let mut heads = Vec::new();
        for (i, &(_, data, _)) in slots.iter().enumerate() {
            let h = match i {
                10 => {
                    mem.write_slice(&seg(4000, 8, 0), data).unwrap();
                    submit(&mut d, i, T_DISCARD, 0, Some(false))
                }
                20 => {
                    mem.write_slice(&seg(4100, 8, 0), data).unwrap();
                    submit(&mut d, i, T_WRITE_ZEROES, 0, Some(false))
                }
                30 => submit(&mut d, i, T_FLUSH, 0, None),
                _ => {
                    mem.write_slice(&[(i as u8).wrapping_mul(7) | 1; 4096], data)
                        .unwrap();
                    submit(&mut d, i, T_OUT, 8 * i as u64, Some(false))
                }
            };
            heads.push(h);
        }
        d.queue(0).unwrap().kick().unwrap();
        collect(&mut d, &heads);
        for (i, s) in slots.iter().enumerate() {
            assert_eq!(
                mem.read_obj::<u8>(s.2).unwrap(),
                S_OK,
                "request {i} direct={direct}"
            );
        }
        for i in (0..N).filter(|i| ![10, 20, 30].contains(i)) {
            let want = vec![(i as u8).wrapping_mul(7) | 1; 4096];
            assert!(
                file_bytes(&s.img, 8 * 512 * i as u64, 4096) == want,
                "sector {} direct={direct}",
                8 * i
            );
        }
        assert_eq!(file_bytes(&s.img, 4000 * 512, 4096), vec![0; 4096]);
        assert_eq!(file_bytes(&s.img, 4100 * 512, 4096), vec![0; 4096]);
        // Phase 2: 32 reads in flight read back what phase 1 wrote.
        let mut heads = Vec::new();
        for (i, &(_, data, _)) in slots.iter().enumerate() {
            mem.write_slice(&[0u8; 4096], data).unwrap();
            heads.push(submit(&mut d, i, T_IN, 8 * i as u64, Some(true)));
        }
        d.queue(0).unwrap().kick().unwrap();
        collect(&mut d, &heads);
        for (i, sl) in slots.iter().enumerate() {
            assert_eq!(mem.read_obj::<u8>(sl.2).unwrap(), S_OK);
            let mut back = vec![0u8; 4096];
            mem.read_slice(&mut back, sl.1).unwrap();
            assert_eq!(
                back,
                file_bytes(&s.img, 8 * 512 * i as u64, 4096),
                "read {i} direct={direct}"
            );
        }
        let names = thread_names_below(dev.0.id());
        assert!(
            names.iter().any(|n| n == "blk-io-0"),
            "no I/O thread in the device (direct={direct}): {names:?}"
        );
        drop(d);
        drop(dev);
    }
}

/// EVENT_IDX with requests completing concurrently on the I/O threads (O_DIRECT writes always
/// go there): the driver asks to be interrupted only once the last of a batch of 16 is used
/// (`used_event` = last index); the interrupt must come (no lost wakeup when several threads
/// complete at once) and by then all 16 are on the used ring (none announced early).
#[test]
fn event_idx_interrupt_after_concurrent_completions() {
    use cordon_frontend::vhost_user::Buffer;
    use vm_memory::{Bytes, GuestAddress};
    const F_EVENT_IDX: u64 = 1 << 29;
    const N: u16 = 16;
    let s = setup();
    let _dev = spawn(&s, s.img.to_str().unwrap(), &["--direct"]);
    let mut d = VhostUserDriver::connect(
        &s.sock,
        DriverConfig::new(1).with_features(BLK_FEATURES | F_EVENT_IDX),
    )
    .unwrap();
    let mem = d.memory().clone();
    let (size, avail) = {
        let q = d.queue(0).unwrap();
        (q.size() as u64, q.avail_ring())
    };
    let used_event = GuestAddress(avail.0 + 4 + 2 * size);
    let mut slots = Vec::new();
    for _ in 0..N {
        let raw = d.alloc(2 * 4096).unwrap();
        let data = GuestAddress((raw.0 + 4095) & !4095);
        slots.push((d.alloc(16).unwrap(), data, d.alloc(1).unwrap()));
    }
    let mut used_total: u16 = 0;
    for round in 0..21u16 {
        // Interrupt wanted when the used index moves past used_total + N - 1.
        mem.write_obj((used_total + N - 1).to_le(), used_event)
            .unwrap();
        let q = d.queue(0).unwrap();
        q.wait_call(Duration::ZERO).unwrap(); // drop a stale signal
        for (i, &(h, data, st)) in slots.iter().enumerate() {
            let sector = 8 * (u64::from(round) * u64::from(N) + i as u64) % (SECTORS - 8);
            mem.write_slice(&hdr(T_OUT, sector), h).unwrap();
            mem.write_slice(&[round as u8; 4096], data).unwrap();
            mem.write_obj(0xffu8, st).unwrap();
            let bufs = [
                Buffer {
                    addr: h,
                    len: 16,
                    writable: false,
                },
                Buffer {
                    addr: data,
                    len: 4096,
                    writable: false,
                },
                Buffer {
                    addr: st,
                    len: 1,
                    writable: true,
                },
            ];
            q.add(&mem, &bufs).unwrap();
        }
        q.kick().unwrap();
        // Round 0 warms up (a device's first check always notifies); from then on exactly
        // the crossing of used_event must interrupt.
        assert!(
            q.wait_call(Duration::from_secs(10)).unwrap(),
            "round {round}: no interrupt after {N} concurrent completions"
        );
        let got = q.poll_used(&mem).unwrap();
        if round > 0 {
            assert_eq!(
                got.len(),
                usize::from(N),
                "round {round}: interrupted early"
            );
        } else {
            let mut n = got.len();
            while n < usize::from(N) {
                n += q.wait_used(&mem, T).unwrap().len();
            }
            // Let the warm-up round's last signal land before the next round drains it.
            std::thread::sleep(Duration::from_millis(100));
        }
        for &(_, _, st) in &slots {
            assert_eq!(mem.read_obj::<u8>(st).unwrap(), S_OK);
        }
        used_total = used_total.wrapping_add(N);
    }
}
