//! TAP devices: created by the backend (before it jails itself) or handed over as an fd.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_MULTI_QUEUE: u16 = 0x0100;
const IFF_VNET_HDR: u16 = 0x4000;

/// `TUN_F_CSUM`: the guest accepts frames with partial checksums.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: the guest accepts TCPv4 segmentation offload frames.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`: the guest accepts TCPv6 segmentation offload frames.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_TSO_ECN`: TSO frames may carry ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// `TUN_F_UFO`: the guest accepts UDP fragmentation offload frames.
pub const TUN_F_UFO: u32 = 0x10;

/// A TAP interface: one fd per queue pair.
#[derive(Debug)]
pub struct Tap {
    fds: Vec<File>,
    name: String,
}

/// A 40-byte `struct ifreq` buffer.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        if name.len() >= 16 || name.is_empty() || name.contains('/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tap-name `{name}` invalid: 1 to 15 characters, no `/`"),
            ));
        }
        let mut r = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(r)
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&c| c == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: callers pass a pointer to a live, correctly sized argument for `req`.
    let rc = unsafe { libc::ioctl(fd, req as _, arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl_val(fd: RawFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: `req` takes an integer argument; no memory is passed.
    let rc = unsafe { libc::ioctl(fd, req as _, arg) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Opens (creating if needed) TAP `name` with `queues` queues and a vnet header.
    pub fn create(name: &str, queues: usize) -> io::Result<Tap> {
        let mut fds = Vec::new();
        let mut real = name.to_string();
        for _ in 0..queues.max(1) {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(|e| io::Error::new(e.kind(), format!("opening /dev/net/tun: {e}")))?;
            let mut req = IfReq::new(&real)?;
            let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
            if queues > 1 {
                flags |= IFF_MULTI_QUEUE;
            }
            req.data[..2].copy_from_slice(&flags.to_ne_bytes());
            ioctl_ptr(f.as_raw_fd(), TUNSETIFF, &mut req)
                .map_err(|e| io::Error::new(e.kind(), format!("TUNSETIFF {real}: {e}")))?;
            real = req.name();
            fds.push(f);
        }
        let tap = Tap { fds, name: real };
        tap.set_vnet_hdr_size(12)?;
        Ok(tap)
    }

    /// Adopts an open TAP fd handed over by a privileged parent (`tap-fd=N`).
    pub fn from_fd(fd: RawFd) -> io::Result<Tap> {
        // SAFETY: F_GETFD on an arbitrary integer only reports whether it is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tap-fd={fd} is not an open fd"),
            ));
        }
        // SAFETY: the fd is open and ownership is transferred to us by the caller's contract.
        let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut req = IfReq {
            name: [0; 16],
            data: [0; 24],
        };
        ioctl_ptr(f.as_raw_fd(), TUNGETIFF, &mut req).map_err(|e| {
            io::Error::new(e.kind(), format!("tap-fd={fd} is not a TAP device: {e}"))
        })?;
        let flags = u16::from_ne_bytes([req.data[0], req.data[1]]);
        if flags & IFF_TAP == 0 || flags & IFF_VNET_HDR == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tap-fd={fd} must be a TAP opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR"),
            ));
        }
        // SAFETY: O_NONBLOCK on our own fd.
        unsafe {
            let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        let tap = Tap {
            fds: vec![f],
            name: req.name(),
        };
        tap.set_vnet_hdr_size(12)?;
        Ok(tap)
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of queue fds.
    pub fn queues(&self) -> usize {
        self.fds.len()
    }

    /// The fd of queue `i`.
    pub fn fd(&self, i: usize) -> RawFd {
        self.fds[i].as_raw_fd()
    }

    /// Sets the vnet header size the kernel expects/produces (10 or 12).
    pub fn set_vnet_hdr_size(&self, size: i32) -> io::Result<()> {
        let mut s = size;
        ioctl_ptr(self.fd(0), TUNSETVNETHDRSZ, &mut s)
    }

    /// Tells the kernel which offloads the guest accepts (`TUN_F_*`).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        for f in &self.fds {
            ioctl_val(f.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong)?;
        }
        Ok(())
    }

    /// Assigns the host-side address and brings the interface up (needs CAP_NET_ADMIN;
    /// done before jailing).
    pub fn configure(&self, ip: Option<Ipv4Addr>, netmask: Option<Ipv4Addr>) -> io::Result<()> {
        // SAFETY: plain syscall; result checked.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd owned here.
        let sock = unsafe { OwnedFd::from_raw_fd(s) };
        let set_addr = |req_no: libc::c_ulong, a: Ipv4Addr| -> io::Result<()> {
            let mut req = IfReq::new(&self.name)?;
            // struct sockaddr_in: family, port, addr.
            req.data[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            req.data[4..8].copy_from_slice(&a.octets());
            ioctl_ptr(sock.as_raw_fd(), req_no, &mut req)
        };
        if let Some(ip) = ip {
            set_addr(libc::SIOCSIFADDR, ip)
                .map_err(|e| io::Error::new(e.kind(), format!("host-ip={ip}: {e}")))?;
        }
        if let Some(m) = netmask {
            set_addr(libc::SIOCSIFNETMASK, m)
                .map_err(|e| io::Error::new(e.kind(), format!("netmask={m}: {e}")))?;
        }
        let mut req = IfReq::new(&self.name)?;
        ioctl_ptr(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
        let mut flags = i16::from_ne_bytes([req.data[0], req.data[1]]);
        flags |= (libc::IFF_UP | libc::IFF_RUNNING) as i16;
        req.data[..2].copy_from_slice(&flags.to_ne_bytes());
        ioctl_ptr(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)
            .map_err(|e| io::Error::new(e.kind(), format!("bringing {} up: {e}", self.name)))?;
        Ok(())
    }
}
