//! Issue 7 §5, a net backend crash with QEMU as the frontend (runner A): `kill -9` of the
//! net device process of a `cordon devices --restart on-failure` tree while the guest runs.
//! `cordon devices` restarts it on the same socket and TAP, QEMU's vhost-user-net reconnects
//! (`-chardev socket,...,reconnect-ms=`), and the guest's traffic resumes: ping and a file
//! over TCP after the restart.
//!
//! QEMU 10's vhost-user-rng and vhost-user-vsock could not be used across a backend restart
//! here: with `reconnect-ms` their realize raced the asynchronous connect and failed ("Failed
//! to set msg fds"). The rng and vsock crashes are tested with `cordon run` as the frontend
//! (`faults_vmm.rs`).
//!
//! The guest and the host meet at a barrier on QEMU's own virtconsole (not a Cordon device):
//! the guest writes `KILL-NOW` and waits; the host kills, waits for the restart and the
//! reconnection, then answers `GO!!`.

use cordon_tests::e2e::{make_disk, TCP_PAYLOAD};
use cordon_tests::guest::console::tail;
use cordon_tests::guest::{Check, GuestRunner};
use cordon_tests::stack::{HostStack, StackOptions};
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const KILLED: [&str; 1] = ["net-0"];

fn net(name: &str) -> Check {
    Check::new(name)
        .arg("ip", "10.0.2.15/24")
        .arg("peer", "10.0.2.1")
}

#[test]
fn killed_net_backend_restarts_and_qemu_guest_traffic_resumes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.img");
    make_disk(&disk)?;
    let opts = StackOptions {
        extra_args: vec!["--restart".into(), "on-failure".into()],
        ..Default::default()
    };
    let stack = HostStack::start(dir.path(), &disk, &opts)?;

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
        .vhost_user_net(stack.socket("net"))
        .qemu_console(&con_sock)
        .timeout(Duration::from_secs(400))
        .checks(&[
            net("net-ping"),
            // Barrier: the host kills and restarts the net backend meanwhile.
            Check::new("console")
                .bytes("out", b"KILL-NOW")
                .bytes("in", b"GO!!")
                .arg("timeout", 240),
            net("net-ping").arg("count", 5),
            net("net-tcp")
                .arg("port", 7000)
                .bytes("send", TCP_PAYLOAD)
                .bytes("expect", TCP_PAYLOAD),
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
    assert_eq!(r.nth(3)?.bytes("received")?, TCP_PAYLOAD);
    // The restarted devices are jailed like the first ones.
    for (n, j) in stack.jail_facts()? {
        assert!(
            j.no_new_privs && j.seccomp == 2 && j.cap_eff == 0,
            "{n} after restart: {j:?}"
        );
    }
    Ok(())
}
