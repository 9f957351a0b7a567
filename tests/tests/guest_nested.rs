//! Runner B: an L2 guest booted by a KVM VMM inside the L1 guest (nested on PVM hosts,
//! directly on KVM hosts). With the stand-in VMM (QEMU): L1 reports a working /dev/kvm, L2
//! boots the Debian kernel and its agent's results come back through L1's console. With
//! Cordon's VMM (`cordon run`): L2 uses Cordon's rng, console and block backends, jailed in
//! L1, runs on two vCPUs and ends with an ACPI power-off.

use cordon_tests::guest::{Check, NestedRunner};

#[test]
fn nested_l2_guest_boots_under_stand_in_vmm() -> anyhow::Result<()> {
    let mut disk = vec![0u8; 2 << 20];
    disk[..16].copy_from_slice(b"HELLO-FROM-HOST!");
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

/// The L1 script: Cordon's own VMM (`cordon run`, static binary) boots L2 on two vCPUs
/// with Cordon's rng, serial and block backends, each jailed inside L1; the L2 agent ends
/// with `poweroff` (ACPI S5), which must end `cordon run` with exit code 0. The console backend writes the guest's
/// output to a file (printed in hex at the end) and reads its input from a fifo, which the
/// script feeds once the guest's output arrived.
const CORDON_RUN_IN_L1: &str = r#"mkfifo /tmp/con.in; exec 3<>/tmp/con.in
: > /tmp/con.out
# Host side of the console: once the guest's output arrived, send it input.
( while ! grep -q GUEST-OUT /tmp/con.out; do sleep 0.2; done; printf 'HOST-IN!' >&3 ) &
cordon device rng --socket-path /tmp/rng.sock > /tmp/rng.log 2>&1 &
rng=$!
cordon device serial --socket-path /tmp/con.sock --output-file /tmp/con.out --input-file /tmp/con.in > /tmp/con.log 2>&1 &
cordon device block --socket-path /tmp/blk.sock --file disk.img > /tmp/blk.log 2>&1 &
for s in rng con blk; do
  i=0; while [ ! -S /tmp/$s.sock ]; do
    sleep 0.1; i=$((i+1))
    if [ $i -gt 300 ]; then echo "$s backend did not listen"; cat /tmp/$s.log; exit 1; fi
  done
done
# The VMM's output goes through a pipe: with L1's console (a tty) as stdout, its seccomp
# filter killed it on an ioctl (SIGSYS, syscall 16).
set -o pipefail
params=$(echo "$L2_CMDLINE" | sed 's/cordon.exit=reboot/cordon.exit=poweroff/')
cordon run --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --params "$params" --mem 256 --cpus 2 \
  --no-console-input --vhost-user type=rng,socket=/tmp/rng.sock --vhost-user type=console,socket=/tmp/con.sock \
  --vhost-user type=block,socket=/tmp/blk.sock < /dev/null 2>&1 | cat
rc=$?
# The jailed device is the leaf of the backend's process chain.
p=$rng
while set -- $(cat /proc/$p/task/$p/children 2>/dev/null) && [ $# = 1 ]; do p=$1; done
grep -E '^(NoNewPrivs|CapEff)' /proc/$p/status | sed 's/^/L1-RNG-JAIL /'
echo "L1-CONSOLE-OUT $(od -An -tx1 /tmp/con.out | tr -d ' \n')"
dmesg | grep -iE 'seccomp|audit' | sed 's/^/L1-SECCOMP /' | tail -20
echo "L1-DISK-AT-512 $(dd if=disk.img bs=512 skip=1 count=1 2>/dev/null | head -c 16)"
sed 's/^/L1-RNG-LOG /' /tmp/rng.log; sed 's/^/L1-CON-LOG /' /tmp/con.log; sed 's/^/L1-BLK-LOG /' /tmp/blk.log
exit $rc
"#;

#[test]
fn cordon_run_boots_l2_with_jailed_cordon_rng_console_and_block() -> anyhow::Result<()> {
    let mut disk = vec![0u8; 2 << 20];
    disk[..16].copy_from_slice(b"HELLO-FROM-HOST!");
    let r = NestedRunner::new()?
        .static_bin("cordon", "cordon")?
        .file_bytes("disk.img", &disk)
        .script(CORDON_RUN_IN_L1)
        .l2_checks(&[
            Check::kernel(),
            Check::hwrng(32),
            Check::new("console")
                .bytes("out", b"GUEST-OUT")
                .bytes("in", b"HOST-IN!"),
            Check::blk_read("vda", 0, 16),
            Check::blk_write("vda", 512, b"GUEST-WROTE-THIS"),
            Check::blk_rw("vda", 1 << 20, 4096),
        ])
        .run()?;
    // ACPI: the guest brought both vCPUs online and its power-off ended the VMM (exit 0,
    // checked by the script's exit code).
    assert_eq!(r.check_in("l2", "kernel")?.value("cpus")?, "2");
    assert!(
        r.console.contains("guest powered off (ACPI S5)"),
        "the VMM did not report an ACPI power-off"
    );
    let h = r.check_in("l2", "hwrng")?;
    assert_ne!(h.bytes("first")?, h.bytes("second")?);
    // Host input reached the guest; guest output reached the backend's output file.
    assert_eq!(r.check_in("l2", "console")?.bytes("received")?, b"HOST-IN!");
    let out_hex = cordon_tests::guest::hex(b"GUEST-OUT");
    let line = r
        .console
        .lines()
        .find_map(|l| l.strip_prefix("L1-CONSOLE-OUT "))
        .unwrap_or_default();
    assert!(
        line.contains(&out_hex),
        "console output file holds {line:?}"
    );
    assert!(
        r.console.contains("L1-RNG-JAIL NoNewPrivs:\t1"),
        "rng backend not jailed in L1"
    );
    // Block: the guest read the image's bytes; its write is in the image afterwards.
    assert_eq!(
        r.check_in("l2", "blk-read")?.bytes("hex")?,
        b"HELLO-FROM-HOST!"
    );
    assert!(r.console.contains("L1-DISK-AT-512 GUEST-WROTE-THIS"));
    Ok(())
}

/// The L1 script for `cordon run`'s convenience flags: `--block path=...` and `--rng` make
/// the VMM start the jailed backends itself (one `cordon devices` supervisor). While L2
/// runs, the script reports the seccomp mode of each device process (the leaves under the
/// supervisor); after the guest's reboot it reports any of them still alive.
const CORDON_RUN_STARTS_BACKENDS_IN_L1: &str = r#"mkfifo /tmp/vmm.out; cat /tmp/vmm.out &
cordon run --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --params "$L2_CMDLINE" --mem 256 \
  --no-console-input --block path=disk.img --rng < /dev/null > /tmp/vmm.out 2>&1 &
vmm=$!
leaves=""; sup=""
i=0; while [ $i -lt 600 ]; do
  set -- $(cat /proc/$vmm/task/$vmm/children 2>/dev/null); sup=$1
  leaves=""; n=0; ok=0
  for kid in $(cat /proc/$sup/task/$sup/children 2>/dev/null); do
    p=$kid; while set -- $(cat /proc/$p/task/$p/children 2>/dev/null) && [ $# = 1 ]; do p=$1; done
    leaves="$leaves $p"; n=$((n+1))
    grep -q '^Seccomp:[[:space:]]*2' /proc/$p/status 2>/dev/null && ok=$((ok+1))
  done
  [ -n "$sup" ] && [ $n = 2 ] && [ $ok = 2 ] && break
  sleep 0.1; i=$((i+1))
done
for p in $leaves; do echo "L1-BACKEND-JAIL $(cat /proc/$p/comm) $(grep -E '^Seccomp:' /proc/$p/status | tr '\t' ' ')"; done
wait $vmm; rc=$?
sleep 0.2
for p in $sup $leaves; do [ -d /proc/$p ] && echo "L1-BACKEND-LEFT $p $(cat /proc/$p/comm)"; done
echo "L1-SOCKETS-LEFT $(ls -d /tmp/cordon-run-* 2>/dev/null | wc -l)"
echo "L1-DISK-AT-512 $(dd if=disk.img bs=512 skip=1 count=1 2>/dev/null | head -c 16)"
dmesg | grep -iE 'audit.*type=1326' | sed 's/^/L1-SECCOMP /' | tail -5
exit $rc
"#;

#[test]
fn cordon_run_starts_jailed_block_and_rng_backends_itself() -> anyhow::Result<()> {
    let mut disk = vec![0u8; 2 << 20];
    disk[..16].copy_from_slice(b"HELLO-FROM-HOST!");
    let r = NestedRunner::new()?
        .static_bin("cordon", "cordon")?
        .file_bytes("disk.img", &disk)
        .script(CORDON_RUN_STARTS_BACKENDS_IN_L1)
        .l2_checks(&[
            Check::kernel(),
            Check::hwrng(32),
            Check::blk_read("vda", 0, 16),
            Check::blk_write("vda", 512, b"GUEST-WROTE-THIS"),
        ])
        .run()?;
    // One CPU and the i8042 reboot (the default --cpus and the agent's reboot=k path).
    assert_eq!(r.check_in("l2", "kernel")?.value("cpus")?, "1");
    let h = r.check_in("l2", "hwrng")?;
    assert_ne!(h.bytes("first")?, h.bytes("second")?);
    assert_eq!(
        r.check_in("l2", "blk-read")?.bytes("hex")?,
        b"HELLO-FROM-HOST!"
    );
    assert!(r.console.contains("L1-DISK-AT-512 GUEST-WROTE-THIS"));
    let jails: Vec<&str> = r
        .console
        .lines()
        .filter(|l| l.starts_with("L1-BACKEND-JAIL "))
        .collect();
    assert_eq!(jails.len(), 2, "two device processes: {jails:?}");
    assert!(
        jails.iter().all(|l| l.ends_with("Seccomp: 2")),
        "backends not under seccomp: {jails:?}"
    );
    assert!(
        !r.console.contains("L1-BACKEND-LEFT"),
        "backend processes outlived the VM"
    );
    assert!(r.console.contains("L1-SOCKETS-LEFT 0"));
    Ok(())
}
