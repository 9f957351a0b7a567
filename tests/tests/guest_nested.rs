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

/// The L1 script: Cordon's rng backend (`cordon device rng` from the static `cordon`
/// binary, jailed inside L1) serves the L2
/// guest through the stand-in QEMU's vhost-user-rng-pci on microvm with PCIe. (On
/// virtio-mmio QEMU lets the driver pick a 1024-entry queue, which the rng backend refuses.)
const RNG_IN_L1: &str = r#"cordon device rng --socket-path /tmp/rng.sock > /tmp/rng.log 2>&1 &
i=0; while [ ! -S /tmp/rng.sock ]; do
  sleep 0.1; i=$((i+1))
  if [ $i -gt 300 ] || ! kill -0 $! 2>/dev/null; then echo "cordon device rng did not listen"; cat /tmp/rng.log; exit 1; fi
done
rng=$!
qemu-system-x86_64 -L /usr/share/qemu -M microvm,rtc=off,pcie=on,memory-backend=mem -enable-kvm -cpu host \
  -m 256 -smp 1 -nographic -no-reboot \
  -object memory-backend-memfd,id=mem,size=256M,share=on \
  -chardev socket,id=rng,path=/tmp/rng.sock -device vhost-user-rng-pci,chardev=rng \
  -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$L2_CMDLINE"
rc=$?
# The jailed device is the leaf of the backend's process chain.
p=$rng
while set -- $(cat /proc/$p/task/$p/children 2>/dev/null) && [ $# = 1 ]; do p=$1; done
grep -E '^(NoNewPrivs|CapEff)' /proc/$p/status | sed 's/^/L1-RNG-JAIL /'
sed 's/^/L1-RNG-LOG /' /tmp/rng.log; exit $rc
"#;

#[test]
fn nested_l2_guest_uses_static_jailed_cordon_rng_in_l1() -> anyhow::Result<()> {
    let r = NestedRunner::new()?
        .static_bin("cordon", "cordon")?
        .qemu_script(RNG_IN_L1)
        .l2_checks(&[Check::hwrng(32)])
        .run()?;
    let h = r.check_in("l2", "hwrng")?;
    assert_ne!(h.bytes("first")?, h.bytes("second")?);
    assert!(
        r.console.contains("L1-RNG-JAIL NoNewPrivs:\t1"),
        "rng backend not jailed in L1"
    );
    Ok(())
}
