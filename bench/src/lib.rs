//! Benchmarks, each measured side by side with its peer in the same run.

/// Block device benchmark (block-device vs qemu-storage-daemon vs host I/O).
pub mod block;
pub mod libseccomp;
pub mod seccomp;
pub mod vsock;
