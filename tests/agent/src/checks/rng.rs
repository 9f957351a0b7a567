//! `hwrng`: the virtio-rng device gives random bytes through /dev/hwrng.

use crate::hex;
use crate::report::Outcome;
use crate::spec::CheckSpec;
use crate::sysutil::read_trim;
use std::io::Read;

fn read_hwrng(len: usize) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open("/dev/hwrng").map_err(|e| format!("open /dev/hwrng: {e}"))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)
        .map_err(|e| format!("read /dev/hwrng: {e}"))?;
    Ok(buf)
}

/// `hwrng[:len=32]`: two reads of `len` bytes must differ and not be all zero; the current
/// rng must be a virtio one.
pub fn hwrng(c: &CheckSpec) -> Result<Outcome, String> {
    let len = c.u64_or("len", 32)? as usize;
    let current = read_trim("/sys/class/misc/hw_random/rng_current")?;
    let a = read_hwrng(len)?;
    let b = read_hwrng(len)?;
    let mut out = Outcome::pass(format!("{current}: two reads of {len} bytes differ"))
        .with("current", &current)
        .with("first", hex::encode(&a))
        .with("second", hex::encode(&b));
    if !current.starts_with("virtio_rng") {
        out.ok = false;
        out.detail = format!("current hwrng is {current:?}, not virtio_rng");
    } else if len > 0 && (a == b || a.iter().all(|&x| x == 0)) {
        out.ok = false;
        out.detail = "reads are equal or all zero".into();
    }
    Ok(out)
}
