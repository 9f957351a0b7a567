//! First-fit allocator of page ranges inside the device's shared memory region.

use std::collections::BTreeMap;

use crate::protocol::PAGE_SIZE;

/// Ranges of the shared memory region in use (offset -> length, page aligned).
#[derive(Debug)]
pub struct ShmAlloc {
    size: u64,
    used: BTreeMap<u64, u64>,
}

impl ShmAlloc {
    /// An empty region of `size` bytes.
    pub fn new(size: u64) -> ShmAlloc {
        ShmAlloc {
            size,
            used: BTreeMap::new(),
        }
    }

    /// Reserves `len` bytes (rounded up to pages); returns the offset.
    pub fn alloc(&mut self, len: u64) -> Option<u64> {
        let len = len.checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
        if len == 0 {
            return None;
        }
        let mut start = 0u64;
        for (&off, &l) in &self.used {
            if off - start >= len {
                break;
            }
            start = off + l;
        }
        if start.checked_add(len)? > self.size {
            return None;
        }
        self.used.insert(start, len);
        Some(start)
    }

    /// Releases the range starting at `offset`.
    pub fn free(&mut self, offset: u64) {
        self.used.remove(&offset);
    }

    /// Frees everything.
    pub fn clear(&mut self) {
        self.used.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit() {
        let mut a = ShmAlloc::new(4 * PAGE_SIZE);
        assert_eq!(a.alloc(1), Some(0));
        assert_eq!(a.alloc(PAGE_SIZE + 1), Some(PAGE_SIZE));
        assert_eq!(a.alloc(PAGE_SIZE * 2), None);
        assert_eq!(a.alloc(1), Some(3 * PAGE_SIZE));
        a.free(PAGE_SIZE);
        assert_eq!(a.alloc(2 * PAGE_SIZE), Some(PAGE_SIZE));
        assert_eq!(a.alloc(0), None);
        assert_eq!(a.alloc(u64::MAX), None);
    }
}
