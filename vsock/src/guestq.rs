//! Test helper: the guest driver's half of a split virtqueue, in real guest memory.
//!
//! Tests use it to hand buffers to a device through a `VringRwLock` exactly as a guest
//! driver would: descriptors, available ring, used ring, all in `GuestMemoryMmap`.

use vhost_user_backend::{VringRwLock, VringT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

/// Driver side of one split virtqueue whose buffers live in fixed per-descriptor slots.
pub struct GuestQueue {
    mem: GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    data: u64,
    slot: u64,
    free: Vec<u16>,
    avail_idx: u16,
    used_seen: u16,
}

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

impl GuestQueue {
    /// Lays out a queue of `size` entries at `base` with `slot` data bytes per descriptor.
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16, slot: u64) -> GuestQueue {
        let desc = base;
        let avail = desc + 16 * size as u64;
        let used = (avail + 6 + 2 * size as u64 + 3) & !3;
        let data = (used + 6 + 8 * size as u64 + 4095) & !4095;
        GuestQueue {
            mem: mem.clone(),
            size,
            desc,
            avail,
            used,
            data,
            slot,
            free: (0..size).rev().collect(),
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// Bytes of guest memory the queue occupies from its base.
    pub fn footprint(size: u16, slot: u64) -> u64 {
        let used = (16 * size as u64 + 6 + 2 * size as u64 + 3) & !3;
        ((used + 6 + 8 * size as u64 + 4095) & !4095) + size as u64 * slot
    }

    /// Creates the device-side vring for this queue.
    pub fn vring(&self, mem: &GuestMemoryAtomic<GuestMemoryMmap>) -> VringRwLock {
        let v = VringRwLock::new(mem.clone(), self.size).expect("vring");
        v.set_queue_size(self.size);
        v.set_queue_info(self.desc, self.avail, self.used)
            .expect("queue info");
        v.set_queue_ready(true);
        v.set_enabled(true);
        v
    }

    /// The driver's published available index (chains handed to the device so far).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The device's `flags` in the used ring (bit 0: `VRING_USED_F_NO_NOTIFY`).
    pub fn used_flags(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used)).unwrap()
    }

    /// The device's `avail_event` (after the used ring; EVENT_IDX only).
    pub fn avail_event(&self) -> u16 {
        let at = self.used + 4 + 8 * self.size as u64;
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// Whether a real driver would kick the device after publishing `new` chains.
    ///
    /// Linux's rule (`virtqueue_kick_prepare`): with EVENT_IDX, kick iff the new
    /// available index passed `avail_event` (`vring_need_event`); without it, kick unless
    /// the device set `VRING_USED_F_NO_NOTIFY`.
    pub fn would_kick(&self, event_idx: bool, old: u16, new: u16) -> bool {
        if event_idx {
            new.wrapping_sub(self.avail_event()).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.used_flags() & 1 == 0
        }
    }

    /// Free descriptors left.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    fn slot_addr(&self, id: u16) -> u64 {
        self.data + id as u64 * self.slot
    }

    fn write_desc(&self, id: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let a = GuestAddress(self.desc + 16 * id as u64);
        self.mem.write_obj(addr, a).unwrap();
        self.mem.write_obj(len, a.unchecked_add(8)).unwrap();
        self.mem.write_obj(flags, a.unchecked_add(12)).unwrap();
        self.mem.write_obj(next, a.unchecked_add(14)).unwrap();
    }

    /// Publishes a chain made of `parts`: `Ok(bytes)` readable parts, `Err(len)` writable.
    /// Returns the head id, or None if the queue is out of descriptors.
    pub fn add(&mut self, parts: &[Result<&[u8], u32>]) -> Option<u16> {
        if parts.is_empty() || self.free.len() < parts.len() {
            return None;
        }
        let ids: Vec<u16> = (0..parts.len()).map(|_| self.free.pop().unwrap()).collect();
        for (i, part) in parts.iter().enumerate() {
            let id = ids[i];
            let addr = self.slot_addr(id);
            let (len, mut flags) = match part {
                Ok(b) => {
                    assert!(b.len() as u64 <= self.slot, "part larger than slot");
                    self.mem.write_slice(b, GuestAddress(addr)).unwrap();
                    (b.len() as u32, 0)
                }
                Err(n) => {
                    assert!(*n as u64 <= self.slot, "part larger than slot");
                    (*n, F_WRITE)
                }
            };
            let next = if i + 1 < parts.len() {
                flags |= F_NEXT;
                ids[i + 1]
            } else {
                0
            };
            self.write_desc(id, addr, len, flags, next);
        }
        let ring = GuestAddress(self.avail + 4 + 2 * (self.avail_idx % self.size) as u64);
        self.mem.write_obj(ids[0], ring).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        Some(ids[0])
    }

    /// Collects used chains: (bytes written by the device, concatenated from the chain's
    /// writable parts up to `len`), freeing their descriptors.
    pub fn take_used(&mut self) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        let used_idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        while self.used_seen != used_idx {
            let e = GuestAddress(self.used + 4 + 8 * (self.used_seen % self.size) as u64);
            let id: u32 = self.mem.read_obj(e).unwrap();
            let len: u32 = self.mem.read_obj(e.unchecked_add(4)).unwrap();
            self.used_seen = self.used_seen.wrapping_add(1);
            let mut data = Vec::new();
            let mut left = len as usize;
            let mut cur = id as u16;
            loop {
                let a = GuestAddress(self.desc + 16 * cur as u64);
                let addr: u64 = self.mem.read_obj(a).unwrap();
                let dlen: u32 = self.mem.read_obj(a.unchecked_add(8)).unwrap();
                let flags: u16 = self.mem.read_obj(a.unchecked_add(12)).unwrap();
                let next: u16 = self.mem.read_obj(a.unchecked_add(14)).unwrap();
                if flags & F_WRITE != 0 && left > 0 {
                    let n = left.min(dlen as usize);
                    let mut b = vec![0u8; n];
                    self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                    data.extend_from_slice(&b);
                    left -= n;
                }
                self.free.push(cur);
                if flags & F_NEXT == 0 {
                    break;
                }
                cur = next;
            }
            out.push((id as u16, data));
        }
        out
    }
}

/// Guest memory big enough for `queues` queues of `size` entries with `slot`-byte buffers;
/// returns the memory and each queue's base address.
pub fn guest_memory(queues: usize, size: u16, slot: u64) -> (GuestMemoryMmap, Vec<u64>) {
    let per = (GuestQueue::footprint(size, slot) + 0xffff) & !0xffff;
    let total = per * queues as u64;
    let mem =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), total as usize)]).expect("guest memory");
    (mem, (0..queues as u64).map(|i| i * per).collect())
}
