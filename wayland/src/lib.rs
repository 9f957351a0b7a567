//! virtio-wl (Wayland forwarding, as in crosvm) device logic and the `wayland-device`
//! vhost-user backend. See docs/DEVICES.md for the protocol and the shared-memory messages.
#![deny(missing_docs)]

pub mod device;
pub mod kind;
pub mod protocol;
pub mod shm;

pub use device::{WlConfig, WlDevice};
pub use kind::KIND;

#[cfg(test)]
#[path = "../../vsock/src/guestq.rs"]
pub(crate) mod guestq;
#[cfg(test)]
mod tests;
