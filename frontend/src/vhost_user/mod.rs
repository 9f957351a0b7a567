//! vhost-user frontend driver: the code that talks to a device backend over its socket.
//!
//! Used by the host-side device tests, the benchmarks and the VMM:
//! - [`memory`]: guest memory in memfds (shareable with the backend through SET_MEM_TABLE);
//! - [`connection`]: connect, negotiate features and protocol features, share memory, set up
//!   vrings, read the config space (wraps the `vhost` crate's `Frontend`);
//! - [`virtqueue`]: the driver side of a split virtqueue living in that memory;
//! - [`driver`]: all of the above in one object, to submit requests and wait for completions;
//! - [`shmem`]: VIRTIO shared memory regions the backend maps fds into, over the back-end
//!   request channel (SHMEM_MAP/UNMAP).

pub mod connection;
pub mod driver;
pub mod memory;
pub mod shmem;
pub mod virtqueue;
pub mod watchdog;

pub use connection::{VhostUserConnection, CONNECT_TIMEOUT};
pub use driver::{Completion, DriverConfig, VhostUserDriver};
pub use memory::{create_guest_memory, GuestMemfd};
pub use shmem::{BackendChannel, Mapping, SharedMemoryRegion};
pub use virtqueue::{Buffer, DriverQueue, Used};

/// Errors of the frontend driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vhost-user request failed (the backend refused it or the connection broke).
    #[error("vhost-user {op}: {source}")]
    Vhost {
        /// The request that failed.
        op: &'static str,
        /// The protocol error.
        #[source]
        source: vhost::Error,
    },
    /// An OS call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory could not be created or accessed.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The backend did not complete a request in time.
    #[error("timed out after {0:?} waiting for the backend")]
    Timeout(std::time::Duration),
    /// Not enough free descriptors for the chain.
    #[error("virtqueue full: {needed} descriptors needed, {free} free")]
    QueueFull {
        /// Descriptors needed.
        needed: usize,
        /// Descriptors free.
        free: usize,
    },
    /// The backend wrote something invalid in the used ring.
    #[error("backend returned an invalid used element: {0}")]
    BadUsed(String),
    /// Invalid use of the API.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Result of the frontend driver.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn vhost_err(op: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Vhost { op, source }
}

pub(crate) fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { op, source }
}
