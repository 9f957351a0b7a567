//! Cordon's own backends, jailed as shipped, driven by an unmodified Linux guest (QEMU TCG,
//! runner A). One boot exercises every backend QEMU can attach: rng (and block once it
//! lands). The serial (console) backend needs `vhost-user-device-pci`, which this QEMU does
//! not let users create; its guest test goes through runner B with `cordon run`.

use cordon_tests::guest::{cordon_bin, BackendProcess, Check, GuestRunner};
use std::process::Command;

fn assert_jailed(b: &mut BackendProcess, what: &str) -> anyhow::Result<()> {
    assert!(b.running(), "{what} backend died:\n{}", b.output());
    let jail = b.jail_facts()?;
    assert!(
        jail.no_new_privs && jail.own_mount_ns && jail.own_net_ns && jail.cap_eff == 0,
        "{what} backend is not jailed: {jail:?}"
    );
    Ok(())
}

#[test]
fn linux_guest_uses_jailed_cordon_backends() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;

    let rng_sock = dir.path().join("rng.sock");
    let mut cmd = Command::new(cordon_bin("cordon-rng", "rng-device")?);
    cmd.arg("--socket-path").arg(&rng_sock);
    let mut rng = BackendProcess::start(cmd, &rng_sock, "rng")?;

    let r = GuestRunner::tcg()
        .vhost_user_rng(&rng_sock)
        .checks(&[Check::hwrng(32)])
        .run()?;

    let h = r.check("hwrng")?;
    let (a, b) = (h.bytes("first")?, h.bytes("second")?);
    assert_eq!(a.len(), 32);
    assert_ne!(a, b, "two reads of the Cordon rng gave the same bytes");
    assert_jailed(&mut rng, "rng")?;
    Ok(())
}
