//! The generic serving loop: accept a frontend, serve it, reset, wait for the next one.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringEpollHandler, VringRwLock};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::connection::Endpoint;
use crate::inflight::Inflight;
use crate::relay::{Fixups, Relay};
use crate::sandbox::JailPlan;
use crate::served::Served;

/// What a Cordon device backend is: a rust-vmm [`VhostUserBackend`] over plain guest memory
/// and `VringRwLock` vrings, plus two optional per-connection hooks.
///
/// Implement both traits for your device type; [`serve`] takes it in an `Arc` and shares it
/// with every frontend connection in turn.
pub trait Backend:
    VhostUserBackend<Bitmap = (), Vring = VringRwLock> + Send + Sync + 'static
{
    /// Called when a new frontend is about to be served; `workers[i]` registers extra file
    /// descriptors (e.g. serial input, a TAP device) with vring worker thread `i`. Event ids
    /// must be greater than `num_queues()` (lower ids are the queues and the exit event).
    fn connected(&self, workers: Vec<Arc<dyn EventRegistrar>>) -> io::Result<()> {
        let _ = workers;
        Ok(())
    }

    /// Called after the frontend went away and the workers stopped: drop per-connection state
    /// (the registrars, guest memory references, pending requests).
    fn disconnected(&self) {}

    /// Whether frontends of this device are known to send `SET_VRING_ENABLE` before
    /// acknowledging `VHOST_USER_F_PROTOCOL_FEATURES` (QEMU's vhost-user-net). Then every
    /// connection goes through a message relay that absorbs such early enables
    /// ([`crate::relay::Fixups`]); the device's policy must allow AF_UNIX `socket`, `bind`,
    /// `listen` and `connect` (the relay's private abstract socket in the jail's own network
    /// namespace).
    fn relay_early_vring_enable(&self) -> bool {
        false
    }
}

/// Registers extra file descriptors with one vring worker thread's epoll loop.
pub trait EventRegistrar: Send + Sync {
    /// Watch `fd` for `events`; `Backend::handle_event` gets `id` when it fires.
    fn register(&self, fd: RawFd, events: EventSet, id: u64) -> io::Result<()>;
    /// Stop watching `fd`.
    fn unregister(&self, fd: RawFd, events: EventSet, id: u64) -> io::Result<()>;
}

impl<B: Backend> EventRegistrar for VringEpollHandler<Served<B>> {
    fn register(&self, fd: RawFd, events: EventSet, id: u64) -> io::Result<()> {
        self.register_listener(fd, events, id)
    }
    fn unregister(&self, fd: RawFd, events: EventSet, id: u64) -> io::Result<()> {
        self.unregister_listener(fd, events, id)
    }
}

/// Options of [`serve`].
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// Name used in logs and thread names, e.g. `rng-0`.
    pub name: String,
    /// Serve a single frontend, then return (otherwise wait for the next one forever).
    pub once: bool,
    /// Jail to enter once the endpoint is ready (None: the caller already jailed or disabled).
    pub jail: Option<JailPlan>,
    /// Run by a supervisor (`cordon devices`) that handles signals and socket files: serve
    /// only runs the loop.
    pub supervised: bool,
}

/// Error from [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The jail could not be entered.
    #[error(transparent)]
    Jail(#[from] crate::sandbox::JailError),
    /// Setting up the `--fd` relay or the signal thread failed.
    #[error("cannot set up serving: {0}")]
    Relay(io::Error),
    /// The vhost-user daemon could not be created or could not accept.
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
    /// A connection ended with a protocol error (only returned with `once` or `--fd`).
    #[error("frontend connection failed: {0}")]
    Connection(String),
}

/// Serves `backend` on `endpoint` until `once`/`--fd` completes, or forever.
///
/// Order: the caller opened the device's resources and `endpoint`; this enters `opts.jail`,
/// then for each frontend creates a fresh daemon (fresh vrings and memory), serves the
/// connection, and after the frontend disconnects resets the device
/// (`reset_device` + `disconnected`) and waits for the next one. A frontend that sends a
/// malformed or hostile message gets an error reply or is disconnected and logged; the backend
/// keeps serving the next frontend.
pub fn serve<B: Backend>(
    backend: Arc<B>,
    endpoint: Endpoint,
    opts: ServeOptions,
) -> Result<(), ServeError> {
    let name = if opts.name.is_empty() {
        "vhost-user".to_string()
    } else {
        opts.name.clone()
    };
    // Keep the endpoint alive (it removes its socket file on drop).
    let (listener, relay, single, keep) = match endpoint {
        Endpoint::Listener { listener, remove } => (
            Listener::from(listener),
            None,
            opts.once,
            remove.map(Arc::new),
        ),
        Endpoint::Stream(stream) => {
            let relay = Relay::new(stream).map_err(ServeError::Relay)?;
            let l = relay.listener.try_clone().map_err(ServeError::Relay)?;
            (Listener::from(l), Some(relay), true, None)
        }
    };
    match opts.jail.as_ref().filter(|j| !j.config.disabled) {
        Some(plan) => {
            let mut extra = vec![listener.as_raw_fd()];
            if let Some(r) = &relay {
                extra.extend(r.fds());
            }
            let jail = plan.build(&extra)?;
            crate::signals::block_termination_signals().map_err(ServeError::Relay)?;
            let loop_name = name.clone();
            let child = jail
                .fork_jailed(move || {
                    set_process_name(&loop_name);
                    match serve_loop(backend, listener, relay, single, &loop_name) {
                        Ok(()) => 0,
                        Err(e) => {
                            log::error!("{loop_name}: {e}");
                            1
                        }
                    }
                })
                .map_err(|e| ServeError::Jail(crate::sandbox::JailError::from_seccomp(e)))?;
            log::info!("{name}: serving in jailed process {}", child.pid());
            let result = crate::signals::wait_forwarding(&name, child);
            if let Some(k) = &keep {
                k.remove();
            }
            result.map_err(ServeError::Connection)
        }
        None if opts.supervised => serve_loop(backend, listener, relay, single, &name),
        None => {
            if opts.jail.is_some() {
                log::warn!("{name}: sandbox disabled: no namespaces, no seccomp filter");
            }
            crate::signals::block_termination_signals().map_err(ServeError::Relay)?;
            let guard = keep.clone();
            crate::signals::exit_on_termination(name.clone(), move || {
                if let Some(g) = guard {
                    g.remove();
                }
            })
            .map_err(ServeError::Relay)?;
            let r = serve_loop(backend, listener, relay, single, &name);
            if let Some(k) = &keep {
                k.remove();
            }
            r
        }
    }
}

/// Sets the process name (`comm`, shown by ps/top) to `name`, e.g. `rng-0`.
pub fn set_process_name(name: &str) {
    if let Ok(c) = std::ffi::CString::new(name.chars().take(15).collect::<String>()) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr(), 0, 0, 0) };
    }
}

/// The serving loop proper (already jailed, or unjailed by choice): one fresh daemon per
/// frontend, reset between frontends; returns after one frontend when `single`.
///
/// Devices that need the message relay (frontend fix-ups, or
/// VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD answered by [`crate::intercept`]) get one per
/// connection: the loop accepts the frontend itself and the daemon accepts the relayed
/// connection from the relay's private listener.
fn serve_loop<B: Backend>(
    backend: Arc<B>,
    mut listener: Listener,
    relay: Option<Relay>,
    single: bool,
    name: &str,
) -> Result<(), ServeError> {
    use vhost::vhost_user::message::VhostUserProtocolFeatures as P;
    let fixups = backend.relay_early_vring_enable();
    let wants_inflight = backend.protocol_features().contains(P::INFLIGHT_SHMFD);
    let new_inflight = || Inflight::new(name, backend.num_queues(), backend.max_queue_size());
    let per_connection_relay = (fixups || wants_inflight) && relay.is_none();
    let mut fd_inflight = None;
    if let Some(relay) = relay {
        fd_inflight = wants_inflight.then(new_inflight);
        relay
            .start_full(fixups.then(Fixups::default), fd_inflight.clone())
            .map_err(ServeError::Relay)?;
    }
    loop {
        let inflight = match &fd_inflight {
            Some(i) => Some(i.clone()),
            None => wants_inflight.then(new_inflight),
        };
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let served = Served::with_inflight(backend.clone(), inflight.clone());
        let mut daemon = VhostUserDaemon::new(name.to_string(), served, mem)
            .map_err(|e| ServeError::Daemon(e.to_string()))?;
        let registrars: Vec<Arc<dyn EventRegistrar>> = daemon
            .get_epoll_handlers()
            .into_iter()
            .map(|h| h as Arc<dyn EventRegistrar>)
            .collect();
        backend
            .connected(registrars)
            .map_err(|e| ServeError::Daemon(format!("device setup: {e}")))?;
        log::info!("{name}: waiting for a frontend");
        if per_connection_relay {
            let mut inner = relayed_connection(&listener, fixups, inflight.clone())?;
            daemon.start(&mut inner)
        } else {
            daemon.start(&mut listener)
        }
        .map_err(|e| ServeError::Daemon(e.to_string()))?;
        log::info!("{name}: frontend connected");
        let result = daemon.wait();
        drop(daemon);
        backend.reset_device();
        backend.disconnected();
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(e) if is_disconnect(&e) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        match &outcome {
            Ok(()) => log::info!("{name}: frontend disconnected"),
            Err(e) => log::warn!("{name}: frontend dropped after an error: {e}"),
        }
        if single {
            return outcome.map_err(ServeError::Connection);
        }
    }
}

/// Accepts the next frontend on `listener` and puts a relay in front of it (fix-ups and/or
/// inflight answers); returns the relay's private listener, from which the daemon accepts
/// the relayed connection.
fn relayed_connection(
    listener: &Listener,
    fixups: bool,
    inflight: Option<Arc<Inflight>>,
) -> Result<Listener, ServeError> {
    let outer = loop {
        match listener.accept() {
            Ok(Some(s)) => break s,
            Ok(None) => continue,
            Err(e) => return Err(ServeError::Daemon(format!("accept: {e}"))),
        }
    };
    let relay = Relay::new(outer).map_err(ServeError::Relay)?;
    let inner = relay.listener.try_clone().map_err(ServeError::Relay)?;
    relay
        .start_full(fixups.then(Fixups::default), inflight)
        .map_err(ServeError::Relay)?;
    Ok(Listener::from(inner))
}

fn is_disconnect(e: &vhost_user_backend::Error) -> bool {
    use vhost::vhost_user::Error as E;
    matches!(
        e,
        vhost_user_backend::Error::HandleRequest(
            E::Disconnected | E::PartialMessage | E::SocketBroken(_)
        )
    )
}
