//! virtio-blk device logic and the `block-device` vhost-user backend.
//!
//! Layers, each in its own module:
//! - [`options`]: the command-line / `devices` key=value options;
//! - [`disk`]: the raw image (open, lock, vectored I/O, hole punching, O_DIRECT);
//! - [`request`]: descriptor chain parsing (hostile input);
//! - [`device`]: executing requests and the config space;
//! - [`pool`]: per-queue I/O threads, so requests of one queue overlap;
//! - [`backend`]: rust-vmm `VhostUserBackend` glue (queues, notifications, EVENT_IDX);
//! - [`kind`]: command lines and jailed serving through `cordon-backends`.
#![deny(missing_docs)]

pub mod backend;
pub mod bounce;
pub mod defs;
pub mod device;
pub mod disk;
pub mod kind;
pub mod options;
pub mod pool;
pub mod request;

pub use backend::BlockBackend;
pub use device::BlockDevice;
pub use kind::KIND;
pub use options::BlockOptions;

#[cfg(test)]
mod device_tests;
