//! `cordon-guest`: the guest harness by hand. Prepares the guest assets, or boots one QEMU
//! TCG guest (runner A) on vhost-user sockets with agent checks and prints the results.
//!
//! ```text
//! cargo run -p cordon-tests --release --bin cordon-guest -- assets
//! cargo run -p cordon-tests --release --bin cordon-guest -- run --blk /tmp/vda.sock \
//!     --check blk-read:dev=vda:len=16 --check kernel
//! ```

use anyhow::Result;
use clap::{Parser, Subcommand};
use cordon_tests::guest::{assets, Check, GuestRunner};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cordon-guest",
    about = "Prepare guest assets or boot one test guest by hand"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prepare (or find) the cached kernel, agent and initramfs and print their paths.
    Assets,
    /// Boot a QEMU TCG guest with the given devices and checks; print one result per line.
    Run {
        /// vhost-user-blk socket (repeatable: vda, vdb, ...).
        #[arg(long)]
        blk: Vec<PathBuf>,
        /// vhost-user-rng socket.
        #[arg(long)]
        rng: Option<PathBuf>,
        /// vhost-user-vsock socket.
        #[arg(long)]
        vsock: Option<PathBuf>,
        /// vhost-user net socket (repeatable).
        #[arg(long)]
        net: Vec<PathBuf>,
        /// A check as on the kernel command line: NAME[:KEY=VALUE]... (repeatable).
        #[arg(long = "check", value_name = "NAME[:KEY=VALUE]...")]
        checks: Vec<String>,
        /// Whole-boot timeout in seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Console log name (target/guest-logs/NAME.log).
        #[arg(long, default_value = "by-hand")]
        name: String,
    },
}

fn parse_check(s: &str) -> Result<Check> {
    let mut parts = s.split(':');
    let mut c = Check::new(parts.next().unwrap_or_default());
    for p in parts {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--check {s}: {p:?} is not KEY=VALUE"))?;
        c = c.arg(k, v);
    }
    c.token()?;
    Ok(c)
}

fn main() -> Result<()> {
    env_logger::init();
    match Cli::parse().cmd {
        Cmd::Assets => {
            let a = assets()?;
            println!("kernel     {}", a.kernel.display());
            println!("version    {}", a.kernel_version);
            println!("agent      {}", a.agent.display());
            println!("initramfs  {}", a.initramfs.display());
        }
        Cmd::Run {
            blk,
            rng,
            vsock,
            net,
            checks,
            timeout,
            name,
        } => {
            let mut g = GuestRunner::tcg()
                .name(&name)
                .timeout(Duration::from_secs(timeout))
                .allow_failures();
            for b in &blk {
                g = g.vhost_user_blk(b);
            }
            if let Some(r) = &rng {
                g = g.vhost_user_rng(r);
            }
            if let Some(v) = &vsock {
                g = g.vhost_user_vsock(v);
            }
            for n in &net {
                g = g.vhost_user_net(n);
            }
            for c in &checks {
                g = g.check(parse_check(c)?);
            }
            let r = g.run()?;
            for c in &r.results {
                println!(
                    "{} {} {}: {} {:?}",
                    if c.ok { "ok  " } else { "FAIL" },
                    c.id,
                    c.check,
                    c.detail,
                    c.data
                );
            }
            println!(
                "console log: {} ({:.1} s)",
                r.log.display(),
                r.elapsed.as_secs_f64()
            );
            if r.results.iter().any(|c| !c.ok) {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
