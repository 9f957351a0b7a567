//! Cordon's own backends, jailed as shipped, driven by an unmodified Linux guest (QEMU TCG,
//! runner A). One boot exercises every backend QEMU can attach: rng and block (a raw image
//! and an ext4 image). The serial (console) backend needs `vhost-user-device-pci`, which this
//! QEMU does not let users create; its guest test goes through runner B with `cordon run`
//! (tests/guest_nested.rs).

use cordon_tests::guest::peers::ext4_image;
use cordon_tests::guest::{cordon_bin, BackendProcess, Check, GuestRunner};
use std::path::Path;
use std::process::Command;

const HOST_BYTES: &[u8] = b"HELLO-FROM-HOST!";
const GUEST_BYTES: &[u8] = b"GUEST-WROTE-THIS";

fn assert_jailed(b: &mut BackendProcess, what: &str) -> anyhow::Result<()> {
    assert!(b.running(), "{what} backend died:\n{}", b.output());
    let jail = b.jail_facts()?;
    assert!(
        jail.no_new_privs && jail.own_mount_ns && jail.own_net_ns && jail.cap_eff == 0,
        "{what} backend is not jailed: {jail:?}"
    );
    Ok(())
}

fn block_device(image: &Path, sock: &Path, label: &str) -> anyhow::Result<BackendProcess> {
    let mut cmd = Command::new(cordon_bin("cordon-block", "block-device")?);
    cmd.arg("--socket-path").arg(sock).arg("--file").arg(image);
    BackendProcess::start(cmd, sock, label)
}

#[test]
fn linux_guest_uses_jailed_cordon_backends() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;

    let rng_sock = dir.path().join("rng.sock");
    let mut cmd = Command::new(cordon_bin("cordon-rng", "rng-device")?);
    cmd.arg("--socket-path").arg(&rng_sock);
    let mut rng = BackendProcess::start(cmd, &rng_sock, "rng")?;

    // vda: raw image with host bytes at 0 and a 0xAA region to be discarded at 4 MiB.
    let disk = dir.path().join("disk.img");
    let mut img = vec![0u8; 8 << 20];
    img[..HOST_BYTES.len()].copy_from_slice(HOST_BYTES);
    img[4 << 20..5 << 20].fill(0xAA);
    std::fs::write(&disk, &img)?;
    let mut blk = block_device(&disk, &dir.path().join("vda.sock"), "vda")?;
    // vdb: ext4 image with a file; the guest reads it and writes another.
    let fs = dir.path().join("fs.img");
    ext4_image(&fs, 16, &[("hello.txt", b"ext4 says hi\n")])?;
    let mut blk2 = block_device(&fs, &dir.path().join("vdb.sock"), "vdb")?;

    let r = GuestRunner::tcg()
        .vhost_user_rng(&rng_sock)
        .vhost_user_blk(&blk.socket)
        .vhost_user_blk(&blk2.socket)
        .checks(&[
            Check::hwrng(32),
            Check::blk_size("vda"),
            Check::blk_read("vda", 0, HOST_BYTES.len()),
            Check::blk_write("vda", 512, GUEST_BYTES),
            Check::blk_rw("vda", 1 << 20, 64 << 10),
            Check::blk_flush("vda"),
            Check::blk_discard("vda", 4 << 20, 1 << 20),
            Check::ext4_read("vdb", "hello.txt")
                .arg("write", "guest.txt")
                .bytes("hex", GUEST_BYTES),
        ])
        .run()?;

    // rng: 32 bytes that differ between reads.
    let h = r.check("hwrng")?;
    let (a, b) = (h.bytes("first")?, h.bytes("second")?);
    assert_eq!(a.len(), 32);
    assert_ne!(a, b, "two reads of the Cordon rng gave the same bytes");

    // block: the guest read the host's bytes; the host reads the guest's write; the
    // discarded range reads as zeroes; flush reached the device; ext4 both ways.
    assert_eq!(
        r.check("blk-size")?.value("size")?,
        (8u64 << 20).to_string()
    );
    assert_eq!(r.check("blk-read")?.bytes("hex")?, HOST_BYTES);
    assert_ne!(r.check("blk-flush")?.value("flushes")?, "0");
    assert_eq!(r.check("ext4")?.bytes("hex")?, b"ext4 says hi\n");
    assert_jailed(&mut rng, "rng")?;
    assert_jailed(&mut blk, "block vda")?;
    assert_jailed(&mut blk2, "block vdb")?;
    drop((blk, blk2));
    let after = std::fs::read(&disk)?;
    assert_eq!(&after[512..512 + GUEST_BYTES.len()], GUEST_BYTES);
    assert!(
        after[4 << 20..5 << 20].iter().all(|&b| b == 0),
        "discarded range not zeroed"
    );
    let out = Command::new(cordon_tests::guest::tools::tool("debugfs")?)
        .args(["-R", "cat /guest.txt"])
        .arg(&fs)
        .output()?;
    assert_eq!(
        out.stdout,
        GUEST_BYTES,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
