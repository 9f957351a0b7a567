//! `cordon run`: boot a Linux guest in Cordon's KVM VMM.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use cordon_frontend::pci::vhost::{DeviceKind, KIND_NAMES};
use cordon_frontend::vmm::{ConsoleOutput, Vm, VmConfig};

use crate::run_backends::{self, Request};

/// Default kernel command line: serial console, i8042 reboot (the VMM exits cleanly on
/// it), reboot immediately on panic.
pub const DEFAULT_PARAMS: &str = "console=ttyS0 reboot=k panic=-1";

/// Options of `cordon run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel to boot: a bzImage (64-bit boot protocol) or an uncompressed vmlinux ELF.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk (cpio archive, optionally compressed).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STRING", default_value = DEFAULT_PARAMS)]
    pub params: String,
    /// Guest memory in MiB (32..=1048576).
    #[arg(long, value_name = "MiB", default_value_t = 512)]
    pub mem: u64,
    /// Number of vCPUs (1..=32).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub cpus: u8,
    /// Do not forward stdin to the guest's serial console (implied when a `--serial ...,stdin`
    /// virtio-console reads it).
    #[arg(long)]
    pub no_console_input: bool,
    /// A virtio-pci device served by a vhost-user backend, crosvm's form:
    /// `type=block|net|rng|vsock|console|wl,socket=PATH`. Repeatable.
    #[arg(long = "vhost-user", value_name = "type=KIND,socket=PATH")]
    pub vhost_user: Vec<String>,
    /// A virtio-blk disk served by a jailed Cordon block backend that `cordon run` starts:
    /// `path=IMAGE[,ro][,sparse=BOOL][,direct=BOOL][,id=ID]...` (`cordon devices --block`
    /// syntax, without `vhost=`). Repeatable.
    #[arg(long = "block", value_name = "path=IMAGE[,ro,...]")]
    pub block: Vec<String>,
    /// A virtio-rng device served by a jailed Cordon rng backend that `cordon run` starts.
    #[arg(long)]
    pub rng: bool,
    /// A virtio-console served by a jailed Cordon serial backend that `cordon run` starts:
    /// `[type=stdout|stderr|file|unix|sink][,path=PATH][,input=PATH][,stdin]...`
    /// (`cordon devices --serial` syntax, without `vhost=`). Repeatable.
    #[arg(long = "serial", value_name = "type=stdout,...")]
    pub serial: Vec<String>,
    /// Shorthand for `--serial type=stdout,hardware=virtio-console` (hvc0 on stdout).
    #[arg(long)]
    pub console: bool,
    /// A virtio-net device served by a jailed Cordon net backend that `cordon run` starts:
    /// `tap-name=NAME[,host-ip=IP,netmask=MASK][,mac=MAC]` or `tap-fd=N`. Repeatable.
    #[arg(long = "net", value_name = "tap-name=NAME[,...]")]
    pub net: Vec<String>,
    /// A virtio-vsock device served by a jailed Cordon vsock backend that `cordon run`
    /// starts: `cid=N,uds-path=PATH`. Repeatable.
    #[arg(long = "vsock", value_name = "cid=N,uds-path=PATH")]
    pub vsock: Vec<String>,
    /// Seconds to wait for each vhost-user backend to accept the connection.
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    pub backend_timeout: u64,
    /// Run the VMM without its seccomp filter, and the backends it starts (`--block`,
    /// `--rng`...) without their jail. For debugging only.
    #[arg(long)]
    pub disable_sandbox: bool,
    /// Directory holding `frontend.policy` (or `frontend.bpf`) to use instead of the
    /// built-in policy.
    #[arg(long, value_name = "DIR")]
    pub seccomp_policy_dir: Option<PathBuf>,
    /// Log syscalls the policy would deny instead of killing the VMM (audit mode).
    #[arg(long)]
    pub seccomp_log_failures: bool,
    /// Control socket: `cordon stop PATH` and `cordon status PATH` talk to it.
    #[arg(short = 's', long = "socket", value_name = "PATH")]
    pub control: Option<PathBuf>,
}

/// A parsed `--vhost-user` value.
#[derive(Debug, PartialEq, Eq)]
pub struct VhostUserOpt {
    /// Device type.
    pub kind: DeviceKind,
    /// Backend socket.
    pub socket: PathBuf,
}

/// Parses `type=KIND,socket=PATH` (keys in any order).
pub fn parse_vhost_user(s: &str) -> Result<VhostUserOpt> {
    let mut kind = None;
    let mut socket = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("type", v)) => {
                kind = Some(DeviceKind::parse(v).ok_or_else(|| {
                    anyhow::anyhow!("--vhost-user {s}: unknown type {v:?} (accepted: {KIND_NAMES})")
                })?)
            }
            Some(("socket", v)) if !v.is_empty() => socket = Some(PathBuf::from(v)),
            _ => bail!("--vhost-user {s}: bad field {part:?} (expected type=KIND,socket=PATH)"),
        }
    }
    match (kind, socket) {
        (Some(kind), Some(socket)) => Ok(VhostUserOpt { kind, socket }),
        _ => bail!("--vhost-user {s}: both type= and socket= are required"),
    }
}

/// Whether a `--serial` console reads stdin: then it, not the 16550, gets the keyboard.
pub fn serial_reads_stdin(a: &RunArgs) -> Result<bool> {
    for o in &a.serial {
        let mut kv = cordon_backends::KeyValues::parse("--serial", o)?;
        if kv.take_bool("stdin")?.unwrap_or(false) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The backends to start for the convenience flags, in a fixed order (block, rng,
/// serial/console, net, vsock).
pub fn backend_requests(a: &RunArgs) -> Result<Vec<Request>> {
    let mut r = Vec::new();
    for o in &a.block {
        r.push(Request::new("--block", "block", o, DeviceKind::Block)?);
    }
    if a.rng {
        r.push(Request::new("--rng", "rng", "", DeviceKind::Rng)?);
    }
    for o in &a.serial {
        r.push(Request::new("--serial", "serial", o, DeviceKind::Console)?);
    }
    if a.console {
        r.push(Request::new(
            "--console",
            "serial",
            "type=stdout,hardware=virtio-console",
            DeviceKind::Console,
        )?);
    }
    for o in &a.net {
        r.push(Request::new("--net", "net", o, DeviceKind::Net)?);
    }
    for o in &a.vsock {
        r.push(Request::new("--vsock", "vsock", o, DeviceKind::Vsock)?);
    }
    Ok(r)
}

/// Checks the files before any KVM work, so a typo gives a one-line error at once.
fn preflight(a: &RunArgs) -> Result<()> {
    readable_file("--kernel", &a.kernel)?;
    if let Some(i) = &a.initrd {
        readable_file("--initrd", i)?;
    }
    Ok(())
}

fn readable_file(flag: &str, p: &std::path::Path) -> Result<()> {
    match std::fs::File::open(p).and_then(|f| f.metadata()) {
        Err(e) => bail!("{flag} {}: {e}", p.display()),
        Ok(m) if !m.is_file() => bail!("{flag} {}: not a regular file", p.display()),
        Ok(_) => Ok(()),
    }
}

/// Entry point of `cordon run`: runs the VM, prints any setup error as one line, and
/// returns the process exit code.
pub fn main(a: RunArgs) -> i32 {
    match run(a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cordon run: error: {e:#}");
            1
        }
    }
}

/// Runs the VM; returns the process exit code (0 when the guest rebooted/powered off or
/// was stopped, non-zero on a crash or VMM error).
pub fn run(a: RunArgs) -> Result<i32> {
    preflight(&a)?;
    let devices = a
        .vhost_user
        .iter()
        .map(|s| parse_vhost_user(s))
        .collect::<Result<Vec<_>>>()?;
    let requests = backend_requests(&a)?;
    // Two readers of one terminal would split the keystrokes between them.
    let serial_stdin = serial_reads_stdin(&a)?;
    if serial_stdin && !a.no_console_input {
        log::info!("stdin goes to the --serial virtio-console; the 16550 console is output only");
    }
    let timeout = std::time::Duration::from_secs(a.backend_timeout);
    // Started before the VM and the jail; stopped (and reaped) when this function returns.
    let mut started = if requests.is_empty() {
        None
    } else {
        Some(run_backends::start(&requests, !a.disable_sandbox, timeout)?)
    };
    let mut vm = Vm::new(VmConfig {
        mem_mib: a.mem,
        cpus: a.cpus,
        console: ConsoleOutput::Stdout,
        console_input: !a.no_console_input && !serial_stdin,
    })?;
    for d in &devices {
        vm.add_vhost_user(d.kind, &d.socket, timeout)?;
    }
    if let Some(s) = &started {
        for (kind, sock) in &s.sockets {
            vm.add_vhost_user(*kind, sock, timeout)?;
        }
    }
    vm.load_kernel(&a.kernel, a.initrd.as_deref(), &a.params)?;
    if let Some(p) = &a.control {
        vm.listen_control(p)?;
    }
    if a.disable_sandbox {
        log::warn!("--disable-sandbox: the VMM runs without its seccomp filter");
    } else {
        let filter = cordon_seccomp::load_policy("frontend", a.seccomp_policy_dir.as_deref())
            .map_err(|e| anyhow::anyhow!("seccomp policy: {e}"))?;
        vm.jail(filter, a.seccomp_log_failures);
    }
    if let Err(e) = cordon_frontend::vmm::stop_on_signals() {
        log::warn!("SIGTERM will not stop the VM cleanly: {e}");
    }
    let reason = vm.run();
    if let Some(s) = started.as_mut() {
        s.stop();
    }
    let code = reason.exit_code();
    if code == 0 {
        log::info!("VM ended: {reason}");
    } else {
        log::error!("VM ended: {reason}");
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhost_user_option_parses_crosvm_form() {
        let o = parse_vhost_user("type=rng,socket=/tmp/r.sock").unwrap();
        assert_eq!(o.kind, DeviceKind::Rng);
        assert_eq!(o.socket, PathBuf::from("/tmp/r.sock"));
        let o = parse_vhost_user("socket=/s,type=block").unwrap();
        assert_eq!(o.kind, DeviceKind::Block);
        let e = parse_vhost_user("type=gpu,socket=/s")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("accepted: block, net, rng, vsock, console, wl"),
            "{e}"
        );
        assert!(parse_vhost_user("type=rng").is_err());
        assert!(parse_vhost_user("type=rng,socket=/s,extra=1").is_err());
    }

    fn args(serial: &[&str]) -> RunArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let mut argv = vec!["run", "--kernel", "/k"];
        for s in serial {
            argv.push("--serial");
            argv.push(s);
        }
        Cli::parse_from(argv).run
    }

    #[test]
    fn a_serial_console_on_stdin_takes_the_keyboard_from_the_16550() {
        assert!(!serial_reads_stdin(&args(&[])).unwrap());
        assert!(!serial_reads_stdin(&args(&["type=stdout"])).unwrap());
        assert!(serial_reads_stdin(&args(&["type=stdout,stdin"])).unwrap());
        assert!(
            serial_reads_stdin(&args(&["type=file,path=/o", "stdin=true,type=stdout"])).unwrap()
        );
        assert!(!serial_reads_stdin(&args(&["type=stdout,stdin=false"])).unwrap());
        assert!(serial_reads_stdin(&args(&["stdin=maybe"])).is_err());
    }
}
