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

/// Unshares every namespace of the jail. Without root, first enters a user namespace in
/// which the caller is mapped to root (so it may mount), with setgroups denied.
pub(super) fn unshare_all(net: bool) -> Result<(), JailError> {
    // SAFETY: getters without arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid != 0 {
        // SAFETY: unshare with flag constants only.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
            return Err(JailError::last("unshare(CLONE_NEWUSER)"));
        }
        write_file("/proc/self/setgroups", "deny")?;
        write_file("/proc/self/uid_map", &format!("0 {uid} 1"))?;
        write_file("/proc/self/gid_map", &format!("0 {gid} 1"))?;
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
