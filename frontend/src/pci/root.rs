//! The PCI root: bus 0 with a host bridge at 00:00.0, configuration mechanism #1 on ports
//! 0xcf8 (address) and 0xcfc-0xcff (data), and dispatch of MMIO to device BARs.

use std::sync::{Arc, Mutex};

use super::config::{PciConfig, PciId};
use super::PciDevice;
use crate::vmm::bus::{lock, BusDevice};

/// Configuration address port.
pub const CONFIG_PORT: u64 = 0xcf8;
/// Ports covered (address and data).
pub const CONFIG_PORT_LEN: u64 = 8;
/// Devices per bus.
pub const MAX_DEVICES: usize = 32;

/// A shared PCI device.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

struct HostBridge(PciConfig);

impl PciDevice for HostBridge {
    fn config_read(&mut self, reg: usize) -> u32 {
        self.0.read_reg(reg)
    }
    fn config_write(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.0.write_reg(reg, offset, data)
    }
    fn mem_bars(&self) -> Vec<(usize, u64, u64)> {
        Vec::new()
    }
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0xff)
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

/// Bus 0.
pub struct PciRoot {
    address: Mutex<u32>,
    devices: Mutex<Vec<SharedPciDevice>>,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// A bus with only the host bridge.
    pub fn new() -> Self {
        let bridge = HostBridge(PciConfig::new(PciId {
            vendor: 0x1b36, // Red Hat, Inc. (QEMU's generic host bridge ID)
            device: 0x0008,
            class: 0x06_00_00,
            revision: 0,
            subsystem_vendor: 0x1b36,
            subsystem: 0x0008,
        }));
        let devices: Vec<SharedPciDevice> = vec![Arc::new(Mutex::new(bridge))];
        Self {
            address: Mutex::new(0),
            devices: Mutex::new(devices),
        }
    }

    /// Plugs `dev` into the next free slot; returns the slot, or `None` if the bus is full.
    pub fn add(&self, dev: SharedPciDevice) -> Option<usize> {
        let mut d = lock(&self.devices);
        if d.len() >= MAX_DEVICES {
            return None;
        }
        d.push(dev);
        Some(d.len() - 1)
    }

    /// Next slot [`add`](Self::add) would use.
    pub fn next_slot(&self) -> usize {
        lock(&self.devices).len()
    }

    fn target(&self, addr: u32) -> Option<(SharedPciDevice, usize)> {
        if addr & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (addr >> 16) & 0xff;
        let dev = ((addr >> 11) & 0x1f) as usize;
        let func = (addr >> 8) & 0x7;
        let reg = ((addr >> 2) & 0x3f) as usize;
        if bus != 0 || func != 0 {
            return None;
        }
        lock(&self.devices).get(dev).map(|d| (d.clone(), reg))
    }

    fn config_read(&self, offset: u64, data: &mut [u8]) {
        if offset < 4 {
            if data.len() == 4 && offset == 0 {
                data.copy_from_slice(&lock(&self.address).to_le_bytes());
            } else {
                data.fill(0xff);
            }
            return;
        }
        let addr = *lock(&self.address);
        let v = match self.target(addr) {
            Some((d, reg)) => lock(&d).config_read(reg),
            None => 0xffff_ffff,
        };
        let b = v.to_le_bytes();
        let start = (offset - 4) as usize;
        for (i, out) in data.iter_mut().enumerate() {
            *out = b.get(start + i).copied().unwrap_or(0xff);
        }
    }

    fn config_write(&self, offset: u64, data: &[u8]) {
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                *lock(&self.address) = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            return;
        }
        let start = (offset - 4) as usize;
        if start + data.len() > 4 {
            return;
        }
        let addr = *lock(&self.address);
        if let Some((d, reg)) = self.target(addr) {
            lock(&d).config_write(reg, start, data);
        }
    }

    fn find_bar(&self, addr: u64, len: usize) -> Option<(SharedPciDevice, usize, u64)> {
        let devices = lock(&self.devices).clone();
        for d in devices {
            let bars = lock(&d).mem_bars();
            for (i, base, size) in bars {
                if addr >= base && addr + len as u64 <= base + size {
                    return Some((d, i, addr - base));
                }
            }
        }
        None
    }
}

/// Ports 0xcf8-0xcff of a [`PciRoot`].
pub struct PciConfigPorts(pub Arc<PciRoot>);

impl BusDevice for PciConfigPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.config_read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.config_write(offset, data)
    }
}

/// The MMIO window of a [`PciRoot`], starting at guest address `.1`.
pub struct PciMmioWindow(pub Arc<PciRoot>, pub u64);

impl BusDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.0.find_bar(self.1 + offset, data.len()) {
            Some((d, bar, off)) => lock(&d).bar_read(bar, off, data),
            None => data.fill(0xff),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((d, bar, off)) = self.0.find_bar(self.1 + offset, data.len()) {
            lock(&d).bar_write(bar, off, data)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_read(root: &PciRoot, dev: u32, reg: u32) -> u32 {
        root.config_write(0, &(0x8000_0000 | (dev << 11) | (reg << 2)).to_le_bytes());
        let mut b = [0u8; 4];
        root.config_read(4, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn host_bridge_is_visible_and_empty_slots_read_ones() {
        let root = PciRoot::new();
        assert_eq!(cfg_read(&root, 0, 0), 0x0008_1b36);
        assert_eq!(cfg_read(&root, 0, 2) >> 8, 0x06_00_00);
        assert_eq!(cfg_read(&root, 5, 0), 0xffff_ffff);
        // The address register reads back (Linux's conf1 probe checks this).
        root.config_write(0, &0x8000_0000u32.to_le_bytes());
        let mut b = [0u8; 4];
        root.config_read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x8000_0000);
    }
}
