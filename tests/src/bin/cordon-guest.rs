//! `cordon-guest`: the guest harness by hand. Prepares the guest assets, boots one QEMU
//! TCG guest (runner A) on vhost-user sockets with agent checks and prints the results, or
//! runs a script in runner B's L1 (what `bench/scripts/nested-vmm.sh` uses).
//!
//! ```text
//! cargo run -p cordon-tests --release --bin cordon-guest -- assets
//! cargo run -p cordon-tests --release --bin cordon-guest -- run --blk /tmp/vda.sock \
//!     --check blk-read:dev=vda:len=16 --check kernel
//! cargo run -p cordon-tests --release --bin cordon-guest -- nested --script l1.sh \
//!     --static-bin cordon:cordon
//! ```

use anyhow::Result;
use clap::{Parser, Subcommand};
use cordon_tests::guest::console::logs_dir;
use cordon_tests::guest::{assets, Check, GuestRunner, NestedRunner};
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
    /// Run a shell script in runner B's L1 (nested on PVM hosts, on the host on KVM hosts)
    /// with `L2_KERNEL`, `L2_INITRD`, `L2_CMDLINE` and `CORDON_DIR` set and
    /// `$CORDON_DIR/bin` on `PATH`; print the whole console on stdout; exit 1 if the script
    /// failed.
    Nested {
        /// The script (sh).
        #[arg(long)]
        script: PathBuf,
        /// A workspace binary built statically into `$CORDON_DIR/bin` (repeatable).
        #[arg(long = "static-bin", value_name = "PACKAGE:BIN")]
        static_bins: Vec<String>,
        /// A ready statically linked executable copied into `$CORDON_DIR/bin` (repeatable).
        #[arg(long)]
        bin: Vec<PathBuf>,
        /// A host program carried with its shared libraries into `$CORDON_DIR/bin`
        /// (repeatable), e.g. qemu-storage-daemon.
        #[arg(long = "host-bin", value_name = "NAME")]
        host_bins: Vec<String>,
        /// A file copied into `$CORDON_DIR` under its own name (repeatable).
        #[arg(long)]
        file: Vec<PathBuf>,
        /// Also carry QEMU and the microvm firmware into L1 (a peer VMM for the script).
        #[arg(long)]
        with_qemu: bool,
        /// Whole-run timeout in seconds.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Console log name (target/guest-logs/NAME.log).
        #[arg(long, default_value = "by-hand-nested")]
        name: String,
    },
}

/// The arguments of `cordon-guest nested`.
struct NestedArgs {
    script: PathBuf,
    static_bins: Vec<String>,
    bin: Vec<PathBuf>,
    host_bins: Vec<String>,
    file: Vec<PathBuf>,
    with_qemu: bool,
    timeout: u64,
    name: String,
}

fn nested(a: NestedArgs) -> Result<bool> {
    let sh = std::fs::read_to_string(&a.script)
        .map_err(|e| anyhow::anyhow!("--script {}: {e}", a.script.display()))?;
    let mut r = NestedRunner::new()?
        .name(&a.name)
        .timeout(Duration::from_secs(a.timeout));
    r = if a.with_qemu {
        r.qemu_script(&sh)
    } else {
        r.script(&sh)
    };
    for sb in &a.static_bins {
        let (pkg, bin) = sb
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--static-bin {sb}: expected PACKAGE:BIN"))?;
        r = r.static_bin(pkg, bin)?;
    }
    for b in &a.bin {
        r = r.bin(b);
    }
    for h in &a.host_bins {
        r = r.host_bin(h)?;
    }
    for f in &a.file {
        let name = f
            .file_name()
            .ok_or_else(|| anyhow::anyhow!("--file {}: not a file name", f.display()))?;
        r = r.file(&name.to_string_lossy(), f);
    }
    let outcome = r.run();
    let log = logs_dir().join(format!("{}.log", a.name));
    print!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    match outcome {
        Ok(_) => Ok(true),
        Err(e) => {
            eprintln!("nested run failed: {e:#}");
            Ok(false)
        }
    }
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
        Cmd::Nested {
            script,
            static_bins,
            bin,
            host_bins,
            file,
            with_qemu,
            timeout,
            name,
        } => {
            let ok = nested(NestedArgs {
                script,
                static_bins,
                bin,
                host_bins,
                file,
                with_qemu,
                timeout,
                name,
            })?;
            if !ok {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
