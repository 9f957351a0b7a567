//! The virtio-blk device: features, config space, and executing requests against the image.
//!
//! Independent of vhost-user: it takes descriptor chains and guest memory, so it is unit-tested
//! with virtio-queue's mock queue and fuzzed directly.

use log::{debug, warn};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};

use crate::defs::*;
use crate::disk::{DiskError, DiskImage};
use crate::options::BlockOptions;
use crate::request::{
    build_iov, parse_chain, take_front, total_len, write_front, Request, Scratch,
};

/// Most discard / write-zeroes segments per request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Most sectors per discard / write-zeroes segment (4 GiB - 512 bytes, fits u32 sectors).
pub const MAX_DISCARD_SECTORS: u32 = (u32::MAX >> SECTOR_SHIFT) & !7;

/// What [`BlockDevice::prepare`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Answered: the used length to return to the driver.
    Done(u32),
    /// Parsed (its segments are in the scratch area) but not executed: it may block.
    Deferred(Request),
}

/// A virtio-blk device backed by a raw image.
#[derive(Debug)]
pub struct BlockDevice {
    disk: DiskImage,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    sparse: bool,
    num_queues: u16,
    queue_size: u16,
    block_size: u32,
    poll_us: u32,
    io_threads: u16,
}

impl BlockDevice {
    /// Open and lock the image described by `opts`.
    pub fn open(opts: &BlockOptions) -> Result<Self, DiskError> {
        let disk = DiskImage::open(&opts.path, opts.read_only, opts.direct)?;
        Ok(Self::with_disk(disk, opts))
    }

    /// Build a device around an already opened image.
    pub fn with_disk(disk: DiskImage, opts: &BlockOptions) -> Self {
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
        if let Some(s) = &opts.id {
            let n = s.len().min(VIRTIO_BLK_ID_BYTES);
            id[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        BlockDevice {
            disk,
            id,
            sparse: opts.sparse,
            num_queues: opts.num_queues.max(1),
            queue_size: opts.queue_size,
            block_size: opts.block_size,
            poll_us: opts.poll_us,
            io_threads: opts.io_threads,
        }
    }

    /// The image.
    pub fn disk(&self) -> &DiskImage {
        &self.disk
    }

    /// Number of request queues.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Maximum queue size.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Busy-poll window after a batch, in microseconds (0: never poll).
    pub fn poll_us(&self) -> u32 {
        self.poll_us
    }

    /// I/O threads per queue (0: none).
    pub fn io_threads(&self) -> u16 {
        self.io_threads
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.sectors()
    }

    fn discard_supported(&self) -> bool {
        self.sparse && !self.disk.read_only()
    }

    fn write_zeroes_supported(&self) -> bool {
        !self.disk.read_only()
    }

    /// virtio feature bits offered (without the vhost-user PROTOCOL_FEATURES bit).
    pub fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_MQ);
        if self.disk.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.discard_supported() {
            f |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        if self.write_zeroes_supported() {
            f |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    /// The virtio-blk config space (little endian, [`CONFIG_SPACE_SIZE`] bytes).
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut c = [0u8; CONFIG_SPACE_SIZE];
        let put = |c: &mut [u8; CONFIG_SPACE_SIZE], off: usize, b: &[u8]| {
            c[off..off + b.len()].copy_from_slice(b)
        };
        put(&mut c, 0, &self.capacity().to_le_bytes());
        // size_max (8) unused: no VIRTIO_BLK_F_SIZE_MAX.
        put(&mut c, 12, &u32::from(self.queue_size - 2).to_le_bytes()); // seg_max
        put(&mut c, 20, &self.block_size.to_le_bytes()); // blk_size
        put(&mut c, 34, &self.num_queues.to_le_bytes());
        let align = (self.block_size >> SECTOR_SHIFT).max(1);
        if self.discard_supported() {
            put(&mut c, 36, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(&mut c, 40, &MAX_DISCARD_SEG.to_le_bytes());
            put(&mut c, 44, &align.to_le_bytes());
        }
        if self.write_zeroes_supported() {
            put(&mut c, 48, &MAX_DISCARD_SECTORS.to_le_bytes());
            put(&mut c, 52, &MAX_DISCARD_SEG.to_le_bytes());
            c[56] = u8::from(self.sparse);
        }
        c
    }

    /// Bytes `[offset, offset+size)` of the config space, zero-padded to `size`. Offsets at or
    /// above 0x100 (virtio-pci style) are accepted too.
    pub fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        cordon_backends::virtio::config_window(&self.config_space(), offset, size)
    }

    /// Pop and complete every available request of `queue`. Returns how many were completed
    /// (the caller decides whether to notify the driver, once per batch).
    pub fn process_queue<Q, M>(
        &self,
        queue: &mut Q,
        mem: &M,
        s: &mut Scratch,
    ) -> Result<usize, virtio_queue::Error>
    where
        Q: QueueT + QueueOwnedT,
        M: GuestMemoryBackend,
    {
        let mut done = 0;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let used = self.handle_chain(mem, chain, s);
            queue.add_used(mem, head, used)?;
            done += 1;
        }
        Ok(done)
    }

    /// Execute one request; returns the used length (bytes written to device-writable buffers,
    /// status included). Never fails: problems become a status.
    pub fn handle_chain<M, I>(&self, mem: &M, descs: I, s: &mut Scratch) -> u32
    where
        M: GuestMemoryBackend,
        I: Iterator<Item = Descriptor>,
    {
        match self.prepare(mem, descs, s, |_| false) {
            Step::Done(used) => used,
            Step::Deferred(req) => self.run_deferred(mem, &req, s),
        }
    }

    /// First half of a request, on the queue thread: parse the chain into `s` and answer
    /// everything that cannot block (malformed requests, GET_ID, unsupported types, reads the
    /// host page cache serves at once with `RWF_NOWAIT`). For a request that may block (other
    /// reads, writes, flushes, discards, write-zeroes) `defer(kind)` decides: true returns it
    /// as [`Step::Deferred`], for [`BlockDevice::run_deferred`] on an I/O thread; false
    /// executes it here.
    pub fn prepare<M, I, D>(&self, mem: &M, descs: I, s: &mut Scratch, defer: D) -> Step
    where
        M: GuestMemoryBackend,
        I: Iterator<Item = Descriptor>,
        D: FnOnce(u32) -> bool,
    {
        let req = match parse_chain(mem, descs, s) {
            Ok(r) => r,
            Err(_) => {
                debug!("block: request without a writable status byte dropped");
                return Step::Done(0);
            }
        };
        if let Some(why) = req.malformed {
            debug!("block: malformed request: {why}");
            return Step::Done(self.finish(mem, &req, s, VIRTIO_BLK_S_IOERR, 0));
        }
        match req.kind {
            VIRTIO_BLK_T_IN => {
                if let Some(len) = self.read_cached(mem, &req, s) {
                    return Step::Done(self.finish(mem, &req, s, VIRTIO_BLK_S_OK, len));
                }
            }
            VIRTIO_BLK_T_OUT
            | VIRTIO_BLK_T_FLUSH
            | VIRTIO_BLK_T_DISCARD
            | VIRTIO_BLK_T_WRITE_ZEROES => {}
            _ => {
                let (status, written) = self.execute(mem, &req, s);
                return Step::Done(self.finish(mem, &req, s, status, written));
            }
        }
        if defer(req.kind) {
            Step::Deferred(req)
        } else {
            Step::Done(self.run_deferred(mem, &req, s))
        }
    }

    /// Second half of a request [`BlockDevice::prepare`] deferred: execute it (blocking I/O)
    /// and write its status. Returns the used length.
    pub fn run_deferred<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        req: &Request,
        s: &mut Scratch,
    ) -> u32 {
        let (status, written) = self.execute(mem, req, s);
        self.finish(mem, req, s, status, written)
    }

    /// A read served from the host page cache without blocking: the bytes read, or `None`
    /// when it must be done the blocking way (or fails, which the blocking path reports).
    fn read_cached<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        req: &Request,
        s: &mut Scratch,
    ) -> Option<u64> {
        if self.disk.direct() {
            return None;
        }
        let len = total_len(&s.writable);
        if len == 0 || !self.range_ok(req.sector, len) {
            return None;
        }
        if !build_iov(mem, &s.writable, &mut s.iov, true) {
            s.iov.0.clear();
            return None;
        }
        let r = self
            .disk
            .read_nowait(&s.iov.0, req.sector << SECTOR_SHIFT, len as usize);
        s.iov.0.clear();
        match r {
            Ok(true) => Some(len),
            _ => None,
        }
    }

    /// Write the status byte; returns the used length (`written` data bytes + status).
    fn finish<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        req: &Request,
        s: &mut Scratch,
        status: u8,
        written: u64,
    ) -> u32 {
        s.iov.0.clear();
        if mem.write_obj(status, req.status).is_err() {
            return 0;
        }
        u32::try_from(written).unwrap_or(u32::MAX - 1) + 1
    }

    fn execute<M: GuestMemoryBackend>(&self, mem: &M, req: &Request, s: &mut Scratch) -> (u8, u64) {
        match req.kind {
            VIRTIO_BLK_T_IN => {
                let len = total_len(&s.writable);
                if !self.range_ok(req.sector, len) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                if !build_iov(mem, &s.writable, &mut s.iov, true) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                match self.disk.read_vectored(
                    &mut s.iov.0,
                    req.sector << SECTOR_SHIFT,
                    len as usize,
                    &mut s.bounce,
                ) {
                    Ok(()) => (VIRTIO_BLK_S_OK, len),
                    Err(e) => {
                        warn!("block: read at sector {} failed: {e}", req.sector);
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.disk.read_only() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                let len = total_len(&s.readable);
                if !self.range_ok(req.sector, len) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                if !build_iov(mem, &s.readable, &mut s.iov, false) {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                match self.disk.write_vectored(
                    &mut s.iov.0,
                    req.sector << SECTOR_SHIFT,
                    len as usize,
                    &mut s.bounce,
                ) {
                    Ok(()) => (VIRTIO_BLK_S_OK, 0),
                    Err(e) => {
                        warn!("block: write at sector {} failed: {e}", req.sector);
                        (VIRTIO_BLK_S_IOERR, 0)
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH => match self.disk.flush() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => {
                    warn!("block: flush failed: {e}");
                    (VIRTIO_BLK_S_IOERR, 0)
                }
            },
            VIRTIO_BLK_T_GET_ID => {
                let n = write_front(mem, &s.writable, &self.id);
                (VIRTIO_BLK_S_OK, n as u64)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => self.discard_or_zero(mem, req, s),
            other => {
                debug!("block: unsupported request type {other}");
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        }
    }

    /// Data must be whole sectors and lie inside the disk.
    fn range_ok(&self, sector: u64, len: u64) -> bool {
        if !len.is_multiple_of(SECTOR_SIZE) {
            return false;
        }
        match sector.checked_add(len >> SECTOR_SHIFT) {
            Some(end) => end <= self.capacity(),
            None => false,
        }
    }

    fn discard_or_zero<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        req: &Request,
        s: &mut Scratch,
    ) -> (u8, u64) {
        let discard = req.kind == VIRTIO_BLK_T_DISCARD;
        if self.disk.read_only() {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        if (discard && !self.discard_supported()) || (!discard && !self.write_zeroes_supported()) {
            return (VIRTIO_BLK_S_UNSUPP, 0);
        }
        let total = total_len(&s.readable);
        if total == 0 || !total.is_multiple_of(DISCARD_SEGMENT_SIZE as u64) {
            return (VIRTIO_BLK_S_IOERR, 0);
        }
        let count = total / DISCARD_SEGMENT_SIZE as u64;
        if count > u64::from(MAX_DISCARD_SEG) {
            return (VIRTIO_BLK_S_UNSUPP, 0);
        }
        // Validate every segment before touching the image: all or nothing.
        let mut segs = [(0u64, 0u32, 0u32); MAX_DISCARD_SEG as usize];
        for slot in segs.iter_mut().take(count as usize) {
            let mut raw = [0u8; DISCARD_SEGMENT_SIZE];
            if !take_front(mem, &mut s.readable, &mut raw) {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let sector = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
            let num = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
            let flags = u32::from_le_bytes(raw[12..16].try_into().unwrap_or_default());
            let allowed = if discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed != 0 {
                return (VIRTIO_BLK_S_UNSUPP, 0);
            }
            if num > MAX_DISCARD_SECTORS || !self.range_ok(sector, u64::from(num) << SECTOR_SHIFT) {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            *slot = (sector, num, flags);
        }
        for &(sector, num, flags) in segs.iter().take(count as usize) {
            if num == 0 {
                continue;
            }
            let (off, len) = (sector << SECTOR_SHIFT, u64::from(num) << SECTOR_SHIFT);
            let unmap = discard || (flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 && self.sparse);
            let r = if unmap {
                self.disk.punch_hole(off, len)
            } else {
                self.disk.write_zeroes(off, len)
            };
            if let Err(e) = r {
                warn!("block: discard/write-zeroes at sector {sector} failed: {e}");
                return (VIRTIO_BLK_S_IOERR, 0);
            }
        }
        (VIRTIO_BLK_S_OK, 0)
    }
}
