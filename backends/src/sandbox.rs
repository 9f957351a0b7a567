//! The jail every backend enters after opening its socket and resources.
//!
//! The jail is `cordon_seccomp::Jail`: private mount, PID, IPC, UTS and network namespaces;
//! an empty read-only tmpfs root (or the `pivot-root=DIR` directory, read-only) holding the bind
//! mounts the device declared; every fd
//! closed but the kept ones; no capabilities; `no_new_privs`; and the device's seccomp policy
//! `<dev>_device_vhost_user.policy`. Must be entered while the process is single-threaded.

use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::Args;

/// A host path made visible inside the jail at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path (file or directory).
    pub path: PathBuf,
    /// Whether the jailed process may write through it.
    pub writable: bool,
}

/// crosvm-compatible sandbox flags of the standalone `<kind>-device` binaries.
#[derive(Args, Debug, Clone, Default)]
pub struct SandboxArgs {
    /// Run without the jail (no namespaces, no seccomp filter). For debugging only.
    #[arg(long)]
    pub disable_sandbox: bool,
    /// Directory holding `<dev>_device_vhost_user.policy` files (default: the built-in policies).
    #[arg(long, value_name = "DIR")]
    pub seccomp_policy_dir: Option<PathBuf>,
    /// Log syscalls the policy would deny instead of killing the process (audit mode).
    #[arg(long)]
    pub seccomp_log_failures: bool,
}

/// How to jail: shared by the standalone binaries and `cordon devices --jail ...`.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// No jail at all.
    pub disabled: bool,
    /// crosvm's `pivot-root=DIR`: the jail's root is this host directory (read-only) instead
    /// of a private, empty tmpfs.
    pub pivot_root: Option<PathBuf>,
    /// Where to find policy files (default: the policies built into the binary).
    pub policy_dir: Option<PathBuf>,
    /// Seccomp audit mode.
    pub log_failures: bool,
}

impl From<&SandboxArgs> for SandboxConfig {
    fn from(a: &SandboxArgs) -> Self {
        SandboxConfig {
            disabled: a.disable_sandbox,
            pivot_root: None,
            policy_dir: a.seccomp_policy_dir.clone(),
            log_failures: a.seccomp_log_failures,
        }
    }
}

/// What one device needs inside its jail.
#[derive(Debug, Clone)]
pub struct JailPlan {
    /// Sandbox settings.
    pub config: SandboxConfig,
    /// Policy base name, e.g. `rng_device_vhost_user`.
    pub policy: String,
    /// Host paths to make visible.
    pub mounts: Vec<BindMount>,
    /// Descriptors to keep open besides stdio and the serving loop's own; `None` keeps every
    /// descriptor open at jail time (standalone binaries, whose fds are all their own).
    pub keep_fds: Option<Vec<RawFd>>,
}

/// Error entering the jail.
#[derive(Debug, thiserror::Error)]
#[error("cannot enter the jail ({step}): {reason}")]
pub struct JailError {
    step: String,
    reason: String,
}

fn err(step: &str, reason: impl std::fmt::Display) -> JailError {
    JailError {
        step: step.to_string(),
        reason: reason.to_string(),
    }
}

/// Every open descriptor of this process (from /proc/self/fd).
pub fn open_fds() -> io::Result<Vec<RawFd>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd")? {
        if let Some(fd) = e?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        {
            v.push(fd);
        }
    }
    // Drop the descriptor read_dir itself used (closed by now).
    // SAFETY: F_GETFD only queries the descriptor flags.
    v.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    v.sort_unstable();
    Ok(v)
}

impl JailPlan {
    /// Loads the policy (audit mode: compiled from source with the `log` default action).
    fn load_policy(&self) -> Result<cordon_seccomp::BpfProgram, JailError> {
        use cordon_seccomp::{compile, parse_file, Action, Arch, CompileOptions};
        let what = format!("seccomp policy {}", self.policy);
        if !self.config.log_failures {
            return cordon_seccomp::load_policy(&self.policy, self.config.policy_dir.as_deref())
                .map_err(|e| err(&what, e));
        }
        let dir = self
            .config
            .policy_dir
            .clone()
            .unwrap_or_else(|| cordon_seccomp::source_policy_dir(Arch::native()));
        let path = dir.join(format!("{}.policy", self.policy));
        if !path.is_file() {
            return Err(err(
                &what,
                format!(
                    "--seccomp-log-failures compiles the policy source, and {} does not exist; pass --seccomp-policy-dir",
                    path.display()
                ),
            ));
        }
        let parsed = parse_file(&path, Arch::native()).map_err(|e| err(&what, e))?;
        let opts = CompileOptions {
            default_action: Action::Log,
        };
        compile(&parsed, &opts).map_err(|e| err(&what, e))
    }

    /// Builds the `cordon_seccomp::Jail` for this plan (policy loaded now, while host paths
    /// are visible). `extra_keep` are descriptors the serving loop itself needs. Run the
    /// device with `Jail::fork_jailed` (the jailed process is PID 1 of a new PID namespace,
    /// which lets it create threads).
    pub fn build(&self, extra_keep: &[RawFd]) -> Result<cordon_seccomp::Jail, JailError> {
        if let Some(dir) = &self.config.pivot_root {
            if !dir.is_dir() {
                return Err(err(
                    "pivot-root",
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        let prog = self.load_policy()?;
        let mut keep: Vec<RawFd> = match &self.keep_fds {
            Some(k) => k.clone(),
            None => open_fds().map_err(|e| err("list open fds", e))?,
        };
        keep.extend_from_slice(extra_keep);
        let mut jail = cordon_seccomp::Jail::new()
            .net_namespace(true)
            .keep_fds(&keep)
            .log_failures(self.config.log_failures)
            .policy(prog);
        if let Some(dir) = &self.config.pivot_root {
            jail = jail.pivot_root(dir);
        }
        for m in &self.mounts {
            jail = if m.writable {
                jail.bind_rw(&m.path)
            } else {
                jail.bind_ro(&m.path)
            };
        }
        log::info!(
            "jail: policy {}{}",
            self.policy,
            if self.config.log_failures {
                " (audit mode: denials are logged, not enforced)"
            } else {
                ""
            }
        );
        Ok(jail)
    }
}

impl JailError {
    /// Wraps an error of `cordon_seccomp`'s jail.
    pub fn from_seccomp(e: cordon_seccomp::jail::JailError) -> Self {
        err("jail", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_to_config() {
        let a = SandboxArgs {
            disable_sandbox: true,
            seccomp_policy_dir: Some("/p".into()),
            seccomp_log_failures: true,
        };
        let c = SandboxConfig::from(&a);
        assert!(c.disabled && c.log_failures);
        assert_eq!(c.policy_dir.as_deref(), Some(std::path::Path::new("/p")));
    }
}
