//! Parsing a virtio-blk request out of a descriptor chain.
//!
//! Everything here is hostile input: descriptor addresses and lengths come from the driver.
//! Parsing never allocates in steady state (segment lists live in a per-queue [`Scratch`]) and
//! never panics; it yields either a [`Request`] (possibly flagged malformed, which the device
//! answers with IOERR) or [`NoStatus`] when there is not even a status byte to answer in.

use std::fmt;

use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::bounce::AlignedBuf;
use crate::defs::REQUEST_HEADER_SIZE;

/// Longest chain (in descriptors) the device accepts; longer chains are answered with IOERR.
/// Matches Linux's UIO_MAXIOV so one request is at most one preadv/pwritev call per region.
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;
/// Largest bounce buffer a queue keeps for unaligned O_DIRECT requests.
pub const BOUNCE_LIMIT: usize = 1 << 20;

/// One guest buffer: guest physical address and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
}

/// `iovec`s pointing into guest memory; only valid while the memory guard of the request is
/// held, cleared after each request.
#[derive(Default)]
pub struct IovVec(pub(crate) Vec<libc::iovec>);

// SAFETY: the iovecs are only dereferenced by the thread that owns the Scratch, while it holds
// the guest memory guard they were built from; between requests the vector is empty.
unsafe impl Send for IovVec {}

impl fmt::Debug for IovVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IovVec(len={})", self.0.len())
    }
}

/// Per-queue reusable buffers, so steady-state request handling allocates nothing.
#[derive(Debug)]
pub struct Scratch {
    /// Device-readable data segments (after the header was consumed).
    pub readable: Vec<Seg>,
    /// Device-writable data segments (the status byte removed).
    pub writable: Vec<Seg>,
    /// Host iovecs for the current transfer.
    pub iov: IovVec,
    /// Bounce buffer for misaligned O_DIRECT transfers.
    pub bounce: AlignedBuf,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::with_bounce_limit(BOUNCE_LIMIT)
    }
}

impl Scratch {
    /// Empty buffers whose bounce buffer may grow up to `limit` bytes.
    pub fn with_bounce_limit(limit: usize) -> Self {
        Scratch {
            readable: Vec::with_capacity(16),
            writable: Vec::with_capacity(16),
            iov: IovVec(Vec::with_capacity(16)),
            bounce: AlignedBuf::new(limit),
        }
    }
}

/// A parsed request header plus where to put the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `VIRTIO_BLK_T_*`.
    pub kind: u32,
    /// First sector (512-byte units).
    pub sector: u64,
    /// Guest address of the status byte.
    pub status: GuestAddress,
    /// Why the chain is malformed, if it is (the device answers IOERR).
    pub malformed: Option<&'static str>,
}

/// The chain has no device-writable byte: no status can be returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoStatus;

/// Split `descs` into readable/writable segments in `s`, take the status byte (last byte of the
/// last writable descriptor) and read the 16-byte header from the first readable bytes.
pub fn parse_chain<M, I>(mem: &M, descs: I, s: &mut Scratch) -> Result<Request, NoStatus>
where
    M: GuestMemoryBackend,
    I: Iterator<Item = Descriptor>,
{
    s.readable.clear();
    s.writable.clear();
    let mut malformed = None;
    let mut last_writable: Option<Seg> = None;
    let mut count = 0usize;
    for d in descs {
        if d.len() == 0 {
            continue;
        }
        let seg = Seg {
            addr: d.addr().0,
            len: d.len(),
        };
        count += 1;
        if d.is_write_only() {
            last_writable = Some(seg);
        } else if last_writable.is_some() && malformed.is_none() {
            malformed = Some("device-readable descriptor after a device-writable one");
        }
        if count > MAX_CHAIN_DESCRIPTORS {
            if malformed.is_none() {
                malformed = Some("descriptor chain too long");
            }
            continue;
        }
        if d.is_write_only() {
            s.writable.push(seg);
        } else {
            s.readable.push(seg);
        }
    }
    let last = last_writable.ok_or(NoStatus)?;
    let status = GuestAddress(
        last.addr
            .checked_add(u64::from(last.len) - 1)
            .ok_or(NoStatus)?,
    );
    if malformed.is_none() {
        // The status byte is the last writable byte: drop it from the data segments.
        match s.writable.last_mut() {
            Some(w) if w.len > 1 => w.len -= 1,
            Some(_) => {
                s.writable.pop();
            }
            None => {}
        }
    }

    let mut header = [0u8; REQUEST_HEADER_SIZE];
    if malformed.is_none() && !take_front(mem, &mut s.readable, &mut header) {
        malformed = Some("request header missing, short or outside guest memory");
    }
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    Ok(Request {
        kind,
        sector: u64::from_le_bytes(sector_bytes),
        status,
        malformed,
    })
}

/// Copy the first `out.len()` bytes of `segs` into `out` and remove them from `segs`.
/// False if the segments are too short or not in guest memory.
pub fn take_front<M: GuestMemoryBackend>(mem: &M, segs: &mut Vec<Seg>, out: &mut [u8]) -> bool {
    let mut filled = 0usize;
    let mut consumed = 0usize;
    for seg in segs.iter_mut() {
        if filled == out.len() {
            break;
        }
        let n = (seg.len as usize).min(out.len() - filled);
        if mem
            .read_slice(&mut out[filled..filled + n], GuestAddress(seg.addr))
            .is_err()
        {
            return false;
        }
        filled += n;
        if n == seg.len as usize {
            consumed += 1;
        } else {
            // n < seg.len, so addr + n stays within the descriptor (no overflow: the
            // descriptor was readable at addr, n bytes lie inside it).
            seg.addr = seg.addr.wrapping_add(n as u64);
            seg.len -= n as u32;
        }
    }
    if filled < out.len() {
        return false;
    }
    segs.drain(..consumed);
    true
}

/// Total bytes in `segs`.
pub fn total_len(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Resolve `segs` to host iovecs in `iov` (replacing its contents). `for_write` marks the
/// guest pages dirty (the device will write into them). False if any byte is outside guest
/// memory.
pub fn build_iov<M: GuestMemoryBackend>(
    mem: &M,
    segs: &[Seg],
    iov: &mut IovVec,
    for_write: bool,
) -> bool {
    iov.0.clear();
    for seg in segs {
        for slice in mem.get_slices(GuestAddress(seg.addr), seg.len as usize) {
            let Ok(vs) = slice else {
                iov.0.clear();
                return false;
            };
            if for_write {
                vs.bitmap().mark_dirty(0, vs.len());
            }
            iov.0.push(libc::iovec {
                iov_base: vs.ptr_guard_mut().as_ptr() as *mut libc::c_void,
                iov_len: vs.len(),
            });
        }
    }
    true
}

/// Write `data` into the front of `segs` (guest memory), returning bytes written.
pub fn write_front<M: GuestMemoryBackend>(mem: &M, segs: &[Seg], mut data: &[u8]) -> usize
where
    <M::R as GuestMemoryRegion>::B: Bitmap,
{
    let mut written = 0;
    for seg in segs {
        if data.is_empty() {
            break;
        }
        let n = (seg.len as usize).min(data.len());
        if mem.write_slice(&data[..n], GuestAddress(seg.addr)).is_err() {
            break;
        }
        written += n;
        data = &data[n..];
    }
    written
}
