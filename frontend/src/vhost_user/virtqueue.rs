//! The driver side of a split virtqueue (virtio 1.x, 2.7), living in guest memory.

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{io_err, Error, Result};

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (else device-readable).
    pub writable: bool,
}

/// One used-ring element returned by the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index of the completed chain.
    pub head: u16,
    /// Bytes the device wrote into the chain.
    pub len: u32,
}

/// A split virtqueue, driver side.
pub struct DriverQueue {
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    free: Vec<u16>,
    chains: Vec<Vec<u16>>,
    next_avail: u16,
    last_used: u16,
    kick: EventFd,
    call: EventFd,
}

/// Bytes needed by a queue of `size` at `base` (descriptor table, avail ring, used ring,
/// each 4 KiB aligned).
pub fn queue_footprint(size: u16) -> u64 {
    let s = size as u64;
    let align = |x: u64| (x + 4095) & !4095;
    align(16 * s) + align(6 + 2 * s) + align(6 + 8 * s)
}

impl DriverQueue {
    /// Lays out a queue of `size` (a power of two, at most 32768) at `base` and zeroes it.
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, size: u16) -> Result<Self> {
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return Err(Error::Invalid(format!("queue size {size}")));
        }
        let s = size as u64;
        let align = |x: u64| (x + 4095) & !4095;
        let desc = base;
        let avail = GuestAddress(base.0 + align(16 * s));
        let used = GuestAddress(avail.0 + align(6 + 2 * s));
        let zero = vec![0u8; queue_footprint(size) as usize];
        mem.write_slice(&zero, base)
            .map_err(|e| Error::Memory(e.to_string()))?;
        Ok(DriverQueue {
            size,
            desc,
            avail,
            used,
            free: (0..size).rev().collect(),
            chains: vec![Vec::new(); size as usize],
            next_avail: 0,
            last_used: 0,
            kick: EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?,
            call: EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"))?,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }
    /// Guest address of the descriptor table.
    pub fn desc_table(&self) -> GuestAddress {
        self.desc
    }
    /// Guest address of the available ring.
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail
    }
    /// Guest address of the used ring.
    pub fn used_ring(&self) -> GuestAddress {
        self.used
    }
    /// The eventfd the driver writes to notify the device.
    pub fn kick_event(&self) -> &EventFd {
        &self.kick
    }
    /// The eventfd the device writes to interrupt the driver.
    pub fn call_event(&self) -> &EventFd {
        &self.call
    }
    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Writes descriptor `index` verbatim (for hostile-driver tests: loops, bad addresses).
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<()> {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(
            &d,
            GuestAddress(self.desc.0 + 16 * (index as u64 % self.size as u64)),
        )
        .map_err(|e| Error::Memory(e.to_string()))
    }

    /// Puts the chain `bufs` in the descriptor table and publishes it; returns its head.
    pub fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[Buffer]) -> Result<u16> {
        if bufs.is_empty() {
            return Err(Error::Invalid("empty descriptor chain".into()));
        }
        if bufs.len() > self.free.len() {
            return Err(Error::QueueFull {
                needed: bufs.len(),
                free: self.free.len(),
            });
        }
        let idx: Vec<u16> = (0..bufs.len()).filter_map(|_| self.free.pop()).collect();
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let mut flags = if b.writable { VIRTQ_DESC_F_WRITE } else { 0 };
            let next = if last { 0 } else { idx[i + 1] };
            if !last {
                flags |= VIRTQ_DESC_F_NEXT;
            }
            self.write_desc(mem, idx[i], b.addr.0, b.len, flags, next)?;
        }
        let head = idx[0];
        self.chains[head as usize] = idx;
        self.publish(mem, head)?;
        Ok(head)
    }

    /// Appends `head` to the available ring and bumps its index (release ordering).
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) -> Result<()> {
        let slot = self.next_avail % self.size;
        mem.write_obj(
            head.to_le(),
            GuestAddress(self.avail.0 + 4 + 2 * slot as u64),
        )
        .map_err(|e| Error::Memory(e.to_string()))?;
        self.next_avail = self.next_avail.wrapping_add(1);
        fence(Ordering::SeqCst);
        mem.store(
            self.next_avail.to_le(),
            GuestAddress(self.avail.0 + 2),
            Ordering::Release,
        )
        .map_err(|e| Error::Memory(e.to_string()))?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Notifies the device.
    pub fn kick(&self) -> Result<()> {
        self.kick.write(1).map_err(io_err("kick eventfd"))
    }

    /// Collects the used elements published so far, freeing their descriptors.
    pub fn poll_used(&mut self, mem: &GuestMemoryMmap) -> Result<Vec<Used>> {
        let used_idx: u16 = mem
            .load(GuestAddress(self.used.0 + 2), Ordering::Acquire)
            .map_err(|e| Error::Memory(e.to_string()))?;
        let used_idx = u16::from_le(used_idx);
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending > self.size {
            return Err(Error::BadUsed(format!(
                "used index {used_idx} is {pending} ahead of {}",
                self.last_used
            )));
        }
        let mut out = Vec::with_capacity(pending as usize);
        while self.last_used != used_idx {
            let slot = (self.last_used % self.size) as u64;
            let at = GuestAddress(self.used.0 + 4 + 8 * slot);
            let id: u32 = mem.read_obj(at).map_err(|e| Error::Memory(e.to_string()))?;
            let len: u32 = mem
                .read_obj(GuestAddress(at.0 + 4))
                .map_err(|e| Error::Memory(e.to_string()))?;
            let (id, len) = (u32::from_le(id), u32::from_le(len));
            if id >= self.size as u32 || self.chains[id as usize].is_empty() {
                return Err(Error::BadUsed(format!("head {id} was not in flight")));
            }
            let chain = std::mem::take(&mut self.chains[id as usize]);
            self.free.extend(chain);
            out.push(Used {
                head: id as u16,
                len,
            });
            self.last_used = self.last_used.wrapping_add(1);
        }
        Ok(out)
    }

    /// Waits until at least one used element arrives (or `timeout`), and returns them all.
    pub fn wait_used(&mut self, mem: &GuestMemoryMmap, timeout: Duration) -> Result<Vec<Used>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.poll_used(mem)?;
            if !got.is_empty() {
                return Ok(got);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(timeout));
            }
            self.wait_call(left.min(Duration::from_millis(100)))?;
        }
    }

    /// Blocks until the device signals the call eventfd or `timeout` passes; true if signalled.
    pub fn wait_call(&self, timeout: Duration) -> Result<bool> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: poll on one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(io_err("poll call eventfd")(e));
        }
        if rc > 0 {
            let _ = self.call.read();
            return Ok(true);
        }
        Ok(false)
    }
}
