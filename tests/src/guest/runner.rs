//! Runner A: a real Debian cloud kernel under QEMU TCG (q35, `-cpu max`, memfd shared
//! memory) with any set of vhost-user sockets attached; the guest agent's results are
//! parsed from the serial console.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use cordon_tests::guest::{Check, GuestRunner};
//! let r = GuestRunner::tcg()
//!     .vhost_user_blk("/tmp/blk.sock")
//!     .checks(&[Check::blk_read("vda", 0, 16), Check::blk_flush("vda")])
//!     .run()?;
//! assert_eq!(r.check("blk-read")?.bytes("hex")?, b"0123456789abcdef");
//! # Ok(()) }
//! ```

use super::assets::{assets, GuestAssets};
use super::check::{parse_results, Check, CheckResult};
use super::console::{log_name, logs_dir, panic_line, read_log, tail};
use super::tools::tool;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a stalled guest gets to print again after the monitor poke before it is killed.
const POKE_GRACE: Duration = Duration::from_secs(30);

/// Default time a whole boot may take (`CORDON_GUEST_TIMEOUT` seconds overrides).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// A device attached to the guest.
#[derive(Debug, Clone)]
pub enum Device {
    /// `vhost-user-blk-pci` on a socket (guest: /dev/vda, vdb, ... in order).
    Blk(PathBuf),
    /// `vhost-user-rng-pci` on a socket (guest: /dev/hwrng).
    Rng(PathBuf),
    /// `vhost-user-vsock-pci` on a socket (the guest CID comes from the backend).
    Vsock(PathBuf),
    /// `virtio-net-pci` with a `vhost-user` netdev on a socket, and the guest MAC.
    Net(PathBuf, String),
    /// `vhost-user-device-pci`: any virtio device by id (e.g. 3 = console).
    Generic {
        /// The backend's socket.
        socket: PathBuf,
        /// Virtio device id.
        virtio_id: u16,
        /// Number of virtqueues.
        num_vqs: u32,
        /// Config space size (0 = the backend serves none).
        config_size: u32,
    },
    /// QEMU's own virtio console (virtio-serial + virtconsole, guest /dev/hvc0) on a Unix
    /// socket the harness listens on: a peer to exercise the agent's console check.
    QemuConsole(PathBuf),
}

/// Builder of one QEMU TCG guest boot.
#[derive(Debug, Clone)]
pub struct GuestRunner {
    memory_mb: u32,
    timeout: Duration,
    devices: Vec<Device>,
    checks: Vec<Check>,
    qemu_args: Vec<String>,
    name: Option<String>,
    check_timeout: Option<u64>,
    allow_failures: bool,
    initramfs: Option<PathBuf>,
    pub(crate) vm: String,
    pub(crate) also_expect: Vec<(String, usize)>,
    pub(crate) required_lines: Vec<String>,
    pub(crate) exact_name: bool,
    pub(crate) terminal: bool,
    /// Kill the guest as [`Stalled`] when its console stays silent this long.
    pub(crate) silence_limit: Option<Duration>,
    shell: Option<String>,
    reconnect_ms: Option<u32>,
    /// Emulated CPUs (`-smp`).
    pub(crate) cpus: u32,
}

impl GuestRunner {
    /// A guest under QEMU TCG (q35, 512 MiB, 1 vCPU), no devices, no checks.
    pub fn tcg() -> Self {
        let timeout = std::env::var("CORDON_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT);
        GuestRunner {
            memory_mb: 512,
            timeout,
            devices: Vec::new(),
            checks: Vec::new(),
            qemu_args: Vec::new(),
            name: None,
            check_timeout: None,
            allow_failures: false,
            initramfs: None,
            vm: "guest".into(),
            also_expect: Vec::new(),
            required_lines: Vec::new(),
            exact_name: false,
            terminal: false,
            silence_limit: None,
            shell: None,
            reconnect_ms: None,
            cpus: 1,
        }
    }

    /// Attaches a vhost-user block backend.
    pub fn vhost_user_blk(mut self, socket: impl AsRef<Path>) -> Self {
        self.devices.push(Device::Blk(socket.as_ref().into()));
        self
    }

    /// Attaches a vhost-user rng backend.
    pub fn vhost_user_rng(mut self, socket: impl AsRef<Path>) -> Self {
        self.devices.push(Device::Rng(socket.as_ref().into()));
        self
    }

    /// Attaches a vhost-user vsock backend.
    pub fn vhost_user_vsock(mut self, socket: impl AsRef<Path>) -> Self {
        self.devices.push(Device::Vsock(socket.as_ref().into()));
        self
    }

    /// Attaches a vhost-user net backend (guest MAC 52:54:00:12:34:56 + index).
    pub fn vhost_user_net(mut self, socket: impl AsRef<Path>) -> Self {
        let n = self
            .devices
            .iter()
            .filter(|d| matches!(d, Device::Net(..)))
            .count();
        self.devices.push(Device::Net(
            socket.as_ref().into(),
            format!("52:54:00:12:34:{:02x}", 0x56 + n),
        ));
        self
    }

    /// Attaches a vhost-user console backend (virtio id 3, 2 queues) via
    /// `vhost-user-device-pci`; the guest sees /dev/hvc0. Needs a QEMU that lets users
    /// create `vhost-user-device-pci`: Debian's QEMU 10 does not (the run then fails with
    /// "expects a pluggable device type"); use runner B with Cordon's VMM instead.
    pub fn vhost_user_console(self, socket: impl AsRef<Path>) -> Self {
        self.vhost_user_device(socket, 3, 2, 0)
    }

    /// Attaches any vhost-user device through `vhost-user-device-pci`.
    pub fn vhost_user_device(
        mut self,
        socket: impl AsRef<Path>,
        virtio_id: u16,
        num_vqs: u32,
        config_size: u32,
    ) -> Self {
        self.devices.push(Device::Generic {
            socket: socket.as_ref().into(),
            virtio_id,
            num_vqs,
            config_size,
        });
        self
    }

    /// Attaches QEMU's own virtio console, connected to a Unix socket server at `socket`
    /// that the test must already be listening on.
    pub fn qemu_console(mut self, socket: impl AsRef<Path>) -> Self {
        self.devices
            .push(Device::QemuConsole(socket.as_ref().into()));
        self
    }

    /// Adds raw QEMU arguments.
    pub fn qemu_args(mut self, args: &[&str]) -> Self {
        self.qemu_args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    /// Adds a check.
    pub fn check(mut self, c: Check) -> Self {
        self.checks.push(c);
        self
    }

    /// Adds checks.
    pub fn checks(mut self, cs: &[Check]) -> Self {
        self.checks.extend_from_slice(cs);
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    /// Time the whole boot may take before the guest is killed.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Per-check timeout inside the guest, in seconds (agent default: 20).
    pub fn check_timeout(mut self, secs: u64) -> Self {
        self.check_timeout = Some(secs);
        self
    }

    /// Name of the console log (`target/guest-logs/<name>.log`); default: the test's name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }

    /// Returns failed checks in the results instead of failing the run.
    pub fn allow_failures(mut self) -> Self {
        self.allow_failures = true;
        self
    }

    /// Puts the guest's serial console on this process's terminal (QEMU `-chardev stdio`,
    /// keyboard input forwarded, Ctrl-C goes to the guest) while still logging it to the
    /// console log that the results are parsed from.
    pub fn terminal(mut self) -> Self {
        self.terminal = true;
        self
    }

    /// After its checks, the guest prints a readable summary and gives a shell on its serial
    /// console (`cordon.shell=ttyS0`); leaving the shell ends the guest.
    pub fn shell(self) -> Self {
        self.shell_on("ttyS0")
    }

    /// Like [`GuestRunner::shell`], with the shell on the guest's `/dev/<tty>` (e.g. `hvc1`,
    /// a virtio-console). Only letters and digits are kept from `tty`.
    pub fn shell_on(mut self, tty: &str) -> Self {
        self.shell = Some(tty.chars().filter(|c| c.is_ascii_alphanumeric()).collect());
        self
    }

    /// QEMU reconnects to a vhost-user backend that went away, trying every `ms`
    /// milliseconds (`-chardev socket,...,reconnect-ms=`): for backend restart tests.
    pub fn reconnect_ms(mut self, ms: u32) -> Self {
        self.reconnect_ms = Some(ms);
        self
    }

    /// Boots this initramfs instead of the standard one.
    pub fn initramfs(mut self, path: impl AsRef<Path>) -> Self {
        self.initramfs = Some(path.as_ref().into());
        self
    }

    /// The kernel command line for these checks.
    pub fn cmdline(&self, vm: &str) -> Result<String> {
        self.cmdline_with(vm, "reboot=t")
    }

    /// The kernel command line; `exit` is `reboot=t` (power off through ACPI, triple fault
    /// on panic) or, for VMMs without ACPI, `reboot=k cordon.exit=reboot` (the agent resets
    /// through the i8042 when done).
    pub(crate) fn cmdline_with(&self, vm: &str, exit: &str) -> Result<String> {
        let mut s = format!("console=ttyS0 quiet {exit} panic=-1 cordon.vm={vm}");
        if let Some(tty) = &self.shell {
            s.push_str(&format!(" cordon.shell={tty}"));
        }
        if let Some(t) = self.check_timeout {
            s.push_str(&format!(" cordon.timeout={t}"));
        }
        let toks: Vec<String> = self
            .checks
            .iter()
            .map(Check::token)
            .collect::<Result<_>>()?;
        if !toks.is_empty() {
            s.push_str(&format!(" cordon.checks={}", toks.join(",")));
        }
        if s.len() > 2000 {
            bail!("kernel command line too long ({} bytes, max 2000): split the checks over two boots", s.len());
        }
        Ok(s)
    }

    fn qemu_command(&self, a: &GuestAssets, log: &Path) -> Result<Command> {
        let qemu = tool("qemu-system-x86_64")?;
        let m = self.memory_mb;
        let mut cmd = Command::new(qemu);
        cmd.args(["-M", "q35", "-accel", "tcg", "-cpu", "max"])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-m", &format!("{m}M")])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args([
                "-object",
                &format!("memory-backend-memfd,id=mem,size={m}M,share=on"),
            ])
            .args(["-numa", "node,memdev=mem"])
            .args([
                "-chardev",
                &if self.terminal {
                    format!("stdio,id=con0,signal=off,logfile={}", log.display())
                } else {
                    format!("file,id=con0,path={}", log.display())
                },
            ])
            .args(["-serial", "chardev:con0"])
            .arg("-kernel")
            .arg(&a.kernel)
            .arg("-initrd")
            .arg(self.initramfs.as_ref().unwrap_or(&a.initramfs))
            .args(["-append", &self.cmdline(&self.vm)?]);
        for (i, d) in self.devices.iter().enumerate() {
            let reconnect = self
                .reconnect_ms
                .map(|ms| format!(",reconnect-ms={ms}"))
                .unwrap_or_default();
            let chardev = |p: &Path, extra: &str| {
                format!("socket,id=vu{i},path={}{extra}{reconnect}", p.display())
            };
            match d {
                Device::Blk(p) => {
                    cmd.args(["-chardev", &chardev(p, "")]);
                    cmd.args(["-device", &format!("vhost-user-blk-pci,chardev=vu{i}")]);
                }
                Device::Rng(p) => {
                    cmd.args(["-chardev", &chardev(p, "")]);
                    cmd.args(["-device", &format!("vhost-user-rng-pci,chardev=vu{i}")]);
                }
                Device::Vsock(p) => {
                    cmd.args(["-chardev", &chardev(p, "")]);
                    cmd.args(["-device", &format!("vhost-user-vsock-pci,chardev=vu{i}")]);
                }
                Device::Net(p, mac) => {
                    cmd.args(["-chardev", &chardev(p, "")]);
                    cmd.args(["-netdev", &format!("vhost-user,id=net{i},chardev=vu{i}")]);
                    cmd.args([
                        "-device",
                        &format!("virtio-net-pci,netdev=net{i},mac={mac}"),
                    ]);
                }
                Device::Generic {
                    socket,
                    virtio_id,
                    num_vqs,
                    config_size,
                } => {
                    cmd.args(["-chardev", &chardev(socket, "")]);
                    cmd.args([
                        "-device",
                        &format!(
                            "vhost-user-device-pci,chardev=vu{i},virtio-id={virtio_id},num_vqs={num_vqs},config_size={config_size}"
                        ),
                    ]);
                }
                Device::QemuConsole(p) => {
                    cmd.args(["-chardev", &format!("socket,id=vu{i},path={}", p.display())]);
                    cmd.args(["-device", &format!("virtio-serial-pci,id=vser{i}")]);
                    cmd.args([
                        "-device",
                        &format!("virtconsole,bus=vser{i}.0,chardev=vu{i}"),
                    ]);
                }
            }
        }
        cmd.args(&self.qemu_args);
        Ok(cmd)
    }

    /// Starts the guest; use the handle to interact with it while it runs.
    pub fn spawn(&self) -> Result<RunningGuest> {
        let a = assets()?;
        let dir = logs_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = match (&self.name, self.exact_name) {
            (Some(n), true) => n.clone(),
            _ => log_name(self.name.as_deref()),
        };
        let log = dir.join(format!("{name}.log"));
        let qemu_log = dir.join(format!("{name}.qemu.log"));
        let _ = std::fs::remove_file(&log);
        let mut cmd = self.qemu_command(a, &log)?;
        // With a silence limit, a monitor lets a stall be looked at before the kill. The
        // path is short: Unix socket paths end at 108 bytes.
        let monitor = self.silence_limit.map(|_| {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::env::temp_dir().join(format!("cordon-mon-{}-{n}", std::process::id()))
        });
        if let Some(m) = &monitor {
            let _ = std::fs::remove_file(m);
            cmd.args([
                "-monitor",
                &format!("unix:{},server=on,wait=off", m.display()),
            ]);
        }
        let stderr = std::fs::File::create(&qemu_log)?;
        if self.terminal {
            cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit());
        } else {
            cmd.stdin(Stdio::null()).stdout(stderr.try_clone()?);
        }
        cmd.stderr(stderr);
        log::info!("guest {name}: {cmd:?}");
        std::fs::write(dir.join(format!("{name}.cmd")), format!("{cmd:?}\n"))?;
        let child = cmd.spawn().context("starting qemu-system-x86_64")?;
        let mut g = self.running(child, log, qemu_log);
        g.monitor = monitor;
        Ok(g)
    }

    /// The handle of a started guest process whose console goes to `log`.
    pub(crate) fn running(&self, child: Child, log: PathBuf, qemu_log: PathBuf) -> RunningGuest {
        let mut expect = vec![(self.vm.clone(), self.checks.len())];
        expect.extend(self.also_expect.iter().cloned());
        expect.retain(|(vm, _)| !vm.is_empty());
        RunningGuest {
            child: Some(child),
            log,
            qemu_log,
            start: Instant::now(),
            deadline: Instant::now() + self.timeout,
            expect,
            required_lines: self.required_lines.clone(),
            allow_failures: self.allow_failures,
            silence_limit: self.silence_limit,
            monitor: None,
            poke_grace: POKE_GRACE,
        }
    }

    /// Boots the guest, waits for it to power off, returns the parsed results. Fails on a
    /// timeout, a kernel panic, a missing result line, or (unless
    /// [`allow_failures`](Self::allow_failures)) a failed check; the error quotes the console.
    pub fn run(&self) -> Result<Results> {
        self.spawn()?.finish()
    }
}

/// A running guest (killed when dropped).
pub struct RunningGuest {
    child: Option<Child>,
    log: PathBuf,
    qemu_log: PathBuf,
    start: Instant,
    deadline: Instant,
    expect: Vec<(String, usize)>,
    required_lines: Vec<String>,
    allow_failures: bool,
    silence_limit: Option<Duration>,
    /// QEMU's human monitor socket, when the guest has one.
    monitor: Option<PathBuf>,
    /// How long a silent guest gets after the monitor poke ([`POKE_GRACE`]).
    poke_grace: Duration,
}

/// Sends one human-monitor command to QEMU at `socket` and returns what it printed within
/// a second (empty if the monitor does not answer).
fn monitor_query(socket: &Path, command: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.write_all(format!("{command}\n").as_bytes());
    // Until the monitor closes or the read times out; either way what came is kept.
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The lines of a saved stall state worth reading first: each register sample's RIP/RFLAGS/
/// CPL line and CR3, the first instructions at RIP, and the local APIC's timer, ISR and IRR.
pub fn stall_summary(text: &str) -> Vec<String> {
    let mut insns = 0;
    text.lines()
        .map(|l| l.trim_end())
        .filter(|l| {
            if l.starts_with("0x") {
                insns += 1;
                return insns <= 6;
            }
            ["RIP=", "CR0=", "Timer", "ISR", "IRR"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(str::to_string)
        .collect()
}

/// A guest whose console stayed silent for longer than its silence limit: it was killed.
/// The error of [`RunningGuest::finish`] carries it (`err.downcast_ref::<Stalled>()`), so
/// a runner can tell a stalled boot from a failed one.
#[derive(Debug, Clone, Copy)]
pub struct Stalled {
    /// How long the console had been silent.
    pub silent: Duration,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no console output for {:.0} s",
            self.silent.as_secs_f64()
        )
    }
}

impl std::error::Error for Stalled {}

impl RunningGuest {
    /// Path of the console log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The console output so far.
    pub fn console(&self) -> String {
        read_log(&self.log)
    }

    fn exited(&mut self) -> Result<bool> {
        match self.child.as_mut() {
            None => Ok(true),
            Some(c) => Ok(c.try_wait()?.is_some()),
        }
    }

    /// An error quoting the console tail and the VMM's own output.
    pub fn failure(&self, what: &str) -> anyhow::Error {
        let console = self.console();
        let mut qemu = read_log(&self.qemu_log);
        if qemu.contains("vhost-user-device-pci") && qemu.contains("pluggable device type") {
            qemu.push_str(
                "\n(hint: this QEMU does not let users create vhost-user-device-pci; \
                 attach the device through runner B with Cordon's VMM instead)",
            );
        }
        anyhow::anyhow!(
            "guest {what} after {:.1} s\n--- console tail ({}) ---\n{}\n--- vmm output ({}) ---\n{}",
            self.start.elapsed().as_secs_f64(),
            self.log.display(),
            tail(&console),
            self.qemu_log.display(),
            tail(&qemu)
        )
    }

    /// Waits until the console contains `needle` (e.g. `CORDON-LISTENING vsock port=7000`).
    pub fn wait_for(&mut self, needle: &str) -> Result<()> {
        loop {
            let text = self.console();
            if text.contains(needle) {
                return Ok(());
            }
            if let Some(p) = panic_line(&text) {
                return Err(self.failure(&format!("died ({p}) while waiting for {needle:?}")));
            }
            if self.exited()? {
                return Err(self.failure(&format!("exited while waiting for {needle:?}")));
            }
            if Instant::now() > self.deadline {
                self.kill();
                return Err(self.failure(&format!("timed out waiting for {needle:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails (quoting the console) if the guest already exited, its kernel died or its time
    /// is up; for tests that wait for something outside the guest.
    pub fn check_alive(&mut self) -> Result<()> {
        let text = self.console();
        if let Some(p) = panic_line(&text) {
            return Err(self.failure(&format!("died ({p})")));
        }
        if self.exited()? {
            return Err(self.failure("exited early"));
        }
        if Instant::now() > self.deadline {
            self.kill();
            return Err(self.failure("timed out"));
        }
        Ok(())
    }

    /// Before a stalled guest is killed: its vCPU state from QEMU's monitor, next to the
    /// console log as `<name>.stall-regs.txt`, for whoever investigates the stall.
    fn save_stall_state(&self) {
        let Some(m) = &self.monitor else { return };
        // Two register samples a moment apart show whether the CPU still moves; the
        // instructions at RIP show which code it is stuck in.
        let mut text = monitor_query(m, "info registers");
        text.push_str(&monitor_query(m, "x/16i $pc"));
        std::thread::sleep(Duration::from_millis(300));
        text.push_str(&monitor_query(m, "info registers"));
        text.push_str(&monitor_query(m, "info lapic"));
        let path = self.log.with_extension("stall-regs.txt");
        if std::fs::write(&path, &text).is_ok() {
            eprintln!("stalled guest: vCPU state saved in {}", path.display());
        }
        // The gist goes to the test output too: a CI log is often all there is to look at.
        for line in stall_summary(&text) {
            eprintln!("stalled guest: {line}");
        }
    }

    /// Pauses and resumes every emulated CPU through QEMU's monitor (`stop`, `cont`): each
    /// vCPU thread is kicked out of the code it runs. A stalled nested run is poked once this
    /// way before it is killed, to learn whether the stall survives it. False without a
    /// monitor.
    fn poke(&self) -> bool {
        let Some(m) = &self.monitor else {
            return false;
        };
        monitor_query(m, "stop");
        monitor_query(m, "cont");
        true
    }

    /// Kills the guest.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the guest to power off (killing it at the deadline) and parses its results.
    pub fn finish(mut self) -> Result<Results> {
        let mut console_len = 0;
        let mut last_output = Instant::now();
        // When a silent guest was poked (see `poke`), and how long it had been silent then.
        let mut poked: Option<(Instant, Duration)> = None;
        let status = loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(s) = c.try_wait()? {
                    break Some(s);
                }
            }
            if Instant::now() > self.deadline {
                self.kill();
                return Err(self.failure("timed out (killed)"));
            }
            if let Some(limit) = self.silence_limit {
                let len = std::fs::metadata(&self.log).map_or(0, |m| m.len());
                if len != console_len {
                    console_len = len;
                    last_output = Instant::now();
                    if let Some((at, silent)) = poked.take() {
                        eprintln!(
                            "NESTED STALL recovered: console output resumed {:.1} s after a \
                             monitor stop/cont, following {} s of silence",
                            at.elapsed().as_secs_f64(),
                            silent.as_secs()
                        );
                    }
                } else if last_output.elapsed() > limit {
                    if poked.is_none() {
                        self.save_stall_state();
                        if self.poke() {
                            eprintln!(
                                "stalled guest: stop/cont through the monitor; waiting {} s for \
                                 output before the kill",
                                self.poke_grace.as_secs()
                            );
                            poked = Some((Instant::now(), last_output.elapsed()));
                        }
                    }
                    if poked.is_some_and(|(at, _)| at.elapsed() <= self.poke_grace) {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                    self.kill();
                    let stalled = Stalled {
                        silent: last_output.elapsed(),
                    };
                    let text = self.failure(&format!("stalled ({stalled}), killed"));
                    return Err(anyhow::Error::new(stalled).context(text.to_string()));
                }
            }
            // A panicked guest under -no-reboot exits by itself; a paused one is caught here.
            if panic_line(&self.console()).is_some() {
                std::thread::sleep(Duration::from_millis(500));
                self.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let elapsed = self.start.elapsed();
        self.child = None;
        let console = self.console();
        if let Some(p) = panic_line(&console) {
            return Err(self.failure(&format!("kernel died: {p}")));
        }
        if let Some(s) = status {
            if !s.success() {
                return Err(self.failure(&format!("VMM exited with {s}")));
            }
        }
        let mut results = Vec::new();
        for (vm, n) in &self.expect {
            let rs = parse_results(&console, vm).map_err(|e| self.failure(&format!("{e:#}")))?;
            if !console.contains(&format!("CORDON-AGENT-DONE vm={vm} ")) {
                return Err(self.failure(&format!(
                    "agent of {vm} did not finish ({} of {n} results)",
                    rs.len()
                )));
            }
            for id in 0..*n {
                if !rs.iter().any(|r| r.id == id) {
                    return Err(self.failure(&format!("has no result for {vm} check #{id}")));
                }
            }
            results.extend(rs);
        }
        for line in &self.required_lines {
            if !console.contains(line.as_str()) {
                return Err(self.failure(&format!("console lacks {line:?}")));
            }
        }
        let r = Results {
            results,
            console,
            log: self.log.clone(),
            elapsed,
        };
        if !self.allow_failures {
            let failed: Vec<String> = r
                .results
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{} {} #{}: {}", c.vm, c.check, c.id, c.detail))
                .collect();
            if !failed.is_empty() {
                return Err(self.failure(&format!("checks failed: {}", failed.join("; "))));
            }
        }
        Ok(r)
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        self.kill();
        if let Some(m) = &self.monitor {
            let _ = std::fs::remove_file(m);
        }
    }
}

/// The results of one guest boot.
#[derive(Debug, Clone)]
pub struct Results {
    /// One entry per check, in plan order.
    pub results: Vec<CheckResult>,
    /// The whole console text.
    pub console: String,
    /// Where the console log is.
    pub log: PathBuf,
    /// Wall time from start to power-off.
    pub elapsed: Duration,
}

impl Results {
    /// The first result of the check named `name`.
    pub fn check(&self, name: &str) -> Result<&CheckResult> {
        self.results
            .iter()
            .find(|r| r.check == name)
            .ok_or_else(|| anyhow::anyhow!("no result for check {name} in {}", self.log.display()))
    }

    /// The first result of the check named `name` reported by guest `vm` (`l1`, `l2`).
    pub fn check_in(&self, vm: &str, name: &str) -> Result<&CheckResult> {
        self.results
            .iter()
            .find(|r| r.check == name && r.vm == vm)
            .ok_or_else(|| {
                anyhow::anyhow!("no result for {vm} check {name} in {}", self.log.display())
            })
    }

    /// The result of check number `id` (its position in the plan).
    pub fn nth(&self, id: usize) -> Result<&CheckResult> {
        self.results
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| anyhow::anyhow!("no result for check #{id} in {}", self.log.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silent_child(secs: &str) -> (Child, tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("console.log");
        let vmm = dir.path().join("vmm.log");
        std::fs::write(&vmm, b"").expect("vmm log");
        let out = std::fs::File::create(&log).expect("console log");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("echo booting; sleep {secs}"))
            .stdout(out)
            .spawn()
            .expect("sh");
        (child, dir, log, vmm)
    }

    /// The stall gist printed to the test output keeps the lines that tell where the CPU is.
    #[test]
    fn stall_summary_keeps_registers_code_and_lapic() {
        let text = "(qemu) info registers\nCPU#0\nRAX=0 RBX=0\nRIP=ffffffff81000000 RFL=00000002 \
            [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\nCR0=80050033 CR2=0 CR3=1000 CR4=0\n\
            0xffffffff81000000:  pause\n0xffffffff81000002:  jmp 0xffffffff81000000\n\
            Timer\t DCR=0x3 initial_count = 1 current_count = 0\nISR\t (none)\nIRR\t 236\n";
        let s = stall_summary(text);
        assert_eq!(s.len(), 7, "{s:?}");
        assert!(s[0].starts_with("RIP=ffffffff81000000"));
        assert!(s[2].ends_with("pause"));
        assert_eq!(s[6], "IRR\t 236");
    }

    /// A console that stops printing ends the run early as `Stalled`, long before the
    /// deadline, and the child is killed.
    #[test]
    fn a_silent_console_is_reported_as_stalled() {
        let (child, _dir, log, vmm) = silent_child("60");
        let mut g = GuestRunner::tcg().timeout(Duration::from_secs(60));
        g.silence_limit = Some(Duration::from_millis(700));
        g.vm = String::new();
        let start = Instant::now();
        let err = g.running(child, log, vmm).finish().expect_err("stalled");
        assert!(start.elapsed() < Duration::from_secs(10), "{err:#}");
        let stalled = err.downcast_ref::<Stalled>().expect("a Stalled error");
        assert!(stalled.silent >= Duration::from_millis(700));
        assert!(
            format!("{err:#}").contains("booting"),
            "console quoted: {err:#}"
        );
    }

    /// A stand-in for QEMU's monitor on `sock`: records each command; on `cont`, when
    /// `resume` is given, the "guest" prints again (appends to that console log).
    fn fake_monitor(
        sock: PathBuf,
        resume: Option<PathBuf>,
    ) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
        use std::io::{BufRead, Write};
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l = std::os::unix::net::UnixListener::bind(&sock).expect("bind monitor");
        let rec = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let mut line = String::new();
                let _ = std::io::BufReader::new(&c).read_line(&mut line);
                let cmd = line.trim().to_string();
                if cmd == "cont" {
                    if let Some(log) = &resume {
                        let mut f = std::fs::OpenOptions::new()
                            .append(true)
                            .open(log)
                            .expect("console");
                        let _ = f.write_all(b"resumed\n");
                    }
                }
                rec.lock().unwrap().push(cmd);
            }
        });
        seen
    }

    /// A silent guest is poked (`stop`, `cont`) before the kill; output after the poke lets
    /// it run on to its normal end.
    #[test]
    fn a_stalled_guest_that_prints_after_the_poke_runs_on() {
        let (child, dir, log, vmm) = silent_child("3");
        let mon = dir.path().join("mon.sock");
        let seen = fake_monitor(mon.clone(), Some(log.clone()));
        let mut g = GuestRunner::tcg().timeout(Duration::from_secs(60));
        g.silence_limit = Some(Duration::from_millis(700));
        g.vm = String::new();
        let mut run = g.running(child, log, vmm);
        run.monitor = Some(mon);
        run.poke_grace = Duration::from_secs(20);
        let r = run.finish().expect("runs to its end after the poke");
        assert!(r.console.contains("resumed"), "{}", r.console);
        let seen = seen.lock().unwrap().clone();
        let stop = seen.iter().position(|c| c == "stop").expect("stop sent");
        assert_eq!(
            seen.get(stop + 1).map(String::as_str),
            Some("cont"),
            "{seen:?}"
        );
    }

    /// A guest still silent when the grace after the poke ends is killed as `Stalled`.
    #[test]
    fn a_guest_silent_after_the_poke_is_killed_as_stalled() {
        let (child, dir, log, vmm) = silent_child("60");
        let mon = dir.path().join("mon.sock");
        let seen = fake_monitor(mon.clone(), None);
        let mut g = GuestRunner::tcg().timeout(Duration::from_secs(60));
        g.silence_limit = Some(Duration::from_millis(700));
        g.vm = String::new();
        let mut run = g.running(child, log, vmm);
        run.monitor = Some(mon);
        run.poke_grace = Duration::from_millis(500);
        let start = Instant::now();
        let err = run.finish().expect_err("stalled");
        assert!(err.downcast_ref::<Stalled>().is_some(), "{err:#}");
        assert!(start.elapsed() < Duration::from_secs(20), "{err:#}");
        assert!(seen.lock().unwrap().iter().any(|c| c == "cont"));
    }

    /// Without a silence limit the same console is only ended by the deadline (a timeout,
    /// not a stall).
    #[test]
    fn without_a_limit_silence_is_only_a_timeout() {
        let (child, _dir, log, vmm) = silent_child("60");
        let mut g = GuestRunner::tcg().timeout(Duration::from_secs(2));
        g.vm = String::new();
        let err = g.running(child, log, vmm).finish().expect_err("timeout");
        assert!(err.downcast_ref::<Stalled>().is_none(), "{err:#}");
        assert!(err.to_string().contains("timed out"), "{err:#}");
    }
}
