//! virtio-wl (Wayland forwarding, as in crosvm) device logic and the `wayland-device`
//! vhost-user backend. See docs/DEVICES.md for the protocol and the shared-memory messages.
#![deny(missing_docs)]

pub mod device;
pub mod kind;
pub mod protocol;
pub mod shm;

pub use device::{WlConfig, WlDevice};
pub use kind::KIND;

// The guest-side virtqueue test helper is shared with the vsock crate; wayland's tests use
// only part of it.
#[cfg(test)]
#[path = "../../vsock/src/guestq.rs"]
#[allow(dead_code)]
pub(crate) mod guestq;
#[cfg(test)]
mod tests;
