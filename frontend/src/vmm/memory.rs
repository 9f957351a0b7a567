//! Guest memory: one memfd, mapped shared, so vhost-user backends can map the same pages.
//!
//! x86_64 layout: RAM from 0 up to [`MMIO_HOLE_START`] (3 GiB), then the 32-bit MMIO hole
//! (PCI BARs, IOAPIC, LAPIC), then the rest of RAM from 4 GiB up.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

/// The guest memory type used everywhere in the VMM.
pub type GuestMem = GuestMemoryMmap<()>;

/// Start of the 32-bit MMIO hole (no RAM between this and 4 GiB).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First address above the MMIO hole.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// Smallest guest memory `cordon run` accepts, in MiB.
pub const MIN_MEM_MIB: u64 = 32;
/// Largest guest memory `cordon run` accepts, in MiB (1 TiB).
pub const MAX_MEM_MIB: u64 = 1 << 20;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is out of range.
    #[error("--mem {0} MiB is out of range (accepted: {MIN_MEM_MIB}..={MAX_MEM_MIB} MiB)")]
    Size(u64),
    /// memfd_create or ftruncate failed.
    #[error("cannot create the guest memory file: {0}")]
    Memfd(std::io::Error),
    /// Mapping the memory failed.
    #[error("cannot map guest memory: {0}")]
    Map(String),
}

/// The RAM ranges (guest address, size) for `size` bytes of guest memory.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(HIGH_RAM_START), size - MMIO_HOLE_START),
        ]
    }
}

/// Creates `mib` MiB of guest memory backed by one memfd (shared mapping).
pub fn create_guest_memory(mib: u64) -> Result<GuestMem, MemoryError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mib) {
        return Err(MemoryError::Size(mib));
    }
    let size = mib << 20;
    let name = CString::new("cordon-guest-ram").map_err(|e| MemoryError::Map(e.to_string()))?;
    // SAFETY: name is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(MemoryError::Memfd)?;
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(size) {
        let file = file.try_clone().map_err(MemoryError::Memfd)?;
        regions.push((addr, len as usize, Some(FileOffset::new(file, offset))));
        offset += len;
    }
    GuestMemoryMmap::from_ranges_with_files(regions).map_err(|e| MemoryError::Map(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn small_memory_is_one_memfd_region() {
        let mem = create_guest_memory(64).unwrap();
        assert_eq!(mem.num_regions(), 1);
        let r = mem.iter().next().unwrap();
        assert!(r.file_offset().is_some(), "memory must be file backed");
        mem.write_obj(0xdead_beefu32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
    }

    #[test]
    fn ranges_skip_the_mmio_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(
            r[1],
            (GuestAddress(HIGH_RAM_START), (4 << 30) - MMIO_HOLE_START)
        );
    }

    #[test]
    fn too_little_memory_is_refused() {
        let e = create_guest_memory(1).unwrap_err().to_string();
        assert!(e.contains("--mem 1 MiB"), "{e}");
    }
}
