//! Helpers shared by the integration tests: run code in a forked child under a filter.
#![allow(dead_code)]

use cordon_seccomp::jail::ChildExit;
use cordon_seccomp::BpfProgram;

/// Forks; the child installs `prog` (exit 100 on failure), runs `f`, exits with its value.
pub fn run_filtered(prog: &BpfProgram, f: impl FnOnce() -> i32) -> ChildExit {
    // SAFETY: the child only runs the closure and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = match cordon_seccomp::install(prog) {
            Ok(()) => f(),
            Err(_) => 100,
        };
        // SAFETY: leave the forked copy without unwinding.
        unsafe { libc::_exit(code) }
    }
    wait(pid)
}

/// Waits for `pid`.
pub fn wait(pid: libc::pid_t) -> ChildExit {
    let mut st = 0;
    // SAFETY: valid out-parameter.
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    assert_eq!(r, pid, "waitpid");
    if libc::WIFSIGNALED(st) {
        ChildExit::Signaled(libc::WTERMSIG(st))
    } else {
        ChildExit::Exited(libc::WEXITSTATUS(st))
    }
}

/// Raw syscall returning -errno on failure.
pub fn sys(nr: libc::c_long, a: [u64; 6]) -> i64 {
    // SAFETY: tests call syscalls with arguments that do not corrupt the child's memory.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        r
    }
}
