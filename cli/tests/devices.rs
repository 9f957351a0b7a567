//! `cordon devices`: several real, jailed device children from one command line.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cordon_frontend::vhost_user::{DriverConfig, VhostUserDriver};

const T: Duration = Duration::from_secs(10);

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

fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let kids: Vec<u32> = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        out.extend(&kids);
        todo.extend(kids);
    }
    out
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
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

fn stderr_of(c: &mut Child) -> String {
    let mut s = String::new();
    let _ = c.stderr.take().unwrap().read_to_string(&mut s);
    s
}

#[test]
fn runs_rng_and_serial_jailed_children_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let rng = dir.path().join("rng.sock");
    let con = dir.path().join("con.sock");
    let out = dir.path().join("console.log");
    let ctl = dir.path().join("ctl.sock");
    let serial = format!(
        "type=file,path={},hardware=virtio-console,console,earlycon,vhost={}",
        out.display(),
        con.display()
    );
    let mut d = cordon(&[
        "-s",
        ctl.to_str().unwrap(),
        "--rng",
        &format!("vhost={}", rng.display()),
        "--serial",
        &serial,
    ]);
    let mut r = VhostUserDriver::connect(&rng, DriverConfig::new(1)).unwrap();
    assert_eq!(r.request(0, &[], &[32], T).unwrap().len, 32);
    let mut s = VhostUserDriver::connect(&con, DriverConfig::new(2)).unwrap();
    s.request(1, &[b"console line"], &[], T).unwrap();
    let deadline = Instant::now() + T;
    while std::fs::read(&out).unwrap_or_default() != b"console line" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(std::fs::read(&out).unwrap(), b"console line");
    // One jailed device process per device, named after it.
    let names: Vec<String> = descendants(d.0.id()).into_iter().map(comm).collect();
    assert!(names.contains(&"rng-0".to_string()), "{names:?}");
    assert!(names.contains(&"serial-0".to_string()), "{names:?}");
    // The control socket lists them.
    let mut c = UnixStream::connect(&ctl).unwrap();
    c.write_all(b"list\n").unwrap();
    let mut list = String::new();
    c.read_to_string(&mut list).unwrap();
    assert!(
        list.contains("rng-0 pid=") && list.contains("serial-0 pid="),
        "{list}"
    );
    // SIGTERM stops everything cleanly and removes the sockets.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut d.0);
    assert!(st.success(), "{st:?}: {}", stderr_of(&mut d.0));
    assert!(!rng.exists() && !con.exists() && !ctl.exists());
}

#[test]
fn a_dead_device_makes_the_run_fail() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sock");
    let b = dir.path().join("b.sock");
    let mut d = cordon(&[
        "--rng",
        &format!("vhost={}", a.display()),
        "--rng",
        &format!("vhost={}", b.display()),
    ]);
    drop(VhostUserDriver::connect(&a, DriverConfig::new(1)).unwrap());
    drop(VhostUserDriver::connect(&b, DriverConfig::new(1)).unwrap());
    let victim = descendants(d.0.id())
        .into_iter()
        .find(|&p| comm(p) == "rng-1")
        .expect("rng-1 process");
    // SAFETY: killing a process we started (indirectly).
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    // The other device keeps serving.
    std::thread::sleep(Duration::from_millis(200));
    let mut r = VhostUserDriver::connect(&a, DriverConfig::new(1)).unwrap();
    assert_eq!(r.request(0, &[], &[8], T).unwrap().len, 8);
    assert!(!b.exists(), "dead device's socket not removed");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut d.0);
    let err = stderr_of(&mut d.0);
    assert!(!st.success());
    assert!(err.contains("rng-1") && err.contains("signal 9"), "{err}");
}

fn fails_with(args: &[&str], needle: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .arg("devices")
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
}

#[test]
fn bad_command_lines_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("x.sock");
    let s = s.to_str().unwrap();
    fails_with(&["--rng", &format!("vhost={s},speed=9")], "speed");
    fails_with(&["--rng", "vhost=0000:00:10.0"], "VVU");
    fails_with(&["--serial", "type=stdout"], "vhost");
    fails_with(
        &["--serial", &format!("vhost={s},type=tty")],
        "stdout, stderr, file",
    );
    fails_with(
        &["--jail", "bogus=1", "--rng", &format!("vhost={s}")],
        "bogus",
    );
    fails_with(&[], "no device");
    assert!(!Path::new(s).exists());
}

#[test]
fn cordon_device_runs_one_backend() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("rng.sock");
    let mut d = Kill(
        Command::new(env!("CARGO_BIN_EXE_cordon"))
            .args([
                "device",
                "rng",
                "--once",
                "--socket-path",
                sock.to_str().unwrap(),
            ])
            .spawn()
            .unwrap(),
    );
    {
        let mut r = VhostUserDriver::connect(&sock, DriverConfig::new(1)).unwrap();
        assert_eq!(r.request(0, &[], &[16], T).unwrap().len, 16);
    }
    assert!(wait_exit(&mut d.0).success());
    let out = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(["device", "floppy"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("known: rng, serial"));
}

fn wait_new(pid: u32, name: &str, not: Option<u32>) -> Option<u32> {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if let Some(p) = descendants(pid)
            .into_iter()
            .find(|&p| comm(p) == name && Some(p) != not)
        {
            return Some(p);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn restart_policy_restarts_then_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.sock");
    let ctl = dir.path().join("ctl.sock");
    let mut d = cordon(&[
        "-s",
        ctl.to_str().unwrap(),
        "--restart",
        "on-failure:1",
        "--rng",
        &format!("vhost={}", a.display()),
    ]);
    drop(VhostUserDriver::connect(&a, DriverConfig::new(1)).unwrap());
    let first = wait_new(d.0.id(), "rng-0", None).expect("rng-0 process");
    // SAFETY: killing a process we started (indirectly).
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let second = wait_new(d.0.id(), "rng-0", Some(first)).expect("restarted rng-0");
    assert!(a.exists(), "socket of a restarted device removed");
    let mut r = VhostUserDriver::connect(&a, DriverConfig::new(1)).unwrap();
    assert_eq!(r.request(0, &[], &[8], T).unwrap().len, 8);
    drop(r);
    let mut c = UnixStream::connect(&ctl).unwrap();
    c.write_all(b"list\n").unwrap();
    let mut list = String::new();
    c.read_to_string(&mut list).unwrap();
    assert!(
        list.contains("rng-0 pid=") && list.contains(" running restarts=1"),
        "{list}"
    );
    // The limit is one consecutive restart: the second crash ends the device and the run.
    // SAFETY: as above.
    unsafe { libc::kill(second as i32, libc::SIGKILL) };
    let st = wait_exit(&mut d.0);
    let err = stderr_of(&mut d.0);
    assert!(!st.success());
    assert!(
        err.contains("giving up after 1 consecutive restarts"),
        "{err}"
    );
    assert!(!a.exists(), "socket of a device given up not removed");
}

#[test]
fn jail_pivot_root_dir_is_the_device_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("marker"), b"pivot root content").unwrap();
    let rng = dir.path().join("rng.sock");
    let mut d = cordon(&[
        "--jail",
        &format!("pivot-root={}", root.display()),
        "--rng",
        &format!("vhost={}", rng.display()),
    ]);
    let mut r = VhostUserDriver::connect(&rng, DriverConfig::new(1)).unwrap();
    assert_eq!(r.request(0, &[], &[32], T).unwrap().len, 32);
    // The serving (jailed) process sees DIR's content as / and nothing of the host.
    let jailed: Vec<u32> = descendants(d.0.id())
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/root/marker"))
                .ok()
                .as_deref()
                == Some(&b"pivot root content"[..])
        })
        .collect();
    assert!(!jailed.is_empty(), "no device process has DIR as its root");
    for p in &jailed {
        assert!(!Path::new(&format!("/proc/{p}/root/etc/passwd")).exists());
        assert!(!Path::new(&format!("/proc/{p}/root/usr")).exists());
    }
    drop(r);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) };
    let st = wait_exit(&mut d.0);
    assert!(st.success(), "{st:?}: {}", stderr_of(&mut d.0));
    // The host's DIR is unchanged.
    let names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("marker")]);
}
