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
            std::process::exit(0);
        })?;
    Ok(())
}
