//! VIRTIO shared memory regions that a backend fills with its own fds, over the vhost-user
//! back-end request channel.
//!
//! Messages, exactly (upstream vhost-user spec, as implemented by the `vhost` crate):
//! 1. protocol features `VHOST_USER_PROTOCOL_F_BACKEND_REQ` (bit 5) and
//!    `VHOST_USER_PROTOCOL_F_SHMEM` (bit 22) negotiated (see
//!    [`DriverConfig::with_shared_memory`](super::DriverConfig::with_shared_memory));
//! 2. front-end request `VHOST_USER_GET_SHMEM_CONFIG` (44) → `{nregions, memory_sizes[256]}`:
//!    the front-end reserves one address range per region ([`SharedMemoryRegion`]);
//! 3. front-end request `VHOST_USER_SET_BACKEND_REQ_FD` (21) with one end of a fresh
//!    `socketpair(AF_UNIX, SOCK_STREAM)` as ancillary fd; the front-end serves the other end
//!    in a thread ([`BackendChannel`]);
//! 4. back-end request `VHOST_USER_BACKEND_SHMEM_MAP` (9), body `VhostUserMMap {shmid,
//!    fd_offset, shm_offset, len, flags}` (flags bit 0 = writable) plus the fd: the front-end
//!    maps `len` bytes of the fd at `fd_offset` over `shm_offset` of region `shmid`
//!    (`MAP_SHARED|MAP_FIXED`);
//! 5. back-end request `VHOST_USER_BACKEND_SHMEM_UNMAP` (10), body `VhostUserMMap` with
//!    `shmid, shm_offset, len`: the range goes back to an inaccessible reservation.
//!
//! Both back-end requests are answered with a `VhostUserU64` ack (0 or a negative errno)
//! when the back-end set `NEED_REPLY` (it does once `REPLY_ACK` was negotiated). Requests
//! are hostile input: ranges outside the region, unaligned or overlapping ranges, unknown
//! regions and unknown unmaps are refused with `EINVAL`/`ENOENT` and logged.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandler};

use super::{Error, Result};

const PAGE: u64 = 4096;

/// Largest region the front-end agrees to reserve (address space only, 64 GiB).
pub const MAX_REGION_SIZE: u64 = 64 << 30;

/// One fd mapped into a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Offset in the region.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Mapped read-write (else read-only).
    pub writable: bool,
}

/// A reserved address range standing for one VIRTIO shared memory region: inaccessible
/// except where the backend mapped an fd.
pub struct SharedMemoryRegion {
    id: u8,
    base: usize,
    size: u64,
    reserved: usize,
    maps: Mutex<BTreeMap<u64, Mapping>>,
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl SharedMemoryRegion {
    /// Reserves `size` bytes (rounded up to pages) for region `id`.
    pub fn new(id: u8, size: u64) -> Result<Self> {
        if size == 0 || size > MAX_REGION_SIZE {
            return Err(Error::Invalid(format!(
                "shared memory region {id}: size {size} outside 1..={MAX_REGION_SIZE}"
            )));
        }
        let reserved = size.div_ceil(PAGE) * PAGE;
        // SAFETY: a fresh anonymous PROT_NONE reservation; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserved as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::Io {
                op: "reserving a shared memory region",
                source: io::Error::last_os_error(),
            });
        }
        Ok(SharedMemoryRegion {
            id,
            base: p as usize,
            size,
            reserved: reserved as usize,
            maps: Mutex::new(BTreeMap::new()),
        })
    }

    /// The region id (`shmid`).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// Size announced by the backend.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Mapping>> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Current mappings, by offset.
    pub fn mappings(&self) -> Vec<Mapping> {
        self.lock().values().copied().collect()
    }

    /// The mapping at exactly `offset`, if any.
    pub fn mapping_at(&self, offset: u64) -> Option<Mapping> {
        self.lock().get(&offset).copied()
    }

    /// Waits until something is mapped at `offset` (SHMEM_MAP is asynchronous to the
    /// virtqueue answer that announced it).
    pub fn wait_mapped(&self, offset: u64, timeout: Duration) -> Result<Mapping> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.mapping_at(offset) {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until nothing is mapped at `offset`.
    pub fn wait_unmapped(&self, offset: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while self.mapping_at(offset).is_some() {
            if Instant::now() >= deadline {
                return Err(Error::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// The mapping holding `[offset, offset + len)` entirely.
    fn covering(&self, offset: u64, len: usize) -> Option<Mapping> {
        let end = offset.checked_add(len as u64)?;
        let maps = self.lock();
        let (_, m) = maps.range(..=offset).next_back()?;
        (end <= m.offset + m.len).then_some(*m)
    }

    /// Copies `buf.len()` bytes at `offset` out of a mapped range.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.covering(offset, buf.len()).ok_or_else(|| {
            Error::Invalid(format!(
                "shared memory {offset:#x}+{} is not mapped",
                buf.len()
            ))
        })?;
        // SAFETY: the range lies inside a live mapping of this region (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.base + offset as usize) as *const u8,
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        Ok(())
    }

    /// Copies `data` to `offset` of a writable mapped range.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<()> {
        let m = self.covering(offset, data.len()).ok_or_else(|| {
            Error::Invalid(format!(
                "shared memory {offset:#x}+{} is not mapped",
                data.len()
            ))
        })?;
        if !m.writable {
            return Err(Error::Invalid(format!(
                "shared memory at {:#x} is mapped read-only",
                m.offset
            )));
        }
        // SAFETY: the range lies inside a live writable mapping of this region.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.base + offset as usize) as *mut u8,
                data.len(),
            )
        };
        Ok(())
    }

    /// SHMEM_MAP: maps `len` bytes of `fd` at `fd_offset` over `shm_offset`.
    pub fn map(&self, req: &VhostUserMMap, fd: RawFd) -> io::Result<()> {
        let (off, len, fd_off) = (req.shm_offset, req.len, req.fd_offset);
        let writable = req.flags & VhostUserMMapFlags::WRITABLE.bits() != 0;
        let end = off.checked_add(len).ok_or_else(|| errno(libc::EINVAL))?;
        if len == 0
            || end > self.size
            || off % PAGE != 0
            || len % PAGE != 0
            || fd_off % PAGE != 0
            || fd_off.checked_add(len).is_none_or(|e| e > i64::MAX as u64)
        {
            log::warn!(
                "SHMEM_MAP region {}: bad range {off:#x}+{len:#x} (fd offset {fd_off:#x})",
                self.id
            );
            return Err(errno(libc::EINVAL));
        }
        let mut maps = self.lock();
        let overlaps = maps
            .range(..end)
            .next_back()
            .is_some_and(|(_, m)| m.offset + m.len > off);
        if overlaps {
            log::warn!(
                "SHMEM_MAP region {}: {off:#x}+{len:#x} overlaps a mapping",
                self.id
            );
            return Err(errno(libc::EEXIST));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: the target range lies inside our own reservation and is not mapped; the
        // fd comes from the message (the kernel checks it).
        let p = unsafe {
            libc::mmap(
                (self.base + off as usize) as *mut libc::c_void,
                len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                fd_off as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            log::warn!("SHMEM_MAP region {}: mmap: {e}", self.id);
            return Err(e);
        }
        maps.insert(
            off,
            Mapping {
                offset: off,
                len,
                writable,
            },
        );
        log::debug!(
            "SHMEM_MAP region {}: {off:#x}+{len:#x} writable={writable}",
            self.id
        );
        Ok(())
    }

    /// SHMEM_UNMAP: the mapping starting at `shm_offset` (of length `len`) goes away.
    pub fn unmap(&self, req: &VhostUserMMap) -> io::Result<()> {
        let (off, len) = (req.shm_offset, req.len);
        let mut maps = self.lock();
        match maps.get(&off) {
            Some(m) if m.len == len => {}
            _ => {
                log::warn!(
                    "SHMEM_UNMAP region {}: nothing mapped at {off:#x}+{len:#x}",
                    self.id
                );
                return Err(errno(libc::ENOENT));
            }
        }
        // SAFETY: replaces our own mapping inside our reservation with inaccessible memory.
        let p = unsafe {
            libc::mmap(
                (self.base + off as usize) as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        maps.remove(&off);
        log::debug!("SHMEM_UNMAP region {}: {off:#x}+{len:#x}", self.id);
        Ok(())
    }
}

impl Drop for SharedMemoryRegion {
    fn drop(&mut self) {
        // SAFETY: unmaps the whole reservation we own (mappings inside it included).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.reserved) };
    }
}

/// Serves SHMEM_MAP/UNMAP for a device's regions.
struct Mapper {
    regions: Vec<Arc<SharedMemoryRegion>>,
}

impl Mapper {
    fn region(&self, req: &VhostUserMMap) -> io::Result<&SharedMemoryRegion> {
        let id = req.shmid;
        self.regions
            .iter()
            .find(|r| r.id == id)
            .map(|r| &**r)
            .ok_or_else(|| {
                log::warn!("backend request for unknown shared memory region {id}");
                errno(libc::EINVAL)
            })
    }
}

impl VhostUserFrontendReqHandler for Mapper {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        self.region(req)?.map(req, fd.as_raw_fd()).map(|()| 0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        self.region(req)?.unmap(req).map(|()| 0)
    }
}

/// The front-end end of the back-end request channel, served by its own thread until the
/// backend hangs up or this is dropped.
pub struct BackendChannel {
    sock: RawFd,
    thread: Option<JoinHandle<FrontendReqHandler<Mapper>>>,
}

impl BackendChannel {
    /// Creates the socket pair; `send` must pass the returned backend end with
    /// SET_BACKEND_REQ_FD. `reply_ack`: REPLY_ACK was negotiated (acks are sent when asked).
    pub(crate) fn start(
        regions: Vec<Arc<SharedMemoryRegion>>,
        reply_ack: bool,
        send: impl FnOnce(RawFd) -> Result<()>,
    ) -> Result<Self> {
        let mut handler =
            FrontendReqHandler::new(Arc::new(Mapper { regions })).map_err(|e| Error::Vhost {
                op: "back-end request channel",
                source: vhost::Error::VhostUserProtocol(e),
            })?;
        handler.set_reply_ack_flag(reply_ack);
        send(handler.get_tx_raw_fd())?;
        let sock = handler.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("vhost-backend-req".into())
            .spawn(move || {
                loop {
                    match handler.handle_request() {
                        Ok(_) => {}
                        // Refused by the mapper (already answered and logged): keep serving.
                        Err(vhost::vhost_user::Error::ReqHandlerError(_)) => {}
                        Err(e) => {
                            log::debug!("back-end request channel closed: {e}");
                            break;
                        }
                    }
                }
                // Returned so the socket stays open until the owner joins (see Drop).
                handler
            })
            .map_err(|e| Error::Io {
                op: "spawning the back-end request thread",
                source: e,
            })?;
        Ok(BackendChannel {
            sock,
            thread: Some(thread),
        })
    }
}

impl Drop for BackendChannel {
    fn drop(&mut self) {
        // SAFETY: the handler (owner of `sock`) lives until the join below, so the fd is
        // still ours; shutdown wakes the thread's blocking receive.
        unsafe { libc::shutdown(self.sock, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost_user::memory::memfd;

    fn req(off: u64, len: u64, fd_off: u64, writable: bool) -> VhostUserMMap {
        VhostUserMMap {
            shmid: 0,
            fd_offset: fd_off,
            shm_offset: off,
            len,
            flags: if writable {
                VhostUserMMapFlags::WRITABLE.bits()
            } else {
                0
            },
            ..Default::default()
        }
    }

    #[test]
    fn map_read_write_unmap() {
        let r = SharedMemoryRegion::new(0, 1 << 20).unwrap();
        let f = memfd("shm-test", 8192).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"from-backend", 4096).unwrap();
        r.map(&req(0x10000, 4096, 4096, true), f.as_raw_fd())
            .unwrap();
        let mut b = [0u8; 12];
        r.read(0x10000, &mut b).unwrap();
        assert_eq!(&b, b"from-backend", "fd offset honoured");
        r.write(0x10004, b"FRONT").unwrap();
        let mut back = [0u8; 12];
        f.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(&back, b"fromFRONTend", "writes reach the backend's file");
        // Reads outside a mapping are refused, not faulted.
        assert!(r.read(0x10000 + 4090, &mut b).is_err());
        assert!(r.read(0, &mut b).is_err());
        r.unmap(&req(0x10000, 4096, 0, false)).unwrap();
        assert!(r.read(0x10000, &mut b).is_err());
        assert!(r.mappings().is_empty());
    }

    #[test]
    fn hostile_requests_are_refused() {
        let r = SharedMemoryRegion::new(0, 1 << 20).unwrap();
        let f = memfd("shm-test", 1 << 20).unwrap();
        let fd = f.as_raw_fd();
        let einval = Some(libc::EINVAL);
        let code = |res: io::Result<()>| res.err().and_then(|e| e.raw_os_error());
        assert_eq!(code(r.map(&req(0, 0, 0, true), fd)), einval, "empty");
        assert_eq!(
            code(r.map(&req(100, 4096, 0, true), fd)),
            einval,
            "unaligned"
        );
        assert_eq!(
            code(r.map(&req(1 << 20, 4096, 0, true), fd)),
            einval,
            "past the end"
        );
        assert_eq!(
            code(r.map(&req(u64::MAX - 4095, 8192, 0, true), fd)),
            einval,
            "wrapping"
        );
        r.map(&req(0x4000, 0x4000, 0, false), fd).unwrap();
        assert_eq!(
            code(r.map(&req(0x6000, 0x4000, 0, true), fd)),
            Some(libc::EEXIST),
            "overlap"
        );
        assert_eq!(
            code(r.map(&req(0x2000, 0x4000, 0, true), fd)),
            Some(libc::EEXIST),
            "overlap from below"
        );
        assert!(r.write(0x4000, b"x").is_err(), "read-only mapping");
        assert_eq!(
            code(r.unmap(&req(0x5000, 0x1000, 0, false))),
            Some(libc::ENOENT),
            "not a mapping start"
        );
        assert_eq!(
            code(r.map(&req(0, 4096, 0, true), -1)),
            Some(libc::EBADF),
            "bad fd"
        );
        let m = Mapper {
            regions: vec![Arc::new(r)],
        };
        let mut other = req(0, 4096, 0, true);
        other.shmid = 3;
        assert!(m.shmem_map(&other, &fd).is_err(), "unknown region");
        assert!(SharedMemoryRegion::new(1, 0).is_err());
        assert!(SharedMemoryRegion::new(1, MAX_REGION_SIZE + 1).is_err());
    }
}
