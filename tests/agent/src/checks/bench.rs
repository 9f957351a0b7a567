//! The benchmark checks (`bench-blk`, `bench-send`, `bench-recv`): workloads whose result
//! data are figures. Parameters and statistics: [`crate::bench`].

use crate::bench::{self, BlkBench, Proto, Rw};
use crate::report::{emit, Outcome};
use crate::spec::CheckSpec;
use crate::sysutil::{dev_path, random_bytes, AlignedBuf};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use super::stream::{net_up, retry, shut_write, vsock_accept, vsock_connect_stream};

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// Size of one write/read call of the stream benchmarks.
const CHUNK: usize = 64 * 1024;

/// Size of a block device or regular file.
fn size_of(f: &File, path: &str) -> Result<u64, String> {
    let meta = f.metadata().map_err(|e| format!("stat {path}: {e}"))?;
    if !meta.file_type().is_block_device() {
        return Ok(meta.len());
    }
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which points to `size`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if r != 0 {
        return Err(format!(
            "BLKGETSIZE64 {path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(size)
}

/// One thread of `bench-blk`: requests back to back until `end`; returns each latency (ns).
fn blk_worker(
    f: &File,
    b: &BlkBench,
    slots: u64,
    seed: u64,
    end: Instant,
) -> Result<Vec<u64>, String> {
    let mut buf = AlignedBuf::new(b.bs)?;
    if b.rw == Rw::RandWrite {
        random_bytes(&mut buf.as_mut_slice()[..b.bs])?;
    }
    let mut x = seed | 1;
    let mut lat = Vec::with_capacity(4096);
    while Instant::now() < end {
        // xorshift64: cheap, and different per thread.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % slots) * b.bs as u64;
        let t = Instant::now();
        let n = match b.rw {
            Rw::RandRead => f.read_at(&mut buf.as_mut_slice()[..b.bs], off),
            Rw::RandWrite => f.write_at(&buf.as_slice()[..b.bs], off),
        }
        .map_err(|e| format!("{} at {off}: {e}", b.rw.name()))?;
        lat.push(t.elapsed().as_nanos() as u64);
        if n != b.bs {
            return Err(format!(
                "{} at {off}: short transfer ({n} of {} bytes)",
                b.rw.name(),
                b.bs
            ));
        }
    }
    Ok(lat)
}

/// `bench-blk`: fio-like 4 KiB random reads or writes at a queue depth (see [`crate::bench`]).
pub fn blk(c: &CheckSpec) -> Result<Outcome, String> {
    let b = Arc::new(BlkBench::from_spec(c)?);
    let path = dev_path(&b.dev);
    let mut o = OpenOptions::new();
    o.read(true).write(b.rw == Rw::RandWrite);
    if b.direct {
        o.custom_flags(libc::O_DIRECT);
    }
    let f = Arc::new(o.open(&path).map_err(|e| format!("open {path}: {e}"))?);
    let slots = b.slots(size_of(&f, &path)?)?;
    let start = Instant::now();
    let end = start + b.duration;
    let seed = start.elapsed().as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let workers: Vec<_> = (0..b.qd as u64)
        .map(|i| {
            let (f, b) = (Arc::clone(&f), Arc::clone(&b));
            let s = seed.wrapping_add(i.wrapping_mul(0x2545_f491_4f6c_dd1d));
            std::thread::Builder::new()
                .name(format!("bench-blk-{i}"))
                .spawn(move || blk_worker(&f, &b, slots, s, end))
                .map_err(|e| format!("spawn worker {i}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut lat = Vec::new();
    for w in workers {
        lat.extend(w.join().map_err(|_| "worker panicked".to_string())??);
    }
    let secs = start.elapsed().as_secs_f64();
    let ios = lat.len() as u64;
    let l = bench::latency(&mut lat).ok_or("no request completed")?;
    let iops = ios as f64 / secs;
    Ok(Outcome::pass(format!(
        "{} bs={} qd={}: {ios} requests in {secs:.2} s, {iops:.0} IOPS, p50 {:.0} us, p99 {:.0} us",
        b.rw.name(),
        b.bs,
        b.qd,
        l.p50,
        l.p99
    ))
    .with("rw", b.rw.name())
    .with("bs", b.bs)
    .with("qd", b.qd)
    .with("ios", ios)
    .with("secs", bench::fmt(secs))
    .with("iops", bench::fmt(iops))
    .with("mib_s", bench::fmt(bench::mib_s(ios * b.bs as u64, secs)))
    .with("p50_us", bench::fmt(l.p50))
    .with("p99_us", bench::fmt(l.p99))
    .with("mean_us", bench::fmt(l.mean))
    .with("max_us", bench::fmt(l.max)))
}

fn stream_outcome(proto: Proto, what: &str, bytes: u64, secs: f64) -> Outcome {
    let rate = bench::mib_s(bytes, secs);
    let p = match proto {
        Proto::Tcp => "tcp",
        Proto::Vsock => "vsock",
    };
    Outcome::pass(format!(
        "{p}: {what} {bytes} bytes in {secs:.2} s: {rate:.1} MiB/s"
    ))
    .with("proto", p)
    .with("bytes", bytes)
    .with("secs", bench::fmt(secs))
    .with("mib_s", bench::fmt(rate))
}

/// Sends `bytes` in [`CHUNK`] writes, half-closes, reads the peer's count to EOF.
fn send_and_count<S: Read + Write>(
    mut s: S,
    shut: impl FnOnce(&S),
    bytes: u64,
) -> Result<u64, String> {
    let mut chunk = vec![0u8; CHUNK];
    random_bytes(&mut chunk)?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&chunk[..n])
            .map_err(|e| format!("send after {} of {bytes} bytes: {e}", bytes - left))?;
        left -= n as u64;
    }
    shut(&s);
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)
        .map_err(|e| format!("reading the sink's count: {e}"))?;
    bench::parse_count(&reply)
}

/// `bench-send`: the guest sends `bytes` to a host sink that answers with the count it got.
pub fn send(c: &CheckSpec) -> Result<Outcome, String> {
    let bytes = c.u64_or("bytes", 32 << 20)?;
    let proto = bench::proto(c)?;
    let (counted, secs) = match proto {
        Proto::Tcp => {
            net_up(c)?;
            let addr = format!("{}:{}", c.req("peer")?, c.u64_or("port", 7100)?);
            let s = retry(&format!("connect {addr}"), || TcpStream::connect(&addr))?;
            let t = Instant::now();
            let n = send_and_count(s, |s| drop(s.shutdown(Shutdown::Write)), bytes)?;
            (n, t.elapsed().as_secs_f64())
        }
        Proto::Vsock => {
            let cid = c.u64_or("cid", 2)? as u32;
            let port = c.u64_or("port", 7101)? as u32;
            let f = vsock_connect_stream(cid, port)?;
            let t = Instant::now();
            let n = send_and_count(f, shut_write, bytes)?;
            (n, t.elapsed().as_secs_f64())
        }
    };
    let out = stream_outcome(proto, "sent", bytes, secs).with("sink_counted", counted);
    if counted != bytes {
        return Ok(Outcome {
            ok: false,
            detail: format!("sent {bytes} bytes but the sink counted {counted}"),
            ..out
        });
    }
    Ok(out)
}

/// Counts bytes to EOF, answers with the count; returns (count, seconds from the start).
fn count_and_answer<S: Read + Write>(mut s: S, start: Instant) -> Result<(u64, f64), String> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("receive after {total} bytes: {e}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    s.write_all(format!("{total}\n").as_bytes())
        .map_err(|e| format!("answering the count: {e}"))?;
    Ok((total, secs))
}

/// `bench-recv`: the guest accepts one stream from the host, counts its bytes to EOF and
/// answers with the count.
pub fn recv(c: &CheckSpec) -> Result<Outcome, String> {
    let port = c.u64_or("port", 7102)?;
    let proto = bench::proto(c)?;
    let (total, secs) = match proto {
        Proto::Tcp => {
            net_up(c)?;
            let port = u16::try_from(port).map_err(|_| format!("bench-recv: port={port}"))?;
            let l =
                TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind {port}: {e}"))?;
            emit(&format!("CORDON-LISTENING tcp port={port}"));
            let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
            count_and_answer(s, Instant::now())?
        }
        Proto::Vsock => {
            let port = u32::try_from(port).map_err(|_| format!("bench-recv: port={port}"))?;
            let f = vsock_accept(port)?;
            count_and_answer(f, Instant::now())?
        }
    };
    let out = stream_outcome(proto, "received", total, secs);
    match c.u64_or("bytes", 0)? {
        0 => Ok(out),
        want if want == total => Ok(out),
        want => Ok(Outcome {
            ok: false,
            detail: format!("expected {want} bytes, received {total}"),
            ..out
        }),
    }
}

/// Runs a check on the host for the tests below (a short timeout keeps a hang visible).
#[cfg(test)]
fn timed<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("bench check hung")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse_checks;

    fn spec(s: &str) -> CheckSpec {
        parse_checks(s).unwrap().remove(0)
    }

    /// The bench mode really runs and reports every figure the host parses.
    #[test]
    fn blk_bench_reports_its_figures_on_a_file() {
        let dir = std::env::temp_dir().join(format!("agent-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("img");
        std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
        for rw in ["randread", "randwrite"] {
            let s = spec(&format!(
                "bench-blk:dev={}:rw={rw}:qd=4:ms=100:direct=0",
                img.display()
            ));
            let o = timed(move || blk(&s)).unwrap();
            assert!(o.ok, "{}", o.detail);
            for k in [
                "ios", "secs", "iops", "mib_s", "p50_us", "p99_us", "mean_us", "max_us",
            ] {
                let v: f64 = o.data[k].parse().unwrap_or_else(|_| panic!("{k}"));
                assert!(v >= 0.0, "{k}={v}");
            }
            assert!(o.data["ios"].parse::<u64>().unwrap() > 0);
            assert_eq!(o.data["rw"], rw);
            assert_eq!(o.data["qd"], "4");
        }
        let missing = spec("bench-blk:dev=/nonexistent/dev:ms=10:direct=0");
        assert!(blk(&missing).unwrap_err().contains("/nonexistent/dev"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `bench-send` against the peer's sink, and `bench-recv` from the peer's sender, over
    /// TCP on the loopback (`iface=lo`, whose 127.0.0.1/8 already exists).
    #[test]
    fn stream_benches_agree_with_the_peers_on_the_byte_count() {
        let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sink.local_addr().unwrap().port();
        std::thread::spawn(move || crate::peer::serve_sink_tcp(sink));
        let s = spec(&format!(
            "bench-send:proto=tcp:iface=lo:ip=127.0.0.1/8:peer=127.0.0.1:port={port}:bytes=300000"
        ));
        let o = timed(move || send(&s)).unwrap();
        assert!(o.ok, "{}", o.detail);
        assert_eq!(o.data["bytes"], "300000");
        assert_eq!(o.data["sink_counted"], "300000");
        assert_eq!(o.data["proto"], "tcp");

        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = spec(&format!(
            "bench-recv:proto=tcp:iface=lo:ip=127.0.0.1/8:port={port}:bytes=200000"
        ));
        let guest = std::thread::spawn(move || recv(&r));
        let sent = crate::peer::send_tcp(&format!("127.0.0.1:{port}"), 200_000).unwrap();
        assert_eq!(sent.counted, 200_000);
        let o = guest.join().unwrap().unwrap();
        assert!(o.ok, "{}", o.detail);
        assert_eq!(o.data["bytes"], "200000");
    }
}
