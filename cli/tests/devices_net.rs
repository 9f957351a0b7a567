//! `cordon devices --net`: a privileged parent (the test) opens and configures the TAP in a
//! network namespace it created and hands the fd over (`tap-fd=N`); the net device runs as a
//! jailed child of `cordon devices` and carries real traffic both ways.

#[path = "../../net/tests/common/mod.rs"]
mod common;

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn cordon_devices_net_with_a_handed_over_tap_fd() {
    let _ns = Netns::enter();
    let tap = cordon_net::tap::Tap::create("cdtapfd", 1).expect("TAP (needs root)");
    let host = Ipv4Addr::new(10, 79, 2, 1);
    tap.configure(Some(host), Some(Ipv4Addr::new(255, 255, 255, 0)))
        .unwrap();
    let fd = tap.fd(0);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("net.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cordon"));
    cmd.arg("devices")
        .arg("--net")
        .arg(format!(
            "vhost={},tap-fd=10,mac=52:54:00:12:34:56",
            sock.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; in the forked child before exec it leaves a copy
    // of the TAP fd at 10 without CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 10) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let d = Kill(cmd.spawn().expect("spawn cordon devices"));
    let mut g = Guest::connect(&sock, Ipv4Addr::new(10, 79, 2, 2));
    assert_eq!(g.drv.config(0, 6).unwrap(), GMAC, "mac in the config space");
    exercise(&mut g, host, 5603);
    // The device is the jailed leaf under the supervisor.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leaf = loop {
        let leaf = leaf_descendant(d.0.id());
        if leaf != d.0.id() && status_field(leaf, "Seccomp:") == "2" {
            break leaf;
        }
        assert!(Instant::now() < deadline, "no jailed net child");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_jailed(leaf);
}
