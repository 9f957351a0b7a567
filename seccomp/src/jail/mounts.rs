//! The jail's filesystem: an empty tmpfs root (or, like minijail's `-P DIR`, a host directory
//! bound read-only as the root) holding the declared bind mounts.

use super::{Bind, JailError};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Bind mounts checked and converted before any namespace change.
pub(super) struct MountPlan {
    root: PathBuf,
    /// Host directory to use as the root instead of an empty tmpfs.
    root_dir: Option<PathBuf>,
    binds: Vec<(Bind, bool)>,
}

fn cstr(p: &Path) -> Result<CString, JailError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        JailError::new(
            format!("path {}", p.display()),
            io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"),
        )
    })
}

fn mount(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let s = src.map(cstr).transpose()?;
    let d = cstr(dst)?;
    let t = fstype.map(|t| CString::new(t).unwrap_or_default());
    let o = data.map(|t| CString::new(t).unwrap_or_default());
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null or a NUL-terminated string alive for the call.
    let r = unsafe {
        libc::mount(
            p(&s),
            d.as_ptr(),
            p(&t),
            flags,
            p(&o) as *const libc::c_void,
        )
    };
    if r != 0 {
        let what = match src {
            Some(s) => format!(
                "mount {} on {} (flags {flags:#x})",
                s.display(),
                dst.display()
            ),
            None => format!("mount {} (flags {flags:#x})", dst.display()),
        };
        return Err(JailError::last(what));
    }
    Ok(())
}

/// Mount flags that an unprivileged remount must keep (they are locked in a user namespace).
fn locked_flags(p: &Path) -> libc::c_ulong {
    let Ok(c) = cstr(p) else { return 0 };
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated, `st` is a valid out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let mut f = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            f |= ms;
        }
    }
    f
}

/// Where each jail's tmpfs is mounted (in its private mount namespace; the host only ever
/// sees an empty directory).
fn jail_root_dir() -> PathBuf {
    std::env::temp_dir().join(".cordon-jail-root")
}

impl MountPlan {
    /// Checks every bind source exists and every destination is absolute, and that
    /// `root_dir` (if any) is a directory.
    pub(super) fn prepare(binds: &[Bind], root_dir: Option<&Path>) -> Result<Self, JailError> {
        let root_dir = match root_dir {
            None => None,
            Some(d) => {
                let what = || format!("pivot root {}", d.display());
                let canon = d.canonicalize().map_err(|e| JailError::new(what(), e))?;
                if !canon.is_dir() {
                    return Err(JailError::new(
                        what(),
                        io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
                    ));
                }
                cstr(&canon)?;
                Some(canon)
            }
        };
        let mut out = Vec::new();
        for b in binds {
            let meta = std::fs::metadata(&b.src)
                .map_err(|e| JailError::new(format!("bind source {}", b.src.display()), e))?;
            if !b.dst.is_absolute() || b.dst.components().any(|c| c == Component::ParentDir) {
                return Err(JailError::new(
                    format!("bind destination {}", b.dst.display()),
                    io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "must be absolute, without '..'",
                    ),
                ));
            }
            cstr(&b.src)?;
            out.push((b.clone(), meta.is_dir()));
        }
        Ok(MountPlan {
            root: jail_root_dir(),
            root_dir,
            binds: out,
        })
    }

    /// In the new mount namespace: private propagation, tmpfs root (or the pivot root
    /// directory bound), bind mounts, read-only root, pivot_root, detach the old root.
    pub(super) fn apply(&self) -> Result<(), JailError> {
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_PRIVATE,
            None,
        )?;
        match std::fs::create_dir(&self.root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(JailError::new(format!("mkdir {}", self.root.display()), e)),
        }
        let staged = self.root_dir.is_none() && caller_unmapped();
        let root = match &self.root_dir {
            // The host directory becomes the root (a bind mount in this private namespace;
            // the host's view of it is untouched). Missing bind mount points are created in it,
            // as minijail does.
            Some(dir) => {
                mount(
                    Some(dir),
                    &self.root,
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                )?;
                self.root.clone()
            }
            // Root without capabilities (a container): the caller's uid is unmapped in the
            // user namespace it just created, and the kernel refuses to create inodes
            // (EOVERFLOW) on filesystems mounted inside that namespace, such as a fresh
            // tmpfs. The mount points are created instead in a directory of the outer
            // filesystem (where the uid is mapped), bound onto itself to become the root.
            None if staged => {
                let dir = self.staging_dir()?;
                mount(Some(&dir), &dir, None, libc::MS_BIND, None)?;
                dir
            }
            None => {
                mount(
                    Some(Path::new("tmpfs")),
                    &self.root,
                    Some("tmpfs"),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    Some("mode=0755,size=1m,nr_inodes=4096"),
                )?;
                self.root.clone()
            }
        };
        for (b, is_dir) in &self.binds {
            let rel = b.dst.strip_prefix("/").unwrap_or(&b.dst);
            let target = root.join(rel);
            let parent = target.parent().unwrap_or(&root);
            std::fs::create_dir_all(parent)
                .map_err(|e| JailError::new(format!("mkdir {}", parent.display()), e))?;
            let made = if *is_dir {
                std::fs::create_dir_all(&target)
            } else {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&target)
                    .map(|_| ())
            };
            made.map_err(|e| {
                JailError::new(format!("create mount point {}", target.display()), e)
            })?;
            mount(
                Some(&b.src),
                &target,
                None,
                libc::MS_BIND | libc::MS_REC,
                None,
            )?;
            if !b.writable {
                let flags = libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | locked_flags(&target);
                mount(None, &target, None, flags, None)?;
            }
        }
        // A host root directory or a staged root lives on an outer mount whose flags are
        // locked in this namespace.
        let locked = if self.root_dir.is_some() || staged {
            locked_flags(&root)
        } else {
            0
        };
        mount(
            None,
            &root,
            None,
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC
                | locked,
            None,
        )?;
        pivot(&root)
    }

    /// A fresh, empty directory under the jail root directory for a staged root. It stays
    /// behind (empty but for the mount points) when the jail ends; in a container it lives
    /// on the container's own `/tmp`.
    fn staging_dir(&self) -> Result<PathBuf, JailError> {
        let pid = std::process::id();
        for i in 0..1000 {
            let d = self.root.join(format!("{pid}-{i}"));
            match std::fs::create_dir(&d) {
                Ok(()) => return Ok(d),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(JailError::new(format!("mkdir {}", d.display()), e)),
            }
        }
        Err(JailError::new(
            format!("staging directory under {}", self.root.display()),
            io::Error::new(io::ErrorKind::AlreadyExists, "no free name"),
        ))
    }
}

/// Whether the calling process's uid has no mapping in its user namespace (root without
/// CAP_SETFCAP may not map uid 0 into a namespace it creates): `/proc/self/uid_map` is empty.
fn caller_unmapped() -> bool {
    std::fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| m.trim().is_empty())
}

fn pivot(root: &Path) -> Result<(), JailError> {
    let r = cstr(root)?;
    let dot = c".";
    let slash = c"/";
    // SAFETY: NUL-terminated paths alive for each call.
    unsafe {
        if libc::chdir(r.as_ptr()) != 0 {
            return Err(JailError::last(format!("chdir {}", root.display())));
        }
        if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) != 0 {
            return Err(JailError::last("pivot_root"));
        }
        if libc::umount2(dot.as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(JailError::last("umount old root"));
        }
        if libc::chdir(slash.as_ptr()) != 0 {
            return Err(JailError::last("chdir /"));
        }
    }
    Ok(())
}
