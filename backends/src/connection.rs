//! How a backend meets its frontend: `--socket-path PATH` (bind and listen) or `--fd N` (an
//! already connected socket, e.g. from socket activation or a container runtime).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use clap::Args;

/// Where the frontend comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Bind a Unix socket at this path and accept frontends on it, one at a time.
    SocketPath(PathBuf),
    /// Serve the single, already connected socket with this file descriptor number.
    Fd(RawFd),
}

/// crosvm-compatible connection flags shared by every `<kind>-device` binary.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnectionArgs {
    /// Path of the vhost-user socket to create and listen on (exactly one of --socket-path, --fd).
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<PathBuf>,
    /// Already connected vhost-user socket file descriptor to serve (exactly one of --socket-path, --fd).
    #[arg(long, value_name = "N")]
    pub fd: Option<RawFd>,
    /// PCI address of a virtio-vhost-user device (VVU); not supported yet.
    #[arg(long, value_name = "PCI_ADDR")]
    pub vfio: Option<String>,
}

/// Error from choosing or opening the connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Neither or more than one of the connection flags was given.
    #[error("exactly one of --socket-path PATH or --fd N is required (got {0})")]
    NotExactlyOne(&'static str),
    /// VVU was selected.
    #[error("virtio-vhost-user (VVU, PCI address `{0}`) is not supported yet; use a socket path")]
    VvuUnsupported(String),
    /// The fd number is not an open socket.
    #[error("--fd {fd}: not an open Unix stream socket: {source}")]
    BadFd {
        /// The rejected fd.
        fd: RawFd,
        /// Why.
        source: io::Error,
    },
    /// Binding the listening socket failed.
    #[error("cannot listen on socket `{path}`: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

impl ConnectionArgs {
    /// Validates the flags: exactly one of `--socket-path` and `--fd`; `--vfio` is refused.
    pub fn connection(&self) -> Result<Connection, ConnectionError> {
        if let Some(pci) = &self.vfio {
            return Err(ConnectionError::VvuUnsupported(pci.clone()));
        }
        match (&self.socket_path, self.fd) {
            (Some(p), None) => Ok(Connection::SocketPath(p.clone())),
            (None, Some(fd)) => Ok(Connection::Fd(fd)),
            (None, None) => Err(ConnectionError::NotExactlyOne("neither")),
            (Some(_), Some(_)) => Err(ConnectionError::NotExactlyOne("both")),
        }
    }
}

/// Returns true when `s` looks like a PCI address (`0000:00:10.0` or `00:10.0`), i.e. VVU.
pub fn is_pci_address(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    let (bus_dev, func_ok) = match parts.as_slice() {
        [dom, bus, devfn] if dom.len() == 4 && is_hex(dom) => (Some((*bus, *devfn)), true),
        [bus, devfn] => (Some((*bus, *devfn)), true),
        _ => (None, false),
    };
    let Some((bus, devfn)) = bus_dev else {
        return false;
    };
    let Some((dev, func)) = devfn.split_once('.') else {
        return false;
    };
    func_ok
        && bus.len() == 2
        && is_hex(bus)
        && dev.len() == 2
        && is_hex(dev)
        && func.len() == 1
        && is_hex(func)
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// An opened connection, ready to serve (created before the process enters its jail).
#[derive(Debug)]
pub enum Endpoint {
    /// A listening socket; `remove` is the socket file to unlink when done.
    Listener {
        /// The bound, listening socket.
        listener: UnixListener,
        /// Socket file created by us, removed when this guard drops.
        remove: Option<RemoveOnDrop>,
    },
    /// A single connected stream.
    Stream(UnixStream),
}

impl Endpoint {
    /// Opens `conn`: binds (replacing a stale socket file) or adopts the fd.
    pub fn open(conn: &Connection) -> Result<Self, ConnectionError> {
        match conn {
            Connection::SocketPath(path) => Self::listen(path),
            Connection::Fd(fd) => Self::adopt_fd(*fd),
        }
    }

    /// Binds and listens on `path`, unlinking a stale socket file first (never a non-socket).
    pub fn listen(path: &Path) -> Result<Self, ConnectionError> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let listener = UnixListener::bind(path).map_err(|source| ConnectionError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Endpoint::Listener {
            listener,
            remove: Some(RemoveOnDrop::new(path)),
        })
    }

    /// Adopts an inherited, connected socket fd after checking that it is a Unix stream socket.
    pub fn adopt_fd(fd: RawFd) -> Result<Self, ConnectionError> {
        let bad = |source| ConnectionError::BadFd { fd, source };
        if fd < 0 {
            return Err(bad(io::Error::from_raw_os_error(libc::EBADF)));
        }
        let mut ty: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `ty`, which is a valid c_int.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                &mut ty as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return Err(bad(io::Error::last_os_error()));
        }
        if ty != libc::SOCK_STREAM {
            return Err(bad(io::Error::from_raw_os_error(libc::ENOTSOCK)));
        }
        let mut dom: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: as above, with SO_DOMAIN.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
                &mut dom as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 || dom != libc::AF_UNIX {
            return Err(bad(io::Error::from_raw_os_error(libc::ENOTSOCK)));
        }
        // SAFETY: the fd was checked to be an open Unix stream socket; we take ownership of it
        // as the user asked us to serve it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Make sure it is not inherited by anything we might exec.
        // SAFETY: fcntl on a valid fd.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        Ok(Endpoint::Stream(UnixStream::from(owned)))
    }
}

/// Removes a socket file we created when dropped (or on [`remove`](Self::remove)).
///
/// Holds an `O_PATH` descriptor of the socket's directory, opened before the jail, so the
/// file can still be unlinked from inside the jail, where the path is not visible.
#[derive(Debug)]
pub struct RemoveOnDrop {
    path: PathBuf,
    dir: Option<OwnedFd>,
    name: std::ffi::CString,
    done: std::sync::atomic::AtomicBool,
}

impl RemoveOnDrop {
    /// Guards the socket file at `path`.
    pub fn new(path: &Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = std::ffi::CString::new(parent.as_os_str().as_bytes())
            .ok()
            .and_then(|c| {
                // SAFETY: open with a valid NUL-terminated path.
                let fd = unsafe {
                    libc::open(
                        c.as_ptr(),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    )
                };
                // SAFETY: a non-negative fd was just returned to us.
                (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
            });
        let name = path
            .file_name()
            .and_then(|n| std::ffi::CString::new(n.as_bytes()).ok())
            .unwrap_or_default();
        RemoveOnDrop {
            path: path.to_path_buf(),
            dir,
            name,
            done: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The directory descriptor used for the removal, if it could be opened.
    pub fn dir_fd(&self) -> Option<RawFd> {
        use std::os::fd::AsRawFd;
        self.dir.as_ref().map(|d| d.as_raw_fd())
    }

    /// The guarded path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unlinks the socket file now (once).
    pub fn remove(&self) {
        use std::os::fd::AsRawFd;
        if self.done.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        match &self.dir {
            // SAFETY: unlinkat with a valid directory fd and NUL-terminated name.
            Some(dir) if !self.name.as_bytes().is_empty() => unsafe {
                libc::unlinkat(dir.as_raw_fd(), self.name.as_ptr(), 0);
            },
            _ => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_connection_flag() {
        let mut a = ConnectionArgs::default();
        assert!(matches!(
            a.connection(),
            Err(ConnectionError::NotExactlyOne("neither"))
        ));
        a.socket_path = Some("/tmp/x".into());
        assert_eq!(
            a.connection().unwrap(),
            Connection::SocketPath("/tmp/x".into())
        );
        a.fd = Some(3);
        assert!(matches!(
            a.connection(),
            Err(ConnectionError::NotExactlyOne("both"))
        ));
        a.socket_path = None;
        assert_eq!(a.connection().unwrap(), Connection::Fd(3));
        a.vfio = Some("0000:00:10.0".into());
        assert!(a
            .connection()
            .unwrap_err()
            .to_string()
            .contains("not supported yet"));
    }

    #[test]
    fn pci_addresses() {
        assert!(is_pci_address("0000:00:10.0"));
        assert!(is_pci_address("00:1f.7"));
        assert!(!is_pci_address("/tmp/vu.sock"));
        assert!(!is_pci_address("sock:00:10.0"));
        assert!(!is_pci_address("00:10"));
    }

    #[test]
    fn adopt_fd_rejects_non_sockets() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsRawFd;
        let err = Endpoint::adopt_fd(f.as_raw_fd()).unwrap_err().to_string();
        assert!(err.contains("--fd"), "{err}");
        assert!(Endpoint::adopt_fd(-1).is_err());
    }

    #[test]
    fn listen_removes_socket_file_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let ep = Endpoint::listen(&p).unwrap();
        assert!(p.exists());
        drop(ep);
        assert!(!p.exists());
    }
}
