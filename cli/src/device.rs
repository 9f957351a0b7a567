//! `cordon device <kind> ...`: run one device backend, same flags as `<kind>-device`.

use std::ffi::OsString;

use clap::Args;

/// Arguments of `cordon device`.
#[derive(Args, Debug)]
#[command(
    about = "Run one vhost-user device backend (same flags as <kind>-device)",
    disable_help_flag = true
)]
pub struct DeviceCmd {
    /// Device kind (rng, serial, block, net, vsock, wayland), then its flags (see
    /// `cordon device <kind> --help`).
    #[arg(
        value_name = "KIND",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<OsString>,
}

/// Runs `cordon device`.
pub fn run(cmd: DeviceCmd) -> anyhow::Result<()> {
    let mut args = cmd.args.into_iter();
    let kind = args.next().unwrap_or_default();
    let kind = kind.to_string_lossy().to_string();
    if kind == "--help" || kind == "-h" {
        let names: Vec<&str> = crate::devices::KINDS.iter().map(|k| k.name()).collect();
        println!(
            "Usage: cordon device <KIND> [FLAGS]\n\nKinds: {}\nSee `cordon device <KIND> --help`.",
            names.join(", ")
        );
        return Ok(());
    }
    let k = cordon_backends::device::find_kind(crate::devices::KINDS, &kind)?;
    let mut argv = vec![OsString::from(format!("cordon device {kind}"))];
    argv.extend(args);
    k.run_standalone(argv)
}
