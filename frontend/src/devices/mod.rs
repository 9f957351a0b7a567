//! Legacy devices the VMM emulates itself: the 16550 serial console, the i8042 controller
//! (its reset line), a read-only CMOS clock and the ACPI power-management registers.

pub mod acpi_pm;
pub mod i8042;
pub mod rtc;
pub mod serial;

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line or event backed by an eventfd (registered as a KVM irqfd, or watched
/// by the VMM's event loop).
pub struct EventTrigger(pub EventFd);

impl vm_superio::Trigger for EventTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
