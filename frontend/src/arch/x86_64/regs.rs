//! vCPU register state for a 64-bit entry: page tables, GDT/IDT, control registers,
//! general registers, FPU, boot MSRs and the local APIC's LINT pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::gdt::{self, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use super::{BOOT_STACK, GDT_ADDR, IDT_ADDR, PML4_ADDR, ZERO_PAGE_ADDR};
use crate::vmm::memory::GuestMem;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Errors while setting vCPU state.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing boot structures into guest memory failed.
    #[error("cannot write boot page tables/GDT into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// A KVM vCPU ioctl failed.
    #[error("{0} failed: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |e| RegsError::Kvm(what, e)
}

/// Writes identity-mapped page tables covering the first 4 GiB (2 MiB pages), the GDT and
/// an empty IDT into guest memory. Done once per VM.
pub fn write_boot_tables(mem: &GuestMem) -> Result<(), RegsError> {
    let pdpt = PML4_ADDR + 0x1000;
    let pd = PML4_ADDR + 0x2000;
    mem.write_obj(pdpt | 3, GuestAddress(PML4_ADDR))?;
    for i in 0..4u64 {
        mem.write_obj((pd + i * 0x1000) | 3, GuestAddress(pdpt + i * 8))?;
    }
    for i in 0..(4 * 512u64) {
        // Present | writable | page size (2 MiB).
        mem.write_obj((i << 21) | 0x83, GuestAddress(pd + i * 8))?;
    }
    for (i, d) in gdt::boot_gdt().iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))?;
    Ok(())
}

/// Loads long-mode segment and control registers into `vcpu`.
pub fn setup_sregs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut s = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let table = gdt::boot_gdt();
    let code = gdt::segment(table[2], CODE_SELECTOR);
    let data = gdt::segment(table[3], DATA_SELECTOR);
    let tss = gdt::segment(table[4], TSS_SELECTOR);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (table.len() * 8 - 1) as u16;
    s.idt.base = IDT_ADDR;
    s.idt.limit = 7;
    s.cs = code;
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = tss;
    s.cr3 = PML4_ADDR;
    s.cr4 |= CR4_PAE;
    s.cr0 |= CR0_PE | CR0_PG | CR0_ET;
    s.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&s).map_err(kvm("KVM_SET_SREGS"))
}

/// Sets the general registers for the 64-bit boot protocol: `rip` at `entry`, `rsi` at the
/// zero page.
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE_ADDR,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

/// Default x87/SSE control state.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

/// MSR values a freshly reset CPU would have after firmware, as Linux expects them.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let e = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(0x174, 0),       // IA32_SYSENTER_CS
        e(0x175, 0),       // IA32_SYSENTER_ESP
        e(0x176, 0),       // IA32_SYSENTER_EIP
        e(0xc000_0081, 0), // STAR
        e(0xc000_0082, 0), // LSTAR
        e(0xc000_0083, 0), // CSTAR
        e(0xc000_0084, 0), // SYSCALL_MASK
        e(0xc000_0102, 0), // KERNEL_GS_BASE
        e(0x10, 0),        // TSC
        // IA32_MISC_ENABLE: fast string operations, as firmware leaves it.
        e(0x1a0, 1),
        // MTRRdefType: MTRRs enabled, default type write-back. Without it Linux maps all
        // of RAM uncached and boots many times slower.
        e(0x2ff, (1 << 11) | 6),
    ]
}

/// Writes [`boot_msrs`] into `vcpu`.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(|_| {
        RegsError::Kvm(
            "building the MSR list",
            kvm_ioctls::Error::new(libc::EINVAL),
        )
    })?;
    let n = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if n != entries.len() {
        // Which one failed: entries are applied in order, so it is entry n.
        log::warn!(
            "KVM accepted only {n} of {} boot MSRs (first refused: {:#x})",
            entries.len(),
            entries[n].index
        );
    }
    Ok(())
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Wires LINT0 as ExtINT (the 8259 PIC's output) and LINT1 as NMI, as the MP spec's
/// virtual-wire mode does, so legacy interrupts reach the boot CPU.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    for (off, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: Vec<u8> = lapic.regs[off..off + 4].iter().map(|b| *b as u8).collect();
        let v = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let nv = set_delivery_mode(v, mode).to_le_bytes();
        for (i, b) in nv.iter().enumerate() {
            lapic.regs[off + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::memory::create_guest_memory;

    #[test]
    fn page_tables_identity_map_4g() {
        let mem = create_guest_memory(32).unwrap();
        write_boot_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, (PML4_ADDR + 0x1000) | 3);
        let last_pde: u64 = mem
            .read_obj(GuestAddress(PML4_ADDR + 0x2000 + (2047 * 8)))
            .unwrap();
        assert_eq!(last_pde, (2047u64 << 21) | 0x83);
    }

    #[test]
    fn delivery_mode_bits() {
        assert_eq!(
            set_delivery_mode(0x0001_0000, APIC_MODE_EXTINT),
            0x0001_0700
        );
        assert_eq!(set_delivery_mode(0x700, APIC_MODE_NMI), 0x400);
    }
}
