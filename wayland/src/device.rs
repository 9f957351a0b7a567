//! The virtio-wl vhost-user backend: contexts are Unix connections to the host compositor,
//! shared-memory VFDs are memfds mapped into the device's shared memory region through the
//! vhost-user backend request channel (`VHOST_USER_BACKEND_SHMEM_MAP` / `_UNMAP`).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;

use log::{debug, error, warn};
use vhost::vhost_user::message::{
    VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures, VhostUserShMemConfig,
};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::protocol::*;
use crate::shm::ShmAlloc;

/// Index of the "in" queue (device to guest).
pub const IN_QUEUE: u16 = 0;
/// Index of the "out" queue (guest commands).
pub const OUT_QUEUE: u16 = 1;
/// Number of queues.
pub const NUM_QUEUES: usize = 2;
/// Queue size.
pub const QUEUE_SIZE: usize = 256;
/// `handle_event` id of the device's epoll fd (contexts and received pipes).
pub const HOST_EVENT: u16 = NUM_QUEUES as u16 + 1;
/// Messages waiting for in-queue buffers before the device stops reading the compositor.
const MAX_PENDING_IN: usize = 64;
/// The shared memory region id used for VFD mappings.
pub const SHMID: u8 = 0;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;
type Guard = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// Device configuration.
#[derive(Clone, Debug)]
pub struct WlConfig {
    /// Compositor socket (`wayland-sock=`).
    pub wayland_sock: PathBuf,
    /// Size of the shared memory region for VFD mappings.
    pub shm_size: u64,
}

#[derive(Debug)]
enum Vfd {
    /// A connection to the compositor.
    Ctx { sock: UnixStream, hup: bool },
    /// Shared memory mapped into the region at `offset`.
    Shm { file: File, offset: u64, size: u64 },
    /// Another fd received from the compositor (pipe, socket): readable by the guest.
    Other { file: File, hup: bool },
    /// A pipe made by `VFD_NEW_PIPE`: the device keeps `local` (the read end when the guest
    /// reads, else the write end); `remote` goes to the compositor with the first
    /// `VFD_SEND` naming this VFD and is then closed here.
    Pipe {
        local: File,
        remote: Option<File>,
        readable: bool,
        hup: bool,
    },
}

impl Vfd {
    fn raw_fd(&self) -> RawFd {
        match self {
            Vfd::Ctx { sock, .. } => sock.as_raw_fd(),
            Vfd::Shm { file, .. } | Vfd::Other { file, .. } => file.as_raw_fd(),
            Vfd::Pipe { local, .. } => local.as_raw_fd(),
        }
    }

    /// The fd that travels when this VFD is named in a `VFD_SEND`.
    fn send_fd(&self) -> Option<RawFd> {
        match self {
            Vfd::Pipe { remote, .. } => remote.as_ref().map(|f| f.as_raw_fd()),
            other => Some(other.raw_fd()),
        }
    }
}

struct Inner {
    mem: Option<Mem>,
    event_idx: bool,
    trans_flags: bool,
    backend: Option<Backend>,
    vfds: HashMap<u32, Vfd>,
    next_host_id: u32,
    shm: ShmAlloc,
    pending_in: VecDeque<Vec<u8>>,
    reading: bool,
}

/// The virtio-wl vhost-user backend.
pub struct WlDevice {
    cfg: WlConfig,
    epoll: Epoll,
    inner: Mutex<Inner>,
}

impl WlDevice {
    /// Creates the device (the compositor is connected per context, on demand).
    pub fn new(cfg: WlConfig) -> io::Result<WlDevice> {
        if cfg.shm_size == 0 || !cfg.shm_size.is_multiple_of(PAGE_SIZE) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "shm-size={} invalid: a non-zero multiple of 4096",
                    cfg.shm_size
                ),
            ));
        }
        Ok(WlDevice {
            epoll: Epoll::new()?,
            inner: Mutex::new(Inner {
                mem: None,
                event_idx: false,
                trans_flags: false,
                backend: None,
                vfds: HashMap::new(),
                next_host_id: HOST_ID_BASE,
                shm: ShmAlloc::new(cfg.shm_size),
                pending_in: VecDeque::new(),
                reading: true,
            }),
            cfg,
        })
    }

    /// The fd to register with the vhost-user epoll handler under [`HOST_EVENT`].
    pub fn host_event_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of live VFDs.
    pub fn vfd_count(&self) -> usize {
        self.lock().vfds.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watch(&self, inner: &Inner, id: u32, fd: RawFd) {
        let ev = if inner.reading {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, id as u64))
        {
            warn!("wl: epoll add for VFD {id}: {e}");
        }
    }

    fn unwatch(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    fn set_reading(&self, inner: &mut Inner, on: bool) {
        if inner.reading == on {
            return;
        }
        inner.reading = on;
        let ev = if on { EventSet::IN } else { EventSet::empty() };
        for (id, v) in &inner.vfds {
            let live = match v {
                Vfd::Ctx { hup, .. } | Vfd::Other { hup, .. } => !hup,
                Vfd::Pipe { readable, hup, .. } => *readable && !hup,
                Vfd::Shm { .. } => false,
            };
            if live {
                let _ = self.epoll.ctl(
                    ControlOperation::Modify,
                    v.raw_fd(),
                    EpollEvent::new(ev, *id as u64),
                );
            }
        }
    }

    fn drop_vfd(&self, inner: &mut Inner, v: Vfd) {
        match v {
            Vfd::Shm { offset, size, .. } => {
                if let Some(b) = &inner.backend {
                    let req = VhostUserMMap {
                        shmid: SHMID,
                        shm_offset: offset,
                        len: size,
                        ..Default::default()
                    };
                    if let Err(e) = b.shmem_unmap(&req) {
                        warn!("wl: SHMEM_UNMAP at {offset:#x}: {e}");
                    }
                }
                inner.shm.free(offset);
            }
            Vfd::Ctx { sock, hup } => {
                if !hup {
                    self.unwatch(sock.as_raw_fd());
                }
            }
            Vfd::Other { file, hup } => {
                if !hup {
                    self.unwatch(file.as_raw_fd());
                }
            }
            Vfd::Pipe {
                local,
                readable,
                hup,
                ..
            } => {
                if readable && !hup {
                    self.unwatch(local.as_raw_fd());
                }
            }
        }
    }

    /// Maps `file` (`size` bytes) into the shared memory region; returns the offset.
    fn map_shm(
        &self,
        inner: &mut Inner,
        file: &File,
        size: u64,
        writable: bool,
    ) -> Result<u64, u32> {
        let Some(backend) = inner.backend.clone() else {
            warn!("wl: no backend request channel (needs VHOST_USER_PROTOCOL_F_BACKEND_REQ and _SHMEM)");
            return Err(RESP_ERR);
        };
        let offset = inner.shm.alloc(size).ok_or(RESP_OUT_OF_MEMORY)?;
        let len = (size + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        let flags = if writable {
            VhostUserMMapFlags::WRITABLE.bits()
        } else {
            0
        };
        let req = VhostUserMMap {
            shmid: SHMID,
            fd_offset: 0,
            shm_offset: offset,
            len,
            flags,
            ..Default::default()
        };
        if let Err(e) = backend.shmem_map(&req, file) {
            warn!("wl: SHMEM_MAP of {len} bytes at {offset:#x} failed: {e}");
            inner.shm.free(offset);
            return Err(RESP_ERR);
        }
        Ok(offset)
    }

    /// Executes one guest command; returns the response bytes.
    pub fn handle_command(&self, cmd: &[u8]) -> Vec<u8> {
        let mut inner = self.lock();
        self.command(&mut inner, cmd)
    }

    fn command(&self, inner: &mut Inner, cmd: &[u8]) -> Vec<u8> {
        let c = match parse_command(cmd) {
            Ok(c) => c,
            Err(e) => {
                warn!("wl: bad command: {e}");
                return hdr(RESP_INVALID_CMD);
            }
        };
        let guest_id_ok =
            |inner: &Inner, id: u32| id < HOST_ID_BASE && !inner.vfds.contains_key(&id);
        match c {
            Command::NewCtx { id, name } => {
                if !guest_id_ok(inner, id) {
                    warn!("wl: VFD_NEW_CTX with unusable id {id}");
                    return hdr(RESP_INVALID_ID);
                }
                // One compositor socket: named contexts must name it (or the default).
                let own = self.cfg.wayland_sock.file_name().and_then(|n| n.to_str());
                if !(name.is_empty() || name == "wayland-0" || Some(name.as_str()) == own) {
                    warn!("wl: unknown named context `{name}`");
                    return hdr(RESP_ERR);
                }
                let path = self.cfg.wayland_sock.clone();
                let sock = match UnixStream::connect(&path)
                    .and_then(|s| set_nonblocking(s.as_raw_fd()).map(|_| s))
                {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(
                            "wl: connecting to the compositor at {}: {e}",
                            path.display()
                        );
                        return hdr(RESP_ERR);
                    }
                };
                self.watch(inner, id, sock.as_raw_fd());
                inner.vfds.insert(id, Vfd::Ctx { sock, hup: false });
                let flags = if inner.trans_flags {
                    VFD_READ | VFD_WRITE
                } else {
                    VFD_CONTROL
                };
                vfd_new(RESP_VFD_NEW, id, flags, 0, 0)
            }
            Command::New { id, flags, size } => {
                if !guest_id_ok(inner, id) {
                    warn!("wl: VFD_NEW with unusable id {id}");
                    return hdr(RESP_INVALID_ID);
                }
                if size == 0 || size as u64 > self.cfg.shm_size {
                    warn!("wl: VFD_NEW of {size} bytes");
                    return hdr(RESP_INVALID_FLAGS);
                }
                let file = match memfd(size as u64) {
                    Ok(f) => f,
                    Err(e) => {
                        warn!("wl: memfd of {size} bytes: {e}");
                        return hdr(RESP_OUT_OF_MEMORY);
                    }
                };
                let offset = match self.map_shm(inner, &file, size as u64, true) {
                    Ok(o) => o,
                    Err(code) => return hdr(code),
                };
                let len = (size as u64 + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
                inner.vfds.insert(
                    id,
                    Vfd::Shm {
                        file,
                        offset,
                        size: len,
                    },
                );
                let flags = if inner.trans_flags {
                    VFD_READ | VFD_WRITE
                } else {
                    VFD_MAP | VFD_WRITE
                } & (flags | VFD_MAP | VFD_READ);
                vfd_new(RESP_VFD_NEW, id, flags, offset / PAGE_SIZE, size)
            }
            Command::Close { id } => match inner.vfds.remove(&id) {
                Some(v) => {
                    self.drop_vfd(inner, v);
                    hdr(RESP_OK)
                }
                None => {
                    warn!("wl: VFD_CLOSE of unknown VFD {id}");
                    hdr(RESP_INVALID_ID)
                }
            },
            Command::NewPipe { id, flags } => self.new_pipe(inner, id, flags),
            Command::Send { id, vfds, data } => {
                let mut fds = Vec::with_capacity(vfds.len());
                for v in &vfds {
                    match inner.vfds.get(v).map(|x| x.send_fd()) {
                        Some(Some(fd)) => fds.push(fd),
                        Some(None) => {
                            warn!("wl: VFD_SEND of pipe {v} whose other end was already sent");
                            return hdr(RESP_INVALID_ID);
                        }
                        None => {
                            warn!("wl: VFD_SEND references unknown VFD {v}");
                            return hdr(RESP_INVALID_ID);
                        }
                    }
                }
                let res = match inner.vfds.get(&id) {
                    Some(Vfd::Ctx { sock, .. }) => send_all(sock, data, &fds),
                    Some(Vfd::Pipe {
                        local,
                        readable: false,
                        ..
                    }) if fds.is_empty() => write_all_bounded(local, data),
                    Some(_) => {
                        warn!("wl: VFD_SEND to VFD {id}, which is no context or writable pipe");
                        return hdr(RESP_INVALID_TYPE);
                    }
                    None => {
                        warn!("wl: VFD_SEND to unknown VFD {id}");
                        return hdr(RESP_INVALID_ID);
                    }
                };
                match res {
                    Ok(()) => {
                        // The compositor holds the far ends of the pipes it received now.
                        for v in &vfds {
                            if let Some(Vfd::Pipe { remote, .. }) = inner.vfds.get_mut(v) {
                                *remote = None;
                            }
                        }
                        hdr(RESP_OK)
                    }
                    Err(e) => {
                        warn!("wl: sending on VFD {id}: {e}");
                        hdr(RESP_ERR)
                    }
                }
            }
            Command::Unsupported(code) => {
                warn!("wl: command {code} (dmabuf/foreign ids) not supported");
                hdr(RESP_INVALID_CMD)
            }
        }
    }

    /// VFD_NEW_PIPE: a non-blocking pipe; the guest's end stays here.
    fn new_pipe(&self, inner: &mut Inner, id: u32, flags: u32) -> Vec<u8> {
        if id >= HOST_ID_BASE || inner.vfds.contains_key(&id) {
            warn!("wl: VFD_NEW_PIPE with unusable id {id}");
            return hdr(RESP_INVALID_ID);
        }
        let readable = match flags & (VFD_READ | VFD_WRITE) {
            VFD_READ => true,
            VFD_WRITE => false,
            _ => {
                warn!("wl: VFD_NEW_PIPE flags {flags:#x}: exactly one of READ or WRITE");
                return hdr(RESP_INVALID_FLAGS);
            }
        };
        let mut fds = [-1 as RawFd; 2];
        // SAFETY: pipe2 writes two fds into the array; the result is checked.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
            warn!("wl: pipe2: {}", io::Error::last_os_error());
            return hdr(RESP_OUT_OF_MEMORY);
        }
        // SAFETY: two fresh fds we own.
        let (r, w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let (local, remote) = if readable { (r, w) } else { (w, r) };
        if readable {
            self.watch(inner, id, local.as_raw_fd());
        }
        inner.vfds.insert(
            id,
            Vfd::Pipe {
                local,
                remote: Some(remote),
                readable,
                hup: false,
            },
        );
        vfd_new(RESP_VFD_NEW, id, flags & (VFD_READ | VFD_WRITE), 0, 0)
    }

    /// Reads what the compositor (or a received pipe) sent on VFD `id` into pending
    /// in-queue messages: one `VFD_NEW` per received fd, then a `VFD_RECV`, or a `VFD_HUP`.
    fn read_vfd(&self, inner: &mut Inner, id: u32) {
        let mut buf = vec![0u8; IN_BUFFER_LEN];
        let mut fds = [-1 as RawFd; MAX_SEND_VFDS];
        let res: io::Result<(usize, usize)> = match inner.vfds.get(&id) {
            Some(Vfd::Ctx { sock, hup: false }) => {
                let mut iov = [libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                }];
                // SAFETY: the iovec points at our live buffer of the stated length.
                unsafe { sock.recv_with_fds(&mut iov, &mut fds) }
                    .map_err(|e| io::Error::from_raw_os_error(e.errno()))
            }
            Some(Vfd::Other { file, hup: false })
            | Some(Vfd::Pipe {
                local: file,
                readable: true,
                hup: false,
                ..
            }) => (&*file).read(&mut buf).map(|n| (n, 0)),
            _ => return,
        };
        let (n, nfds) = match res {
            Ok(v) => v,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                return
            }
            Err(e) => {
                debug!("wl: reading VFD {id}: {e}");
                (0, 0)
            }
        };
        // SAFETY: recvmsg gave us ownership of the first `nfds` descriptors.
        let files: Vec<File> = fds[..nfds.min(MAX_SEND_VFDS)]
            .iter()
            .map(|&fd| unsafe { File::from_raw_fd(fd) })
            .collect();
        if n == 0 && files.is_empty() {
            if let Some(Vfd::Ctx { hup, sock }) = inner.vfds.get_mut(&id) {
                *hup = true;
                let fd = sock.as_raw_fd();
                self.unwatch(fd);
            } else if let Some(Vfd::Other { hup, file })
            | Some(Vfd::Pipe {
                hup, local: file, ..
            }) = inner.vfds.get_mut(&id)
            {
                *hup = true;
                let fd = file.as_raw_fd();
                self.unwatch(fd);
            }
            inner.pending_in.push_back(vfd_msg(CMD_VFD_HUP, id));
            return;
        }
        let mut ids = Vec::new();
        for f in files {
            let new_id = inner.next_host_id;
            inner.next_host_id = inner.next_host_id.wrapping_add(1).max(HOST_ID_BASE);
            let meta = match f.metadata() {
                Ok(m) => m,
                Err(e) => {
                    warn!("wl: fstat of a received fd: {e}");
                    continue;
                }
            };
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_file() {
                // Shared memory from the compositor (keymaps...): map it for the guest.
                // SAFETY: F_GETFL on our own fd.
                let mode = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) } & libc::O_ACCMODE;
                let writable = mode == libc::O_RDWR;
                let size = meta.len();
                if size == 0 || size > self.cfg.shm_size {
                    warn!("wl: received shared memory of {size} bytes, not forwarded");
                    continue;
                }
                match self.map_shm(inner, &f, size, writable) {
                    Ok(offset) => {
                        let len = (size + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
                        let flags = if inner.trans_flags {
                            VFD_READ | if writable { VFD_WRITE } else { 0 }
                        } else {
                            VFD_MAP | if writable { VFD_WRITE } else { 0 }
                        };
                        inner.pending_in.push_back(vfd_new(
                            CMD_VFD_NEW,
                            new_id,
                            flags,
                            offset / PAGE_SIZE,
                            size as u32,
                        ));
                        inner.vfds.insert(
                            new_id,
                            Vfd::Shm {
                                file: f,
                                offset,
                                size: len,
                            },
                        );
                        ids.push(new_id);
                    }
                    Err(_) => continue,
                }
            } else if meta.file_type().is_fifo() || meta.file_type().is_socket() {
                // SAFETY: O_NONBLOCK on our own fd.
                unsafe {
                    let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                    libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
                }
                let flags = if inner.trans_flags { VFD_READ } else { 0 };
                inner
                    .pending_in
                    .push_back(vfd_new(CMD_VFD_NEW, new_id, flags, 0, 0));
                self.watch(inner, new_id, f.as_raw_fd());
                inner.vfds.insert(
                    new_id,
                    Vfd::Other {
                        file: f,
                        hup: false,
                    },
                );
                ids.push(new_id);
            } else {
                warn!("wl: received an fd of unsupported type, dropped");
            }
        }
        inner.pending_in.push_back(vfd_recv(id, &ids, &buf[..n]));
    }

    /// Drives queues and host fds: the body of `handle_event`.
    pub fn process(&self, event: u16, vrings: &[VringRwLock]) -> io::Result<()> {
        let mut inner = self.lock();
        let Some(mem) = inner.mem.clone() else {
            return Ok(());
        };
        let mem = mem.memory();
        if vrings.len() < NUM_QUEUES {
            return Ok(());
        }
        match event {
            OUT_QUEUE => self.process_out(&mut inner, &mem, &vrings[OUT_QUEUE as usize])?,
            IN_QUEUE => {}
            HOST_EVENT => {
                let mut events = [EpollEvent::default(); 32];
                let n = match self.epoll.wait(0, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                    Err(e) => return Err(e),
                };
                for ev in &events[..n] {
                    if inner.pending_in.len() >= MAX_PENDING_IN {
                        break;
                    }
                    self.read_vfd(&mut inner, ev.data() as u32);
                }
            }
            other => {
                warn!("wl: unexpected event {other}");
                return Ok(());
            }
        }
        self.process_in(&mut inner, &mem, &vrings[IN_QUEUE as usize])?;
        let blocked = inner.pending_in.len() >= MAX_PENDING_IN;
        self.set_reading(&mut inner, !blocked);
        Ok(())
    }

    fn process_out(&self, inner: &mut Inner, mem: &Guard, vring: &VringRwLock) -> io::Result<()> {
        let mut used_any = false;
        loop {
            if inner.event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let mut written = 0u32;
                match (
                    virtio_queue::Reader::new(&**mem, chain.clone()),
                    virtio_queue::Writer::new(&**mem, chain),
                ) {
                    (Ok(mut r), Ok(mut w)) => {
                        let n = r.available_bytes().min(MAX_CMD_LEN);
                        let mut cmd = vec![0u8; n];
                        let resp = if r.read_exact(&mut cmd).is_err() {
                            hdr(RESP_INVALID_CMD)
                        } else {
                            self.command(inner, &cmd)
                        };
                        if w.available_bytes() < resp.len() || w.write_all(&resp).is_err() {
                            warn!(
                                "wl: response buffer too small ({} bytes)",
                                w.available_bytes()
                            );
                        } else {
                            written = resp.len() as u32;
                        }
                    }
                    (Err(e), _) | (_, Err(e)) => warn!("wl: bad out-queue descriptor chain: {e}"),
                }
                vring.add_used(head, written).map_err(io::Error::other)?;
                used_any = true;
            }
            if !inner.event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        if used_any && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    fn process_in(&self, inner: &mut Inner, mem: &Guard, vring: &VringRwLock) -> io::Result<()> {
        let mut used_any = false;
        'outer: loop {
            if inner.event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            while !inner.pending_in.is_empty() {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone());
                let Some(chain) = chain else {
                    if inner.event_idx && vring.enable_notification().map_err(io::Error::other)? {
                        continue 'outer;
                    }
                    break 'outer;
                };
                let head = chain.head_index();
                let msg = inner.pending_in.pop_front().unwrap_or_default();
                let mut written = 0;
                match virtio_queue::Writer::new(&**mem, chain) {
                    Ok(mut w) if w.available_bytes() >= msg.len() => {
                        if w.write_all(&msg).is_ok() {
                            written = msg.len() as u32;
                        }
                    }
                    Ok(w) => error!(
                        "wl: in-queue buffer of {} bytes < message of {}; message lost",
                        w.available_bytes(),
                        msg.len()
                    ),
                    Err(e) => warn!("wl: bad in-queue descriptor chain: {e}"),
                }
                vring.add_used(head, written).map_err(io::Error::other)?;
                used_any = true;
            }
            if !inner.event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                break;
            }
        }
        if used_any && vring.needs_notification().map_err(io::Error::other)? {
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}

impl VhostUserBackend for WlDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        cordon_backends::virtio::BASE_FEATURES | (1 << F_TRANS_FLAGS) | (1 << F_USE_SHMEM)
    }

    fn acked_features(&self, features: u64) {
        self.lock().trans_flags = features & (1 << F_TRANS_FLAGS) != 0;
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::SHMEM
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, enabled: bool) {
        self.lock().event_idx = enabled;
    }

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        self.lock().mem = Some(mem);
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        self.lock().backend = Some(backend);
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        Ok(VhostUserShMemConfig::new(1, &[self.cfg.shm_size]))
    }

    fn reset_device(&self) {
        let mut inner = self.lock();
        let vfds: Vec<Vfd> = inner.vfds.drain().map(|(_, v)| v).collect();
        for v in vfds {
            self.drop_vfd(&mut inner, v);
        }
        inner.shm.clear();
        inner.pending_in.clear();
        inner.next_host_id = HOST_ID_BASE;
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread: usize,
    ) -> io::Result<()> {
        if let Err(e) = self.process(device_event, vrings) {
            error!("wl: processing failed: {e}");
        }
        Ok(())
    }
}

impl cordon_backends::Backend for WlDevice {
    fn connected(
        &self,
        workers: Vec<std::sync::Arc<dyn cordon_backends::EventRegistrar>>,
    ) -> io::Result<()> {
        let w = workers
            .first()
            .ok_or_else(|| io::Error::other("no vring worker"))?;
        w.register(self.host_event_fd(), EventSet::IN, HOST_EVENT as u64)
    }

    fn disconnected(&self) {
        self.reset_device();
        let mut inner = self.lock();
        inner.backend = None;
        inner.mem = None;
    }
}

/// Sets O_NONBLOCK with fcntl (std's `set_nonblocking` uses the FIONBIO ioctl, which the
/// seccomp policy does not allow).
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a caller-owned fd; results checked.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A sealed-size memfd of `size` bytes.
fn memfd(size: u64) -> io::Result<File> {
    // SAFETY: the name is a valid NUL-terminated string; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"cordon-wl".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size)?;
    // SAFETY: fcntl on our own fd: forbid shrinking so mappings stay valid.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    Ok(f)
}

/// Writes `data` to a non-blocking pipe, waiting (at most 1 s in all) for room.
fn write_all_bounded(f: &File, data: &[u8]) -> io::Result<()> {
    let mut off = 0;
    let mut waited = 0;
    while off < data.len() {
        match (&*f).write(&data[off..]) {
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && waited < 20 => {
                let mut p = libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 50) };
                waited += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends `data` and `fds` on a non-blocking socket, waiting (bounded) for room.
fn send_all(sock: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut off = 0;
    let mut first = true;
    let mut waited = 0;
    while off < data.len() || first {
        let r = if first {
            sock.send_with_fds(&[&data[off..]], fds)
                .map_err(|e| io::Error::from_raw_os_error(e.errno()))
        } else {
            (&*sock).write(&data[off..])
        };
        match r {
            Ok(n) => {
                off += n;
                first = false;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if waited >= 20 {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "compositor socket full for 1 s",
                    ));
                }
                let mut p = libc::pollfd {
                    fd: sock.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 50) };
                waited += 1;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
