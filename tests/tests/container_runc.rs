//! Each backend in its own OCI container under `runc` (issue 7 §4): a read-only rootfs
//! holding only the static device binary, no capabilities, only the socket directory and
//! the device's own resources inside. A frontend outside (QEMU TCG with an unmodified Linux
//! guest) connects through the shared socket directory, and the guest's checks pass.

use cordon_tests::container::{Bind, Container, ContainerSpec};
use cordon_tests::guest::assets::build_static;
use cordon_tests::guest::backend::{leaf_descendant, JailFacts};
use cordon_tests::guest::{Check, GuestRunner};
use std::time::Duration;

const HOST_BYTES: &[u8] = b"written-by-host-before-boot";
const GUEST_BYTES: &[u8] = b"written-by-guest-in-container";

fn assert_confined(c: &Container, what: &str) -> anyhow::Result<()> {
    let pid = leaf_descendant(c.pid()?);
    let jail = JailFacts::of(pid)?;
    assert!(
        jail.seccomp == 2 && jail.cap_eff == 0 && jail.no_new_privs && jail.own_mount_ns,
        "{what} in its container is not confined: {jail:?}\n{}",
        c.output()
    );
    Ok(())
}

#[test]
fn guest_uses_backends_running_in_runc_containers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sockets = dir.path().join("sockets");
    std::fs::create_dir_all(&sockets)?;
    let image = dir.path().join("disk.img");
    let mut data = vec![0u8; 8 << 20];
    data[..HOST_BYTES.len()].copy_from_slice(HOST_BYTES);
    std::fs::write(&image, &data)?;

    let sock_bind = Bind {
        host: sockets.clone(),
        container: "/run/cordon".into(),
        writable: true,
    };
    let id = |kind: &str| format!("cordon-test-{kind}-{}", std::process::id());

    let rng = Container::start(
        dir.path(),
        &ContainerSpec {
            id: id("rng"),
            binary: build_static("cordon-rng", "rng-device")?,
            args: vec!["--socket-path".into(), "/run/cordon/rng.sock".into()],
            binds: vec![sock_bind.clone()],
        },
    )?;
    let blk = Container::start(
        dir.path(),
        &ContainerSpec {
            id: id("block"),
            binary: build_static("cordon-block", "block-device")?,
            args: vec![
                "--socket-path".into(),
                "/run/cordon/blk.sock".into(),
                "--file".into(),
                "/disk.img".into(),
            ],
            binds: vec![
                sock_bind,
                Bind {
                    host: image.clone(),
                    container: "/disk.img".into(),
                    writable: true,
                },
            ],
        },
    )?;
    let t = Duration::from_secs(20);
    rng.wait_for_path(&sockets.join("rng.sock"), t)?;
    blk.wait_for_path(&sockets.join("blk.sock"), t)?;
    assert_confined(&rng, "rng")?;
    assert_confined(&blk, "block")?;

    let r = GuestRunner::tcg()
        .name("containers")
        .vhost_user_rng(sockets.join("rng.sock"))
        .vhost_user_blk(sockets.join("blk.sock"))
        .checks(&[
            Check::hwrng(32),
            Check::blk_read("vda", 0, HOST_BYTES.len()),
            Check::blk_write("vda", 4096, GUEST_BYTES),
        ])
        .run()?;

    let h = r.check("hwrng")?;
    assert_ne!(h.bytes("first")?, h.bytes("second")?);
    assert_eq!(r.check("blk-read")?.bytes("hex")?, HOST_BYTES);
    r.check("blk-write")?;
    let back = std::fs::read(&image)?;
    assert_eq!(&back[4096..4096 + GUEST_BYTES.len()], GUEST_BYTES);
    assert_eq!(rng.status()?, "running", "{}", rng.output());
    assert_eq!(blk.status()?, "running", "{}", blk.output());
    Ok(())
}
