//! The vhost-user face of the block device: rust-vmm's [`VhostUserBackend`] over
//! [`BlockDevice`]. One worker thread per queue drains its queue: it answers at once what cannot
//! block and hands the rest to the queue's I/O threads ([`crate::pool`]), so requests of one
//! queue overlap; completions notify the driver subject to EVENT_IDX suppression.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cordon_backends::queue;
use log::{debug, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::defs::VIRTIO_BLK_T_OUT;
use crate::device::{BlockDevice, Step};
use crate::pool::{IoPool, Job};
use crate::request::Scratch;

/// Guest memory as the vhost-user library hands it to backends.
pub type GuestMem = GuestMemoryAtomic<GuestMemoryMmap<()>>;

/// After this many requests completed on the queue thread in one batch, the driver is
/// notified before the batch goes on, so it can reap and resubmit while the device keeps
/// working (a pipeline instead of batch ping-pong at high queue depth).
const NOTIFY_EVERY: usize = 16;
/// A request executed on the queue thread that took this long blocked on the host: ...
const SLOW_REQUEST: Duration = Duration::from_micros(200);
/// ... then writes go to the I/O threads for this long.
const DEFER_AFTER_SLOW: Duration = Duration::from_millis(50);
/// How long a queue stop or a disconnect waits for the requests in flight on I/O threads.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// vhost-user backend for one block device.
pub struct BlockBackend {
    device: Arc<BlockDevice>,
    mem: RwLock<Option<GuestMem>>,
    workers: Vec<Mutex<QueueState>>,
    pools: Vec<IoPool>,
    event_idx: AtomicBool,
    poll_window: Duration,
}

impl BlockBackend {
    /// A backend serving `device`.
    pub fn new(device: Arc<BlockDevice>) -> Self {
        let poll_window = Duration::from_micros(u64::from(device.poll_us()));
        let n = usize::from(device.num_queues());
        let workers = (0..n)
            .map(|_| {
                Mutex::new(QueueState {
                    scratch: Scratch::default(),
                    poll: poll_window,
                    slept_at: None,
                    batch_avg: 0,
                })
            })
            .collect();
        let pools = (0..n)
            .map(|i| IoPool::new(device.clone(), i, usize::from(device.io_threads())))
            .collect();
        BlockBackend {
            device,
            mem: RwLock::new(None),
            workers,
            pools,
            event_idx: AtomicBool::new(false),
            poll_window,
        }
    }

    /// The device.
    pub fn device(&self) -> &Arc<BlockDevice> {
        &self.device
    }

    /// Drop per-connection state (guest memory, EVENT_IDX) after a frontend went away, once
    /// the requests still running on I/O threads have completed.
    pub fn forget_connection(&self) {
        self.drain();
        if let Ok(mut m) = self.mem.write() {
            *m = None;
        }
        self.event_idx.store(false, Ordering::Relaxed);
    }

    /// Wait for every request in flight on every queue.
    fn drain(&self) {
        for p in &self.pools {
            p.wait_idle(DRAIN_TIMEOUT);
        }
    }

    fn process(&self, idx: usize, vring: &VringRwLock) -> io::Result<()> {
        let Some(atomic) = self.mem.read().map_err(|_| poisoned())?.clone() else {
            warn!("block: queue {idx} kicked before the memory table was set");
            return Ok(());
        };
        let mem = atomic.memory().into_inner();
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        let pool = &self.pools[idx];
        let mut guard = self.workers[idx].lock().map_err(|_| poisoned())?;
        let qs = &mut *guard;
        // Adapt the busy-poll window to how long this queue just slept (as KVM's halt
        // polling does): a wakeup that came soon after sleeping means polling a little longer
        // would have caught it; a long sleep means polling is wasted CPU.
        if let Some(at) = qs.slept_at.take() {
            qs.poll = adapt_poll(qs.poll, at.elapsed(), self.poll_window);
        }
        let scratch = &mut qs.scratch;
        let mut slow_until = Instant::now();
        // O_DIRECT writes always reach the disk: never worth running on the queue thread.
        let direct = self.device.disk().direct();
        loop {
            // No kicks while we are busy: the driver just publishes.
            vring.disable_notification().map_err(queue_err)?;
            let mut done = 0usize;
            let mut unsignalled = 0usize;
            while let Some(chain) = queue::pop_chain(vring, &*mem) {
                let head = chain.head_index();
                pool.begin();
                // Defer what may block only when something else could run meanwhile. Buffered
                // writes usually just copy into the page cache, faster than a hand-off, so they
                // run here unless one recently blocked (writeback throttling). Only requests
                // that may block are timed (no clock read for a cached read).
                let mut timed: Option<Instant> = None;
                let defer = |kind: u32| {
                    let now = Instant::now();
                    let d = pool.enabled()
                        && (kind != VIRTIO_BLK_T_OUT || direct || now < slow_until)
                        && (pool.outstanding() > 1 || avail_pending(vring, &mem) != Some(false));
                    if !d {
                        timed = Some(now);
                    }
                    d
                };
                let step = self.device.prepare(&*mem, chain, scratch, defer);
                match step {
                    Step::Done(used) => {
                        if let Some(started) = timed {
                            let now = Instant::now();
                            if now.duration_since(started) >= SLOW_REQUEST {
                                slow_until = now + DEFER_AFTER_SLOW;
                            }
                        }
                        let r = queue::add_used(vring, head, used);
                        pool.end();
                        r?;
                        unsignalled += 1;
                        if unsignalled >= NOTIFY_EVERY {
                            queue::notify(vring, event_idx)?;
                            unsignalled = 0;
                        }
                    }
                    Step::Deferred(req) => {
                        let job = Job {
                            head,
                            req,
                            scratch: pool.swap_scratch(scratch),
                            mem: mem.clone(),
                            vring: vring.clone(),
                            event_idx,
                        };
                        if let Some(mut job) = pool.submit(job) {
                            let used = self.device.run_deferred(&*mem, &job.req, &mut job.scratch);
                            let r = queue::add_used(vring, head, used);
                            pool.end();
                            r?;
                            unsignalled += 1;
                        }
                    }
                }
                done += 1;
            }
            if unsignalled > 0 {
                queue::notify(vring, event_idx)?;
            }
            // Busy-poll briefly for the driver's next request before sleeping in epoll:
            // saves a kick and a wakeup per request at low queue depth.
            // Busy-poll only for a driver that keeps several requests in flight: at queue
            // depth 1 the next request comes after a full round trip through the driver, and
            // spinning meanwhile only takes CPU from it (measured: fewer IOPS, longer tail).
            if done > 0 {
                let sample = u32::try_from(done.min(1024)).unwrap_or(1024) * 16;
                qs.batch_avg = (qs.batch_avg * 7 + sample) / 8;
            }
            if done > 0 && qs.batch_avg >= POLL_MIN_BATCH && poll(vring, &mem, qs.poll) {
                continue;
            }
            // Re-enable notifications; loop if requests raced in meanwhile.
            if !vring.enable_notification().map_err(queue_err)? {
                qs.slept_at = Some(Instant::now());
                break;
            }
        }
        Ok(())
    }
}

/// Per-queue state of the queue thread.
struct QueueState {
    scratch: Scratch,
    /// Current busy-poll window (adapted between 0 and `--poll-us`).
    poll: Duration,
    /// When the queue thread last went to sleep in epoll.
    slept_at: Option<Instant>,
    /// Moving average of the batch size, in 1/16 requests.
    batch_avg: u32,
}

/// Busy-poll only when the average batch is at least this (in 1/16 requests: 1.5 requests).
const POLL_MIN_BATCH: u32 = 24;

/// Smallest non-zero busy-poll window.
const MIN_POLL: Duration = Duration::from_micros(5);

/// The next busy-poll window after a sleep of `slept`: grow (double, at least [`MIN_POLL`])
/// when the driver came back within `max`, shrink (halve, down to zero) otherwise.
fn adapt_poll(cur: Duration, slept: Duration, max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    if slept <= max {
        (cur * 2).max(MIN_POLL).min(max)
    } else {
        let half = cur / 2;
        if half < MIN_POLL {
            Duration::ZERO
        } else {
            half
        }
    }
}

/// Spin up to `window` waiting for a new avail entry; true if one arrived.
fn poll(vring: &VringRwLock, mem: &GuestMemoryMmap<()>, window: Duration) -> bool {
    if window.is_zero() {
        return false;
    }
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            match avail_pending(vring, mem) {
                Some(true) => return true,
                Some(false) => std::hint::spin_loop(),
                None => return false,
            }
        }
        if start.elapsed() >= window {
            return false;
        }
    }
}

/// Whether the driver has published requests the device has not popped yet (`None` if the
/// avail ring cannot be read).
fn avail_pending(vring: &VringRwLock, mem: &GuestMemoryMmap<()>) -> Option<bool> {
    let guard = vring.get_ref();
    let q = guard.get_queue();
    q.avail_idx(mem, Ordering::Acquire)
        .ok()
        .map(|idx| idx.0 != q.next_avail())
}

fn poisoned() -> io::Error {
    io::Error::other("block: lock poisoned")
}

fn queue_err(e: virtio_queue::Error) -> io::Error {
    io::Error::other(format!("block: virtqueue error: {e}"))
}

impl VhostUserBackend for BlockBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.device.num_queues())
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.device.queue_size())
    }

    fn features(&self) -> u64 {
        self.device.features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.device.read_config(offset, size)
    }

    fn set_config(&self, _offset: u32, _buf: &[u8]) -> io::Result<()> {
        // The block config space is read-only for the driver (no CONFIG_WCE).
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "virtio-blk config space is read-only",
        ))
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *self.mem.write().map_err(|_| poisoned())? = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.device.num_queues()).map(|i| 1u64 << i).collect()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: the reported base must count only completed requests, so let the
        // ones still running on I/O threads finish first.
        if let Some(p) = self.pools.get(queue_index as usize) {
            p.wait_idle(DRAIN_TIMEOUT);
        }
        Ok(())
    }

    fn reset_device(&self) {
        debug!("block: device reset");
        self.drain();
        self.event_idx.store(false, Ordering::Relaxed);
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!(
                "block: unexpected epoll events {evset:?} on queue {device_event}"
            )));
        }
        let idx = usize::from(device_event);
        let (Some(vring), true) = (vrings.get(idx), idx < self.workers.len()) else {
            return Err(io::Error::other(format!(
                "block: event for unknown queue {device_event}"
            )));
        };
        self.process(idx, vring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_window_grows_on_quick_wakeups_and_shrinks_on_long_sleeps() {
        let max = Duration::from_micros(50);
        let us = Duration::from_micros;
        // Quick wakeups grow the window from zero up to the maximum, never past it.
        let mut w = Duration::ZERO;
        for want in [5, 10, 20, 40, 50, 50] {
            w = adapt_poll(w, us(10), max);
            assert_eq!(w, us(want));
        }
        // Long sleeps halve it down to zero.
        for want in [25, 12, 6, 0, 0] {
            w = adapt_poll(w, us(500), max);
            assert_eq!(w.as_micros(), want);
        }
        // --poll-us 0 never polls.
        assert_eq!(adapt_poll(us(50), us(1), Duration::ZERO), Duration::ZERO);
    }
}
