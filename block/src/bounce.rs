//! A page-aligned, growable bounce buffer for O_DIRECT requests whose guest buffers are not
//! aligned. One per queue worker, grown rarely, never freed while serving.

use std::alloc::{self, Layout};

/// Alignment of the buffer.
const ALIGN: usize = 4096;

/// A heap buffer aligned to 4 KiB with a size cap.
#[derive(Debug)]
pub struct AlignedBuf {
    ptr: *mut u8,
    cap: usize,
    limit: usize,
}

// SAFETY: the buffer is plain owned heap memory, used by one thread at a time through &mut.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// An empty buffer that may grow up to `limit` bytes.
    pub fn new(limit: usize) -> Self {
        AlignedBuf {
            ptr: std::ptr::null_mut(),
            cap: 0,
            limit,
        }
    }

    /// Make room for `len` bytes; false when `len` exceeds the limit or allocation fails
    /// (the caller then uses the buffered path instead).
    pub fn ensure(&mut self, len: usize) -> bool {
        if len <= self.cap {
            return true;
        }
        if len > self.limit {
            return false;
        }
        let new_cap = len.next_power_of_two().min(self.limit).max(len);
        let Ok(layout) = Layout::from_size_align(new_cap, ALIGN) else {
            return false;
        };
        // SAFETY: layout has non-zero size (len > cap >= 0 so len >= 1).
        let p = unsafe { alloc::alloc(layout) };
        if p.is_null() {
            return false;
        }
        self.free();
        self.ptr = p;
        self.cap = new_cap;
        true
    }

    /// The first `len` bytes; `ensure(len)` must have returned true.
    pub fn as_mut_slice(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.cap, "bounce buffer too small");
        if len == 0 {
            return &mut [];
        }
        // SAFETY: ptr is a live allocation of cap >= len bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }

    fn free(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: ptr was allocated with exactly this layout in `ensure`.
            unsafe { alloc::dealloc(self.ptr, Layout::from_size_align_unchecked(self.cap, ALIGN)) };
            self.ptr = std::ptr::null_mut();
            self.cap = 0;
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        self.free();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_aligned_and_respects_limit() {
        let mut b = AlignedBuf::new(8192);
        assert!(b.ensure(100));
        assert_eq!(b.as_mut_slice(100).as_ptr() as usize % ALIGN, 0);
        assert!(b.ensure(8192));
        assert!(!b.ensure(8193));
        b.as_mut_slice(8192).fill(7);
    }
}
