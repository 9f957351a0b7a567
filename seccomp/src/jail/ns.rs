//! Namespaces: user (when not root), mount, PID, IPC, UTS and optionally network.

use super::JailError;
use std::io::Write;

fn write_file(path: &str, data: &str) -> Result<(), JailError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(data.as_bytes()))
        .map_err(|e| JailError::new(format!("write {path}"), e))
}

/// Whether the effective capability set holds CAP_SYS_ADMIN (needed to unshare mount and
/// PID namespaces without a user namespace). Read from `/proc/self/status`.
fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Unshares every namespace of the jail. Without root or without CAP_SYS_ADMIN (root in a
/// container with no capabilities), first enters a user namespace in which the caller is
/// mapped to root (so it may mount), with setgroups denied.
pub(super) fn unshare_all(net: bool) -> Result<(), JailError> {
    // SAFETY: getters without arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid != 0 || !has_cap_sys_admin() {
        // SAFETY: unshare with flag constants only.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
            return Err(JailError::last("unshare(CLONE_NEWUSER)"));
        }
        if uid != 0 {
            write_file("/proc/self/setgroups", "deny")?;
            write_file("/proc/self/uid_map", &format!("0 {uid} 1"))?;
            write_file("/proc/self/gid_map", &format!("0 {gid} 1"))?;
        }
        // Root without capabilities (a container) may not map uid 0 into the new namespace
        // (Linux >= 5.12 asks for CAP_SETFCAP): it stays unmapped, which is enough, since the
        // process already holds every capability inside the namespace it just created.
    }
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if net {
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare with flag constants only.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(JailError::last(
            "unshare(CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWIPC|CLONE_NEWUTS[|CLONE_NEWNET]) (the process must be single-threaded)",
        ));
    }
    Ok(())
}

/// Sets the hostname of the (new) UTS namespace.
pub(super) fn set_hostname(name: &str) -> Result<(), JailError> {
    // SAFETY: pointer and length describe `name`'s bytes.
    if unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) } != 0 {
        return Err(JailError::last("sethostname"));
    }
    Ok(())
}
