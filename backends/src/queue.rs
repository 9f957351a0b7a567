//! The common virtqueue loop: pop every available chain, let the device handle it, return it
//! to the used ring, and notify the driver (honouring EVENT_IDX).

use std::io;
use std::ops::Deref;

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryLoadGuard,
    GuestMemoryMmap,
};

/// Guest memory as handed to `VhostUserBackend::update_memory`.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// One descriptor chain popped from an available ring.
pub type Chain = DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap<()>>>;

/// Handles every available chain of `vring` with `handle`, which returns how many bytes it
/// wrote into the chain. A chain whose handler fails is logged and returned with length 0.
/// Returns the number of chains handled.
pub fn process_queue<F>(
    vring: &VringRwLock,
    mem: &GuestMem,
    event_idx: bool,
    handle: F,
) -> io::Result<usize>
where
    F: FnMut(Chain) -> io::Result<u32>,
{
    process_queue_while(vring, mem, event_idx, || true, handle)
}

/// Like [`process_queue`], but pops a chain only while `more()` says there is work for it
/// (e.g. a receive queue with pending input); chains stay available otherwise.
pub fn process_queue_while<P, F>(
    vring: &VringRwLock,
    mem: &GuestMem,
    event_idx: bool,
    mut more: P,
    mut handle: F,
) -> io::Result<usize>
where
    P: FnMut() -> bool,
    F: FnMut(Chain) -> io::Result<u32>,
{
    let qerr = |e: virtio_queue::Error| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let (desc_table, qsize) = {
        let guard = vring.get_ref();
        let q = guard.get_queue();
        (q.desc_table(), q.size())
    };
    let mut checker = ChainChecker::new(qsize);
    // Pops and completions are recorded in the inflight region when the frontend set one up.
    let tracker = crate::inflight::tracker(vring);
    let mut count = 0usize;
    loop {
        if event_idx {
            vring.disable_notification().map_err(qerr)?;
        }
        let mut popped = 0usize;
        while more() {
            let next = tracker.pop(vring, mem.memory());
            let Some(chain) = next else { break };
            let head = chain.head_index();
            let checked = checker.check(chain.memory(), desc_table, head);
            let len = match checked.and_then(|()| handle(chain)) {
                Ok(len) => len,
                Err(e) => {
                    log::warn!("dropping malformed request (descriptor {head}): {e}");
                    0
                }
            };
            tracker.add_used(vring, head, len).map_err(qerr)?;
            count += 1;
            popped += 1;
        }
        if !event_idx {
            break;
        }
        // Re-arm notifications; loop again if the driver added buffers meanwhile. A round
        // that popped nothing ends the loop: a hostile avail index (more than a queue ahead)
        // reads as "more available" but yields no chain, and must not make us spin.
        if !vring.enable_notification().map_err(qerr)? || !more() || popped == 0 {
            break;
        }
    }
    if count > 0 && (!event_idx || vring.needs_notification().map_err(qerr)?) {
        vring.signal_used_queue()?;
    }
    Ok(count)
}

/// Pops the next available chain of `vring`, or `None` when the avail ring is empty (or its
/// index is invalid). For devices that complete requests later or on other threads: every
/// popped chain must eventually go back through [`add_used`] or [`complete`], so that the
/// queue layer's bookkeeping sees both ends of each request.
pub fn pop_chain<M>(vring: &VringRwLock, mem: M) -> Option<DescriptorChain<M>>
where
    M: Clone + Deref,
    M::Target: GuestMemory,
{
    // In-flight bookkeeping (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) when the frontend set it
    // up; after a reconnect this yields the chains left in flight first.
    crate::inflight::tracker(vring).pop(vring, mem)
}

/// Puts chain `head` on the used ring with `len` bytes written, without notifying the driver
/// (batch completions, then call [`notify`] once). Callable from any thread, in any order.
pub fn add_used(vring: &VringRwLock, head: u16, len: u32) -> io::Result<()> {
    crate::inflight::tracker(vring)
        .add_used(vring, head, len)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// Signals the driver that used buffers are available, unless EVENT_IDX says it does not
/// want to be interrupted yet.
pub fn notify(vring: &VringRwLock, event_idx: bool) -> io::Result<()> {
    let needed = !event_idx
        || vring
            .needs_notification()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    if needed {
        vring.signal_used_queue()?;
    }
    Ok(())
}

/// [`add_used`] then [`notify`]: completes one request (e.g. from an I/O worker thread).
pub fn complete(vring: &VringRwLock, head: u16, len: u32, event_idx: bool) -> io::Result<()> {
    add_used(vring, head, len)?;
    notify(vring, event_idx)
}

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Largest indirect table accepted (entries); Linux never builds larger ones.
pub const MAX_INDIRECT: usize = 4096;

/// Validates the shape of descriptor chains before a device looks at them: every index in
/// range, no descriptor visited twice (loops), at most one indirect table, well formed
/// (`len` a non-zero multiple of 16, at most [`MAX_INDIRECT`] entries, no `NEXT` on the
/// indirect descriptor, no nested indirect). Buffer addresses are checked later by
/// `virtio_queue`'s reader/writer against guest memory.
pub struct ChainChecker {
    seen: Vec<bool>,
    seen_indirect: Vec<bool>,
    qsize: u16,
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn read_desc<M: GuestMemory>(mem: &M, at: u64) -> io::Result<(u64, u32, u16, u16)> {
    let mut d = [0u8; 16];
    mem.read_slice(&mut d, GuestAddress(at))
        .map_err(|e| bad(format!("descriptor at {at:#x}: {e}")))?;
    let addr = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    let len = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
    let flags = u16::from_le_bytes([d[12], d[13]]);
    let next = u16::from_le_bytes([d[14], d[15]]);
    Ok((addr, len, flags, next))
}

impl ChainChecker {
    /// A checker for a queue of `qsize` descriptors.
    pub fn new(qsize: u16) -> Self {
        ChainChecker {
            seen: vec![false; qsize as usize],
            seen_indirect: Vec::new(),
            qsize,
        }
    }

    /// Checks the chain starting at `head` in the table at `desc_table`.
    pub fn check<M: GuestMemory>(&mut self, mem: &M, desc_table: u64, head: u16) -> io::Result<()> {
        let mut visited = Vec::new();
        let r = self.walk(mem, desc_table, head, &mut visited);
        for i in visited {
            self.seen[i] = false;
        }
        r
    }

    fn walk<M: GuestMemory>(
        &mut self,
        mem: &M,
        desc_table: u64,
        head: u16,
        visited: &mut Vec<usize>,
    ) -> io::Result<()> {
        let mut idx = head;
        loop {
            let i = idx as usize;
            if idx >= self.qsize {
                return Err(bad(format!("descriptor index {idx} out of range")));
            }
            if self.seen[i] {
                return Err(bad(format!("descriptor loop at index {idx}")));
            }
            self.seen[i] = true;
            visited.push(i);
            let (addr, len, flags, next) = read_desc(mem, desc_table + 16 * i as u64)?;
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(bad("indirect descriptor with NEXT".into()));
                }
                return self.walk_indirect(mem, addr, len);
            }
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            idx = next;
        }
    }

    fn walk_indirect<M: GuestMemory>(&mut self, mem: &M, table: u64, len: u32) -> io::Result<()> {
        let n = len as usize / 16;
        if len == 0 || !len.is_multiple_of(16) || n > MAX_INDIRECT {
            return Err(bad(format!("indirect table of {len} bytes")));
        }
        self.seen_indirect.clear();
        self.seen_indirect.resize(n, false);
        let mut idx = 0usize;
        loop {
            if idx >= n {
                return Err(bad(format!("indirect index {idx} out of range")));
            }
            if self.seen_indirect[idx] {
                return Err(bad(format!("indirect descriptor loop at index {idx}")));
            }
            self.seen_indirect[idx] = true;
            let (_, _, flags, next) = read_desc(mem, table.wrapping_add(16 * idx as u64))?;
            if flags & VIRTQ_DESC_F_INDIRECT != 0 {
                return Err(bad("nested indirect descriptor".into()));
            }
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            idx = next as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryMmap};

    fn desc(mem: &GuestMemoryMmap, table: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(table + 16 * i)).unwrap();
    }

    #[test]
    fn chain_shapes() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut c = ChainChecker::new(8);
        // Good two-descriptor chain.
        desc(&mem, 0, 0, 0x1000, 16, 1, 1);
        desc(&mem, 0, 1, 0x2000, 16, 2, 0);
        c.check(&mem, 0, 0).unwrap();
        // The same chain again works (state is cleared).
        c.check(&mem, 0, 0).unwrap();
        // Loop 2 -> 3 -> 2.
        desc(&mem, 0, 2, 0x1000, 16, 1, 3);
        desc(&mem, 0, 3, 0x1000, 16, 1, 2);
        assert!(c
            .check(&mem, 0, 2)
            .unwrap_err()
            .to_string()
            .contains("loop"));
        // Next out of range.
        desc(&mem, 0, 4, 0x1000, 16, 1, 99);
        assert!(c.check(&mem, 0, 4).is_err());
        // Head out of range.
        assert!(c.check(&mem, 0, 8).is_err());
        // Indirect: good, looping, nested, bad length.
        desc(&mem, 0, 5, 0x3000, 32, 4, 0);
        desc(&mem, 0x3000, 0, 0x1000, 16, 1, 1);
        desc(&mem, 0x3000, 1, 0x1000, 16, 2, 0);
        c.check(&mem, 0, 5).unwrap();
        desc(&mem, 0x3000, 1, 0x1000, 16, 3, 0);
        assert!(c.check(&mem, 0, 5).is_err());
        desc(&mem, 0x3000, 1, 0x1000, 16, 4, 0);
        assert!(c.check(&mem, 0, 5).is_err());
        desc(&mem, 0, 6, 0x3000, 20, 4, 0);
        assert!(c.check(&mem, 0, 6).is_err());
        // Descriptor table outside memory.
        assert!(c.check(&mem, 0xffff_0000, 0).is_err());
    }
}
