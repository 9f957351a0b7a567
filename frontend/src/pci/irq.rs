//! The VM's GSI routing table: the legacy PIC/IOAPIC routes KVM sets up by default, plus
//! one MSI route per MSI-X vector. KVM_SET_GSI_ROUTING replaces the whole table, so every
//! change goes through here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

use crate::vmm::bus::lock;

/// First GSI handed out for MSI routes (0-23 are the IOAPIC pins).
const FIRST_MSI_GSI: u32 = 24;
/// Last usable GSI.
const MAX_GSI: u32 = 1023;

/// Shared routing table.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

struct RouterState {
    msi: BTreeMap<u32, (u64, u32)>,
    next: u32,
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

impl GsiRouter {
    /// A router for `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            state: Mutex::new(RouterState {
                msi: BTreeMap::new(),
                next: FIRST_MSI_GSI,
            }),
        }
    }

    /// Reserves a GSI for an MSI vector.
    pub fn allocate(&self) -> Option<u32> {
        let mut s = lock(&self.state);
        (s.next <= MAX_GSI).then(|| {
            s.next += 1;
            s.next - 1
        })
    }

    /// Routes `gsi` to the MSI (`addr`, `data`), or removes its route (`None`), and
    /// commits the table to KVM.
    pub fn set_msi(&self, gsi: u32, msi: Option<(u64, u32)>) -> Result<(), kvm_ioctls::Error> {
        let mut s = lock(&self.state);
        match msi {
            Some(m) => {
                if s.msi.get(&gsi) == Some(&m) {
                    return Ok(());
                }
                s.msi.insert(gsi, m);
            }
            None => {
                if s.msi.remove(&gsi).is_none() {
                    return Ok(());
                }
            }
        }
        let mut entries = Vec::new();
        for gsi in 0..24u32 {
            if gsi < 16 {
                let chip = if gsi < 8 {
                    KVM_IRQCHIP_PIC_MASTER
                } else {
                    KVM_IRQCHIP_PIC_SLAVE
                };
                entries.push(irqchip(gsi, chip, gsi % 8));
            }
            entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        }
        for (gsi, (addr, data)) in &s.msi {
            let mut e = kvm_irq_routing_entry {
                gsi: *gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = *addr as u32;
            e.u.msi.address_hi = (*addr >> 32) as u32;
            e.u.msi.data = *data;
            entries.push(e);
        }
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|_| kvm_ioctls::Error::new(libc::E2BIG))?;
        self.vm.set_gsi_routing(&table)
    }
}
