//! Runner A end to end: a real Debian cloud kernel under QEMU TCG drives
//! qemu-storage-daemon's vhost-user-blk export (a peer backend), QEMU's virtio-rng and a
//! virtio console and user network; one boot runs every check, the host verifies the bytes.

use cordon_tests::guest::peers::{ext4_image, QsdBlk};
use cordon_tests::guest::{Check, GuestRunner};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;

const HOST_BYTES: &[u8] = b"HELLO-FROM-HOST!";
const GUEST_BYTES: &[u8] = b"GUEST-WROTE-THIS";

#[test]
fn tcg_guest_drives_peer_vhost_user_blk_rng_and_console() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // vda: raw image with host bytes at 0 and a 0xAA region to be discarded at 4 MiB.
    let disk = dir.path().join("disk.img");
    let mut img = vec![0u8; 8 << 20];
    img[..HOST_BYTES.len()].copy_from_slice(HOST_BYTES);
    img[4 << 20..5 << 20].fill(0xAA);
    std::fs::write(&disk, &img)?;
    // vdb: ext4 image with a file.
    let fs = dir.path().join("fs.img");
    ext4_image(&fs, 16, &[("hello.txt", b"ext4 says hi\n")])?;
    let blk = QsdBlk::start(&disk, &dir.path().join("vda.sock"))?;
    let blk2 = QsdBlk::start(&fs, &dir.path().join("vdb.sock"))?;

    // Console peer: QEMU connects to our socket; the guest writes "out", we answer "in".
    let con_sock = dir.path().join("con.sock");
    let listener = UnixListener::bind(&con_sock)?;
    let console_peer = std::thread::spawn(move || -> anyhow::Result<Vec<u8>> {
        let (mut s, _) = listener.accept()?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !seen.windows(9).any(|w| w == b"GUEST-OUT") {
            let n = s.read(&mut buf)?;
            anyhow::ensure!(n > 0, "console closed before the guest wrote");
            seen.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HOST-IN!")?;
        Ok(seen)
    });

    // TCP peer on the host, reached by the guest through QEMU's user network (10.0.2.2).
    let tcp = TcpListener::bind("127.0.0.1:0")?;
    let port = tcp.local_addr()?.port();
    let tcp_peer = std::thread::spawn(move || -> anyhow::Result<Vec<u8>> {
        let (mut s, _) = tcp.accept()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        s.write_all(b"PONG")?;
        Ok(got)
    });

    let r = GuestRunner::tcg()
        .vhost_user_blk(&blk.socket)
        .vhost_user_blk(&blk2.socket)
        .qemu_args(&["-device", "virtio-rng-pci"])
        .qemu_console(&con_sock)
        .qemu_args(&[
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ])
        .checks(&[
            Check::kernel(),
            Check::blk_size("vda"),
            Check::blk_read("vda", 0, HOST_BYTES.len()),
            Check::blk_write("vda", 512, GUEST_BYTES),
            Check::blk_rw("vda", 1 << 20, 8192),
            Check::blk_flush("vda"),
            Check::blk_discard("vda", 4 << 20, 1 << 20),
            Check::ext4_read("vdb", "hello.txt"),
            Check::hwrng(32),
            Check::new("console")
                .bytes("out", b"GUEST-OUT")
                .bytes("in", b"HOST-IN!"),
            Check::new("net-ping")
                .arg("ip", "10.0.2.15/24")
                .arg("peer", "10.0.2.2"),
            Check::new("net-tcp")
                .arg("ip", "10.0.2.15/24")
                .arg("peer", "10.0.2.2")
                .arg("port", port)
                .bytes("send", b"PING"),
        ])
        .run()?;
    drop((blk, blk2));

    assert!(r.check("kernel")?.value("release")?.contains("cloud-amd64"));
    assert_eq!(
        r.check("blk-size")?.value("size")?,
        (8u64 << 20).to_string()
    );
    assert_eq!(r.check("blk-read")?.bytes("hex")?, HOST_BYTES);
    assert_eq!(r.check("ext4")?.bytes("hex")?, b"ext4 says hi\n");
    let rng = r.check("hwrng")?;
    assert_ne!(rng.bytes("first")?, rng.bytes("second")?);
    assert_eq!(r.check("console")?.bytes("received")?, b"HOST-IN!");
    let seen = console_peer.join().expect("console peer panicked")?;
    assert!(seen.windows(9).any(|w| w == b"GUEST-OUT"));

    assert_eq!(r.check("net-tcp")?.bytes("received")?, b"PONG");
    assert_eq!(tcp_peer.join().expect("tcp peer panicked")?, b"PING");

    // What the guest wrote is on the host's image; the discarded range reads as zeroes.
    let after = std::fs::read(&disk)?;
    assert_eq!(&after[512..512 + GUEST_BYTES.len()], GUEST_BYTES);
    assert!(
        after[4 << 20..5 << 20].iter().all(|&b| b == 0),
        "discarded range not zeroed"
    );
    eprintln!(
        "guest boot + {} checks: {:.1} s",
        r.results.len(),
        r.elapsed.as_secs_f64()
    );
    Ok(())
}

#[test]
fn tcg_guest_failures_quote_the_console() {
    // An unknown check is reported as failed, and the run fails with the console tail.
    let err = GuestRunner::tcg()
        .check(Check::new("no-such-check"))
        .run()
        .expect_err("an unknown check must fail the run");
    let msg = format!("{err:#}");
    assert!(msg.contains("no-such-check"), "{msg}");
    assert!(msg.contains("console tail"), "{msg}");
}

#[test]
fn tcg_guest_hang_and_panic_fail_with_console_tail() -> anyhow::Result<()> {
    // A boot that cannot finish in time is killed and reported.
    let err = GuestRunner::tcg()
        .timeout(std::time::Duration::from_secs(1))
        .check(Check::kernel())
        .run()
        .expect_err("a 1 s boot must time out");
    let msg = format!("{err:#}");
    assert!(msg.contains("timed out"), "{msg}");

    // A kernel without a usable initramfs panics; the run fails quoting the panic.
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("not-a-cpio");
    std::fs::write(&bad, b"this is not an initramfs")?;
    let err = GuestRunner::tcg()
        .initramfs(&bad)
        .check(Check::kernel())
        .run()
        .expect_err("a panicking kernel must fail the run");
    let msg = format!("{err:#}");
    assert!(msg.contains("Kernel panic"), "{msg}");
    Ok(())
}
