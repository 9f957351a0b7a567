//! Block benchmark: 4 KiB random read and random write at queue depth 1 and 32, IOPS and
//! p50/p99 latency, for Cordon's `block-device`, qemu-storage-daemon's vhost-user-blk export
//! (both driven by the same vhost-user frontend driver) and direct I/O on the image by this
//! process (the limit); plus the idle RSS of both backend processes. Results go to
//! `bench/results/block.md`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cordon_frontend::vhost_user::{Buffer, DriverConfig, VhostUserDriver};
use vm_memory::{Bytes, GuestAddress};

/// Size of each I/O.
pub const IO_SIZE: usize = 4096;

/// The operation measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// 4 KiB random reads.
    RandRead,
    /// 4 KiB random writes.
    RandWrite,
}

impl Op {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Op::RandRead => "randread",
            Op::RandWrite => "randwrite",
        }
    }
}

/// Result of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Completed I/Os per second.
    pub iops: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// I/Os completed.
    pub ops: u64,
    /// CPU time of the backend's process tree per I/O, microseconds (0 for the host row).
    pub backend_cpu_us: f64,
    /// CPU time of the issuing process (this benchmark: the frontend driver, or the host
    /// loop) per I/O, microseconds.
    pub driver_cpu_us: f64,
}

impl Stats {
    /// Stats from per-I/O latencies (nanoseconds) over `elapsed`.
    pub fn from_latencies(lat_ns: &mut [u64], elapsed: Duration) -> Stats {
        if lat_ns.is_empty() {
            return Stats::default();
        }
        lat_ns.sort_unstable();
        let pct = |p: f64| {
            let i = ((lat_ns.len() as f64 - 1.0) * p).round() as usize;
            lat_ns[i.min(lat_ns.len() - 1)] as f64 / 1000.0
        };
        Stats {
            iops: lat_ns.len() as f64 / elapsed.as_secs_f64(),
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            ops: lat_ns.len() as u64,
            backend_cpu_us: 0.0,
            driver_cpu_us: 0.0,
        }
    }
}

/// Small fast PRNG (xorshift64*) for offsets: the benchmark must not measure its RNG.
#[derive(Debug, Clone)]
pub struct Offsets {
    state: u64,
    blocks: u64,
}

impl Offsets {
    /// Random 4 KiB-aligned offsets inside an image of `size` bytes.
    pub fn new(size: u64, seed: u64) -> Self {
        Offsets {
            state: seed | 1,
            blocks: (size / IO_SIZE as u64).max(1),
        }
    }

    /// Next offset in bytes.
    pub fn next_offset(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % self.blocks) * IO_SIZE as u64
    }
}

/// Direct host I/O on the image (the limit): `threads` threads of this process, each doing
/// synchronous pread/pwrite back to back, so `threads` requests are in flight at any time (the
/// host equivalent of queue depth `threads`). Each latency is one syscall.
pub fn host_io(path: &Path, op: Op, duration: Duration, threads: usize) -> std::io::Result<Stats> {
    let file = File::options().read(true).write(true).open(path)?;
    let size = file.metadata()?.len();
    let start = Instant::now();
    let results: Vec<std::io::Result<Vec<u64>>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|t| {
                let file = &file;
                sc.spawn(move || -> std::io::Result<Vec<u64>> {
                    let mut offs = Offsets::new(size, 0x5eed + t as u64 * 7919);
                    let mut buf = vec![0x5au8; IO_SIZE];
                    let mut lat = Vec::with_capacity(1 << 20);
                    // At least one batch per thread, even when it is scheduled late.
                    loop {
                        for _ in 0..256 {
                            let off = offs.next_offset();
                            let t0 = Instant::now();
                            match op {
                                Op::RandRead => file.read_exact_at(&mut buf, off)?,
                                Op::RandWrite => file.write_all_at(&buf, off)?,
                            }
                            lat.push(t0.elapsed().as_nanos() as u64);
                        }
                        if start.elapsed() >= duration {
                            break;
                        }
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("host I/O thread panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut lat = Vec::new();
    for r in results {
        lat.extend(r?);
    }
    Ok(Stats::from_latencies(&mut lat, elapsed))
}

/// virtio-blk request types used here.
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
/// virtio-blk feature bits the benchmark driver accepts (SEG_MAX, BLK_SIZE, FLUSH).
const BLK_FEATURES: u64 = (1 << 2) | (1 << 6) | (1 << 9);

/// One in-flight request slot: header, 4 KiB data buffer, status byte.
struct Slot {
    hdr: GuestAddress,
    data: GuestAddress,
    status: GuestAddress,
    start: Instant,
}

/// Drive a vhost-user-blk backend at `sock` through Cordon's frontend driver: 4 KiB random
/// `op` at queue depth `qd` for `duration`, one queue. Every status byte is checked.
pub fn vhost_user_blk(
    sock: &Path,
    op: Op,
    qd: usize,
    duration: Duration,
    image_size: u64,
) -> anyhow::Result<Stats> {
    let mut cfg = DriverConfig::new(1).with_features(BLK_FEATURES);
    cfg.mem_size = 32 << 20;
    let mut d = VhostUserDriver::connect(sock, cfg).context("connect to the backend")?;
    let mem = d.memory().clone();
    let mut slots = Vec::with_capacity(qd);
    for _ in 0..qd {
        let raw = d.alloc(2 * IO_SIZE)?;
        let data = GuestAddress((raw.0 + IO_SIZE as u64 - 1) & !(IO_SIZE as u64 - 1));
        let hdr = d.alloc(16)?;
        let status = d.alloc(1)?;
        mem.write_slice(&[0x5a; IO_SIZE], data)?;
        slots.push(Slot {
            hdr,
            data,
            status,
            start: Instant::now(),
        });
    }
    let kind = match op {
        Op::RandRead => T_IN,
        Op::RandWrite => T_OUT,
    };
    let mut offs = Offsets::new(image_size, 0x5eed ^ qd as u64);
    let mut by_head = vec![usize::MAX; 1 << 16];
    let mut lat = Vec::with_capacity(1 << 20);
    let mut submit =
        |d: &mut VhostUserDriver, slot: usize, slots: &mut [Slot]| -> anyhow::Result<u16> {
            let s = &mut slots[slot];
            let mut h = [0u8; 16];
            h[0..4].copy_from_slice(&kind.to_le_bytes());
            h[8..16].copy_from_slice(&(offs.next_offset() / 512).to_le_bytes());
            mem.write_slice(&h, s.hdr)?;
            mem.write_obj(0xffu8, s.status)?;
            let bufs = [
                Buffer {
                    addr: s.hdr,
                    len: 16,
                    writable: false,
                },
                Buffer {
                    addr: s.data,
                    len: IO_SIZE as u32,
                    writable: op == Op::RandRead,
                },
                Buffer {
                    addr: s.status,
                    len: 1,
                    writable: true,
                },
            ];
            s.start = Instant::now();
            Ok(d.queue(0)?.add(&mem, &bufs)?)
        };
    for i in 0..qd {
        let head = submit(&mut d, i, &mut slots)?;
        by_head[head as usize] = i;
    }
    d.queue(0)?.kick()?;
    let start = Instant::now();
    while start.elapsed() < duration {
        let used = d.queue(0)?.wait_used(&mem, Duration::from_secs(10))?;
        let now = Instant::now();
        for u in used {
            let slot = by_head[u.head as usize];
            if slot == usize::MAX {
                bail!("backend completed unknown head {}", u.head);
            }
            let st: u8 = mem.read_obj(slots[slot].status)?;
            if st != 0 {
                bail!("backend returned status {st}");
            }
            lat.push(now.duration_since(slots[slot].start).as_nanos() as u64);
            let head = submit(&mut d, slot, &mut slots)?;
            by_head[head as usize] = slot;
        }
        d.queue(0)?.kick()?;
    }
    let elapsed = start.elapsed();
    // Drain what is still in flight before disconnecting (a backend may not expect a frontend
    // to vanish with requests outstanding; qemu-storage-daemon 10.0 asserts on it).
    let mut in_flight = qd;
    while in_flight > 0 {
        in_flight -= d
            .queue(0)?
            .wait_used(&mem, Duration::from_secs(10))?
            .len()
            .min(in_flight);
    }
    Ok(Stats::from_latencies(&mut lat, elapsed))
}

/// Resident set size of process `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no VmRSS for pid {pid}")))
}

/// Field `field` (e.g. `Pss`) of `/proc/<pid>/smaps_rollup`, in KiB.
fn smaps_rollup_kib(pid: u32, field: &str) -> std::io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no {field} for pid {pid}")))
}

/// Proportional set size of process `pid` in KiB (shared pages split between sharers).
pub fn pss_kib(pid: u32) -> std::io::Result<u64> {
    smaps_rollup_kib(pid, "Pss")
}

/// Anonymous (private, not file-backed) memory of process `pid` in KiB: its heap, stacks and
/// written data, the part no other process or the page cache shares.
pub fn anon_kib(pid: u32) -> std::io::Result<u64> {
    smaps_rollup_kib(pid, "Anonymous")
}

/// Anonymous memory ([`anon_kib`]) of the process serving the socket: the last of `pid`'s
/// process tree.
pub fn server_anon_kib(pid: u32) -> std::io::Result<u64> {
    let tree = process_tree(pid);
    anon_kib(*tree.last().unwrap_or(&pid))
}

/// `pid` and all its descendants, parents first.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // Fields after the parenthesised command name: state, ppid, ...
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok());
            if let Some(pp) = ppid {
                all.push((p, pp));
            }
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == parent).map(|(p, _)| *p));
        i += 1;
    }
    tree
}

/// CPU time (user + system, clock ticks) consumed so far by process `pid` (all its threads).
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let f = |i: usize| {
        rest.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    f(14) + f(15)
}

/// CPU ticks of `pid` and all its descendants.
pub fn cpu_ticks_tree(pid: u32) -> u64 {
    process_tree(pid).into_iter().map(cpu_ticks).sum()
}

/// Microseconds per clock tick.
pub fn tick_us() -> f64 {
    // SAFETY: sysconf has no memory side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e6 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// Memory of a backend: (RSS of the process that serves, KiB; PSS of its whole process tree,
/// KiB; number of processes).
pub fn backend_memory(pid: u32) -> std::io::Result<(u64, u64, usize)> {
    let tree = process_tree(pid);
    let server = *tree.last().unwrap_or(&pid);
    let rss = rss_kib(server)?;
    let mut pss = 0;
    for p in &tree {
        pss += pss_kib(*p)?;
    }
    Ok((rss, pss, tree.len()))
}

/// Target name of the host rows with one thread per queue slot.
pub const HOST_QD: &str = "host pread/pwrite, QD threads";
/// Target name of the host rows with a single thread.
pub const HOST_1: &str = "host pread/pwrite, 1 thread";

/// One row of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Who served the I/O.
    pub target: String,
    /// Operation.
    pub op: Op,
    /// Queue depth.
    pub qd: usize,
    /// Measurements.
    pub stats: Stats,
}

/// Render the results as Markdown.
pub fn render(rows: &[Row], mem: &[(String, (u64, u64, usize))], notes: &str) -> String {
    let mut s = String::new();
    s.push_str("# Block benchmark results\n\n");
    s.push_str(notes);
    s.push_str("\n\n| target | op | QD | IOPS | p50 (µs) | p99 (µs) | I/Os | backend CPU µs/IO | driver CPU µs/IO |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {} | {:.2} | {:.2} |\n",
            r.target,
            r.op.name(),
            r.qd,
            r.stats.iops,
            r.stats.p50_us,
            r.stats.p99_us,
            r.stats.ops,
            r.stats.backend_cpu_us,
            r.stats.driver_cpu_us
        ));
    }
    s.push_str("\n## Ratios (IOPS)\n\n| op | QD | block-device / best qsd | block-device / best host row (the limit) |\n|---|---:|---:|---:|\n");
    for op in [Op::RandRead, Op::RandWrite] {
        for qd in [1usize, 32] {
            let get = |t: &str| {
                rows.iter()
                    .find(|r| r.target == t && r.op == op && r.qd == qd)
                    .map(|r| r.stats.iops)
            };
            let best_qsd = rows
                .iter()
                .filter(|r| r.target.starts_with("qemu-storage-daemon") && r.op == op && r.qd == qd)
                .map(|r| r.stats.iops)
                .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
            if let (Some(c), Some(q), Some(h), Some(h1)) = (
                get("cordon block-device"),
                best_qsd,
                get(HOST_QD),
                get(HOST_1),
            ) {
                s.push_str(&format!(
                    "| {} | {} | {:.2}x | {:.0}% |\n",
                    op.name(),
                    qd,
                    c / q,
                    100.0 * c / h.max(h1)
                ));
            }
        }
    }
    s.push_str("\n## Idle memory\n\nRSS of the process that serves the socket (for block-device: the jailed \
                child), and PSS summed over the backend's whole process tree (block-device: unjailed \
                waiter + namespace init + jailed server; shared pages counted once).\n\n\
                | backend | RSS of the serving process (MiB) | PSS of the process tree (MiB) | processes |\n|---|---:|---:|---:|\n");
    for (name, (rss, pss, n)) in mem {
        s.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {n} |\n",
            *rss as f64 / 1024.0,
            *pss as f64 / 1024.0
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        let s = Stats::from_latencies(&mut v, Duration::from_secs(1));
        assert_eq!(s.iops, 100.0);
        assert!((s.p50_us - 50.0).abs() <= 1.0);
        assert!((s.p99_us - 99.0).abs() <= 1.0);
    }

    #[test]
    fn offsets_stay_in_range_and_aligned() {
        let mut o = Offsets::new(1 << 20, 7);
        for _ in 0..1000 {
            let x = o.next_offset();
            assert!(x + IO_SIZE as u64 <= 1 << 20);
            assert_eq!(x % IO_SIZE as u64, 0);
        }
    }
}
