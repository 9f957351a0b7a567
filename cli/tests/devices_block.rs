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
