//! `cordon devices --block ...`: jailed block children from crosvm's key=value syntax, driven
//! through the vhost-user frontend driver on real images.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cordon_frontend::vhost_user::{DriverConfig, VhostUserDriver};

const T: Duration = Duration::from_secs(10);
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cordon(args: &[&str]) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_cordon"))
            .arg("devices")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn image(p: &Path, fill: u8) {
    std::fs::write(p, vec![fill; 1 << 20]).unwrap();
}

fn hdr(kind: u32, sector: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&kind.to_le_bytes());
    b[8..16].copy_from_slice(&sector.to_le_bytes());
    b
}

fn children_names(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let kids: Vec<u32> = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        for k in &kids {
            out.push(
                std::fs::read_to_string(format!("/proc/{k}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            );
        }
        todo.extend(kids);
    }
    out
}

fn wait_exit(c: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("cordon devices did not exit");
}

#[test]
fn two_block_devices_from_key_values() {
    let dir = tempfile::tempdir().unwrap();
    let (a_img, b_img) = (dir.path().join("a.img"), dir.path().join("b.img"));
    image(&a_img, 0x11);
    image(&b_img, 0x22);
    let (a_sock, b_sock) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let a = format!(
        "path={},id=disk-a,vhost={}",
        a_img.display(),
        a_sock.display()
    );
    // vhost= first this time, flags in the middle.
    let b = format!(
        "vhost={},ro,path={},num-queues=2",
        b_sock.display(),
        b_img.display()
    );
    let d = cordon(&["--block", &a, "--block", &b]);

    let mut da =
        VhostUserDriver::connect(&a_sock, DriverConfig::new(1).with_features(F_RO | F_FLUSH))
            .unwrap();
    assert_eq!(da.features() & F_RO, 0);
    let c = da.request(0, &[&hdr(1, 4), &[0x5a; 512]], &[1], T).unwrap();
    assert_eq!(c.written[0][0], 0, "write status");
    let c = da.request(0, &[&hdr(4, 0)], &[1], T).unwrap();
    assert_eq!(c.written[0][0], 0, "flush status");
    assert_eq!(
        &std::fs::read(&a_img).unwrap()[4 * 512..5 * 512],
        &[0x5a; 512][..]
    );
    let c = da.request(0, &[&hdr(8, 0)], &[20, 1], T).unwrap();
    assert_eq!(&c.written[0][..6], b"disk-a");

    let mut db =
        VhostUserDriver::connect(&b_sock, DriverConfig::new(2).with_features(F_RO | F_FLUSH))
            .unwrap();
    assert_ne!(db.features() & F_RO, 0);
    let c = db.request(1, &[&hdr(1, 0), &[0u8; 512]], &[1], T).unwrap();
    assert_eq!(
        c.written[0][0], 1,
        "write to a read-only image must be IOERR"
    );
    let c = db.request(1, &[&hdr(0, 0)], &[512, 1], T).unwrap();
    assert_eq!((c.written[1][0], c.written[0][0]), (0, 0x22));
    assert_eq!(std::fs::read(&b_img).unwrap(), vec![0x22; 1 << 20]);

    let names = children_names(d.0.id());
    assert!(names.contains(&"block-0".to_string()), "{names:?}");
    assert!(names.contains(&"block-1".to_string()), "{names:?}");
}

#[test]
fn block_options_and_image_lock_errors() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    image(&img, 0);
    let sock = dir.path().join("a.sock");
    // Unknown key: named, with the accepted keys.
    let mut d = cordon(&[
        "--block",
        &format!("path={},bogus=1,vhost={}", img.display(), sock.display()),
    ]);
    assert!(!wait_exit(&mut d.0).success());
    let mut err = String::new();
    d.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("bogus") && err.contains("path"), "{err}");
    // The same image writable twice: the second open is refused before anything is served.
    let s2 = dir.path().join("b.sock");
    let mut d = cordon(&[
        "--block",
        &format!("path={},vhost={}", img.display(), sock.display()),
        "--block",
        &format!("path={},vhost={}", img.display(), s2.display()),
    ]);
    assert!(!wait_exit(&mut d.0).success());
    let mut err = String::new();
    d.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("in use"), "{err}");
}

fn find_child(pid: u32, name: &str) -> Option<u32> {
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let kids: Vec<u32> = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        for &k in &kids {
            let comm = std::fs::read_to_string(format!("/proc/{k}/comm")).unwrap_or_default();
            if comm.trim() == name {
                return Some(k);
            }
        }
        todo.extend(kids);
    }
    None
}

/// Waits until a process named `name` other than `not` runs under `pid`.
fn wait_child(pid: u32, name: &str, not: Option<u32>) -> u32 {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if let Some(p) = find_child(pid, name).filter(|&p| Some(p) != not) {
            return p;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no (new) {name} process under {pid}");
}

#[test]
fn a_killed_block_child_is_restarted_on_the_same_socket_and_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    image(&img, 0);
    let sock = dir.path().join("a.sock");
    let mut d = cordon(&[
        "--restart",
        "on-failure",
        "--block",
        &format!("path={},vhost={}", img.display(), sock.display()),
    ]);
    let mut drv =
        VhostUserDriver::connect(&sock, DriverConfig::new(1).with_features(F_FLUSH)).unwrap();
    let c = drv
        .request(0, &[&hdr(1, 2), &[0xa1; 512]], &[1], T)
        .unwrap();
    assert_eq!(c.written[0][0], 0, "write status");
    let first = wait_child(d.0.id(), "block-0", None);
    // SAFETY: killing a process we started (indirectly).
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    drop(drv);
    // A new jailed child serves the same socket path, on the same image.
    let second = wait_child(d.0.id(), "block-0", Some(first));
    let mut drv =
        VhostUserDriver::connect(&sock, DriverConfig::new(1).with_features(F_FLUSH)).unwrap();
    let c = drv.request(0, &[&hdr(0, 2)], &[512, 1], T).unwrap();
    assert_eq!(c.written[1][0], 0, "read status after the restart");
    assert_eq!(
        c.written[0],
        vec![0xa1; 512],
        "data written before the kill"
    );
    let c = drv
        .request(0, &[&hdr(1, 3), &[0xb2; 512]], &[1], T)
        .unwrap();
    assert_eq!(c.written[0][0], 0, "write status after the restart");
    let c = drv.request(0, &[&hdr(4, 0)], &[1], T).unwrap();
    assert_eq!(c.written[0][0], 0, "flush status");
    assert_eq!(
        &std::fs::read(&img).unwrap()[3 * 512..4 * 512],
        &[0xb2; 512][..]
    );
    assert!(find_child(d.0.id(), "block-0") == Some(second));
    // The restarted device still holds the image's exclusive lock.
    let other = dir.path().join("b.sock");
    let mut e = cordon(&[
        "--block",
        &format!("path={},vhost={}", img.display(), other.display()),
    ]);
    assert!(!wait_exit(&mut e.0).success());
    let mut err = String::new();
    e.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("in use"), "{err}");
    drop(drv);
    // A stop after a successful restart is a clean exit.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut d.0);
    let mut err = String::new();
    d.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(st.success(), "{st:?}: {err}");
    assert!(
        err.contains("block-0: killed by signal 9") && err.contains("restarting in 100 ms"),
        "{err}"
    );
    assert!(!sock.exists());
}

/// VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD end to end against the jailed, supervised block
/// device: the backend records its work in the region the driver fetched; a request the
/// backend had popped (recorded in flight) when it was killed is re-run by the restarted
/// backend without any new kick, once the driver reconnects and hands the region back.
#[test]
fn an_inflight_request_is_rerun_after_a_restart() {
    use cordon_frontend::vhost_user::Buffer;
    use std::os::unix::fs::FileExt;
    use vhost::vhost_user::message::VhostUserProtocolFeatures;
    use vm_memory::{Bytes, GuestAddress};

    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("a.img");
    image(&img, 0);
    let sock = dir.path().join("a.sock");
    let d = cordon(&[
        "--restart",
        "on-failure",
        "--block",
        &format!("path={},vhost={},poll-us=0", img.display(), sock.display()),
    ]);
    let mut cfg = DriverConfig::new(1).with_features(F_FLUSH);
    cfg.protocol_features |= VhostUserProtocolFeatures::INFLIGHT_SHMFD;
    let mut drv = VhostUserDriver::connect(&sock, cfg.clone()).unwrap();
    let inflight = drv.connection().get_inflight_fd(1, 256).unwrap();
    assert_eq!(
        inflight.0.mmap_size,
        256 * 16 + 64,
        "QEMU's layout: one queue of 256"
    );
    drv.connection()
        .set_inflight_fd(&inflight.0, &inflight.1)
        .unwrap();
    let c = drv
        .request(0, &[&hdr(1, 2), &[0xa1; 512]], &[1], T)
        .unwrap();
    assert_eq!(c.written[0][0], 0, "write status");
    // The backend keeps the region: version 1, used index 1, nothing left in flight.
    let region = &inflight.1;
    let u16_at = |off: u64| {
        let mut b = [0u8; 2];
        region.read_exact_at(&mut b, off).unwrap();
        u16::from_le_bytes(b)
    };
    assert_eq!((u16_at(8), u16_at(10), u16_at(14)), (1, 256, 1));
    // Two writes the backend had popped when it died, completed out of order: the second
    // (sector 6) finished and is on the used ring, the first (sector 5) was still running.
    // Both published without a kick, the state written the way the backend records it.
    // (First let the backend finish its last look at the ring after the previous completion.)
    std::thread::sleep(Duration::from_millis(200));
    let mut write_req = |sector: u64, fill: u8| {
        let h = drv.alloc(16).unwrap();
        drv.write(h, &hdr(1, sector)).unwrap();
        let data = drv.alloc(512).unwrap();
        drv.write(data, &[fill; 512]).unwrap();
        let status = drv.alloc(1).unwrap();
        drv.write(status, &[0xff]).unwrap();
        let bufs = [
            Buffer {
                addr: h,
                len: 16,
                writable: false,
            },
            Buffer {
                addr: data,
                len: 512,
                writable: false,
            },
            Buffer {
                addr: status,
                len: 1,
                writable: true,
            },
        ];
        (drv.publish(0, &bufs).unwrap(), status)
    };
    let (first_head, first_status) = write_req(5, 0xc3);
    let (second_head, second_status) = write_req(6, 0xd4);
    // Not kicked: the live backend does not see them.
    let early = drv.wait(0, Duration::from_millis(300));
    assert!(early.is_err(), "completed without a kick: {early:?}");
    // The second one "completed": used element 1, used index 2, status OK (its data never
    // reached the image, so a re-run would show).
    let used = drv.queue(0).unwrap().used_ring();
    let mem = drv.memory();
    mem.write_obj(u32::from(second_head).to_le(), GuestAddress(used.0 + 4 + 8))
        .unwrap();
    mem.write_obj(1u32.to_le(), GuestAddress(used.0 + 4 + 12))
        .unwrap();
    mem.write_obj(0u8, second_status).unwrap();
    mem.write_obj(2u16.to_le(), GuestAddress(used.0 + 2))
        .unwrap();
    region.write_all_at(&2u16.to_le_bytes(), 14).unwrap();
    let desc = 16 + 16 * u64::from(first_head);
    region.write_all_at(&7u64.to_le_bytes(), desc + 8).unwrap();
    region.write_all_at(&[1], desc).unwrap();
    let first = wait_child(d.0.id(), "block-0", None);
    // SAFETY: killing a process we started (indirectly).
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    wait_child(d.0.id(), "block-0", Some(first));
    drv.reconnect(&sock, &cfg, Some(&inflight)).unwrap();
    // The restarted backend re-runs the first one by itself (no new kick from the driver),
    // even though the avail ring position after the used index holds the second one, and
    // keeps the region consistent.
    let len = drv
        .wait_for(0, first_head, T)
        .expect("in-flight request re-run");
    assert_eq!(len, 1);
    assert_eq!(
        drv.read(first_status, 1).unwrap(),
        vec![0],
        "status of the re-run write"
    );
    let disk = std::fs::read(&img).unwrap();
    assert_eq!(
        &disk[5 * 512..6 * 512],
        &[0xc3; 512][..],
        "re-run write data"
    );
    assert_eq!(
        &disk[6 * 512..7 * 512],
        &[0u8; 512][..],
        "a completed write ran again"
    );
    assert_eq!(&disk[2 * 512..3 * 512], &[0xa1; 512][..]);
    let mut flag = [9u8; 1];
    region.read_exact_at(&mut flag, desc).unwrap();
    assert_eq!(flag[0], 0, "re-run request still marked in flight");
    assert_eq!(u16_at(14), 3, "used index recorded in the region");
    // And new requests are served as usual.
    let c = drv.request(0, &[&hdr(0, 5)], &[512, 1], T).unwrap();
    assert_eq!((c.written[1][0], c.written[0][0]), (0, 0xc3));
}
