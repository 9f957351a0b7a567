//! The vCPU loop: runs one vCPU and dispatches its I/O exits to the buses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use super::bus::Bus;
use super::exit::{ExitReason, ExitSignal};

/// What a vCPU thread needs.
pub struct Vcpu {
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Its index.
    pub id: u8,
    /// Port-I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Set when the VM is stopping; checked after every exit.
    pub stop: Arc<AtomicBool>,
    /// Where the vCPU reports why the VM must end.
    pub exit: Arc<ExitSignal>,
}

impl Vcpu {
    /// Runs until the VM stops or this vCPU hits a fatal exit (which it reports).
    pub fn run(mut self) {
        while !self.stop.load(Ordering::Acquire) {
            let id = self.id;
            match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !self.pio.read(u64::from(port), data) {
                        log::trace!("vcpu{id}: in {port:#x} (no device)");
                    }
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    if !self.pio.write(u64::from(port), data) {
                        log::trace!("vcpu{id}: out {port:#x} (no device)");
                    }
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !self.mmio.read(addr, data) {
                        log::debug!("vcpu{id}: MMIO read {addr:#x} (no device)");
                    }
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !self.mmio.write(addr, data) {
                        log::debug!("vcpu{id}: MMIO write {addr:#x} (no device)");
                    }
                }
                Ok(VcpuExit::Hlt) => {
                    // Only reached without an in-kernel LAPIC, or for test code.
                    self.exit.request(ExitReason::Halted);
                    return;
                }
                Ok(VcpuExit::Shutdown) => {
                    self.exit.request(ExitReason::TripleFault);
                    return;
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    self.exit
                        .request(ExitReason::Error(format!("vcpu{id}: system event {kind}")));
                    return;
                }
                Ok(VcpuExit::Intr) => {}
                Ok(VcpuExit::InternalError) => {
                    let sub = self.fd.get_kvm_run().__bindgen_anon_1;
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is
                    // the active union member.
                    let suberror = unsafe { sub.internal.suberror };
                    self.exit.request(ExitReason::Error(format!(
                        "vcpu{id}: KVM internal error (suberror {suberror})"
                    )));
                    return;
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    self.exit.request(ExitReason::Error(format!(
                        "vcpu{id}: VM entry failed (reason {reason:#x}, host cpu {cpu})"
                    )));
                    return;
                }
                Ok(other) => {
                    self.exit.request(ExitReason::Error(format!(
                        "vcpu{id}: unexpected exit {other:?}"
                    )));
                    return;
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    self.exit
                        .request(ExitReason::Error(format!("vcpu{id}: KVM_RUN failed: {e}")));
                    return;
                }
            }
        }
    }
}
