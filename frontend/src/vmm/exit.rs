//! Why a VM ended, and the one-shot signal vCPUs, devices and the control socket use to end it.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use super::bus::lock;

/// Why the VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the CPU (i8042 or ACPI reset register: `reboot`).
    GuestReset,
    /// The guest entered ACPI S5 (`poweroff`).
    PowerOff,
    /// `cordon stop` or the control socket asked for it.
    Stopped,
    /// A vCPU halted with interrupts off (test code; Linux never does with an in-kernel LAPIC).
    Halted,
    /// A vCPU triple-faulted (a crash, or `reboot=t`).
    TripleFault,
    /// A fatal VMM or KVM error.
    Error(String),
}

impl ExitReason {
    /// The process exit code `cordon run` uses.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReset
            | ExitReason::PowerOff
            | ExitReason::Stopped
            | ExitReason::Halted => 0,
            ExitReason::TripleFault | ExitReason::Error(_) => 1,
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::GuestReset => write!(f, "guest reset (reboot)"),
            ExitReason::PowerOff => write!(f, "guest powered off (ACPI S5)"),
            ExitReason::Stopped => write!(f, "stopped by request"),
            ExitReason::Halted => write!(f, "vCPU halted"),
            ExitReason::TripleFault => {
                write!(f, "guest triple fault (crash, or reboot=t: use reboot=k)")
            }
            ExitReason::Error(e) => write!(f, "{e}"),
        }
    }
}

/// The first reason wins; the eventfd wakes the event loop.
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    /// Readable once a reason was set.
    pub evt: EventFd,
}

impl ExitSignal {
    /// A fresh signal.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `r` unless a reason is already set, and wakes the event loop.
    pub fn request(&self, r: ExitReason) {
        let mut g = lock(&self.reason);
        if g.is_none() {
            log::debug!("VM exit requested: {r}");
            *g = Some(r);
        }
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot wake the event loop: {e}");
        }
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }
}
