//! `cordon`: the one command-line entry point of the Cordon suite.

use clap::{Parser, Subcommand};

mod run;

/// Sandboxed virtio device backends over vhost-user, and a lean KVM VMM.
#[derive(Parser, Debug)]
#[command(name = "cordon", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Every `cordon` subcommand; each lives in its own module.
#[derive(Subcommand, Debug)]
enum Command {
    /// Boot a Linux guest in Cordon's KVM VMM (devices are vhost-user backends).
    Run(run::RunArgs),
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match Cli::parse().command {
        Command::Run(a) => std::process::exit(run::main(a)),
    }
}
