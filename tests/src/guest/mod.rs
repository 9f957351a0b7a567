//! The guest test harness: real Linux guests driving Cordon (or peer) backends.
//!
//! - [`assets`]: the Debian cloud kernel, the static guest agent and the initramfs, cached
//!   under `target/guest-assets`.
//! - [`GuestRunner`] (runner A): QEMU TCG guest on vhost-user sockets.
//! - [`check`]: the checks the guest agent runs and their parsed results.
//!
//! See docs/TESTING.md.

pub mod assets;
pub mod backend;
pub mod check;
pub mod console;
pub mod cpio;
pub mod nested;
pub mod peers;
pub mod runner;
pub mod tools;

pub use assets::{assets, GuestAssets};
pub use backend::{cordon_bin, BackendProcess, JailFacts};
pub use check::{hex, unhex, Check, CheckResult};
pub use nested::{l1_cpus, GuestMode, NestedRunner};
pub use runner::{GuestRunner, Results, RunningGuest, Stalled};
