//! `VhostUserDriver`: a whole frontend in one object, for tests and benchmarks.
//!
//! ```no_run
//! # use cordon_frontend::vhost_user::{DriverConfig, VhostUserDriver};
//! # use std::time::Duration;
//! let mut d = VhostUserDriver::connect("/tmp/rng.sock".as_ref(), DriverConfig::new(1)).unwrap();
//! let c = d.request(0, &[], &[64], Duration::from_secs(5)).unwrap();
//! assert_eq!(c.written[0].len(), 64);
//! ```

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserInflight, VhostUserProtocolFeatures};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::connection::{VhostUserConnection, CONNECT_TIMEOUT};
use super::memory::{create_guest_memory, GuestMemfd};
use super::shmem::{BackendChannel, SharedMemoryRegion};
use super::virtqueue::{queue_footprint, Buffer, DriverQueue, Used};
use super::{Error, Result};

/// What to negotiate and how much memory to share.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Queues to set up.
    pub num_queues: usize,
    /// Size of each queue (power of two).
    pub queue_size: u16,
    /// Guest memory size in bytes (one memfd region at guest address 0 unless `regions` > 1).
    pub mem_size: usize,
    /// Split the memory in this many equal regions (tests multi-region tables).
    pub regions: usize,
    /// Virtio features the driver wants (acked if the device offers them).
    pub features: u64,
    /// Protocol features the driver wants.
    pub protocol_features: VhostUserProtocolFeatures,
    /// How long to wait for the socket to accept.
    pub connect_timeout: Duration,
}

impl DriverConfig {
    /// Defaults: queues of 256, 16 MiB of memory in one region, VERSION_1, and the usual
    /// protocol features (MQ, REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS).
    pub fn new(num_queues: usize) -> Self {
        DriverConfig {
            num_queues,
            queue_size: 256,
            mem_size: 16 << 20,
            regions: 1,
            features: 1 << VIRTIO_F_VERSION_1,
            protocol_features: VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
            connect_timeout: CONNECT_TIMEOUT,
        }
    }

    /// Also negotiate VIRTIO shared memory (`VHOST_USER_PROTOCOL_F_BACKEND_REQ` and
    /// `_SHMEM`); then call [`VhostUserDriver::map_shared_memory`].
    pub fn with_shared_memory(mut self) -> Self {
        self.protocol_features |=
            VhostUserProtocolFeatures::BACKEND_REQ | VhostUserProtocolFeatures::SHMEM;
        self
    }

    /// Also want `bits` (e.g. device-specific feature bits).
    pub fn with_features(mut self, bits: u64) -> Self {
        self.features |= bits;
        self
    }
}

/// A completed request.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Bytes the device reported as written.
    pub len: u32,
    /// Contents of each writable buffer after completion.
    pub written: Vec<Vec<u8>>,
}

/// A connected, fully set-up frontend with its own guest memory and queues.
pub struct VhostUserDriver {
    conn: VhostUserConnection,
    mem: GuestMemfd,
    queues: Vec<DriverQueue>,
    data_start: u64,
    next_free: u64,
    mem_end: u64,
    shmem: Vec<Arc<SharedMemoryRegion>>,
    // Stopped (socket shut down, thread joined) when the driver is dropped.
    backend_channel: Option<BackendChannel>,
}

impl VhostUserDriver {
    /// Connects to `path`, negotiates, shares memory and sets up every queue.
    pub fn connect(path: &Path, cfg: DriverConfig) -> Result<Self> {
        let conn = VhostUserConnection::connect(path, cfg.num_queues, cfg.connect_timeout)?;
        Self::setup(conn, cfg)
    }

    /// Same as [`connect`](Self::connect) over an existing connection.
    pub fn setup(mut conn: VhostUserConnection, cfg: DriverConfig) -> Result<Self> {
        if cfg.regions == 0 || !cfg.mem_size.is_multiple_of(cfg.regions * 4096) {
            return Err(Error::Invalid(
                "mem_size must split into 4 KiB aligned regions".into(),
            ));
        }
        let per = cfg.mem_size / cfg.regions;
        let ranges: Vec<(GuestAddress, usize)> = (0..cfg.regions)
            .map(|i| (GuestAddress((i * per) as u64), per))
            .collect();
        let mem = create_guest_memory(&ranges)?;
        conn.negotiate(cfg.features, cfg.protocol_features)?;
        conn.set_mem_table(&mem.mem)?;
        let mut queues = Vec::new();
        let mut at = 0u64;
        for i in 0..cfg.num_queues {
            // Keep each queue inside one region.
            let fp = queue_footprint(cfg.queue_size);
            if (at % per as u64) + fp > per as u64 {
                at = at.div_ceil(per as u64) * per as u64;
            }
            let q = DriverQueue::new(&mem.mem, GuestAddress(at), cfg.queue_size)?;
            conn.setup_vring(i, &q, &mem.mem)?;
            queues.push(q);
            at += fp;
        }
        Ok(VhostUserDriver {
            conn,
            mem,
            queues,
            data_start: at,
            next_free: at,
            mem_end: cfg.mem_size as u64,
            shmem: Vec::new(),
            backend_channel: None,
        })
    }

    /// GET_SHMEM_CONFIG, then reserves every region and starts the back-end request channel
    /// (SET_BACKEND_REQ_FD) that maps the backend's fds into them. Needs
    /// [`DriverConfig::with_shared_memory`]. Returns the regions, indexed by `shmid`.
    pub fn map_shared_memory(&mut self) -> Result<Vec<Arc<SharedMemoryRegion>>> {
        if self.backend_channel.is_some() {
            return Err(Error::Invalid("shared memory already set up".into()));
        }
        let sizes = self.conn.shared_memory_config()?;
        let mut regions = Vec::new();
        for (id, &size) in sizes.iter().enumerate() {
            if size > 0 {
                let id = u8::try_from(id)
                    .map_err(|_| Error::Invalid(format!("shared memory region id {id}")))?;
                regions.push(Arc::new(SharedMemoryRegion::new(id, size)?));
            }
        }
        self.backend_channel = Some(self.conn.start_backend_channel(regions.clone())?);
        self.shmem = regions.clone();
        Ok(regions)
    }

    /// Shared memory region `shmid` set up by [`map_shared_memory`](Self::map_shared_memory).
    pub fn shared_memory(&self, shmid: u8) -> Option<Arc<SharedMemoryRegion>> {
        self.shmem.iter().find(|r| r.id() == shmid).cloned()
    }

    /// The connection (GET_CONFIG, raw requests).
    pub fn connection(&mut self) -> &mut VhostUserConnection {
        &mut self.conn
    }

    /// Acked virtio features.
    pub fn features(&self) -> u64 {
        self.conn.features()
    }

    /// The shared guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem.mem
    }

    /// Queue `i`.
    pub fn queue(&mut self, i: usize) -> Result<&mut DriverQueue> {
        self.queues
            .get_mut(i)
            .ok_or_else(|| Error::Invalid(format!("no queue {i}")))
    }

    /// Reads `len` bytes of config space at `offset`.
    pub fn config(&mut self, offset: u32, len: usize) -> Result<Vec<u8>> {
        self.conn.get_config(offset, len)
    }

    /// Allocates `len` bytes of guest memory (16-byte aligned, never crossing a region end
    /// for sizes up to a region). Freed all at once by [`reset_alloc`](Self::reset_alloc).
    pub fn alloc(&mut self, len: usize) -> Result<GuestAddress> {
        let start = (self.next_free + 15) & !15;
        let end = start
            .checked_add(len as u64)
            .filter(|&e| e <= self.mem_end)
            .ok_or_else(|| Error::Memory(format!("out of guest memory for {len} bytes")))?;
        self.next_free = end;
        Ok(GuestAddress(start))
    }

    /// Forgets every allocation (only when nothing is in flight).
    pub fn reset_alloc(&mut self) {
        self.next_free = self.data_start;
    }

    /// Writes `data` at `addr`.
    pub fn write(&self, addr: GuestAddress, data: &[u8]) -> Result<()> {
        self.mem
            .mem
            .write_slice(data, addr)
            .map_err(|e| Error::Memory(e.to_string()))
    }

    /// Reads `len` bytes at `addr`.
    pub fn read(&self, addr: GuestAddress, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.mem
            .mem
            .read_slice(&mut v, addr)
            .map_err(|e| Error::Memory(e.to_string()))?;
        Ok(v)
    }

    /// Publishes a chain on queue `q` and kicks; returns its head.
    pub fn submit(&mut self, q: usize, bufs: &[Buffer]) -> Result<u16> {
        let mem = &self.mem.mem;
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| Error::Invalid(format!("no queue {q}")))?;
        let head = queue.add(mem, bufs)?;
        queue.kick()?;
        Ok(head)
    }

    /// Publishes a chain on queue `q` without kicking; returns its head (the device sees it
    /// only when it looks at the ring: after a kick, or when it re-runs in-flight work).
    pub fn publish(&mut self, q: usize, bufs: &[Buffer]) -> Result<u16> {
        let mem = &self.mem.mem;
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| Error::Invalid(format!("no queue {q}")))?;
        queue.add(mem, bufs)
    }

    /// Reconnects to a (restarted) backend at `path` keeping this driver's guest memory and
    /// queues, as a VMM does: negotiate, hand over `inflight` (SET_INFLIGHT_FD) if given,
    /// share the same memory, and set every vring up again from its used index (the
    /// requests the driver has seen completed are not replayed). Nothing is kicked.
    pub fn reconnect(
        &mut self,
        path: &Path,
        cfg: &DriverConfig,
        inflight: Option<&(VhostUserInflight, File)>,
    ) -> Result<()> {
        let mut conn = VhostUserConnection::connect(path, cfg.num_queues, cfg.connect_timeout)?;
        conn.negotiate(cfg.features, cfg.protocol_features)?;
        if let Some((info, file)) = inflight {
            conn.set_inflight_fd(info, file)?;
        }
        conn.set_mem_table(&self.mem.mem)?;
        for (i, q) in self.queues.iter().enumerate() {
            let used: u16 = self
                .mem
                .mem
                .read_obj(GuestAddress(q.used_ring().0 + 2))
                .map_err(|e| Error::Memory(e.to_string()))?;
            conn.setup_vring_from(i, q, &self.mem.mem, u16::from_le(used))?;
        }
        self.conn = conn;
        Ok(())
    }

    /// Waits for used elements on queue `q`.
    pub fn wait(&mut self, q: usize, timeout: Duration) -> Result<Vec<Used>> {
        let mem = &self.mem.mem;
        let queue = self
            .queues
            .get_mut(q)
            .ok_or_else(|| Error::Invalid(format!("no queue {q}")))?;
        queue.wait_used(mem, timeout)
    }

    /// One synchronous request: device-readable buffers holding `out`, then device-writable
    /// buffers of `in_lens` bytes; waits for its completion and returns what was written.
    /// Allocations are released afterwards.
    pub fn request(
        &mut self,
        q: usize,
        out: &[&[u8]],
        in_lens: &[usize],
        timeout: Duration,
    ) -> Result<Completion> {
        let mark = self.next_free;
        let mut bufs = Vec::new();
        for data in out {
            let a = self.alloc(data.len().max(1))?;
            self.write(a, data)?;
            bufs.push(Buffer {
                addr: a,
                len: data.len() as u32,
                writable: false,
            });
        }
        let mut ins = Vec::new();
        for &len in in_lens {
            let a = self.alloc(len.max(1))?;
            self.write(a, &vec![0u8; len])?;
            bufs.push(Buffer {
                addr: a,
                len: len as u32,
                writable: true,
            });
            ins.push((a, len));
        }
        let head = self.submit(q, &bufs)?;
        let result = self.wait_for(q, head, timeout);
        let out = match result {
            Ok(len) => {
                let mut written = Vec::new();
                for (a, l) in ins {
                    written.push(self.read(a, l)?);
                }
                Ok(Completion { len, written })
            }
            Err(e) => Err(e),
        };
        self.next_free = mark;
        out
    }

    /// Waits for the completion of `head` on queue `q`; returns its used length.
    pub fn wait_for(&mut self, q: usize, head: u16, timeout: Duration) -> Result<u32> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(timeout));
            }
            for u in self.wait(q, left)? {
                if u.head == head {
                    return Ok(u.len);
                }
            }
        }
    }
}
