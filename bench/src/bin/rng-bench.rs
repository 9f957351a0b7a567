//! `rng-bench`: idle memory of Cordon's `rng-device` next to rust-vmm's `vhost-device-rng`,
//! both started in the same run, idle on their sockets, then again after serving one frontend
//! (4 MiB of random bytes in 4 KiB requests through Cordon's vhost-user frontend driver).
//! Writes `bench/results/rng.md`.
//!
//! Build and run: `cargo build --release -p cordon-rng -p cordon-bench &&
//! cargo install vhost-device-rng --root target/peers &&
//! target/release/rng-bench [--peer target/peers/bin/vhost-device-rng]`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use cordon_bench::block::{backend_memory, rss_kib};
use cordon_frontend::vhost_user::{Buffer, DriverConfig, VhostUserDriver};
use vm_memory::Bytes;

/// rng idle-memory benchmark (not a test).
#[derive(Parser, Debug)]
#[command(name = "rng-bench")]
struct Args {
    /// The `rng-device` binary (default: next to this executable).
    #[arg(long)]
    rng_device: Option<PathBuf>,
    /// rust-vmm's `vhost-device-rng` binary.
    #[arg(long, default_value = "target/peers/bin/vhost-device-rng")]
    peer: PathBuf,
    /// Markdown output.
    #[arg(long, default_value = "bench/results/rng.md")]
    out: PathBuf,
}

use cordon_bench::process::Proc;

/// Wait until `sock` accepts a connection (the peer may name its socket differently, so the
/// candidates are tried in turn); returns the path that worked.
fn wait_socket(cands: &[PathBuf], child: &mut Child) -> anyhow::Result<PathBuf> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        for c in cands {
            if c.exists() {
                std::thread::sleep(Duration::from_millis(200));
                return Ok(c.clone());
            }
        }
        if let Some(st) = child.try_wait()? {
            bail!("backend exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no socket among {cands:?} appeared")
}

/// Serve 4 MiB of entropy in 4 KiB requests at queue depth 8; checks the bytes are not all
/// zero.
fn drive(sock: &Path) -> anyhow::Result<()> {
    let mut d = VhostUserDriver::connect(sock, DriverConfig::new(1)).context("connect")?;
    let mem = d.memory().clone();
    let bufs: Vec<_> = (0..8)
        .map(|_| d.alloc(4096))
        .collect::<Result<_, _>>()
        .context("alloc")?;
    let mut nonzero = false;
    let mut by_head = std::collections::HashMap::new();
    for (i, &a) in bufs.iter().enumerate() {
        let h = d.queue(0)?.add(
            &mem,
            &[Buffer {
                addr: a,
                len: 4096,
                writable: true,
            }],
        )?;
        by_head.insert(h, i);
    }
    d.queue(0)?.kick()?;
    let mut done = 0;
    while done < 1024 && !by_head.is_empty() {
        // Reap the whole batch first: its descriptors are free again, and a new chain may
        // reuse the head of an entry later in the same batch.
        let used = d.queue(0)?.wait_used(&mem, Duration::from_secs(10))?;
        let mut reaped = Vec::with_capacity(used.len());
        for u in used {
            let i = by_head.remove(&u.head).context("unknown head")?;
            let mut b = [0u8; 64];
            mem.read_slice(&mut b, bufs[i])?;
            nonzero |= b.iter().any(|&x| x != 0);
            done += 1;
            reaped.push(i);
        }
        for i in reaped {
            if done + by_head.len() >= 1024 {
                break;
            }
            let h = d.queue(0)?.add(
                &mem,
                &[Buffer {
                    addr: bufs[i],
                    len: 4096,
                    writable: true,
                }],
            )?;
            by_head.insert(h, i);
        }
        d.queue(0)?.kick()?;
    }
    if !nonzero {
        bail!("the device returned only zero bytes");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rng_device = match a.rng_device {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("rng-device"),
    };
    if !rng_device.exists() {
        bail!(
            "{} not found; build it with `cargo build --release -p cordon-rng`",
            rng_device.display()
        );
    }
    if !a.peer.exists() {
        bail!(
            "{} not found; install it with `cargo install vhost-device-rng --root target/peers`",
            a.peer.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let cs = dir.path().join("cordon.sock");
    let ps = dir.path().join("peer.sock");
    let mut cordon = Proc(
        Command::new(&rng_device)
            .arg("--socket-path")
            .arg(&cs)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn rng-device")?,
    );
    let mut peer = Proc(
        Command::new(&a.peer)
            .arg("--socket-path")
            .arg(&ps)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn vhost-device-rng")?,
    );
    let cs = wait_socket(&[cs], &mut cordon.0)?;
    let ps = wait_socket(&[ps.clone(), dir.path().join("peer.sock0")], &mut peer.0)?;
    std::thread::sleep(Duration::from_millis(500));
    let mut rows = Vec::new();
    let idle_c = backend_memory(cordon.0.id())?;
    let idle_p = backend_memory(peer.0.id())?;
    let mut anon = vec![(
        cordon_bench::block::server_anon_kib(cordon.0.id())?,
        cordon_bench::block::server_anon_kib(peer.0.id())?,
    )];
    rows.push(("idle, listening", idle_c, idle_p));
    drive(&cs).context("drive rng-device")?;
    drive(&ps).context("drive vhost-device-rng")?;
    std::thread::sleep(Duration::from_millis(500));
    let after_c = backend_memory(cordon.0.id())?;
    let peer_alive = peer.0.try_wait()?.is_none();
    let after_p = if peer_alive {
        backend_memory(peer.0.id())?
    } else {
        (0, 0, 0)
    };
    anon.push((
        cordon_bench::block::server_anon_kib(cordon.0.id())?,
        if peer_alive {
            cordon_bench::block::server_anon_kib(peer.0.id())?
        } else {
            0
        },
    ));
    rows.push((
        "idle, after serving 4 MiB to one frontend",
        after_c,
        after_p,
    ));
    let tree_rss: u64 = cordon_bench::block::process_tree(cordon.0.id())
        .iter()
        .filter_map(|p| rss_kib(*p).ok())
        .sum();
    let peer_version = Command::new(&a.peer)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    drop((cordon, peer));

    let mib = |k: u64| k as f64 / 1024.0;
    let mut md = String::new();
    md.push_str("# rng benchmark: idle memory\n\n");
    md.push_str(&format!(
        "Generated by `target/release/rng-bench` (bench/src/bin/rng-bench.rs); not a test. \
         Both backends started in the same run on Unix sockets, release builds, default flags: \
         Cordon's `rng-device` jailed (unjailed waiter + namespace init + jailed server), \
         rust-vmm's {} (`cargo install vhost-device-rng`) unjailed, one process. VmRSS counts \
         shared pages (libc, the binary) in every process; PSS splits them between sharers. \
         \"After serving\": one frontend (Cordon's vhost-user driver) read 4 MiB in 4 KiB \
         requests, queue depth 8, and disconnected.\n\n",
        if peer_version.is_empty() {
            "vhost-device-rng".to_string()
        } else {
            format!("`{peer_version}`")
        }
    ));
    md.push_str(
        "| state | rng-device: RSS of the serving process (MiB) | rng-device: its anonymous memory (MiB) | rng-device: PSS of its tree (MiB) | processes | vhost-device-rng RSS (MiB) | vhost-device-rng anonymous (MiB) | vhost-device-rng PSS (MiB) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((state, c, p), (ca, pa)) in rows.iter().zip(&anon) {
        let peer_cols = if p.2 == 0 {
            "exited after the disconnect | — | — ".to_string()
        } else {
            format!("{:.1} | {:.2} | {:.1}", mib(p.0), mib(*pa), mib(p.1))
        };
        md.push_str(&format!(
            "| {state} | {:.1} | {:.2} | {:.1} | {} | {peer_cols} |\n",
            mib(c.0),
            mib(*ca),
            mib(c.1),
            c.2
        ));
    }
    md.push_str(&format!(
        "\nSum of VmRSS over rng-device's whole tree after serving (shared pages counted once per \
         process, so an overestimate): {:.1} MiB.\n\nRatio (idle, listening): rng-device serving \
         process RSS / vhost-device-rng RSS = {:.2}; PSS of the whole tree / vhost-device-rng \
         PSS = {:.2}; serving process anonymous memory / vhost-device-rng's = {:.2}. Target: \
         ≤ 0.5 for RSS. *Anonymous* is the process's own heap, stacks and written data (smaps \
         `Anonymous`): the memory each further instance adds; the rest of RSS is file pages \
         (binary, libc) shared through the page cache.\n",
        mib(tree_rss),
        idle_c.0 as f64 / idle_p.0.max(1) as f64,
        idle_c.1 as f64 / idle_p.1.max(1) as f64,
        anon[0].0 as f64 / anon[0].1.max(1) as f64,
    ));
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::File::create(&a.out)?.write_all(md.as_bytes())?;
    println!("{md}");
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
