//! x86_64 boot state for the 64-bit Linux boot protocol.
//!
//! The vCPUs start directly in long mode (no real-mode code: this host's KVM emulates real
//! mode very slowly), with identity-mapped page tables, a flat GDT, `rsi` pointing at the
//! zero page, and `rip` at the kernel's 64-bit entry point.

pub mod acpi;
pub mod aml;
pub mod cpuid;
pub mod gdt;
pub mod mptable;
pub mod regs;
pub mod zeropage;

/// GDT location in guest memory.
pub const GDT_ADDR: u64 = 0x500;
/// IDT location in guest memory (an empty IDT; the kernel installs its own).
pub const IDT_ADDR: u64 = 0x520;
/// Zero page (struct boot_params) location.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4 location; the PDPT and four page directories follow it.
pub const PML4_ADDR: u64 = 0x9000;
/// Kernel command line location.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Largest command line accepted (bytes, including the NUL).
pub const CMDLINE_MAX: usize = 4096;
/// End of the low (real-mode) RAM reported in the e820 map; the MP table sits just below.
pub const LOW_RAM_END: u64 = 0x9fc00;
/// Start of the high memory where the kernel is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// IOAPIC MMIO base (the in-kernel irqchip's).
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
