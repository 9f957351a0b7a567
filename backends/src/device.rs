//! How a device kind plugs into the standalone binaries, `cordon device` and `cordon devices`.
//!
//! Each device crate exports one `&'static dyn DeviceKind`; the `cordon` CLI passes the list
//! of kinds to the supervisor, so this crate never depends on the device crates.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;

use crate::connection::{ConnectionArgs, Endpoint};
use crate::kv::KeyValues;
use crate::sandbox::{BindMount, JailPlan, SandboxArgs, SandboxConfig};
use crate::serve::ServeOptions;

/// A device kind: `rng`, `serial`, `block`, `net`, ...
pub trait DeviceKind: Sync {
    /// Name used on command lines (`--rng`, `cordon device rng`) and for children (`rng-0`).
    fn name(&self) -> &'static str;
    /// Accepted `cordon devices --<name>` options, for `--help`, e.g. `vhost=SOCK[,path=IMG]`.
    fn syntax(&self) -> &'static str;
    /// Parses the `devices` options (`vhost=` already removed) and opens the device's
    /// resources. Runs in the unjailed parent, before the fork. Must reject unknown keys
    /// (call [`KeyValues::finish`]).
    fn open(&self, opts: KeyValues) -> anyhow::Result<Box<dyn OpenedDevice>>;
    /// The standalone command (`<name>-device ...` and `cordon device <name> ...`);
    /// `argv[0]` is the program name.
    fn run_standalone(&self, argv: Vec<OsString>) -> anyhow::Result<()>;
}

/// A device whose resources are open, ready to be jailed and served.
pub trait OpenedDevice: Send {
    /// Seccomp policy base name, e.g. `rng_device_vhost_user`.
    fn policy(&self) -> String;
    /// Host paths the jailed device still needs (most need none: resources are open fds).
    fn mounts(&self) -> Vec<BindMount> {
        Vec::new()
    }
    /// Open fds the device adopted rather than opened (e.g. a TAP handed over as
    /// `tap-fd=N`): `cordon devices` keeps them in the jailed child too.
    fn adopted_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
    /// Files the device created on the host while opening (e.g. a listening socket):
    /// `cordon devices` removes them when it gives the device up or exits (the jailed child
    /// cannot).
    fn created_paths(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// Serves frontends on `endpoint` (enter `opts.jail` first; [`crate::serve`] does).
    fn serve(self: Box<Self>, endpoint: Endpoint, opts: ServeOptions) -> anyhow::Result<()>;
}

/// Flags shared by every standalone device command; `#[command(flatten)]` it.
#[derive(Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// Connection to the frontend.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Sandbox settings.
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Exit after the first frontend disconnects (default: wait for the next frontend).
    #[arg(long)]
    pub once: bool,
}

/// Standalone flow: validate the connection flags, open the endpoint, jail and serve `dev`.
pub fn run_opened(
    name: &str,
    dev: Box<dyn OpenedDevice>,
    common: &CommonArgs,
) -> anyhow::Result<()> {
    let conn = common.connection.connection()?;
    // Block SIGINT/SIGTERM/SIGHUP before the socket exists: a frontend (or a test) that sees
    // the socket may signal us at once, and the signal must wait for the orderly shutdown
    // path (socket removal) instead of killing the process with its socket file left behind.
    crate::signals::block_termination_signals()?;
    let endpoint = Endpoint::open(&conn)?;
    let jail = JailPlan {
        config: SandboxConfig::from(&common.sandbox),
        policy: dev.policy(),
        mounts: dev.mounts(),
        keep_fds: None,
    };
    let opts = ServeOptions {
        name: name.to_string(),
        once: common.once,
        jail: Some(jail),
        supervised: false,
    };
    let r = dev.serve(endpoint, opts);
    crate::terminal::restore();
    r
}

/// Looks a kind up by name, with an error listing the known kinds.
pub fn find_kind<'a>(
    kinds: &[&'a dyn DeviceKind],
    name: &str,
) -> anyhow::Result<&'a dyn DeviceKind> {
    kinds
        .iter()
        .copied()
        .find(|k| k.name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
            anyhow::anyhow!("unknown device kind `{name}`; known: {}", known.join(", "))
        })
}

/// Convenience for a standalone `main`: logger, parse, run, print the error chain, exit code.
pub fn standalone_main(kind: &dyn DeviceKind) -> std::process::ExitCode {
    init_logging();
    match kind.run_standalone(std::env::args_os().collect()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}-device: error: {e:#}", kind.name());
            std::process::ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG`-driven logging to stderr, `info` by default (idempotent).
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .try_init();
}

/// A `path` option resolved to an absolute path (jail mounts and logs want absolute paths).
pub fn absolute(p: &str) -> std::io::Result<PathBuf> {
    std::path::absolute(p)
}
