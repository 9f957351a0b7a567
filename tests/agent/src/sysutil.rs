//! Small system helpers used by the checks: aligned direct I/O, sysfs, commands, mounts.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::process::Command;

/// Alignment used for O_DIRECT transfers (covers 512 and 4096 byte logical blocks).
pub const ALIGN: usize = 4096;

/// A heap buffer aligned to [`ALIGN`], as O_DIRECT needs.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (rounded up to [`ALIGN`]).
    pub fn new(len: usize) -> Result<Self, String> {
        let len = len.div_ceil(ALIGN).max(1) * ALIGN;
        let layout = std::alloc::Layout::from_size_align(len, ALIGN)
            .map_err(|e| format!("buffer layout: {e}"))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err("out of memory".into());
        }
        Ok(AlignedBuf { ptr, len })
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to len initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The buffer's bytes, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr points to len initialised bytes owned exclusively by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(layout) = std::alloc::Layout::from_size_align(self.len, ALIGN) {
            // SAFETY: allocated in new() with this same layout.
            unsafe { std::alloc::dealloc(self.ptr, layout) };
        }
    }
}

/// Path of a block device given as `vda` or `/dev/vda`.
pub fn dev_path(dev: &str) -> String {
    if dev.starts_with('/') {
        dev.to_string()
    } else {
        format!("/dev/{dev}")
    }
}

/// Short name (`vda`) of a block device given as `vda` or `/dev/vda`.
pub fn dev_name(dev: &str) -> &str {
    dev.rsplit('/').next().unwrap_or(dev)
}

/// Opens a block device with O_DIRECT, read-only or read-write.
pub fn open_direct(dev: &str, write: bool) -> Result<File, String> {
    let p = dev_path(dev);
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .map_err(|e| format!("open {p}: {e}"))
}

fn span(offset: u64, len: usize) -> (u64, usize) {
    let start = offset / ALIGN as u64 * ALIGN as u64;
    let end = (offset + len as u64).div_ceil(ALIGN as u64) * ALIGN as u64;
    (start, (end - start) as usize)
}

fn pread_all(f: &File, buf: &mut [u8], off: u64) -> Result<(), String> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer/length pair describes the unfilled tail of `buf`.
        let n = unsafe {
            libc::pread(
                f.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                (off + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            return Err(format!(
                "pread at {}: {}",
                off + done as u64,
                std::io::Error::last_os_error()
            ));
        }
        if n == 0 {
            return Err(format!("pread at {}: end of device", off + done as u64));
        }
        done += n as usize;
    }
    Ok(())
}

fn pwrite_all(f: &File, buf: &[u8], off: u64) -> Result<(), String> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer/length pair describes the unwritten tail of `buf`.
        let n = unsafe {
            libc::pwrite(
                f.as_raw_fd(),
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                (off + done as u64) as libc::off_t,
            )
        };
        if n <= 0 {
            return Err(format!(
                "pwrite at {}: {}",
                off + done as u64,
                std::io::Error::last_os_error()
            ));
        }
        done += n as usize;
    }
    Ok(())
}

/// Reads `len` bytes at `offset` from the device, bypassing the page cache.
pub fn direct_read(dev: &str, offset: u64, len: usize) -> Result<Vec<u8>, String> {
    let f = open_direct(dev, false)?;
    let (start, slen) = span(offset, len);
    let mut buf = AlignedBuf::new(slen)?;
    pread_all(&f, &mut buf.as_mut_slice()[..slen], start)?;
    let skip = (offset - start) as usize;
    Ok(buf.as_slice()[skip..skip + len].to_vec())
}

/// Writes `data` at `offset` to the device, bypassing the page cache (read-modify-write of
/// the surrounding aligned blocks), then fsyncs.
pub fn direct_write(dev: &str, offset: u64, data: &[u8]) -> Result<(), String> {
    let f = open_direct(dev, true)?;
    let (start, slen) = span(offset, data.len());
    let mut buf = AlignedBuf::new(slen)?;
    pread_all(&f, &mut buf.as_mut_slice()[..slen], start)?;
    let skip = (offset - start) as usize;
    buf.as_mut_slice()[skip..skip + data.len()].copy_from_slice(data);
    pwrite_all(&f, &buf.as_slice()[..slen], start)?;
    f.sync_all().map_err(|e| format!("fsync {dev}: {e}"))
}

/// Contents of a sysfs/procfs file, trimmed.
pub fn read_trim(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("read {path}: {e}"))
}

/// Field `idx` (0-based) of /sys/block/DEV/stat.
pub fn blk_stat(dev: &str, idx: usize) -> Result<u64, String> {
    let s = read_trim(&format!("/sys/block/{}/stat", dev_name(dev)))?;
    s.split_whitespace()
        .nth(idx)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("/sys/block/{}/stat has no field {idx}", dev_name(dev)))
}

/// Runs a program, returning its combined output on success.
pub fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{prog} {}: {} {}",
            args.join(" "),
            out.status,
            text.trim()
        ))
    }
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// mount(2).
pub fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong) -> Result<(), String> {
    let (s, t, f) = (cstr(src)?, cstr(target)?, cstr(fstype)?);
    // SAFETY: all pointers are valid NUL-terminated strings; data is null.
    let r = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, std::ptr::null()) };
    if r != 0 {
        return Err(format!(
            "mount {src} on {target} ({fstype}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// umount(2).
pub fn umount(target: &str) -> Result<(), String> {
    let t = cstr(target)?;
    // SAFETY: t is a valid NUL-terminated string.
    if unsafe { libc::umount(t.as_ptr()) } != 0 {
        return Err(format!(
            "umount {target}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Fills `buf` from getrandom(2).
pub fn random_bytes(buf: &mut [u8]) -> Result<(), String> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: pointer/length describe the unfilled tail of buf.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            return Err(format!("getrandom: {}", std::io::Error::last_os_error()));
        }
        done += n as usize;
    }
    Ok(())
}
