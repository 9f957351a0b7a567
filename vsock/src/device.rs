//! The vhost-user backend: moves packets between the virtqueues and the [`Muxer`].

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{error, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::muxer::Muxer;
use crate::packet::{Header, HDR_LEN, MAX_PKT_PAYLOAD};

/// Index of the RX queue (device to guest).
pub const RX_QUEUE: u16 = 0;
/// Index of the TX queue (guest to device).
pub const TX_QUEUE: u16 = 1;
/// Index of the event queue: carries `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` after a restart.
pub const EVT_QUEUE: u16 = 2;
/// `struct virtio_vsock_event` id telling the guest that every connection is gone.
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
/// Number of virtqueues.
pub const NUM_QUEUES: usize = 3;
/// Queue size the device accepts.
pub const QUEUE_SIZE: usize = 1024;
/// `handle_event` id of the muxer's epoll fd (after the queues and the exit event).
pub const HOST_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// `handle_event` id of the timer that checks, every [`RESET_POLL`] after a frontend
/// connects, whether the guest is owed a transport reset (see [`ResetState`]).
pub const RESET_TIMER_EVENT: u16 = HOST_EVENT + 1;
/// How often a new connection checks whether its rings are live yet: the reset must reach
/// the guest before it opens new streams, and no ring event need come (a resumed guest
/// may be idle).
pub const RESET_POLL: Duration = Duration::from_millis(20);
/// How long after a connect the reset timer keeps polling (a frontend that connects but
/// never starts the device must not cost wakeups forever).
pub const RESET_POLL_FOR: Duration = Duration::from_secs(10);

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;

/// Device configuration (`cid=`, `uds-path=`).
#[derive(Clone, Debug)]
pub struct VsockConfig {
    /// The guest's context id (>= 3).
    pub guest_cid: u64,
    /// Host Unix socket path; guest connections to port P go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

struct Inner {
    mem: Option<Mem>,
    muxer: Muxer,
    buf: Vec<u8>,
    reset: ResetState,
    /// Fires every [`RESET_POLL`] while `reset` is not settled.
    reset_timer: TimerFd,
    /// When the armed timer gives up (`None`: disarmed).
    reset_poll_until: Option<Instant>,
}

impl Inner {
    fn disarm_reset_timer(&mut self) {
        if self.reset_poll_until.take().is_some() {
            if let Err(e) = self.reset_timer.clear() {
                warn!("vsock: disarming the reset timer: {e}");
            }
        }
    }
}

/// Whether this connection owes the guest a transport reset.
///
/// A frontend that reconnects to a restarted backend resumes the RX and TX rings where
/// the guest left them (non-zero `SET_VRING_BASE`): the guest still has streams this
/// process knows nothing about. The device then sends one
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` on the event queue, and the guest's driver resets
/// every connected socket (ECONNRESET) instead of waiting forever. A fresh guest starts
/// its rings at 0 and gets no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResetState {
    /// The rings' starting points are not all known yet.
    Undecided {
        /// `(RX, TX)` available index when each ring went live, once it did.
        bases: [Option<u16>; 2],
    },
    /// A reset event waits for a buffer on the event queue.
    Due,
    /// Sent, or none needed, for this connection.
    Settled,
}

impl ResetState {
    const FRESH: ResetState = ResetState::Undecided {
        bases: [None, None],
    };
}

/// The virtio-vsock vhost-user backend.
pub struct VsockDevice {
    cfg: VsockConfig,
    inner: Mutex<Inner>,
}

impl VsockDevice {
    /// Creates the device and binds its host listener.
    pub fn new(cfg: VsockConfig) -> io::Result<VsockDevice> {
        if cfg.guest_cid < 3 || cfg.guest_cid > u32::MAX as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cid={} invalid: the guest CID must be between 3 and 4294967295",
                    cfg.guest_cid
                ),
            ));
        }
        let muxer = Muxer::new(cfg.guest_cid, &cfg.uds_path)?;
        let reset_timer = TimerFd::new()?;
        // Non-blocking: a read after the timer was disarmed must not stall the worker.
        crate::muxer::set_nonblocking(reset_timer.as_raw_fd())?;
        Ok(VsockDevice {
            cfg,
            inner: Mutex::new(Inner {
                mem: None,
                muxer,
                buf: Vec::new(),
                reset: ResetState::FRESH,
                reset_timer,
                reset_poll_until: None,
            }),
        })
    }

    /// The fd to register with the vhost-user epoll handler under [`HOST_EVENT`].
    pub fn host_event_fd(&self) -> std::os::fd::RawFd {
        self.lock().muxer.epoll_fd()
    }

    /// Number of open connections (for diagnostics and tests).
    pub fn conn_count(&self) -> usize {
        self.lock().muxer.conn_count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drives queues and host sockets: the body of `handle_event`.
    pub fn process(&self, event: u16, vrings: &[VringRwLock]) -> io::Result<()> {
        let mut inner = self.lock();
        if event == RESET_TIMER_EVENT {
            // Consume the expirations first, whatever happens next: the fd is level-triggered
            // (a failed read only means none were pending).
            let _ = inner.reset_timer.wait();
            if inner.reset_poll_until.is_some_and(|t| Instant::now() > t) {
                // The frontend never started all rings: stop polling, ring events still
                // settle the reset.
                inner.disarm_reset_timer();
            }
        }
        let Some(mem) = inner.mem.clone() else {
            return Ok(());
        };
        if vrings.len() < NUM_QUEUES {
            return Ok(());
        }
        let mem = mem.memory();
        settle_reset(&mut inner, &mem, vrings)?;
        if inner.reset == ResetState::Settled {
            inner.disarm_reset_timer();
        }
        match event {
            RX_QUEUE | TX_QUEUE | HOST_EVENT => {}
            EVT_QUEUE | RESET_TIMER_EVENT => return Ok(()),
            other => {
                warn!("vsock: unexpected event {other}");
                return Ok(());
            }
        }
        if event == HOST_EVENT {
            inner.muxer.handle_host_events();
        }
        // Host sockets may fire before the frontend started the queues: their packets wait
        // in the muxer until the queue's start event (rust-vmm runs one when a queue is
        // enabled) processes them.
        let (tx, rx) = (&vrings[TX_QUEUE as usize], &vrings[RX_QUEUE as usize]);
        let (tx_live, rx_live) = (vring_live(tx), vring_live(rx));
        // TX may create RX work and RX may unblock TX: alternate until both settle.
        loop {
            let tx_more = tx_live && process_tx(&mut inner, &mem, tx)?;
            if rx_live {
                process_rx(&mut inner, &mem, rx)?;
            }
            if !tx_more || inner.muxer.tx_blocked() {
                break;
            }
        }
        Ok(())
    }
}

/// Records where the RX and TX rings started in this connection (before any of their
/// chains is consumed) and, once all three rings are live, sends the transport reset a
/// resumed guest is owed (see [`ResetState`]).
fn settle_reset(
    inner: &mut Inner,
    mem: &GuestMemoryLoadGuard<GuestMemoryMmap>,
    vrings: &[VringRwLock],
) -> io::Result<()> {
    if let ResetState::Undecided { mut bases } = inner.reset {
        for (i, q) in [RX_QUEUE, TX_QUEUE].into_iter().enumerate() {
            let v = &vrings[q as usize];
            if bases[i].is_none() && vring_live(v) {
                bases[i] = Some(v.get_ref().get_queue().next_avail());
            }
        }
        inner.reset = match bases {
            [Some(rx), Some(tx)] if vring_live(&vrings[EVT_QUEUE as usize]) => {
                if rx != 0 || tx != 0 {
                    log::info!(
                        "vsock: the frontend resumed rings in use (RX at {rx}, TX at {tx}): \
                         resetting the guest's connections"
                    );
                    ResetState::Due
                } else {
                    ResetState::Settled
                }
            }
            _ => ResetState::Undecided { bases },
        };
    }
    if inner.reset == ResetState::Due && send_transport_reset(mem, &vrings[EVT_QUEUE as usize])? {
        inner.reset = ResetState::Settled;
    }
    Ok(())
}

/// Puts one `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` into the event queue; false if the guest
/// has no event buffer posted yet (its next kick retries).
fn send_transport_reset(
    mem: &GuestMemoryLoadGuard<GuestMemoryMmap>,
    vring: &VringRwLock,
) -> io::Result<bool> {
    loop {
        let chain = vring
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(mem.clone());
        let Some(chain) = chain else {
            return Ok(false);
        };
        let head = chain.head_index();
        let written = match virtio_queue::Writer::new(&**mem, chain) {
            Ok(mut w) if w.available_bytes() >= 4 => w
                .write_all(&VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes())
                .is_ok(),
            Ok(_) | Err(_) => false,
        };
        if !written {
            warn!("vsock: event buffer unusable for the transport reset; trying the next");
            vring.add_used(head, 0).map_err(io::Error::other)?;
            continue;
        }
        vring.add_used(head, 4).map_err(io::Error::other)?;
        if vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        return Ok(true);
    }
}

/// Whether the frontend has started and enabled `vring` (its addresses are valid).
fn vring_live(vring: &VringRwLock) -> bool {
    let state = vring.get_ref();
    state.get_queue().ready() && state.is_enabled()
}

/// Moves guest packets into the muxer. Returns true if it stopped early (backlog).
///
/// Standard notification protocol: suppress kicks while draining, re-enable them, and
/// drain again if the guest published more chains meanwhile. Kicks are re-enabled on
/// every exit, also when stopping for backlog (the next RX pass resumes TX anyway).
fn process_tx(
    inner: &mut Inner,
    mem: &GuestMemoryLoadGuard<GuestMemoryMmap>,
    vring: &VringRwLock,
) -> io::Result<bool> {
    let mut used_any = false;
    let mut stopped = false;
    loop {
        vring.disable_notification().map_err(io::Error::other)?;
        let mut popped = false;
        loop {
            if inner.muxer.tx_blocked() {
                stopped = true;
                break;
            }
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            handle_tx_chain(inner, mem, chain);
            vring.add_used(head, 0).map_err(io::Error::other)?;
            used_any = true;
            popped = true;
        }
        let more = vring.enable_notification().map_err(io::Error::other)?;
        if stopped || !more {
            break;
        }
        if !popped {
            // Chains announced but none poppable: a corrupt avail ring. Do not spin on it.
            warn!("vsock: TX avail ring announces chains that cannot be read");
            break;
        }
    }
    if used_any && vring.needs_notification().map_err(io::Error::other)? {
        vring.signal_used_queue()?;
    }
    Ok(stopped)
}

fn handle_tx_chain(
    inner: &mut Inner,
    mem: &GuestMemoryLoadGuard<GuestMemoryMmap>,
    chain: DescriptorChain<GuestMemoryLoadGuard<GuestMemoryMmap>>,
) {
    let mut reader = match virtio_queue::Reader::new(&**mem, chain) {
        Ok(r) => r,
        Err(e) => {
            warn!("vsock: unreadable TX descriptor chain: {e}");
            return;
        }
    };
    let mut hb = [0u8; HDR_LEN];
    if reader.read_exact(&mut hb).is_err() {
        warn!("vsock: TX packet shorter than the 44-byte header");
        return;
    }
    let Ok(hdr) = Header::decode(&hb) else { return };
    let avail = reader.available_bytes();
    let n = (hdr.len as usize).min(avail).min(MAX_PKT_PAYLOAD as usize);
    let mut payload = std::mem::take(&mut inner.buf);
    payload.resize(n, 0);
    if reader.read_exact(&mut payload).is_err() {
        warn!("vsock: TX payload unreadable");
        inner.buf = payload;
        return;
    }
    // A header whose `len` exceeds the bytes present fails validation (BadLen -> RST).
    inner.muxer.handle_guest_packet(&hdr, &payload);
    inner.buf = payload;
}

/// Fills RX buffers from the muxer until it or the queue runs dry.
///
/// RX kicks only matter when the device ran out of buffers with packets still waiting,
/// so they are never suppressed, and "the guest posted buffers" alone is no work: only
/// an empty queue with pending packets re-arms the notification (and retries once if
/// buffers arrived in between). Looping on posted buffers with nothing to send would
/// spin forever, as a real guest keeps its RX queue full.
fn process_rx(
    inner: &mut Inner,
    mem: &GuestMemoryLoadGuard<GuestMemoryMmap>,
    vring: &VringRwLock,
) -> io::Result<()> {
    let mut used_any = false;
    let mut out = Vec::with_capacity(MAX_PKT_PAYLOAD as usize);
    let mut retried = false;
    while inner.muxer.has_rx() {
        let chain = vring
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(mem.clone());
        let Some(chain) = chain else {
            // Out of buffers: ask for a kick when the guest adds some (back-pressure,
            // nothing dropped); if some arrived while re-arming, go on right away (once:
            // a corrupt avail ring announces chains that never pop).
            if !retried && vring.enable_notification().map_err(io::Error::other)? {
                retried = true;
                continue;
            }
            break;
        };
        retried = false;
        let head = chain.head_index();
        let mut writer = match virtio_queue::Writer::new(&**mem, chain) {
            Ok(w) => w,
            Err(e) => {
                warn!("vsock: bad RX descriptor chain: {e}");
                vring.add_used(head, 0).map_err(io::Error::other)?;
                used_any = true;
                continue;
            }
        };
        let room = writer.available_bytes();
        if room < HDR_LEN {
            warn!("vsock: RX buffer of {room} bytes is smaller than the header");
            vring.add_used(head, 0).map_err(io::Error::other)?;
            used_any = true;
            continue;
        }
        let Some(hdr) = inner.muxer.next_rx(room - HDR_LEN, &mut out) else {
            vring.get_mut().get_queue_mut().go_to_previous_position();
            break;
        };
        let ok = writer.write_all(&hdr.encode()).is_ok() && writer.write_all(&out).is_ok();
        if !ok {
            error!("vsock: RX buffer write failed");
        }
        let len = writer.bytes_written() as u32;
        vring.add_used(head, len).map_err(io::Error::other)?;
        used_any = true;
    }
    if used_any && vring.needs_notification().map_err(io::Error::other)? {
        vring.signal_used_queue()?;
    }
    Ok(())
}

impl VhostUserBackend for VsockDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        cordon_backends::virtio::BASE_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, _enabled: bool) {
        // rust-vmm sets EVENT_IDX on every vring; the queue helpers honour it on their own.
    }

    fn reset_device(&self) {
        let mut inner = self.lock();
        inner.muxer.reset();
        inner.reset = ResetState::FRESH;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.cfg.guest_cid.to_le_bytes();
        cordon_backends::virtio::config_window(&cfg, offset, size)
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        self.lock().mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN && device_event != HOST_EVENT {
            warn!("vsock: unexpected event set {evset:?} for {device_event}");
        }
        // Errors are logged, not returned: returning one would stop the worker thread.
        if let Err(e) = self.process(device_event, vrings) {
            error!("vsock: queue processing failed: {e}");
        }
        Ok(())
    }
}

impl cordon_backends::Backend for VsockDevice {
    fn connected(
        &self,
        workers: Vec<std::sync::Arc<dyn cordon_backends::EventRegistrar>>,
    ) -> io::Result<()> {
        let w = workers
            .first()
            .ok_or_else(|| io::Error::other("no vring worker"))?;
        w.register(self.host_event_fd(), EventSet::IN, HOST_EVENT as u64)?;
        let mut inner = self.lock();
        inner.reset = ResetState::FRESH;
        w.register(
            inner.reset_timer.as_raw_fd(),
            EventSet::IN,
            RESET_TIMER_EVENT as u64,
        )?;
        inner
            .reset_timer
            .reset(RESET_POLL, Some(RESET_POLL))
            .map_err(|e| io::Error::other(format!("arming the reset timer: {e}")))?;
        inner.reset_poll_until = Some(Instant::now() + RESET_POLL_FOR);
        Ok(())
    }

    fn disconnected(&self) {
        let mut inner = self.lock();
        inner.muxer.reset();
        inner.mem = None;
        inner.reset = ResetState::FRESH;
        inner.disarm_reset_timer();
    }
}
