//! Installs a compiled filter on the calling process (all threads).

use crate::bpf::{BpfProgram, SockFilter};
use std::io;

const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_TSYNC: libc::c_ulong = 1;
const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 2;

/// Sets `PR_SET_NO_NEW_PRIVS` (required to install a filter without CAP_SYS_ADMIN).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets no_new_privs, then installs `prog` with `seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)` so
/// every thread of the process gets it. Filters stack: an installed filter cannot be removed.
pub fn install(prog: &BpfProgram) -> io::Result<()> {
    install_with(prog, false)
}

/// Like [`install`]; with `log_denied` the kernel also logs every non-allow verdict
/// (`SECCOMP_FILTER_FLAG_LOG`, visible in the kernel/audit log).
pub fn install_with(prog: &BpfProgram, log_denied: bool) -> io::Result<()> {
    if prog.is_empty() || prog.len() > u16::MAX as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "seccomp program is empty or too long",
        ));
    }
    set_no_new_privs()?;
    let insns: &[SockFilter] = prog.instructions();
    let fprog = libc::sock_fprog {
        len: insns.len() as u16,
        // The kernel only reads the filter; the cast to *mut is required by the C type.
        filter: insns.as_ptr() as *mut libc::sock_filter,
    };
    let mut flags = SECCOMP_FILTER_FLAG_TSYNC;
    if log_denied {
        flags |= SECCOMP_FILTER_FLAG_LOG;
    }
    // SAFETY: `fprog` points to `insns`, a valid array of `struct sock_filter` (same repr(C)
    // layout) that outlives the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if r > 0 {
        return Err(io::Error::other(format!(
            "seccomp TSYNC failed: thread {r} cannot be synchronized"
        )));
    }
    Ok(())
}
