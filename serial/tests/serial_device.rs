//! The real, jailed `serial-device` binary driven through the vhost-user frontend library.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cordon_frontend::vhost_user::{DriverConfig, VhostUserDriver};

const T: Duration = Duration::from_secs(10);
const RX: usize = 0;
const TX: usize = 1;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], stdin: Stdio, stdout: Stdio) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_serial-device"))
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn serial-device"),
    )
}

fn connect(sock: &Path) -> VhostUserDriver {
    VhostUserDriver::connect(sock, DriverConfig::new(2)).expect("connect")
}

fn send(drv: &mut VhostUserDriver, data: &[u8]) {
    let c = drv.request(TX, &[data], &[], T).unwrap();
    assert_eq!(c.len, 0);
}

fn receive(drv: &mut VhostUserDriver, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let deadline = Instant::now() + T;
    while got.len() < want && Instant::now() < deadline {
        let c = drv.request(RX, &[], &[want - got.len()], T).unwrap();
        got.extend_from_slice(&c.written[0][..c.len as usize]);
    }
    got
}

fn wait_file(path: &Path, want: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + T;
    loop {
        let data = std::fs::read(path).unwrap_or_default();
        if data.len() >= want.len() || Instant::now() > deadline {
            return data;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn output_reaches_stdout_and_stdin_reaches_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let mut d = spawn(
        &["--socket-path", sock.to_str().unwrap(), "--stdin"],
        Stdio::piped(),
        Stdio::piped(),
    );
    let mut drv = connect(&sock);
    send(&mut drv, b"hello from the guest\n");
    let mut out = d.0.stdout.take().unwrap();
    let mut buf = vec![0u8; 21];
    out.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello from the guest\n");
    let mut input = d.0.stdin.take().unwrap();
    input.write_all(b"typed on the host").unwrap();
    input.flush().unwrap();
    assert_eq!(receive(&mut drv, 17), b"typed on the host");
}

#[test]
fn output_file_and_input_file() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let out = dir.path().join("out.log");
    let inp = dir.path().join("in.txt");
    std::fs::write(&inp, b"file input\n").unwrap();
    let port = format!("type=file,path={},input={}", out.display(), inp.display());
    let _d = spawn(
        &["--socket-path", sock.to_str().unwrap(), "--port", &port],
        Stdio::null(),
        Stdio::null(),
    );
    let mut drv = connect(&sock);
    send(&mut drv, b"to the file");
    send(&mut drv, b" and more");
    assert_eq!(
        wait_file(&out, b"to the file and more"),
        b"to the file and more"
    );
    assert_eq!(receive(&mut drv, 11), b"file input\n");
}

#[test]
fn output_reaches_a_unix_datagram_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let peer_path = dir.path().join("peer.sock");
    let peer = UnixDatagram::bind(&peer_path).unwrap();
    peer.set_read_timeout(Some(T)).unwrap();
    let port = format!("type=unix,path={}", peer_path.display());
    let _d = spawn(
        &["--socket-path", sock.to_str().unwrap(), "--port", &port],
        Stdio::null(),
        Stdio::null(),
    );
    let mut drv = connect(&sock);
    send(&mut drv, b"datagram out");
    let mut buf = [0u8; 64];
    let n = peer.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"datagram out");
}

#[test]
fn unix_stream_is_bidirectional() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let peer_path = dir.path().join("peer.sock");
    let listener = UnixListener::bind(&peer_path).unwrap();
    let port = format!("type=unix-stream,path={}", peer_path.display());
    let _d = spawn(
        &["--socket-path", sock.to_str().unwrap(), "--port", &port],
        Stdio::null(),
        Stdio::null(),
    );
    let (mut peer, _) = listener.accept().unwrap();
    peer.set_read_timeout(Some(T)).unwrap();
    let mut drv = connect(&sock);
    send(&mut drv, b"ping");
    let mut buf = [0u8; 4];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    peer.write_all(b"pong").unwrap();
    assert_eq!(receive(&mut drv, 4), b"pong");
}

#[test]
fn config_space_reports_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let _d = spawn(
        &["--socket-path", sock.to_str().unwrap()],
        Stdio::null(),
        Stdio::null(),
    );
    let mut drv = connect(&sock);
    let cfg = drv.config(0, 12).unwrap();
    assert_eq!(u32::from_le_bytes(cfg[4..8].try_into().unwrap()), 1);
}

#[test]
fn bad_port_parameters_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_serial-device"))
        .args(["--socket-path", "/tmp/never.sock", "--port", "type=tty"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("type") && err.contains("stdout, stderr, file"),
        "{err}"
    );
}

#[test]
fn config_space_reports_the_terminal_size() {
    let (master, slave) = pty();
    let ws = libc::winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    assert_eq!(
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let _d = spawn(
        &["--socket-path", sock.to_str().unwrap()],
        Stdio::null(),
        Stdio::from(slave),
    );
    let mut drv = VhostUserDriver::connect(&sock, DriverConfig::new(2).with_features(1)).unwrap();
    assert_eq!(drv.features() & 1, 1, "VIRTIO_CONSOLE_F_SIZE offered");
    let cfg = drv.config(0, 4).unwrap();
    assert_eq!(u16::from_le_bytes([cfg[0], cfg[1]]), 100);
    assert_eq!(u16::from_le_bytes([cfg[2], cfg[3]]), 40);
}

/// A pty pair as files: (master, slave).
fn pty() -> (std::fs::File, std::fs::File) {
    let (m, s) = cordon_backends::terminal::openpty().expect("openpty");
    (std::fs::File::from(m), std::fs::File::from(s))
}

/// `c_lflag` of the pty whose master is `fd` (Linux reports the slave's settings).
fn pty_lflag(fd: i32) -> libc::tcflag_t {
    cordon_backends::terminal::local_flags(fd).expect("tcgetattr")
}

#[test]
fn a_terminal_on_stdin_is_raw_while_serving_and_restored_after() {
    let (mut master, slave) = pty();
    let before = pty_lflag(master.as_raw_fd());
    assert_ne!(before & libc::ICANON, 0, "a fresh pty is line-buffered");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let out = dir.path().join("out.log");
    let mut d = spawn(
        &[
            "--socket-path",
            sock.to_str().unwrap(),
            "--stdin",
            "--output-file",
            out.to_str().unwrap(),
        ],
        Stdio::from(slave.try_clone().unwrap()),
        Stdio::null(),
    );
    let mut drv = connect(&sock);
    let raw = pty_lflag(master.as_raw_fd());
    assert_eq!(
        raw & (libc::ICANON | libc::ECHO | libc::ISIG),
        0,
        "raw input while serving"
    );
    // A key reaches the guest at once, without a newline, and ^C is a byte, not a signal.
    master.write_all(b"q\x03").unwrap();
    assert_eq!(receive(&mut drv, 2), b"q\x03");
    drop(drv);
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) }, 0);
    let status = d.0.wait().unwrap();
    assert!(status.success(), "serial-device exited {status}");
    assert_eq!(
        pty_lflag(master.as_raw_fd()),
        before,
        "terminal settings restored at exit"
    );
    drop(slave);
}
