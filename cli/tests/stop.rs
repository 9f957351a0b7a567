//! `cordon stop PATH` on a `cordon devices -s PATH` control socket: every device process
//! ends, `cordon devices` exits 0 and removes its socket files.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(Instant::now() < deadline, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; count it as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn cordon_stop_ends_a_device_tree_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let rng = dir.path().join("rng.sock");
    let vsock = dir.path().join("vsock.sock");
    let ctl = dir.path().join("devices.ctl");
    let mut d = Kill(
        Command::new(env!("CARGO_BIN_EXE_cordon"))
            .arg("devices")
            .arg("-s")
            .arg(&ctl)
            .arg("--rng")
            .arg(format!("vhost={}", rng.display()))
            .arg("--vsock")
            .arg(format!(
                "vhost={},cid=3,uds-path={}",
                vsock.display(),
                dir.path().join("v").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for p in [&rng, &vsock, &ctl] {
        wait_for(p);
    }
    let kids: Vec<u32> = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", d.0.id()))
        .unwrap()
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(kids.len(), 2, "one child per device: {kids:?}");

    let out = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .arg("stop")
        .arg(&ctl)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cordon stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = d.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "cordon devices did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "cordon devices exited {status}");
    for k in kids {
        assert!(!alive(k), "device process {k} survived");
    }
    // The vsock device's host listener (uds-path) goes too.
    for p in [&rng, &vsock, &ctl, &dir.path().join("v")] {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    // A stopped tree answers nothing: cordon stop says so and fails.
    let again = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .arg("stop")
        .arg(&ctl)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("cordon devices -s"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
