//! Issue 7 §5, faults other than block, with QEMU as the frontend (runner A; QEMU reconnects
//! to a vhost-user socket that went away, `reconnect-ms`): `kill -9` of the rng, net and
//! vsock device processes of one `cordon devices --restart on-failure` tree while the guest
//! runs. `cordon devices` restarts them on the same sockets, QEMU reconnects, and the guest
//! keeps reading /dev/hwrng, pings and moves a file over TCP again, and opens new vsock
//! streams both ways; the vsock stream open at the time of the kill is reset (its host end
//! sees the end of the stream).
//!
//! The guest and the host meet at a barrier on QEMU's own virtconsole (not a Cordon device):
//! the guest writes `KILL-NOW` and waits; the host kills, waits for the restarts and the
//! reconnections, then answers `GO!!`.

use cordon_tests::e2e::{make_disk, TCP_PAYLOAD, VSOCK_PAYLOAD};
use cordon_tests::guest::console::tail;
use cordon_tests::guest::{Check, GuestRunner};
use cordon_tests::stack::{HostStack, StackOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KILLED: [&str; 3] = ["rng-0", "net-0", "vsock-0"];

fn net(name: &str) -> Check {
    Check::new(name)
        .arg("ip", "10.0.2.15/24")
        .arg("peer", "10.0.2.1")
}

#[test]
fn killed_rng_net_and_vsock_backends_restart_and_the_guest_keeps_going() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.img");
    make_disk(&disk)?;
    let opts = StackOptions {
        extra_args: vec!["--restart".into(), "on-failure".into()],
        ..Default::default()
    };
    let stack = HostStack::start(dir.path(), &disk, &opts)?;

    // The stream the guest keeps open across the kill (guest -> host port 7005).
    let held = UnixListener::bind(dir.path().join("vsock_7005"))?;
    let held_peer = std::thread::spawn(move || -> anyhow::Result<(Vec<u8>, String)> {
        let (mut s, _) = held.accept()?;
        let mut got = [0u8; 4];
        s.read_exact(&mut got)?;
        s.write_all(b"KEPT")?;
        // Now the stream stays open until something happens to it.
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        let mut rest = [0u8; 64];
        let end = match s.read(&mut rest) {
            Ok(0) => "eof".to_string(),
            Ok(n) => format!("{n} unexpected bytes"),
            Err(e) => format!("error: {e}"),
        };
        Ok((got.to_vec(), end))
    });

    // The barrier on QEMU's virtconsole.
    let con_sock = dir.path().join("qemu-console.sock");
    let con = UnixListener::bind(&con_sock)?;
    let (ready_tx, ready_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let barrier = std::thread::spawn(move || -> anyhow::Result<()> {
        let (mut s, _) = con.accept()?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !seen.windows(8).any(|w| w == b"KILL-NOW") {
            let n = s.read(&mut buf)?;
            anyhow::ensure!(n > 0, "console closed before the guest reached the barrier");
            seen.extend_from_slice(&buf[..n]);
        }
        ready_tx.send(())?;
        go_rx.recv()?;
        s.write_all(b"GO!!")?;
        Ok(())
    });

    let mut guest = GuestRunner::tcg()
        .reconnect_ms(200)
        .vhost_user_blk(stack.socket("blk"))
        .vhost_user_net(stack.socket("net"))
        .vhost_user_rng(stack.socket("rng"))
        .vhost_user_vsock(stack.socket("vsock"))
        .qemu_console(&con_sock)
        .timeout(Duration::from_secs(400))
        .checks(&[
            Check::hwrng(32),
            net("net-ping"),
            Check::new("vsock-connect")
                .arg("port", 7005)
                .bytes("send", b"HOLD")
                .bytes("expect", b"KEPT")
                .arg("len", 4)
                .arg("hold", 1),
            // Barrier: the host kills and restarts the backends meanwhile.
            Check::new("console")
                .bytes("out", b"KILL-NOW")
                .bytes("in", b"GO!!")
                .arg("timeout", 240),
            Check::hwrng(32),
            net("net-ping").arg("count", 5),
            net("net-tcp")
                .arg("port", 7000)
                .bytes("send", TCP_PAYLOAD)
                .bytes("expect", TCP_PAYLOAD),
            Check::new("vsock-connect")
                .arg("port", 7001)
                .bytes("send", VSOCK_PAYLOAD)
                .bytes("expect", VSOCK_PAYLOAD),
            Check::new("vsock-listen").arg("port", 7002),
        ])
        .allow_failures()
        .spawn()?;

    // Wait for the barrier (or a dead guest).
    let start = Instant::now();
    loop {
        if ready_rx.try_recv().is_ok() {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            return Err(guest.failure("never reached the barrier"));
        }
        guest.check_alive()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let before: Vec<usize> = KILLED
        .iter()
        .map(|n| {
            stack
                .output()
                .matches(&format!("{n}: frontend connected"))
                .count()
        })
        .collect();
    let mut killed = Vec::new();
    for n in KILLED {
        killed.push((n, stack.kill_device(n)?));
    }
    for ((n, old), conns) in killed.iter().zip(before) {
        let new = stack.wait_restarted(n, *old, conns + 1, Duration::from_secs(120))?;
        assert_ne!(new, *old);
    }
    go_tx.send(())?;
    let r = guest.finish()?;

    let failed: Vec<String> = r
        .results
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("#{} {}: {}", c.id, c.check, c.detail))
        .collect();
    assert!(
        failed.is_empty(),
        "guest checks failed around the restarts: {failed:#?}\nconsole tail ({}):\n{}\n--- cordon devices ({}) ---\n{}",
        r.log.display(),
        tail(&r.console),
        stack.log.display(),
        tail(&stack.output())
    );
    barrier.join().expect("barrier thread")?;
    // rng: fresh bytes after the restart too.
    let (a, b) = (r.nth(0)?, r.nth(4)?);
    assert_ne!(a.bytes("first")?, b.bytes("first")?);
    assert_eq!(r.nth(6)?.bytes("received")?, TCP_PAYLOAD);
    assert_eq!(r.nth(7)?.bytes("received")?, VSOCK_PAYLOAD);
    // The stream open during the kill ended; new streams worked both ways.
    let (got, end) = held_peer.join().expect("held stream thread")?;
    assert_eq!(got, b"HOLD");
    assert!(
        end == "eof" || end.starts_with("error"),
        "open stream not reset: {end}"
    );
    let peers = stack.peer_failures();
    assert!(peers.is_empty(), "{peers:#?}\n{}", tail(&stack.output()));
    // The restarted devices are jailed like the first ones.
    for (n, j) in stack.jail_facts()? {
        assert!(
            j.no_new_privs && j.seccomp == 2 && j.cap_eff == 0,
            "{n} after restart: {j:?}"
        );
    }
    Ok(())
}
