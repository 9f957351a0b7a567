//! `vsock-bench`: Cordon `vsock-device` vs rust-vmm's `vhost-device-vsock` (if installed),
//! driven by the same guest code through the vhost-user frontend library: stream
//! throughput both directions and connection setup rate. Writes `bench/results/vsock.md`.
//!
//! Build and run: `cargo build --release -p cordon-vsock -p cordon-bench &&
//! target/release/vsock-bench [--peer /path/to/vhost-device-vsock]`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use cordon_bench::vsock::Guest;

/// vsock benchmark (not a test).
#[derive(Parser, Debug)]
#[command(name = "vsock-bench")]
struct Args {
    /// The `vsock-device` binary (default: next to this executable).
    #[arg(long)]
    vsock_device: Option<PathBuf>,
    /// rust-vmm's `vhost-device-vsock` binary, measured side by side if given and present.
    #[arg(long, default_value = "/tmp/vdv/bin/vhost-device-vsock")]
    peer: PathBuf,
    /// MiB per throughput run.
    #[arg(long, default_value_t = 256)]
    mib: usize,
    /// Connections for the setup-rate run.
    #[arg(long, default_value_t = 500)]
    conns: usize,
    /// Repetitions (median reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Markdown output.
    #[arg(long, default_value = "bench/results/vsock.md")]
    out: PathBuf,
}

use cordon_bench::process::Proc;

struct Row {
    name: String,
    h2g: f64,
    g2h: f64,
    conns: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

fn wait_for(p: &Path) {
    let t = Instant::now();
    while !p.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn measure(
    name: &str,
    cmd: &mut Command,
    sock: &Path,
    uds: &Path,
    a: &Args,
) -> anyhow::Result<Row> {
    let _p = Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {name}"))?,
    );
    wait_for(sock);
    let mut g = Guest::connect(sock)?;
    let total = a.mib << 20;
    let (mut h2g, mut g2h, mut cr) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..a.reps {
        let port = 1000 + rep as u32;
        let (s, hp) = g.host_connect(uds, port)?;
        h2g.push(g.host_to_guest(&s, port, hp, total)?);
        g2h.push(g.guest_to_host(&s, port, hp, total)?);
        drop(s);
        let t = Instant::now();
        for i in 0..a.conns {
            let p = 20000 + (rep * a.conns + i) as u32;
            let (s, hp) = g.host_connect(uds, p)?;
            g.close(p, hp)?;
            drop(s);
        }
        cr.push(a.conns as f64 / t.elapsed().as_secs_f64());
    }
    Ok(Row {
        name: name.into(),
        h2g: median(h2g),
        g2h: median(g2h),
        conns: median(cr),
    })
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let exe = std::env::current_exe()?;
    let dev = a
        .vsock_device
        .clone()
        .unwrap_or_else(|| exe.with_file_name("vsock-device"));
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let (s1, u1) = (dir.path().join("c.sock"), dir.path().join("c.vsock"));
    let mut c = Command::new(&dev);
    c.args([
        "--socket-path",
        s1.to_str().unwrap_or_default(),
        "--uds-path",
        u1.to_str().unwrap_or_default(),
        "--cid",
        "3",
    ]);
    rows.push(measure(
        "Cordon vsock-device (jailed, seccomp)",
        &mut c,
        &s1,
        &u1,
        &a,
    )?);
    let mut peer_note = String::new();
    if a.peer.exists() {
        let (s2, u2) = (dir.path().join("p.sock"), dir.path().join("p.vsock"));
        let mut c = Command::new(&a.peer);
        c.arg("--vm").arg(format!(
            "guest-cid=3,socket={},uds-path={}",
            s2.display(),
            u2.display()
        ));
        match measure("rust-vmm vhost-device-vsock", &mut c, &s2, &u2, &a) {
            Ok(r) => rows.push(r),
            Err(e) => peer_note = format!("vhost-device-vsock run failed: {e:#}"),
        }
    } else {
        peer_note = format!("vhost-device-vsock not found at {} (install: `cargo install vhost-device-vsock --root /tmp/vdv`)", a.peer.display());
    }
    let mut md = String::new();
    md.push_str("# vsock benchmark\n\n");
    md.push_str(&format!(
        "Same guest code (the vhost-user frontend library acting as the guest's vsock stack, 64 KiB RX buffers, 64 KiB TX packets) against each backend; one stream, {} MiB per direction, median of {} runs; setup rate = host `CONNECT` + REQUEST/RESPONSE + `OK` + guest full shutdown/RST, {} connections in sequence. Host: {} cores shared with other jobs, numbers are indicative.\n\n",
        a.mib, a.reps, a.conns, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    ));
    md.push_str(
        "| backend | host→guest MiB/s | guest→host MiB/s | connections/s |\n|---|---|---|---|\n",
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} |\n",
            r.name,
            r.h2g / 1048576.0,
            r.g2h / 1048576.0,
            r.conns
        ));
    }
    if !peer_note.is_empty() {
        md.push_str(&format!("\n{peer_note}\n"));
    }
    if let Some(p) = a.out.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::File::create(&a.out)?.write_all(md.as_bytes())?;
    print!("{md}");
    Ok(())
}
