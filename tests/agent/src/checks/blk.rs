//! Block device checks: read, write, write+read back, flush, discard, size.

use crate::hex;
use crate::report::Outcome;
use crate::spec::CheckSpec;
use crate::sysutil::{
    blk_stat, dev_name, direct_read, direct_write, open_direct, random_bytes, read_trim,
};
use std::os::unix::io::AsRawFd;

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKDISCARD: libc::c_ulong = 0x1277;
/// Index of "flush requests completed" in /sys/block/DEV/stat.
const STAT_FLUSHES: usize = 15;
/// Index of "discard requests completed" in /sys/block/DEV/stat.
const STAT_DISCARDS: usize = 11;

/// Results longer than this are summarised instead of hex-dumped.
const MAX_HEX: usize = 256;

fn compare(out: Outcome, what: &str, got: &[u8], expect: Option<Vec<u8>>) -> Outcome {
    match expect {
        Some(e) if e != got => Outcome {
            ok: false,
            detail: format!(
                "{what}: expected {}, got {}",
                hex::encode(&e),
                hex::encode(got)
            ),
            ..out
        },
        _ => out,
    }
}

/// `blk-read:dev=vda:offset=0:len=16[:expect=HEX]`: reads bytes with O_DIRECT.
pub fn read(c: &CheckSpec) -> Result<Outcome, String> {
    let dev = c.str_or("dev", "vda");
    let offset = c.u64_or("offset", 0)?;
    let expect = c.hex("expect")?;
    let len = c.u64_or("len", expect.as_ref().map_or(16, |e| e.len() as u64))? as usize;
    let got = direct_read(&dev, offset, len)?;
    let out = Outcome::pass(format!("read {len} bytes at {offset} from {dev}"))
        .with("hex", hex::encode(&got[..got.len().min(MAX_HEX)]));
    Ok(compare(out, "read", &got, expect))
}

/// `blk-write:dev=vda:offset=N:hex=HEX`: writes bytes with O_DIRECT and fsyncs.
pub fn write(c: &CheckSpec) -> Result<Outcome, String> {
    let dev = c.str_or("dev", "vda");
    let offset = c.u64_or("offset", 0)?;
    let data = c.hex("hex")?.ok_or("blk-write needs hex=")?;
    direct_write(&dev, offset, &data)?;
    Ok(Outcome::pass(format!(
        "wrote {} bytes at {offset} to {dev}",
        data.len()
    )))
}

/// `blk-stream:dev=vda:offset=N:chunks=N:chunk=BYTES`: writes `chunks` chunks one after
/// the other (O_DIRECT, each fsynced; chunk `i` filled with byte `i % 250 + 1`), failing on
/// the first I/O error; then reads them all back and compares. For fault tests: the host
/// kills the block backend while this runs.
pub fn stream(c: &CheckSpec) -> Result<Outcome, String> {
    let dev = c.str_or("dev", "vda");
    let offset = c.u64_or("offset", 64 << 20)?;
    let chunks = c.u64_or("chunks", 64)?;
    let chunk = c.u64_or("chunk", 65536)? as usize;
    let fill = |i: u64| (i % 250 + 1) as u8;
    for i in 0..chunks {
        let at = offset + i * chunk as u64;
        direct_write(&dev, at, &vec![fill(i); chunk])
            .map_err(|e| format!("write of chunk {i} at {at}: {e}"))?;
    }
    for i in 0..chunks {
        let at = offset + i * chunk as u64;
        let back = direct_read(&dev, at, chunk).map_err(|e| format!("read of chunk {i}: {e}"))?;
        if back.iter().any(|&b| b != fill(i)) {
            return Ok(Outcome::fail(format!("chunk {i} at {at} reads back wrong")));
        }
    }
    Ok(Outcome::pass(format!(
        "wrote, fsynced and read back {chunks} chunks of {chunk} bytes at {offset}"
    )))
}

/// `blk-rw:dev=vda:offset=1048576:len=4096[:hex=HEX]`: writes (random bytes unless given),
/// reads back with O_DIRECT, compares.
pub fn rw(c: &CheckSpec) -> Result<Outcome, String> {
    let dev = c.str_or("dev", "vda");
    let offset = c.u64_or("offset", 1 << 20)?;
    let data = match c.hex("hex")? {
        Some(d) => d,
        None => {
            let mut d = vec![0u8; c.u64_or("len", 4096)? as usize];
            random_bytes(&mut d)?;
            d
        }
    };
    direct_write(&dev, offset, &data)?;
    let back = direct_read(&dev, offset, data.len())?;
    let out = Outcome::pass(format!(
        "wrote and read back {} bytes at {offset}",
        data.len()
    ))
    .with("hex", hex::encode(&data[..data.len().min(MAX_HEX)]));
    Ok(compare(out, "read back", &back, Some(data)))
}

/// `blk-flush:dev=vda`: a write plus fsync must reach the device as a FLUSH request.
pub fn flush(c: &CheckSpec) -> Result<Outcome, String> {
    let dev = c.str_or("dev", "vda");
    let offset = c.u64_or("offset", 2 << 20)?;
    let wc_path = format!("/sys/block/{}/queue/write_cache", dev_name(&dev));
    let mut cache = read_trim(&wc_path)?;
    let initial = cache.clone();
    if cache != "write back" {
        // With VIRTIO_BLK_F_CONFIG_WCE the driver can switch the device to write-back.
        let _ = std::fs::write(
            format!("/sys/block/{}/cache_type", dev_name(&dev)),
            "write back",
        );
        cache = read_trim(&wc_path)?;
    }
    let before = blk_stat(&dev, STAT_FLUSHES)?;
    direct_write(&dev, offset, b"cordon-flush")?;
    let after = blk_stat(&dev, STAT_FLUSHES)?;
    let out = Outcome::pass(format!(
        "write cache {cache:?}, flushes {before} -> {after}"
    ))
    .with("write_cache", &cache)
    .with("initial_write_cache", initial)
    .with("flushes", after - before);
    if cache != "write back" {
        return Ok(Outcome {
            ok: false,
            detail: format!(
                "device has no volatile write cache (VIRTIO_BLK_F_FLUSH missing): {cache:?}"
            ),
            ..out
        });
    }
    if after <= before {
        return Ok(Outcome {
            ok: false,
            detail: format!("fsync sent no flush ({before} -> {after})"),
            ..out
        });
    }
    Ok(out)
}

/// `blk-discard:dev=vda:offset=N:len=N`: BLKDISCARD on the range must complete as a
/// DISCARD request.
pub fn discard(c: &CheckSpec) -> Result<Outcome, String> {
    let dev = c.str_or("dev", "vda");
    let offset = c.u64_or("offset", 4 << 20)?;
    let len = c.u64_or("len", 1 << 20)?;
    let max = read_trim(&format!(
        "/sys/block/{}/queue/discard_max_bytes",
        dev_name(&dev)
    ))?;
    if max == "0" {
        return Ok(Outcome::fail(
            "device offers no discard (discard_max_bytes = 0)",
        ));
    }
    let before = blk_stat(&dev, STAT_DISCARDS)?;
    let f = open_direct(&dev, true)?;
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD reads two u64 from the pointer, which points to `range`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKDISCARD as _, range.as_ptr()) };
    if r != 0 {
        return Err(format!(
            "BLKDISCARD {offset}+{len}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let after = blk_stat(&dev, STAT_DISCARDS)?;
    let out = Outcome::pass(format!(
        "discarded {len} bytes at {offset}, discards {before} -> {after}"
    ))
    .with("discard_max_bytes", max)
    .with("discards", after - before);
    if after <= before {
        return Ok(Outcome {
            ok: false,
            detail: "no discard request completed".into(),
            ..out
        });
    }
    Ok(out)
}

/// `blk-size:dev=vda[:expect=BYTES]`: the device size, and whether it is read-only.
pub fn size(c: &CheckSpec) -> Result<Outcome, String> {
    let dev = c.str_or("dev", "vda");
    let f = open_direct(&dev, false)?;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which points to `size`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if r != 0 {
        return Err(format!("BLKGETSIZE64: {}", std::io::Error::last_os_error()));
    }
    let ro = read_trim(&format!("/sys/block/{}/ro", dev_name(&dev)))?;
    // The negotiated virtio feature bits, as a string of 0/1 (bit 0 first).
    let features =
        read_trim(&format!("/sys/block/{}/device/features", dev_name(&dev))).unwrap_or_default();
    let out = Outcome::pass(format!("{dev} has {size} bytes, ro={ro}"))
        .with("size", size)
        .with("ro", ro)
        .with("features", features);
    match c.params.get("expect") {
        Some(e) if *e != size.to_string() => Ok(Outcome {
            ok: false,
            detail: format!("expected {e} bytes, device has {size}"),
            ..out
        }),
        _ => Ok(out),
    }
}
