//! The virtio-net vhost-user backend over a TAP device.
//!
//! Queues come in pairs: RX `2i`, TX `2i+1`, each pair served by TAP queue fd `i`. TAP fds
//! sit in the device's own epoll set, registered with the vhost-user event loop under
//! [`HOST_EVENT`]. A full RX queue stops reading the TAP (the kernel queues, then drops at
//! its own txqueuelen, counted by the kernel): the device never drops, never spins.

use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Mutex;

use log::{debug, error, warn};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::*;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::frame::{validate_tx, VnetHdr, MAX_FRAME, VNET_HDR_LEN};
use crate::tap::*;

/// Queue size the device accepts.
pub const QUEUE_SIZE: usize = 1024;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;
type Guard = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// Where the TAP comes from.
#[derive(Clone, Debug)]
pub enum TapSource {
    /// Create (or attach to) the named TAP, optionally assigning the host address.
    Create {
        /// Interface name.
        name: String,
        /// Host-side IPv4 address.
        host_ip: Option<Ipv4Addr>,
        /// Netmask for `host_ip`.
        netmask: Option<Ipv4Addr>,
    },
    /// An already open TAP fd (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).
    Fd(RawFd),
}

/// Device configuration.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// TAP origin.
    pub tap: TapSource,
    /// Guest MAC address (config space), if any.
    pub mac: Option<[u8; 6]>,
    /// Number of queue pairs.
    pub queue_pairs: usize,
}

struct Pair {
    /// A frame read from the TAP that is waiting for RX buffers.
    pending: Option<Vec<u8>>,
    /// TAP readability is being watched.
    rx_armed: bool,
    /// The TAP refused a write (EAGAIN); TX waits for writability.
    tx_blocked: bool,
    /// Currently registered epoll bits.
    interest: u32,
}

struct Inner {
    mem: Option<Mem>,
    event_idx: bool,
    mrg_rxbuf: bool,
    pairs: Vec<Pair>,
    buf: Vec<u8>,
    /// Frames refused by validation (malformed) since start.
    tx_errors: u64,
    /// Frames that did not fit a guest RX buffer (guest without MRG_RXBUF and small buffers).
    rx_too_big: u64,
}

/// The virtio-net vhost-user backend.
pub struct NetDevice {
    cfg: NetConfig,
    tap: Tap,
    epoll: Epoll,
    inner: Mutex<Inner>,
}

impl NetDevice {
    /// Opens the TAP (creating and configuring it if asked) and builds the device.
    pub fn new(cfg: NetConfig) -> io::Result<NetDevice> {
        if cfg.queue_pairs == 0 || cfg.queue_pairs > 16 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("queues={} invalid: 1 to 16 queue pairs", cfg.queue_pairs),
            ));
        }
        let tap = match &cfg.tap {
            TapSource::Create {
                name,
                host_ip,
                netmask,
            } => {
                let t = Tap::create(name, cfg.queue_pairs)?;
                t.configure(*host_ip, *netmask)?;
                t
            }
            TapSource::Fd(fd) => {
                if cfg.queue_pairs != 1 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "tap-fd supports queues=1 only",
                    ));
                }
                Tap::from_fd(*fd)?
            }
        };
        let epoll = Epoll::new()?;
        let pairs = (0..cfg.queue_pairs)
            .map(|_| Pair {
                pending: None,
                rx_armed: false,
                tx_blocked: false,
                interest: 0,
            })
            .collect();
        for i in 0..cfg.queue_pairs {
            epoll.ctl(
                ControlOperation::Add,
                tap.fd(i),
                EpollEvent::new(EventSet::empty(), i as u64),
            )?;
        }
        let dev = NetDevice {
            cfg,
            tap,
            epoll,
            inner: Mutex::new(Inner {
                mem: None,
                event_idx: false,
                mrg_rxbuf: false,
                pairs,
                buf: Vec::with_capacity(VNET_HDR_LEN + MAX_FRAME),
                tx_errors: 0,
                rx_too_big: 0,
            }),
        };
        Ok(dev)
    }

    /// The fds of the TAP queues.
    pub fn tap_fds(&self) -> Vec<RawFd> {
        (0..self.tap.queues()).map(|i| self.tap.fd(i)).collect()
    }

    /// The TAP interface name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// The fd to register with the vhost-user epoll handler under [`NetDevice::host_event`].
    pub fn host_event_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The `handle_event` id of the TAP epoll fd.
    pub fn host_event(&self) -> u16 {
        (self.cfg.queue_pairs * 2 + 1) as u16
    }

    /// (malformed TX frames refused, RX frames too big for the guest's buffer).
    pub fn error_counts(&self) -> (u64, u64) {
        let i = self.lock();
        (i.tx_errors, i.rx_too_big)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_interest(&self, inner: &mut Inner, i: usize) {
        let p = &mut inner.pairs[i];
        let mut ev = EventSet::empty();
        if p.rx_armed {
            ev |= EventSet::IN;
        }
        if p.tx_blocked {
            ev |= EventSet::OUT;
        }
        if ev.bits() != p.interest {
            p.interest = ev.bits();
            if let Err(e) = self.epoll.ctl(
                ControlOperation::Modify,
                self.tap.fd(i),
                EpollEvent::new(ev, i as u64),
            ) {
                error!("net: epoll update for queue pair {i}: {e}");
            }
        }
    }

    /// Drives queues and the TAP: the body of `handle_event`.
    pub fn process(&self, event: u16, vrings: &[VringRwLock]) -> io::Result<()> {
        let mut inner = self.lock();
        let Some(mem) = inner.mem.clone() else {
            return Ok(());
        };
        let mem = mem.memory();
        let n = self.cfg.queue_pairs;
        if vrings.len() < 2 * n {
            return Ok(());
        }
        if event == self.host_event() {
            let mut events = [EpollEvent::default(); 16];
            let got = match self.epoll.wait(0, &mut events) {
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            for ev in &events[..got] {
                let i = ev.data() as usize;
                if i >= n {
                    continue;
                }
                let set = EventSet::from_bits_truncate(ev.events);
                if set.contains(EventSet::OUT) {
                    inner.pairs[i].tx_blocked = false;
                    self.process_tx(&mut inner, &mem, i, &vrings[2 * i + 1])?;
                }
                if set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                    self.process_rx(&mut inner, &mem, i, &vrings[2 * i])?;
                }
                self.set_interest(&mut inner, i);
            }
            return Ok(());
        }
        let q = event as usize;
        if q >= 2 * n {
            warn!("net: unexpected event {event}");
            return Ok(());
        }
        let i = q / 2;
        if q.is_multiple_of(2) {
            self.process_rx(&mut inner, &mem, i, &vrings[q])?;
        } else if !inner.pairs[i].tx_blocked {
            self.process_tx(&mut inner, &mem, i, &vrings[q])?;
        }
        self.set_interest(&mut inner, i);
        Ok(())
    }

    /// Guest frames to the TAP.
    fn process_tx(
        &self,
        inner: &mut Inner,
        mem: &Guard,
        i: usize,
        vring: &VringRwLock,
    ) -> io::Result<()> {
        let fd = self.tap.fd(i);
        let mut used_any = false;
        'outer: loop {
            if inner.event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let mut reader = match virtio_queue::Reader::new(&**mem, chain) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!("net: bad TX descriptor chain: {e}");
                        inner.tx_errors += 1;
                        vring.add_used(head, 0).map_err(io::Error::other)?;
                        used_any = true;
                        continue;
                    }
                };
                let total = reader.available_bytes();
                if total > VNET_HDR_LEN + MAX_FRAME {
                    warn!("net: TX frame of {total} bytes exceeds the maximum, dropped");
                    inner.tx_errors += 1;
                    vring.add_used(head, 0).map_err(io::Error::other)?;
                    used_any = true;
                    continue;
                }
                inner.buf.resize(total, 0);
                if reader.read_exact(&mut inner.buf).is_err() {
                    warn!("net: TX frame unreadable");
                    inner.tx_errors += 1;
                    vring.add_used(head, 0).map_err(io::Error::other)?;
                    used_any = true;
                    continue;
                }
                if let Err(e) = validate_tx(&inner.buf) {
                    warn!("net: TX frame refused: {e}");
                    inner.tx_errors += 1;
                    vring.add_used(head, 0).map_err(io::Error::other)?;
                    used_any = true;
                    continue;
                }
                // SAFETY: writes the initialised buffer to our TAP fd.
                let rc = unsafe { libc::write(fd, inner.buf.as_ptr().cast(), inner.buf.len()) };
                if rc < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::WouldBlock {
                        // Put the chain back and wait for the TAP to drain.
                        vring.get_mut().get_queue_mut().go_to_previous_position();
                        inner.pairs[i].tx_blocked = true;
                        break 'outer;
                    }
                    warn!("net: TAP refused a frame: {e}");
                    inner.tx_errors += 1;
                }
                vring.add_used(head, 0).map_err(io::Error::other)?;
                used_any = true;
            }
            if !inner.event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        if used_any && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// TAP frames to the guest, until the TAP is empty or the guest has no buffers.
    fn process_rx(
        &self,
        inner: &mut Inner,
        mem: &Guard,
        i: usize,
        vring: &VringRwLock,
    ) -> io::Result<()> {
        let fd = self.tap.fd(i);
        if !vring.get_ref().get_queue().ready() {
            // Stopped by the frontend (reset, disconnect): leave the TAP alone, or its
            // readiness would call us again and again until the next kick.
            inner.pairs[i].rx_armed = false;
            return Ok(());
        }
        let mut used_any = false;
        let mut frame = Vec::new();
        loop {
            let f = match inner.pairs[i].pending.take() {
                Some(f) => f,
                None => {
                    frame.resize(VNET_HDR_LEN + MAX_FRAME, 0);
                    // SAFETY: reads into our buffer of the stated length.
                    let rc = unsafe { libc::read(fd, frame.as_mut_ptr().cast(), frame.len()) };
                    if rc < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::Interrupted {
                            continue;
                        }
                        if e.kind() != io::ErrorKind::WouldBlock {
                            warn!("net: TAP read: {e}");
                        }
                        inner.pairs[i].rx_armed = true;
                        break;
                    }
                    frame.truncate(rc as usize);
                    std::mem::take(&mut frame)
                }
            };
            match self.deliver(inner, mem, vring, &f)? {
                Delivered::Yes => used_any = true,
                Delivered::TooBig => {
                    used_any = true;
                }
                Delivered::NoBuffers { end } => {
                    inner.pairs[i].pending = Some(f);
                    // Stop watching the TAP until the guest adds buffers (its kick resumes us).
                    inner.pairs[i].rx_armed = false;
                    // A guest refills only after it has seen the buffers already used.
                    if used_any && vring.needs_notification().map_err(io::Error::other)? {
                        vring.signal_used_queue()?;
                    }
                    used_any = false;
                    if Self::rearm_rx(mem, vring, end)? {
                        continue;
                    }
                    break;
                }
            }
        }
        if used_any && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    /// Asks the guest for a kick when it adds RX buffers beyond `end`, the available index
    /// at which `deliver` ran out, and returns whether it added some since then (retry).
    ///
    /// A frame that needs more buffers than are posted leaves them posted (`deliver`
    /// rewinds), so `enable_notification` at the rewound position would see "more
    /// buffers" forever (a spin that never lets the guest run its refill) and publish an
    /// `avail_event` behind the driver's index (no kick would come). Publishing a later
    /// index than `end` loses a wakeup instead: buffers the guest posted between
    /// `deliver`'s last look and this call would be taken as already seen, the guest,
    /// having filled its ring, would not kick again, and the frame would wait forever
    /// (the "one GSO frame short" host-to-guest TCP stall).
    fn rearm_rx(mem: &Guard, vring: &VringRwLock, end: u16) -> io::Result<bool> {
        let mut state = vring.get_mut();
        let q = state.get_queue_mut();
        if !q.ready() {
            return Ok(false);
        }
        let rewound = q.next_avail();
        // enable_notification publishes next_avail as avail_event (with EVENT_IDX), then
        // compares the available index with it.
        q.set_next_avail(end);
        let more = q.enable_notification(&**mem).map_err(io::Error::other);
        q.set_next_avail(rewound);
        more
    }

    /// Places one frame (vnet header included) into RX buffers.
    fn deliver(
        &self,
        inner: &mut Inner,
        mem: &Guard,
        vring: &VringRwLock,
        f: &[u8],
    ) -> io::Result<Delivered> {
        if f.len() < VNET_HDR_LEN {
            return Ok(Delivered::TooBig);
        }
        let mut chains = Vec::new();
        let mut cap = 0usize;
        while cap < f.len() {
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone());
            let Some(chain) = chain else {
                let end = vring.get_ref().get_queue().next_avail();
                for _ in 0..chains.len() {
                    vring.get_mut().get_queue_mut().go_to_previous_position();
                }
                return Ok(Delivered::NoBuffers { end });
            };
            let head = chain.head_index();
            let w = match virtio_queue::Writer::new(&**mem, chain) {
                Ok(w) => w,
                Err(e) => {
                    warn!("net: bad RX descriptor chain: {e}");
                    vring.add_used(head, 0).map_err(io::Error::other)?;
                    continue;
                }
            };
            let room = w.available_bytes();
            if chains.is_empty() && room < VNET_HDR_LEN {
                warn!("net: RX buffer of {room} bytes cannot hold the vnet header");
                vring.add_used(head, 0).map_err(io::Error::other)?;
                continue;
            }
            if !inner.mrg_rxbuf && room < f.len() {
                warn!(
                    "net: {}-byte frame does not fit a {room}-byte RX buffer (no MRG_RXBUF)",
                    f.len()
                );
                inner.rx_too_big += 1;
                vring.add_used(head, 0).map_err(io::Error::other)?;
                return Ok(Delivered::TooBig);
            }
            cap += room;
            chains.push((head, w));
        }
        let mut h = [0u8; VNET_HDR_LEN];
        h.copy_from_slice(&f[..VNET_HDR_LEN]);
        let mut vh = VnetHdr::decode(&h);
        vh.num_buffers = chains.len() as u16;
        let hdr = vh.encode();
        let mut off = 0usize;
        for (idx, (head, w)) in chains.iter_mut().enumerate() {
            let start = off;
            let mut ok = true;
            if idx == 0 {
                ok &= w.write_all(&hdr).is_ok();
                off = VNET_HDR_LEN;
            }
            let n = w.available_bytes().min(f.len() - off);
            ok &= w.write_all(&f[off..off + n]).is_ok();
            off += n;
            if !ok {
                warn!("net: RX buffer write failed");
            }
            vring
                .add_used(*head, (off - start) as u32)
                .map_err(io::Error::other)?;
        }
        debug!(
            "net: delivered {} bytes in {} buffers",
            f.len(),
            chains.len()
        );
        Ok(Delivered::Yes)
    }
}

enum Delivered {
    Yes,
    TooBig,
    /// The posted buffers ran out at available index `end`; nothing was consumed.
    NoBuffers {
        end: u16,
    },
}

impl VhostUserBackend for NetDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.cfg.queue_pairs * 2
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mut f = cordon_backends::virtio::BASE_FEATURES
            | (1 << VIRTIO_NET_F_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_CSUM)
            | (1 << VIRTIO_NET_F_GUEST_TSO4)
            | (1 << VIRTIO_NET_F_GUEST_TSO6)
            | (1 << VIRTIO_NET_F_GUEST_ECN)
            | (1 << VIRTIO_NET_F_GUEST_UFO)
            | (1 << VIRTIO_NET_F_HOST_TSO4)
            | (1 << VIRTIO_NET_F_HOST_TSO6)
            | (1 << VIRTIO_NET_F_HOST_ECN)
            | (1 << VIRTIO_NET_F_HOST_UFO)
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | (1 << VIRTIO_NET_F_STATUS);
        if self.cfg.mac.is_some() {
            f |= 1 << VIRTIO_NET_F_MAC;
        }
        if self.cfg.queue_pairs > 1 {
            // The control queue itself is handled by the frontend.
            f |= (1 << VIRTIO_NET_F_MQ) | (1 << VIRTIO_NET_F_CTRL_VQ);
        }
        f
    }

    fn acked_features(&self, features: u64) {
        let has = |b: u32| features & (1u64 << b) != 0;
        let mut off = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            off |= TUN_F_CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                off |= TUN_F_TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                off |= TUN_F_TSO6;
            }
            if has(VIRTIO_NET_F_GUEST_ECN) {
                off |= TUN_F_TSO_ECN;
            }
            if has(VIRTIO_NET_F_GUEST_UFO) {
                off |= TUN_F_UFO;
            }
        }
        if let Err(e) = self.tap.set_offload(off) {
            error!("net: TUNSETOFFLOAD {off:#x}: {e}");
        }
        let hdr = if has(VIRTIO_F_VERSION_1) || has(VIRTIO_NET_F_MRG_RXBUF) {
            12
        } else {
            10
        };
        if hdr != 12 {
            warn!("net: legacy guest without VERSION_1/MRG_RXBUF: 10-byte header unsupported, keeping 12");
        }
        self.lock().mrg_rxbuf = has(VIRTIO_NET_F_MRG_RXBUF);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn set_event_idx(&self, enabled: bool) {
        self.lock().event_idx = enabled;
    }

    fn reset_device(&self) {
        let mut inner = self.lock();
        for i in 0..inner.pairs.len() {
            inner.pairs[i].pending = None;
            inner.pairs[i].rx_armed = false;
            inner.pairs[i].tx_blocked = false;
            self.set_interest(&mut inner, i);
        }
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu.
        let mut cfg = [0u8; 12];
        cfg[..6].copy_from_slice(&self.cfg.mac.unwrap_or([0; 6]));
        cfg[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        cfg[8..10].copy_from_slice(&(self.cfg.queue_pairs as u16).to_le_bytes());
        cfg[10..12].copy_from_slice(&1500u16.to_le_bytes());
        cordon_backends::virtio::config_window(&cfg, offset, size)
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        self.lock().mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> io::Result<()> {
        if let Err(e) = self.process(device_event, vrings) {
            error!("net: queue processing failed: {e}");
        }
        Ok(())
    }
}

impl cordon_backends::Backend for NetDevice {
    fn connected(
        &self,
        workers: Vec<std::sync::Arc<dyn cordon_backends::EventRegistrar>>,
    ) -> io::Result<()> {
        let w = workers
            .first()
            .ok_or_else(|| io::Error::other("no vring worker"))?;
        w.register(self.host_event_fd(), EventSet::IN, self.host_event() as u64)
    }

    fn disconnected(&self) {
        self.reset_device();
        self.lock().mem = None;
    }

    fn relay_early_vring_enable(&self) -> bool {
        // QEMU's vhost-user-net enables the rings before it acknowledges
        // VHOST_USER_F_PROTOCOL_FEATURES (see cordon_backends::relay::Fixups).
        true
    }
}

#[cfg(test)]
mod rearm_tests {
    use super::*;
    use crate::guestq::{guest_memory, GuestQueue};

    /// Pops every posted RX chain as `deliver` does for a frame too big for them, rewinds,
    /// and returns the available index at which the pops ran out.
    fn pop_all_and_rewind(mem: &Guard, vring: &VringRwLock) -> u16 {
        let mut popped = 0;
        while vring
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(mem.clone())
            .is_some()
        {
            popped += 1;
        }
        let end = vring.get_ref().get_queue().next_avail();
        for _ in 0..popped {
            vring.get_mut().get_queue_mut().go_to_previous_position();
        }
        end
    }

    /// The guest posts buffers after `deliver` ran out of them but before the device
    /// re-arms: its kick check saw the old `avail_event`, so it sends none. The device
    /// must notice those buffers itself (retry), or the frame waits forever.
    #[test]
    fn buffers_posted_between_running_out_and_rearming_are_not_lost() {
        let (mem, bases) = guest_memory(1, 16, 256);
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let mut q = GuestQueue::new(&mem, bases[0], 16, 256);
        let vring = q.vring(&atomic);
        vring.set_queue_event_idx(true);
        let guard = atomic.memory();
        for _ in 0..4 {
            q.add(&[Err(256)]);
        }
        let end = pop_all_and_rewind(&guard, &vring);
        assert_eq!(end, 4);
        // The guest adds two more buffers now, without a kick.
        for _ in 0..2 {
            q.add(&[Err(256)]);
        }
        assert!(
            NetDevice::rearm_rx(&guard, &vring, end).unwrap(),
            "buffers posted after the device ran out must make it retry"
        );
        // Retrying sees all six; still too few for the frame: no new buffers since, so
        // no retry, and the guest is asked to kick on the very next buffer it adds.
        let end = pop_all_and_rewind(&guard, &vring);
        assert_eq!(end, 6);
        assert!(!NetDevice::rearm_rx(&guard, &vring, end).unwrap());
        assert_eq!(q.avail_event(), 6);
        assert!(q.would_kick(true, 6, 7));
        // The rewound chains are still there for the next attempt.
        assert_eq!(vring.get_ref().get_queue().next_avail(), 0);
    }
}
