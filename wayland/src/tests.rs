//! Device tests: the test is the guest's virtio-wl driver (real split virtqueues in guest
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
    mapper: Arc<Mapper>,
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
            mapper,
        };
        g.refill();
        g
    }

    /// Waits for the frontend mapper to have mapped shared memory offset `off`.
    fn mapping(&self, off: u64) -> (usize, usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(m) = self.mapper.maps.lock().unwrap().get(&off) {
                return *m;
            }
            assert!(
                Instant::now() < deadline,
                "SHMEM_MAP for offset {off:#x} never reached the frontend"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
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

/// Wayland wire message.
fn wl(obj: u32, op: u16, args: &[Arg]) -> Vec<u8> {
    let mut body = Vec::new();
    for a in args {
        match a {
            Arg::U(v) => body.extend_from_slice(&v.to_le_bytes()),
            Arg::S(s) => {
                body.extend_from_slice(&((s.len() + 1) as u32).to_le_bytes());
                body.extend_from_slice(s.as_bytes());
                body.push(0);
                while body.len() % 4 != 0 {
                    body.push(0);
                }
            }
        }
    }
    let mut m = obj.to_le_bytes().to_vec();
    m.extend_from_slice(&((((8 + body.len()) as u32) << 16) | op as u32).to_le_bytes());
    m.extend_from_slice(&body);
    m
}

enum Arg<'a> {
    U(u32),
    S(&'a str),
}

/// Splits a byte stream into (object, opcode, body) events; keeps a partial tail.
fn parse_events(stream: &mut Vec<u8>) -> Vec<(u32, u16, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        if stream.len() < 8 {
            break;
        }
        let obj = u32le(stream, 0);
        let so = u32le(stream, 4);
        let size = (so >> 16) as usize;
        assert!(size >= 8, "bad wayland message size");
        if stream.len() < size {
            break;
        }
        out.push((obj, (so & 0xffff) as u16, stream[8..size].to_vec()));
        stream.drain(..size);
    }
    out
}

fn wl_string(b: &[u8], off: usize) -> (String, usize) {
    let len = u32le(b, off) as usize;
    let s = String::from_utf8_lossy(&b[off + 4..off + 4 + len - 1]).into_owned();
    (s, off + 4 + ((len + 3) & !3))
}

struct Client {
    g: Guest,
    stream: Vec<u8>,
    ctx: u32,
    hup: bool,
}

impl Client {
    fn send(&mut self, vfds: &[u32], msgs: &[Vec<u8>]) {
        let data: Vec<u8> = msgs.concat();
        let r = self.g.cmd(&send_cmd(self.ctx, vfds, &data));
        assert_eq!(u32le(&r, 0), RESP_OK, "VFD_SEND accepted");
    }

    /// Collects events until `until` matches one (or panics after 10 s).
    fn wait(&mut self, mut until: impl FnMut(u32, u16, &[u8]) -> bool) -> Vec<(u32, u16, Vec<u8>)> {
        let mut all = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(
                Instant::now() < deadline,
                "wayland event never came; got {all:?}"
            );
            for m in self.g.events(100) {
                match u32le(&m, 0) {
                    CMD_VFD_RECV => {
                        assert_eq!(u32le(&m, 8), self.ctx);
                        let n = u32le(&m, 12) as usize;
                        self.stream.extend_from_slice(&m[16 + 4 * n..]);
                    }
                    CMD_VFD_HUP => self.hup = true,
                    CMD_VFD_NEW => {}
                    other => panic!("unexpected in-queue message {other}"),
                }
            }
            for (o, op, b) in parse_events(&mut self.stream) {
                assert!(
                    !(o == 1 && op == 0),
                    "wl_display.error: {:?}",
                    String::from_utf8_lossy(&b)
                );
                let done = until(o, op, &b);
                all.push((o, op, b));
                if done {
                    return all;
                }
            }
        }
    }
}

#[test]
fn weston_globals_shm_pool_and_committed_buffer() {
    let w = start_weston();
    let mut g = Guest::new(w.sock.clone());
    let r = g.cmd(&new_ctx(1));
    assert_eq!(u32le(&r, 0), RESP_VFD_NEW);
    assert_eq!((u32le(&r, 8), u32le(&r, 12)), (1, VFD_CONTROL));
    let mut c = Client {
        g,
        stream: Vec::new(),
        ctx: 1,
        hup: false,
    };
    // wl_display.get_registry(2); wl_display.sync(3).
    c.send(&[], &[wl(1, 1, &[Arg::U(2)]), wl(1, 0, &[Arg::U(3)])]);
    let evs = c.wait(|o, op, _| o == 3 && op == 0);
    let mut globals = HashMap::new();
    for (o, op, b) in &evs {
        if *o == 2 && *op == 0 {
            let (iface, next) = wl_string(b, 4);
            globals.insert(iface, (u32le(b, 0), u32le(b, next)));
        }
    }
    for want in [
        "wl_compositor",
        "wl_shm",
        "xdg_wm_base",
        "wl_output",
        "weston_screenshooter",
    ] {
        assert!(
            globals.contains_key(want),
            "global {want} missing: {globals:?}"
        );
    }
    // Client object ids must be allocated densely.
    const COMP: u32 = 4;
    const SHM: u32 = 5;
    const WM: u32 = 6;
    const OUTPUT: u32 = 7;
    const SHOOTER: u32 = 8;
    const POOL: u32 = 9;
    const BUFFER: u32 = 10;
    const SURFACE: u32 = 11;
    const XDG_SURFACE: u32 = 12;
    const TOPLEVEL: u32 = 13;
    const FRAME: u32 = 14; // frame callback (requested, not awaited)
    const SHOT_POOL: u32 = 15;
    const SHOT_BUFFER: u32 = 16;
    let bind = |name: &str, ver: u32, id: u32| {
        wl(
            2,
            0,
            &[
                Arg::U(globals[name].0),
                Arg::S(name),
                Arg::U(ver),
                Arg::U(id),
            ],
        )
    };
    c.send(
        &[],
        &[
            bind("wl_compositor", 4, COMP),
            bind("wl_shm", 1, SHM),
            bind("xdg_wm_base", 1, WM),
            bind("wl_output", 2, OUTPUT),
            bind("weston_screenshooter", 1, SHOOTER),
        ],
    );
    // A shared-memory VFD: mapped by the frontend through SHMEM_MAP; the guest paints it.
    let (wd, ht) = (64u32, 64u32);
    let size = wd * ht * 4;
    let r =
        c.g.cmd(&vfd_new(CMD_VFD_NEW, 2, VFD_WRITE | VFD_MAP, 0, size));
    assert_eq!(u32le(&r, 0), RESP_VFD_NEW, "VFD_NEW answered");
    let pfn = u64::from_le_bytes(r[16..24].try_into().unwrap());
    let (ptr, len) = c.g.mapping(pfn * PAGE_SIZE);
    assert!(len >= size as usize);
    // SAFETY: the mapping is live and `size` bytes long.
    let px = unsafe { std::slice::from_raw_parts_mut(ptr as *mut u32, (size / 4) as usize) };
    px.fill(0xff00_ff00);
    // wl_shm.create_pool(fd = VFD 2), pool.create_buffer(XRGB8888), a surface with the
    // xdg toplevel role, initial commit.
    c.send(
        &[2],
        &[
            wl(SHM, 0, &[Arg::U(POOL), Arg::U(size)]),
            wl(
                POOL,
                0,
                &[
                    Arg::U(BUFFER),
                    Arg::U(0),
                    Arg::U(wd),
                    Arg::U(ht),
                    Arg::U(wd * 4),
                    Arg::U(1),
                ],
            ),
            wl(COMP, 0, &[Arg::U(SURFACE)]),
            wl(WM, 2, &[Arg::U(XDG_SURFACE), Arg::U(SURFACE)]),
            wl(XDG_SURFACE, 1, &[Arg::U(TOPLEVEL)]),
            wl(SURFACE, 6, &[]),
        ],
    );
    let mut serial = None;
    let mut out_size = (0, 0);
    c.wait(|o, op, b| {
        if o == OUTPUT && op == 1 && u32le(b, 0) & 1 != 0 {
            out_size = (u32le(b, 4), u32le(b, 8));
        }
        if o == XDG_SURFACE && op == 0 {
            serial = Some(u32le(b, 0));
        }
        serial.is_some()
    });
    assert!(
        out_size.0 > 0 && out_size.1 > 0,
        "wl_output announced its current mode"
    );
    // ack_configure, attach, damage, frame callback, commit.
    c.send(
        &[],
        &[
            wl(XDG_SURFACE, 4, &[Arg::U(serial.unwrap())]),
            wl(SURFACE, 1, &[Arg::U(BUFFER), Arg::U(0), Arg::U(0)]),
            wl(SURFACE, 2, &[Arg::U(0), Arg::U(0), Arg::U(wd), Arg::U(ht)]),
            wl(SURFACE, 3, &[Arg::U(FRAME)]),
            wl(SURFACE, 6, &[]),
        ],
    );
    // Weston maps the surface on its output (enter).
    let mut entered = false;
    let mut pinged = None;
    c.wait(|o, op, b| {
        if o == SURFACE && op == 0 {
            entered = true;
        }
        if o == WM && op == 0 {
            pinged = Some(u32le(b, 0));
        }
        entered
    });
    if let Some(s) = pinged {
        c.send(&[], &[wl(WM, 3, &[Arg::U(s)])]);
    }

    // Ask weston for a screenshot into another shared-memory VFD and find our pixels in it.
    let (ow, oh) = out_size;
    let shot_size = ow * oh * 4;
    let r =
        c.g.cmd(&vfd_new(CMD_VFD_NEW, 3, VFD_WRITE | VFD_MAP, 0, shot_size));
    assert_eq!(u32le(&r, 0), RESP_VFD_NEW);
    let shot_off = u64::from_le_bytes(r[16..24].try_into().unwrap()) * PAGE_SIZE;
    c.send(
        &[3],
        &[
            wl(SHM, 0, &[Arg::U(SHOT_POOL), Arg::U(shot_size)]),
            wl(
                SHOT_POOL,
                0,
                &[
                    Arg::U(SHOT_BUFFER),
                    Arg::U(0),
                    Arg::U(ow),
                    Arg::U(oh),
                    Arg::U(ow * 4),
                    Arg::U(0),
                ],
            ),
        ],
    );
    let (sp, _) = c.g.mapping(shot_off);
    // The shell may take a few frames to place the window: shoot until it shows (10 s max).
    let deadline = Instant::now() + Duration::from_secs(10);
    let green = loop {
        c.send(
            &[],
            &[wl(SHOOTER, 0, &[Arg::U(OUTPUT), Arg::U(SHOT_BUFFER)])],
        );
        c.wait(|o, op, _| o == SHOOTER && op == 0);
        // SAFETY: the screenshot mapping is live and `shot_size` bytes long.
        let shot =
            unsafe { std::slice::from_raw_parts(sp as *const u32, (shot_size / 4) as usize) };
        let green = shot
            .iter()
            .filter(|&&p| p & 0x00ff_ffff == 0x0000_ff00)
            .count();
        if green > 0 || Instant::now() > deadline {
            break green;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        green,
        (wd * ht) as usize,
        "weston composited exactly our 64x64 green buffer"
    );
    // Closing the VFD unmaps it from the frontend's region.
    let r = c.g.cmd(&{
        let mut x = hdr(CMD_VFD_CLOSE);
        x.extend_from_slice(&2u32.to_le_bytes());
        x
    });
    assert_eq!(u32le(&r, 0), RESP_OK);
    let deadline = Instant::now() + Duration::from_secs(5);
    while c
        .g
        .mapper
        .maps
        .lock()
        .unwrap()
        .contains_key(&(pfn * PAGE_SIZE))
    {
        assert!(
            Instant::now() < deadline,
            "SHMEM_UNMAP never reached the frontend"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The compositor going away is reported as HUP on the context.
    drop(w);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.hup {
        assert!(Instant::now() < deadline, "no VFD_HUP after weston exited");
        for m in c.g.events(100) {
            if u32le(&m, 0) == CMD_VFD_HUP {
                assert_eq!(u32le(&m, 8), 1);
                c.hup = true;
            }
        }
    }
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
        u32le(&g.cmd(&send_cmd(1, &[], &wl(1, 0, &[Arg::U(2)]))), 0),
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
