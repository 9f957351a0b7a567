//! Port-I/O and MMIO dispatch: an address range maps to one device, fixed after setup.

use std::sync::{Arc, Mutex};

/// A device reachable through a bus. `offset` is relative to the range's base.
pub trait BusDevice: Send {
    /// Guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared bus device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors while building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("bus range {0:#x}+{1:#x} overlaps an existing device")]
    Overlap(u64, u64),
}

/// A set of non-overlapping ranges, each with its device.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `dev` at `[base, base+len)`.
    pub fn insert(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).ok_or(BusError::Overlap(base, len))?;
        if len == 0 || self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return Err(BusError::Overlap(base, len));
        }
        self.ranges.push((base, len, dev));
        self.ranges.sort_by_key(|r| r.0);
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&SharedDevice, u64)> {
        let idx = self
            .ranges
            .partition_point(|r| r.0 <= addr)
            .checked_sub(1)?;
        let (base, len, dev) = &self.ranges[idx];
        let off = addr - base;
        (off.checked_add(size as u64)? <= *len).then_some((dev, off))
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff) if nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((dev, off)) => {
                lock(dev).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false if nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((dev, off)) => {
                lock(dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock (a panicking vCPU thread must not
/// take the others down with it).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        assert!(bus.insert(dev.clone(), 0x3ff, 2).is_err());
        bus.insert(dev.clone(), 0x400, 1).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fb, &mut b));
        assert_eq!(b[0], 3);
        assert!(!bus.read(0x3f0, &mut b));
        assert_eq!(b[0], 0xff);
        // A 2-byte access that straddles the end of a range is not dispatched.
        let mut w = [0u8; 2];
        assert!(!bus.read(0x3ff, &mut w));
        assert!(bus.write(0x3f9, &[7]));
        assert_eq!(lock(&dev).0, vec![(1, vec![7])]);
    }
}
