//! Orderly exit on SIGINT/SIGTERM/SIGHUP: block them in every thread, wait for them in one.

use std::io;

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset/sigaddset.
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for sig in SIGNALS {
            libc::sigaddset(&mut s, sig);
        }
        s
    }
}

/// Blocks the termination signals in the calling thread, and so in every thread it creates.
pub fn block_termination_signals() -> io::Result<()> {
    let s = set();
    // SAFETY: pthread_sigmask with a valid set.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &s, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Spawns a thread that waits for a termination signal, runs `cleanup` and exits with 0.
/// [`block_termination_signals`] must have been called first.
pub fn exit_on_termination<F: FnOnce() + Send + 'static>(
    name: String,
    cleanup: F,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let s = set();
            let mut sig: libc::c_int = 0;
            loop {
                // SAFETY: sigwait with a valid set and out-pointer.
                let rc = unsafe { libc::sigwait(&s, &mut sig) };
                if rc == 0 {
                    break;
                }
            }
            log::info!("{name}: signal {sig}, exiting");
            cleanup();
            crate::terminal::restore();
            std::process::exit(0);
        })?;
    Ok(())
}

/// Waits for a jailed child, stopping it (SIGKILL: it keeps no state worth flushing, and its
/// waiting outer process has the termination signals blocked) when this process gets
/// SIGINT/SIGTERM/SIGHUP. Call [`block_termination_signals`] before forking the child. A
/// child stopped that way, or exiting 0, is a clean stop; anything else is an error.
pub fn wait_forwarding(name: &str, child: cordon_seccomp::jail::JailedChild) -> Result<(), String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let pid = child.pid();
    let forwarded = Arc::new(AtomicBool::new(false));
    {
        let fwd = forwarded.clone();
        let _ = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let s = set();
                let mut sig: libc::c_int = 0;
                loop {
                    // SAFETY: sigwait with a valid set and out-pointer.
                    if unsafe { libc::sigwait(&s, &mut sig) } == 0 {
                        fwd.store(true, Ordering::SeqCst);
                        // SAFETY: signalling our own child.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            });
    }
    match child.wait() {
        Ok(cordon_seccomp::jail::ChildExit::Exited(0)) => Ok(()),
        Ok(cordon_seccomp::jail::ChildExit::Signaled(_)) if forwarded.load(Ordering::SeqCst) => {
            log::info!("{name}: stopped");
            Ok(())
        }
        Ok(cordon_seccomp::jail::ChildExit::Exited(c)) => {
            Err(format!("jailed process exited with status {c}"))
        }
        Ok(cordon_seccomp::jail::ChildExit::Signaled(s)) => Err(format!(
            "jailed process killed by signal {s}{}",
            if s == libc::SIGSYS {
                " (SIGSYS: a syscall outside its seccomp policy)"
            } else {
                ""
            }
        )),
        Err(e) => Err(format!("waiting for the jailed process: {e}")),
    }
}

/// Blocks until a termination signal arrives (they must be blocked); returns it.
pub fn wait_termination_signal() -> libc::c_int {
    let s = set();
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: sigwait with a valid set and out-pointer.
        if unsafe { libc::sigwait(&s, &mut sig) } == 0 {
            return sig;
        }
    }
}
