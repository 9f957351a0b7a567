//! `cordon run` with bad input: each case must end quickly with a non-zero exit code and
//! one clear error line naming the bad parameter.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `cordon` with `args`; fails the test if it does not end within 20 s.
fn cordon(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cordon");
    let start = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().expect("wait") {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("cordon {args:?} hung for 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

/// Asserts a failure whose stderr has exactly one non-empty line containing `needle`.
fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, stderr) = cordon(args);
    assert_ne!(code, 0, "cordon {args:?} must fail; stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(
        lines[0].contains(needle),
        "error must mention {needle:?}: {stderr}"
    );
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn fake_kernel(dir: &std::path::Path) -> String {
    let p = dir.join("bzImage");
    std::fs::write(&p, vec![0u8; 4096]).unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn missing_kernel() {
    assert_one_line_error(
        &["run", "--kernel", "/nonexistent/vmlinuz"],
        "--kernel /nonexistent/vmlinuz",
    );
}

#[test]
fn kernel_that_is_not_a_kernel() {
    let d = tmp();
    let k = fake_kernel(d.path());
    assert_one_line_error(&["run", "--kernel", &k], "not a loadable kernel");
}

#[test]
fn unreadable_initrd() {
    let d = tmp();
    let k = fake_kernel(d.path());
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            &k,
            "--initrd",
            "/nonexistent/initrd.cpio",
        ],
        "--initrd /nonexistent/initrd.cpio",
    );
    // A directory opens but cannot be read as an initrd.
    let dir = d.path().to_string_lossy().into_owned();
    assert_one_line_error(&["run", "--kernel", &k, "--initrd", &dir], "--initrd");
}

#[test]
fn too_little_memory() {
    let d = tmp();
    let k = fake_kernel(d.path());
    assert_one_line_error(&["run", "--kernel", &k, "--mem", "4"], "--mem 4 MiB");
}

#[test]
fn too_many_cpus() {
    let d = tmp();
    let k = fake_kernel(d.path());
    assert_one_line_error(&["run", "--kernel", &k, "--cpus", "200"], "--cpus 200");
}

#[test]
fn backend_socket_nobody_listens_on() {
    let d = tmp();
    let k = fake_kernel(d.path());
    // No file at all.
    let missing = d.path().join("absent.sock");
    let arg = format!("type=rng,socket={}", missing.display());
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            &k,
            "--backend-timeout",
            "1",
            "--vhost-user",
            &arg,
        ],
        "cannot connect",
    );
    // A socket file whose listener is gone (connection refused).
    let stale = d.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let arg = format!("type=block,socket={}", stale.display());
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            &k,
            "--backend-timeout",
            "1",
            "--vhost-user",
            &arg,
        ],
        "type=block",
    );
}

#[test]
fn bad_vhost_user_option() {
    let d = tmp();
    let k = fake_kernel(d.path());
    assert_one_line_error(
        &["run", "--kernel", &k, "--vhost-user", "type=gpu,socket=/x"],
        "accepted: block, net, rng, vsock, console, wl",
    );
}

#[test]
fn stop_without_a_vmm() {
    let d = tmp();
    let p = d.path().join("ctl.sock");
    let p = p.to_string_lossy().into_owned();
    assert_one_line_error(&["stop", &p], "is `cordon run -s");
    assert_one_line_error(&["status", &p], "is `cordon run -s");
}

#[test]
fn convenience_flag_with_a_missing_image() {
    // The block backend `cordon run` starts cannot open the image: one line naming the
    // flag and the cause, no hang, no socket directory left behind.
    let dir = tmp();
    let kernel = fake_kernel(dir.path());
    let img = dir.path().join("missing.img");
    let opt = format!("path={}", img.display());
    assert_one_line_error(
        &["run", "--kernel", &kernel, "--block", &opt],
        "--block path=",
    );
    let (_, stderr) = cordon(&["run", "--kernel", &kernel, "--block", &opt]);
    assert!(stderr.contains("missing.img"), "{stderr}");
}

#[test]
fn convenience_flag_rejects_vhost_and_bad_syntax() {
    let dir = tmp();
    let kernel = fake_kernel(dir.path());
    assert_one_line_error(
        &[
            "run",
            "--kernel",
            &kernel,
            "--block",
            "path=/x,vhost=/tmp/s",
        ],
        "--vhost-user type=block",
    );
    assert_one_line_error(
        &["run", "--kernel", &kernel, "--vsock", "cid=\"3"],
        "--vsock",
    );
    assert_one_line_error(
        &["run", "--kernel", &kernel, "--rng", "--net", "bogus=1"],
        "--net",
    );
}
