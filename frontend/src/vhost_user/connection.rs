//! One vhost-user connection, driven as a frontend (wraps `vhost::vhost_user::Frontend`).

use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::shmem::{BackendChannel, SharedMemoryRegion};
use super::virtqueue::DriverQueue;
use super::watchdog::{Armed, Watchdog};
use super::{vhost_err, Error, Result};

/// How long [`VhostUserConnection::connect`] waits for a backend socket to appear.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a reply from the backend.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The raw `vhost` frontend, with the reply watchdog armed while this is held (see
/// [`VhostUserConnection::frontend`]).
pub struct RawFrontend<'a> {
    fe: &'a mut Frontend,
    _armed: Armed,
}

impl std::ops::Deref for RawFrontend<'_> {
    type Target = Frontend;
    fn deref(&self) -> &Frontend {
        self.fe
    }
}

impl std::ops::DerefMut for RawFrontend<'_> {
    fn deref_mut(&mut self) -> &mut Frontend {
        self.fe
    }
}

/// A connected vhost-user frontend.
pub struct VhostUserConnection {
    fe: Frontend,
    watch: Watchdog,
    num_queues: usize,
    features: u64,
    protocol: VhostUserProtocolFeatures,
}

impl VhostUserConnection {
    /// Connects to the backend socket at `path`, retrying until it accepts or `timeout`.
    pub fn connect(path: &Path, num_queues: usize, timeout: Duration) -> Result<Self> {
        let start = Instant::now();
        loop {
            match UnixStream::connect(path) {
                Ok(s) => return Ok(Self::from_stream(s, num_queues)),
                Err(e) if start.elapsed() < timeout => {
                    log::trace!("connect {}: {e}; retrying", path.display());
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(Error::Io {
                        op: "connect to the backend socket",
                        source: e,
                    })
                }
            }
        }
    }

    /// Uses an already connected stream. Every exchange must be over within
    /// [`REPLY_TIMEOUT`]: past it the connection is closed, so a stuck backend is an error
    /// rather than a hang.
    pub fn from_stream(stream: UnixStream, num_queues: usize) -> Self {
        Self::with_reply_timeout(stream, num_queues, REPLY_TIMEOUT)
    }

    /// Like [`from_stream`](Self::from_stream) with another deadline per exchange.
    pub fn with_reply_timeout(stream: UnixStream, num_queues: usize, limit: Duration) -> Self {
        let watch = Watchdog::new(&stream, limit);
        VhostUserConnection {
            fe: Frontend::from_stream(stream, num_queues as u64),
            watch,
            num_queues,
            features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
        }
    }

    /// The raw `vhost` frontend, for requests this wrapper does not cover. The reply
    /// watchdog is armed until the returned handle is dropped: keep it for one exchange (or
    /// a short burst), not longer than [`REPLY_TIMEOUT`].
    pub fn frontend(&mut self) -> RawFrontend<'_> {
        RawFrontend {
            _armed: self.watch.arm(),
            fe: &mut self.fe,
        }
    }

    /// Virtio features acked by [`negotiate`](Self::negotiate).
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Protocol features acked by [`negotiate`](Self::negotiate).
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// SET_OWNER, feature and protocol-feature negotiation. Acks `offered & wanted` (plus
    /// VHOST_USER_F_PROTOCOL_FEATURES when offered) and returns the acked virtio features.
    pub fn negotiate(
        &mut self,
        wanted: u64,
        wanted_protocol: VhostUserProtocolFeatures,
    ) -> Result<u64> {
        let _armed = self.watch.arm();
        self.fe.set_owner().map_err(vhost_err("SET_OWNER"))?;
        let offered = self.fe.get_features().map_err(vhost_err("GET_FEATURES"))?;
        let pf_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if offered & pf_bit != 0 {
            let pf = self
                .fe
                .get_protocol_features()
                .map_err(vhost_err("GET_PROTOCOL_FEATURES"))?;
            let acked = pf & wanted_protocol;
            self.fe
                .set_protocol_features(acked)
                .map_err(vhost_err("SET_PROTOCOL_FEATURES"))?;
            self.protocol = acked;
            if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Ask for an ack on every request so backend errors surface here.
                self.fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if acked.contains(VhostUserProtocolFeatures::MQ) {
                let n = self
                    .fe
                    .get_queue_num()
                    .map_err(vhost_err("GET_QUEUE_NUM"))?;
                if (n as usize) < self.num_queues {
                    return Err(Error::Invalid(format!(
                        "backend has {n} queues, {} requested",
                        self.num_queues
                    )));
                }
            }
        }
        let acked = offered & (wanted | pf_bit);
        self.fe
            .set_features(acked)
            .map_err(vhost_err("SET_FEATURES"))?;
        self.features = acked;
        Ok(acked)
    }

    /// SET_MEM_TABLE with every region of `mem` (each must be file backed).
    pub fn set_mem_table(&mut self, mem: &GuestMemoryMmap) -> Result<()> {
        let _armed = self.watch.arm();
        let mut regions = Vec::new();
        for r in mem.iter() {
            regions.push(
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|e| {
                    Error::Memory(format!("region at {:#x}: {e}", r.start_addr().0))
                })?,
            );
        }
        self.fe
            .set_mem_table(&regions)
            .map(|_| ())
            .map_err(vhost_err("SET_MEM_TABLE"))
    }

    /// Sets up vring `index` from `queue` (size, addresses, base 0, call and kick eventfds)
    /// and enables it when protocol features were negotiated.
    pub fn setup_vring(
        &mut self,
        index: usize,
        queue: &DriverQueue,
        mem: &GuestMemoryMmap,
    ) -> Result<()> {
        self.setup_vring_from(index, queue, mem, 0)
    }

    /// Like [`setup_vring`](Self::setup_vring), starting at available index `base` (a
    /// reconnect resumes from the used index).
    pub fn setup_vring_from(
        &mut self,
        index: usize,
        queue: &DriverQueue,
        mem: &GuestMemoryMmap,
        base: u16,
    ) -> Result<()> {
        let va = |addr| -> Result<u64> {
            mem.get_host_address(addr)
                .map(|p| p as u64)
                .map_err(|e| Error::Memory(format!("vring address {:#x}: {e}", addr.0)))
        };
        let cfg = VringConfigData {
            queue_max_size: queue.size(),
            queue_size: queue.size(),
            flags: 0,
            desc_table_addr: va(queue.desc_table())?,
            used_ring_addr: va(queue.used_ring())?,
            avail_ring_addr: va(queue.avail_ring())?,
            log_addr: None,
        };
        self.setup_vring_raw_from(index, queue, &cfg, base)
    }

    /// Like [`setup_vring`](Self::setup_vring) with caller-chosen (possibly hostile) addresses.
    pub fn setup_vring_raw(
        &mut self,
        index: usize,
        queue: &DriverQueue,
        cfg: &VringConfigData,
    ) -> Result<()> {
        self.setup_vring_raw_from(index, queue, cfg, 0)
    }

    fn setup_vring_raw_from(
        &mut self,
        index: usize,
        queue: &DriverQueue,
        cfg: &VringConfigData,
        base: u16,
    ) -> Result<()> {
        let _armed = self.watch.arm();
        self.fe
            .set_vring_num(index, cfg.queue_size)
            .map_err(vhost_err("SET_VRING_NUM"))?;
        self.fe
            .set_vring_addr(index, cfg)
            .map_err(vhost_err("SET_VRING_ADDR"))?;
        self.fe
            .set_vring_base(index, base)
            .map_err(vhost_err("SET_VRING_BASE"))?;
        self.fe
            .set_vring_call(index, queue.call_event())
            .map_err(vhost_err("SET_VRING_CALL"))?;
        self.fe
            .set_vring_kick(index, queue.kick_event())
            .map_err(vhost_err("SET_VRING_KICK"))?;
        if self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            self.fe
                .set_vring_enable(index, true)
                .map_err(vhost_err("SET_VRING_ENABLE"))?;
        }
        Ok(())
    }

    /// GET_VRING_BASE: stops vring `index` and returns its next available index.
    pub fn stop_vring(&mut self, index: usize) -> Result<u32> {
        let _armed = self.watch.arm();
        self.fe
            .get_vring_base(index)
            .map_err(vhost_err("GET_VRING_BASE"))
    }

    /// GET_INFLIGHT_FD: the backend's inflight region for `num_queues` queues of
    /// `queue_size` (needs the INFLIGHT_SHMFD protocol feature).
    pub fn get_inflight_fd(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<(VhostUserInflight, File)> {
        let _armed = self.watch.arm();
        self.fe
            .get_inflight_fd(&VhostUserInflight::new(0, 0, num_queues, queue_size))
            .map_err(vhost_err("GET_INFLIGHT_FD"))
    }

    /// SET_INFLIGHT_FD: hands an inflight region (from a previous backend) to this one.
    pub fn set_inflight_fd(&mut self, info: &VhostUserInflight, file: &File) -> Result<()> {
        let _armed = self.watch.arm();
        use std::os::fd::AsRawFd;
        self.fe
            .set_inflight_fd(info, file.as_raw_fd())
            .map_err(vhost_err("SET_INFLIGHT_FD"))
    }

    /// GET_CONFIG: reads `len` bytes of the device config space at `offset`.
    pub fn get_config(&mut self, offset: u32, len: usize) -> Result<Vec<u8>> {
        let _armed = self.watch.arm();
        let buf = vec![0u8; len];
        let (_, data) = self
            .fe
            .get_config(offset, len as u32, VhostUserConfigFlags::WRITABLE, &buf)
            .map_err(vhost_err("GET_CONFIG"))?;
        Ok(data)
    }

    /// GET_SHMEM_CONFIG (needs `VHOST_USER_PROTOCOL_F_SHMEM`): the size of each of the
    /// device's VIRTIO shared memory regions, indexed by `shmid`.
    pub fn shared_memory_config(&mut self) -> Result<Vec<u64>> {
        let _armed = self.watch.arm();
        let cfg = self
            .fe
            .get_shmem_config()
            .map_err(vhost_err("GET_SHMEM_CONFIG"))?;
        let n = cfg.nregions as usize;
        let sizes = cfg.memory_sizes;
        if n > sizes.len() {
            return Err(Error::Invalid(format!(
                "GET_SHMEM_CONFIG: backend claims {n} regions (at most {})",
                sizes.len()
            )));
        }
        Ok(sizes[..n].to_vec())
    }

    /// SET_BACKEND_REQ_FD (needs `VHOST_USER_PROTOCOL_F_BACKEND_REQ`): gives the backend one
    /// end of a new socket pair and serves SHMEM_MAP/UNMAP on the other end, into `regions`,
    /// until the returned channel is dropped.
    pub fn start_backend_channel(
        &mut self,
        regions: Vec<Arc<SharedMemoryRegion>>,
    ) -> Result<BackendChannel> {
        let _armed = self.watch.arm();
        let reply_ack = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        let fe = &mut self.fe;
        BackendChannel::start(regions, reply_ack, |fd| {
            fe.set_backend_request_fd(&fd)
                .map_err(vhost_err("SET_BACKEND_REQ_FD"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_that_never_answers_is_an_error_not_a_hang() {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let mut c = VhostUserConnection::with_reply_timeout(ours, 1, Duration::from_millis(200));
        let start = Instant::now();
        let res = c.negotiate(u64::MAX, VhostUserProtocolFeatures::all());
        assert!(res.is_err(), "negotiation with a silent backend must fail");
        assert!(start.elapsed() < Duration::from_secs(10));
        drop(theirs);
    }
}
