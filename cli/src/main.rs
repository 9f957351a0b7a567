//! `cordon`: the one command-line entry point of the Cordon suite.

use clap::{Parser, Subcommand};

mod ctl;
mod device;
mod devices;
mod run;
mod run_backends;
mod seccomp;

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
    /// Run one vhost-user device backend: `cordon device <kind> --socket-path PATH ...`.
    Device(device::DeviceCmd),
    /// Run many jailed device backends at once: `cordon devices --rng vhost=SOCK ...`.
    Devices(devices::DevicesCmd),
    /// Lint, compile, disassemble, simulate, measure and generate seccomp policies.
    Seccomp(seccomp::SeccompCmd),
    /// Boot a Linux guest in Cordon's KVM VMM (devices are vhost-user backends).
    Run(run::RunArgs),
    /// Stop a VM started with `cordon run -s PATH`, or every device of a tree started with
    /// `cordon devices -s PATH`.
    Stop(ctl::CtlArgs),
    /// Show a running VM's state, devices and their backends.
    Status(ctl::CtlArgs),
}

fn main() -> std::process::ExitCode {
    cordon_backends::device::init_logging();
    let result = match Cli::parse().command {
        Command::Device(cmd) => device::run(cmd),
        Command::Devices(cmd) => devices::run(cmd),
        Command::Seccomp(cmd) => seccomp::run(cmd),
        Command::Run(a) => std::process::exit(run::main(a)),
        Command::Stop(a) => ctl::stop(a),
        Command::Status(a) => ctl::status(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cordon: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
