//! The device side of a virtio-pci function: a vhost-user backend on a Unix socket,
//! reached through the shared frontend library ([`crate::vhost_user`]).
//!
//! Connect and protocol negotiation happen at VMM start; the vrings are handed over when
//! the guest driver sets DRIVER_OK; config space is forwarded with GET/SET_CONFIG. When the
//! backend goes away the VMM keeps running, reconnects when the socket is back, and hands
//! the rings over again starting from the used index (nothing the guest saw completed is
//! replayed; requests in flight are re-run).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::VhostUserFrontend;
use vhost::{VhostBackend, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::vhost_user::{Error as VuError, VhostUserConnection};
use crate::vmm::memory::GuestMem;

/// A Cordon device type, as named on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// virtio-blk.
    Block,
    /// virtio-net.
    Net,
    /// virtio-rng.
    Rng,
    /// virtio-vsock.
    Vsock,
    /// virtio-console.
    Console,
    /// virtio-wl (crosvm's Wayland device).
    Wl,
}

/// Accepted `type=` values.
pub const KIND_NAMES: &str = "block, net, rng, vsock, console, wl";

impl DeviceKind {
    /// Parses a `type=` value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "block" => Self::Block,
            "net" => Self::Net,
            "rng" => Self::Rng,
            "vsock" => Self::Vsock,
            "console" => Self::Console,
            "wl" => Self::Wl,
            _ => return None,
        })
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Net => "net",
            Self::Rng => "rng",
            Self::Vsock => "vsock",
            Self::Console => "console",
            Self::Wl => "wl",
        }
    }

    /// Virtio device ID.
    pub fn virtio_id(self) -> u16 {
        match self {
            Self::Net => 1,
            Self::Block => 2,
            Self::Console => 3,
            Self::Rng => 4,
            Self::Vsock => 19,
            Self::Wl => 63,
        }
    }

    /// PCI class code.
    pub fn class(self) -> u32 {
        match self {
            Self::Block => 0x01_80_00,
            Self::Net => 0x02_00_00,
            Self::Console => 0x07_80_00,
            _ => 0xff_00_00,
        }
    }

    /// Number of virtqueues the transport offers.
    pub fn num_queues(self) -> usize {
        match self {
            Self::Block | Self::Rng => 1,
            Self::Net | Self::Console | Self::Wl => 2,
            Self::Vsock => 3,
        }
    }

    /// Feature bits never shown to the guest for this type: those that need queues or
    /// transport features this VMM does not offer.
    fn masked_features(self) -> u64 {
        let common = (1 << 30)  // VHOST_USER_F_PROTOCOL_FEATURES: vhost-user only
            | (1 << 33)          // ACCESS_PLATFORM: no IOMMU
            | (1 << 34)          // RING_PACKED: split rings only
            | (1 << 38)          // NOTIFICATION_DATA
            | (1 << 40); // RING_RESET
        let kind = match self {
            Self::Block => 1 << 12,                            // MQ
            Self::Net => (1 << 17) | (0x7f << 18) | (1 << 23), // CTRL_VQ and what needs it, MQ
            Self::Console => 1 << 1,                           // MULTIPORT (control queues)
            _ => 0,
        };
        common | kind
    }
}

/// One vring to hand to the backend.
pub struct VringSetup<'a> {
    /// Queue index.
    pub index: usize,
    /// Queue size.
    pub size: u16,
    /// Descriptor table (guest physical).
    pub desc: u64,
    /// Available ring (guest physical).
    pub avail: u64,
    /// Used ring (guest physical).
    pub used: u64,
    /// Kick eventfd (an ioeventfd on the notify address).
    pub kick: &'a EventFd,
    /// Call eventfd (the MSI-X vector's irqfd).
    pub call: &'a EventFd,
}

/// Errors talking to a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Connecting failed.
    #[error("--vhost-user type={kind},socket={path}: cannot connect: {err}")]
    Connect {
        /// Device type.
        kind: &'static str,
        /// Socket path.
        path: String,
        /// Why.
        err: String,
    },
    /// A request failed.
    #[error("{0}")]
    Protocol(String),
    /// Not connected.
    #[error("backend not connected")]
    Disconnected,
}

/// A vhost-user backend as seen by the VMM.
pub struct VhostUserBackend {
    /// Device type.
    pub kind: DeviceKind,
    /// Socket path.
    pub socket: PathBuf,
    conn: Option<VhostUserConnection>,
    offered: u64,
    protocol: VhostUserProtocolFeatures,
    reconnects: u32,
    /// The backend's inflight region (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD), fetched once per
    /// device activation and handed to every reconnected backend process.
    inflight: Option<(VhostUserInflight, File)>,
}

const WANTED_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::CONFIG)
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::INFLIGHT_SHMFD);

fn proto(e: VuError) -> BackendError {
    BackendError::Protocol(e.to_string())
}

fn vh(op: &'static str) -> impl FnOnce(vhost::Error) -> BackendError {
    move |e| BackendError::Protocol(format!("vhost-user {op}: {e}"))
}

impl VhostUserBackend {
    /// Connects to `socket` (waiting up to `timeout` for a listener) and negotiates.
    pub fn connect(
        kind: DeviceKind,
        socket: &Path,
        timeout: Duration,
    ) -> Result<Self, BackendError> {
        let mut b = Self {
            kind,
            socket: socket.to_path_buf(),
            conn: None,
            offered: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            reconnects: 0,
            inflight: None,
        };
        b.open(timeout).map_err(|e| BackendError::Connect {
            kind: kind.name(),
            path: socket.display().to_string(),
            err: e.to_string(),
        })?;
        Ok(b)
    }

    fn open(&mut self, timeout: Duration) -> Result<(), BackendError> {
        let mut c = VhostUserConnection::connect(&self.socket, self.kind.num_queues(), timeout)
            .map_err(proto)?;
        self.offered = c.negotiate(u64::MAX, WANTED_PROTOCOL).map_err(proto)?;
        self.protocol = c.protocol_features();
        self.conn = Some(c);
        Ok(())
    }

    /// True while connected.
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// How many times the backend was reconnected.
    pub fn reconnects(&self) -> u32 {
        self.reconnects
    }

    /// The socket's fd, to watch for hang-up.
    pub fn fd(&mut self) -> Option<RawFd> {
        self.conn.as_mut().map(|c| c.frontend().as_raw_fd())
    }

    /// Features the guest may see.
    pub fn guest_features(&self) -> u64 {
        self.offered & !self.kind.masked_features()
    }

    /// Drops the connection (the backend went away).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Tries once to reconnect; true on success.
    pub fn try_reconnect(&mut self) -> bool {
        match self.open(Duration::ZERO) {
            Ok(()) => {
                self.reconnects += 1;
                true
            }
            Err(e) => {
                log::trace!(
                    "{} backend {}: {e}",
                    self.kind.name(),
                    self.socket.display()
                );
                false
            }
        }
    }

    fn conn(&mut self) -> Result<&mut VhostUserConnection, BackendError> {
        self.conn.as_mut().ok_or(BackendError::Disconnected)
    }

    /// Hands the rings to the backend: features, memory table, then each vring.
    pub fn activate(
        &mut self,
        mem: &GuestMem,
        acked: u64,
        rings: &[VringSetup<'_>],
        resume: bool,
    ) -> Result<(), BackendError> {
        let pf = self.offered & (1 << 30);
        let tracked = self
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD);
        let mut inflight = self.inflight.take();
        let c = self.conn()?;
        let mut fe = c.frontend();
        if tracked {
            // The backend records in-flight requests in a region we keep: fetched once, then
            // passed to every (restarted) backend process before its rings are set up, so a
            // backend that died mid-request re-runs it.
            if inflight.is_none() {
                let num_queues = u16::try_from(rings.len()).unwrap_or(u16::MAX);
                let queue_size = rings.iter().map(|r| r.size).max().unwrap_or(0);
                let req = VhostUserInflight::new(0, 0, num_queues, queue_size);
                inflight = Some(fe.get_inflight_fd(&req).map_err(vh("GET_INFLIGHT_FD"))?);
            }
            if let Some((info, file)) = &inflight {
                fe.set_inflight_fd(info, file.as_raw_fd())
                    .map_err(vh("SET_INFLIGHT_FD"))?;
            }
        }
        self.inflight = inflight;
        let c = self.conn()?;
        c.frontend()
            .set_features(acked | pf)
            .map_err(vh("SET_FEATURES"))?;
        c.set_mem_table(mem).map_err(proto)?;
        for r in rings {
            // One watchdog window per ring.
            let mut fe = c.frontend();
            let va = |a: u64| -> Result<u64, BackendError> {
                mem.get_host_address(GuestAddress(a))
                    .map(|p| p as u64)
                    .map_err(|e| {
                        BackendError::Protocol(format!("vring {} address {a:#x}: {e}", r.index))
                    })
            };
            let cfg = VringConfigData {
                queue_max_size: r.size,
                queue_size: r.size,
                flags: 0,
                desc_table_addr: va(r.desc)?,
                used_ring_addr: va(r.used)?,
                avail_ring_addr: va(r.avail)?,
                log_addr: None,
            };
            // After a reconnect, resume where the guest has seen completions.
            let base = if resume {
                mem.read_obj::<u16>(GuestAddress(r.used + 2)).unwrap_or(0)
            } else {
                0
            };
            fe.set_vring_num(r.index, r.size)
                .map_err(vh("SET_VRING_NUM"))?;
            fe.set_vring_addr(r.index, &cfg)
                .map_err(vh("SET_VRING_ADDR"))?;
            fe.set_vring_base(r.index, base)
                .map_err(vh("SET_VRING_BASE"))?;
            fe.set_vring_call(r.index, r.call)
                .map_err(vh("SET_VRING_CALL"))?;
            fe.set_vring_kick(r.index, r.kick)
                .map_err(vh("SET_VRING_KICK"))?;
            if pf != 0 {
                fe.set_vring_enable(r.index, true)
                    .map_err(vh("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Stops the given vrings (device reset). The inflight region is dropped: the next
    /// activation starts with a fresh one.
    pub fn stop(&mut self, indexes: &[usize]) {
        self.inflight = None;
        let Ok(c) = self.conn() else { return };
        for i in indexes {
            if let Err(e) = c.stop_vring(*i) {
                log::debug!("GET_VRING_BASE {i}: {e}");
            }
        }
    }

    /// Reads device config space (zeros if the backend has none).
    pub fn read_config(&mut self, offset: u32, data: &mut [u8]) {
        data.fill(0);
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return;
        }
        if offset as usize + data.len() > 256 {
            return;
        }
        // Always read from offset 0 and slice here: QEMU's backends (libvhost-user,
        // qemu-storage-daemon's vhost-user-blk export) ignore the offset and copy the
        // config from its start, so a read of one field at its offset would return the
        // wrong bytes (virtio_blk then saw num_queues = 0 and failed its probe).
        let start = offset as usize;
        let end = start + data.len();
        match self
            .conn()
            .and_then(|c| c.get_config(0, end).map_err(proto))
        {
            Ok(v) if v.len() == end => data.copy_from_slice(&v[start..end]),
            Ok(_) => {}
            Err(e) => log::debug!("{} GET_CONFIG: {e}", self.kind.name()),
        }
    }

    /// Writes device config space.
    pub fn write_config(&mut self, offset: u32, data: &[u8]) {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG)
            || offset as usize + data.len() > 256
        {
            return;
        }
        if let Ok(c) = self.conn() {
            if let Err(e) = c
                .frontend()
                .set_config(offset, VhostUserConfigFlags::WRITABLE, data)
            {
                log::debug!("{} SET_CONFIG: {e}", self.kind.name());
            }
        }
    }
}
