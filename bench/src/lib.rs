//! Benchmarks, each measured side by side with its peer in the same run.

/// Block device benchmark (block-device vs qemu-storage-daemon vs host I/O).
pub mod block;
/// In-guest benchmark through `cordon run` (block vs qemu-storage-daemon, net, vsock, boot).
pub mod guest;
pub mod libseccomp;
pub mod process;
pub mod seccomp;
pub mod vsock;
