//! The virtio-pci (1.x, "modern") transport. BAR 0 holds the common configuration, ISR,
//! device configuration, notification area and the MSI-X table. Queue notifications are
//! ioeventfds and interrupts are irqfds, both given straight to the vhost-user backend, so
//! the data path never goes through the VMM.

use std::sync::Arc;

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::config::{PciConfig, PciId};
use super::irq::GsiRouter;
use super::msix::{Msix, MsixError};
use super::vhost::{VhostUserBackend, VringSetup};
use super::PciDevice;
use crate::vmm::memory::GuestMem;

const BAR_SIZE: u32 = 0x8000;
const COMMON_OFF: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR_OFF: u64 = 0x1000;
const DEVICE_OFF: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
const NOTIFY_OFF: u64 = 0x3000;
const NOTIFY_MULT: u32 = 4;
const MSIX_TABLE_OFF: u64 = 0x4000;
const MSIX_PBA_OFF: u64 = 0x5000;
const QUEUE_MAX: u16 = 256;
const NO_VECTOR: u16 = 0xffff;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

const STATUS_FEATURES_OK: u8 = 8;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_NEEDS_RESET: u8 = 0x40;

#[derive(Clone, Copy)]
struct Queue {
    size: u16,
    ready: bool,
    vector: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl Default for Queue {
    fn default() -> Self {
        Self {
            size: QUEUE_MAX,
            ready: false,
            vector: NO_VECTOR,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

/// A virtio-pci function backed by a vhost-user backend.
pub struct VirtioPci {
    cfg: PciConfig,
    msix_cap: usize,
    msix: Msix,
    backend: VhostUserBackend,
    vm: Arc<VmFd>,
    mem: GuestMem,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    /// Notify addresses with a registered ioeventfd.
    ioevents: Vec<(u64, usize)>,
    dummy_call: EventFd,
    device_select: u32,
    driver_select: u32,
    driver_features: u64,
    config_vector: u16,
    status: u8,
    queue_select: u16,
    active: bool,
}

fn le(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

fn set_part(v: &mut u64, high: bool, data: u64) {
    if high {
        *v = (*v & 0xffff_ffff) | (data << 32);
    } else {
        *v = (*v & !0xffff_ffff) | (data & 0xffff_ffff);
    }
}

impl VirtioPci {
    /// A function at BAR 0 address `bar_addr`, talking to `backend`.
    pub fn new(
        backend: VhostUserBackend,
        vm: Arc<VmFd>,
        router: Arc<GsiRouter>,
        mem: GuestMem,
        bar_addr: u32,
    ) -> Result<Self, MsixError> {
        let kind = backend.kind;
        let nq = kind.num_queues();
        let mut cfg = PciConfig::new(PciId {
            vendor: 0x1af4,
            device: 0x1040 + kind.virtio_id(),
            class: kind.class(),
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        cfg.add_mem_bar(0, bar_addr, BAR_SIZE);
        let vcap = |ty: u8, off: u64, len: u64, extra: Option<u32>| {
            let mut c = vec![
                0x09,
                0,
                if extra.is_some() { 20 } else { 16 },
                ty,
                0,
                0,
                0,
                0,
            ];
            c.extend_from_slice(&(off as u32).to_le_bytes());
            c.extend_from_slice(&(len as u32).to_le_bytes());
            if let Some(x) = extra {
                c.extend_from_slice(&x.to_le_bytes());
            }
            c
        };
        cfg.add_capability(&vcap(1, COMMON_OFF, COMMON_LEN, None), &[]);
        cfg.add_capability(&vcap(3, ISR_OFF, 4, None), &[]);
        cfg.add_capability(&vcap(4, DEVICE_OFF, DEVICE_LEN, None), &[]);
        cfg.add_capability(
            &vcap(
                2,
                NOTIFY_OFF,
                nq as u64 * u64::from(NOTIFY_MULT),
                Some(NOTIFY_MULT),
            ),
            &[],
        );
        let nvec = nq as u16 + 1;
        let mut mcap = vec![0x11, 0];
        mcap.extend_from_slice(&(nvec - 1).to_le_bytes());
        mcap.extend_from_slice(&(MSIX_TABLE_OFF as u32).to_le_bytes());
        mcap.extend_from_slice(&(MSIX_PBA_OFF as u32).to_le_bytes());
        let msix_cap = cfg.add_capability(&mcap, &[]);
        let msix = Msix::new(nvec, vm.clone(), router)?;
        let mut kicks = Vec::new();
        for _ in 0..nq {
            kicks.push(
                EventFd::new(libc::EFD_NONBLOCK).map_err(|e| MsixError::Setup(e.to_string()))?,
            );
        }
        Ok(Self {
            cfg,
            msix_cap,
            msix,
            backend,
            vm,
            mem,
            queues: vec![Queue::default(); nq],
            kicks,
            ioevents: Vec::new(),
            dummy_call: EventFd::new(libc::EFD_NONBLOCK)
                .map_err(|e| MsixError::Setup(e.to_string()))?,
            device_select: 0,
            driver_select: 0,
            driver_features: 0,
            config_vector: NO_VECTOR,
            status: 0,
            queue_select: 0,
            active: false,
        })
    }

    /// BAR 0 size.
    pub const BAR_SIZE: u32 = BAR_SIZE;

    /// The backend (for status and reconnection).
    pub fn backend(&mut self) -> &mut VhostUserBackend {
        &mut self.backend
    }

    /// The device status byte the guest driver set.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Called after the backend reconnected: hand the rings over again.
    pub fn resume(&mut self) {
        if self.active {
            if let Err(e) = self.start_backend(true) {
                log::error!("{} backend: resume failed: {e}", self.backend.kind.name());
                self.backend.disconnect();
            } else {
                // Wake the backend in case the guest kicked while it was away.
                for k in &self.kicks {
                    let _ = k.write(1);
                }
            }
        }
    }

    fn start_backend(&mut self, resume: bool) -> Result<(), super::vhost::BackendError> {
        let mut rings = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            let call = self.msix.vector_evt(q.vector).unwrap_or(&self.dummy_call);
            rings.push(VringSetup {
                index: i,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                kick: &self.kicks[i],
                call,
            });
        }
        self.backend
            .activate(&self.mem, self.driver_features, &rings, resume)
    }

    fn register_ioevents(&mut self) {
        let Some((_, base, _)) = self.cfg.mem_bars().into_iter().find(|b| b.0 == 0) else {
            return;
        };
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            let addr = base + NOTIFY_OFF + i as u64 * u64::from(NOTIFY_MULT);
            match self
                .vm
                .register_ioevent(&self.kicks[i], &IoEventAddress::Mmio(addr), NoDatamatch)
            {
                Ok(()) => self.ioevents.push((addr, i)),
                Err(e) => {
                    log::warn!("queue {i}: KVM_IOEVENTFD failed ({e}); kicks go through the VMM")
                }
            }
        }
    }

    fn unregister_ioevents(&mut self) {
        for (addr, i) in self.ioevents.drain(..) {
            let _ = self.vm.unregister_ioevent(
                &self.kicks[i],
                &IoEventAddress::Mmio(addr),
                NoDatamatch,
            );
        }
    }

    fn activate(&mut self) {
        self.register_ioevents();
        match self.start_backend(false) {
            Ok(()) => {
                self.active = true;
                log::info!(
                    "{} device active (backend {})",
                    self.backend.kind.name(),
                    self.backend.socket.display()
                );
            }
            Err(e) if !self.backend.connected() => {
                // Reconnection will start it.
                self.active = true;
                log::warn!(
                    "{} device: backend away ({e}); will start on reconnect",
                    self.backend.kind.name()
                );
            }
            Err(e) => {
                log::error!(
                    "{} device: cannot start the backend: {e}",
                    self.backend.kind.name()
                );
                self.status |= STATUS_NEEDS_RESET;
                self.msix.trigger(self.config_vector);
            }
        }
    }

    fn reset(&mut self) {
        if self.active {
            let ready: Vec<usize> = (0..self.queues.len())
                .filter(|i| self.queues[*i].ready)
                .collect();
            self.backend.stop(&ready);
        }
        self.unregister_ioevents();
        self.active = false;
        self.queues = vec![Queue::default(); self.queues.len()];
        self.driver_features = 0;
        self.status = 0;
        self.config_vector = NO_VECTOR;
        self.queue_select = 0;
    }

    fn set_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let offered = self.backend.guest_features() | VIRTIO_F_VERSION_1;
            if self.driver_features & !offered != 0
                || self.driver_features & VIRTIO_F_VERSION_1 == 0
            {
                v &= !STATUS_FEATURES_OK;
            }
        }
        let was_ok = self.status & STATUS_DRIVER_OK != 0;
        self.status = v;
        if v & STATUS_DRIVER_OK != 0 && !was_ok {
            self.activate();
        }
    }

    fn queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    fn common_read(&mut self, off: u64, data: &mut [u8]) {
        let q = self.queues.get(self.queue_select as usize).copied();
        let v: u64 = match off {
            0x00 => u64::from(self.device_select),
            0x04 => {
                let f = self.backend.guest_features() | VIRTIO_F_VERSION_1;
                match self.device_select {
                    0 => f & 0xffff_ffff,
                    1 => f >> 32,
                    _ => 0,
                }
            }
            0x08 => u64::from(self.driver_select),
            0x0c => match self.driver_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.config_vector),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(self.status),
            0x15 => 0,
            0x16 => u64::from(self.queue_select),
            0x18 => q.map_or(0, |q| u64::from(q.size)),
            0x1a => q.map_or(u64::from(NO_VECTOR), |q| u64::from(q.vector)),
            0x1c => q.map_or(0, |q| u64::from(q.ready)),
            0x1e => u64::from(self.queue_select),
            0x20 => q.map_or(0, |q| q.desc),
            0x24 => q.map_or(0, |q| q.desc >> 32),
            0x28 => q.map_or(0, |q| q.avail),
            0x2c => q.map_or(0, |q| q.avail >> 32),
            0x30 => q.map_or(0, |q| q.used),
            0x34 => q.map_or(0, |q| q.used >> 32),
            _ => 0,
        };
        let b = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&b[..n]);
    }

    fn common_write(&mut self, off: u64, data: &[u8]) {
        let v = le(data);
        let active = self.status & STATUS_DRIVER_OK != 0;
        match off {
            0x00 => self.device_select = v as u32,
            0x08 => self.driver_select = v as u32,
            0x0c if self.status & STATUS_FEATURES_OK == 0 => match self.driver_select {
                0 => set_part(&mut self.driver_features, false, v),
                1 => set_part(&mut self.driver_features, true, v),
                _ => {}
            },
            0x10 => {
                self.config_vector = if (v as usize) < self.msix.len() {
                    v as u16
                } else {
                    NO_VECTOR
                }
            }
            0x14 => self.set_status(v as u8),
            0x16 => self.queue_select = v as u16,
            _ if active => log::debug!("virtio common write {off:#x} after DRIVER_OK ignored"),
            0x18 => {
                if let Some(q) = self.queue() {
                    // Power of two, at most the maximum.
                    let s = v as u16;
                    if s.is_power_of_two() && s <= QUEUE_MAX {
                        q.size = s;
                    }
                }
            }
            0x1a => {
                let nv = self.msix.len();
                if let Some(q) = self.queue() {
                    q.vector = if (v as usize) < nv {
                        v as u16
                    } else {
                        NO_VECTOR
                    };
                }
            }
            0x1c => {
                if let Some(q) = self.queue() {
                    q.ready = v & 1 == 1;
                }
            }
            0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34 => {
                let high = off & 4 != 0;
                let wide = data.len() == 8;
                if let Some(q) = self.queue() {
                    let field = match off & !4 {
                        0x20 => &mut q.desc,
                        0x28 => &mut q.avail,
                        _ => &mut q.used,
                    };
                    if wide {
                        *field = v;
                    } else {
                        set_part(field, high, v);
                    }
                }
            }
            _ => {}
        }
    }
}

impl PciDevice for VirtioPci {
    fn config_read(&mut self, reg: usize) -> u32 {
        let v = self.cfg.read_reg(reg);
        if reg == self.msix_cap / 4 {
            (v & 0xffff) | (u32::from(self.msix.control()) << 16)
        } else {
            v
        }
    }

    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        if reg == self.msix_cap / 4 && offset + data.len() == 4 && offset <= 2 {
            let ctrl = le(&data[2 - offset..]) as u16;
            self.msix.set_control(ctrl);
            return;
        }
        self.cfg.write_reg(reg, offset, data)
    }

    fn mem_bars(&self) -> Vec<(usize, u64, u64)> {
        self.cfg.mem_bars()
    }

    fn bar_read(&mut self, bar: usize, off: u64, data: &mut [u8]) {
        data.fill(0);
        if bar != 0 {
            return;
        }
        match off {
            o if o < COMMON_LEN => self.common_read(o, data),
            o if (ISR_OFF..ISR_OFF + 4).contains(&o) => {}
            o if (DEVICE_OFF..DEVICE_OFF + DEVICE_LEN).contains(&o) => {
                self.backend.read_config((o - DEVICE_OFF) as u32, data)
            }
            o if (MSIX_TABLE_OFF..MSIX_PBA_OFF).contains(&o) => {
                self.msix.table_read(o - MSIX_TABLE_OFF, data)
            }
            o if o >= MSIX_PBA_OFF => self.msix.pba_read(o - MSIX_PBA_OFF, data),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, off: u64, data: &[u8]) {
        if bar != 0 {
            return;
        }
        match off {
            o if o < COMMON_LEN => self.common_write(o, data),
            o if (DEVICE_OFF..DEVICE_OFF + DEVICE_LEN).contains(&o) => {
                self.backend.write_config((o - DEVICE_OFF) as u32, data)
            }
            o if (NOTIFY_OFF..MSIX_TABLE_OFF).contains(&o) => {
                // Reaches the VMM only if no ioeventfd is registered for it.
                let q = ((o - NOTIFY_OFF) / u64::from(NOTIFY_MULT)) as usize;
                if let Some(k) = self.kicks.get(q) {
                    let _ = k.write(1);
                }
            }
            o if (MSIX_TABLE_OFF..MSIX_PBA_OFF).contains(&o) => {
                self.msix.table_write(o - MSIX_TABLE_OFF, data)
            }
            _ => {}
        }
    }
}
