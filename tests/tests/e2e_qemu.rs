//! Issue 7 §3, other frontends: the e2e guest (same kernel, initramfs, agent and the same
//! checks as `e2e_full_stack`) booted by Debian's QEMU (runner A, TCG) on Cordon's backends,
//! all served by one `cordon devices` tree: vhost-user-blk-pci, virtio-net-pci with a
//! vhost-user netdev (TAP in a network namespace the test creates), vhost-user-rng-pci and
//! vhost-user-vsock-pci.
//!
//! Console: QEMU has no device that attaches a vhost-user console backend (it refuses to let
//! users create `vhost-user-device-pci`), so the `console` check runs against QEMU's own
//! virtconsole here and the agent's results travel over QEMU's serial port, as in every
//! runner A test. Cordon's console backend is covered by `cordon run` (e2e_full_stack).

use cordon_tests::e2e::{guest_checks, make_disk, CONSOLE_IN, CONSOLE_OUT, EXT4_FILE};
use cordon_tests::e2e::{TCP_PAYLOAD, VSOCK_PAYLOAD};
use cordon_tests::guest::console::tail;
use cordon_tests::guest::GuestRunner;
use cordon_tests::stack::{console_peer, HostStack, StackOptions};

#[test]
fn qemu_guest_uses_every_cordon_device_through_cordon_devices() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("disk.img");
    make_disk(&disk)?;
    let stack = HostStack::start(dir.path(), &disk, &StackOptions::default())?;
    let con_sock = dir.path().join("qemu-console.sock");
    let console = console_peer(&con_sock, CONSOLE_OUT, CONSOLE_IN)?;

    let r = GuestRunner::tcg()
        .vhost_user_blk(stack.socket("blk"))
        .vhost_user_net(stack.socket("net"))
        .vhost_user_rng(stack.socket("rng"))
        .vhost_user_vsock(stack.socket("vsock"))
        .qemu_console(&con_sock)
        .checks(&guest_checks())
        .allow_failures()
        .run()?;

    let failed: Vec<String> = r
        .results
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.check, c.detail))
        .collect();
    assert!(
        failed.is_empty(),
        "guest checks failed under QEMU: {failed:#?}\nconsole tail ({}):\n{}\n--- cordon devices + peers ({}) ---\n{}",
        r.log.display(),
        tail(&r.console),
        stack.log.display(),
        tail(&stack.output())
    );
    let names: Vec<&str> = r.results.iter().map(|c| c.check.as_str()).collect();
    assert_eq!(names.len(), guest_checks().len(), "{names:?}");
    assert_eq!(r.check("ext4")?.bytes("hex")?, EXT4_FILE.1);
    assert_eq!(r.check("net-tcp")?.bytes("received")?, TCP_PAYLOAD);
    assert_eq!(r.check("vsock-connect")?.bytes("received")?, VSOCK_PAYLOAD);
    assert_eq!(r.check("console")?.bytes("received")?, CONSOLE_IN);
    let h = r.check("hwrng")?;
    assert!(h.value("current")?.starts_with("virtio_rng"), "{h:?}");
    assert_ne!(h.bytes("first")?, h.bytes("second")?);
    assert_ne!(r.check("blk-flush")?.value("flushes")?, "0");

    let seen = console.join().expect("console peer panicked")?;
    assert!(seen.windows(CONSOLE_OUT.len()).any(|w| w == CONSOLE_OUT));
    let peers = stack.peer_failures();
    assert!(
        peers.is_empty(),
        "host side: {peers:#?}\n{}",
        tail(&stack.output())
    );
    // Every device served by a jailed process of the one tree.
    let jails = stack.jail_facts()?;
    let names: Vec<&str> = jails.iter().map(|(n, _)| n.as_str()).collect();
    for want in ["block-0", "net-0", "rng-0", "vsock-0"] {
        assert!(names.contains(&want), "cordon devices lists {names:?}");
    }
    for (n, j) in &jails {
        assert!(
            j.no_new_privs && j.seccomp == 2 && j.cap_eff == 0 && j.own_mount_ns,
            "{n} is not jailed: {j:?}"
        );
    }
    Ok(())
}
