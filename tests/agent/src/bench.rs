//! Benchmark mode of the agent: the parameters of the `bench-*` checks and the statistics
//! they report. The workloads themselves are in `checks::bench`; this module holds the
//! parts that do not touch devices, so that they are unit-tested on the host.
//!
//! Plan syntax (as every check, see [`crate::spec`]):
//! - `bench-blk:dev=vda:rw=randread|randwrite:bs=4096:qd=1:ms=5000[:span=MiB][:direct=1]`:
//!   fio-like random I/O, `qd` threads each keeping one request in flight (QD = threads).
//!   Reports `rw`, `bs`, `qd`, `ios`, `secs`, `iops`, `mib_s`, `p50_us`, `p99_us`,
//!   `mean_us`, `max_us`.
//! - `bench-send:proto=tcp|vsock:...:bytes=N`: the guest sends N bytes to a host sink and
//!   waits for the sink's byte count (tcp: `ip`, `peer`, `port`; vsock: `cid`, `port`).
//! - `bench-recv:proto=tcp|vsock:port=N[:bytes=N]`: the guest accepts one stream from the
//!   host, counts bytes to EOF and answers with the count.
//!
//! Stream benchmarks report `bytes`, `secs`, `mib_s`.

use crate::spec::CheckSpec;
use std::time::Duration;

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rw {
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
}

impl Rw {
    /// The fio name (`randread`, `randwrite`).
    pub fn name(self) -> &'static str {
        match self {
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
        }
    }
}

/// Largest queue depth (threads) a `bench-blk` accepts.
pub const MAX_QD: u64 = 256;
/// Largest block size a `bench-blk` accepts (1 MiB).
pub const MAX_BS: u64 = 1 << 20;

/// Parameters of one `bench-blk` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkBench {
    /// Device (`vda` or `/dev/vda`).
    pub dev: String,
    /// Random reads or writes.
    pub rw: Rw,
    /// Bytes per request (a multiple of 512).
    pub bs: usize,
    /// Requests in flight (one thread each).
    pub qd: usize,
    /// How long to run.
    pub duration: Duration,
    /// Bytes from the start of the device the offsets are drawn from (0 = whole device).
    pub span: u64,
    /// Whether to open with O_DIRECT (default yes; no only for trying it on a regular file).
    pub direct: bool,
}

impl BlkBench {
    /// Reads the parameters of a `bench-blk` check, naming the bad one on error.
    pub fn from_spec(c: &CheckSpec) -> Result<Self, String> {
        let rw = match c.str_or("rw", "randread").as_str() {
            "randread" => Rw::RandRead,
            "randwrite" => Rw::RandWrite,
            other => {
                return Err(format!(
                    "bench-blk: rw={other}: accepted values are randread, randwrite"
                ))
            }
        };
        let bs = c.u64_or("bs", 4096)?;
        if bs == 0 || bs > MAX_BS || !bs.is_multiple_of(512) {
            return Err(format!(
                "bench-blk: bs={bs}: must be a multiple of 512 from 512 to {MAX_BS}"
            ));
        }
        let qd = c.u64_or("qd", 1)?;
        if qd == 0 || qd > MAX_QD {
            return Err(format!("bench-blk: qd={qd}: must be 1 to {MAX_QD}"));
        }
        let ms = c.u64_or("ms", 5000)?;
        if ms == 0 {
            return Err("bench-blk: ms=0: the run needs a duration".into());
        }
        let direct = match c.str_or("direct", "1").as_str() {
            "1" | "yes" | "true" => true,
            "0" | "no" | "false" => false,
            other => {
                return Err(format!(
                    "bench-blk: direct={other}: accepted values are 1, 0"
                ))
            }
        };
        Ok(BlkBench {
            dev: c.str_or("dev", "vda"),
            rw,
            bs: bs as usize,
            qd: qd as usize,
            duration: Duration::from_millis(ms),
            span: c.u64_or("span", 0)?.saturating_mul(1 << 20),
            direct,
        })
    }

    /// How many `bs` slots the offsets are drawn from, given the device size.
    pub fn slots(&self, dev_size: u64) -> Result<u64, String> {
        let span = if self.span == 0 {
            dev_size
        } else {
            self.span.min(dev_size)
        };
        let slots = span / self.bs as u64;
        if slots == 0 {
            return Err(format!(
                "bench-blk: {} has {dev_size} bytes, less than one {}-byte block",
                self.dev, self.bs
            ));
        }
        Ok(slots)
    }
}

/// Transport of a stream benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP over the guest's network interface.
    Tcp,
    /// AF_VSOCK.
    Vsock,
}

/// Reads `proto=` of a stream benchmark.
pub fn proto(c: &CheckSpec) -> Result<Proto, String> {
    match c.str_or("proto", "tcp").as_str() {
        "tcp" => Ok(Proto::Tcp),
        "vsock" => Ok(Proto::Vsock),
        other => Err(format!(
            "{}: proto={other}: accepted values are tcp, vsock",
            c.name
        )),
    }
}

/// Latency statistics of a set of requests, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median (nearest rank).
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Largest.
    pub max: f64,
}

/// The value at quantile `q` (0..=1) of sorted `v` by the nearest-rank method.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Statistics of per-request latencies given in nanoseconds (sorted in place).
pub fn latency(ns: &mut [u64]) -> Option<Latency> {
    ns.sort_unstable();
    let us = |v: u64| v as f64 / 1000.0;
    let sum: u128 = ns.iter().map(|&v| u128::from(v)).sum();
    Some(Latency {
        p50: us(percentile(ns, 0.50)?),
        p99: us(percentile(ns, 0.99)?),
        mean: sum as f64 / ns.len() as f64 / 1000.0,
        max: us(*ns.last()?),
    })
}

/// MiB/s of `bytes` moved in `secs`.
pub fn mib_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / f64::from(1 << 20)
    } else {
        0.0
    }
}

/// Formats a figure for a result line: at most one decimal for large values, three for
/// small ones.
pub fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Parses the byte count a sink answers with (`<count>\n`).
pub fn parse_count(reply: &[u8]) -> Result<u64, String> {
    let s = std::str::from_utf8(reply).map_err(|_| "count reply is not text".to_string())?;
    s.trim()
        .parse()
        .map_err(|_| format!("count reply {:?} is not a number", s.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_checks;

    fn spec(s: &str) -> CheckSpec {
        parse_checks(s).unwrap().remove(0)
    }

    #[test]
    fn parses_blk_bench_arguments() {
        let b = BlkBench::from_spec(&spec(
            "bench-blk:dev=vdb:rw=randwrite:bs=4096:qd=32:ms=1500:span=64",
        ))
        .unwrap();
        assert_eq!(
            b,
            BlkBench {
                dev: "vdb".into(),
                rw: Rw::RandWrite,
                bs: 4096,
                qd: 32,
                duration: Duration::from_millis(1500),
                span: 64 << 20,
                direct: true,
            }
        );
        let d = BlkBench::from_spec(&spec("bench-blk")).unwrap();
        assert_eq!((d.rw, d.bs, d.qd, d.direct), (Rw::RandRead, 4096, 1, true));
        assert_eq!(d.duration, Duration::from_secs(5));
        assert_eq!(d.slots(1 << 20).unwrap(), 256);
        assert_eq!(b.slots(1 << 30).unwrap(), 16384);
        assert!(b.slots(100).is_err());
    }

    #[test]
    fn rejects_bad_blk_bench_arguments_naming_them() {
        for (s, needle) in [
            ("bench-blk:rw=seqread", "rw=seqread"),
            ("bench-blk:bs=1000", "bs=1000"),
            ("bench-blk:bs=0", "bs=0"),
            ("bench-blk:bs=4194304", "bs=4194304"),
            ("bench-blk:qd=0", "qd=0"),
            ("bench-blk:qd=1000", "qd=1000"),
            ("bench-blk:ms=0", "ms=0"),
            ("bench-blk:direct=maybe", "direct=maybe"),
            ("bench-blk:qd=x", "qd=x"),
        ] {
            let e = BlkBench::from_spec(&spec(s)).unwrap_err();
            assert!(e.contains(needle), "{s}: {e}");
        }
        assert!(proto(&spec("bench-send:proto=udp"))
            .unwrap_err()
            .contains("proto=udp"));
        assert_eq!(proto(&spec("bench-send")).unwrap(), Proto::Tcp);
        assert_eq!(
            proto(&spec("bench-recv:proto=vsock")).unwrap(),
            Proto::Vsock
        );
    }

    #[test]
    fn statistics() {
        let mut v: Vec<u64> = (1..=100).rev().map(|i| i * 1000).collect();
        let l = latency(&mut v).unwrap();
        assert_eq!((l.p50, l.p99, l.max), (50.0, 99.0, 100.0));
        assert!((l.mean - 50.5).abs() < 1e-9);
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
        assert!(latency(&mut []).is_none());
        assert_eq!(mib_s(3 << 20, 1.5), 2.0);
        assert_eq!(mib_s(1, 0.0), 0.0);
        assert_eq!(fmt(1234.56), "1234.6");
        assert_eq!(fmt(1.23456), "1.235");
        assert_eq!(parse_count(b"1048576\n").unwrap(), 1 << 20);
        assert!(parse_count(b"lots").is_err());
        assert!(parse_count(&[0xff]).is_err());
    }
}
