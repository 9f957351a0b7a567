//! The jail every backend enters after opening its socket and resources.
//!
//! A jail is: private mount, IPC, UTS and network namespaces; an empty read-only tmpfs as the
//! root (pivot_root) holding only the bind mounts the device declared; no capabilities;
//! `no_new_privs`; and the device's seccomp policy `<dev>_device_vhost_user.policy` (compiled
//! by `cordon-seccomp`). Must be entered while the process is still single-threaded.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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
    /// Empty directory used as the jail root's mount point (default `/var/empty`).
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
}

/// Error entering the jail.
#[derive(Debug, thiserror::Error)]
#[error("cannot enter the jail ({step}): {source}")]
pub struct JailError {
    step: String,
    #[source]
    source: io::Error,
}

fn step<T>(what: &str, r: io::Result<T>) -> Result<T, JailError> {
    r.map_err(|source| JailError {
        step: what.to_string(),
        source,
    })
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn mount(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = src.map(cstr).transpose()?;
    let dst = cstr(dst)?;
    let fstype = fstype.map(|s| CString::new(s).unwrap_or_default());
    let data = data.map(|s| CString::new(s).unwrap_or_default());
    // SAFETY: all pointers are valid NUL-terminated strings or null.
    check(unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            dst.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr() as *const libc::c_void),
        )
    })
}

impl JailPlan {
    /// Enters the jail. Call after every resource and the socket are open, before threads.
    pub fn enter(&self) -> Result<(), JailError> {
        if self.config.disabled {
            log::warn!("sandbox disabled: running without namespaces or seccomp");
            return Ok(());
        }
        self.enter_namespaces()?;
        // SAFETY: prctl with constant arguments.
        step(
            "no_new_privs",
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }),
        )?;
        drop_capabilities()?;
        crate::policy::install(&self.policy, &self.config).map_err(|e| JailError {
            step: format!("seccomp policy {}", self.policy),
            source: io::Error::other(e.to_string()),
        })?;
        log::info!("jailed with policy {}", self.policy);
        Ok(())
    }

    fn enter_namespaces(&self) -> Result<(), JailError> {
        let flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
        // SAFETY: unshare only changes this process's namespaces.
        step("unshare", check(unsafe { libc::unshare(flags) }))?;
        step(
            "make mounts private",
            mount(
                None,
                Path::new("/"),
                None,
                libc::MS_REC | libc::MS_PRIVATE,
                None,
            ),
        )?;
        let root = self
            .config
            .pivot_root
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/empty"));
        step("create pivot root", std::fs::create_dir_all(&root))?;
        step(
            "mount jail root",
            mount(
                Some(Path::new("tmpfs")),
                &root,
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                Some("size=64k,mode=0755"),
            ),
        )?;
        for m in &self.mounts {
            self.bind(&root, m)?;
        }
        let old = root.join(".old_root");
        step("create old root", std::fs::create_dir_all(&old))?;
        let (r, o) = (
            step("root path", cstr(&root))?,
            step("old root path", cstr(&old))?,
        );
        // SAFETY: pivot_root with two valid paths.
        step(
            "pivot_root",
            check(unsafe {
                libc::syscall(libc::SYS_pivot_root, r.as_ptr(), o.as_ptr()) as libc::c_int
            }),
        )?;
        step("chdir /", std::env::set_current_dir("/"))?;
        let old_in = cstr(Path::new("/.old_root")).map_err(|e| JailError {
            step: "old root".into(),
            source: e,
        })?;
        // SAFETY: detaching the old root, a valid path.
        step(
            "detach old root",
            check(unsafe { libc::umount2(old_in.as_ptr(), libc::MNT_DETACH) }),
        )?;
        let _ = std::fs::remove_dir("/.old_root");
        step(
            "read-only root",
            mount(
                None,
                Path::new("/"),
                None,
                libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC,
                None,
            ),
        )?;
        Ok(())
    }

    fn bind(&self, root: &Path, m: &BindMount) -> Result<(), JailError> {
        let rel = m.path.strip_prefix("/").unwrap_or(&m.path);
        let dst = root.join(rel);
        let is_dir = step(
            &format!("stat {}", m.path.display()),
            std::fs::metadata(&m.path),
        )?
        .is_dir();
        if is_dir {
            step("mkdir mount point", std::fs::create_dir_all(&dst))?;
        } else {
            if let Some(parent) = dst.parent() {
                step("mkdir mount point", std::fs::create_dir_all(parent))?;
            }
            step(
                "create mount point",
                std::fs::File::create(&dst).map(|_| ()),
            )?;
        }
        let what = format!("bind {}", m.path.display());
        step(
            &what,
            mount(
                Some(&m.path),
                &dst,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            ),
        )?;
        if !m.writable {
            step(
                &what,
                mount(
                    None,
                    &dst,
                    None,
                    libc::MS_REMOUNT
                        | libc::MS_BIND
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV,
                    None,
                ),
            )?;
        }
        Ok(())
    }
}

fn drop_capabilities() -> Result<(), JailError> {
    // Drop the bounding set first (needs CAP_SETPCAP, which we still have).
    for cap in 0..=63 {
        // SAFETY: prctl with integer arguments; EINVAL past the last capability is expected.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 {
            break;
        }
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [Data::default(); 2];
    // SAFETY: capset with a v3 header and two zeroed data structs, as the ABI requires.
    step(
        "drop capabilities",
        check(unsafe {
            libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) as libc::c_int
        }),
    )
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
        assert_eq!(c.policy_dir.as_deref(), Some(Path::new("/p")));
    }
}
