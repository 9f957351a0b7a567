//! A deadline on every exchange with a backend.
//!
//! The `vhost` crate's receive loop retries on `EAGAIN`, so a socket read timeout never
//! surfaces: a backend that stops answering would hang the frontend forever. Instead, each
//! request arms this watchdog; if the reply has not come when the deadline passes, the
//! watchdog shuts the socket down, the pending read sees end-of-file and the request fails
//! with an error the caller reports.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// When the current exchange must be over (None: nothing pending).
    deadline: Option<Instant>,
    /// Nested arms (a guard held across several requests, plus one per request).
    armed: usize,
    /// The connection is gone: the watchdog thread ends.
    closed: bool,
    /// The watchdog fired.
    fired: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Shuts a backend socket down when an armed exchange outlives its deadline.
pub struct Watchdog {
    shared: Arc<Shared>,
    limit: Duration,
}

impl Watchdog {
    /// Watches `stream` (a clone of the connection's socket) with `limit` per exchange.
    /// Without a thread (the clone failed, or no thread could be started) exchanges are
    /// simply not bounded; that is logged.
    pub fn new(stream: &UnixStream, limit: Duration) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        match stream.try_clone() {
            Ok(sock) => {
                let s = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name("vhost-user-watchdog".into())
                    .spawn(move || watch(&s, &sock));
                if let Err(e) = spawned {
                    log::warn!("vhost-user: no reply watchdog ({e}): a stuck backend can hang");
                }
            }
            Err(e) => log::warn!("vhost-user: no reply watchdog ({e}): a stuck backend can hang"),
        }
        Watchdog { shared, limit }
    }

    /// Arms the deadline until the returned guard is dropped (nested arms keep the first).
    pub fn arm(&self) -> Armed {
        let mut st = self.shared.lock();
        if st.armed == 0 {
            st.deadline = Some(Instant::now() + self.limit);
        }
        st.armed += 1;
        drop(st);
        self.shared.wake.notify_one();
        Armed {
            shared: Arc::clone(&self.shared),
        }
    }

    /// True once the watchdog shut the socket down.
    pub fn fired(&self) -> bool {
        self.shared.lock().fired
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

/// An armed deadline; dropping it disarms (when it is the last one).
pub struct Armed {
    shared: Arc<Shared>,
}

impl Drop for Armed {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.armed = st.armed.saturating_sub(1);
        if st.armed == 0 {
            st.deadline = None;
        }
    }
}

fn watch(shared: &Shared, sock: &UnixStream) {
    let mut st = shared.lock();
    loop {
        if st.closed {
            return;
        }
        match st.deadline {
            None => st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner()),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    st.fired = true;
                    log::error!(
                        "vhost-user: the backend did not answer in time; closing the connection"
                    );
                    let _ = sock.shutdown(Shutdown::Both);
                    return;
                }
                st = shared
                    .wake
                    .wait_timeout(st, d - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn an_armed_exchange_past_its_deadline_closes_the_socket() {
        let (a, _b) = UnixStream::pair().unwrap();
        let dog = Watchdog::new(&a, Duration::from_millis(100));
        let _g = dog.arm();
        let start = Instant::now();
        let mut buf = [0u8; 1];
        // The peer never writes: without the watchdog this read would block forever.
        assert_eq!((&a).read(&mut buf).unwrap(), 0);
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(dog.fired());
    }

    #[test]
    fn a_disarmed_watchdog_leaves_the_socket_alone() {
        let (a, b) = UnixStream::pair().unwrap();
        let dog = Watchdog::new(&a, Duration::from_millis(50));
        drop(dog.arm());
        std::thread::sleep(Duration::from_millis(150));
        assert!(!dog.fired());
        std::io::Write::write_all(&mut &b, b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!((&a).read(&mut buf).unwrap(), 1);
    }
}
