//! Cordon's own backends, jailed as shipped, driven by an unmodified Linux guest (QEMU TCG,
//! runner A). One boot exercises every landed backend.

use cordon_tests::guest::{cordon_bin, BackendProcess, Check, GuestRunner};
use std::process::Command;

#[test]
fn linux_guest_uses_jailed_cordon_rng() -> anyhow::Result<()> {
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
    assert!(h.value("current")?.starts_with("virtio_rng"));
    let (a, b) = (h.bytes("first")?, h.bytes("second")?);
    assert_eq!(a.len(), 32);
    assert_ne!(a, b, "two reads of the Cordon rng gave the same bytes");
    assert!(rng.running(), "rng backend died:\n{}", rng.output());
    // It served from inside its jail.
    let jail = rng.jail_facts()?;
    assert!(
        jail.no_new_privs && jail.own_mount_ns && jail.own_net_ns,
        "{jail:?}"
    );
    assert_eq!(jail.cap_eff, 0, "{jail:?}");
    Ok(())
}
