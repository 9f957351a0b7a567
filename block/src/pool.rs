//! Per-queue I/O threads, so that the requests of one queue overlap.
//!
//! The queue thread parses every request and answers at once what cannot block (see
//! [`BlockDevice::prepare`]); requests that may block (writes, flushes, discards, reads the
//! page cache cannot serve) become [`Job`]s run here by a few threads, each of which puts its
//! request on the used ring and notifies the driver itself (through the shared queue layer,
//! `cordon_backends::queue`). Completion order may therefore differ from submission order, which
//! virtio allows.
//!
//! Threads are started on first use, i.e. after the jail (whose `unshare` needs a
//! single-threaded process), and live as long as the device.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cordon_backends::queue;
use log::{debug, warn};
use vhost_user_backend::VringRwLock;
use vm_memory::GuestMemoryMmap;

use crate::device::BlockDevice;
use crate::request::{Request, Scratch};

/// Bounce buffer limit of the scratch areas that travel with jobs (misaligned O_DIRECT
/// requests larger than this use the buffered descriptor instead), so that many requests in
/// flight cannot make the device allocate much memory.
const JOB_BOUNCE_LIMIT: usize = 64 << 10;
/// Scratch areas kept for reuse at most.
const MAX_FREE_SCRATCH: usize = 256;

/// A deferred request: everything an I/O thread needs to execute and complete it.
pub struct Job {
    /// Head descriptor index (what goes on the used ring).
    pub head: u16,
    /// The parsed request.
    pub req: Request,
    /// Its segments (parsed by the queue thread).
    pub scratch: Scratch,
    /// Guest memory, kept mapped until the request completes.
    pub mem: Arc<GuestMemoryMmap<()>>,
    /// The queue to complete on.
    pub vring: VringRwLock,
    /// Whether EVENT_IDX was negotiated (notification suppression).
    pub event_idx: bool,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    free: Vec<Scratch>,
    started: usize,
}

struct Shared {
    device: Arc<BlockDevice>,
    state: Mutex<State>,
    work: Condvar,
    /// Requests popped from the avail ring and not yet on the used ring (inline or deferred).
    outstanding: AtomicUsize,
}

/// The I/O threads of one queue.
pub struct IoPool {
    shared: Arc<Shared>,
    threads: usize,
    queue: usize,
}

impl IoPool {
    /// A pool of up to `threads` threads for queue `queue` (0: every request runs on the
    /// queue thread).
    pub fn new(device: Arc<BlockDevice>, queue: usize, threads: usize) -> Self {
        IoPool {
            shared: Arc::new(Shared {
                device,
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                outstanding: AtomicUsize::new(0),
            }),
            threads,
            queue,
        }
    }

    /// Whether requests may be deferred to I/O threads.
    pub fn enabled(&self) -> bool {
        self.threads > 0
    }

    /// A request was popped from the avail ring: count it until [`IoPool::end`] (inline) or
    /// its job completes.
    pub fn begin(&self) {
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    /// A request counted by [`IoPool::begin`] was put on the used ring by the queue thread.
    pub fn end(&self) {
        self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
    }

    /// Requests popped and not yet on the used ring.
    pub fn outstanding(&self) -> usize {
        self.shared.outstanding.load(Ordering::Acquire)
    }

    /// Swap `scratch` (holding a parsed, deferred request) for a fresh one from the free list;
    /// returns the one holding the request.
    pub fn swap_scratch(&self, scratch: &mut Scratch) -> Scratch {
        let fresh = self
            .shared
            .state
            .lock()
            .ok()
            .and_then(|mut s| s.free.pop())
            .unwrap_or_else(|| Scratch::with_bounce_limit(JOB_BOUNCE_LIMIT));
        let mut job = fresh;
        std::mem::swap(scratch, &mut job);
        job
    }

    /// Hand `job` to an I/O thread. Gives it back when no thread can be started (the caller
    /// then runs it itself).
    #[must_use = "a job given back must be run by the caller"]
    pub fn submit(&self, job: Job) -> Option<Job> {
        let Ok(mut st) = self.shared.state.lock() else {
            return Some(job);
        };
        if st.started < self.threads && (st.started == 0 || !st.jobs.is_empty()) {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("blk-io-{}", self.queue))
                .stack_size(256 << 10)
                .spawn(move || worker(shared));
            match spawned {
                Ok(_) => st.started += 1,
                Err(e) => warn!("block: cannot start an I/O thread: {e}"),
            }
        }
        if st.started == 0 {
            return Some(job);
        }
        st.jobs.push_back(job);
        drop(st);
        self.shared.work.notify_one();
        None
    }

    /// Wait until every popped request of this queue is on the used ring, at most `timeout`.
    /// True if the queue went idle.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        while self.outstanding() > 0 {
            if start.elapsed() >= timeout {
                warn!(
                    "block: queue {} still has {} request(s) in flight after {timeout:?}",
                    self.queue,
                    self.outstanding()
                );
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }
}

/// Body of an I/O thread: run jobs forever (the pool lives as long as the process).
fn worker(shared: Arc<Shared>) {
    loop {
        let job = {
            let Ok(mut st) = shared.state.lock() else {
                return;
            };
            loop {
                if let Some(j) = st.jobs.pop_front() {
                    break j;
                }
                st = match shared.work.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
        };
        let Job {
            head,
            req,
            mut scratch,
            mem,
            vring,
            event_idx,
        } = job;
        let used = shared.device.run_deferred(&*mem, &req, &mut scratch);
        // Notify only when no job is waiting: whoever completes the last queued one notifies
        // for all (every completion is followed by a notification, fewer interrupts).
        let r = queue::add_used(&vring, head, used).and_then(|()| {
            let waiting = shared
                .state
                .lock()
                .map(|s| !s.jobs.is_empty())
                .unwrap_or(false);
            if waiting {
                Ok(())
            } else {
                queue::notify(&vring, event_idx)
            }
        });
        if let Err(e) = r {
            debug!("block: completing request {head}: {e}");
        }
        drop((mem, vring));
        shared.outstanding.fetch_sub(1, Ordering::AcqRel);
        if let Ok(mut st) = shared.state.lock() {
            if st.free.len() < MAX_FREE_SCRATCH {
                st.free.push(scratch);
            }
        }
    }
}
