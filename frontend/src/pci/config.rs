//! A type-0 PCI configuration space: 256 bytes, per-bit write masks, memory BARs with
//! size probing, and a capability list.

/// Command register bit: memory space decoding enabled.
pub const CMD_MEMORY: u16 = 1 << 1;
/// Status register bit: capability list present.
const STATUS_CAP_LIST: u16 = 1 << 4;
const CAP_START: usize = 0x40;

/// Identity of a PCI function.
#[derive(Clone, Copy, Debug)]
pub struct PciId {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (class, subclass, prog-if), e.g. 0x060000 for a host bridge.
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// Configuration space state.
#[derive(Clone)]
pub struct PciConfig {
    bytes: [u8; 256],
    wmask: [u8; 256],
    bar_sizes: [u64; 6],
    next_cap: usize,
    last_cap: Option<usize>,
}

impl PciConfig {
    /// A function with `id`, no BARs and no capabilities.
    pub fn new(id: PciId) -> Self {
        let mut c = Self {
            bytes: [0; 256],
            wmask: [0; 256],
            bar_sizes: [0; 6],
            next_cap: CAP_START,
            last_cap: None,
        };
        c.put16(0x00, id.vendor);
        c.put16(0x02, id.device);
        c.bytes[0x08] = id.revision;
        c.bytes[0x09] = id.class as u8;
        c.bytes[0x0a] = (id.class >> 8) as u8;
        c.bytes[0x0b] = (id.class >> 16) as u8;
        c.put16(0x2c, id.subsystem_vendor);
        c.put16(0x2e, id.subsystem);
        // Command: I/O, memory, bus master, INTx disable are writable.
        c.wmask[0x04] = 0x07;
        c.wmask[0x05] = 0x04;
        // Interrupt line is scratch for the OS.
        c.wmask[0x3c] = 0xff;
        c
    }

    fn put16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Adds a 32-bit memory BAR `index` of `size` bytes (a power of two, >= 16) at `addr`.
    pub fn add_mem_bar(&mut self, index: usize, addr: u32, size: u32) {
        let off = 0x10 + index * 4;
        self.bar_sizes[index] = u64::from(size);
        self.put32(off, addr & !(size - 1));
        let mask = !(size - 1) & !0xf;
        self.wmask[off..off + 4].copy_from_slice(&mask.to_le_bytes());
    }

    /// Appends a capability (`body` starts with the ID byte; byte 1, the next pointer, is
    /// filled in). `writable` gives per-byte write masks for `body`. Returns its offset.
    pub fn add_capability(&mut self, body: &[u8], writable: &[u8]) -> usize {
        let off = self.next_cap;
        self.bytes[off..off + body.len()].copy_from_slice(body);
        self.bytes[off + 1] = 0;
        for (i, m) in writable.iter().enumerate() {
            self.wmask[off + i] = *m;
        }
        match self.last_cap {
            None => {
                self.bytes[0x34] = off as u8;
                let st = u16::from_le_bytes([self.bytes[6], self.bytes[7]]) | STATUS_CAP_LIST;
                self.put16(0x06, st);
            }
            Some(prev) => self.bytes[prev + 1] = off as u8,
        }
        self.last_cap = Some(off);
        self.next_cap = (off + body.len() + 3) & !3;
        off
    }

    /// Reads dword `reg`.
    pub fn read_reg(&self, reg: usize) -> u32 {
        match reg {
            0..=63 => {
                let o = reg * 4;
                u32::from_le_bytes([
                    self.bytes[o],
                    self.bytes[o + 1],
                    self.bytes[o + 2],
                    self.bytes[o + 3],
                ])
            }
            _ => 0,
        }
    }

    /// Writes `data` at byte `offset` of dword `reg`, honouring the write masks.
    pub fn write_reg(&mut self, reg: usize, offset: usize, data: &[u8]) {
        let start = reg * 4 + offset;
        if reg >= 64 || offset + data.len() > 4 {
            return;
        }
        for (i, v) in data.iter().enumerate() {
            let o = start + i;
            let m = self.wmask[o];
            self.bytes[o] = (self.bytes[o] & !m) | (v & m);
        }
    }

    /// A byte of configuration space.
    pub fn byte(&self, off: usize) -> u8 {
        self.bytes.get(off).copied().unwrap_or(0)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[4], self.bytes[5]])
    }

    /// Memory BARs currently decoded (decoding enabled, address assigned, not being sized).
    pub fn mem_bars(&self) -> Vec<(usize, u64, u64)> {
        if self.command() & CMD_MEMORY == 0 {
            return Vec::new();
        }
        let mut v = Vec::new();
        for (i, size) in self.bar_sizes.iter().enumerate() {
            if *size == 0 {
                continue;
            }
            let addr = u64::from(self.read_reg(4 + i) & !0xf);
            if addr != 0 && addr.checked_add(*size).is_some_and(|e| e <= 1 << 32) {
                v.push((i, addr, *size));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PciId {
        PciId {
            vendor: 0x1af4,
            device: 0x1044,
            class: 0xff0000,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    #[test]
    fn bar_sizing_returns_size_mask() {
        let mut c = PciConfig::new(id());
        c.add_mem_bar(0, 0xc000_0000, 0x8000);
        c.write_reg(4, 0, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(c.read_reg(4), 0xffff_8000);
        c.write_reg(4, 0, &0xc001_0000u32.to_le_bytes());
        assert_eq!(c.read_reg(4), 0xc001_0000);
        assert!(c.mem_bars().is_empty(), "decoding is off");
        c.write_reg(1, 0, &[CMD_MEMORY as u8]);
        assert_eq!(c.mem_bars(), vec![(0, 0xc001_0000, 0x8000)]);
    }

    #[test]
    fn identity_is_read_only_and_caps_chain() {
        let mut c = PciConfig::new(id());
        c.write_reg(0, 0, &[0, 0, 0, 0]);
        assert_eq!(c.read_reg(0), 0x1044_1af4);
        let a = c.add_capability(&[0x09, 0, 16, 1], &[]);
        let b = c.add_capability(&[0x11, 0, 0, 0], &[0, 0, 0, 0xc0]);
        assert_eq!(c.byte(0x34) as usize, a);
        assert_eq!(c.byte(a + 1) as usize, b);
        assert_ne!(c.read_reg(1) & (1 << 20), 0, "capability list bit");
        c.write_reg(b / 4, 3, &[0xff]);
        assert_eq!(c.byte(b + 3), 0xc0);
    }
}
