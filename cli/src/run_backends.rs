//! Backends that `cordon run` starts itself (`--block`, `--rng`, `--serial`, `--console`,
//! `--net`, `--vsock`): crosvm's user experience on Cordon's architecture.
//!
//! They are not forked here: `cordon run` re-executes itself as one `cordon devices`
//! supervisor (same binary, same key=value syntax, one jailed child per device), with each
//! device listening on a socket in a private directory. The VMM connects to those sockets
//! like to any `--vhost-user` backend. When the VM ends, the supervisor gets SIGTERM (it
//! kills and reaps its jailed children and removes their sockets) and is reaped; if the VMM
//! dies first, the supervisor gets SIGTERM from the kernel (parent-death signal).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cordon_backends::KeyValues;
use cordon_frontend::pci::vhost::DeviceKind;

/// One device to start: the `cordon devices` flag, its options, and the VMM's device type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The `cordon run` flag it came from (for errors), e.g. `--block`.
    pub flag: &'static str,
    /// The `cordon devices` device name: block, rng, serial, net, vsock.
    pub device: &'static str,
    /// Options in `cordon devices` syntax, without `vhost=`.
    pub options: String,
    /// The virtio device the VMM offers the guest.
    pub kind: DeviceKind,
}

impl Request {
    /// Checks the option list's syntax and that it leaves `vhost=` to `cordon run`.
    pub fn new(
        flag: &'static str,
        device: &'static str,
        options: &str,
        kind: DeviceKind,
    ) -> Result<Self> {
        if !options.is_empty() {
            let mut kv = KeyValues::parse(device, options)
                .map_err(|e| anyhow::anyhow!("{flag} {options}: {e}"))?;
            if kv.take_raw("vhost").is_some() {
                bail!(
                    "{flag} {options}: vhost= is chosen by cordon run; to attach a backend you started, use --vhost-user type={},socket=PATH",
                    kind.name()
                );
            }
        }
        Ok(Self {
            flag,
            device,
            options: options.to_string(),
            kind,
        })
    }
}

/// The running supervisor and the sockets of its devices.
pub struct StartedBackends {
    child: Option<Child>,
    stderr: Option<StderrRelay>,
    dir: PathBuf,
    /// (device type, socket) per request, in request order.
    pub sockets: Vec<(DeviceKind, PathBuf)>,
}

/// A fresh private directory (mode 0700; creation fails rather than reuse a path).
fn private_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "cordon-run-{}-{:08x}",
            std::process::id(),
            nanos.wrapping_add(attempt)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!(
        "cannot create a private socket directory in {}",
        base.display()
    )
}

/// Starts one `cordon devices` supervisor for `requests` and waits (at most `timeout`)
/// until every device's socket exists. `sandbox` false passes `--disable-sandbox`.
pub fn start(requests: &[Request], sandbox: bool, timeout: Duration) -> Result<StartedBackends> {
    let exe = std::env::current_exe().context("finding the cordon binary to start backends")?;
    let dir = private_dir()?;
    let mut cmd = Command::new(&exe);
    cmd.arg("devices");
    if !sandbox {
        cmd.arg("--disable-sandbox");
    }
    let mut sockets = Vec::new();
    let mut counts = std::collections::HashMap::new();
    let mut wants_stdin = false;
    for r in requests {
        let n = counts.entry(r.device).or_insert(0u32);
        let sock = dir.join(format!("{}-{n}.sock", r.device));
        *n += 1;
        let mut opts = format!("vhost={}", sock.display());
        if !r.options.is_empty() {
            opts.push(',');
            opts.push_str(&r.options);
        }
        wants_stdin |= r.device == "serial" && r.options.split(',').any(|o| o == "stdin");
        cmd.arg(format!("--{}", r.device)).arg(opts);
        sockets.push((r.kind, sock));
    }
    // Output (a serial device with type=stdout) goes where ours goes, and so do the
    // backends' logs (relayed, so a start-up error becomes part of our one error line);
    // stdin only to a serial device that asked for it.
    cmd.stderr(Stdio::piped());
    cmd.stdin(if wants_stdin {
        Stdio::inherit()
    } else {
        Stdio::null()
    });
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory; the
    // supervisor gets SIGTERM (and stops its devices) if the VMM dies without cleaning up.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} devices", exe.display()))?;
    let stderr = child.stderr.take().map(StderrRelay::start);
    log::debug!(
        "started {} backend(s) under supervisor pid {} (sockets in {})",
        requests.len(),
        child.id(),
        dir.display()
    );
    let mut started = StartedBackends {
        child: Some(child),
        stderr,
        dir,
        sockets,
    };
    started.wait_ready(requests, timeout)?;
    Ok(started)
}

impl StartedBackends {
    fn wait_ready(&mut self, requests: &[Request], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.sockets.iter().all(|(_, s)| is_socket(s)) {
                if let Some(r) = &self.stderr {
                    r.started();
                }
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    let flags: Vec<String> = requests
                        .iter()
                        .map(|r| format!("{} {}", r.flag, r.options).trim_end().to_string())
                        .collect();
                    let why = self
                        .stderr
                        .take()
                        .and_then(StderrRelay::finish)
                        .unwrap_or_else(|| format!("backend supervisor ended ({status})"));
                    bail!("{}: {why}", flags.join(", "));
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the backends did not listen within {} s (--backend-timeout)",
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the supervisor (SIGTERM: it kills and reaps its devices and removes their
    /// sockets), reaps it and removes the socket directory. Called on drop too.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id() as libc::pid_t;
            // SAFETY: signals our own child, which has not been reaped yet (so the pid
            // cannot have been reused).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            match c.wait() {
                Ok(s) => log::info!("backend supervisor {pid} ended ({s})"),
                Err(e) => log::warn!("backend supervisor {pid}: {e}"),
            }
        }
        for (_, s) in &self.sockets {
            remove(s, 0);
        }
        remove(&self.dir, libc::AT_REMOVEDIR);
    }
}

impl Drop for StartedBackends {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies the supervisor's stderr to ours line by line. Until the devices listen, lines are
/// held back: on success they are printed, on failure only the `error:` line is kept (it
/// becomes part of `cordon run`'s one error line).
struct StderrRelay {
    state: Arc<Mutex<RelayState>>,
    thread: JoinHandle<()>,
}

#[derive(Default)]
struct RelayState {
    started: bool,
    held: Vec<String>,
    error: Option<String>,
}

fn locked(m: &Mutex<RelayState>) -> std::sync::MutexGuard<'_, RelayState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StderrRelay {
    fn start(from: ChildStderr) -> Self {
        let state = Arc::new(Mutex::new(RelayState::default()));
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            for line in BufReader::new(from).lines() {
                let Ok(line) = line else { break };
                let mut g = locked(&st);
                if g.started {
                    drop(g);
                    let _ = writeln!(std::io::stderr(), "{line}");
                } else if let Some((_, msg)) = line.split_once("error: ") {
                    g.error = Some(msg.to_string());
                } else {
                    g.held.push(line);
                }
            }
        });
        Self { state, thread }
    }

    /// The devices listen: print what was held back, relay from now on.
    fn started(&self) {
        let mut g = locked(&self.state);
        let mut err = std::io::stderr().lock();
        for l in g.held.drain(..) {
            let _ = writeln!(err, "{l}");
        }
        if let Some(e) = g.error.take() {
            let _ = writeln!(err, "error: {e}");
        }
        g.started = true;
    }

    /// Waits for the (exited) supervisor's last words; returns its error line, if any.
    fn finish(self) -> Option<String> {
        let _ = self.thread.join();
        locked(&self.state).error.take()
    }
}

fn is_socket(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

/// unlinkat(2): what the VMM's seccomp policy allows after setup (not rmdir(2)).
fn remove(p: &Path, flags: libc::c_int) {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return;
    };
    // SAFETY: c is a valid NUL-terminated path; unlinkat only reads it.
    unsafe { libc::unlinkat(libc::AT_FDCWD, c.as_ptr(), flags) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_reject_vhost_and_bad_syntax() {
        let r = Request::new("--block", "block", "path=/tmp/d.img,ro", DeviceKind::Block).unwrap();
        assert_eq!(r.options, "path=/tmp/d.img,ro");
        let e = Request::new("--block", "block", "path=x,vhost=/s", DeviceKind::Block)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--vhost-user type=block"), "{e}");
        let e = Request::new("--net", "net", "tap-name=\"t0", DeviceKind::Net)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--net "), "{e}");
        assert!(Request::new("--rng", "rng", "", DeviceKind::Rng).is_ok());
    }
}
