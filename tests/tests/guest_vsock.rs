//! Cordon's vsock backend, jailed, under an unmodified Linux guest (QEMU TCG, runner A):
//! the guest connects to a host program (hybrid vsock: `<uds-path>_<port>`), and a host
//! program connects to a guest listener (`CONNECT <port>` on the backend's Unix socket).

use cordon_tests::guest::{cordon_bin, BackendProcess, Check, GuestRunner};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;

#[test]
fn linux_guest_talks_to_host_through_jailed_cordon_vsock() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let uds = dir.path().join("v.sock");
    let sock = dir.path().join("vsock.sock");
    let mut cmd = Command::new(cordon_bin("cordon-vsock", "vsock-device")?);
    cmd.arg("--socket-path")
        .arg(&sock)
        .arg("--cid")
        .arg("3")
        .arg("--uds-path")
        .arg(&uds);
    let mut vsock = BackendProcess::start(cmd, &sock, "vsock")?;

    // Guest -> host: the guest connects to host port 5000, which is <uds>_5000 here.
    let listener = UnixListener::bind(format!("{}_5000", uds.display()))?;
    let host_side = std::thread::spawn(move || -> anyhow::Result<Vec<u8>> {
        let (mut s, _) = listener.accept()?;
        let mut got = [0u8; 4];
        s.read_exact(&mut got)?;
        s.write_all(b"PONG")?;
        Ok(got.to_vec())
    });

    let mut g = GuestRunner::tcg()
        .vhost_user_vsock(&sock)
        .checks(&[
            Check::new("vsock-connect")
                .arg("cid", 2)
                .arg("port", 5000)
                .bytes("send", b"PING")
                .arg("len", 4),
            Check::new("vsock-listen").arg("port", 6000).arg("len", 4),
        ])
        .spawn()?;

    // Host -> guest: once the guest listens on port 6000, connect through the backend.
    g.wait_for("CORDON-LISTENING vsock port=6000")?;
    let mut s = UnixStream::connect(&uds)?;
    s.write_all(b"CONNECT 6000\n")?;
    let mut line = String::new();
    BufReader::new(s.try_clone()?).read_line(&mut line)?;
    assert!(line.starts_with("OK "), "backend answered {line:?}");
    s.write_all(b"HELO")?;
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo)?;
    assert_eq!(&echo, b"HELO");
    drop(s);

    let r = g.finish()?;
    assert_eq!(r.check("vsock-connect")?.bytes("received")?, b"PONG");
    assert_eq!(host_side.join().expect("host side panicked")?, b"PING");
    assert_eq!(r.check("vsock-listen")?.bytes("received")?, b"HELO");
    assert!(vsock.running(), "vsock backend died:\n{}", vsock.output());
    let jail = vsock.jail_facts()?;
    assert!(
        jail.no_new_privs && jail.own_mount_ns && jail.cap_eff == 0,
        "{jail:?}"
    );
    Ok(())
}
