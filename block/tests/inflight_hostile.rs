//! Hostile GET_INFLIGHT_FD / SET_INFLIGHT_FD messages against the real, jailed
//! `block-device`: malformed messages end the connection, bad regions are refused with a
//! NACK, nothing panics, and an honest frontend is served afterwards.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cordon_frontend::vhost_user::{DriverConfig, VhostUserDriver};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const T: Duration = Duration::from_secs(10);
const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const SET_OWNER: u32 = 3;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_QUEUE_NUM: u32 = 17;
const GET_INFLIGHT_FD: u32 = 31;
const SET_INFLIGHT_FD: u32 = 32;
const NEED_REPLY: u32 = 0x8;
const PF_MQ: u64 = 1;
const PF_REPLY_ACK: u64 = 1 << 3;
const PF_INFLIGHT: u64 = 1 << 12;

struct Device {
    child: Child,
    sock: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Device {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::write(&img, vec![0x5a; 1 << 20]).unwrap();
        let sock = dir.path().join("blk.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_block-device"))
            .args(["--socket-path", sock.to_str().unwrap()])
            .arg("--file")
            .arg(&img)
            .stderr(if std::env::var_os("HOSTILE_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap();
        Device {
            child,
            sock,
            _dir: dir,
        }
    }

    /// Alive, and an honest frontend reads the image.
    fn still_serves(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "backend died");
        let mut d = VhostUserDriver::connect(&self.sock, DriverConfig::new(1)).unwrap();
        let mut h = [0u8; 16];
        h[8..16].copy_from_slice(&3u64.to_le_bytes());
        let c = d.request(0, &[&h], &[512, 1], T).unwrap();
        assert_eq!((c.written[1][0], c.written[0][0]), (0, 0x5a));
        assert!(self.child.try_wait().unwrap().is_none(), "backend died");
    }

    /// A raw connection that negotiated INFLIGHT_SHMFD and REPLY_ACK.
    fn negotiated(&self) -> UnixStream {
        let mut s = None;
        for _ in 0..500 {
            if let Ok(c) = UnixStream::connect(&self.sock) {
                s = Some(c);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = s.expect("connect");
        s.set_read_timeout(Some(T)).unwrap();
        send(&s, SET_OWNER, 0, &[], &[]);
        send(&s, GET_FEATURES, 0, &[], &[]);
        let (_, f, _) = recv(&s).expect("GET_FEATURES reply");
        send(&s, SET_FEATURES, 0, &f, &[]);
        send(&s, GET_PROTOCOL_FEATURES, 0, &[], &[]);
        let (_, pf, _) = recv(&s).expect("GET_PROTOCOL_FEATURES reply");
        let offered = u64::from_le_bytes(pf[..8].try_into().unwrap());
        assert_ne!(offered & PF_INFLIGHT, 0, "block offers INFLIGHT_SHMFD");
        send(
            &s,
            SET_PROTOCOL_FEATURES,
            0,
            &(PF_INFLIGHT | PF_REPLY_ACK | PF_MQ).to_le_bytes(),
            &[],
        );
        // A round trip, so the messages above were handled.
        send(&s, GET_QUEUE_NUM, 0, &[], &[]);
        recv(&s).expect("GET_QUEUE_NUM reply");
        s
    }
}

fn send(s: &UnixStream, req: u32, flags: u32, payload: &[u8], fds: &[RawFd]) {
    let mut msg = Vec::new();
    msg.extend_from_slice(&req.to_le_bytes());
    msg.extend_from_slice(&(1 | flags).to_le_bytes());
    msg.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    msg.extend_from_slice(payload);
    if fds.is_empty() {
        (&*s).write_all(&msg).unwrap();
    } else {
        s.send_with_fds(&[&msg[..]], fds).unwrap();
    }
}

/// One reply (header, payload, fds), or None when the backend closed the connection.
fn recv(s: &UnixStream) -> Option<(Vec<u8>, Vec<u8>, Vec<OwnedFd>)> {
    let mut hdr = [0u8; 12];
    let mut fds = [0 as RawFd; 4];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr() as *mut libc::c_void,
        iov_len: hdr.len(),
    }];
    // SAFETY: the kernel installs at most `fds.len()` descriptors, which we own afterwards.
    let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut fds) }.ok()?;
    if n < 12 {
        return None;
    }
    let owned = fds[..nfds]
        .iter()
        // SAFETY: received descriptors are ours.
        .map(|&f| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(f) })
        .collect();
    let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()) as usize;
    let mut payload = vec![0u8; size];
    (&*s).read_exact(&mut payload).ok()?;
    Some((hdr.to_vec(), payload, owned))
}

fn inflight(size: u64, offset: u64, nq: u16, qs: u16) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&size.to_le_bytes());
    p[8..16].copy_from_slice(&offset.to_le_bytes());
    p[16..18].copy_from_slice(&nq.to_le_bytes());
    p[18..20].copy_from_slice(&qs.to_le_bytes());
    p
}

/// The backend closes the connection after `req`.
fn closes(dev: &Device, req: u32, payload: &[u8], fds: &[RawFd]) {
    let s = dev.negotiated();
    send(&s, req, 0, payload, fds);
    assert!(recv(&s).is_none(), "request {req} was not refused");
}

/// SET_INFLIGHT_FD is answered with a NACK, and the connection keeps working.
fn nacks(s: &UnixStream, payload: &[u8], fd: RawFd) {
    send(s, SET_INFLIGHT_FD, NEED_REPLY, payload, &[fd]);
    let (_, ack, _) = recv(s).expect("SET_INFLIGHT_FD reply");
    assert_ne!(
        u64::from_le_bytes(ack[..8].try_into().unwrap()),
        0,
        "accepted"
    );
    send(s, GET_QUEUE_NUM, 0, &[], &[]);
    assert!(recv(s).is_some(), "connection ended after a NACK");
}

#[test]
fn hostile_inflight_messages_are_refused_cleanly() {
    let mut dev = Device::start();
    // Malformed GET: counts out of range, wrong payload size, a descriptor attached.
    closes(&dev, GET_INFLIGHT_FD, &inflight(0, 0, 0, 256), &[]);
    closes(&dev, GET_INFLIGHT_FD, &inflight(0, 0, 1, 0), &[]);
    closes(&dev, GET_INFLIGHT_FD, &inflight(0, 0, 1, 60000), &[]);
    closes(&dev, GET_INFLIGHT_FD, &inflight(0, 0, 200, 256), &[]);
    closes(&dev, GET_INFLIGHT_FD, &[0u8; 8], &[]);
    let f = tempfile::tempfile().unwrap();
    closes(
        &dev,
        GET_INFLIGHT_FD,
        &inflight(0, 0, 1, 256),
        &[f.as_raw_fd()],
    );
    // Malformed SET: no descriptor, two descriptors, short payload.
    closes(&dev, SET_INFLIGHT_FD, &inflight(4160, 0, 1, 256), &[]);
    closes(
        &dev,
        SET_INFLIGHT_FD,
        &inflight(4160, 0, 1, 256),
        &[f.as_raw_fd(), f.as_raw_fd()],
    );
    closes(&dev, SET_INFLIGHT_FD, &[1u8; 20], &[f.as_raw_fd()]);
    dev.still_serves();

    // A real region to play with.
    let s = dev.negotiated();
    send(&s, GET_INFLIGHT_FD, 0, &inflight(0, 0, 1, 256), &[]);
    let (_, reply, mut fds) = recv(&s).expect("GET_INFLIGHT_FD reply");
    assert_eq!(u64::from_le_bytes(reply[..8].try_into().unwrap()), 4160);
    assert_eq!(fds.len(), 1);
    let region = fds.remove(0);
    // Bad regions: sizes, offsets, counts, descriptors that are not sealed memfds.
    nacks(&s, &inflight(4159, 0, 1, 256), region.as_raw_fd());
    nacks(&s, &inflight(u64::MAX, 0, 1, 256), region.as_raw_fd());
    nacks(&s, &inflight(4160, 4096, 1, 256), region.as_raw_fd());
    nacks(&s, &inflight(4160, 7, 1, 256), region.as_raw_fd());
    nacks(
        &s,
        &inflight(4160, u64::MAX - 4095, 1, 256),
        region.as_raw_fd(),
    );
    nacks(&s, &inflight(4160, 0, 9, 256), region.as_raw_fd());
    nacks(&s, &inflight(4160, 0, 1, 4096), region.as_raw_fd());
    f.set_len(1 << 20).unwrap();
    nacks(&s, &inflight(4160, 0, 1, 256), f.as_raw_fd());
    let (r, w) = {
        let mut p = [0 as RawFd; 2];
        // SAFETY: pipe writes two descriptors into `p`.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        (p[0], p[1])
    };
    nacks(&s, &inflight(4160, 0, 1, 256), r);
    // SAFETY: closing the pipe we created.
    unsafe {
        libc::close(r);
        libc::close(w);
    }
    // The honest SET is accepted.
    send(
        &s,
        SET_INFLIGHT_FD,
        NEED_REPLY,
        &inflight(4160, 0, 1, 256),
        &[region.as_raw_fd()],
    );
    let (_, ack, _) = recv(&s).expect("SET_INFLIGHT_FD reply");
    assert_eq!(u64::from_le_bytes(ack[..8].try_into().unwrap()), 0);
    drop(s);
    dev.still_serves();
}
