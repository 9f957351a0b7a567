//! Processes a benchmark starts (backends, peers) and must not leave behind.

use std::process::Child;

/// A child process that is killed and reaped when this value is dropped, also when the
/// benchmark fails half-way.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
