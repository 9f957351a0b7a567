//! Shared vhost-user serving for every Cordon device, the `devices` supervisor and jail entry.
//!
//! Device crates implement rust-vmm's `VhostUserBackend` plus the small [`Backend`] hooks,
//! describe themselves with a [`DeviceKind`], and call [`serve`]. See docs/BACKENDS.md.
#![deny(missing_docs)]

pub mod connection;
pub mod control;
pub mod device;
pub mod inflight;
pub mod intercept;
pub mod kv;
pub mod queue;
pub mod relay;
pub mod restart;
pub mod sandbox;
pub mod serve;
pub mod served;
pub mod signals;
pub mod supervisor;
pub mod terminal;
pub mod virtio;

pub use connection::{Connection, ConnectionArgs, Endpoint};
pub use device::{CommonArgs, DeviceKind, OpenedDevice};
pub use kv::{KeyValues, KvError};
pub use sandbox::{BindMount, JailPlan, SandboxArgs, SandboxConfig};
pub use serve::{serve, Backend, EventRegistrar, ServeError, ServeOptions};
