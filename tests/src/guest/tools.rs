//! Host tools the harness needs, found on PATH (plus the sbin directories), with an error
//! that names the command installing a missing one.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The command that installs everything the guest harness needs.
pub const INSTALL_HINT: &str = "bash scripts/setup   (or: apt-get install -t bookworm-backports \
qemu-system-x86 qemu-utils && apt-get install busybox-static cpio xz-utils kmod e2fsprogs)";

/// Debian package providing each tool.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "qemu-system-x86_64" => "qemu-system-x86 (from bookworm-backports)",
        "qemu-storage-daemon" | "qemu-img" => "qemu-utils (from bookworm-backports)",
        "depmod" | "modprobe" => "kmod",
        "xz" => "xz-utils",
        "busybox" => "busybox-static",
        "mkfs.ext4" | "debugfs" => "e2fsprogs",
        "apt-get" | "apt-cache" => "apt",
        "dpkg" => "dpkg",
        _ => "?",
    }
}

/// Finds `tool` on PATH, /usr/sbin or /sbin; fails with the install command otherwise.
pub fn tool(tool: &str) -> Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
    {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "guest harness: `{tool}` not found (Debian package {}). Install with: {INSTALL_HINT}",
        package_of(tool)
    )
}

/// Runs a command to completion; the error carries its output.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `path` is an ELF executable without a program interpreter (statically linked).
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let d = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if d.len() < 64 || &d[..4] != b"\x7fELF" || d[4] != 2 {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let u16_at = |o: usize| {
        d.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let phoff = d
        .get(32..40)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize)
        .unwrap_or(0);
    let (Some(phentsize), Some(phnum)) = (u16_at(54), u16_at(56)) else {
        bail!("{}: truncated ELF header", path.display());
    };
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        match d.get(o..o + 4) {
            Some(t) if u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == 3 => return Ok(false),
            Some(_) => {}
            None => bail!("{}: truncated program headers", path.display()),
        }
    }
    Ok(true)
}

/// An exclusive advisory lock on a file, held until dropped (serialises asset preparation
/// between concurrent test processes).
pub struct FileLock(std::fs::File);

impl FileLock {
    /// Blocks until the lock on `path` is held.
    pub fn acquire(path: &Path) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "flock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::unix::io::AsRawFd;
        // SAFETY: unlocking our own descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_install_command() {
        let e = tool("cordon-no-such-tool").unwrap_err().to_string();
        assert!(
            e.contains("cordon-no-such-tool") && e.contains("scripts/setup"),
            "{e}"
        );
        assert!(tool("sh").is_ok());
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(Path::new("/bin/sh")).unwrap());
        assert!(is_static_elf(Path::new("/etc/hostname")).is_err());
    }
}
