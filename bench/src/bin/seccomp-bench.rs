//! `seccomp-bench`: seccomp filter statistics and per-syscall cost, Cordon vs libseccomp.
//! Writes bench/results/seccomp.md (or `--output`).

use clap::Parser;
use std::path::PathBuf;

/// Seccomp benchmark: filter statistics of every shipped policy, and the real cost of a
/// cached (getppid) and an argument-filtered (madvise) syscall with no filter, Cordon's
/// filter, and libseccomp's at its default and binary-tree optimization levels.
#[derive(Parser, Debug)]
struct Args {
    /// Shipped policy to time (plus `getppid: 1`).
    #[arg(long, default_value = "block_device_vhost_user")]
    policy: String,
    /// Calls per round.
    #[arg(long, default_value_t = 20_000)]
    iters: u64,
    /// Rounds per filter and syscall (each in a fresh child).
    #[arg(long, default_value_t = 61)]
    rounds: usize,
    /// Markdown report path.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/seccomp.md"))]
    output: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.rounds == 0 || a.iters == 0 {
        anyhow::bail!("--rounds must be >= 1 and --iters > 0");
    }
    let md = cordon_bench::seccomp::run_all(&cordon_bench::seccomp::Options {
        policy: a.policy,
        iters: a.iters,
        rounds: a.rounds,
    })?;
    std::fs::write(&a.output, &md)?;
    print!("{md}");
    eprintln!("wrote {}", a.output.display());
    Ok(())
}
