//! In-process device tests (the full weston flow runs against the jailed binary in
//! tests/wayland_device.rs): the test is the guest's virtio-wl driver (real split virtqueues in guest
//! memory) and the frontend's shared-memory mapper (a real vhost-user backend request
//! channel); the compositor is a real headless weston.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command as Cmd, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{Backend, FrontendReqHandler, HandlerResult, VhostUserFrontendReqHandler};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::GuestMemoryAtomic;

use crate::device::*;
use crate::guestq::{guest_memory, GuestQueue};
use crate::protocol::*;

/// The frontend side of SHMEM_MAP/UNMAP: maps each fd and remembers where.
#[derive(Default)]
struct Mapper {
    maps: Mutex<HashMap<u64, (usize, usize)>>,
}

impl VhostUserFrontendReqHandler for Mapper {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        let (off, len, fdo, flags) = (req.shm_offset, req.len, req.fd_offset, req.flags);
        let prot = if flags & VhostUserMMapFlags::WRITABLE.bits() != 0 {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: maps the received fd; the mapping is owned by this mapper.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                fdo as i64,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of a SHMEM_MAP fd");
        self.maps
            .lock()
            .unwrap()
            .insert(off, (p as usize, len as usize));
        Ok(0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        let off = req.shm_offset;
        if let Some((p, l)) = self.maps.lock().unwrap().remove(&off) {
            // SAFETY: unmapping a mapping we created.
            unsafe { libc::munmap(p as *mut libc::c_void, l) };
        }
        Ok(0)
    }
}

struct Weston {
    child: Child,
    _dir: tempfile::TempDir,
    sock: PathBuf,
}

impl Drop for Weston {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_weston() -> Weston {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let child = Cmd::new("weston")
        .env("XDG_RUNTIME_DIR", dir.path())
        .args(["--backend=headless-backend.so", "--shell=desktop-shell.so", "--use-pixman", "--debug", "--socket=wayland-0", "--idle-time=0", "--no-config"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start weston ({e}): install it with `apt-get install weston` (bash scripts/setup)"));
    let sock = dir.path().join("wayland-0");
    let deadline = Instant::now() + Duration::from_secs(20);
    // weston binds the socket before it listens: wait until a connection is accepted,
    // not merely until the path exists.
    while UnixStream::connect(&sock).is_err() {
        assert!(
            Instant::now() < deadline,
            "weston did not listen on {}",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Weston {
        child,
        _dir: dir,
        sock,
    }
}

struct Guest {
    dev: WlDevice,
    inq: GuestQueue,
    outq: GuestQueue,
    vrings: Vec<VringRwLock>,
}

impl Guest {
    fn new(sock: PathBuf) -> Guest {
        let dev = WlDevice::new(WlConfig {
            wayland_sock: sock,
            shm_size: 16 << 20,
        })
        .unwrap();
        let (mem, bases) = guest_memory(2, 64, 8192);
        let inq = GuestQueue::new(&mem, bases[0], 64, 8192);
        let outq = GuestQueue::new(&mem, bases[1], 64, 8192);
        let atomic = GuestMemoryAtomic::new(mem);
        let vrings = vec![inq.vring(&atomic), outq.vring(&atomic)];
        dev.update_memory(atomic).unwrap();
        dev.acked_features(dev.features() & !(1 << F_TRANS_FLAGS));
        // The backend request channel, as the frontend would set it up.
        let mapper = Arc::new(Mapper::default());
        let mut handler = FrontendReqHandler::new(mapper.clone()).unwrap();
        // SAFETY: dup of the handler's live socket fd; the copy goes to the device.
        let fd = unsafe { libc::dup(handler.get_tx_raw_fd()) };
        // SAFETY: fresh fd owned by the new stream.
        let backend = Backend::from_stream(unsafe { UnixStream::from_raw_fd(fd) });
        backend.set_shmem_flag(true);
        dev.set_backend_req_fd(backend);
        std::thread::spawn(move || while handler.handle_request().is_ok() {});
        let mut g = Guest {
            dev,
            inq,
            outq,
            vrings,
        };
        g.refill();
        g
    }

    fn refill(&mut self) {
        while self.inq.free_count() > 0 {
            self.inq.add(&[Err(4096)]);
        }
        self.dev.process(IN_QUEUE, &self.vrings).unwrap();
    }

    /// Sends one command on the out queue; returns the device's response.
    fn cmd(&mut self, c: &[u8]) -> Vec<u8> {
        self.outq.add(&[Ok(c), Err(64)]).unwrap();
        self.dev.process(OUT_QUEUE, &self.vrings).unwrap();
        let used = self.outq.take_used();
        assert_eq!(used.len(), 1);
        used.into_iter().next().unwrap().1
    }

    /// In-queue messages after waiting up to `ms` for host activity.
    fn events(&mut self, ms: i32) -> Vec<Vec<u8>> {
        let mut p = libc::pollfd {
            fd: self.dev.host_event_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) };
        self.dev.process(HOST_EVENT, &self.vrings).unwrap();
        let out = self.inq.take_used().into_iter().map(|(_, b)| b).collect();
        self.refill();
        out
    }
}

fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn new_ctx(id: u32) -> Vec<u8> {
    let mut c = hdr(CMD_VFD_NEW_CTX);
    c.extend_from_slice(&id.to_le_bytes());
    c
}

fn send_cmd(id: u32, vfds: &[u32], data: &[u8]) -> Vec<u8> {
    let mut c = hdr(CMD_VFD_SEND);
    c.extend_from_slice(&id.to_le_bytes());
    c.extend_from_slice(&(vfds.len() as u32).to_le_bytes());
    for v in vfds {
        c.extend_from_slice(&v.to_le_bytes());
    }
    c.extend_from_slice(data);
    c
}

/// Wayland wire message with u32 arguments.
fn wl(obj: u32, op: u16, args: &[u32]) -> Vec<u8> {
    let mut m = obj.to_le_bytes().to_vec();
    m.extend_from_slice(&((((8 + 4 * args.len()) as u32) << 16) | op as u32).to_le_bytes());
    for a in args {
        m.extend_from_slice(&a.to_le_bytes());
    }
    m
}

#[test]
fn bogus_commands_and_unknown_vfds_get_error_answers() {
    let w = start_weston();
    let mut g = Guest::new(w.sock.clone());
    assert_eq!(u32le(&g.cmd(&hdr(999)), 0), RESP_INVALID_CMD);
    assert_eq!(u32le(&g.cmd(&[1, 2, 3]), 0), RESP_INVALID_CMD);
    assert_eq!(u32le(&g.cmd(&send_cmd(77, &[], b"x")), 0), RESP_INVALID_ID);
    let mut close = hdr(CMD_VFD_CLOSE);
    close.extend_from_slice(&55u32.to_le_bytes());
    assert_eq!(u32le(&g.cmd(&close), 0), RESP_INVALID_ID);
    assert_eq!(u32le(&g.cmd(&new_ctx(1)), 0), RESP_VFD_NEW);
    assert_eq!(
        u32le(&g.cmd(&new_ctx(1)), 0),
        RESP_INVALID_ID,
        "id reuse refused"
    );
    assert_eq!(
        u32le(&g.cmd(&new_ctx(HOST_ID_BASE + 1)), 0),
        RESP_INVALID_ID,
        "host id range refused"
    );
    assert_eq!(
        u32le(&g.cmd(&send_cmd(1, &[9], b"x")), 0),
        RESP_INVALID_ID,
        "unknown VFD in send"
    );
    assert_eq!(
        u32le(&g.cmd(&vfd_new(CMD_VFD_NEW, 5, 0, 0, 0)), 0),
        RESP_INVALID_FLAGS,
        "zero size"
    );
    assert_eq!(
        u32le(&g.cmd(&vfd_new(CMD_VFD_NEW, 5, 0, 0, u32::MAX)), 0),
        RESP_INVALID_FLAGS,
        "too big"
    );
    assert_eq!(u32le(&g.cmd(&hdr(CMD_VFD_NEW_PIPE)), 0), RESP_INVALID_CMD);
    let mut t = hdr(CMD_VFD_SEND);
    t.extend_from_slice(&1u32.to_le_bytes());
    t.extend_from_slice(&100u32.to_le_bytes());
    assert_eq!(u32le(&g.cmd(&t), 0), RESP_INVALID_CMD, "too many VFDs");
    // Still fully working.
    assert_eq!(
        u32le(&g.cmd(&send_cmd(1, &[], &wl(1, 0, &[2]))), 0),
        RESP_OK
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    'wait: loop {
        assert!(Instant::now() < deadline, "no sync reply");
        for m in g.events(100) {
            if u32le(&m, 0) == CMD_VFD_RECV {
                break 'wait;
            }
        }
    }
    // A context to a socket nobody listens on fails cleanly.
    let mut g2 = Guest::new(PathBuf::from("/nonexistent/wayland-9"));
    assert_eq!(u32le(&g2.cmd(&new_ctx(1)), 0), RESP_ERR);
}
