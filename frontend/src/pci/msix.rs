//! MSI-X: the vector table and pending-bit array a device exposes in a BAR, and for each
//! vector an eventfd registered as a KVM irqfd on its own GSI. A vhost-user backend
//! writes that eventfd (its vring "call" fd) and KVM injects the MSI with no VMM exit.

use std::sync::Arc;

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::irq::GsiRouter;

/// Size of one table entry.
const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
pub const CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;

#[derive(Clone, Copy, Default)]
struct Entry {
    addr: u64,
    data: u32,
    ctrl: u32,
}

/// One vector's interrupt path.
pub struct Vector {
    /// The eventfd the backend (or the VMM) writes to raise this vector.
    pub evt: EventFd,
    gsi: u32,
}

/// An MSI-X table with KVM routes.
pub struct Msix {
    entries: Vec<Entry>,
    vectors: Vec<Vector>,
    control: u16,
    router: Arc<GsiRouter>,
}

/// Errors while setting MSI-X up.
#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    /// No GSI left.
    #[error("out of GSIs for MSI-X vectors")]
    NoGsi,
    /// eventfd or KVM_IRQFD failed.
    #[error("MSI-X vector setup: {0}")]
    Setup(String),
}

impl Msix {
    /// A table of `n` vectors, each with an irqfd on a fresh GSI of `vm`.
    pub fn new(n: u16, vm: &VmFd, router: Arc<GsiRouter>) -> Result<Self, MsixError> {
        let mut vectors = Vec::new();
        for _ in 0..n {
            let gsi = router.allocate().ok_or(MsixError::NoGsi)?;
            let evt =
                EventFd::new(libc::EFD_NONBLOCK).map_err(|e| MsixError::Setup(e.to_string()))?;
            vm.register_irqfd(&evt, gsi)
                .map_err(|e| MsixError::Setup(format!("KVM_IRQFD: {e}")))?;
            vectors.push(Vector { evt, gsi });
        }
        Ok(Self {
            entries: vec![
                Entry {
                    ctrl: 1,
                    ..Default::default()
                };
                n as usize
            ],
            vectors,
            control: 0,
            router,
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// True if there are no vectors.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The eventfd of vector `v`, if it exists.
    pub fn vector_evt(&self, v: u16) -> Option<&EventFd> {
        self.vectors.get(v as usize).map(|x| &x.evt)
    }

    /// Message control as the capability shows it (table size in bits 10:0).
    pub fn control(&self) -> u16 {
        self.control | (self.vectors.len() as u16).saturating_sub(1)
    }

    /// The guest wrote message control (only enable and function mask are writable).
    pub fn set_control(&mut self, v: u16) {
        let nv = v & (CTRL_ENABLE | CTRL_FUNCTION_MASK);
        if nv != self.control {
            self.control = nv;
            self.update_all();
        }
    }

    fn active(&self, i: usize) -> bool {
        self.control & CTRL_ENABLE != 0
            && self.control & CTRL_FUNCTION_MASK == 0
            && self.entries[i].ctrl & 1 == 0
    }

    fn update(&self, i: usize) {
        let e = self.entries[i];
        let route = self.active(i).then_some((e.addr, e.data));
        if let Err(err) = self.router.set_msi(self.vectors[i].gsi, route) {
            log::warn!("MSI-X vector {i}: KVM_SET_GSI_ROUTING failed: {err}");
        }
    }

    fn update_all(&self) {
        for i in 0..self.entries.len() {
            self.update(i);
        }
    }

    /// Reads the table (at `offset` within it).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let i = (offset / ENTRY_SIZE) as usize;
        let Some(e) = self.entries.get(i) else { return };
        if data.len() != 4 && data.len() != 8 {
            return;
        }
        let words = [e.addr as u32, (e.addr >> 32) as u32, e.data, e.ctrl];
        let w = ((offset % ENTRY_SIZE) / 4) as usize;
        let mut bytes = words[w].to_le_bytes().to_vec();
        if data.len() == 8 {
            bytes.extend_from_slice(&words.get(w + 1).copied().unwrap_or(0).to_le_bytes());
        }
        data.copy_from_slice(&bytes[..data.len()]);
    }

    /// Writes the table (at `offset` within it).
    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let i = (offset / ENTRY_SIZE) as usize;
        if i >= self.entries.len() || (data.len() != 4 && data.len() != 8) {
            return;
        }
        let w = ((offset % ENTRY_SIZE) / 4) as usize;
        let mut vals = vec![u32::from_le_bytes([data[0], data[1], data[2], data[3]])];
        if data.len() == 8 {
            vals.push(u32::from_le_bytes([data[4], data[5], data[6], data[7]]));
        }
        for (k, v) in vals.into_iter().enumerate() {
            let e = &mut self.entries[i];
            match w + k {
                0 => e.addr = (e.addr & !0xffff_ffff) | u64::from(v),
                1 => e.addr = (e.addr & 0xffff_ffff) | (u64::from(v) << 32),
                2 => e.data = v,
                3 => e.ctrl = v & 1,
                _ => {}
            }
        }
        self.update(i);
    }

    /// Reads the pending-bit array (nothing is ever held pending: masked vectors drop).
    pub fn pba_read(&self, data: &mut [u8]) {
        data.fill(0);
    }

    /// Raises vector `v` from the VMM (config-change interrupts).
    pub fn trigger(&self, v: u16) {
        if let Some(x) = self.vectors.get(v as usize) {
            if let Err(e) = x.evt.write(1) {
                log::debug!("MSI-X vector {v}: {e}");
            }
        }
    }
}
