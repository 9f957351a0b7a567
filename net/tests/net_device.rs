//! The real `net-device` binary, jailed (namespaces + seccomp policy), on a real TAP in a
//! network namespace the test creates, driven through the vhost-user frontend library acting
//! as the guest's virtio-net driver. Also: the shipped policy under the real kernel refuses
//! network sockets and TAP reconfiguration but lets the device do its TAP I/O.

mod common;

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn spawn_device(sock: &Path, args: &[&str]) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_net-device"))
            .arg("--socket-path")
            .arg(sock)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn net-device"),
    )
}

/// Waits until the jailed device process (the leaf under `pid`) has its filter installed.
fn jailed_leaf(pid: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaf = leaf_descendant(pid);
        if leaf != pid && status_field(leaf, "Seccomp:") == "2" {
            return leaf;
        }
        assert!(
            Instant::now() < deadline,
            "no jailed device process under {pid}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check_config(g: &mut Guest) {
    assert_eq!(g.drv.config(0, 6).unwrap(), GMAC, "mac in the config space");
    assert_eq!(
        g.drv.config(6, 2).unwrap(),
        1u16.to_le_bytes(),
        "status: link up"
    );
}

#[test]
fn jailed_binary_creates_its_tap_and_carries_traffic_both_ways() {
    let _ns = Netns::enter();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("net.sock");
    let host = Ipv4Addr::new(10, 79, 0, 1);
    let d = spawn_device(
        &sock,
        &[
            "--tap-name",
            "cjtap0",
            "--host-ip",
            "10.79.0.1",
            "--netmask",
            "255.255.255.0",
            "--mac",
            "52:54:00:12:34:56",
        ],
    );
    let mut g = Guest::connect(&sock, Ipv4Addr::new(10, 79, 0, 2));
    check_config(&mut g);
    exercise(&mut g, host, 5601);
    assert_jailed(jailed_leaf(d.0.id()));
}

#[test]
fn jailed_binary_adopts_a_tap_fd_from_its_privileged_parent() {
    let _ns = Netns::enter();
    // The privileged parent (this test) creates and configures the TAP ...
    let tap = cordon_net::tap::Tap::create("cjtapfd", 1).expect("TAP (needs root)");
    let host = Ipv4Addr::new(10, 79, 1, 1);
    tap.configure(Some(host), Some(Ipv4Addr::new(255, 255, 255, 0)))
        .unwrap();
    // ... and hands the open fd over as fd 10; the device never opens /dev/net/tun.
    let fd = tap.fd(0);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("net.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_net-device"));
    cmd.arg("--socket-path")
        .arg(&sock)
        .args(["--tap-fd", "10", "--mac", "52:54:00:12:34:56"])
        .stdin(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it runs in the forked child before exec and leaves
    // a copy of the TAP fd at 10 without CLOEXEC.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 10) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let d = Kill(cmd.spawn().expect("spawn net-device"));
    let mut g = Guest::connect(&sock, Ipv4Addr::new(10, 79, 1, 2));
    check_config(&mut g);
    exercise(&mut g, host, 5602);
    assert_jailed(jailed_leaf(d.0.id()));
}

#[test]
fn a_non_tap_fd_is_refused_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_net-device"))
        .args(["--socket-path", "/nonexistent/x.sock", "--tap-fd", "0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tap-fd=0"), "{err}");
}

/// Runs `f` in a forked child under the shipped `net_device_vhost_user` filter.
fn under_net_policy(f: impl FnOnce() -> i32) -> Result<i32, i32> {
    let prog = cordon_seccomp::embedded("net_device_vhost_user").expect("policy embedded");
    // SAFETY: the child only installs the filter, runs raw syscalls and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = match cordon_seccomp::install(&prog) {
            Ok(()) => f(),
            Err(_) => 100,
        };
        // SAFETY: leave the forked copy without unwinding.
        unsafe { libc::_exit(code) }
    }
    let mut st = 0;
    // SAFETY: valid out-parameter.
    assert_eq!(unsafe { libc::waitpid(pid, &mut st, 0) }, pid);
    if libc::WIFSIGNALED(st) {
        Err(libc::WTERMSIG(st))
    } else {
        Ok(libc::WEXITSTATUS(st))
    }
}

#[test]
fn net_policy_kills_network_sockets_and_tap_reconfiguration_but_allows_tap_io() {
    let _ns = Netns::enter();
    let tap = cordon_net::tap::Tap::create("cjtappol", 1).expect("TAP (needs root)");
    let fd = tap.fd(0);
    // Allowed: what the device does with its TAP after jailing.
    let io = under_net_policy(|| {
        // SAFETY: raw syscalls on the inherited TAP fd with valid buffers.
        unsafe {
            if libc::ioctl(fd, 0x400454d0 /* TUNSETOFFLOAD */, 0x1u64) != 0 {
                return 2;
            }
            let mut b = [0u8; 64];
            // Nothing queued: EAGAIN, not a kill.
            if libc::read(fd, b.as_mut_ptr().cast(), b.len()) != -1 {
                return 3;
            }
        }
        0
    });
    assert_eq!(io, Ok(0), "TAP read and TUNSETOFFLOAD allowed");
    // The only socket the policy allows is the vhost-user relay's private listener, exactly
    // `AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC` (cordon_backends::relay); nothing that reaches a
    // network, and no other form.
    for (domain, ty) in [
        (libc::AF_INET, libc::SOCK_DGRAM),
        (libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC),
        (libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC),
        (libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC),
        (libc::AF_PACKET, libc::SOCK_RAW),
    ] {
        let r = under_net_policy(|| {
            // SAFETY: plain syscall.
            unsafe { libc::socket(domain, ty, 0) };
            1
        });
        assert_eq!(r, Err(libc::SIGSYS), "socket({domain}, {ty}) must kill");
    }
    // Reattaching or reconfiguring the TAP (TUNSETIFF, SIOCSIFFLAGS) is not allowed either.
    for req in [0x400454ca_u64 /* TUNSETIFF */, libc::SIOCSIFFLAGS] {
        let r = under_net_policy(|| {
            let mut ifr = [0u8; 40];
            // SAFETY: ioctl with a buffer of struct ifreq size.
            unsafe { libc::ioctl(fd, req as _, ifr.as_mut_ptr()) };
            1
        });
        assert_eq!(r, Err(libc::SIGSYS), "ioctl {req:#x} must kill");
    }
    drop(tap);
}
