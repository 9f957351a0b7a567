//! Each backend in its own OCI container under `runc` (issue 7 §4): a read-only rootfs
//! holding only the static device binary, no capabilities, only the socket directory and
//! the device's own resources inside (the image file, the TAP fd handed over by the test).
//!
//! - One QEMU TCG boot of an unmodified Linux guest uses the containerized rng, block, net
//!   and vsock backends at once, through the shared socket directory, and runs the guest
//!   agent's checks for each: hwrng, raw block read/write, ping + TCP over the TAP, vsock
//!   in both directions.
//! - The serial (console) backend cannot be attached to this QEMU (it refuses
//!   `vhost-user-device-pci`, and has no vhost-user console device), and `cordon run` boots
//!   Linux only nested inside a QEMU TCG L1 on this PVM host, where no OCI runtime is
//!   available. So the containerized serial backend is driven from the host by Cordon's
//!   vhost-user frontend library (the same driver code the VMM uses): guest output reaches
//!   the host's socket, host input reaches the receive queue.
//! - Wayland likewise (no upstream guest driver): the containerized wayland backend is
//!   driven by the frontend library and reaches a real headless weston.
//!
//! Every device process is checked from the host: `Seccomp: 2`, `CapEff: 0`,
//! `NoNewPrivs: 1`, and a mount namespace of its own.

use cordon_frontend::vhost_user::{Buffer, DriverConfig, VhostUserDriver};
use cordon_net::tap::Tap;
use cordon_tests::container::{Bind, Container, ContainerSpec};
use cordon_tests::guest::assets::build_static;
use cordon_tests::guest::backend::{leaf_descendant, JailFacts};
use cordon_tests::guest::{cordon_bin, Check, GuestRunner};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOST_BYTES: &[u8] = b"written-by-host-before-boot";
const GUEST_BYTES: &[u8] = b"written-by-guest-in-container";
const TAP_NAME: &str = "ctap0";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const TAP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const UDP_PORT: u16 = 7000;
const GUEST_UDP_PORT: u16 = 5555;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const VSOCK_PAYLOAD: &[u8] = b"guest-to-host vsock across the container boundary";
const VSOCK_G2H_PORT: u32 = 7001;
const VSOCK_H2G_PORT: u32 = 7002;
const VSOCK_H2G_LEN: usize = 16 * 1024;
const T: Duration = Duration::from_secs(20);

/// Waits until the device process of `c` is confined, then returns its facts.
fn assert_confined(c: &Container, what: &str) -> anyhow::Result<JailFacts> {
    // The socket exists before the device enters its jail (it is opened first, by design):
    // wait until the leaf process is confined.
    let start = Instant::now();
    loop {
        let jail = JailFacts::of(leaf_descendant(c.pid()?))?;
        let confined =
            jail.seccomp == 2 && jail.cap_eff == 0 && jail.no_new_privs && jail.own_mount_ns;
        if confined {
            return Ok(jail);
        }
        assert!(
            start.elapsed() < T,
            "{what} in its container is not confined: {jail:?}\n{}",
            c.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every container's state and output, for failure messages.
fn reports(cs: &[&Container]) -> String {
    cs.iter().map(|c| c.report()).collect::<Vec<_>>().join("\n")
}

fn container_id(kind: &str) -> String {
    format!("cordon-test-{kind}-{}", std::process::id())
}

fn sock_bind(sockets: &Path) -> Bind {
    Bind {
        host: sockets.to_path_buf(),
        container: "/run/cordon".into(),
        writable: true,
    }
}

/// A host-side peer process of the guest agent (`cordon-guest-agent --peer ...`), killed
/// when dropped; its output goes to a file.
struct Peer {
    child: Child,
    log: PathBuf,
}

impl Peer {
    /// Starts `cordon-guest-agent --peer KIND ARGS...`.
    fn start(dir: &Path, label: &str, args: &[&str]) -> anyhow::Result<Peer> {
        let log = dir.join(format!("peer-{label}.log"));
        let f = std::fs::File::create(&log)?;
        let child = Command::new(cordon_bin("cordon-guest-agent", "cordon-guest-agent")?)
            .arg("--peer")
            .arg(label)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()?;
        Ok(Peer { child, log })
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `t` until the peer printed a line containing every one of `needles`
    /// (it reports after finishing its stream, possibly after the guest is done); its output.
    fn wait_for_line(&self, needles: &[&str], t: Duration) -> String {
        let start = Instant::now();
        loop {
            let out = self.output();
            let found = out.lines().any(|l| needles.iter().all(|n| l.contains(n)));
            if found || start.elapsed() > t {
                return out;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `t` for the peer to exit; its output.
    fn wait(&mut self, t: Duration) -> String {
        let start = Instant::now();
        while start.elapsed() < t {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.output()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The privileged parent's part of net: a network namespace of the test's own, a TAP in it
/// (host end [`HOST_IP`]/24 with MAC [`TAP_MAC`], up, the guest's address as a permanent
/// neighbour) and a UDP socket on the host end. Created on a thread of its own, since
/// `unshare(CLONE_NEWNET)` moves only the calling thread; the namespace lives on through the
/// TAP fd and the socket.
fn tap_in_new_netns() -> anyhow::Result<(Tap, UdpSocket)> {
    std::thread::spawn(|| -> anyhow::Result<(Tap, UdpSocket)> {
        // SAFETY: unshare with CLONE_NEWNET affects only this thread, which ends here.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!(
                "unshare(CLONE_NEWNET): {} (the test needs root)",
                std::io::Error::last_os_error()
            );
        }
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let st = Command::new("ip").args(args).status().map_err(|e| {
                anyhow::anyhow!(
                    "`ip` not found ({e}): apt-get install iproute2 (bash scripts/setup)"
                )
            })?;
            anyhow::ensure!(st.success(), "ip {args:?} failed in the test's netns");
            Ok(())
        };
        let tap = Tap::create(TAP_NAME, 1)?;
        ip(&["link", "set", TAP_NAME, "address", &mac_str(&TAP_MAC)])?;
        tap.configure(Some(HOST_IP), Some(Ipv4Addr::new(255, 255, 255, 0)))?;
        let guest_ip = GUEST_IP.to_string();
        let guest_mac = mac_str(&GUEST_MAC);
        ip(&[
            "neigh",
            "replace",
            &guest_ip,
            "lladdr",
            &guest_mac,
            "dev",
            TAP_NAME,
            "nud",
            "permanent",
        ])?;
        let sock = UdpSocket::bind((HOST_IP, UDP_PORT))?;
        sock.set_read_timeout(Some(T))?;
        Ok((tap, sock))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

fn mac_str(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Internet checksum (RFC 1071) of an IPv4 header.
fn ip_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + UDP frame (UDP checksum 0: none) from the guest to the TAP's end.
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&TAP_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&GUEST_IP.octets());
    ip.extend_from_slice(&HOST_IP.octets());
    let c = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&GUEST_UDP_PORT.to_be_bytes());
    f.extend_from_slice(&UDP_PORT.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The UDP payload of `frame` if it is IPv4/UDP to the guest's port.
fn udp_payload_to_guest(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < 42 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let udp = frame.get(14 + ihl..)?;
    if udp.len() < 8 || u16::from_be_bytes([udp[2], udp[3]]) != GUEST_UDP_PORT {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    udp.get(8..len)
}

#[test]
fn guest_uses_backends_running_in_runc_containers() -> anyhow::Result<()> {
    // Prepare the guest kernel and initramfs first (minutes on a cold cache): the host peers
    // below retry for a bounded time once started.
    cordon_tests::guest::assets::assets()?;
    let dir = tempfile::tempdir()?;
    let sockets = dir.path().join("sockets");
    std::fs::create_dir_all(&sockets)?;
    let image = dir.path().join("disk.img");
    let mut data = vec![0u8; 8 << 20];
    data[..HOST_BYTES.len()].copy_from_slice(HOST_BYTES);
    std::fs::write(&image, &data)?;
    let rng = Container::start(
        dir.path(),
        &ContainerSpec {
            id: container_id("rng"),
            binary: build_static("cordon-rng", "rng-device")?,
            args: vec!["--socket-path".into(), "/run/cordon/rng.sock".into()],
            binds: vec![sock_bind(&sockets)],
            ..Default::default()
        },
    )?;
    let blk = Container::start(
        dir.path(),
        &ContainerSpec {
            id: container_id("block"),
            binary: build_static("cordon-block", "block-device")?,
            args: vec![
                "--socket-path".into(),
                "/run/cordon/blk.sock".into(),
                "--file".into(),
                "/disk.img".into(),
            ],
            binds: vec![
                sock_bind(&sockets),
                Bind {
                    host: image.clone(),
                    container: "/disk.img".into(),
                    writable: true,
                },
            ],
            ..Default::default()
        },
    )?;
    let vsock = Container::start(
        dir.path(),
        &ContainerSpec {
            id: container_id("vsock"),
            binary: build_static("cordon-vsock", "vsock-device")?,
            args: vec![
                "--socket-path".into(),
                "/run/cordon/vsock.sock".into(),
                "--cid".into(),
                "3".into(),
                "--uds-path".into(),
                "/run/cordon/vsock".into(),
            ],
            binds: vec![sock_bind(&sockets)],
            ..Default::default()
        },
    )?;
    let all = [&rng, &blk, &vsock];
    for (c, s) in all.iter().zip(["rng", "blk", "vsock"]) {
        c.wait_for_path(&sockets.join(format!("{s}.sock")), T)?;
    }
    let mut jails = Vec::new();
    for (c, what) in all.iter().zip(["rng", "block", "vsock"]) {
        jails.push((what, assert_confined(c, what)?));
    }

    // Host ends: a Unix echo for guest->host vsock (its listener lives in the shared
    // directory, `<uds-path>_<port>`), and a host->guest vsock stream.
    let g2h = sockets.join(format!("vsock_{VSOCK_G2H_PORT}"));
    let mut echo = Peer::start(dir.path(), "unix-echo", &[g2h.to_str().unwrap_or_default()])?;
    let start = Instant::now();
    while !g2h.exists() {
        anyhow::ensure!(
            start.elapsed() < T && matches!(echo.child.try_wait(), Ok(None)),
            "unix-echo peer did not listen: {}",
            echo.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let uds = sockets.join("vsock");
    let mut h2g = Peer::start(
        dir.path(),
        "vsock-connect",
        &[
            uds.to_str().unwrap_or_default(),
            &VSOCK_H2G_PORT.to_string(),
            &VSOCK_H2G_LEN.to_string(),
        ],
    )?;

    let r = GuestRunner::tcg()
        .name("containers")
        .vhost_user_rng(sockets.join("rng.sock"))
        .vhost_user_blk(sockets.join("blk.sock"))
        .vhost_user_vsock(sockets.join("vsock.sock"))
        .checks(&[
            Check::hwrng(32),
            Check::blk_read("vda", 0, HOST_BYTES.len()),
            Check::blk_write("vda", 4096, GUEST_BYTES),
            Check::new("vsock-connect")
                .arg("cid", 2)
                .arg("port", VSOCK_G2H_PORT)
                .bytes("send", VSOCK_PAYLOAD)
                .bytes("expect", VSOCK_PAYLOAD),
            Check::new("vsock-listen").arg("port", VSOCK_H2G_PORT),
        ])
        .run()
        .map_err(|e| {
            e.context(format!(
                "guest run against containerized backends failed\n{}\n--- peers:\n{}\n{}",
                reports(&all),
                echo.output(),
                h2g.output()
            ))
        })?;

    let h = r.check("hwrng")?;
    assert_ne!(h.bytes("first")?, h.bytes("second")?);
    assert_eq!(r.check("blk-read")?.bytes("hex")?, HOST_BYTES);
    r.check("blk-write")?;
    let back = std::fs::read(&image)?;
    assert_eq!(&back[4096..4096 + GUEST_BYTES.len()], GUEST_BYTES);
    assert_eq!(r.check("vsock-connect")?.bytes("received")?, VSOCK_PAYLOAD);
    let want = format!("bytes={} ", VSOCK_PAYLOAD.len());
    let echoed = echo.wait_for_line(&[&want, "ok=true"], T);
    assert!(
        echoed
            .lines()
            .any(|l| l.contains(&want) && l.contains("ok=true")),
        "guest->host vsock did not reach the host's Unix socket: {echoed}"
    );
    let out = h2g.wait(T);
    assert!(
        out.contains(&format!("received={VSOCK_H2G_LEN} ")) && out.contains("ok=true"),
        "host->guest vsock (CONNECT {VSOCK_H2G_PORT}) not echoed intact: {out}\n{}",
        vsock.report()
    );
    for c in all {
        assert_eq!(c.status()?, "running", "{}", c.report());
    }
    for (what, j) in jails {
        eprintln!("{what}: {j:?}");
    }
    Ok(())
}

#[test]
fn net_backend_in_runc_container_moves_frames_through_a_handed_over_tap() -> anyhow::Result<()> {
    const RX: usize = 0;
    const TX: usize = 1;
    let dir = tempfile::tempdir()?;
    let sockets = dir.path().join("sockets");
    std::fs::create_dir_all(&sockets)?;
    let (tap, host) = tap_in_new_netns()?;
    // The TAP is the net container's only network resource: fd 3, no /dev/net/tun, no
    // CAP_NET_ADMIN, a network namespace of its own.
    let net = Container::start(
        dir.path(),
        &ContainerSpec {
            id: container_id("net"),
            binary: build_static("cordon-net", "net-device")?,
            args: vec![
                "--socket-path".into(),
                "/run/cordon/net.sock".into(),
                "--tap-fd".into(),
                "3".into(),
            ],
            binds: vec![sock_bind(&sockets)],
            pass_fds: vec![tap.fd(0)],
        },
    )?;
    net.wait_for_path(&sockets.join("net.sock"), T)?;
    let jail = assert_confined(&net, "net")?;
    let mut drv = VhostUserDriver::connect(
        &sockets.join("net.sock"),
        DriverConfig::new(2).with_features(VIRTIO_NET_F_MRG_RXBUF),
    )
    .map_err(|e| anyhow::anyhow!("vhost-user connect: {e}\n{}", net.report()))?;

    // Guest -> host: a UDP datagram on the transmit queue reaches the host's socket.
    let out = b"frame from the guest side through the container";
    let mut pkt = vec![0u8; 12];
    pkt.extend_from_slice(&udp_frame(out));
    drv.request(TX, &[&pkt], &[], T)?;
    let mut buf = [0u8; 2048];
    let (n, from) = host.recv_from(&mut buf).map_err(|e| {
        anyhow::anyhow!(
            "the guest's datagram never reached the TAP's host end: {e}\n{}",
            net.report()
        )
    })?;
    assert_eq!(&buf[..n], out);
    assert_eq!(from, std::net::SocketAddr::from((GUEST_IP, GUEST_UDP_PORT)));

    // Host -> guest: the host's answer arrives on the receive queue (other frames the
    // kernel sends on a fresh link, e.g. IPv6 neighbour discovery, are skipped).
    let back = b"answer from the host's network namespace";
    host.send_to(back, (GUEST_IP, GUEST_UDP_PORT))?;
    let start = Instant::now();
    let got = loop {
        anyhow::ensure!(
            start.elapsed() < T,
            "the host's datagram never reached the receive queue\n{}",
            net.report()
        );
        let c = drv.request(RX, &[], &[4096], T)?;
        let frame = c.written[0]
            .get(12..c.len as usize)
            .unwrap_or_default()
            .to_vec();
        if let Some(p) = udp_payload_to_guest(&frame) {
            break p.to_vec();
        }
    };
    assert_eq!(got, back);
    assert_eq!(net.status()?, "running", "{}", net.report());
    eprintln!("net: {jail:?}");
    // Our copy of the TAP kept the interface for the test; the device holds its own.
    drop(tap);
    Ok(())
}

/// Accepts one connection within [`T`].
fn accept_within(l: &UnixListener) -> anyhow::Result<UnixStream> {
    l.set_nonblocking(true)?;
    let start = Instant::now();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && start.elapsed() < T => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[test]
fn serial_backend_in_runc_container_moves_console_bytes_both_ways() -> anyhow::Result<()> {
    const RX: usize = 0;
    const TX: usize = 1;
    let dir = tempfile::tempdir()?;
    let sockets = dir.path().join("sockets");
    std::fs::create_dir_all(&sockets)?;
    // The console's host end: a Unix stream socket in the shared directory, listened on by
    // the host before the container starts (the device connects to it before jailing).
    let peer_path = sockets.join("console.peer");
    let peer_l = UnixListener::bind(&peer_path)?;
    let con = Container::start(
        dir.path(),
        &ContainerSpec {
            id: container_id("serial"),
            binary: build_static("cordon-serial", "serial-device")?,
            args: vec![
                "--socket-path".into(),
                "/run/cordon/con.sock".into(),
                "--port".into(),
                "type=unix-stream,path=/run/cordon/console.peer".into(),
            ],
            binds: vec![sock_bind(&sockets)],
            ..Default::default()
        },
    )?;
    let mut peer = accept_within(&peer_l).map_err(|e| {
        e.context(format!(
            "the console container never connected to its host end\n{}",
            con.report()
        ))
    })?;
    peer.set_read_timeout(Some(T))?;
    con.wait_for_path(&sockets.join("con.sock"), T)?;
    let jail = assert_confined(&con, "serial")?;

    let mut drv = VhostUserDriver::connect(&sockets.join("con.sock"), DriverConfig::new(2))
        .map_err(|e| anyhow::anyhow!("vhost-user connect: {e}\n{}", con.report()))?;
    // Guest output (transmit queue) reaches the host's socket.
    let out = b"console output from the guest side";
    let c = drv.request(TX, &[out], &[], T)?;
    assert_eq!(c.len, 0);
    let mut got = vec![0u8; out.len()];
    peer.read_exact(&mut got).map_err(|e| {
        anyhow::anyhow!(
            "console output never reached the host: {e}\n{}",
            con.report()
        )
    })?;
    assert_eq!(&got, out);
    // Host input reaches the receive queue.
    let input = b"typed on the host";
    peer.write_all(input)?;
    let mut rx = Vec::new();
    let start = Instant::now();
    while rx.len() < input.len() && start.elapsed() < T {
        let c = drv.request(RX, &[], &[input.len() - rx.len()], T)?;
        rx.extend_from_slice(&c.written[0][..c.len as usize]);
    }
    assert_eq!(rx, input, "{}", con.report());
    assert_eq!(con.status()?, "running", "{}", con.report());
    eprintln!("serial: {jail:?}");
    Ok(())
}

fn le(b: &[u8], o: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(w)
}

#[test]
fn wayland_backend_in_runc_container_reaches_weston() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sockets = dir.path().join("sockets");
    std::fs::create_dir_all(&sockets)?;
    // weston's runtime directory is the container's only view of the compositor.
    let xdg = dir.path().join("xdg");
    std::fs::create_dir_all(&xdg)?;
    std::fs::set_permissions(&xdg, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let weston = Command::new("weston")
        .env("XDG_RUNTIME_DIR", &xdg)
        .args([
            "--backend=headless-backend.so",
            "--use-pixman",
            "--socket=wayland-0",
            "--idle-time=0",
            "--no-config",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start weston ({e}): apt-get install weston (bash scripts/setup)"
            )
        })?;
    let _weston = Peer {
        child: weston,
        log: dir.path().join("weston.log"),
    };
    let wsock = xdg.join("wayland-0");
    let start = Instant::now();
    // weston binds before it listens: wait for an accepted connection, not the path.
    while UnixStream::connect(&wsock).is_err() {
        anyhow::ensure!(start.elapsed() < T, "weston did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    let wl = Container::start(
        dir.path(),
        &ContainerSpec {
            id: container_id("wayland"),
            binary: build_static("cordon-wayland", "wayland-device")?,
            args: vec![
                "--socket-path".into(),
                "/run/cordon/wl.sock".into(),
                "--wayland-sock".into(),
                "/run/wayland/wayland-0".into(),
            ],
            binds: vec![
                sock_bind(&sockets),
                Bind {
                    host: xdg.clone(),
                    container: "/run/wayland".into(),
                    writable: true,
                },
            ],
            ..Default::default()
        },
    )?;
    wl.wait_for_path(&sockets.join("wl.sock"), T)?;
    let jail = assert_confined(&wl, "wayland")?;

    let mut drv = VhostUserDriver::connect(&sockets.join("wl.sock"), DriverConfig::new(2))
        .map_err(|e| anyhow::anyhow!("vhost-user connect: {e}\n{}", wl.report()))?;
    let mut inbufs = std::collections::HashMap::new();
    for _ in 0..16 {
        let a = drv.alloc(4096)?;
        let h = drv.submit(
            0,
            &[Buffer {
                addr: a,
                len: 4096,
                writable: true,
            }],
        )?;
        inbufs.insert(h, a);
    }
    // VFD_NEW_CTX id 1.
    let mut c = 260u32.to_le_bytes().to_vec();
    c.extend_from_slice(&[0; 4]);
    c.extend_from_slice(&1u32.to_le_bytes());
    let r = drv.request(1, &[&c], &[64], T)?;
    assert_eq!(le(&r.written[0], 0), 4097, "RESP_VFD_NEW\n{}", wl.report());
    // VFD_SEND: wl_display.get_registry(2), wl_display.sync(3).
    let mut s = 258u32.to_le_bytes().to_vec();
    s.extend_from_slice(&[0; 4]);
    s.extend_from_slice(&1u32.to_le_bytes());
    s.extend_from_slice(&0u32.to_le_bytes());
    for (op, id) in [(1u32, 2u32), (0, 3)] {
        s.extend_from_slice(&1u32.to_le_bytes());
        s.extend_from_slice(&((12 << 16) | op).to_le_bytes());
        s.extend_from_slice(&id.to_le_bytes());
    }
    let r = drv.request(1, &[&s], &[64], T)?;
    assert_eq!(le(&r.written[0], 0), 4096, "RESP_OK\n{}", wl.report());
    // Collect VFD_RECV data until the registry announced its globals.
    let mut stream = Vec::new();
    let start = Instant::now();
    loop {
        let text = String::from_utf8_lossy(&stream).into_owned();
        if text.contains("wl_compositor") && text.contains("wl_shm") {
            break;
        }
        anyhow::ensure!(
            start.elapsed() < T,
            "no registry from weston through the container: {text:?}\n{}",
            wl.report()
        );
        for u in drv.wait(0, Duration::from_millis(200)).unwrap_or_default() {
            let Some(&a) = inbufs.get(&u.head) else {
                continue;
            };
            let m = drv.read(a, u.len as usize)?;
            assert_eq!(le(&m, 0), 259, "VFD_RECV");
            assert_eq!(le(&m, 8), 1, "on context 1");
            let n = le(&m, 12) as usize;
            stream.extend_from_slice(&m[16 + 4 * n..]);
        }
    }
    assert_eq!(wl.status()?, "running", "{}", wl.report());
    eprintln!("wayland: {jail:?}");
    Ok(())
}
