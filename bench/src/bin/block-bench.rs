//! `block-bench`: Cordon `block-device` vs qemu-storage-daemon's vhost-user-blk export vs direct
//! host I/O, 4 KiB random read/write at QD1 and QD32, plus idle RSS. Writes
//! `bench/results/block.md`.
//!
//! Build and run: `cargo build --release -p cordon-block -p cordon-bench &&
//! target/release/block-bench`.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use cordon_bench::block::{
    backend_memory, cpu_ticks, cpu_ticks_tree, host_io, render, tick_us, vhost_user_blk, Op, Row,
    HOST_1, HOST_QD,
};

/// CPU microseconds per I/O from a tick count (includes setup and drain of the run).
fn per_io(ticks: u64, ops: u64) -> f64 {
    ticks as f64 * tick_us() / ops.max(1) as f64
}

/// Block device benchmark (not a test).
#[derive(Parser, Debug)]
#[command(name = "block-bench")]
struct Args {
    /// The `block-device` binary (default: next to this executable).
    #[arg(long)]
    block_device: Option<PathBuf>,
    /// The qemu-storage-daemon binary.
    #[arg(long, default_value = "qemu-storage-daemon")]
    qsd: PathBuf,
    /// Image size in MiB.
    #[arg(long, default_value_t = 256)]
    image_mib: u64,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Extra argument for block-device (repeatable), e.g. `--cordon-arg=--poll-us=0`.
    #[arg(long, allow_hyphen_values = true)]
    cordon_arg: Vec<String>,
    /// Queue depths to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 32])]
    qd: Vec<usize>,
    /// Only random reads (skip writes).
    #[arg(long)]
    reads_only: bool,
    /// Repetitions of each cell (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Where to write the Markdown results.
    #[arg(long, default_value = "bench/results/block.md")]
    out: PathBuf,
}

use cordon_bench::process::Proc;

fn wait_socket(p: &Path, child: &mut Child) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if p.exists() {
            // Give the process a moment to reach accept().
            std::thread::sleep(Duration::from_millis(100));
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!("backend exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("socket {} never appeared", p.display())
}

fn spawn_cordon(bin: &Path, img: &Path, sock: &Path, extra: &[String]) -> anyhow::Result<Proc> {
    let _ = std::fs::remove_file(sock);
    let child = Command::new(bin)
        .args([
            "--socket-path",
            sock.to_str().unwrap(),
            "--file",
            img.to_str().unwrap(),
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let mut p = Proc(child);
    wait_socket(sock, &mut p.0)?;
    Ok(p)
}

fn spawn_qsd(bin: &Path, img: &Path, sock: &Path, aio: &str) -> anyhow::Result<Proc> {
    let _ = std::fs::remove_file(sock);
    let child = Command::new(bin)
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={},cache.direct=off,aio={aio}",
            img.display()
        ))
        .arg("--blockdev")
        .arg("driver=raw,node-name=disk0,file=file0")
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on,num-queues=1",
            sock.display()
        ))
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawn {} (install with: apt-get install qemu-utils)", bin.display()))?;
    let mut p = Proc(child);
    wait_socket(sock, &mut p.0)?;
    Ok(p)
}

fn make_image(path: &Path, mib: u64) -> anyhow::Result<()> {
    let f = std::fs::File::create(path)?;
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..mib {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = (i as usize * 31 + j * 7) as u8;
        }
        f.write_all_at(&chunk, i << 20)?;
    }
    f.sync_all()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dur = Duration::from_secs_f64(args.seconds);
    let block_device = match args.block_device {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("block-device"),
    };
    if !block_device.exists() {
        bail!(
            "{} not found; build it with `cargo build --release -p cordon-block`",
            block_device.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("block-bench")
        .tempdir_in("/var/tmp")?;
    let img = dir.path().join("disk.img");
    make_image(&img, args.image_mib)?;
    let size = args.image_mib << 20;
    let mut rows = Vec::new();
    let mut rss = Vec::new();
    let ops: &[Op] = if args.reads_only {
        &[Op::RandRead]
    } else {
        &[Op::RandRead, Op::RandWrite]
    };
    let qds = args.qd.clone();

    // Backends stay up for the whole run (both accept a new frontend after a disconnect);
    // cells are interleaved across targets and repeated, and the median repetition (by IOPS)
    // is reported, so load changes on this shared machine hit every target alike.
    let socks: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("b{i}.sock")))
        .collect();
    let names = [
        "cordon block-device".to_string(),
        "qemu-storage-daemon aio=threads".to_string(),
        "qemu-storage-daemon aio=io_uring".to_string(),
    ];
    let procs = [
        spawn_cordon(&block_device, &img, &socks[0], &args.cordon_arg)?,
        spawn_qsd(&args.qsd, &img, &socks[1], "threads")?,
        spawn_qsd(&args.qsd, &img, &socks[2], "io_uring")?,
    ];
    std::thread::sleep(Duration::from_millis(500));
    for (n, p) in names.iter().zip(&procs) {
        rss.push((format!("{n} (idle, listening)"), backend_memory(p.0.id())?));
    }
    for &op in ops {
        for &qd in &qds {
            let mut runs: Vec<Vec<cordon_bench::block::Stats>> = vec![Vec::new(); 3];
            let mut host_runs = Vec::new();
            let mut host1_runs = Vec::new();
            for _rep in 0..args.reps {
                // (c) the limit: this process on the image directly, with as many requests in
                // flight as the queue depth (one thread each), and with one thread.
                let me = std::process::id();
                for (threads, runs) in [(qd, &mut host_runs), (1, &mut host1_runs)] {
                    if threads == 1 && qd == 1 && !runs.is_empty() {
                        continue;
                    }
                    let c0 = cpu_ticks(me);
                    let mut st = host_io(&img, op, dur, threads)?;
                    st.driver_cpu_us = per_io(cpu_ticks(me) - c0, st.ops);
                    runs.push(st);
                }
                for t in 0..3 {
                    let (b0, d0) = (cpu_ticks_tree(procs[t].0.id()), cpu_ticks(me));
                    let mut st = vhost_user_blk(&socks[t], op, qd, dur, size)
                        .with_context(|| format!("{} {} qd{qd}", names[t], op.name()))?;
                    st.backend_cpu_us =
                        per_io(cpu_ticks_tree(procs[t].0.id()).saturating_sub(b0), st.ops);
                    st.driver_cpu_us = per_io(cpu_ticks(me).saturating_sub(d0), st.ops);
                    eprintln!("{} {} qd{qd}: {:.0} IOPS", names[t], op.name(), st.iops);
                    runs[t].push(st);
                }
            }
            for (name, mut runs) in [(HOST_QD, host_runs), (HOST_1, host1_runs)] {
                if runs.is_empty() {
                    runs = rows
                        .iter()
                        .filter(|r: &&Row| r.target == HOST_QD && r.op == op && r.qd == qd)
                        .map(|r| r.stats)
                        .collect();
                }
                runs.sort_by(|a, b| a.iops.total_cmp(&b.iops));
                if let Some(st) = runs.get(runs.len() / 2) {
                    rows.push(Row {
                        target: name.into(),
                        op,
                        qd,
                        stats: *st,
                    });
                }
            }
            for t in 0..3 {
                runs[t].sort_by(|a, b| a.iops.total_cmp(&b.iops));
                let st = runs[t][runs[t].len() / 2];
                rows.push(Row {
                    target: names[t].clone(),
                    op,
                    qd,
                    stats: st,
                });
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    for (n, p) in names.iter().zip(&procs) {
        rss.push((
            format!("{n} (idle, after the runs)"),
            backend_memory(p.0.id())?,
        ));
    }
    drop(procs);

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let notes = format!(
        "Generated by `target/release/block-bench` (bench/src/bin/block-bench.rs); not a test.\n\n\
         Setup: {} MiB raw image on the host filesystem (page cache warm, buffered I/O on every \
         side), {:.0} s per cell, median of {} interleaved repetitions, {cpus} CPUs shared with other work \
         (load average {load} when the run ended), kernel {}. \
         Both backends are driven by the same Cordon vhost-user frontend driver \
         (cordon-frontend, one queue of 256, memfd guest memory, no EVENT_IDX), one request = \
         header + 4 KiB data + status descriptors, every status checked. block-device runs jailed \
         with default flags{} (4 I/O threads per queue); qemu-storage-daemon {} exports the image with \
         `type=vhost-user-blk,num-queues=1` over `driver=file,cache.direct=off,aio=threads|io_uring`. \
         The host rows are this process doing synchronous pread/pwrite on the same file, same \
         (buffered) mode as the backends: with as many threads as the queue depth (QD requests in \
         flight), and with one thread (no IPC, no thread switches); the better of the two is the \
         limit the ratios use (with cached reads on 2 CPUs one thread usually wins; with writes \
         that wait on writeback, QD threads do). CPU columns: user+system time of the backend's whole process tree \
         and of the issuing process (the driver, or the host threads) per completed I/O, from \
         /proc/<pid>/stat, including each run's connection setup and drain; unlike IOPS they \
         hardly depend on what else runs on the machine.",
        args.image_mib,
        args.seconds,
        args.reps,
        kernel.trim(),
        if args.cordon_arg.is_empty() {
            String::new()
        } else {
            format!(" plus `{}`", args.cordon_arg.join(" "))
        },
        qsd_version(&args.qsd)
    );
    let mut md = render(&rows, &rss, &notes);
    md.push('\n');
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::File::create(&args.out)?.write_all(md.as_bytes())?;
    println!("{md}");
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn qsd_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "(unknown version)".into())
}
