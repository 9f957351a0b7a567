//! The named checks the agent can run.

mod bench;
mod blk;
mod console;
mod fs;
mod rng;
mod stream;
mod sys;

use crate::report::Outcome;
use crate::spec::CheckSpec;

/// A check implementation.
pub type CheckFn = fn(&CheckSpec) -> Result<Outcome, String>;

/// Every check, by name.
pub const CHECKS: &[(&str, CheckFn)] = &[
    ("kernel", sys::kernel),
    ("kvm", sys::kvm),
    ("blk-read", blk::read),
    ("blk-write", blk::write),
    ("blk-rw", blk::rw),
    ("blk-stream", blk::stream),
    ("blk-flush", blk::flush),
    ("blk-discard", blk::discard),
    ("blk-size", blk::size),
    ("ext4", fs::ext4),
    ("hwrng", rng::hwrng),
    ("console", console::console),
    ("net-ping", stream::ping),
    ("net-tcp", stream::tcp_connect),
    ("net-tcp-listen", stream::tcp_listen),
    ("net-stats", stream::stats),
    ("vsock-connect", stream::vsock_connect),
    ("vsock-listen", stream::vsock_listen),
    ("vsock-held", stream::vsock_held),
    ("bench-blk", bench::blk),
    ("bench-send", bench::send),
    ("bench-recv", bench::recv),
];

/// Looks a check up by name.
pub fn find(name: &str) -> Option<CheckFn> {
    CHECKS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Names of every check, for error messages.
pub fn names() -> String {
    CHECKS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}
