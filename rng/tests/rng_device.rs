//! The real `rng-device` binary, jailed, driven through the vhost-user frontend library.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cordon_frontend::vhost_user::{DriverConfig, VhostUserConnection, VhostUserDriver};

const T: Duration = Duration::from_secs(10);

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_rng-device"))
            .args(args)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rng-device"),
    )
}

fn entropy_ok(bytes: &[u8]) {
    assert!(
        bytes.iter().any(|&b| b != bytes[0]),
        "constant output {bytes:?}"
    );
}

#[test]
fn returns_requested_bytes_and_they_vary() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rng.sock");
    let _d = spawn(&["--socket-path", sock.to_str().unwrap()]);
    let mut drv = VhostUserDriver::connect(&sock, DriverConfig::new(1)).unwrap();
    let a = drv.request(0, &[], &[64], T).unwrap();
    assert_eq!(a.len, 64);
    entropy_ok(&a.written[0]);
    // Two writable buffers in one chain: both filled.
    let b = drv.request(0, &[], &[100, 28], T).unwrap();
    assert_eq!(b.len, 128);
    entropy_ok(&b.written[0]);
    entropy_ok(&b.written[1]);
    assert_ne!(a.written[0], b.written[0][..64]);
    // Large request: capped, never more than asked.
    let c = drv.request(0, &[], &[1 << 20], T).unwrap();
    assert!(c.len > 0 && c.len as usize <= 1 << 20);
}

#[test]
fn serves_the_next_frontend_after_a_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rng.sock");
    let _d = spawn(&["--socket-path", sock.to_str().unwrap()]);
    for _ in 0..3 {
        let mut drv = VhostUserDriver::connect(&sock, DriverConfig::new(1)).unwrap();
        let r = drv.request(0, &[], &[32], T).unwrap();
        assert_eq!(r.len, 32);
        drop(drv);
    }
}

#[test]
fn once_exits_after_first_frontend_and_removes_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rng.sock");
    let mut d = spawn(&["--socket-path", sock.to_str().unwrap(), "--once"]);
    {
        let mut drv = VhostUserDriver::connect(&sock, DriverConfig::new(1)).unwrap();
        assert_eq!(drv.request(0, &[], &[16], T).unwrap().len, 16);
    }
    let status = wait_exit(&mut d.0);
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket file left behind");
}

#[test]
fn serves_an_inherited_fd() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (ours, theirs) = UnixStream::pair().unwrap();
    let raw = theirs.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rng-device"));
    cmd.args(["--fd", "3"]);
    // SAFETY: dup2 in the child between fork and exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut d = Kill(cmd.spawn().unwrap());
    drop(theirs);
    let conn = VhostUserConnection::from_stream(ours, 1);
    let mut drv = VhostUserDriver::setup(conn, DriverConfig::new(1)).unwrap();
    let r = drv.request(0, &[], &[48], T).unwrap();
    assert_eq!(r.len, 48);
    entropy_ok(&r.written[0]);
    drop(drv);
    assert!(wait_exit(&mut d.0).success());
}

#[test]
fn connection_flags_are_validated() {
    let out = Command::new(env!("CARGO_BIN_EXE_rng-device"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exactly one of --socket-path"));
    let out = Command::new(env!("CARGO_BIN_EXE_rng-device"))
        .args(["--socket-path", "/tmp/x", "--fd", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_rng-device"))
        .args(["--vfio", "0000:00:10.0"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not supported yet"));
}

fn wait_exit(c: &mut Child) -> std::process::ExitStatus {
    for _ in 0..500 {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("backend did not exit");
}

#[test]
fn sigterm_exits_cleanly_and_removes_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rng.sock");
    let mut d = spawn(&["--socket-path", sock.to_str().unwrap()]);
    // Wait until it listens.
    drop(VhostUserConnection::connect(&sock, 1, T).unwrap());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    let status = wait_exit(&mut d.0);
    assert!(status.success(), "{status:?}");
    assert!(!sock.exists(), "socket file left behind");
}

fn children(pid: u32) -> Vec<u32> {
    let p = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn status_field(pid: u32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

#[test]
fn the_jail_is_real() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rng.sock");
    let d = spawn(&["--socket-path", sock.to_str().unwrap()]);
    let mut drv = VhostUserDriver::connect(&sock, DriverConfig::new(1)).unwrap();
    assert_eq!(drv.request(0, &[], &[8], T).unwrap().len, 8);
    // rng-device -> outer jail process -> the device, PID 1 of its own PID namespace.
    let outer = children(d.0.id());
    assert_eq!(outer.len(), 1, "expected one jailed child");
    let inner = children(outer[0]);
    assert_eq!(inner.len(), 1, "expected the device process");
    let dev = inner[0];
    // The device's filesystem is an empty root: host files do not exist there.
    assert!(Path::new("/etc/passwd").exists());
    let root = format!("/proc/{dev}/root");
    assert!(!Path::new(&format!("{root}/etc/passwd")).exists());
    assert!(!Path::new(&format!("{root}/proc")).exists());
    assert!(
        std::fs::read_dir(&root).unwrap().next().is_none(),
        "jail root not empty"
    );
    // Seccomp filter mode, no capabilities, no_new_privs, own network namespace.
    assert_eq!(status_field(dev, "Seccomp:"), "2");
    assert_eq!(status_field(dev, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(dev, "NoNewPrivs:"), "1");
    let ns = |p: &str| std::fs::read_link(p).unwrap();
    assert_ne!(ns(&format!("/proc/{dev}/ns/net")), ns("/proc/self/ns/net"));
    assert_ne!(ns(&format!("/proc/{dev}/ns/mnt")), ns("/proc/self/ns/mnt"));
}
