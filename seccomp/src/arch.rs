//! Target architectures: syscall numbers, named constants and audit values.

use crate::tables;

/// A CPU architecture a policy can be compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// x86_64 (the x32 ABI is always rejected).
    X86_64,
    /// 64-bit Arm.
    Aarch64,
}

/// Bit that marks x32 syscalls on x86_64; the compiled filter always kills them.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

impl Arch {
    /// Every architecture the compiler knows.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The architecture this crate is compiled for.
    pub fn native() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// Name used for policy directories and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Parses a name produced by [`Arch::name`].
    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The `AUDIT_ARCH_*` value the kernel reports in `seccomp_data.arch`.
    pub fn audit_arch(self) -> u32 {
        match self {
            Arch::X86_64 => tables::x86_64::AUDIT_ARCH,
            Arch::Aarch64 => tables::aarch64::AUDIT_ARCH,
        }
    }

    /// Lowest syscall number that must be rejected regardless of the policy (x32 on x86_64).
    pub fn reject_from(self) -> Option<u32> {
        match self {
            Arch::X86_64 => Some(X32_SYSCALL_BIT),
            Arch::Aarch64 => None,
        }
    }

    /// All syscalls of this architecture, sorted by name.
    pub fn syscalls(self) -> &'static [(&'static str, u32)] {
        match self {
            Arch::X86_64 => tables::x86_64::SYSCALLS,
            Arch::Aarch64 => tables::aarch64::SYSCALLS,
        }
    }

    /// All named constants of this architecture, sorted by name.
    pub fn constants(self) -> &'static [(&'static str, u64)] {
        match self {
            Arch::X86_64 => tables::x86_64::CONSTANTS,
            Arch::Aarch64 => tables::aarch64::CONSTANTS,
        }
    }

    /// Number of the syscall called `name`, if this architecture has it.
    pub fn syscall_nr(self, name: &str) -> Option<u32> {
        let t = self.syscalls();
        t.binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| t[i].1)
    }

    /// Name of syscall number `nr`, if any.
    pub fn syscall_name(self, nr: u32) -> Option<&'static str> {
        self.syscalls()
            .iter()
            .find(|(_, n)| *n == nr)
            .map(|(name, _)| *name)
    }

    /// Value of the named constant, if known.
    pub fn constant(self, name: &str) -> Option<u64> {
        let t = self.constants();
        t.binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .map(|i| t[i].1)
    }
}
