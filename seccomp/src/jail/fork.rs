//! `fork_jailed`: run a closure in a fresh jailed process that is PID 1 of its own PID
//! namespace.

use super::{mounts, ns, Jail, JailError};
use std::io;
use std::os::unix::io::RawFd;

/// How a jailed child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildExit {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal (e.g. `SIGSYS` from seccomp).
    Signaled(i32),
}

/// A running jailed child (the outer process of the pair; it mirrors the inner's exit).
#[derive(Debug)]
pub struct JailedChild {
    pid: libc::pid_t,
}

fn decode(status: libc::c_int) -> ChildExit {
    if libc::WIFSIGNALED(status) {
        ChildExit::Signaled(libc::WTERMSIG(status))
    } else {
        ChildExit::Exited(libc::WEXITSTATUS(status))
    }
}

fn wait_pid(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-parameter.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

impl JailedChild {
    /// Host PID of the child.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Waits for the child and returns how it ended.
    pub fn wait(self) -> io::Result<ChildExit> {
        wait_pid(self.pid).map(decode)
    }

    /// Sends SIGKILL to the child (its PID namespace dies with it).
    pub fn kill(&self) -> io::Result<()> {
        // SAFETY: plain kill(2) on our own child.
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Writes a setup error to the parent's pipe and exits.
fn fail(pipe: RawFd, e: &JailError) -> ! {
    let msg = e.to_string();
    // SAFETY: writes bytes of `msg` to an fd we own, then exits without unwinding.
    unsafe {
        libc::write(pipe, msg.as_ptr() as *const libc::c_void, msg.len());
        libc::_exit(125)
    }
}

/// Ends the outer process the way the inner one ended.
fn mirror(status: libc::c_int) -> ! {
    match decode(status) {
        ChildExit::Exited(c) => {
            // SAFETY: exit without running destructors of the forked copy.
            unsafe { libc::_exit(c) }
        }
        ChildExit::Signaled(sig) => {
            let nocore = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: reset the handler and re-raise the signal on ourselves; if it does not
            // kill us, exit with the shell convention.
            unsafe {
                libc::setrlimit(libc::RLIMIT_CORE, &nocore);
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
                libc::_exit(128 + sig)
            }
        }
    }
}

impl Jail {
    /// Forks a jailed child that runs `f` as PID 1 of a new PID namespace and exits with its
    /// return value. Returns once the jail is set up (setup errors are returned here), while
    /// the closure may still run. Call from a process whose other threads hold no locks the
    /// closure needs (fork copies only the calling thread).
    pub fn fork_jailed<F: FnOnce() -> i32>(&self, f: F) -> Result<JailedChild, JailError> {
        let plan = mounts::MountPlan::prepare(&self.binds, self.root_dir.as_deref())?;
        let mut p = [0 as RawFd; 2];
        // SAFETY: `p` is a valid out-array of two fds.
        if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(JailError::last("pipe2"));
        }
        let (rd, wr) = (p[0], p[1]);
        // SAFETY: fork; the child only runs jail setup and `f`, then _exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let e = JailError::last("fork");
            // SAFETY: closing our own pipe fds.
            unsafe {
                libc::close(rd);
                libc::close(wr);
            }
            return Err(e);
        }
        if pid == 0 {
            // SAFETY: closing the read end in the child; die with the parent.
            unsafe {
                libc::close(rd);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            }
            if let Err(e) = ns::unshare_all(self.net_ns)
                .and_then(|_| ns::set_hostname(&self.hostname))
                .and_then(|_| plan.apply())
            {
                fail(wr, &e);
            }
            // SAFETY: second fork so the inner child is PID 1 of the new PID namespace.
            let inner = unsafe { libc::fork() };
            if inner < 0 {
                fail(wr, &JailError::last("fork (inner)"));
            }
            if inner == 0 {
                // SAFETY: die with the outer process.
                unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
                let r = self
                    .apply_rlimits()
                    .and_then(|_| {
                        let mut keep: Vec<RawFd> = vec![0, 1, 2, wr];
                        keep.extend_from_slice(&self.keep_fds);
                        super::close_fds_except(&keep)
                    })
                    .and_then(|_| super::caps::drop_all());
                if let Err(e) = r {
                    fail(wr, &e);
                }
                // SAFETY: the setup is complete: close the report pipe so the parent returns.
                unsafe { libc::close(wr) };
                if let Err(e) = self.install_policy() {
                    let msg = format!("{e}\n");
                    // SAFETY: report on stderr, then exit without unwinding.
                    unsafe {
                        libc::write(2, msg.as_ptr() as *const libc::c_void, msg.len());
                        libc::_exit(125)
                    }
                }
                let code = f();
                // SAFETY: exit the forked copy without running the parent's destructors.
                unsafe { libc::_exit(code) }
            }
            // The outer process only waits: it keeps stderr and nothing else (in particular no
            // copy of other threads' report pipes inherited by this fork).
            let _ = super::close_fds_except(&[2]);
            match wait_pid(inner) {
                Ok(st) => mirror(st),
                // SAFETY: exit without unwinding.
                Err(_) => unsafe { libc::_exit(125) },
            }
        }
        // Parent.
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(wr) };
        let mut msg = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: reading into a valid buffer.
            let n = unsafe { libc::read(rd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n > 0 {
                msg.extend_from_slice(&buf[..n as usize]);
            } else if n == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        // SAFETY: closing our read end.
        unsafe { libc::close(rd) };
        let child = JailedChild { pid };
        if !msg.is_empty() {
            let _ = child.wait();
            return Err(JailError::new(
                "child setup",
                io::Error::other(String::from_utf8_lossy(&msg).into_owned()),
            ));
        }
        Ok(child)
    }
}
