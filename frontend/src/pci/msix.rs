//! MSI-X: the vector table and pending-bit array a device exposes in a BAR, and for each
//! vector an eventfd registered as a KVM irqfd on its own GSI. A vhost-user backend
//! writes that eventfd (its vring "call" fd) and KVM injects the MSI with no VMM exit.
//!
//! Masking (per vector, or the whole function through message control) follows the PCI
//! spec: a masked vector's irqfd is detached from KVM, so the backend's signals pile up in
//! the eventfd counter instead of being injected. A read of the pending-bit array turns a
//! non-zero counter into a pending bit; unmasking re-attaches the irqfd and, if the vector
//! was pending (latched or still counted), delivers it once. MSI-X disabled counts as
//! masked.

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
/// Vector control: mask bit.
const VECTOR_MASKED: u32 = 1;

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
    /// The eventfd is attached to KVM as an irqfd (the vector is unmasked).
    attached: bool,
    /// Raised while masked (the pending bit).
    pending: bool,
}

impl Vector {
    /// Moves signals counted in the (detached) eventfd into the pending bit.
    fn collect(&mut self) {
        if !self.attached && self.evt.read().is_ok() {
            self.pending = true;
        }
    }
}

/// An MSI-X table with KVM routes.
pub struct Msix {
    entries: Vec<Entry>,
    vectors: Vec<Vector>,
    control: u16,
    vm: Arc<VmFd>,
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
    /// A table of `n` vectors, each with an eventfd and a fresh GSI of `vm`. Every vector
    /// starts masked (and MSI-X disabled), so nothing is attached to KVM yet.
    pub fn new(n: u16, vm: Arc<VmFd>, router: Arc<GsiRouter>) -> Result<Self, MsixError> {
        let mut vectors = Vec::new();
        for _ in 0..n {
            let gsi = router.allocate().ok_or(MsixError::NoGsi)?;
            let evt =
                EventFd::new(libc::EFD_NONBLOCK).map_err(|e| MsixError::Setup(e.to_string()))?;
            vectors.push(Vector {
                evt,
                gsi,
                attached: false,
                pending: false,
            });
        }
        Ok(Self {
            entries: vec![
                Entry {
                    ctrl: VECTOR_MASKED,
                    ..Default::default()
                };
                n as usize
            ],
            vectors,
            control: 0,
            vm,
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
            && self.entries[i].ctrl & VECTOR_MASKED == 0
    }

    /// Brings vector `i`'s KVM state in line with its mask state and message.
    fn update(&mut self, i: usize) {
        let e = self.entries[i];
        let active = self.active(i);
        let v = &mut self.vectors[i];
        if !active {
            if v.attached {
                if let Err(err) = self.vm.unregister_irqfd(&v.evt, v.gsi) {
                    log::warn!("MSI-X vector {i}: detaching its irqfd failed: {err}");
                }
                v.attached = false;
            }
            return;
        }
        if let Err(err) = self.router.set_msi(v.gsi, Some((e.addr, e.data))) {
            log::warn!("MSI-X vector {i}: KVM_SET_GSI_ROUTING failed: {err}");
        }
        if v.attached {
            return;
        }
        // Signals that arrived while masked: deliver them once, after attaching (KVM
        // injects on the eventfd write; a count left before attaching would not be read).
        v.collect();
        match self.vm.register_irqfd(&v.evt, v.gsi) {
            Ok(()) => v.attached = true,
            Err(err) => {
                log::warn!("MSI-X vector {i}: attaching its irqfd failed: {err}");
                return;
            }
        }
        if std::mem::take(&mut v.pending) {
            if let Err(err) = v.evt.write(1) {
                log::warn!("MSI-X vector {i}: delivering the pending interrupt: {err}");
            }
        }
    }

    fn update_all(&mut self) {
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
                3 => e.ctrl = v & VECTOR_MASKED,
                _ => {}
            }
        }
        self.update(i);
    }

    /// Reads the pending-bit array at byte `offset` within it.
    pub fn pba_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let first = (offset as usize + i) * 8;
            let mut bits = 0u8;
            for bit in 0..8 {
                if let Some(v) = self.vectors.get_mut(first + bit) {
                    v.collect();
                    bits |= u8::from(v.pending) << bit;
                }
            }
            *b = bits;
        }
    }

    /// True if vector `v`'s pending bit is set (for tests and status).
    pub fn pending(&mut self, v: u16) -> bool {
        self.vectors.get_mut(v as usize).is_some_and(|x| {
            x.collect();
            x.pending
        })
    }

    /// Raises vector `v` from the VMM (config-change interrupts); latched if masked.
    pub fn trigger(&self, v: u16) {
        if let Some(x) = self.vectors.get(v as usize) {
            if let Err(e) = x.evt.write(1) {
                log::debug!("MSI-X vector {v}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    /// A VM with an in-kernel irqchip (irqfds need one) and a 3-vector table whose vector 0
    /// is programmed and unmasked, MSI-X enabled.
    fn table() -> (Kvm, Msix) {
        let kvm = Kvm::new().expect("/dev/kvm");
        let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
        let router = Arc::new(GsiRouter::new(vm.clone()));
        let mut m = Msix::new(3, vm, router).unwrap();
        let mut entry = Vec::new();
        entry.extend_from_slice(&0xfee0_0000u32.to_le_bytes());
        entry.extend_from_slice(&0u32.to_le_bytes());
        entry.extend_from_slice(&0x41u32.to_le_bytes());
        entry.extend_from_slice(&0u32.to_le_bytes());
        m.table_write(0, &entry[..8]);
        m.table_write(8, &entry[8..]);
        m.set_control(CTRL_ENABLE);
        (kvm, m)
    }

    fn mask(m: &mut Msix, v: u64, masked: bool) {
        m.table_write(v * ENTRY_SIZE + 12, &u32::from(masked).to_le_bytes());
    }

    fn pba(m: &mut Msix) -> u8 {
        let mut b = [0u8; 1];
        m.pba_read(0, &mut b);
        b[0]
    }

    /// True if KVM consumed the vector's eventfd (the irqfd is attached and injected).
    fn delivered(m: &Msix, v: u16) -> bool {
        m.vector_evt(v).unwrap().read().is_err()
    }

    #[test]
    fn unmasked_vector_goes_straight_to_kvm() {
        let (_kvm, mut m) = table();
        m.trigger(0);
        assert!(delivered(&m, 0));
        assert_eq!(pba(&mut m), 0);
    }

    #[test]
    fn masked_vector_latches_pending_and_delivers_on_unmask() {
        let (_kvm, mut m) = table();
        mask(&mut m, 0, true);
        m.trigger(0);
        assert_eq!(pba(&mut m), 0b001, "pending bit set while masked");
        assert_eq!(pba(&mut m), 0b001, "stays set until delivered");
        // Vectors 1 and 2 were never unmasked: a signal on 2 is pending too.
        m.trigger(2);
        assert_eq!(pba(&mut m), 0b101);
        mask(&mut m, 0, false);
        assert_eq!(pba(&mut m), 0b100, "unmask clears the pending bit");
        assert!(
            delivered(&m, 0),
            "the pending interrupt was handed to KVM once"
        );
        // Still unmasked: the next signal is injected directly.
        m.trigger(0);
        assert!(delivered(&m, 0));
        assert_eq!(pba(&mut m), 0b100);
    }

    #[test]
    fn function_mask_and_disable_latch_every_vector() {
        let (_kvm, mut m) = table();
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        m.trigger(0);
        assert!(m.pending(0));
        m.set_control(CTRL_ENABLE);
        assert!(!m.pending(0));
        assert!(delivered(&m, 0));
        // MSI-X disabled counts as masked.
        m.set_control(0);
        m.trigger(0);
        assert!(m.pending(0));
        m.set_control(CTRL_ENABLE);
        assert!(!m.pending(0));
    }

    #[test]
    fn signal_counted_while_masked_without_a_pba_read_is_delivered() {
        let (_kvm, mut m) = table();
        mask(&mut m, 0, true);
        m.trigger(0);
        m.trigger(0);
        mask(&mut m, 0, false);
        assert!(delivered(&m, 0));
        assert!(!m.pending(0));
    }
}
