//! Runner B with the stand-in VMM (QEMU with KVM inside the L1 guest, until `cordon run`
//! exists): L1 reports a working /dev/kvm, the L2 guest boots the Debian kernel and its
//! agent's results come back through L1's console.

use cordon_tests::guest::{Check, NestedRunner};

#[test]
fn nested_l2_guest_boots_under_stand_in_vmm() -> anyhow::Result<()> {
    let r = NestedRunner::new()?
        .file_bytes("note.txt", b"from the host")
        .l2_checks(&[Check::kernel()])
        .run()?;
    if r.results.iter().any(|c| c.vm == "l1") {
        assert_eq!(r.check_in("l1", "kvm")?.value("api")?, "12");
    }
    let k = r.check_in("l2", "kernel")?;
    assert!(k.value("release")?.contains("cloud-amd64"));
    eprintln!("nested run: {:.1} s", r.elapsed.as_secs_f64());
    Ok(())
}
