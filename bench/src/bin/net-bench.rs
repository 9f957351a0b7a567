//! `net-bench`: frames/s and Gbit/s of Cordon's jailed `net-device` for 64 B and 1500 B
//! frames, guest→host (TX) and host→guest (RX) through the vhost-user frontend library,
//! next to a host process doing the same directly on a TAP fd. Runs in a network namespace
//! of its own (needs root). Writes `bench/results/net.md`.
//!
//! Build and run: `cargo build --release -p cordon-net -p cordon-bench &&
//! target/release/net-bench`.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use cordon_frontend::vhost_user::{Buffer, DriverConfig, VhostUserDriver};
use cordon_net::tap::Tap;

const MRG_RXBUF: u64 = 1 << 15;
const VNET: usize = 12;

/// Net benchmark (not a test).
#[derive(Parser, Debug)]
#[command(name = "net-bench")]
struct Args {
    /// The `net-device` binary (default: next to this executable).
    #[arg(long)]
    net_device: Option<PathBuf>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Markdown output.
    #[arg(long, default_value = "bench/results/net.md")]
    out: PathBuf,
}

use cordon_bench::process::Proc;

/// An Ethernet frame of `len` bytes (experimental ethertype: the host stack drops it cheaply).
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f
}

/// Packets the TAP received from its fd (the guest's TX), from /proc/net/dev (per netns).
fn tap_rx_packets(tap: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == tap).then(|| rest.split_whitespace().nth(1)?.parse().ok())?
        })
        .unwrap_or(0)
}

/// Guest TX through the device: frames/s counted by the TAP's rx_packets.
fn device_tx(drv: &mut VhostUserDriver, tap: &str, len: usize, secs: f64) -> anyhow::Result<f64> {
    let mut pkt = vec![0u8; VNET];
    pkt.extend_from_slice(&frame(len));
    let a = drv.alloc(pkt.len())?;
    drv.write(a, &pkt)?;
    let mem = drv.memory().clone();
    let before = tap_rx_packets(tap);
    let start = Instant::now();
    let mut inflight = 0usize;
    while start.elapsed().as_secs_f64() < secs {
        while inflight < 256 {
            match drv.queue(1)?.add(
                &mem,
                &[Buffer {
                    addr: a,
                    len: pkt.len() as u32,
                    writable: false,
                }],
            ) {
                Ok(_) => inflight += 1,
                Err(_) => break,
            }
        }
        drv.queue(1)?.kick()?;
        inflight -= drv.queue(1)?.wait_used(&mem, Duration::from_secs(5))?.len();
    }
    let el = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    Ok((tap_rx_packets(tap) - before) as f64 / el)
}

/// Host writes straight to a TAP fd: frames/s.
fn direct_tx(tap: &Tap, len: usize, secs: f64) -> f64 {
    let mut pkt = vec![0u8; VNET];
    pkt.extend_from_slice(&frame(len));
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..1000 {
            // SAFETY: writes our buffer to our TAP fd.
            if unsafe { libc::write(tap.fd(0), pkt.as_ptr().cast(), pkt.len()) } > 0 {
                n += 1;
            }
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// An AF_PACKET socket sending raw frames out of interface `name` (towards its TAP reader).
fn packet_sender(name: &str) -> anyhow::Result<(std::os::fd::OwnedFd, libc::sockaddr_ll)> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscalls, results checked.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let c = std::ffi::CString::new(name)?;
        let idx = libc::if_nametoindex(c.as_ptr());
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = idx as i32;
        sll.sll_halen = 6;
        Ok((std::os::fd::OwnedFd::from_raw_fd(fd), sll))
    }
}

fn send_frames(fd: i32, sll: &libc::sockaddr_ll, f: &[u8], stop: &std::sync::atomic::AtomicBool) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: sends our buffer to a valid sockaddr_ll.
        unsafe {
            libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
    }
}

/// Host → guest through the device: frames/s received by the guest driver.
fn device_rx(
    drv: &mut VhostUserDriver,
    bufs: &mut HashMap<u16, vm_memory::GuestAddress>,
    tap: &str,
    len: usize,
    secs: f64,
) -> anyhow::Result<f64> {
    if bufs.is_empty() {
        for _ in 0..256 {
            let a = drv.alloc(2048)?;
            let h = drv.submit(
                0,
                &[Buffer {
                    addr: a,
                    len: 2048,
                    writable: true,
                }],
            )?;
            bufs.insert(h, a);
        }
    }
    let (fd, sll) = packet_sender(tap)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = frame(len);
    let s2 = stop.clone();
    let raw = fd.as_raw_fd();
    let sender = std::thread::spawn(move || send_frames(raw, &sll, &f, &s2));
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let used = drv.wait(0, Duration::from_millis(200)).unwrap_or_default();
        n += used.len() as u64;
        let mut free = Vec::new();
        for u in used {
            if let Some(a) = bufs.remove(&u.head) {
                free.push(a);
            }
        }
        for a in free {
            let h = drv.submit(
                0,
                &[Buffer {
                    addr: a,
                    len: 2048,
                    writable: true,
                }],
            )?;
            bufs.insert(h, a);
        }
    }
    let el = start.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sender.join();
    Ok(n as f64 / el)
}

/// Host → host process reading the TAP fd directly: frames/s.
fn direct_rx(tap: &Tap, len: usize, secs: f64) -> anyhow::Result<f64> {
    let (fd, sll) = packet_sender(tap.name())?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = frame(len);
    let s2 = stop.clone();
    let raw = fd.as_raw_fd();
    let sender = std::thread::spawn(move || send_frames(raw, &sll, &f, &s2));
    let mut buf = vec![0u8; 65600];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        // SAFETY: reads into our buffer from our TAP fd (non-blocking).
        let r = unsafe { libc::read(tap.fd(0), buf.as_mut_ptr().cast(), buf.len()) };
        if r > 0 {
            n += 1;
        }
    }
    let el = start.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sender.join();
    Ok(n as f64 / el)
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    // A private network namespace for the whole benchmark (and the device it spawns).
    // SAFETY: unshare of this (still single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "unshare(CLONE_NEWNET): {} (run as root)",
            std::io::Error::last_os_error()
        );
    }
    let exe = std::env::current_exe()?;
    let dev = a
        .net_device
        .clone()
        .unwrap_or_else(|| exe.with_file_name("net-device"));
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("net.sock");
    let _p = Proc(
        Command::new(&dev)
            .args([
                "--socket-path",
                sock.to_str().unwrap_or_default(),
                "--tap-name",
                "cbench0",
                "--host-ip",
                "10.88.0.1",
                "--netmask",
                "255.255.255.0",
                "--mac",
                "52:54:00:12:34:56",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn net-device")?,
    );
    let mut cfg = DriverConfig::new(2).with_features(MRG_RXBUF);
    cfg.mem_size = 32 << 20;
    let mut drv = VhostUserDriver::connect(&sock, cfg)?;
    let direct = Tap::create("cbench1", 1)?;
    direct.configure(Some("10.89.0.1".parse()?), Some("255.255.255.0".parse()?))?;
    let mut rows = Vec::new();
    let mut bufs = HashMap::new();
    for len in [64usize, 1500] {
        let dtx = device_tx(&mut drv, "cbench0", len, a.seconds)?;
        let htx = direct_tx(&direct, len, a.seconds);
        let drx = device_rx(&mut drv, &mut bufs, "cbench0", len, a.seconds)?;
        let hrx = direct_rx(&direct, len, a.seconds)?;
        rows.push((len, dtx, htx, drx, hrx));
    }
    let g = |fps: f64, len: usize| fps * len as f64 * 8.0 / 1e9;
    let mut md = String::from("# net benchmark\n\n");
    md.push_str(&format!(
        "Cordon's jailed `net-device` driven through the vhost-user frontend library (guest side: 256 in-flight TX chains, 256 × 2 KiB RX buffers with MRG_RXBUF), next to a host process doing the same directly on a TAP fd. Guest→host frames are counted by the TAP's rx_packets; host→guest frames are sent with an AF_PACKET socket on the TAP and counted where they arrive (guest RX ring, or the direct reader). {} s per cell, {} cores shared with other jobs: indicative numbers.\n\n",
        a.seconds, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    ));
    md.push_str("| frame | direction | net-device frames/s | Gbit/s | direct TAP frames/s | Gbit/s |\n|---|---|---|---|---|---|\n");
    for (len, dtx, htx, drx, hrx) in rows {
        md.push_str(&format!(
            "| {len} B | guest→host | {dtx:.0} | {:.2} | {htx:.0} | {:.2} |\n",
            g(dtx, len),
            g(htx, len)
        ));
        md.push_str(&format!(
            "| {len} B | host→guest | {drx:.0} | {:.2} | {hrx:.0} | {:.2} |\n",
            g(drx, len),
            g(hrx, len)
        ));
    }
    if let Some(p) = a.out.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::File::create(&a.out)?.write_all(md.as_bytes())?;
    print!("{md}");
    Ok(())
}
