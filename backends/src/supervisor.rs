//! `cordon devices`: open every device in the parent, fork one jailed child per device,
//! supervise them.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::connection::{is_pci_address, Endpoint, RemoveOnDrop};
use crate::device::{DeviceKind, OpenedDevice};
use crate::kv::KeyValues;
use crate::sandbox::{open_fds, JailPlan, SandboxConfig};
use crate::serve::{set_process_name, ServeOptions};

/// One `--<kind> k=v,...` occurrence.
#[derive(Clone)]
pub struct DeviceRequest {
    /// Its kind.
    pub kind: &'static dyn DeviceKind,
    /// The raw option list.
    pub options: String,
}

/// Options of the whole `devices` run.
#[derive(Debug, Clone, Default)]
pub struct DevicesOptions {
    /// Sandbox settings shared by every child.
    pub sandbox: SandboxConfig,
    /// Control socket path (`-s`): answers `list` and `stop`.
    pub control_socket: Option<PathBuf>,
}

/// Parses crosvm's `--jail pivot-root=DIR,seccomp-policy-dir=DIR,seccomp-log-failures=BOOL`.
pub fn parse_jail(list: &str, into: &mut SandboxConfig) -> Result<(), crate::KvError> {
    let mut kv = KeyValues::parse("--jail", list)?;
    if let Some(p) = kv.take_str("pivot-root")? {
        into.pivot_root = Some(PathBuf::from(p));
    }
    if let Some(p) = kv.take_str("seccomp-policy-dir")? {
        into.policy_dir = Some(PathBuf::from(p));
    }
    if let Some(b) = kv.take_bool("seccomp-log-failures")? {
        into.log_failures = b;
    }
    kv.finish()
}

struct Prepared {
    name: String,
    opened: Box<dyn OpenedDevice>,
    endpoint: Endpoint,
    guard: Option<RemoveOnDrop>,
    fds: Vec<RawFd>,
}

struct Running {
    name: String,
    pid: libc::pid_t,
    jailed: bool,
    guard: Option<RemoveOnDrop>,
    done: bool,
}

/// Runs the devices until they all exit or a termination signal arrives; an error when a
/// device could not be started or one of them failed.
pub fn run_devices(requests: Vec<DeviceRequest>, opts: DevicesOptions) -> anyhow::Result<()> {
    if requests.is_empty() {
        anyhow::bail!("no device given; use e.g. --rng vhost=/tmp/rng.sock");
    }
    // 1. Parse and open everything before forking anything.
    let mut counters: std::collections::HashMap<&str, usize> = Default::default();
    let mut prepared = Vec::new();
    let mut socks: Vec<PathBuf> = Vec::new();
    for r in requests {
        let kind = r.kind.name();
        let n = counters.entry(kind).or_insert(0);
        let name = format!("{kind}-{n}");
        *n += 1;
        let mut kv = KeyValues::parse(kind, &r.options)?;
        let vhost = kv
            .require_str("vhost")
            .map_err(|e| anyhow::anyhow!("--{kind}: {e}"))?;
        if is_pci_address(&vhost) {
            anyhow::bail!(
                "--{kind} vhost={vhost}: a PCI address selects virtio-vhost-user (VVU), which is not supported yet; give a socket path"
            );
        }
        let sock = PathBuf::from(&vhost);
        if socks.contains(&sock) {
            anyhow::bail!("--{kind} vhost={vhost}: socket path used by two devices");
        }
        socks.push(sock.clone());
        let before = open_fds()?;
        let opened = r
            .kind
            .open(kv)
            .map_err(|e| anyhow::anyhow!("{name}: {e:#}"))?;
        let after = open_fds()?;
        let mut fds: Vec<RawFd> = after.into_iter().filter(|f| !before.contains(f)).collect();
        for fd in opened.adopted_fds() {
            if !fds.contains(&fd) {
                fds.push(fd);
            }
        }
        let endpoint = Endpoint::listen(&sock).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let (endpoint, guard) = match endpoint {
            Endpoint::Listener { listener, remove } => {
                fds.push(listener.as_raw_fd());
                (
                    Endpoint::Listener {
                        listener,
                        remove: None,
                    },
                    remove,
                )
            }
            other => (other, None),
        };
        log::info!("{name}: listening on {}", sock.display());
        prepared.push(Prepared {
            name,
            opened,
            endpoint,
            guard,
            fds,
        });
    }
    // 2. Fork one child per device.
    crate::signals::block_termination_signals()?;
    let running: Arc<Mutex<Vec<Running>>> = Arc::new(Mutex::new(Vec::new()));
    let mut start_error = None;
    for p in prepared {
        match spawn(p, &opts.sandbox) {
            Ok(r) => {
                log::info!("{}: started, pid {}", r.name, r.pid);
                lock(&running).push(r);
            }
            Err(e) => {
                start_error = Some(e);
                break;
            }
        }
    }
    let stopping = Arc::new(AtomicBool::new(false));
    if let Some(e) = start_error {
        stop_all(&running, libc::SIGTERM);
        reap_all(&running, &stopping);
        return Err(e);
    }
    // 3. Supervise.
    {
        let running = running.clone();
        let stopping = stopping.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let sig = crate::signals::wait_termination_signal();
                log::info!("devices: signal {sig}, stopping every device");
                stopping.store(true, Ordering::SeqCst);
                stop_all(&running, sig);
            })?;
    }
    if let Some(path) = &opts.control_socket {
        crate::control::start(path, running_view(&running), stopping.clone())?;
    }
    let failed = reap_all(&running, &stopping);
    if let Some(path) = &opts.control_socket {
        let _ = std::fs::remove_file(path);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("device(s) failed: {}", failed.join(", "))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn running_view(running: &Arc<Mutex<Vec<Running>>>) -> crate::control::Status {
    let running = running.clone();
    Arc::new(move || {
        lock(&running)
            .iter()
            .map(|r| {
                format!(
                    "{} pid={} {}",
                    r.name,
                    r.pid,
                    if r.done { "exited" } else { "running" }
                )
            })
            .collect()
    })
}

fn spawn(p: Prepared, sandbox: &SandboxConfig) -> anyhow::Result<Running> {
    let Prepared {
        name,
        opened,
        endpoint,
        guard,
        fds,
    } = p;
    let opts = ServeOptions {
        name: name.clone(),
        once: false,
        jail: None,
        supervised: true,
    };
    let plan = JailPlan {
        config: sandbox.clone(),
        policy: opened.policy(),
        mounts: opened.mounts(),
        keep_fds: Some(fds),
    };
    let child_name = name.clone();
    let body = move || -> i32 {
        set_process_name(&child_name);
        match opened.serve(endpoint, opts) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("{child_name}: {e:#}");
                1
            }
        }
    };
    if sandbox.disabled {
        log::warn!("{name}: sandbox disabled: no namespaces, no seccomp filter");
        // SAFETY: fork; the child runs the device and _exits, never returning here.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            anyhow::bail!("{name}: fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: die with the supervisor; unblock signals so the device handles them.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            let code = body();
            // SAFETY: leave the forked copy without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        return Ok(Running {
            name,
            pid,
            jailed: false,
            guard,
            done: false,
        });
    }
    let jail = plan
        .build(&[])
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let child = jail
        .fork_jailed(body)
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    Ok(Running {
        name,
        pid: child.pid(),
        jailed: true,
        guard,
        done: false,
    })
}

/// Stops every live child. Children keep no state worth flushing and have the termination
/// signals blocked (inherited), so they get SIGKILL; a jailed device dies with its waiter.
fn stop_all(running: &Mutex<Vec<Running>>, why: libc::c_int) {
    for r in lock(running).iter().filter(|r| !r.done) {
        log::debug!("{}: stopping (signal {why}, jailed: {})", r.name, r.jailed);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(r.pid, libc::SIGKILL) };
    }
}

/// Waits for every child; returns the names of those that failed.
fn reap_all(running: &Mutex<Vec<Running>>, stopping: &AtomicBool) -> Vec<String> {
    let mut failed = Vec::new();
    loop {
        if lock(running).iter().all(|r| r.done) {
            return failed;
        }
        let mut status = 0;
        // SAFETY: waitpid on any child with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return failed;
        }
        let mut list = lock(running);
        let Some(r) = list.iter_mut().find(|r| r.pid == pid) else {
            continue;
        };
        r.done = true;
        if let Some(g) = r.guard.take() {
            g.remove();
        }
        let stop = stopping.load(Ordering::SeqCst);
        if libc::WIFEXITED(status) {
            let code = libc::WEXITSTATUS(status);
            if code == 0 {
                log::info!("{}: exited", r.name);
            } else {
                log::error!("{}: exited with status {code}", r.name);
                failed.push(r.name.clone());
            }
        } else if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            if stop {
                log::info!("{}: stopped (signal {sig})", r.name);
            } else {
                log::error!(
                    "{}: killed by signal {sig}{}",
                    r.name,
                    if sig == libc::SIGSYS {
                        " (SIGSYS: a syscall outside its seccomp policy)"
                    } else {
                        ""
                    }
                );
                failed.push(r.name.clone());
            }
        }
    }
}
