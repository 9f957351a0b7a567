//! The vhost-user frontend library (used by tests, benchmarks and the VMM) and the KVM VMM.
//!
//! VMM layout: [`vmm`] builds and runs a VM (memory, vCPUs, buses, event loop), [`arch`]
//! holds the x86_64 boot state (page tables, GDT, CPUID, MSRs, zero page, MP table),
//! [`devices`] the few legacy devices the VMM emulates itself (16550 serial, i8042 reset),
//! and [`pci`] the PCI root and the virtio-pci transport whose device side is a vhost-user
//! backend.

#[deny(missing_docs)]
pub mod arch;
#[deny(missing_docs)]
pub mod devices;
#[deny(missing_docs)]
pub mod pci;
#[deny(missing_docs)]
pub mod vhost_user;
#[deny(missing_docs)]
pub mod vmm;
