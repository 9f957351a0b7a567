//! The jail: a Rust equivalent of the minijail features crosvm uses for device processes.
//!
//! ```no_run
//! use cordon_seccomp::{embedded, Jail};
//! let jail = Jail::new()
//!     .bind_rw("/run/cordon/rng.sock")          // what the device needs, nothing else
//!     .keep_fds(&[3])                           // fds opened before jailing
//!     .net_namespace(true)                      // empty network namespace
//!     .policy(embedded("rng_device_vhost_user").expect("embedded policy"));
//! let child = jail.fork_jailed(|| 0).expect("jailed child");   // PID namespace takes effect
//! let status = child.wait().expect("wait");
//! ```
//!
//! [`Jail::enter`] jails the *calling* process: new user (when not root), mount, IPC, UTS,
//! PID and (unless disabled) network namespaces; pivot_root into an empty read-only tmpfs (or
//! the read-only [`Jail::pivot_root`] directory) holding the declared bind mounts; rlimits; every fd but stdio and the kept ones
//! closed; all capabilities dropped; no_new_privs; the seccomp filter last. The caller must be
//! single-threaded (the kernel refuses to unshare a mount namespace of a threaded process).
//! A new PID namespace only applies to processes forked afterwards, so `enter` leaves the
//! caller in the old one; [`Jail::fork_jailed`] forks, sets up the namespaces in the child,
//! forks again so the closure runs as PID 1 of the new namespace, and reports setup errors
//! to the parent.

mod caps;
mod fork;
mod mounts;
mod ns;

pub use fork::{ChildExit, JailedChild};

use crate::bpf::BpfProgram;
use std::fmt;
use std::io;
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};

/// A bind mount into the jail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub src: PathBuf,
    /// Path inside the jail (absolute).
    pub dst: PathBuf,
    /// Read-write when true, read-only otherwise.
    pub writable: bool,
}

/// A resource limit to set inside the jail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_*` resource.
    pub resource: libc::__rlimit_resource_t,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit.
    pub hard: u64,
}

/// Builder and description of a jail.
#[derive(Clone, Debug)]
pub struct Jail {
    binds: Vec<Bind>,
    root_dir: Option<PathBuf>,
    keep_fds: Vec<RawFd>,
    net_ns: bool,
    policy: Option<BpfProgram>,
    log_failures: bool,
    rlimits: Vec<Rlimit>,
    hostname: String,
}

impl Default for Jail {
    fn default() -> Self {
        Self::new()
    }
}

/// A jail setup step that failed.
#[derive(Debug)]
pub struct JailError {
    /// What was being done.
    pub step: String,
    /// The OS error.
    pub source: io::Error,
}

impl JailError {
    pub(crate) fn new(step: impl Into<String>, source: io::Error) -> Self {
        JailError {
            step: step.into(),
            source,
        }
    }
    pub(crate) fn last(step: impl Into<String>) -> Self {
        Self::new(step, io::Error::last_os_error())
    }
}

impl fmt::Display for JailError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "jail: {}: {}", self.step, self.source)
    }
}

impl std::error::Error for JailError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl Jail {
    /// A jail with no bind mounts, a new network namespace, no seccomp filter,
    /// `RLIMIT_CORE` 0, stdio kept.
    pub fn new() -> Self {
        Jail {
            binds: Vec::new(),
            root_dir: None,
            keep_fds: Vec::new(),
            net_ns: true,
            policy: None,
            log_failures: false,
            rlimits: vec![Rlimit {
                resource: libc::RLIMIT_CORE,
                soft: 0,
                hard: 0,
            }],
            hostname: "cordon".to_string(),
        }
    }

    /// Makes host `path` visible read-only at the same path inside the jail.
    pub fn bind_ro(self, path: impl AsRef<Path>) -> Self {
        let p = path.as_ref().to_path_buf();
        self.bind(p.clone(), p, false)
    }

    /// Makes host `path` visible read-write at the same path inside the jail.
    pub fn bind_rw(self, path: impl AsRef<Path>) -> Self {
        let p = path.as_ref().to_path_buf();
        self.bind(p.clone(), p, true)
    }

    /// Makes host `src` visible at `dst` inside the jail.
    pub fn bind(mut self, src: impl AsRef<Path>, dst: impl AsRef<Path>, writable: bool) -> Self {
        self.binds.push(Bind {
            src: src.as_ref().to_path_buf(),
            dst: dst.as_ref().to_path_buf(),
            writable,
        });
        self
    }

    /// Use host directory `dir` (which must exist) as the jail's root, read-only, instead of an
    /// empty tmpfs: crosvm's `--jail pivot-root=DIR`, minijail's `-P DIR`. The jailed process
    /// sees `dir`'s content as `/` plus the bind mounts (whose missing mount points are created
    /// in `dir`), and nothing else of the host.
    pub fn pivot_root(mut self, dir: impl AsRef<Path>) -> Self {
        self.root_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// File descriptors (besides 0, 1, 2) that stay open in the jail.
    pub fn keep_fds(mut self, fds: &[RawFd]) -> Self {
        self.keep_fds.extend_from_slice(fds);
        self
    }

    /// `true` (default): new, empty network namespace. `false`: keep the host network
    /// (the net device needs its TAP).
    pub fn net_namespace(mut self, new_ns: bool) -> Self {
        self.net_ns = new_ns;
        self
    }

    /// The seccomp filter installed last.
    pub fn policy(mut self, prog: BpfProgram) -> Self {
        self.policy = Some(prog);
        self
    }

    /// Ask the kernel to log every syscall the filter denies (`SECCOMP_FILTER_FLAG_LOG`;
    /// see `dmesg` or the audit log). Use while writing policies.
    pub fn log_failures(mut self, on: bool) -> Self {
        self.log_failures = on;
        self
    }

    /// Sets a resource limit (replacing an earlier one for the same resource).
    pub fn rlimit(mut self, resource: libc::__rlimit_resource_t, soft: u64, hard: u64) -> Self {
        self.rlimits.retain(|r| r.resource != resource);
        self.rlimits.push(Rlimit {
            resource,
            soft,
            hard,
        });
        self
    }

    /// Hostname inside the new UTS namespace (default `cordon`).
    pub fn hostname(mut self, name: &str) -> Self {
        self.hostname = name.to_string();
        self
    }

    /// The declared bind mounts.
    pub fn binds(&self) -> &[Bind] {
        &self.binds
    }

    /// Jails the calling (single-threaded) process; see the module documentation.
    pub fn enter(&self) -> Result<(), JailError> {
        log::debug!(
            "entering jail: {} bind mounts, keep fds {:?}, new netns {}, seccomp {}",
            self.binds.len(),
            self.keep_fds,
            self.net_ns,
            self.policy.is_some()
        );
        let plan = mounts::MountPlan::prepare(&self.binds, self.root_dir.as_deref())?;
        ns::unshare_all(self.net_ns)?;
        ns::set_hostname(&self.hostname)?;
        plan.apply()?;
        self.finish_inside(&[])
    }

    /// Steps after the namespaces and mounts: rlimits, fds, caps, no_new_privs, seccomp.
    fn finish_inside(&self, extra_keep: &[RawFd]) -> Result<(), JailError> {
        self.apply_rlimits()?;
        let mut keep: Vec<RawFd> = vec![0, 1, 2];
        keep.extend_from_slice(&self.keep_fds);
        keep.extend_from_slice(extra_keep);
        close_fds_except(&keep)?;
        caps::drop_all()?;
        self.install_policy()
    }

    fn install_policy(&self) -> Result<(), JailError> {
        crate::install::set_no_new_privs()
            .map_err(|e| JailError::new("prctl(PR_SET_NO_NEW_PRIVS)", e))?;
        if let Some(p) = &self.policy {
            crate::install::install_with(p, self.log_failures)
                .map_err(|e| JailError::new("seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)", e))?;
        }
        Ok(())
    }

    fn apply_rlimits(&self) -> Result<(), JailError> {
        for r in &self.rlimits {
            let lim = libc::rlimit {
                rlim_cur: r.soft,
                rlim_max: r.hard,
            };
            // SAFETY: `lim` is a valid rlimit struct for the duration of the call.
            if unsafe { libc::setrlimit(r.resource, &lim) } != 0 {
                return Err(JailError::last(format!("setrlimit({})", r.resource)));
            }
        }
        Ok(())
    }
}

/// Closes every fd not in `keep` (close_range over the gaps).
fn close_fds_except(keep: &[RawFd]) -> Result<(), JailError> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter(|&&f| f >= 0)
        .map(|&f| f as u32)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut from: u32 = 0;
    for &k in keep.iter().chain(std::iter::once(&u32::MAX)) {
        if k > from {
            let to = k - 1;
            // SAFETY: close_range only closes descriptors; the kept ones are outside [from, to].
            let r = unsafe { libc::syscall(libc::SYS_close_range, from, to, 0) };
            if r != 0 {
                return Err(JailError::last("close_range"));
            }
        }
        if k == u32::MAX {
            break;
        }
        from = k + 1;
    }
    Ok(())
}
