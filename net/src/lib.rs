//! virtio-net device logic and the `net-device` vhost-user backend.
//!
//! The device bridges virtqueues to a TAP interface (created by the backend before it jails
//! itself, or handed over as `tap-fd=N`). See docs/DEVICES.md.
#![deny(missing_docs)]

pub mod device;
pub mod frame;
pub mod kind;
pub mod options;
pub mod tap;

pub use device::{NetConfig, NetDevice, TapSource};
pub use kind::KIND;

#[cfg(test)]
#[path = "../../vsock/src/guestq.rs"]
#[allow(dead_code)] // shared with the vsock crate; net's tests use only part of it
pub(crate) mod guestq;
#[cfg(test)]
mod tests;
