//! Issue 7 §1, the demo's interactive path: `cordon-demo` on a terminal (a pty this test
//! owns, CI unset) boots the full stack; the guest prints what it found and gives a shell on
//! a virtio-console (`/dev/hvc1`, served by a jailed serial backend reading the terminal). The
//! test types a command into the pty and sees its output, then `exit` ends the guest and the
//! demo exits 0 (every device worked). The non-interactive path
//! (`--check`, CI=true) is `e2e_full_stack`.

use cordon_tests::guest::console::{logs_dir, tail};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cordon_backends::terminal::openpty;

struct Screen {
    text: Arc<Mutex<Vec<u8>>>,
}

impl Screen {
    fn contents(&self) -> String {
        let t = self.text.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&t).replace('\r', "")
    }

    fn wait_for(&self, needle: &str, within: Duration, child: &mut std::process::Child) {
        let until = Instant::now() + within;
        loop {
            let text = self.contents();
            if text.contains(needle) {
                return;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "cordon-demo exited ({st}) before showing {needle:?}; terminal tail:\n{}",
                    tail(&text)
                );
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!(
                    "{needle:?} did not show within {} s; terminal tail:\n{}",
                    within.as_secs(),
                    tail(&text)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn demo_on_a_terminal_gives_a_shell_in_the_guest() {
    let (master, slave) = openpty().expect("openpty");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cordon-demo"));
    cmd.env_remove("CI")
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave));
    // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
    // controlling terminal is the pty (stdin), as a login terminal would be.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("starting cordon-demo");

    // Everything the terminal shows, also saved for a person reading a failure.
    let text = Arc::new(Mutex::new(Vec::new()));
    let log_path = logs_dir().join("demo_interactive.terminal.log");
    let _ = std::fs::create_dir_all(logs_dir());
    let mut reader = File::from(master.try_clone().expect("dup"));
    let sink = text.clone();
    let log_for_thread = log_path.clone();
    std::thread::spawn(move || {
        let mut log = File::create(log_for_thread).ok();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(l) = log.as_mut() {
                let _ = l.write_all(&buf[..n]);
            }
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&buf[..n]);
        }
    });
    let screen = Screen { text };
    let mut keyboard = File::from(master);

    // The guest's own summary, then its shell prompt.
    screen.wait_for("CORDON-SHELL-READY", Duration::from_secs(900), &mut child);
    screen.wait_for("cordon-guest# ", Duration::from_secs(60), &mut child);
    let text = screen.contents();
    assert!(
        text.contains("What this guest found (11 of 11 device checks passed)"),
        "the guest's summary is missing or shows failures:\n{}",
        tail(&text)
    );
    // A command typed on the terminal runs in the guest: the shell computes 6*7, and its
    // terminal is the second virtio-console, served by the jailed serial backend `serial-1`
    // that reads this terminal (not the VMM's 16550).
    keyboard
        .write_all(b"echo $((6*7))-from-the-guest-shell; uname -r; echo on-$(tty)\r")
        .expect("typing");
    screen.wait_for(
        "42-from-the-guest-shell",
        Duration::from_secs(60),
        &mut child,
    );
    screen.wait_for("cloud-amd64", Duration::from_secs(60), &mut child);
    screen.wait_for("on-/dev/hvc1", Duration::from_secs(60), &mut child);
    keyboard.write_all(b"exit\r").expect("typing");

    let until = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!(
                "cordon-demo did not end after `exit`; terminal tail:\n{}",
                tail(&screen.contents())
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Let the reader drain the last lines.
    std::thread::sleep(Duration::from_millis(300));
    let text = screen.contents();
    assert!(
        status.success() && text.contains("every device worked"),
        "cordon-demo exited {status}; terminal log {}; tail:\n{}",
        log_path.display(),
        tail(&text)
    );
    let _ = keyboard.as_raw_fd();
}
