//! Block benchmark: 4 KiB random read and random write at queue depth 1 and 32, IOPS and
//! p50/p99 latency, for Cordon's `block-device`, qemu-storage-daemon's vhost-user-blk export
//! (both driven by the same vhost-user frontend driver) and direct I/O on the image by this
//! process (the limit); plus the idle RSS of both backend processes. Results go to
//! `bench/results/block.md`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

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

/// Direct host I/O on the image (the limit): one thread, synchronous pread/pwrite. With a
/// buffered image there is no device queue to keep full, so `qd` requests are issued back to
/// back and each one's latency is its own syscall time.
pub fn host_io(path: &Path, op: Op, duration: Duration) -> std::io::Result<Stats> {
    let file = File::options().read(true).write(true).open(path)?;
    let size = file.metadata()?.len();
    let mut offs = Offsets::new(size, 0x5eed);
    let mut buf = vec![0x5au8; IO_SIZE];
    let mut lat = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    while start.elapsed() < duration {
        for _ in 0..256 {
            let off = offs.next_offset();
            let t = Instant::now();
            match op {
                Op::RandRead => file.read_exact_at(&mut buf, off)?,
                Op::RandWrite => file.write_all_at(&buf, off)?,
            }
            lat.push(t.elapsed().as_nanos() as u64);
        }
    }
    let elapsed = start.elapsed();
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
pub fn render(rows: &[Row], rss: &[(String, u64)], notes: &str) -> String {
    let mut s = String::new();
    s.push_str("# Block benchmark results\n\n");
    s.push_str(notes);
    s.push_str("\n\n| target | op | QD | IOPS | p50 (µs) | p99 (µs) | I/Os |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.1} | {:.1} | {} |\n",
            r.target,
            r.op.name(),
            r.qd,
            r.stats.iops,
            r.stats.p50_us,
            r.stats.p99_us,
            r.stats.ops
        ));
    }
    s.push_str("\n## Ratios\n\n| op | QD | block-device / qsd | block-device / host |\n|---|---:|---:|---:|\n");
    for op in [Op::RandRead, Op::RandWrite] {
        for qd in [1usize, 32] {
            let get = |t: &str| {
                rows.iter()
                    .find(|r| r.target == t && r.op == op && r.qd == qd)
                    .map(|r| r.stats.iops)
            };
            if let (Some(c), Some(q), Some(h)) = (
                get("cordon block-device"),
                get("qemu-storage-daemon"),
                get("host pread/pwrite"),
            ) {
                s.push_str(&format!(
                    "| {} | {} | {:.2}x | {:.0}% |\n",
                    op.name(),
                    qd,
                    c / q,
                    100.0 * c / h
                ));
            }
        }
    }
    s.push_str("\n## Idle RSS\n\n| process | RSS (MiB) |\n|---|---:|\n");
    for (name, kib) in rss {
        s.push_str(&format!("| {name} | {:.1} |\n", *kib as f64 / 1024.0));
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
