//! The raw disk image: opening and locking it, and vectored I/O at byte offsets.
//!
//! All operations work on `iovec` arrays that point straight into guest memory (no copies)
//! except in O_DIRECT mode when a buffer is misaligned: then an aligned bounce buffer owned by
//! the calling queue worker is used.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::bounce::AlignedBuf;
use crate::defs::SECTOR_SIZE;

/// Alignment (memory address, file offset and length) required for O_DIRECT I/O.
pub const DIRECT_ALIGN: usize = 512;
/// Most iovecs a single preadv/pwritev accepts (Linux UIO_MAXIOV).
pub const IOV_MAX: usize = 1024;

/// Errors opening a disk image.
#[derive(Debug, Error)]
pub enum DiskError {
    /// open(2) failed.
    #[error("cannot open image {path}: {cause}")]
    Open {
        /// Image path.
        path: PathBuf,
        /// Cause.
        cause: io::Error,
    },
    /// Another process holds a conflicting lock.
    #[error("image {path} is in use: another process holds a conflicting lock (a writable block device needs the image for itself; read-only users share it)")]
    Locked {
        /// Image path.
        path: PathBuf,
    },
    /// flock(2) failed for another reason.
    #[error("cannot lock image {path}: {cause}")]
    Lock {
        /// Image path.
        path: PathBuf,
        /// Cause.
        cause: io::Error,
    },
    /// The size could not be read.
    #[error("cannot get the size of image {path}: {cause}")]
    Size {
        /// Image path.
        path: PathBuf,
        /// Cause.
        cause: io::Error,
    },
}

/// An open, locked raw image.
#[derive(Debug)]
pub struct DiskImage {
    /// The main fd (O_DIRECT when `direct`).
    file: File,
    /// A buffered fd on the same file, used for requests O_DIRECT cannot express (unaligned
    /// offsets or lengths). Present only in direct mode.
    buffered: Option<File>,
    size: u64,
    read_only: bool,
}

/// Zeroes for write-zeroes fallbacks (page aligned so it also works with O_DIRECT).
#[repr(C, align(4096))]
struct ZeroPage([u8; 65536]);
static ZEROES: ZeroPage = ZeroPage([0u8; 65536]);

impl DiskImage {
    /// Open `path`, lock it (exclusive when writable, shared when read-only, never blocking)
    /// and read its size.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Self, DiskError> {
        let open = |direct: bool| {
            let mut oo = OpenOptions::new();
            oo.read(true).write(!read_only);
            let mut flags = libc::O_CLOEXEC;
            if direct {
                flags |= libc::O_DIRECT;
            }
            oo.custom_flags(flags);
            oo.open(path).map_err(|cause| DiskError::Open {
                path: path.to_path_buf(),
                cause,
            })
        };
        let file = open(direct)?;
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on an fd we own; no memory is passed.
        let ret = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if ret != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                DiskError::Locked {
                    path: path.to_path_buf(),
                }
            } else {
                DiskError::Lock {
                    path: path.to_path_buf(),
                    cause: e,
                }
            });
        }
        let buffered = if direct { Some(open(false)?) } else { None };
        let size = file_size(&file).map_err(|cause| DiskError::Size {
            path: path.to_path_buf(),
            cause,
        })?;
        Ok(DiskImage {
            file,
            buffered,
            size,
            read_only,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whole 512-byte sectors in the image (the device capacity).
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether the main fd uses O_DIRECT.
    pub fn direct(&self) -> bool {
        self.buffered.is_some()
    }

    /// The main fd (for callers that must keep it open across a jail or fork).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Read `len` bytes at `offset` into `iov` (guest memory). `len` must be the iovec total.
    pub fn read_vectored(
        &self,
        iov: &mut [libc::iovec],
        offset: u64,
        len: usize,
        bounce: &mut AlignedBuf,
    ) -> io::Result<()> {
        if let Some(buffered) = &self.buffered {
            if !direct_ok(offset, len) {
                return preadv_all(buffered, iov, offset);
            }
            if !iov_aligned(iov) {
                if !bounce.ensure(len) {
                    return preadv_all(buffered, iov, offset);
                }
                let buf = bounce.as_mut_slice(len);
                pread_all(&self.file, buf, offset)?;
                scatter(buf, iov);
                return Ok(());
            }
        }
        preadv_all(&self.file, iov, offset)
    }

    /// Try to read `len` bytes at `offset` into `iov` without blocking (`preadv2` with
    /// `RWF_NOWAIT`: served only if the data is in the host page cache). True when the whole
    /// range was read; false when the read would block, was short, or cannot be tried (O_DIRECT
    /// image, too many iovecs): the caller then does a blocking read, typically on an I/O
    /// thread. Errors other than "would block" are returned.
    pub fn read_nowait(&self, iov: &[libc::iovec], offset: u64, len: usize) -> io::Result<bool> {
        if self.buffered.is_some() || iov.is_empty() || iov.len() > IOV_MAX {
            return Ok(false);
        }
        loop {
            // SAFETY: `iov` holds `iov.len()` valid iovecs, each describing mapped guest memory
            // that the caller keeps mapped (it holds the memory guard) for the call.
            let n = unsafe {
                libc::preadv2(
                    self.file.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                    offset as i64,
                    libc::RWF_NOWAIT,
                )
            };
            if n >= 0 {
                return Ok(n as usize == len);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => {
                    return Ok(false)
                }
                _ => return Err(e),
            }
        }
    }

    /// Write the `len` bytes of `iov` (guest memory) at `offset`.
    pub fn write_vectored(
        &self,
        iov: &mut [libc::iovec],
        offset: u64,
        len: usize,
        bounce: &mut AlignedBuf,
    ) -> io::Result<()> {
        if let Some(buffered) = &self.buffered {
            if !direct_ok(offset, len) {
                return pwritev_all(buffered, iov, offset);
            }
            if !iov_aligned(iov) {
                if !bounce.ensure(len) {
                    return pwritev_all(buffered, iov, offset);
                }
                let buf = bounce.as_mut_slice(len);
                gather(iov, buf);
                return pwrite_all(&self.file, buf, offset);
            }
        }
        pwritev_all(&self.file, iov, offset)
    }

    /// fdatasync the image.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocate `[offset, offset+len)`; reads of the range return zeroes afterwards.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, mode, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => self.write_zeroes(offset, len),
            r => r,
        }
    }

    /// Make `[offset, offset+len)` read as zeroes, keeping it allocated when possible.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        match fallocate(&self.file, mode, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // Block devices and some filesystems: write zeroes by hand.
                let f = self.buffered.as_ref().unwrap_or(&self.file);
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(ZEROES.0.len() as u64) as usize;
                    pwrite_all(f, &ZEROES.0[..n], offset + done)?;
                    done += n as u64;
                }
                Ok(())
            }
            r => r,
        }
    }
}

fn direct_ok(offset: u64, len: usize) -> bool {
    offset.is_multiple_of(DIRECT_ALIGN as u64) && len.is_multiple_of(DIRECT_ALIGN)
}

fn iov_aligned(iov: &[libc::iovec]) -> bool {
    iov.iter().all(|v| {
        (v.iov_base as usize).is_multiple_of(DIRECT_ALIGN) && v.iov_len.is_multiple_of(DIRECT_ALIGN)
    })
}

fn scatter(mut src: &[u8], iov: &[libc::iovec]) {
    for v in iov {
        let n = v.iov_len.min(src.len());
        // SAFETY: each iovec points to `iov_len` bytes of mapped guest memory that stays mapped
        // for the duration of the request (the caller holds the memory guard).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), v.iov_base as *mut u8, n) };
        src = &src[n..];
    }
}

fn gather(iov: &[libc::iovec], mut dst: &mut [u8]) {
    for v in iov {
        let n = v.iov_len.min(dst.len());
        // SAFETY: as in `scatter`; `dst` is a distinct host buffer of at least `n` bytes.
        unsafe { std::ptr::copy_nonoverlapping(v.iov_base as *const u8, dst.as_mut_ptr(), n) };
        dst = &mut dst[n..];
    }
}

fn file_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 to the pointer we pass, which is valid.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(size)
    } else {
        Ok(meta.len())
    }
}

/// `_IOR(0x12, 114, size_t)`
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: fallocate on an fd we own; no memory is passed.
        let ret = unsafe { libc::fallocate64(file.as_raw_fd(), mode, offset as i64, len as i64) };
        if ret == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Drop `n` transferred bytes from the front of `iov[*idx..]`.
fn advance(iov: &mut [libc::iovec], idx: &mut usize, mut n: usize) {
    while n > 0 && *idx < iov.len() {
        let v = &mut iov[*idx];
        if n >= v.iov_len {
            n -= v.iov_len;
            *idx += 1;
        } else {
            // SAFETY: n < iov_len, so the new base stays inside the same buffer.
            v.iov_base = unsafe { (v.iov_base as *mut u8).add(n) } as *mut libc::c_void;
            v.iov_len -= n;
            n = 0;
        }
    }
    while *idx < iov.len() && iov[*idx].iov_len == 0 {
        *idx += 1;
    }
}

fn preadv_all(file: &File, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
    rw_all(file, iov, offset, false)
}

fn pwritev_all(file: &File, iov: &mut [libc::iovec], offset: u64) -> io::Result<()> {
    rw_all(file, iov, offset, true)
}

fn rw_all(file: &File, iov: &mut [libc::iovec], mut offset: u64, write: bool) -> io::Result<()> {
    let mut idx = 0;
    advance(iov, &mut idx, 0);
    while idx < iov.len() {
        let cnt = (iov.len() - idx).min(IOV_MAX) as libc::c_int;
        let ptr = iov[idx..].as_ptr();
        // SAFETY: `ptr` points to `cnt` valid iovecs, each describing mapped memory (guest
        // memory held by the caller's guard, or a host buffer) of the given length.
        let n = unsafe {
            if write {
                libc::pwritev64(file.as_raw_fd(), ptr, cnt, offset as i64)
            } else {
                libc::preadv64(file.as_raw_fd(), ptr, cnt, offset as i64)
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        offset += n as u64;
        advance(iov, &mut idx, n as usize);
    }
    Ok(())
}

fn pread_all(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }];
    preadv_all(file, &mut iov, offset)
}

fn pwrite_all(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut iov = [libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    }];
    pwritev_all(file, &mut iov, offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn image(len: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&vec![0xabu8; len]).unwrap();
        f
    }

    #[test]
    fn writable_lock_is_exclusive_and_ro_is_shared() {
        let img = image(4096);
        let a = DiskImage::open(img.path(), false, false).unwrap();
        let e = DiskImage::open(img.path(), false, false).unwrap_err();
        assert!(matches!(e, DiskError::Locked { .. }), "{e}");
        let e = DiskImage::open(img.path(), true, false).unwrap_err();
        assert!(matches!(e, DiskError::Locked { .. }), "{e}");
        drop(a);
        let r1 = DiskImage::open(img.path(), true, false).unwrap();
        let _r2 = DiskImage::open(img.path(), true, false).unwrap();
        assert!(DiskImage::open(img.path(), false, false).is_err());
        assert_eq!(r1.sectors(), 8);
    }

    #[test]
    fn vectored_roundtrip_direct_and_buffered() {
        for direct in [false, true] {
            let img = image(1 << 20);
            let d = DiskImage::open(img.path(), false, direct).unwrap();
            let mut bounce = AlignedBuf::new(1 << 16);
            // Deliberately misaligned memory to exercise the bounce path.
            let mut src = vec![0u8; 4096 + 1];
            for (i, b) in src.iter_mut().enumerate() {
                *b = i as u8;
            }
            let mut iov = [libc::iovec {
                iov_base: src[1..].as_mut_ptr() as *mut libc::c_void,
                iov_len: 4096,
            }];
            d.write_vectored(&mut iov, 8192, 4096, &mut bounce).unwrap();
            let mut dst = vec![0u8; 4096];
            let mut iov = [
                libc::iovec {
                    iov_base: dst.as_mut_ptr() as *mut libc::c_void,
                    iov_len: 1000,
                },
                libc::iovec {
                    iov_base: dst[1000..].as_mut_ptr() as *mut libc::c_void,
                    iov_len: 3096,
                },
            ];
            d.read_vectored(&mut iov, 8192, 4096, &mut bounce).unwrap();
            assert_eq!(&dst[..], &src[1..], "direct={direct}");
            d.punch_hole(8192, 4096).unwrap();
            let mut iov = [libc::iovec {
                iov_base: dst.as_mut_ptr() as *mut libc::c_void,
                iov_len: 4096,
            }];
            d.read_vectored(&mut iov, 8192, 4096, &mut bounce).unwrap();
            assert!(dst.iter().all(|&b| b == 0));
        }
    }
}
