//! The main job as a test (issue 7 §1-2): `cordon run` boots the Debian cloud kernel whose
//! block, net, rng, vsock and console are all served by one `cordon devices` tree of jailed
//! backends (nested L1 on PVM hosts). Every guest check and every host-side observation
//! must pass.

use cordon_tests::e2e::{run_full_stack, CONSOLE_IN, EXT4_FILE, TCP_PAYLOAD, VSOCK_PAYLOAD};

#[test]
fn guest_uses_every_cordon_device_through_cordon_run() -> anyhow::Result<()> {
    let o = run_full_stack("e2e-full-stack")?;
    let failed: Vec<String> = o
        .guest()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.check, c.detail))
        .collect();
    assert!(
        failed.is_empty(),
        "guest checks failed: {failed:#?}\nlog: {}",
        o.results.log.display()
    );
    let r = &o.results;
    assert_eq!(r.check_in("l2", "ext4")?.bytes("hex")?, EXT4_FILE.1);
    assert_eq!(r.check_in("l2", "net-tcp")?.bytes("received")?, TCP_PAYLOAD);
    assert_eq!(
        r.check_in("l2", "vsock-connect")?.bytes("received")?,
        VSOCK_PAYLOAD
    );
    assert_eq!(r.check_in("l2", "console")?.bytes("received")?, CONSOLE_IN);
    let h = r.check_in("l2", "hwrng")?;
    assert_ne!(h.bytes("first")?, h.bytes("second")?);
    let host = o.host_side_failures();
    assert!(
        host.is_empty(),
        "host side: {host:#?}\nlog: {}",
        r.log.display()
    );
    Ok(())
}
