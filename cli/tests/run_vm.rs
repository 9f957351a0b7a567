//! `cordon run` end to end on this host's /dev/kvm with a tiny 64-bit ELF "kernel" (a
//! real Linux guest cannot boot on a PVM host; the nested guest tests cover that): the
//! jailed VMM runs guest code, shows its output, exits 0 on the guest's i8042 reset;
//! `cordon stop`/`cordon status` work through the control socket; a vhost-user backend
//! (Cordon's jailed rng device) is connected, and reconnected after it is killed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LOAD_ADDR: u64 = 0x20_0000;

/// A minimal ELF64 executable: one PT_LOAD segment at LOAD_ADDR holding `code`.
fn tiny_elf(code: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    e.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    e.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    e.extend_from_slice(&1u16.to_le_bytes()); // phnum
    e.extend_from_slice(&[0u8; 6]); // shentsize, shnum, shstrndx
    let off = 64 + 56u64;
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&off.to_le_bytes());
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // vaddr
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // paddr
    e.extend_from_slice(&(code.len() as u64).to_le_bytes());
    e.extend_from_slice(&(code.len() as u64).to_le_bytes());
    e.extend_from_slice(&0x1000u64.to_le_bytes());
    e.extend_from_slice(code);
    e
}

/// Guest code: prints `s` on COM1.
fn print(s: &[u8]) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in s {
        c.extend_from_slice(&[0xb0, *b, 0xee]); // mov al, b; out dx, al
    }
    c
}

const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4]; // i8042 CPU reset, hlt
const SPIN: &[u8] = &[0xeb, 0xfe]; // jmp $

fn cordon() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cordon"))
}

fn write_kernel(dir: &Path, code: &[u8]) -> PathBuf {
    let p = dir.join("tiny.elf");
    std::fs::write(&p, tiny_elf(code)).unwrap();
    p
}

fn wait(child: &mut Child, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code().unwrap_or(-1);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(ctl: &Path) -> String {
    let out = cordon().arg("status").arg(ctl).output().unwrap();
    assert!(
        out.status.success(),
        "status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn jailed_vmm_runs_guest_code_and_exits_0_on_guest_reset() {
    let d = tempfile::tempdir().unwrap();
    let mut code = print(b"TINY-GUEST-OK\n");
    // Read the CMOS clock's year (BCD) and print it: the jailed VMM must answer.
    code.extend_from_slice(&[0xb0, 0x09, 0xe6, 0x70, 0xe4, 0x71, 0xee]);
    code.extend_from_slice(RESET);
    let k = write_kernel(d.path(), &code);
    let mut child = cordon()
        .args(["run", "--mem", "64", "--kernel"])
        .arg(&k)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = wait(&mut child, Duration::from_secs(20));
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(code, 0, "stderr: {err}");
    let out = out.into_bytes();
    assert_eq!(&out[..14], b"TINY-GUEST-OK\n", "{out:?}");
    assert_eq!(out.len(), 15, "one RTC byte after the text: {out:?}");
    let year = out[14];
    assert!(year >> 4 <= 9 && year & 0xf <= 9, "BCD year {year:#x}");
    assert!(
        err.contains("VMM jailed"),
        "the VMM must run under its policy: {err}"
    );
}

struct Backend(Child);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_rng(sock: &Path) -> Backend {
    let _ = std::fs::remove_file(sock);
    let child = cordon()
        .args(["device", "rng", "--socket-path"])
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the rng backend socket", Duration::from_secs(20), || {
        sock.exists()
    });
    Backend(child)
}

#[test]
fn stop_status_and_backend_reconnect() {
    let d = tempfile::tempdir().unwrap();
    let mut code = print(b"SPINNING\n");
    code.extend_from_slice(SPIN);
    let k = write_kernel(d.path(), &code);
    let rng_sock = d.path().join("rng.sock");
    let ctl = d.path().join("vm.sock");
    let backend = start_rng(&rng_sock);
    let mut vm = cordon()
        .args(["run", "--mem", "64", "--kernel"])
        .arg(&k)
        .arg("--vhost-user")
        .arg(format!("type=rng,socket={}", rng_sock.display()))
        .arg("-s")
        .arg(&ctl)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the control socket", Duration::from_secs(20), || {
        ctl.exists()
    });

    let s = status(&ctl);
    assert!(s.contains("state: running"), "{s}");
    assert!(s.contains("device rng"), "{s}");
    assert!(s.contains(&rng_sock.display().to_string()), "{s}");
    assert!(s.contains(" connected"), "{s}");

    // The backend dies: the VM keeps running and reports it.
    drop(backend);
    wait_for(
        "the VMM to notice the backend is gone",
        Duration::from_secs(20),
        || status(&ctl).contains("DISCONNECTED"),
    );
    assert!(
        vm.try_wait().unwrap().is_none(),
        "the VM must survive its backend"
    );

    // The backend comes back: the VMM reconnects by itself.
    let _backend = start_rng(&rng_sock);
    wait_for("the VMM to reconnect", Duration::from_secs(20), || {
        let s = status(&ctl);
        s.contains(" connected") && s.contains("reconnects: 1")
    });

    let out = cordon().arg("stop").arg(&ctl).output().unwrap();
    assert!(
        out.status.success(),
        "stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(wait(&mut vm, Duration::from_secs(20)), 0);
    assert!(!ctl.exists(), "the control socket is removed at exit");
}

#[test]
fn jailed_vmm_logs_to_a_terminal() {
    // The logger queries stderr's terminal state on every record: a jailed VMM whose
    // stderr is a tty must survive that (it once died with SIGSYS).
    let d = tempfile::tempdir().unwrap();
    let mut code = print(b"TTY\n");
    code.extend_from_slice(RESET);
    let k = write_kernel(d.path(), &code);
    let (master, slave) = cordon_backends::terminal::openpty().expect("openpty");
    let master = std::fs::File::from(master);
    let reader = std::thread::spawn(move || {
        let mut m = master;
        // Until the pty's slave side is gone (EIO); what came before is kept.
        let mut all = Vec::new();
        let _ = m.read_to_end(&mut all);
        all
    });
    let mut child = cordon()
        .args(["run", "--mem", "64", "--no-console-input", "--kernel"])
        .arg(&k)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let code = wait(&mut child, Duration::from_secs(20));
    drop(child);
    assert_eq!(
        code, 0,
        "the jailed VMM must not be killed for logging to a tty"
    );
    drop(reader);
}
