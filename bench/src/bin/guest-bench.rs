//! `guest-bench`: the in-guest benchmark of issue 7 (see [`cordon_bench::guest`]). Boots
//! the Debian cloud kernel with `cordon run` and the full device set (nested L1 on PVM
//! hosts), measures block I/O with Cordon's backend and with qemu-storage-daemon in the
//! same run, TCP and vsock throughput, and boot-to-init; writes `bench/results/guest.md`.
//!
//! Run: `cargo run -p cordon-bench --release --bin guest-bench` (builds `cordon` and the
//! guest agent statically through the guest harness; ~10 min nested on a loaded host).

use anyhow::{Context, Result};
use clap::Parser;
use cordon_bench::guest::{conditions_of, plan, plan_var, script, vm_label, Config, Disk, Report};
use cordon_tests::guest::console::logs_dir;
use cordon_tests::guest::{assets, NestedRunner};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// In-guest benchmark (not a test).
#[derive(Parser, Debug)]
#[command(name = "guest-bench")]
struct Args {
    /// Seconds per block cell (randread/randwrite × queue depth).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Queue depths of the block cells.
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 32])]
    qd: Vec<u32>,
    /// MiB per TCP/vsock stream.
    #[arg(long, default_value_t = 32)]
    stream_mib: u64,
    /// Disk image size in MiB.
    #[arg(long, default_value_t = 128)]
    disk_mib: u64,
    /// Rounds (each: a Cordon-disk boot, then a qemu-storage-daemon-disk boot).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Whole-run timeout in seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Where to write the Markdown results.
    #[arg(long, default_value = "bench/results/guest.md")]
    out: PathBuf,
    /// Print the L1 script and exit (nothing is booted).
    #[arg(long)]
    print_script: bool,
    /// Re-render the results from a saved console log of a run made with the same
    /// options, keeping the conditions paragraph of the existing `--out` file (nothing is
    /// booted).
    #[arg(long, value_name = "LOG")]
    from_log: Option<PathBuf>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn main() -> Result<()> {
    env_logger::init();
    let a = Args::parse();
    if a.seconds <= 0.0 || a.rounds == 0 || a.qd.is_empty() || a.stream_mib == 0 {
        anyhow::bail!(
            "--seconds, --rounds, --qd and --stream-mib must be positive (got {}, {}, {:?}, {})",
            a.seconds,
            a.rounds,
            a.qd,
            a.stream_mib
        );
    }
    let cfg = Config {
        ms: (a.seconds * 1000.0) as u64,
        qds: a.qd.clone(),
        bytes: a.stream_mib << 20,
        disk_mb: a.disk_mib,
        rounds: a.rounds,
    };
    if a.print_script {
        print!("{}", script(&cfg));
        return Ok(());
    }
    if let Some(log) = &a.from_log {
        let console = std::fs::read_to_string(log)
            .with_context(|| format!("--from-log {}", log.display()))?;
        let old = std::fs::read_to_string(&a.out)
            .with_context(|| format!("reading the conditions from {}", a.out.display()))?;
        let conditions = conditions_of(&old).ok_or_else(|| {
            anyhow::anyhow!("{} is not a guest-bench results file", a.out.display())
        })?;
        let md = Report::parse(&console, &cfg)?.markdown(&cfg, conditions);
        std::fs::write(&a.out, &md).with_context(|| format!("writing {}", a.out.display()))?;
        println!("{md}");
        return Ok(());
    }
    let kernel = assets()?.kernel_version.clone();
    let mut r = NestedRunner::new()?
        .name("guest-bench")
        .timeout(Duration::from_secs(a.timeout))
        .static_bin("cordon", "cordon")?
        .static_bin("cordon-guest-agent", "cordon-guest-agent")?
        .host_bin("qemu-storage-daemon")?
        .script(&script(&cfg))
        .allow_failures();
    for round in 1..=cfg.rounds {
        for disk in [Disk::Cordon, Disk::Qsd] {
            r = r.l2_plan(
                &plan_var(disk, round),
                &vm_label(disk, round),
                &plan(&cfg, disk),
            );
        }
    }
    let mode = r.current_mode();
    let load_before = loadavg();
    let started = chrono_now();
    let t = Instant::now();
    eprintln!("guest-bench: running ({mode:?}), console in target/guest-logs/guest-bench.log");
    let outcome = r.run();
    let wall = t.elapsed().as_secs_f64();
    let load_after = loadavg();
    // A stalled boot still leaves the other boots' figures in the console: report them.
    let console = match &outcome {
        Ok(res) => res.console.clone(),
        Err(e) => {
            eprintln!("guest-bench: the run reported a failure (figures kept): {e:#}");
            let log = logs_dir().join("guest-bench.log");
            std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?
        }
    };
    let report = Report::parse(&console, &cfg)?;
    let where_ = match mode {
        cordon_tests::guest::GuestMode::Nested => format!(
            "**nested**: this host's `/dev/kvm` is PVM, so an L1 Linux runs under QEMU TCG \
             ({} emulated vCPU(s), `-cpu max` with SVM, 2 GiB) and `cordon run` boots the \
             guest (L2) with KVM inside it. Every backend, qemu-storage-daemon, the host-side \
             peers and the VMM share those emulated L1 CPUs, which themselves run on a 2-core \
             host. Absolute figures are therefore far below what the same code does on real \
             KVM; only the side-by-side comparison within this run is meaningful.",
            cordon_tests::guest::l1_cpus()
        ),
        cordon_tests::guest::GuestMode::Direct => {
            "**direct**: `cordon run` ran on this host's KVM.".to_string()
        }
    };
    let conditions = format!(
        "Measured {started} with `cargo run -p cordon-bench --release --bin guest-bench` \
         (wall time {wall:.0} s) on a {}-core host, load average {load_before} before and \
         {load_after} after (other agents building and testing).\n\n\
         Where: {where_}\n\n\
         Guest: Debian cloud kernel {kernel}, the harness's busybox + agent initramfs, \
         512 MiB, 1 vCPU, booted by `cordon run` (jailed) with block, net, rng, vsock and \
         virtio-console over vhost-user, served by one jailed `cordon devices` tree; in the \
         qemu-storage-daemon boots the disk is served by `qemu-storage-daemon` \
         (`driver=file,cache.direct=off`, vhost-user-blk export, not jailed) instead of \
         Cordon's block backend (defaults: buffered, 1 queue, poll 50 µs), on the same \
         {} MiB raw image (a file on L1's tmpfs). The workloads are the guest agent's \
         `bench-*` checks (tests/agent/src/bench.rs, checks/bench.rs); host-side peers are \
         `cordon-guest-agent --peer sink|send`. TCP runs over Cordon's net backend on a TAP \
         in a network namespace the script creates; vsock through Cordon's hybrid vsock \
         backend (Unix sockets in L1).\n",
        cores(),
        cfg.disk_mb
    );
    let md = report.markdown(&cfg, &conditions);
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&a.out, &md).with_context(|| format!("writing {}", a.out.display()))?;
    println!("{md}");
    eprintln!("guest-bench: wrote {}", a.out.display());
    if !report.problems.is_empty() {
        eprintln!("guest-bench: problems: {:#?}", report.problems);
    }
    Ok(())
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC` (from `date`, no extra dependency).
fn chrono_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "at an unknown time".into())
}
