//! The real `wayland-device` binary, jailed (namespaces + seccomp policy), driven through the
//! vhost-user frontend library against a real headless weston: a context reaches the
//! compositor from inside the jail and the registry globals come back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cordon_frontend::vhost_user::{Buffer, DriverConfig, VhostUserDriver};

const T: Duration = Duration::from_secs(10);

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

#[test]
fn jailed_device_forwards_a_context_to_weston() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let _weston = Kill(
        Command::new("weston")
            .env("XDG_RUNTIME_DIR", dir.path())
            .args([
                "--backend=headless-backend.so",
                "--use-pixman",
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
    let wsock = dir.path().join("wayland-0");
    let deadline = Instant::now() + Duration::from_secs(20);
    // weston binds before it listens: wait for an accepted connection, not the path.
    while std::os::unix::net::UnixStream::connect(&wsock).is_err() {
        assert!(Instant::now() < deadline, "weston did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let vdir = tempfile::tempdir().unwrap();
    let sock: PathBuf = vdir.path().join("wl.sock");
    let _d = Kill(
        Command::new(env!("CARGO_BIN_EXE_wayland-device"))
            .args([
                "--socket-path",
                sock.to_str().unwrap(),
                "--wayland-sock",
                wsock.to_str().unwrap(),
            ])
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn wayland-device"),
    );
    let mut drv =
        VhostUserDriver::connect(&sock, DriverConfig::new(2)).expect("vhost-user connect");
    let mut inbufs = std::collections::HashMap::new();
    for _ in 0..16 {
        let a = drv.alloc(4096).unwrap();
        let h = drv
            .submit(
                0,
                &[Buffer {
                    addr: a,
                    len: 4096,
                    writable: true,
                }],
            )
            .unwrap();
        inbufs.insert(h, a);
    }
    // VFD_NEW_CTX id 1.
    let mut c = 260u32.to_le_bytes().to_vec();
    c.extend_from_slice(&[0; 4]);
    c.extend_from_slice(&1u32.to_le_bytes());
    let r = drv.request(1, &[&c], &[64], T).unwrap();
    assert_eq!(le(&r.written[0], 0), 4097, "RESP_VFD_NEW");
    // VFD_SEND: wl_display.get_registry(2), wl_display.sync(3).
    let mut s = 258u32.to_le_bytes().to_vec();
    s.extend_from_slice(&[0; 4]);
    s.extend_from_slice(&1u32.to_le_bytes());
    s.extend_from_slice(&0u32.to_le_bytes());
    for (op, id) in [(1u32, 2u32), (0, 3)] {
        s.extend_from_slice(&1u32.to_le_bytes());
        s.extend_from_slice(&((12 << 16) | op).to_le_bytes());
        s.extend_from_slice(&id.to_le_bytes());
    }
    let r = drv.request(1, &[&s], &[64], T).unwrap();
    assert_eq!(le(&r.written[0], 0), 4096, "RESP_OK");
    // Collect VFD_RECV data until the sync callback (object 3) is done.
    let mut stream = Vec::new();
    let deadline = Instant::now() + T;
    while !stream.windows(4).any(|w| w == b"wl_s")
        || !stream.chunks(4).any(|w| w == 3u32.to_le_bytes())
    {
        assert!(
            Instant::now() < deadline,
            "no registry from weston: {:?}",
            String::from_utf8_lossy(&stream)
        );
        for u in drv.wait(0, Duration::from_millis(200)).unwrap_or_default() {
            let a = inbufs[&u.head];
            let m = drv.read(a, u.len as usize).unwrap();
            assert_eq!(le(&m, 0), 259, "VFD_RECV");
            assert_eq!(le(&m, 8), 1, "on context 1");
            let n = le(&m, 12) as usize;
            stream.extend_from_slice(&m[16 + 4 * n..]);
        }
    }
    let text = String::from_utf8_lossy(&stream);
    assert!(
        text.contains("wl_compositor") && text.contains("wl_shm"),
        "{text:?}"
    );
}
