//! Host-side peers for end-to-end runs, where the "host" is a minimal system (the nested
//! L1) with nothing but busybox: `--peer unix-echo PATH` serves a Unix socket (the host end
//! of guest-initiated vsock streams, `<uds-path>_<port>`), `--peer vsock-connect UDS PORT
//! LEN` opens a host-initiated vsock stream through the hybrid vsock device
//! (`CONNECT <port>\n` / `OK <n>\n`), sends LEN pseudo-random bytes, half-closes and checks
//! that the guest echoed exactly them, `--peer unix-hold PATH` accepts one stream, answers
//! `KEPT` to its first 4 bytes and reports how the open stream ends. Each prints
//! `CORDON-PEER` lines.
//!
//! Benchmark peers: `--peer sink tcp ADDR|unix PATH` accepts streams forever, counts each
//! one's bytes to EOF and answers with the count (`<n>\n`); `--peer send tcp ADDR LEN` /
//! `--peer send vsock UDS PORT LEN` sends LEN bytes to a guest's `bench-recv` (retrying
//! while it does not listen yet), half-closes and reads the guest's count.

use crate::report::emit;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

/// How long `vsock-connect` keeps retrying while the guest is not listening yet (generous:
/// a nested guest on a loaded machine took over 120 s to reach its init).
const CONNECT_RETRY: Duration = Duration::from_secs(600);

/// How long a `send` peer waits on a stream that stopped moving.
const SEND_STALL: Duration = Duration::from_secs(60);

/// Usage of `--peer`.
const USAGE: &str = "usage: --peer unix-echo PATH | --peer unix-hold PATH | \
--peer vsock-connect UDS PORT LEN | \
--peer sink tcp ADDR | --peer sink unix PATH | --peer send tcp ADDR LEN | \
--peer send vsock UDS PORT LEN";

/// Runs the peer named by `args` (after `--peer`); returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let r = match args {
        [kind, path] if kind == "unix-echo" => unix_echo(path),
        [kind, path] if kind == "unix-hold" => unix_hold(path),
        [kind, uds, port, len] if kind == "vsock-connect" => {
            match (port.parse::<u32>(), len.parse::<usize>()) {
                (Ok(p), Ok(l)) => vsock_connect(uds, p, l),
                _ => Err(format!("vsock-connect: bad PORT {port:?} or LEN {len:?}")),
            }
        }
        [kind, proto, addr] if kind == "sink" => sink(proto, addr),
        [kind, rest @ ..] if kind == "send" => send(rest),
        _ => Err(format!("unknown peer {args:?}; {USAGE}")),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            emit(&format!("CORDON-PEER error {e}"));
            1
        }
    }
}

/// Pseudo-random bytes (xorshift64), the same for the same length.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ len as u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn unix_echo(path: &str) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
    emit(&format!("CORDON-PEER listening {path}"));
    for s in l.incoming() {
        let mut s = s.map_err(|e| format!("accept: {e}"))?;
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let r = s
                .read_to_end(&mut got)
                .and_then(|_| s.write_all(&got))
                .and_then(|_| s.shutdown(Shutdown::Write));
            emit(&format!(
                "CORDON-PEER unix-echo bytes={} fnv={:016x} ok={}",
                got.len(),
                crate::hex::fnv(&got),
                r.is_ok()
            ));
        });
    }
    Ok(())
}

/// Accepts one stream, reads 4 bytes, answers `KEPT` and keeps the stream open until the
/// other side (or the device in between) ends it; reports how it ended.
fn unix_hold(path: &str) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
    emit(&format!("CORDON-PEER listening {path}"));
    let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    let mut got = [0u8; 4];
    s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
    s.write_all(b"KEPT").map_err(|e| format!("write: {e}"))?;
    emit(&format!(
        "CORDON-PEER unix-hold got={} holding",
        String::from_utf8_lossy(&got)
    ));
    let mut rest = [0u8; 64];
    let end = match s.read(&mut rest) {
        Ok(0) => "eof".to_string(),
        Ok(n) => format!("data-{n}"),
        Err(e) => format!("error-{}", e.kind()),
    };
    emit(&format!("CORDON-PEER unix-hold ended={end}"));
    Ok(())
}

fn vsock_connect_once(uds: &str, port: u32, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {uds}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("CONNECT: {e}"))?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("reply: {e}"))?;
    if !line.starts_with("OK ") {
        return Err(format!("device answered {line:?}"));
    }
    let writer = std::thread::spawn({
        let mut s = s.try_clone().map_err(|e| e.to_string())?;
        let data = data.to_vec();
        move || {
            let r = s.write_all(&data);
            let _ = s.shutdown(Shutdown::Write);
            r
        }
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got)
        .map_err(|e| format!("receive: {e}"))?;
    writer
        .join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(|e| format!("send: {e}"))?;
    Ok(got)
}

fn vsock_connect(uds: &str, port: u32, len: usize) -> Result<(), String> {
    let data = pattern(len);
    let start = Instant::now();
    loop {
        match vsock_connect_once(uds, port, &data) {
            Ok(got) if got.is_empty() && start.elapsed() < CONNECT_RETRY => {}
            Ok(got) => {
                emit(&format!(
                    "CORDON-PEER vsock-connect port={port} sent={} received={} sent_fnv={:016x} received_fnv={:016x} ok={}",
                    data.len(),
                    got.len(),
                    crate::hex::fnv(&data),
                    crate::hex::fnv(&got),
                    got == data
                ));
                return if got == data {
                    Ok(())
                } else {
                    Err("echo differs".into())
                };
            }
            Err(e) if start.elapsed() > CONNECT_RETRY => return Err(e),
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Counts one stream's bytes to EOF and answers with the count.
fn count_one<S: Read + Write>(mut s: S, what: &str) {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let r = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let secs = start.elapsed().as_secs_f64();
    let answered = r.and_then(|_| s.write_all(format!("{total}\n").as_bytes()));
    emit(&format!(
        "CORDON-PEER sink {what} bytes={total} secs={secs:.3} ok={}",
        answered.is_ok()
    ));
}

/// Serves a TCP sink on `l` forever (one thread per stream).
pub(crate) fn serve_sink_tcp(l: std::net::TcpListener) -> Result<(), String> {
    for s in l.incoming() {
        let s = s.map_err(|e| format!("accept: {e}"))?;
        std::thread::spawn(move || count_one(s, "tcp"));
    }
    Ok(())
}

fn sink(proto: &str, addr: &str) -> Result<(), String> {
    match proto {
        "tcp" => {
            let l = std::net::TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            emit(&format!("CORDON-PEER listening tcp {addr}"));
            serve_sink_tcp(l)
        }
        "unix" => {
            let _ = std::fs::remove_file(addr);
            let l = UnixListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            emit(&format!("CORDON-PEER listening {addr}"));
            for s in l.incoming() {
                let s = s.map_err(|e| format!("accept: {e}"))?;
                std::thread::spawn(move || count_one(s, "unix"));
            }
            Ok(())
        }
        _ => Err(format!("sink {proto}: accepted values are tcp, unix")),
    }
}

/// What a `send` peer observed.
#[derive(Debug)]
pub(crate) struct Sent {
    /// Bytes the guest said it received.
    pub counted: u64,
    /// Seconds from the connection to the guest's answer.
    pub secs: f64,
}

/// Sends `len` bytes on `s`, half-closes, reads the guest's count.
fn send_on<S: Read + Write>(mut s: S, shut: impl FnOnce(&S), len: u64) -> Result<Sent, String> {
    let start = Instant::now();
    let chunk = pattern(64 * 1024);
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])
            .map_err(|e| format!("send after {} bytes: {e}", len - left))?;
        left -= n as u64;
    }
    shut(&s);
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("reading the guest's count: {e}"))?;
    let counted = reply
        .trim()
        .parse()
        .map_err(|_| format!("guest answered {reply:?}, not a count"))?;
    Ok(Sent {
        counted,
        secs: start.elapsed().as_secs_f64(),
    })
}

/// Sends `len` bytes to a guest's TCP `bench-recv` at `addr`, retrying the connect.
pub(crate) fn send_tcp(addr: &str, len: u64) -> Result<Sent, String> {
    let start = Instant::now();
    let s = loop {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(e) if start.elapsed() > CONNECT_RETRY => {
                return Err(format!("connect {addr}: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    // A stalled stream ends with an error saying how far it got, not a hang.
    s.set_write_timeout(Some(SEND_STALL))
        .and_then(|_| s.set_read_timeout(Some(SEND_STALL)))
        .map_err(|e| e.to_string())?;
    send_on(s, |s| drop(s.shutdown(Shutdown::Write)), len)
}

/// Opens a host-initiated hybrid vsock stream (`CONNECT <port>` / `OK <n>`).
fn vsock_open(uds: &str, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("connect {uds}: {e}"))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("CONNECT: {e}"))?;
    // Read the reply byte by byte: nothing past its newline may be consumed.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            Ok(_) => return Err("device closed the stream before OK".into()),
            Err(e) => return Err(format!("reply: {e}")),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(format!(
            "device answered {:?}",
            String::from_utf8_lossy(&line)
        ));
    }
    Ok(s)
}

fn send(args: &[String]) -> Result<(), String> {
    let bad = |what: &str, v: &str| format!("send: bad {what} {v:?}; {USAGE}");
    let (what, sent) = match args {
        [proto, addr, len] if proto == "tcp" => {
            let len = len.parse().map_err(|_| bad("LEN", len))?;
            (format!("tcp {addr}"), send_tcp(addr, len)?)
        }
        [proto, uds, port, len] if proto == "vsock" => {
            let port: u32 = port.parse().map_err(|_| bad("PORT", port))?;
            let len = len.parse().map_err(|_| bad("LEN", len))?;
            let start = Instant::now();
            let s = loop {
                match vsock_open(uds, port) {
                    Ok(s) => break s,
                    Err(e) if start.elapsed() > CONNECT_RETRY => return Err(e),
                    Err(_) => std::thread::sleep(Duration::from_millis(300)),
                }
            };
            s.set_write_timeout(Some(SEND_STALL))
                .and_then(|_| s.set_read_timeout(Some(SEND_STALL)))
                .map_err(|e| e.to_string())?;
            let sent = send_on(s, |s| drop(s.shutdown(Shutdown::Write)), len)?;
            (format!("vsock {port}"), sent)
        }
        _ => return Err(format!("send {args:?}: {USAGE}")),
    };
    emit(&format!(
        "CORDON-PEER send {what} counted={} secs={:.3}",
        sent.counted, sent.secs
    ));
    Ok(())
}
