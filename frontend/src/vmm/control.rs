//! The control socket (`cordon run -s PATH`): one request line per connection.
//!
//! Requests: `stop` (the VM ends, `cordon run` exits 0) and `status` (one JSON object:
//! state, uptime, and each device with its backend socket and connection state).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::pci::virtio::VirtioPci;
use crate::vmm::bus::lock;

/// The listening control socket; removed from the filesystem on drop.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    started: Instant,
}

/// What a request asks the VMM to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// End the VM.
    Stop,
    /// Report state (answered by the server itself).
    Status,
}

impl ControlServer {
    /// Binds `path` (fails if it exists and someone is listening; a stale socket file is
    /// replaced).
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another VMM is listening there",
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            started: Instant::now(),
        })
    }

    /// The listening fd (for epoll).
    pub fn fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accepts and serves pending connections; returns `Stop` if one asked for it.
    pub fn serve(&self, devices: &[Arc<Mutex<VirtioPci>>]) -> Option<Request> {
        let mut result = None;
        while let Ok((stream, _)) = self.listener.accept() {
            match self.serve_one(stream, devices) {
                Ok(Some(r)) => result = Some(r),
                Ok(None) => {}
                Err(e) => log::debug!("control connection: {e}"),
            }
        }
        result
    }

    fn serve_one(
        &self,
        stream: UnixStream,
        devices: &[Arc<Mutex<VirtioPci>>],
    ) -> std::io::Result<Option<Request>> {
        // accept4 does not pass the listener's O_NONBLOCK on: the stream blocks, with
        // timeouts.
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        let mut line = String::new();
        BufReader::new((&stream).take(256)).read_line(&mut line)?;
        let mut out = &stream;
        match line.trim() {
            "stop" => {
                writeln!(out, "{{\"ok\":true}}")?;
                log::info!("control socket: stop requested");
                Ok(Some(Request::Stop))
            }
            "status" => {
                writeln!(out, "{}", self.status_json(devices))?;
                Ok(None)
            }
            other => {
                let msg = serde_json::json!({"ok": false, "error": format!("unknown request {other:?}; accepted: stop, status")});
                writeln!(out, "{msg}")?;
                Ok(None)
            }
        }
    }

    fn status_json(&self, devices: &[Arc<Mutex<VirtioPci>>]) -> String {
        let devs: Vec<serde_json::Value> = devices
            .iter()
            .map(|d| {
                let mut d = lock(d);
                let status = d.status();
                let b = d.backend();
                serde_json::json!({
                    "type": b.kind.name(),
                    "socket": b.socket.display().to_string(),
                    "connected": b.connected(),
                    "reconnects": b.reconnects(),
                    "driver_status": status,
                })
            })
            .collect();
        serde_json::json!({
            "ok": true,
            "state": "running",
            "pid": std::process::id(),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
            "devices": devs,
        })
        .to_string()
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Client side: sends `request` to the VMM at `path` and returns its one-line answer.
pub fn request(path: &Path, request: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{request}")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}
