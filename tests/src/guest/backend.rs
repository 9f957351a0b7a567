//! Backend processes attached to guests: Cordon's own `<kind>-device` binaries (jailed, as
//! shipped) or peers, started on a socket and killed when dropped.

use super::assets::{target_dir, workspace_root};
use super::console::{log_name, logs_dir, read_log, tail};
use super::tools::run;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Path of a workspace binary in the release target dir, built first (`cargo build --release
/// -p PACKAGE --bin BIN`; a no-op when `cargo test --workspace --release` already built it).
pub fn cordon_bin(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILD: Mutex<()> = Mutex::new(());
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(["build", "--release", "-p", package, "--bin", bin])
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml")))
    .with_context(|| format!("building {bin}"))?;
    let p = target_dir().join("release").join(bin);
    if !p.is_file() {
        bail!("{} missing after building it", p.display());
    }
    Ok(p)
}

/// A backend process serving one vhost-user socket; its stderr goes to
/// `target/guest-logs/<name>.<label>.log`.
pub struct BackendProcess {
    child: Child,
    /// The vhost-user socket it serves.
    pub socket: PathBuf,
    /// Its log file (stderr).
    pub log: PathBuf,
}

impl BackendProcess {
    /// Starts `cmd` and waits until `socket` exists (the backend listens).
    pub fn start(mut cmd: Command, socket: &Path, label: &str) -> Result<Self> {
        let dir = logs_dir();
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!(
            "{}.log",
            log_name(Some(&format!("{}.{label}", test_name())))
        ));
        let f = std::fs::File::create(&log)?;
        let _ = std::fs::remove_file(socket);
        cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let start = Instant::now();
        while !socket.exists() {
            if let Some(s) = child.try_wait()? {
                bail!(
                    "{label} backend exited ({s}) before listening:\n{}",
                    tail(&read_log(&log))
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                bail!(
                    "{label} backend did not create {} in 30 s",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(BackendProcess {
            child,
            socket: socket.to_path_buf(),
            log,
        })
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process actually serving the device: Cordon's backends run it jailed as a
    /// descendant (`<kind>-device` waits outside the jail, the device is PID 1 of its own PID
    /// namespace); this follows the single-child chain down to the leaf.
    pub fn device_pid(&self) -> u32 {
        leaf_descendant(self.pid())
    }

    /// What /proc says about the confinement of the device process.
    pub fn jail_facts(&self) -> Result<JailFacts> {
        JailFacts::of(self.device_pid())
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        read_log(&self.log)
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn test_name() -> String {
    std::thread::current().name().unwrap_or("guest").to_string()
}

/// Confinement of a process, read from /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailFacts {
    /// `NoNewPrivs` is set.
    pub no_new_privs: bool,
    /// `Seccomp` mode (0 none, 1 strict, 2 filter).
    pub seccomp: u32,
    /// Effective capabilities.
    pub cap_eff: u64,
    /// It lives in another mount namespace than the test.
    pub own_mount_ns: bool,
    /// It lives in another network namespace than the test.
    pub own_net_ns: bool,
}

impl JailFacts {
    /// Reads the facts of process `pid`.
    pub fn of(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let ns = |kind: &str| -> Result<bool> {
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))?;
            let ours = std::fs::read_link(format!("/proc/self/ns/{kind}"))?;
            Ok(theirs != ours)
        };
        Ok(JailFacts {
            no_new_privs: field("NoNewPrivs:") == "1",
            seccomp: field("Seccomp:").parse().unwrap_or(0),
            cap_eff: u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(u64::MAX),
            own_mount_ns: ns("mnt")?,
            own_net_ns: ns("net")?,
        })
    }
}

/// Follows the single-child chain below `pid` down to its leaf: the jailed device process
/// under a `<kind>-device` supervisor, or under a container's init.
pub fn leaf_descendant(mut pid: u32) -> u32 {
    loop {
        let kids: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        match kids.as_slice() {
            [only] => pid = *only,
            _ => return pid,
        }
    }
}
