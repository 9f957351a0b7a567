//! Runner B: "our VMM boots the guest". On a PVM host (`/sys/module/kvm_pvm`) a Linux L1
//! runs under QEMU TCG with `-cpu max` (emulated SVM + nested paging), loads `kvm_amd`, and
//! runs a shell script that starts a KVM VMM booting the L2 guest; on an ordinary KVM host
//! the same script runs directly on the host. The L2 guest's agent results come back over
//! the VMM's stdout, which is L1's console. `CORDON_GUEST_MODE=nested|direct` overrides the
//! detection.
//!
//! Until `cordon run` exists the VMM is QEMU itself ([`STAND_IN_VMM`]); the VMM issue swaps
//! in its own script with [`NestedRunner::script`].
//!
//! The script runs in `$CORDON_DIR` (`/cordon` in L1) with `L2_KERNEL`, `L2_INITRD`,
//! `L2_CMDLINE` set and `$CORDON_DIR/bin` (static binaries added with
//! [`NestedRunner::static_bin`] or [`NestedRunner::bin`]) first on `PATH`; files added with
//! [`NestedRunner::file`] are in `$CORDON_DIR`. The L2 serial console must go to stdout.

use super::assets::{assets, build_static, initramfs, GuestAssets};
use super::check::Check;
use super::console::{log_name, logs_dir};
use super::cpio::Cpio;
use super::runner::{GuestRunner, Results, Stalled};
use super::tools::{run, tool};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The stand-in VMM script: QEMU with KVM (microvm, serial on stdout) boots the L2 guest.
///
/// microvm has no i8042, so the agent's `reboot=k` would make Linux poll a missing
/// keyboard controller (hundreds of thousands of nested port exits), then jump to the
/// firmware in real mode, which hung some CI runs after "reboot: Restarting system".
/// `reboot=t` triple-faults at once, and `-no-reboot` turns that into QEMU's exit.
pub const STAND_IN_VMM: &str = r#"qemu-system-x86_64 -L /usr/share/qemu -M microvm,rtc=off -enable-kvm -cpu host \
  -m 256 -smp 1 -nographic -no-reboot -kernel "$L2_KERNEL" -initrd "$L2_INITRD" \
  -append "$(echo "$L2_CMDLINE" | sed 's/reboot=k/reboot=t/') pci=off"
"#;

/// Modules L1 loads: KVM for AMD (QEMU TCG `-cpu max` emulates SVM), and TUN for the TAP
/// devices of net backends running in L1.
pub const L1_MODULES: &[&str] = &["kvm_amd", "tun"];

/// How L2 ends: the VMM may have no ACPI, so the agent resets through the i8042, which
/// Cordon's VMM exits on (QEMU microvm, without i8042, falls back to a triple fault).
const L2_EXIT: &str = "reboot=k cordon.exit=reboot";

/// Default timeout of a whole nested run (`CORDON_GUEST_TIMEOUT` seconds overrides).
pub const NESTED_TIMEOUT: Duration = Duration::from_secs(300);

/// A nested run whose L1 console stays silent this long is taken as stalled, killed and
/// booted again, up to [`NESTED_ATTEMPTS`] boots in all (`CORDON_GUEST_SILENCE` seconds
/// overrides, 0 turns it off).
///
/// Why: inside the QEMU-TCG L1 an L2 boot now and then stops making progress for good (no
/// output, the emulated L1 CPU busy): twice in the runs of 2026-11-25 and 2026-12-02 (the
/// full-stack test in CI, just after its devices came up; a `guest-bench` boot), among
/// dozens of nested boots that went through. Never seen on real KVM; tracked in
/// docs/VMM.md. A
/// stall in every attempt still fails the test, so a regression that hangs every boot is
/// not hidden; each retry is printed and its console kept as `<name>.stalled-N.log`.
pub const NESTED_SILENCE: Duration = Duration::from_secs(120);

/// CPUs of the TCG L1 (`CORDON_L1_CPUS` overrides). Two, so that L1's own processes (the
/// backends, the VMM's other threads) run next to the vCPU thread of L2: with one, every time
/// L2 waits with interrupts off for a backend (a virtio-console write spins until the host
/// consumes it), L1 has to preempt L2 first. Measured: the full-stack test 33 s instead of
/// 43 s, L2 at init after 7.6 s of uptime instead of 14.5 s.
pub const L1_CPUS: u32 = 2;

/// L1 shell (`__DIR__` = `$CORDON_DIR`): a `cordon` wrapper first in `PATH` that runs
/// `cordon run` pinned to L1's CPU 0. With two TCG CPUs and the VMM free to move, 3 of 6 L2
/// boots of one `guest-bench` run died of a triple fault (no panic message) during heavy
/// block I/O; pinned, 0 of 12 in two runs (with 1 L1 CPU there were none either). The likely cause is
/// KVM's vCPU thread moving between L1 CPUs: KVM then gives the vCPU a new ASID and expects
/// no flush to be needed, while QEMU's TCG does not model SVM ASIDs. The backends still run
/// on either CPU.
const PIN_VMM: &str = r#"mkdir -p __DIR__/pin
cat > __DIR__/pin/cordon <<'PIN'
#!/bin/sh
# Nested-TCG workaround (tests/src/guest/nested.rs, PIN_VMM): the VMM stays on L1's CPU 0.
if [ "$1" = run ]; then exec taskset -c 0 __DIR__/bin/cordon "$@"; fi
exec __DIR__/bin/cordon "$@"
PIN
chmod 755 __DIR__/pin/cordon
export PATH="__DIR__/pin:$PATH"
"#;

/// CPUs the TCG L1 gets: [`L1_CPUS`], or `CORDON_L1_CPUS`.
pub fn l1_cpus() -> u32 {
    std::env::var("CORDON_L1_CPUS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(L1_CPUS)
}

/// Boots a nested run gets when it stalls: the first and up to two more.
pub const NESTED_ATTEMPTS: usize = 3;

fn silence_limit() -> Option<Duration> {
    let secs = std::env::var("CORDON_GUEST_SILENCE")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(NESTED_SILENCE.as_secs());
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Where runner B runs the VMM script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    /// Inside an L1 guest under QEMU TCG (PVM hosts, or hosts without /dev/kvm).
    Nested,
    /// Directly on the host (ordinary KVM).
    Direct,
}

impl GuestMode {
    /// `CORDON_GUEST_MODE` if set, else `Nested` on PVM hosts or without /dev/kvm, else
    /// `Direct`.
    pub fn detect() -> Result<Self> {
        match std::env::var("CORDON_GUEST_MODE").ok().as_deref() {
            Some("nested") => return Ok(GuestMode::Nested),
            Some("direct") => return Ok(GuestMode::Direct),
            Some(v) => bail!("CORDON_GUEST_MODE={v:?}: accepted values are nested, direct"),
            None => {}
        }
        if Path::new("/sys/module/kvm_pvm").exists() || !Path::new("/dev/kvm").exists() {
            Ok(GuestMode::Nested)
        } else {
            Ok(GuestMode::Direct)
        }
    }
}

enum Content {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// Builder of one runner B run.
pub struct NestedRunner {
    mode: GuestMode,
    l1_checks: Vec<Check>,
    l2_checks: Vec<Check>,
    files: Vec<(String, Content, u32)>,
    script: Option<String>,
    carry_qemu: bool,
    timeout: Duration,
    l1_memory_mb: u32,
    name: Option<String>,
    allow_failures: bool,
    interactive: bool,
    shell_tty: String,
    extra_plans: Vec<(String, String, Vec<Check>)>,
    host_bins: Vec<PathBuf>,
}

impl NestedRunner {
    /// A run in the detected [`GuestMode`], with the stand-in VMM, L1 check `kvm`.
    pub fn new() -> Result<Self> {
        let timeout = std::env::var("CORDON_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(NESTED_TIMEOUT);
        Ok(NestedRunner {
            mode: GuestMode::detect()?,
            l1_checks: vec![Check::kvm()],
            l2_checks: Vec::new(),
            files: Vec::new(),
            script: None,
            carry_qemu: true,
            timeout,
            l1_memory_mb: 2048,
            name: None,
            allow_failures: false,
            interactive: false,
            shell_tty: "ttyS0".into(),
            extra_plans: Vec::new(),
            host_bins: Vec::new(),
        })
    }

    /// Forces a mode.
    pub fn mode(mut self, m: GuestMode) -> Self {
        self.mode = m;
        self
    }

    /// The mode this run uses.
    pub fn current_mode(&self) -> GuestMode {
        self.mode
    }

    /// Checks the L1 agent runs before the script (default: `kvm`; nested mode only).
    pub fn l1_checks(mut self, cs: &[Check]) -> Self {
        self.l1_checks = cs.to_vec();
        self
    }

    /// Checks the L2 guest's agent runs (passed in `L2_CMDLINE`).
    pub fn l2_checks(mut self, cs: &[Check]) -> Self {
        self.l2_checks.extend_from_slice(cs);
        self
    }

    /// A further L2 plan for scripts that boot L2 more than once: its command line is
    /// exported as `L2_CMDLINE_<VAR>` (VAR: upper-case letters, digits, `_`), its results
    /// are labelled `vm` (and the run fails unless that agent finished; see
    /// [`l2_expected`](Self::l2_expected) for the default `l2` plan).
    pub fn l2_plan(mut self, var: &str, vm: &str, cs: &[Check]) -> Self {
        self.extra_plans.push((var.into(), vm.into(), cs.to_vec()));
        self
    }

    /// Carries a dynamically linked host program (found on `PATH`) with its shared
    /// libraries into L1 as `$CORDON_DIR/bin/<name>`: peers such as qemu-storage-daemon.
    /// In direct mode the host's own copy is used.
    pub fn host_bin(mut self, name: &str) -> Result<Self> {
        self.host_bins.push(tool(name)?);
        Ok(self)
    }

    /// Copies a host file to `$CORDON_DIR/<dest>` (an image, a config).
    pub fn file(mut self, dest: &str, src: impl AsRef<Path>) -> Self {
        self.files
            .push((dest.into(), Content::Path(src.as_ref().into()), 0o644));
        self
    }

    /// Writes bytes to `$CORDON_DIR/<dest>`.
    pub fn file_bytes(mut self, dest: &str, data: &[u8]) -> Self {
        self.files
            .push((dest.into(), Content::Bytes(data.to_vec()), 0o644));
        self
    }

    /// Adds a (statically linked) executable as `$CORDON_DIR/bin/<its name>`.
    pub fn bin(mut self, path: impl AsRef<Path>) -> Self {
        let p = path.as_ref();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.files
            .push((format!("bin/{name}"), Content::Path(p.into()), 0o755));
        self
    }

    /// Builds a workspace binary statically (see [`build_static`]) and adds it with [`bin`](Self::bin).
    pub fn static_bin(self, package: &str, bin: &str) -> Result<Self> {
        let p = build_static(package, bin)?;
        Ok(self.bin(p))
    }

    /// The VMM script (sh) replacing the stand-in QEMU; it must boot the L2 guest with
    /// `$L2_KERNEL`, `$L2_INITRD`, `$L2_CMDLINE` and send its serial console to stdout.
    pub fn script(mut self, sh: &str) -> Self {
        self.script = Some(sh.into());
        self.carry_qemu = false;
        self
    }

    /// A VMM script that uses QEMU (carried into L1 with its libraries and firmware), for
    /// stand-in set-ups beyond [`STAND_IN_VMM`] (e.g. vhost-user devices for L2).
    pub fn qemu_script(mut self, sh: &str) -> Self {
        self.script = Some(sh.into());
        self.carry_qemu = true;
        self
    }

    /// Time the whole run may take.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// L1 memory in MiB (default 2048).
    pub fn l1_memory_mb(mut self, mb: u32) -> Self {
        self.l1_memory_mb = mb;
        self
    }

    /// Name of the console log; default: the test's name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Returns failed checks in the results instead of failing the run.
    pub fn allow_failures(mut self) -> Self {
        self.allow_failures = true;
        self
    }

    /// Interactive run (the demo on a terminal): L1's console is this process's terminal
    /// (nested mode; in direct mode the script inherits the terminal), L2 gives a shell on
    /// `/dev/<tty>` after its checks (`cordon.shell=<tty>`), and there is no time limit. The
    /// script must connect its stdin to that console: for `ttyS0`, `cordon run` without
    /// `--no-console-input`; for a virtio-console, a serial backend with `stdin`.
    pub fn interactive(mut self, tty: &str) -> Self {
        self.interactive = true;
        self.shell_tty = tty.into();
        self.timeout = Duration::from_secs(365 * 24 * 3600);
        self
    }

    /// The script's prologue: paths, the L2 command lines, and `PATH`; with `pin_vmm` (nested
    /// under a multi-CPU TCG L1) a `cordon` wrapper first in `PATH` keeps `cordon run` on
    /// L1's CPU 0 ([`PIN_VMM`]).
    fn header(&self, dir: &str, kernel: &str, initrd: &str, pin_vmm: bool) -> Result<String> {
        let mut l2 = GuestRunner::tcg().checks(&self.l2_checks);
        if self.interactive {
            l2 = l2.shell_on(&self.shell_tty);
        }
        let cmdline = l2.cmdline_with("l2", L2_EXIT)?;
        let mut h = format!(
            "export CORDON_DIR={dir} L2_KERNEL={kernel} L2_INITRD={initrd}\n\
             export L2_CMDLINE='{cmdline}'\nexport PATH=\"$CORDON_DIR/bin:$PATH\"\n"
        );
        for (var, vm, checks) in &self.extra_plans {
            let ok = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
            if var.is_empty() || !var.chars().all(ok) {
                bail!("l2_plan: variable suffix {var:?} must be A-Z, 0-9 or _");
            }
            if !vm.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                bail!("l2_plan: vm label {vm:?} must be letters, digits or -");
            }
            let line = GuestRunner::tcg()
                .checks(checks)
                .cmdline_with(vm, L2_EXIT)?;
            h.push_str(&format!("export L2_CMDLINE_{var}='{line}'\n"));
        }
        if pin_vmm {
            h.push_str(&PIN_VMM.replace("__DIR__", dir));
        }
        Ok(h)
    }

    /// The L2 agents the run expects to finish: each [`l2_plan`](Self::l2_plan), and `l2`
    /// unless the run has extra plans but no [`l2_checks`](Self::l2_checks) (a script that
    /// boots only its own plans).
    fn l2_expected(&self) -> Vec<(String, usize)> {
        let mut v = Vec::new();
        if self.extra_plans.is_empty() || !self.l2_checks.is_empty() {
            v.push(("l2".to_string(), self.l2_checks.len()));
        }
        v.extend(
            self.extra_plans
                .iter()
                .map(|(_, vm, cs)| (vm.clone(), cs.len())),
        );
        v
    }

    fn script_body(&self) -> &str {
        self.script.as_deref().unwrap_or(STAND_IN_VMM)
    }

    /// Runs: boots L1 (nested) or runs the script (direct), returns L1's and L2's results.
    pub fn run(&self) -> Result<Results> {
        let a = assets()?;
        let dir = logs_dir();
        std::fs::create_dir_all(&dir)?;
        let name = log_name(self.name.as_deref());
        match self.mode {
            GuestMode::Nested => self.run_nested(a, &dir, &name),
            GuestMode::Direct => self.run_direct(a, &dir, &name),
        }
    }

    fn run_nested(&self, a: &GuestAssets, dir: &Path, name: &str) -> Result<Results> {
        let mut mods: Vec<&str> = super::assets::GUEST_MODULES.to_vec();
        mods.extend_from_slice(L1_MODULES);
        let mut c = initramfs(a, &mods)?;
        c.file("cordon/l2/vmlinuz", 0o644, &std::fs::read(&a.kernel)?);
        c.file("cordon/l2/initrd", 0o644, &std::fs::read(&a.initramfs)?);
        c.dir("cordon/bin");
        for (dest, content, mode) in &self.files {
            let data = match content {
                Content::Path(p) => {
                    std::fs::read(p).with_context(|| format!("reading {}", p.display()))?
                }
                Content::Bytes(b) => b.clone(),
            };
            c.file(&format!("cordon/{dest}"), *mode, &data);
        }
        if self.carry_qemu {
            add_qemu(&mut c)?;
        }
        for b in &self.host_bins {
            let name = b.file_name().unwrap_or_default().to_string_lossy();
            add_host_binary(&mut c, b, &format!("cordon/bin/{name}"))?;
        }
        let script = format!(
            "{}{}",
            self.header(
                "/cordon",
                "/cordon/l2/vmlinuz",
                "/cordon/l2/initrd",
                l1_cpus() > 1
            )?,
            self.script_body()
        );
        c.file("cordon/run.sh", 0o755, script.as_bytes());
        let l1_initrd = dir.join(format!("{name}.l1.cpio"));
        c.write_to(&l1_initrd)?;
        let mut g = GuestRunner::tcg()
            .name(name)
            .memory_mb(self.l1_memory_mb)
            .timeout(self.timeout)
            .initramfs(&l1_initrd)
            .checks(&self.l1_checks);
        if self.allow_failures {
            g = g.allow_failures();
        }
        g.terminal = self.interactive;
        g.exact_name = true;
        g.vm = "l1".into();
        g.cpus = l1_cpus();
        g.also_expect = self.l2_expected();
        g.required_lines = vec!["CORDON-SCRIPT-DONE rc=0".into()];
        // A user at the terminal may think for as long as they like.
        g.silence_limit = if self.interactive {
            None
        } else {
            silence_limit()
        };
        let mut r = g.spawn().and_then(|guest| guest.finish());
        for attempt in 1..NESTED_ATTEMPTS {
            let Some(stalled) = r.as_ref().err().and_then(|e| e.downcast_ref::<Stalled>()) else {
                break;
            };
            let kept = dir.join(format!("{name}.stalled-{attempt}.log"));
            let _ = std::fs::rename(dir.join(format!("{name}.log")), &kept);
            let _ = std::fs::rename(
                dir.join(format!("{name}.stall-regs.txt")),
                dir.join(format!("{name}.stall-regs-{attempt}.txt")),
            );
            eprintln!(
                "NESTED STALL: {name}: {stalled}; killed, booting L1 again (attempt {} of \
                 {NESTED_ATTEMPTS}; known nested-TCG stall, docs/VMM.md; console kept in {})",
                attempt + 1,
                kept.display()
            );
            r = g.spawn().and_then(|guest| guest.finish());
        }
        let _ = std::fs::remove_file(&l1_initrd);
        r
    }

    fn run_direct(&self, a: &GuestAssets, dir: &Path, name: &str) -> Result<Results> {
        let work = tempfile::tempdir()?;
        let w = work.path();
        std::fs::create_dir_all(w.join("bin"))?;
        for (dest, content, mode) in &self.files {
            let p = w.join(dest);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match content {
                Content::Path(src) => std::fs::copy(src, &p).map(|_| ())?,
                Content::Bytes(b) => std::fs::write(&p, b)?,
            }
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
        }
        if self.carry_qemu {
            tool("qemu-system-x86_64")?;
        }
        for b in &self.host_bins {
            let name = b.file_name().unwrap_or_default();
            std::fs::copy(b, w.join("bin").join(name))
                .with_context(|| format!("copying {}", b.display()))?;
        }
        let header = self.header(
            &w.display().to_string(),
            &a.kernel.display().to_string(),
            &a.initramfs.display().to_string(),
            false,
        )?;
        std::fs::write(w.join("run.sh"), format!("{header}{}", self.script_body()))?;
        let log = dir.join(format!("{name}.log"));
        let vmm_log = dir.join(format!("{name}.qemu.log"));
        std::fs::write(
            &vmm_log,
            b"(direct mode: the script's output is the console log)\n",
        )?;
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c").current_dir(w);
        if self.interactive {
            // The terminal sees the script; the log gets a copy for the results.
            drop(out);
            cmd.arg(format!(
                "{{ sh ./run.sh; echo \"CORDON-SCRIPT-DONE rc=$?\"; }} 2>&1 | tee '{}'",
                log.display()
            ))
            .stdin(Stdio::inherit())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        } else {
            cmd.arg("sh ./run.sh; echo \"CORDON-SCRIPT-DONE rc=$?\"")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
        }
        let child = cmd.spawn().context("starting the VMM script")?;
        let mut g = GuestRunner::tcg().timeout(self.timeout);
        if self.allow_failures {
            g = g.allow_failures();
        }
        g.vm = String::new();
        g.also_expect = self.l2_expected();
        g.required_lines = vec!["CORDON-SCRIPT-DONE rc=0".into()];
        g.running(child, log, vmm_log).finish()
    }
}

/// Adds a dynamically linked program as `dest` and its shared libraries (as `ldd` lists
/// them, at the same absolute paths) to L1.
fn add_host_binary(c: &mut Cpio, prog: &Path, dest: &str) -> Result<()> {
    let data = std::fs::read(prog).with_context(|| format!("reading {}", prog.display()))?;
    c.file(dest, 0o755, &data);
    let ldd = run(Command::new("ldd").arg(prog))?;
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let data = std::fs::read(lib).with_context(|| format!("reading {lib}"))?;
        c.file(lib, 0o755, &data);
    }
    Ok(())
}

/// Adds QEMU (the stand-in VMM), its shared libraries and the microvm firmware to L1.
fn add_qemu(c: &mut Cpio) -> Result<()> {
    let qemu = tool("qemu-system-x86_64")?;
    add_host_binary(c, &qemu, "bin/qemu-system-x86_64")?;
    for (src, dest) in [
        (
            "/usr/share/seabios/bios-microvm.bin",
            "usr/share/qemu/bios-microvm.bin",
        ),
        (
            "/usr/share/qemu/linuxboot_dma.bin",
            "usr/share/qemu/linuxboot_dma.bin",
        ),
    ] {
        let data = std::fs::read(src).with_context(|| {
            format!("reading {src} (install qemu-system-x86: bash scripts/setup)")
        })?;
        c.file(dest, 0o644, &data);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wrapper the nested header installs pins `cordon run` (and only it) to CPU 0.
    #[test]
    fn pin_wrapper_runs_cordon_run_on_cpu_0_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("bin")).expect("bin");
        let fake = dir.path().join("bin/cordon");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"$1 $(grep Cpus_allowed_list /proc/self/status | cut -f2)\"\n",
        )
        .expect("fake cordon");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let script = format!(
            "{}cordon run --kernel x\ncordon devices --rng vhost=/x\n",
            PIN_VMM.replace("__DIR__", &d)
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("sh");
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.first(), Some(&"run 0"), "{text}");
        let all = std::fs::read_to_string("/proc/self/status")
            .expect("status")
            .lines()
            .find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_string())
            })
            .expect("Cpus_allowed_list");
        assert_eq!(
            lines.get(1),
            Some(&format!("devices {all}").as_str()),
            "{text}"
        );
    }
}
