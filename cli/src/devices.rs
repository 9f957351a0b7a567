//! `cordon devices`: many jailed device backends at once, crosvm's `devices` syntax.

use std::ffi::OsString;

use clap::{Arg, ArgAction, Args, Command};
use cordon_backends::restart::RestartPolicy;
use cordon_backends::supervisor::{parse_jail, run_devices, DeviceRequest, DevicesOptions};
use cordon_backends::DeviceKind;

/// Every device kind the CLI knows. Device crates add their `KIND` here (one per line).
pub static KINDS: &[&dyn DeviceKind] = &[
    &cordon_rng::KIND,
    &cordon_serial::KIND,
    &cordon_block::KIND,
    &cordon_net::KIND,
    &cordon_vsock::KIND,
    &cordon_wayland::KIND,
];

/// Arguments of `cordon devices` (parsed at run time: the device flags come from `KINDS`).
#[derive(Args, Debug)]
#[command(
    about = "Run many jailed vhost-user device backends (crosvm `devices` syntax)",
    disable_help_flag = true
)]
pub struct DevicesCmd {
    /// Options; see `cordon devices --help`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

fn command() -> Command {
    let mut c = Command::new("cordon devices")
        .next_line_help(true)
        .about("Run many vhost-user device backends, one jailed child process per device")
        .after_help(
            "Each device flag takes crosvm key=value options; vhost=SOCKET (any position) is the\n\
             socket to listen on. Example:\n  cordon devices --rng vhost=/tmp/rng.sock \\\n    \
             --serial vhost=/tmp/con.sock,type=stdout,hardware=virtio-console,console,stdin,earlycon",
        )
        .arg(
            Arg::new("disable-sandbox")
                .long("disable-sandbox")
                .action(ArgAction::SetTrue)
                .help("Run the devices without the jail (no namespaces, no seccomp)"),
        )
        .arg(
            Arg::new("jail")
                .long("jail")
                .value_name("pivot-root=DIR,seccomp-policy-dir=DIR,seccomp-log-failures=BOOL")
                .help("Jail settings"),
        )
        .arg(
            Arg::new("restart")
                .long("restart")
                .value_name("never|on-failure[:MAX]|always[:MAX]")
                .value_parser(|s: &str| s.parse::<RestartPolicy>())
                .help(
                    "Fork a new jailed child when one dies (default never): on-failure after a \
                     crash or non-zero exit, always after any exit; backoff 100 ms doubling to \
                     5 s; MAX consecutive restarts (default 10, 0 = unlimited), reset after 10 s up",
                ),
        )
        .arg(
            Arg::new("control-socket")
                .short('s')
                .long("control-socket")
                .value_name("PATH")
                .help("Control socket: send `list` or `stop`"),
        );
    for k in KINDS {
        c = c.arg(
            Arg::new(k.name())
                .long(k.name())
                .value_name("OPTIONS")
                .action(ArgAction::Append)
                .help(format!(
                    "A {} device (repeatable): {}",
                    k.name(),
                    k.syntax()
                )),
        );
    }
    c
}

/// Runs `cordon devices`.
pub fn run(cmd: DevicesCmd) -> anyhow::Result<()> {
    let mut argv = vec![OsString::from("cordon devices")];
    argv.extend(cmd.args);
    let m = command()
        .try_get_matches_from(argv)
        .unwrap_or_else(|e| e.exit());
    let mut opts = DevicesOptions::default();
    opts.sandbox.disabled = m.get_flag("disable-sandbox");
    if let Some(j) = m.get_one::<String>("jail") {
        parse_jail(j, &mut opts.sandbox)?;
    }
    opts.control_socket = m.get_one::<String>("control-socket").map(Into::into);
    if let Some(p) = m.get_one::<RestartPolicy>("restart") {
        opts.restart = *p;
    }
    let mut found: Vec<(usize, DeviceRequest)> = Vec::new();
    for &k in KINDS {
        if let (Some(idx), Some(vals)) = (m.indices_of(k.name()), m.get_many::<String>(k.name())) {
            for (i, v) in idx.zip(vals) {
                found.push((
                    i,
                    DeviceRequest {
                        kind: k,
                        options: v.clone(),
                    },
                ));
            }
        }
    }
    found.sort_by_key(|(i, _)| *i);
    run_devices(found.into_iter().map(|(_, r)| r).collect(), opts)
}
