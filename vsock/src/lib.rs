//! virtio-vsock (hybrid, over Unix sockets) device logic and the `vsock-device` vhost-user backend.
//!
//! Host-initiated streams: a host program connects to `uds-path`, writes `CONNECT <port>\n`
//! and reads `OK <assigned-port>\n`. Guest-initiated streams to host port P are connected to
//! the Unix socket `<uds-path>_<P>`. See docs/DEVICES.md.
#![deny(missing_docs)]

pub mod conn;
pub mod device;
pub mod kind;
pub mod muxer;
pub mod options;
pub mod packet;

pub use device::{VsockConfig, VsockDevice};
pub use kind::KIND;

#[cfg(test)]
pub(crate) mod guestq;
#[cfg(test)]
mod tests;
