//! Guest memory backed by memfds, mapped shared so a vhost-user backend can map it too.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion};

use super::{io_err, Error, Result};

/// Guest memory plus the memfds behind its regions.
pub struct GuestMemfd {
    /// The mapped memory (each region is a `MAP_SHARED` mapping of its memfd).
    pub mem: GuestMemoryMmap,
}

/// Creates guest memory with one memfd per `(guest address, size)` region.
pub fn create_guest_memory(regions: &[(GuestAddress, usize)]) -> Result<GuestMemfd> {
    let mut ranges = Vec::with_capacity(regions.len());
    for (i, &(addr, size)) in regions.iter().enumerate() {
        let file = memfd(&format!("cordon-guest-{i}"), size as u64)?;
        ranges.push((addr, size, Some(FileOffset::new(file, 0))));
    }
    let mem = GuestMemoryMmap::from_ranges_with_files(ranges)
        .map_err(|e| Error::Memory(e.to_string()))?;
    Ok(GuestMemfd { mem })
}

/// Creates a sealed-size memfd of `size` bytes.
pub fn memfd(name: &str, size: u64) -> Result<File> {
    let cname = CString::new(name).map_err(|_| Error::Invalid("memfd name".into()))?;
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io_err("memfd_create")(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just returned this fd; we own it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(io_err("ftruncate memfd"))?;
    Ok(file)
}

/// Number of regions and total bytes, for logs.
pub fn describe(mem: &GuestMemoryMmap) -> (usize, u64) {
    use vm_memory::GuestMemoryBackend;
    let n = mem.num_regions();
    let total = mem.iter().map(|r| r.len()).sum();
    (n, total)
}
