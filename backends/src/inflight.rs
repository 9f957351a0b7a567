//! VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD: in-flight request tracking that survives a backend
//! crash.
//!
//! The backend hands the frontend a shared memory region (GET_INFLIGHT_FD); the frontend keeps
//! it and passes it back to the next backend process (SET_INFLIGHT_FD). While serving, each
//! queue records in it which descriptor heads were popped and not yet returned, so a restarted
//! backend knows what to run again. Layout per queue (QEMU's `docs/interop/vhost-user.rst`,
//! split virtqueues; all fields little endian), each queue region 64-byte aligned:
//!
//! ```text
//! 0  u64 features (0)   8  u16 version (1; 0 = never used)   10 u16 desc_num
//! 12 u16 last_batch_head                                      14 u16 used_idx
//! 16 + 16*i: u8 inflight, 5 bytes padding, u16 next, u64 counter      (i < desc_num)
//! ```
//!
//! Where it hooks in: rust-vmm's `vhost-user-backend` refuses both messages, so the serving
//! loop puts a small message proxy ([`crate::intercept`]) in front of its daemon for devices
//! that offer the feature; the proxy answers the two messages from this module and passes
//! everything else through. The queue side is [`Tracker`]: the queue layer's
//! [`crate::queue::pop_chain`], [`crate::queue::add_used`] and
//! [`crate::queue::process_queue`] go through it, and [`crate::served::Served`] binds each
//! started queue to its region and recovers it (see [`Inflight::bind`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex, Weak};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemory};

use crate::queue::GuestMem;

/// Alignment of each queue's region.
pub const QUEUE_ALIGN: usize = 64;
/// Bytes before the descriptor states.
const HEADER: usize = 16;
/// Bytes per descriptor state.
const DESC: usize = 16;
/// Region format version.
const VERSION: u16 = 1;
/// Largest virtqueue size.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// Bytes of one queue's region for `queue_size` descriptors.
pub fn queue_region_bytes(queue_size: u16) -> usize {
    (HEADER + DESC * usize::from(queue_size)).div_ceil(QUEUE_ALIGN) * QUEUE_ALIGN
}

/// Errors of the inflight messages (reported to the frontend, never a panic).
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    /// A size or count out of range.
    #[error("inflight region: {0}")]
    Invalid(String),
    /// A system call failed.
    #[error("inflight region: {op}: {source}")]
    Io {
        /// What failed.
        op: &'static str,
        /// Why.
        source: io::Error,
    },
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> InflightError {
    move |source| InflightError::Io { op, source }
}

/// A mapped inflight region shared with the frontend.
pub struct Region {
    ptr: *mut u8,
    len: usize,
    num_queues: u16,
    queue_size: u16,
    _file: File,
}

// SAFETY: the mapping is plain shared memory; every access goes through volatile reads and
// writes at bounds-checked offsets, and each queue's part is written by one worker at a time
// (its `Mutex<QueueTrack>`).
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value created.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

impl Region {
    /// Creates a zeroed, sealed memfd region for `num_queues` queues of `queue_size`
    /// (GET_INFLIGHT_FD). Returns the region and a descriptor to hand to the frontend.
    pub fn create(num_queues: u16, queue_size: u16) -> Result<(Region, File), InflightError> {
        let len = usize::from(num_queues) * queue_region_bytes(queue_size);
        let name = c"cordon-inflight";
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(io_err("memfd_create")(io::Error::last_os_error()));
        }
        // SAFETY: we own the new descriptor.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len as u64).map_err(io_err("ftruncate"))?;
        // The frontend cannot shrink what we map (SIGBUS) nor grow it.
        // SAFETY: fcntl on our own fd, integer argument.
        let r = unsafe {
            libc::fcntl(
                file.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        if r != 0 {
            return Err(io_err("seal")(io::Error::last_os_error()));
        }
        let give = file.try_clone().map_err(io_err("dup"))?;
        let region = Self::map(file, 0, len as u64, num_queues, queue_size)?;
        Ok((region, give))
    }

    /// Maps a region the frontend passed back (SET_INFLIGHT_FD). The descriptor must be a
    /// memfd sealed against shrinking (the ones GET_INFLIGHT_FD hands out are) and large
    /// enough; sizes and counts are checked against the device's.
    pub fn adopt(
        file: File,
        mmap_size: u64,
        mmap_offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Region, InflightError> {
        // SAFETY: fcntl F_GET_SEALS on a descriptor we own.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(InflightError::Invalid(
                "the descriptor is not a memfd sealed against shrinking".into(),
            ));
        }
        Self::map(file, mmap_offset, mmap_size, num_queues, queue_size)
    }

    fn map(
        file: File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Region, InflightError> {
        let need = usize::from(num_queues) * queue_region_bytes(queue_size);
        if num_queues == 0 || queue_size == 0 || queue_size > MAX_QUEUE_SIZE {
            return Err(InflightError::Invalid(format!(
                "{num_queues} queue(s) of {queue_size} descriptors"
            )));
        }
        if size < need as u64 || size > (need as u64).saturating_mul(2) {
            return Err(InflightError::Invalid(format!(
                "mmap_size {size} for {num_queues} queue(s) of {queue_size}: expected {need}"
            )));
        }
        if !offset.is_multiple_of(4096) {
            return Err(InflightError::Invalid(format!(
                "mmap_offset {offset} is not page aligned"
            )));
        }
        let file_len = file.metadata().map_err(io_err("fstat"))?.len();
        if offset.checked_add(size).is_none_or(|end| end > file_len) {
            return Err(InflightError::Invalid(format!(
                "{size} bytes at offset {offset} do not fit the {file_len}-byte file"
            )));
        }
        let off = libc::off_t::try_from(offset)
            .map_err(|_| InflightError::Invalid(format!("mmap_offset {offset}")))?;
        // SAFETY: a fresh shared mapping of a file range checked to lie within the file.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                need,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_err("mmap")(io::Error::last_os_error()));
        }
        Ok(Region {
            ptr: ptr as *mut u8,
            len: need,
            num_queues,
            queue_size,
            _file: file,
        })
    }

    /// Queues covered.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Descriptors per queue.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    fn at(&self, queue: u16, off: usize, width: usize) -> *mut u8 {
        let base = usize::from(queue) * queue_region_bytes(self.queue_size);
        let o = base + off;
        assert!(queue < self.num_queues && o + width <= self.len);
        // SAFETY: `o + width <= len` was just checked.
        unsafe { self.ptr.add(o) }
    }

    fn get16(&self, q: u16, off: usize) -> u16 {
        // SAFETY: in-bounds (checked by `at`); byte arrays have no alignment requirement.
        u16::from_le_bytes(unsafe { std::ptr::read_volatile(self.at(q, off, 2) as *const [u8; 2]) })
    }
}

impl Region {
    fn set16(&self, q: u16, off: usize, v: u16) {
        // SAFETY: in-bounds (checked by `at`).
        unsafe { std::ptr::write_volatile(self.at(q, off, 2) as *mut [u8; 2], v.to_le_bytes()) }
    }
    fn get8(&self, q: u16, off: usize) -> u8 {
        // SAFETY: in-bounds (checked by `at`).
        unsafe { std::ptr::read_volatile(self.at(q, off, 1)) }
    }
    fn set8(&self, q: u16, off: usize, v: u8) {
        // SAFETY: in-bounds (checked by `at`).
        unsafe { std::ptr::write_volatile(self.at(q, off, 1), v) }
    }
    fn get64(&self, q: u16, off: usize) -> u64 {
        // SAFETY: in-bounds (checked by `at`).
        u64::from_le_bytes(unsafe { std::ptr::read_volatile(self.at(q, off, 8) as *const [u8; 8]) })
    }
    fn set64(&self, q: u16, off: usize, v: u64) {
        // SAFETY: in-bounds (checked by `at`).
        unsafe { std::ptr::write_volatile(self.at(q, off, 8) as *mut [u8; 8], v.to_le_bytes()) }
    }

    fn version(&self, q: u16) -> u16 {
        self.get16(q, 8)
    }
    fn desc_num(&self, q: u16) -> u16 {
        self.get16(q, 10)
    }
    fn last_batch_head(&self, q: u16) -> u16 {
        self.get16(q, 12)
    }
    fn used_idx(&self, q: u16) -> u16 {
        self.get16(q, 14)
    }
    fn inflight(&self, q: u16, i: u16) -> bool {
        self.get8(q, HEADER + DESC * usize::from(i)) == 1
    }
    fn set_inflight(&self, q: u16, i: u16, on: bool) {
        self.set8(q, HEADER + DESC * usize::from(i), u8::from(on))
    }
    fn next(&self, q: u16, i: u16) -> u16 {
        self.get16(q, HEADER + DESC * usize::from(i) + 6)
    }
    fn set_next(&self, q: u16, i: u16, v: u16) {
        self.set16(q, HEADER + DESC * usize::from(i) + 6, v)
    }
    fn counter(&self, q: u16, i: u16) -> u64 {
        self.get64(q, HEADER + DESC * usize::from(i) + 8)
    }
    fn set_counter(&self, q: u16, i: u16, v: u64) {
        self.set64(q, HEADER + DESC * usize::from(i) + 8, v)
    }

    /// Resets queue `q` to an empty, version-1 region.
    fn init_queue(&self, q: u16, used_idx: u16) {
        for i in 0..self.queue_size {
            self.set_inflight(q, i, false);
            self.set_next(q, i, 0);
            self.set_counter(q, i, 0);
        }
        self.set64(q, 0, 0);
        self.set16(q, 10, self.queue_size);
        self.set16(q, 12, 0);
        self.set16(q, 14, used_idx);
        fence(Ordering::Release);
        self.set16(q, 8, VERSION);
    }
}

/// What the recovery of one queue found (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Heads that were in flight, in the order they had been popped (their counter order).
    pub resubmit: Vec<u16>,
    /// The used index the queue resumes from (next avail = next used = this).
    pub used_idx: u16,
    /// Whether the heads were the next available entries (in-order completion); when false
    /// they are still re-run from the avail ring, see docs/BACKENDS.md.
    pub in_order: bool,
}

/// Recovers queue `q` of `region` against the vring's used index `ring_used` (the spec's
/// "When reconnecting" steps): a last batch that was published but not cleared is cleared,
/// then the in-flight heads are collected in counter order and cleared (they are re-marked
/// when popped again). `avail(n)` returns the avail ring entry at position `ring_used + n`.
pub fn recover_queue(
    region: &Region,
    q: u16,
    size: u16,
    ring_used: u16,
    avail: impl Fn(u16) -> Option<u16>,
) -> (Recovery, u64) {
    if region.version(q) != VERSION || region.desc_num(q) != region.queue_size() {
        region.init_queue(q, ring_used);
        return (
            Recovery {
                resubmit: Vec::new(),
                used_idx: ring_used,
                in_order: true,
            },
            0,
        );
    }
    let limit = size.min(region.queue_size());
    let stale = region.used_idx(q);
    if stale != ring_used {
        // The used ring moved past what the region recorded: the last batch (a list through
        // `next`, `ring_used - stale` long) completed; clear it.
        let mut head = region.last_batch_head(q);
        let n = ring_used.wrapping_sub(stale).min(limit);
        for _ in 0..n {
            if head >= limit {
                break;
            }
            region.set_inflight(q, head, false);
            head = region.next(q, head);
        }
        region.set16(q, 14, ring_used);
    }
    let mut heads: Vec<(u64, u16)> = (0..limit)
        .filter(|&i| region.inflight(q, i))
        .map(|i| (region.counter(q, i), i))
        .collect();
    heads.sort_unstable();
    let next_counter = heads.last().map_or(0, |(c, _)| c.wrapping_add(1));
    let resubmit: Vec<u16> = heads.iter().map(|&(_, i)| i).collect();
    let in_order = resubmit
        .iter()
        .enumerate()
        .all(|(n, &h)| avail(n as u16) == Some(h));
    for &h in &resubmit {
        region.set_inflight(q, h, false);
    }
    (
        Recovery {
            resubmit,
            used_idx: ring_used,
            in_order,
        },
        next_counter,
    )
}

/// Per-queue tracking state.
#[derive(Default)]
struct QueueTrack {
    region: Option<Arc<Region>>,
    desc_table: Option<u64>,
    size: u16,
    counter: u64,
    /// Heads to run again before any new available chain, in counter order.
    resubmit: std::collections::VecDeque<u16>,
}

/// Inflight state of one frontend connection, shared by the message proxy, the `Served`
/// wrapper and the queue trackers.
pub struct Inflight {
    max_queues: u16,
    max_queue_size: u16,
    region: Mutex<Option<Arc<Region>>>,
    queues: Vec<Mutex<QueueTrack>>,
    mem: Mutex<Option<GuestMem>>,
    name: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inflight {
    /// State for a device with `max_queues` queues of at most `max_queue_size`.
    pub fn new(name: &str, max_queues: usize, max_queue_size: usize) -> Arc<Self> {
        let max_queues = u16::try_from(max_queues).unwrap_or(u16::MAX);
        let max_queue_size = u16::try_from(max_queue_size).unwrap_or(MAX_QUEUE_SIZE);
        Arc::new(Inflight {
            max_queues,
            max_queue_size,
            region: Mutex::new(None),
            queues: (0..max_queues)
                .map(|_| Mutex::new(QueueTrack::default()))
                .collect(),
            mem: Mutex::new(None),
            name: name.to_string(),
        })
    }

    fn check(&self, num_queues: u16, queue_size: u16) -> Result<(), InflightError> {
        if num_queues == 0 || num_queues > self.max_queues {
            return Err(InflightError::Invalid(format!(
                "num_queues {num_queues}: the device has 1 to {}",
                self.max_queues
            )));
        }
        if queue_size == 0 || queue_size > self.max_queue_size {
            return Err(InflightError::Invalid(format!(
                "queue_size {queue_size}: the device accepts 1 to {}",
                self.max_queue_size
            )));
        }
        Ok(())
    }

    /// GET_INFLIGHT_FD: a new zeroed region; returns its size and the fd for the frontend.
    pub fn get_fd(&self, num_queues: u16, queue_size: u16) -> Result<(u64, File), InflightError> {
        self.check(num_queues, queue_size)?;
        let (region, file) = Region::create(num_queues, queue_size)?;
        let size = region.len as u64;
        self.install(region);
        Ok((size, file))
    }

    /// SET_INFLIGHT_FD: adopt the frontend's region (a previous backend's, after a restart).
    pub fn set_fd(
        &self,
        file: File,
        mmap_size: u64,
        mmap_offset: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<(), InflightError> {
        self.check(num_queues, queue_size)?;
        let region = Region::adopt(file, mmap_size, mmap_offset, num_queues, queue_size)?;
        self.install(region);
        Ok(())
    }

    fn install(&self, region: Region) {
        let region = Arc::new(region);
        *lock(&self.region) = Some(region);
        for q in &self.queues {
            *lock(q) = QueueTrack::default();
        }
    }

    /// Whether a region is in use.
    pub fn active(&self) -> bool {
        lock(&self.region).is_some()
    }

    /// Guest memory of the connection (from `update_memory`), used to read the used ring.
    pub fn set_memory(&self, mem: GuestMem) {
        *lock(&self.mem) = Some(mem);
    }

    /// Binds queue `index` (a started vring) to its part of the region the first time it is
    /// seen (or after its rings moved): recovers what a previous backend left in flight and
    /// points the queue's next available and next used indices at the used index, so the
    /// in-flight requests are popped again, in order, before new ones.
    pub fn bind(self: &Arc<Self>, index: usize, vring: &VringRwLock) {
        let Some(region) = lock(&self.region).clone() else {
            return;
        };
        let key = vring_key(vring);
        // Lock order everywhere: the vring, then the queue's tracking state.
        let mut state = vring.get_mut();
        let Some(slot) = self.queues.get(index) else {
            return;
        };
        let mut t = lock(slot);
        let queue = state.get_queue_mut();
        if !queue.ready() {
            return;
        }
        let desc_table = queue.desc_table();
        if t.desc_table == Some(desc_table) {
            return;
        }
        let Ok(qi) = u16::try_from(index) else { return };
        if qi >= region.num_queues() || queue.size() > region.queue_size() {
            log::warn!(
                "{}: queue {index} (size {}) is not covered by the inflight region ({} queues of {}); not tracked",
                self.name,
                queue.size(),
                region.num_queues(),
                region.queue_size()
            );
            *t = QueueTrack::default();
            t.desc_table = Some(desc_table);
            return;
        }
        let Some(mem) = lock(&self.mem).clone() else {
            return;
        };
        let m = mem.memory();
        let Ok(ring_used) = queue.used_idx(&*m, Ordering::Acquire) else {
            log::warn!("{}: queue {index}: used ring unreadable", self.name);
            return;
        };
        let size = queue.size();
        let avail_ring = queue.avail_ring();
        let avail = |n: u16| -> Option<u16> {
            let pos = ring_used.0.wrapping_add(n) % size;
            let at = avail_ring.checked_add(4 + 2 * u64::from(pos))?;
            m.read_obj::<u16>(GuestAddress(at)).ok().map(u16::from_le)
        };
        let (rec, counter) = recover_queue(&region, qi, size, ring_used.0, avail);
        let n = rec.resubmit.len() as u16;
        if n > 0 {
            log::info!(
                "{}: queue {index}: re-running {n} in-flight request(s) (heads {:?}{}) before new ones",
                self.name,
                rec.resubmit,
                if rec.in_order { "" } else { ", completed out of order before the crash" }
            );
        }
        // Every chain popped before was either used or is in flight.
        queue.set_next_avail(rec.used_idx.wrapping_add(n));
        queue.set_next_used(rec.used_idx);
        *t = QueueTrack {
            region: Some(region),
            desc_table: Some(desc_table),
            size,
            counter,
            resubmit: rec.resubmit.into_iter().collect(),
        };
        drop(t);
        drop(state);
        register(key, self, index);
    }
}

/// Identity of a vring (the address of its shared state) while it lives.
fn vring_key(vring: &VringRwLock) -> usize {
    let guard = vring.get_ref();
    &*guard as *const _ as usize
}

struct Binding {
    key: usize,
    inflight: Weak<Inflight>,
    index: usize,
}

/// Bound vrings of the live connections (one in a jailed device process).
static BOUND: Mutex<Vec<Binding>> = Mutex::new(Vec::new());

fn register(key: usize, inflight: &Arc<Inflight>, index: usize) {
    let mut b = lock(&BOUND);
    b.retain(|x| x.key != key && x.inflight.strong_count() > 0);
    b.push(Binding {
        key,
        inflight: Arc::downgrade(inflight),
        index,
    });
}

/// The inflight tracker of `vring` (a no-op tracker when its connection has no inflight
/// region). Call without holding the vring's lock.
pub fn tracker(vring: &VringRwLock) -> Tracker {
    let key = vring_key(vring);
    let b = lock(&BOUND);
    let slot = b
        .iter()
        .find(|x| x.key == key)
        .and_then(|x| x.inflight.upgrade().map(|i| (i, x.index)));
    Tracker { slot }
}

/// Records pops and completions of one queue in the inflight region, and hands out the
/// chains to re-run first after a reconnect.
pub struct Tracker {
    slot: Option<(Arc<Inflight>, usize)>,
}

impl Tracker {
    /// A tracker that records nothing.
    pub fn none() -> Self {
        Tracker { slot: None }
    }

    /// Whether pops and completions are recorded.
    pub fn active(&self) -> bool {
        self.slot.is_some()
    }

    fn with<R: Default>(&self, f: impl FnOnce(&Region, u16, &mut QueueTrack) -> R) -> R {
        if let Some((inf, i)) = &self.slot {
            if let Some(q) = inf.queues.get(*i) {
                let mut t = lock(q);
                if let Some(region) = t.region.clone() {
                    return f(&region, *i as u16, &mut t);
                }
            }
        }
        R::default()
    }

    /// Marks `head` in flight (call right after popping it).
    pub fn popped(&self, head: u16) {
        self.with(|r, q, t| {
            if head < t.size {
                r.set_counter(q, head, t.counter);
                t.counter = t.counter.wrapping_add(1);
                fence(Ordering::Release);
                r.set_inflight(q, head, true);
            }
        });
    }

    /// Records `head` as the last batch (call right before putting it on the used ring).
    pub fn completing(&self, head: u16) {
        self.with(|r, q, t| {
            if head < t.size {
                r.set_next(q, head, r.last_batch_head(q));
                r.set16(q, 12, head);
                fence(Ordering::Release);
            }
        });
    }

    /// Clears `head` and records the used index (call right after the used ring update).
    pub fn completed(&self, head: u16, used_idx: u16) {
        self.with(|r, q, t| {
            if head < t.size {
                r.set_inflight(q, head, false);
                fence(Ordering::Release);
                r.set16(q, 14, used_idx);
            }
        });
    }

    fn next_resubmit(&self) -> Option<u16> {
        self.with(|_, _, t| t.resubmit.pop_front())
    }

    /// Pops the next chain of `vring` and marks it in flight: first the chains a previous
    /// backend left in flight (in their original order), then the available ones.
    pub fn pop<M>(&self, vring: &VringRwLock, mem: M) -> Option<DescriptorChain<M>>
    where
        M: std::ops::Deref + Clone,
        M::Target: GuestMemory,
    {
        let mut state = vring.get_mut();
        while let Some(head) = self.next_resubmit() {
            match chain_at(state.get_queue(), mem.clone(), head) {
                Some(chain) => {
                    self.popped(head);
                    return Some(chain);
                }
                None => log::warn!("in-flight head {head} cannot be re-run; dropped"),
            }
        }
        let chain = state.get_queue_mut().pop_descriptor_chain(mem)?;
        self.popped(chain.head_index());
        Some(chain)
    }

    /// Puts `head` on the used ring of `vring` with `len`, keeping the region consistent
    /// (callable from any thread: the steps run under the vring's lock).
    pub fn add_used(
        &self,
        vring: &VringRwLock,
        head: u16,
        len: u32,
    ) -> Result<(), virtio_queue::Error> {
        let mut state = vring.get_mut();
        self.completing(head);
        state.add_used(head, len)?;
        self.completed(head, state.get_queue().next_used());
        Ok(())
    }
}

/// A descriptor chain for `head` of `queue`, whatever the avail ring holds now.
///
/// `virtio_queue` builds chains only while popping an avail ring, so this pops from a
/// one-entry avail ring written into the used ring's next free element: that element belongs
/// to the device until it publishes it (the driver reads used elements only below the used
/// index), and the next completion overwrites it.
fn chain_at<M>(queue: &virtio_queue::Queue, mem: M, head: u16) -> Option<DescriptorChain<M>>
where
    M: std::ops::Deref + Clone,
    M::Target: GuestMemory,
{
    use virtio_queue::Queue;
    let size = queue.size();
    if head >= size {
        return None;
    }
    let slot = queue
        .used_ring()
        .checked_add(4 + 8 * u64::from(queue.next_used() % size))?;
    mem.write_obj(1u16.to_le(), GuestAddress(slot)).ok()?;
    mem.write_obj(head.to_le(), GuestAddress(slot + 2)).ok()?;
    let mut q = Queue::new(size).ok()?;
    q.try_set_desc_table_address(GuestAddress(queue.desc_table()))
        .ok()?;
    q.try_set_avail_ring_address(GuestAddress(slot - 2)).ok()?;
    q.try_set_used_ring_address(GuestAddress(queue.used_ring()))
        .ok()?;
    q.set_ready(true);
    q.pop_descriptor_chain(mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_sizes() {
        assert_eq!(queue_region_bytes(256), 16 * 256 + 64);
        assert_eq!(queue_region_bytes(1), 64);
        assert_eq!(queue_region_bytes(4), 128);
    }

    #[test]
    fn track_then_recover() {
        let (r, _fd) = Region::create(1, 8).unwrap();
        // Fresh region: initialised, nothing to re-run.
        let (rec, c) = recover_queue(&r, 0, 8, 5, |_| None);
        assert!(rec.resubmit.is_empty() && c == 0);
        assert_eq!(r.version(0), 1);
        // Heads 3 then 1 popped; 3 completed (used 5 -> 6, cleared); 1 still in flight.
        let inf = Inflight::new("t", 1, 8);
        inf.install(r);
        let region = lock(&inf.region).clone().unwrap();
        *lock(&inf.queues[0]) = QueueTrack {
            region: Some(region.clone()),
            desc_table: Some(0),
            size: 8,
            counter: 10,
            ..Default::default()
        };
        let t = Tracker {
            slot: Some((inf.clone(), 0)),
        };
        t.popped(3);
        t.popped(1);
        t.completing(3);
        t.completed(3, 6);
        // Head 6 popped, completing published (used ring at 7) but the backend died before
        // clearing it: the last-batch rule must clear it.
        t.popped(6);
        t.completing(6);
        let (rec, c) = recover_queue(&region, 0, 8, 7, |n| [1u16, 9][..].get(n as usize).copied());
        assert_eq!(rec.resubmit, vec![1]);
        assert!(rec.in_order);
        assert_eq!(rec.used_idx, 7);
        assert_eq!(c, 12);
        // Flags were cleared (re-marked on the next pop).
        assert!(!region.inflight(0, 1) && !region.inflight(0, 6));
    }

    #[test]
    fn a_chain_is_rebuilt_for_any_head() {
        use virtio_queue::{Queue, QueueT};
        use vm_memory::GuestMemoryMmap;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut q = Queue::new(8).unwrap();
        q.try_set_desc_table_address(GuestAddress(0x1000)).unwrap();
        q.try_set_avail_ring_address(GuestAddress(0x2000)).unwrap();
        q.try_set_used_ring_address(GuestAddress(0x3000)).unwrap();
        q.set_ready(true);
        // Descriptor 5: 16 bytes at 0x4000, then descriptor 6 (writable) at 0x5000.
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&0x4000u64.to_le_bytes());
        d[8..12].copy_from_slice(&16u32.to_le_bytes());
        d[12..14].copy_from_slice(&1u16.to_le_bytes());
        d[14..16].copy_from_slice(&6u16.to_le_bytes());
        mem.write_slice(&d, GuestAddress(0x1000 + 16 * 5)).unwrap();
        d[0..8].copy_from_slice(&0x5000u64.to_le_bytes());
        d[12..14].copy_from_slice(&2u16.to_le_bytes());
        mem.write_slice(&d, GuestAddress(0x1000 + 16 * 6)).unwrap();
        // The avail ring is empty; the chain comes anyway, and the queue did not move.
        let chain = chain_at(&q, &mem, 5).expect("chain");
        assert_eq!(chain.head_index(), 5);
        let descs: Vec<_> = chain.collect();
        assert_eq!(descs.len(), 2);
        assert_eq!(descs[0].addr(), GuestAddress(0x4000));
        assert!(descs[1].is_write_only());
        assert_eq!((q.next_avail(), q.next_used()), (0, 0));
        assert!(chain_at(&q, &mem, 8).is_none());
    }

    #[test]
    fn hostile_regions_are_refused() {
        let inf = Inflight::new("t", 2, 256);
        assert!(inf.get_fd(0, 256).is_err());
        assert!(inf.get_fd(3, 256).is_err());
        assert!(inf.get_fd(1, 0).is_err());
        assert!(inf.get_fd(1, 512).is_err());
        let (size, fd) = inf.get_fd(2, 256).unwrap();
        // Wrong sizes, offsets, an unsealed file.
        let again = || fd.try_clone().unwrap();
        assert!(inf.set_fd(again(), size - 1, 0, 2, 256).is_err());
        assert!(inf.set_fd(again(), size, 4096, 2, 256).is_err());
        assert!(inf.set_fd(again(), size, 1, 2, 256).is_err());
        assert!(inf.set_fd(again(), u64::MAX, 0, 2, 256).is_err());
        let plain = tempfile::tempfile().unwrap();
        plain.set_len(size).unwrap();
        assert!(inf.set_fd(plain, size, 0, 2, 256).is_err());
        inf.set_fd(again(), size, 0, 2, 256).unwrap();
        assert!(inf.active());
    }
}
