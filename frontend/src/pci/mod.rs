//! PCI: the host bridge and configuration space access (ports 0xcf8/0xcfc), MSI-X through
//! KVM irq routing, and the virtio-pci transport whose device side is a vhost-user backend.
//!
//! Linux finds the bus without ACPI through the legacy configuration mechanism #1 and keeps
//! the BAR addresses the VMM assigned (inside the 32-bit MMIO hole). Devices use MSI-X only
//! (interrupt pin 0), so no INTx routing is needed.

pub mod config;
pub mod irq;
pub mod msix;
pub mod root;
pub mod vhost;
pub mod virtio;

/// A device on the PCI bus.
pub trait PciDevice: Send {
    /// Reads configuration dword `reg` (byte offset `reg * 4`).
    fn config_read(&mut self, reg: usize) -> u32;
    /// Writes `data` at byte `offset` (0-3) of configuration dword `reg`.
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]);
    /// The memory BARs currently decoded: (index, guest address, size).
    fn mem_bars(&self) -> Vec<(usize, u64, u64)>;
    /// Reads from memory BAR `bar` at `offset`.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes to memory BAR `bar` at `offset`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
}
