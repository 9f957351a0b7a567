//! The real `wayland-device` binary, jailed (namespaces + seccomp policy), driven through the
//! vhost-user frontend library against a real headless weston. The test is the guest's
//! virtio-wl driver (virtqueues through vhost-user) and the VMM's shared-memory mapper (the
//! library's back-end request channel: GET_SHMEM_CONFIG, SET_BACKEND_REQ_FD, SHMEM_MAP and
//! SHMEM_UNMAP): registry globals, a wl_shm buffer painted through the frontend's mapping
//! and committed, found in weston's screenshot; VFD close unmaps; weston exit → VFD_HUP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cordon_frontend::vhost_user::{Buffer, DriverConfig, SharedMemoryRegion, VhostUserDriver};
use cordon_wayland::protocol::*;
use vm_memory::GuestAddress;

const T: Duration = Duration::from_secs(10);

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Asserts that the device process under `pid` (the single-child chain's leaf) runs under a
/// seccomp filter with no_new_privs and no capabilities.
fn assert_jailed(pid: u32) {
    let mut leaf = pid;
    loop {
        let kids: Vec<u32> = std::fs::read_to_string(format!("/proc/{leaf}/task/{leaf}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        match kids.as_slice() {
            [only] => leaf = *only,
            _ => break,
        }
    }
    assert_ne!(leaf, pid, "the device runs in a jailed child");
    let status = std::fs::read_to_string(format!("/proc/{leaf}/status")).unwrap();
    for want in ["Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t0000000000000000"] {
        assert!(status.contains(want), "{want} missing in:\n{status}");
    }
}

fn le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// A headless weston (with the screenshooter: `--debug`) in a private runtime directory.
struct Weston {
    child: Kill,
    _dir: tempfile::TempDir,
    sock: PathBuf,
}

fn start_weston() -> Weston {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let child = Kill(
        Command::new("weston")
            .env("XDG_RUNTIME_DIR", dir.path())
            .args([
                "--backend=headless-backend.so",
                "--shell=desktop-shell.so",
                "--use-pixman",
                "--debug",
                "--socket=wayland-0",
                "--idle-time=0",
                "--no-config",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start weston ({e}): apt-get install weston (bash scripts/setup)")
            }),
    );
    let sock = dir.path().join("wayland-0");
    let deadline = Instant::now() + Duration::from_secs(20);
    // weston binds before it listens: wait for an accepted connection, not the path.
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "weston did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    Weston {
        child,
        _dir: dir,
        sock,
    }
}

fn spawn_device(sock: &Path, wsock: &Path) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_wayland-device"))
            .arg("--socket-path")
            .arg(sock)
            .arg("--wayland-sock")
            .arg(wsock)
            .args(["--shm-size", "33554432"])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn wayland-device"),
    )
}

/// The guest's virtio-wl driver over vhost-user, with the frontend's shared memory region.
struct Guest {
    drv: VhostUserDriver,
    shm: Arc<SharedMemoryRegion>,
    inbufs: HashMap<u16, GuestAddress>,
}

impl Guest {
    fn connect(sock: &Path) -> Guest {
        let cfg = DriverConfig::new(2)
            .with_features(1 << F_USE_SHMEM)
            .with_shared_memory();
        let mut drv = VhostUserDriver::connect(sock, cfg).expect("vhost-user connect");
        assert_ne!(drv.features() & (1 << F_USE_SHMEM), 0, "USE_SHMEM acked");
        let regions = drv
            .map_shared_memory()
            .expect("GET_SHMEM_CONFIG + backend channel");
        assert_eq!(regions.len(), 1, "one shared memory region");
        assert_eq!(regions[0].size(), 32 << 20, "of shm-size bytes");
        let mut g = Guest {
            drv,
            shm: regions[0].clone(),
            inbufs: HashMap::new(),
        };
        for _ in 0..32 {
            let a = g.drv.alloc(4096).unwrap();
            g.post(a);
        }
        g
    }

    fn post(&mut self, a: GuestAddress) {
        let h = self
            .drv
            .submit(
                0,
                &[Buffer {
                    addr: a,
                    len: 4096,
                    writable: true,
                }],
            )
            .unwrap();
        self.inbufs.insert(h, a);
    }

    /// One command on the out queue; the device's response.
    fn cmd(&mut self, c: &[u8]) -> Vec<u8> {
        self.drv
            .request(1, &[c], &[64], T)
            .expect("command answered")
            .written[0]
            .clone()
    }

    /// In-queue messages within `timeout`, buffers re-posted.
    fn events(&mut self, timeout: Duration) -> Vec<Vec<u8>> {
        let used = self.drv.wait(0, timeout).unwrap_or_default();
        let mut out = Vec::new();
        let mut free = Vec::new();
        for u in used {
            let a = self.inbufs.remove(&u.head).expect("known in buffer");
            out.push(self.drv.read(a, u.len as usize).unwrap());
            free.push(a);
        }
        for a in free {
            self.post(a);
        }
        out
    }
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

enum Arg<'a> {
    U(u32),
    S(&'a str),
}

/// A Wayland wire message.
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

fn wl_string(b: &[u8], off: usize) -> (String, usize) {
    let len = le(b, off) as usize;
    let s = String::from_utf8_lossy(&b[off + 4..off + 4 + len - 1]).into_owned();
    (s, off + 4 + ((len + 3) & !3))
}

/// A Wayland client speaking through context `ctx`.
struct Client {
    g: Guest,
    stream: Vec<u8>,
    ctx: u32,
    hup: bool,
}

impl Client {
    fn send(&mut self, vfds: &[u32], msgs: &[Vec<u8>]) {
        let r = self.g.cmd(&send_cmd(self.ctx, vfds, &msgs.concat()));
        assert_eq!(le(&r, 0), RESP_OK, "VFD_SEND accepted");
    }

    /// Collects compositor events until `until` matches one.
    fn wait(&mut self, mut until: impl FnMut(u32, u16, &[u8]) -> bool) {
        let deadline = Instant::now() + T;
        loop {
            assert!(Instant::now() < deadline, "wayland event never came");
            for m in self.g.events(Duration::from_millis(100)) {
                match le(&m, 0) {
                    CMD_VFD_RECV => {
                        assert_eq!(le(&m, 8), self.ctx, "VFD_RECV on our context");
                        let n = le(&m, 12) as usize;
                        self.stream.extend_from_slice(&m[16 + 4 * n..]);
                    }
                    CMD_VFD_HUP => self.hup = true,
                    CMD_VFD_NEW => {}
                    other => panic!("unexpected in-queue message {other}"),
                }
            }
            while self.stream.len() >= 8 {
                let (obj, so) = (le(&self.stream, 0), le(&self.stream, 4));
                let size = (so >> 16) as usize;
                assert!(size >= 8, "bad wayland message size");
                if self.stream.len() < size {
                    break;
                }
                let body: Vec<u8> = self.stream[8..size].to_vec();
                self.stream.drain(..size);
                let op = (so & 0xffff) as u16;
                assert!(
                    !(obj == 1 && op == 0),
                    "wl_display.error: {:?}",
                    String::from_utf8_lossy(&body)
                );
                if until(obj, op, &body) {
                    return;
                }
            }
        }
    }
}

/// A shared-memory VFD: its offset in the frontend's region once SHMEM_MAP arrived.
fn shm_vfd(c: &mut Client, id: u32, size: u32) -> u64 {
    let r =
        c.g.cmd(&vfd_new(CMD_VFD_NEW, id, VFD_WRITE | VFD_MAP, 0, size));
    assert_eq!(le(&r, 0), RESP_VFD_NEW, "VFD_NEW answered");
    assert_eq!(le(&r, 8), id);
    let off = u64::from_le_bytes(r[16..24].try_into().unwrap()) * PAGE_SIZE;
    let m =
        c.g.shm
            .wait_mapped(off, T)
            .expect("SHMEM_MAP reached the frontend");
    assert!(m.len >= size as u64 && m.writable, "{m:?}");
    off
}

#[test]
fn jailed_device_commits_a_shm_buffer_that_shows_in_westons_screenshot() {
    let w = start_weston();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("wl.sock");
    let d = spawn_device(&sock, &w.sock);
    let g = Guest::connect(&sock);
    assert_jailed(d.0.id());
    let mut c = Client {
        g,
        stream: Vec::new(),
        ctx: 1,
        hup: false,
    };
    let r = c.g.cmd(&new_ctx(1));
    assert_eq!(le(&r, 0), RESP_VFD_NEW);
    assert_eq!((le(&r, 8), le(&r, 12)), (1, VFD_CONTROL));
    // wl_display.get_registry(2); wl_display.sync(3).
    c.send(&[], &[wl(1, 1, &[Arg::U(2)]), wl(1, 0, &[Arg::U(3)])]);
    let mut globals = HashMap::new();
    c.wait(|o, op, b| {
        if o == 2 && op == 0 {
            let (iface, next) = wl_string(b, 4);
            globals.insert(iface, (le(b, 0), le(b, next)));
        }
        o == 3 && op == 0
    });
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
    const FRAME: u32 = 14;
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
    // A 64x64 XRGB buffer in a shared-memory VFD, painted green through the frontend's
    // mapping of the jailed device's memfd.
    let (wd, ht) = (64u32, 64u32);
    let size = wd * ht * 4;
    let off = shm_vfd(&mut c, 2, size);
    let green: Vec<u8> = std::iter::repeat_n(0xff00_ff00u32.to_le_bytes(), (wd * ht) as usize)
        .flatten()
        .collect();
    c.g.shm.write(off, &green).unwrap();
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
        if o == OUTPUT && op == 1 && le(b, 0) & 1 != 0 {
            out_size = (le(b, 4), le(b, 8));
        }
        if o == XDG_SURFACE && op == 0 {
            serial = Some(le(b, 0));
        }
        serial.is_some()
    });
    assert!(out_size.0 > 0 && out_size.1 > 0, "wl_output current mode");
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
    let mut pinged = None;
    c.wait(|o, op, b| {
        if o == WM && op == 0 {
            pinged = Some(le(b, 0));
        }
        o == SURFACE && op == 0 // wl_surface.enter: mapped on the output
    });
    if let Some(s) = pinged {
        c.send(&[], &[wl(WM, 3, &[Arg::U(s)])]);
    }
    // weston's screenshot lands in a second shared-memory VFD, read through the mapping.
    let (ow, oh) = out_size;
    let shot_size = ow * oh * 4;
    let shot_off = shm_vfd(&mut c, 3, shot_size);
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
    let mut shot = vec![0u8; shot_size as usize];
    let deadline = Instant::now() + T;
    let count = loop {
        c.send(
            &[],
            &[wl(SHOOTER, 0, &[Arg::U(OUTPUT), Arg::U(SHOT_BUFFER)])],
        );
        c.wait(|o, op, _| o == SHOOTER && op == 0);
        c.g.shm.read(shot_off, &mut shot).unwrap();
        let n = shot
            .chunks(4)
            .filter(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & 0x00ff_ffff == 0xff00)
            .count();
        if n > 0 || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        count,
        (wd * ht) as usize,
        "weston composited exactly our 64x64 green buffer"
    );
    // VFD_CLOSE → SHMEM_UNMAP: the range is gone from the frontend's region.
    let mut close = hdr(CMD_VFD_CLOSE);
    close.extend_from_slice(&2u32.to_le_bytes());
    assert_eq!(le(&c.g.cmd(&close), 0), RESP_OK);
    c.g.shm
        .wait_unmapped(off, T)
        .expect("SHMEM_UNMAP reached the frontend");
    assert!(
        c.g.shm.read(off, &mut [0u8; 4]).is_err(),
        "unmapped range unreadable"
    );
    // The compositor going away is reported as VFD_HUP on the context.
    drop(w.child);
    let deadline = Instant::now() + T;
    while !c.hup {
        assert!(Instant::now() < deadline, "no VFD_HUP after weston exited");
        for m in c.g.events(Duration::from_millis(100)) {
            if le(&m, 0) == CMD_VFD_HUP {
                assert_eq!(le(&m, 8), 1);
                c.hup = true;
            }
        }
    }
}

/// VFD_NEW_PIPE through the jailed device, with the test as the compositor (a real Unix
/// socket peer receiving the pipe ends with SCM_RIGHTS): data flows both ways through the
/// pipes, a closed far end becomes VFD_HUP, misuse gets its error answer.
#[test]
fn jailed_device_relays_pipes_both_ways() {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    let wdir = tempfile::tempdir().unwrap();
    let wsock = wdir.path().join("wayland-0");
    let listener = std::os::unix::net::UnixListener::bind(&wsock).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("wl.sock");
    let _d = spawn_device(&sock, &wsock);
    let mut g = Guest::connect(&sock);
    assert_eq!(le(&g.cmd(&new_ctx(1)), 0), RESP_VFD_NEW);
    let (peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(T)).unwrap();
    let pipe = |id: u32, flags: u32| vfd_new(CMD_VFD_NEW_PIPE, id, flags, 0, 0);
    let r = g.cmd(&pipe(5, VFD_READ));
    assert_eq!(
        (le(&r, 0), le(&r, 8), le(&r, 12)),
        (RESP_VFD_NEW, 5, VFD_READ)
    );
    let r = g.cmd(&pipe(6, VFD_WRITE));
    assert_eq!(
        (le(&r, 0), le(&r, 8), le(&r, 12)),
        (RESP_VFD_NEW, 6, VFD_WRITE)
    );
    assert_eq!(
        le(&g.cmd(&pipe(7, 0)), 0),
        RESP_INVALID_FLAGS,
        "no direction"
    );
    assert_eq!(
        le(&g.cmd(&pipe(5, VFD_READ)), 0),
        RESP_INVALID_ID,
        "id reuse"
    );
    // The far ends travel to the compositor with a VFD_SEND.
    assert_eq!(le(&g.cmd(&send_cmd(1, &[5, 6], b"pipes")), 0), RESP_OK);
    let mut buf = [0u8; 64];
    let mut fds = [-1; 4];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points at a live buffer; received fds become ours.
    let (n, nfds) = unsafe { peer.recv_with_fds(&mut iov, &mut fds) }.unwrap();
    assert_eq!((&buf[..n], nfds), (&b"pipes"[..], 2));
    // SAFETY: fds just received, owned here.
    let (mut to_guest, mut from_guest) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    assert_eq!(
        le(&g.cmd(&send_cmd(1, &[5], b"again")), 0),
        RESP_INVALID_ID,
        "a pipe's far end is sent once"
    );
    // Compositor → guest through pipe 5.
    to_guest.write_all(b"from-compositor").unwrap();
    let deadline = Instant::now() + T;
    let got = 'got: loop {
        assert!(Instant::now() < deadline, "no VFD_RECV on the pipe");
        for m in g.events(Duration::from_millis(100)) {
            if le(&m, 0) == CMD_VFD_RECV && le(&m, 8) == 5 {
                break 'got m[16..].to_vec();
            }
        }
    };
    assert_eq!(got, b"from-compositor");
    // Guest → compositor through pipe 6; a readable pipe cannot be written.
    assert_eq!(le(&g.cmd(&send_cmd(6, &[], b"from-guest")), 0), RESP_OK);
    let mut b = [0u8; 10];
    from_guest.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"from-guest");
    assert_eq!(le(&g.cmd(&send_cmd(5, &[], b"x")), 0), RESP_INVALID_TYPE);
    // The compositor closing its end → VFD_HUP; closing pipe 6 → EOF for the compositor.
    drop(to_guest);
    let deadline = Instant::now() + T;
    'hup: loop {
        assert!(Instant::now() < deadline, "no VFD_HUP for the pipe");
        for m in g.events(Duration::from_millis(100)) {
            if le(&m, 0) == CMD_VFD_HUP && le(&m, 8) == 5 {
                break 'hup;
            }
        }
    }
    let mut close = hdr(CMD_VFD_CLOSE);
    close.extend_from_slice(&6u32.to_le_bytes());
    assert_eq!(le(&g.cmd(&close), 0), RESP_OK);
    assert_eq!(from_guest.read(&mut b).unwrap(), 0, "EOF after VFD_CLOSE");
}
