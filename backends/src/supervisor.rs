//! `cordon devices`: open every device in the parent, fork one jailed child per device,
//! supervise them.

use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connection::{is_pci_address, Endpoint, RemoveOnDrop};
use crate::device::{DeviceKind, OpenedDevice};
use crate::kv::KeyValues;
use crate::restart::{backoff, RestartPolicy, HEALTHY_AFTER};
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
    /// What to do when a child dies (`--restart`).
    pub restart: RestartPolicy,
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
    created: Vec<RemoveOnDrop>,
    fds: Vec<RawFd>,
}

/// Where a device child is in its life.
#[derive(Clone, Copy, Debug)]
enum State {
    /// A child runs since this instant.
    Running(Instant),
    /// The child died; a new one is forked at this instant.
    Restarting(Instant),
    /// Finished for good.
    Done,
}

/// One supervised device. With a restart policy the parent keeps the opened device and its
/// listening socket, so that a new child can be forked on the same resources.
struct Running {
    name: String,
    pid: libc::pid_t,
    jailed: bool,
    guard: Option<RemoveOnDrop>,
    /// Host files the device created besides its socket (removed with it).
    created: Vec<RemoveOnDrop>,
    state: State,
    /// Kept for restarts (None with `--restart never`, after the first fork).
    opened: Option<Box<dyn OpenedDevice>>,
    /// Kept for restarts, like `opened`.
    endpoint: Option<Endpoint>,
    /// The descriptors the child keeps (its resources and its socket).
    fds: Vec<RawFd>,
    /// Restarts so far.
    restarts: u32,
    /// Restarts since the last healthy run (drives the backoff and the limit).
    consecutive: u32,
}

impl Running {
    fn done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Gives the device up: its socket file goes, and so do the kept resources.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(g) = self.guard.take() {
            g.remove();
        }
        for g in self.created.drain(..) {
            g.remove();
        }
        self.opened = None;
        self.endpoint = None;
    }
}

/// Runs the devices until they all exit or a termination signal arrives; an error when a
/// device could not be started or one of them failed.
pub fn run_devices(requests: Vec<DeviceRequest>, opts: DevicesOptions) -> anyhow::Result<()> {
    let r = supervise_devices(requests, opts);
    // A `--serial ...,stdin` terminal gets its settings back however the tree ended.
    crate::terminal::restore();
    r
}

fn supervise_devices(requests: Vec<DeviceRequest>, opts: DevicesOptions) -> anyhow::Result<()> {
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
        let created = opened
            .created_paths()
            .iter()
            .map(|p| RemoveOnDrop::new(p))
            .collect();
        prepared.push(Prepared {
            name,
            opened,
            endpoint,
            guard,
            created,
            fds,
        });
    }
    // 2. Fork one child per device.
    crate::signals::block_termination_signals()?;
    let keep = opts.restart.when != crate::restart::RestartWhen::Never;
    let running: Arc<Mutex<Vec<Running>>> = Arc::new(Mutex::new(Vec::new()));
    let mut start_error = None;
    for p in prepared {
        let mut r = Running {
            name: p.name,
            pid: 0,
            jailed: false,
            guard: p.guard,
            created: p.created,
            state: State::Done,
            opened: Some(p.opened),
            endpoint: Some(p.endpoint),
            fds: p.fds,
            restarts: 0,
            consecutive: 0,
        };
        match spawn(&mut r, &opts.sandbox, keep) {
            Ok(()) => {
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
        stopping.store(true, Ordering::SeqCst);
        stop_all(&running, libc::SIGTERM);
        reap_all(&running, &stopping, &opts);
        return Err(e);
    }
    if keep {
        log::info!("devices: restart policy {}", opts.restart);
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
    let failed = reap_all(&running, &stopping, &opts);
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
                    "{} pid={} {} restarts={}",
                    r.name,
                    r.pid,
                    match r.state {
                        State::Running(_) => "running",
                        State::Restarting(_) => "restarting",
                        State::Done => "exited",
                    },
                    r.restarts
                )
            })
            .collect()
    })
}

/// Forks a (jailed) child serving `r`'s device on `r`'s socket and marks it running.
///
/// The child takes the opened device and the endpoint out of *its* copy of `r` (fork copied
/// the address space); the parent's copy stays untouched, so with `keep` the parent can fork
/// another child on the same resources later (a writable block image keeps its exclusive
/// lock: the lock belongs to the open file, which the parent and every child share). Without
/// `keep` the parent drops its copies, as a plain fork-and-forget supervisor would.
fn spawn(r: &mut Running, sandbox: &SandboxConfig, keep: bool) -> anyhow::Result<()> {
    let name = r.name.clone();
    let Some(opened_ref) = r.opened.as_ref() else {
        anyhow::bail!("{name}: the device's resources were already released");
    };
    if r.endpoint.is_none() {
        anyhow::bail!("{name}: the device's socket was already released");
    }
    let opts = ServeOptions {
        name: name.clone(),
        once: false,
        jail: None,
        supervised: true,
    };
    let plan = JailPlan {
        config: sandbox.clone(),
        policy: opened_ref.policy(),
        mounts: opened_ref.mounts(),
        keep_fds: Some(r.fds.clone()),
    };
    let child_name = name.clone();
    let opened_slot = &mut r.opened;
    let endpoint_slot = &mut r.endpoint;
    let body = move || -> i32 {
        set_process_name(&child_name);
        let (Some(opened), Some(endpoint)) = (opened_slot.take(), endpoint_slot.take()) else {
            return 1;
        };
        match opened.serve(endpoint, opts) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("{child_name}: {e:#}");
                1
            }
        }
    };
    let (pid, jailed) = if sandbox.disabled {
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
        (pid, false)
    } else {
        let jail = plan
            .build(&[])
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let child = jail
            .fork_jailed(body)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        (child.pid(), true)
    };
    r.pid = pid;
    r.jailed = jailed;
    r.state = State::Running(Instant::now());
    if !keep {
        r.opened = None;
        r.endpoint = None;
    }
    Ok(())
}

/// Stops every live child. Children keep no state worth flushing and have the termination
/// signals blocked (inherited), so they get SIGKILL; a jailed device dies with its waiter.
fn stop_all(running: &Mutex<Vec<Running>>, why: libc::c_int) {
    for r in lock(running).iter() {
        if let State::Running(_) = r.state {
            log::debug!("{}: stopping (signal {why}, jailed: {})", r.name, r.jailed);
            // SAFETY: signalling our own child.
            unsafe { libc::kill(r.pid, libc::SIGKILL) };
        }
    }
}

/// Forks the children whose backoff has elapsed (or gives them up when stopping); returns
/// the earliest pending restart, if any.
fn restart_due(
    running: &Mutex<Vec<Running>>,
    stopping: &AtomicBool,
    opts: &DevicesOptions,
    failed: &mut Vec<String>,
) -> Option<Instant> {
    let now = Instant::now();
    let mut next: Option<Instant> = None;
    // The lock is held across the fork so that the signal thread's `stop_all` either runs
    // before (and `stopping` is seen here) or after (and sees the new pid).
    let mut list = lock(running);
    for r in list.iter_mut() {
        let State::Restarting(at) = r.state else {
            continue;
        };
        if stopping.load(Ordering::SeqCst) {
            log::info!("{}: not restarted (stopping)", r.name);
            r.finish();
            continue;
        }
        if at > now {
            next = Some(next.map_or(at, |n| n.min(at)));
            continue;
        }
        match spawn(r, &opts.sandbox, true) {
            Ok(()) => log::info!(
                "{}: restarted, pid {} (restart {})",
                r.name,
                r.pid,
                r.restarts
            ),
            Err(e) => {
                log::error!("{}: restart failed: {e:#}", r.name);
                r.finish();
                failed.push(r.name.clone());
            }
        }
    }
    next
}

/// Waits for every child, restarting them per policy; returns the names of those that
/// failed for good.
fn reap_all(
    running: &Mutex<Vec<Running>>,
    stopping: &AtomicBool,
    opts: &DevicesOptions,
) -> Vec<String> {
    let mut failed = Vec::new();
    loop {
        let next = restart_due(running, stopping, opts, &mut failed);
        if lock(running).iter().all(|r| r.done()) {
            return failed;
        }
        let mut status = 0;
        let flags = if next.is_some() { libc::WNOHANG } else { 0 };
        // SAFETY: waitpid on any child with a valid out-pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, flags) };
        if pid <= 0 {
            let e = std::io::Error::last_os_error();
            if pid < 0 && e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            match next {
                // Nothing exited (or no child is alive): sleep until the next restart, in
                // short steps so that a stop request is seen soon.
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    std::thread::sleep(wait.min(Duration::from_millis(50)));
                    continue;
                }
                None => return failed,
            }
        }
        let mut list = lock(running);
        let Some(r) = list
            .iter_mut()
            .find(|r| r.pid == pid && matches!(r.state, State::Running(_)))
        else {
            continue;
        };
        let State::Running(since) = r.state else {
            continue;
        };
        let stop = stopping.load(Ordering::SeqCst);
        let failure = describe_exit(&r.name, status, stop);
        if stop {
            r.finish();
            if failure.is_some() {
                failed.push(r.name.clone());
            }
            continue;
        }
        if since.elapsed() >= HEALTHY_AFTER {
            r.consecutive = 0;
        }
        if opts
            .restart
            .should_restart(failure.is_some(), r.consecutive)
        {
            r.consecutive += 1;
            r.restarts += 1;
            let delay = backoff(r.consecutive);
            log::warn!(
                "{}: restarting in {} ms (restart {}, policy {})",
                r.name,
                delay.as_millis(),
                r.restarts,
                opts.restart
            );
            r.state = State::Restarting(Instant::now() + delay);
            continue;
        }
        if failure.is_some() && opts.restart.when != crate::restart::RestartWhen::Never {
            log::error!(
                "{}: giving up after {} consecutive restarts",
                r.name,
                r.consecutive
            );
        }
        r.finish();
        if failure.is_some() {
            failed.push(r.name.clone());
        }
    }
}

/// Logs how a child ended; `Some(())` when that counts as a failure (non-zero status, or a
/// signal that was not our own stop).
fn describe_exit(name: &str, status: libc::c_int, stopping: bool) -> Option<()> {
    if libc::WIFEXITED(status) {
        let code = libc::WEXITSTATUS(status);
        if code == 0 {
            log::info!("{name}: exited");
            None
        } else {
            log::error!("{name}: exited with status {code}");
            Some(())
        }
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        if stopping {
            log::info!("{name}: stopped (signal {sig})");
            None
        } else {
            log::error!(
                "{name}: killed by signal {sig}{}",
                if sig == libc::SIGSYS {
                    " (SIGSYS: a syscall outside its seccomp policy)"
                } else {
                    ""
                }
            );
            Some(())
        }
    } else {
        None
    }
}
