//! Stream checks over TCP (virtio-net) and AF_VSOCK (virtio-vsock): connect and exchange, or
//! listen, receive and echo.

use crate::hex;
use crate::report::{emit, Outcome};
use crate::spec::CheckSpec;
use crate::sysutil::run;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::io::AsRawFd;
use std::time::{Duration, Instant};

/// How long a connect is retried while the peer is not listening yet.
const CONNECT_RETRY: Duration = Duration::from_secs(10);

/// Configures the guest interface (idempotent): `iface` (default: first non-lo), `ip` (CIDR).
pub fn net_up(c: &CheckSpec) -> Result<String, String> {
    let iface = match c.params.get("iface") {
        Some(i) => i.clone(),
        None => first_iface()?,
    };
    let ip = c.str_or("ip", "10.0.2.15/24");
    run("ip", &["link", "set", "dev", &iface, "up"])?;
    if let Err(e) = run("ip", &["addr", "add", &ip, "dev", &iface]) {
        if !(e.contains("exists") || e.contains("already assigned")) {
            return Err(e);
        }
    }
    Ok(iface)
}

fn first_iface() -> Result<String, String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map_err(|e| format!("/sys/class/net: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names
        .into_iter()
        .next()
        .ok_or_else(|| "no network interface (virtio_net missing?)".into())
}

/// `net-stats[:iface=NAME]`: the interface's counters (/sys/class/net/NAME/statistics) and
/// the kernel's TCP counters (/proc/net/snmp), for diagnosing a stalled stream.
pub fn stats(c: &CheckSpec) -> Result<Outcome, String> {
    let iface = match c.params.get("iface") {
        Some(i) => i.clone(),
        None => first_iface()?,
    };
    let mut out = Outcome::pass(format!("counters of {iface}"));
    for k in [
        "rx_packets",
        "rx_bytes",
        "rx_dropped",
        "rx_errors",
        "tx_packets",
        "tx_bytes",
        "tx_dropped",
    ] {
        let v = crate::sysutil::read_trim(&format!("/sys/class/net/{iface}/statistics/{k}"))?;
        out = out.with(k, v);
    }
    let snmp =
        std::fs::read_to_string("/proc/net/snmp").map_err(|e| format!("/proc/net/snmp: {e}"))?;
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    if let [names, values] = tcp.as_slice() {
        let pairs: Vec<String> = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        out = out.with("tcp", pairs.join(" "));
    }
    Ok(out)
}

/// `net-ping:ip=CIDR:peer=IP[:count=3]`: brings the interface up and pings the peer.
pub fn ping(c: &CheckSpec) -> Result<Outcome, String> {
    let iface = net_up(c)?;
    let peer = c.req("peer")?;
    let count = c.u64_or("count", 3)?.to_string();
    let text = run("ping", &["-c", &count, "-W", "2", &peer])?;
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains("received"))
        .unwrap_or("")
        .to_string();
    Ok(Outcome::pass(format!("{iface}: {summary}")).with("iface", iface))
}

fn exchange<S: Read + Write>(
    mut s: S,
    shut: impl FnOnce(&S),
    c: &CheckSpec,
) -> Result<Outcome, String> {
    let send = c.hex("send")?.unwrap_or_else(|| b"cordon".to_vec());
    s.write_all(&send).map_err(|e| format!("send: {e}"))?;
    shut(&s);
    let got = receive(&mut s, c)?;
    let mut out = with_received(
        Outcome::pass(format!("sent {} bytes, received {}", send.len(), got.len())),
        &got,
    );
    if let Some(e) = c.hex("expect")? {
        if e != got {
            out.ok = false;
            out.detail = mismatch(&e, &got);
        }
    }
    Ok(out)
}

fn echo<S: Read + Write>(mut s: S, c: &CheckSpec) -> Result<Outcome, String> {
    let got = receive(&mut s, c)?;
    s.write_all(&got).map_err(|e| format!("echo: {e}"))?;
    let mut out = with_received(
        Outcome::pass(format!("received and echoed {} bytes", got.len())),
        &got,
    );
    if let Some(e) = c.hex("expect")? {
        if e != got {
            out.ok = false;
            out.detail = mismatch(&e, &got);
        }
    }
    Ok(out)
}

/// Longest payload a result line carries in full (`received`, hex); longer ones are
/// reported as `received_len` and `received_fnv` only. Result lines go out on the serial
/// console, which under nested emulation moves a few KiB per second: 256 KiB in hex took
/// minutes there.
pub const MAX_ECHOED: usize = 4096;

/// Adds what was received to `out`: the bytes in hex when short, always their length
/// and FNV-1a fingerprint.
fn with_received(out: Outcome, got: &[u8]) -> Outcome {
    let out = out
        .with("received_len", got.len().to_string())
        .with("received_fnv", format!("{:016x}", hex::fnv(got)));
    if got.len() <= MAX_ECHOED {
        out.with("received", hex::encode(got))
    } else {
        out
    }
}

/// The detail of a payload that differs from the expected one: both in hex when short,
/// else their lengths and fingerprints.
fn mismatch(expected: &[u8], got: &[u8]) -> String {
    if expected.len().max(got.len()) <= MAX_ECHOED {
        return format!(
            "expected {}, got {}",
            hex::encode(expected),
            hex::encode(got)
        );
    }
    format!(
        "expected {} bytes (fnv {:016x}), got {} bytes (fnv {:016x})",
        expected.len(),
        hex::fnv(expected),
        got.len(),
        hex::fnv(got)
    )
}

/// Reads the peer's bytes: exactly `len` if given (for peers that never half-close), else
/// to EOF.
fn receive<S: Read>(s: &mut S, c: &CheckSpec) -> Result<Vec<u8>, String> {
    match c.params.get("len") {
        Some(_) => {
            let mut got = vec![0u8; c.u64_or("len", 0)? as usize];
            s.read_exact(&mut got)
                .map_err(|e| format!("receive: {e}"))?;
            Ok(got)
        }
        None => {
            let mut got = Vec::new();
            s.read_to_end(&mut got)
                .map_err(|e| format!("receive: {e}"))?;
            Ok(got)
        }
    }
}

/// Retries `f` for [`CONNECT_RETRY`] while it fails (the peer is not listening yet).
pub(crate) fn retry<T>(what: &str, mut f: impl FnMut() -> std::io::Result<T>) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > CONNECT_RETRY => return Err(format!("{what}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `net-tcp:ip=CIDR:peer=IP:port=N[:send=HEX][:expect=HEX]`: connects, sends, half-closes,
/// reads the reply to EOF.
pub fn tcp_connect(c: &CheckSpec) -> Result<Outcome, String> {
    net_up(c)?;
    let addr = format!("{}:{}", c.req("peer")?, c.u64_or("port", 7000)?);
    let s = retry(&format!("connect {addr}"), || TcpStream::connect(&addr))?;
    exchange(s, |s| drop(s.shutdown(Shutdown::Write)), c)
}

/// `net-tcp-listen:ip=CIDR:port=N[:expect=HEX]`: accepts one connection, reads to EOF,
/// echoes the bytes back.
pub fn tcp_listen(c: &CheckSpec) -> Result<Outcome, String> {
    net_up(c)?;
    let port = c.u64_or("port", 7000)?;
    let l = TcpListener::bind(("0.0.0.0", port as u16)).map_err(|e| format!("bind {port}: {e}"))?;
    emit(&format!("CORDON-LISTENING tcp port={port}"));
    let (s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    echo(s, c)
}

fn vsock_socket() -> Result<OwnedFd, String> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "socket(AF_VSOCK): {} (vsock modules missing?)",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

const VM_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// Half-closes a socket held as a `File`.
pub(crate) fn shut_write(f: &File) {
    // SAFETY: shutdown(2) on an open socket fd.
    unsafe { libc::shutdown(f.as_raw_fd(), libc::SHUT_WR) };
}

/// Connects a vsock stream to `cid:port`, retrying while nobody listens.
pub(crate) fn vsock_connect_stream(cid: u32, port: u32) -> Result<File, String> {
    retry(&format!("vsock connect {cid}:{port}"), || {
        let s = vsock_socket().map_err(std::io::Error::other)?;
        let a = vsock_addr(cid, port);
        // SAFETY: a is a valid sockaddr_vm of VM_LEN bytes.
        let r = unsafe {
            libc::connect(
                s.as_raw_fd(),
                (&a as *const libc::sockaddr_vm).cast(),
                VM_LEN,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(File::from(s))
    })
}

/// `vsock-connect:cid=2:port=N[:send=HEX][:expect=HEX]`: connects to the host (or `cid`),
/// sends, half-closes, reads the reply to EOF (or `len` bytes). `hold=1`: no half-close, and
/// the stream stays open after the check.
pub fn vsock_connect(c: &CheckSpec) -> Result<Outcome, String> {
    let cid = c.u64_or("cid", 2)? as u32;
    let port = c.u64_or("port", 7000)? as u32;
    let f = vsock_connect_stream(cid, port)?;
    if c.u64_or("hold", 0)? == 1 {
        // Keep the stream open after the exchange (no half-close, never closed), so the
        // host can watch what happens to an open stream, e.g. when the device restarts.
        let keep = f.try_clone().map_err(|e| format!("dup: {e}"))?;
        let out = exchange(f, |_| {}, c)?;
        HELD.lock().unwrap_or_else(|p| p.into_inner()).push(keep);
        return Ok(out.with("held", 1));
    }
    exchange(f, shut_write, c)
}

/// Streams kept open by `vsock-connect:hold=1`, for `vsock-held` to look at later.
static HELD: std::sync::Mutex<Vec<File>> = std::sync::Mutex::new(Vec::new());

/// What became of a held stream.
fn held_state(f: &File, wait_ms: i32) -> Result<(&'static str, i32), String> {
    let mut p = libc::pollfd {
        fd: f.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, wait_ms) };
    if n < 0 {
        return Err(format!("poll: {}", std::io::Error::last_os_error()));
    }
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR into a c_int of the stated length.
    unsafe {
        libc::getsockopt(
            f.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if n == 0 {
        return Ok(("open", err));
    }
    let mut b = [0u8; 1];
    // SAFETY: non-blocking one-byte read into our buffer.
    let r = unsafe { libc::recv(f.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_DONTWAIT) };
    Ok(match r {
        0 => ("closed", err),
        r if r < 0 => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock => ("open", err),
            _ => ("reset", err),
        },
        _ => ("data", err),
    })
}

/// `vsock-held[:expect=reset|open][:wait_ms=3000]`: what became of the streams held open
/// by earlier `vsock-connect:hold=1` checks. `reset` (the default) passes when every held
/// stream has ended (closed or reset: e.g. the device sent a transport reset after it was
/// restarted), `open` when every one is still open after `wait_ms`.
pub fn vsock_held(c: &CheckSpec) -> Result<Outcome, String> {
    let expect = c.params.get("expect").map_or("reset", String::as_str);
    if expect != "reset" && expect != "open" {
        return Err(format!("expect={expect}: must be reset or open"));
    }
    let wait_ms = c.u64_or("wait_ms", 3000)?.min(60_000) as i32;
    let held = HELD.lock().unwrap_or_else(|p| p.into_inner());
    if held.is_empty() {
        return Err("no held stream: run vsock-connect with hold=1 first".into());
    }
    let mut states = Vec::new();
    let mut errors = Vec::new();
    for f in held.iter() {
        let (state, err) = held_state(f, wait_ms)?;
        states.push(state);
        errors.push(err.to_string());
    }
    let ended = |s: &&str| *s == "closed" || *s == "reset";
    let ok = if expect == "reset" {
        states.iter().all(ended)
    } else {
        states.iter().all(|s| *s == "open")
    };
    let detail = format!("held streams: {} (expected {expect})", states.join(" "));
    let out = if ok {
        Outcome::pass(detail)
    } else {
        Outcome::fail(detail)
    };
    Ok(out
        .with("states", states.join(" "))
        .with("so_error", errors.join(" ")))
}

/// Listens on vsock `port` (any CID), prints `CORDON-LISTENING vsock port=N`, accepts one
/// stream.
pub(crate) fn vsock_accept(port: u32) -> Result<File, String> {
    let s = vsock_socket()?;
    let a = vsock_addr(libc::VMADDR_CID_ANY, port);
    // SAFETY: a is a valid sockaddr_vm of VM_LEN bytes.
    if unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            VM_LEN,
        )
    } != 0
    {
        return Err(format!(
            "vsock bind {port}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: listen(2) on a bound socket.
    if unsafe { libc::listen(s.as_raw_fd(), 1) } != 0 {
        return Err(format!("vsock listen: {}", std::io::Error::last_os_error()));
    }
    emit(&format!("CORDON-LISTENING vsock port={port}"));
    // SAFETY: accept(2) with null address pointers.
    let fd = unsafe {
        libc::accept4(
            s.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!("vsock accept: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by accept4 and is owned by nobody else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `vsock-listen:port=N[:expect=HEX]`: accepts one connection from the host, reads to EOF,
/// echoes the bytes back.
pub fn vsock_listen(c: &CheckSpec) -> Result<Outcome, String> {
    let port = c.u64_or("port", 7000)? as u32;
    let f = vsock_accept(port)?;
    echo(f, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_payloads_are_echoed_in_full_long_ones_by_fingerprint() {
        let short = with_received(Outcome::pass(""), b"PONG");
        assert_eq!(short.data["received"], "504f4e47");
        assert_eq!(short.data["received_len"], "4");
        let long_data = vec![7u8; MAX_ECHOED + 1];
        let long = with_received(Outcome::pass(""), &long_data);
        assert!(!long.data.contains_key("received"));
        assert_eq!(long.data["received_len"], (MAX_ECHOED + 1).to_string());
        assert_eq!(
            long.data["received_fnv"],
            format!("{:016x}", hex::fnv(&long_data))
        );
    }

    #[test]
    fn long_mismatches_are_described_by_length_and_fingerprint() {
        assert_eq!(mismatch(b"ab", b"ac"), "expected 6162, got 6163");
        let d = mismatch(&vec![1u8; MAX_ECHOED * 2], b"x");
        assert!(
            d.starts_with(&format!("expected {} bytes (fnv ", MAX_ECHOED * 2)),
            "{d}"
        );
        assert!(d.contains("got 1 bytes"), "{d}");
        assert!(d.len() < 200, "{d}");
    }
}
