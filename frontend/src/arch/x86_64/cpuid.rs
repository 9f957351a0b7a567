//! CPUID as the guest sees it: KVM's supported set, filtered per vCPU.
//!
//! Every change below says why. The host here is itself nested (PVM or KVM inside QEMU
//! TCG), so features that the nested hypervisor advertises but cannot back are removed.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Leaf 1 ECX bit 31: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX bit 24: the local APIC timer has a TSC-deadline mode.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 EDX bit 28: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Leaf 0x8000_0007 EDX bit 8: invariant TSC.
const EDX_INVTSC: u32 = 1 << 8;
/// Leaf 7 EDX bit 29: IA32_ARCH_CAPABILITIES MSR present.
const EDX_ARCH_CAPABILITIES: u32 = 1 << 29;

/// What the host's KVM offers beyond its supported CPUID list.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCaps {
    /// KVM_CAP_TSC_DEADLINE_TIMER: the in-kernel LAPIC emulates TSC-deadline mode.
    pub tsc_deadline: bool,
}

fn fix_entry(e: &mut kvm_cpuid_entry2, cpu: u8, ncpus: u8, caps: HostCaps) {
    match e.function {
        0x1 => {
            // Initial APIC id, logical processor count and CLFLUSH line size (8 * 8 bytes):
            // KVM reports the host's; the guest must see its own topology.
            e.ebx = (u32::from(cpu) << 24) | (u32::from(ncpus) << 16) | (8 << 8);
            // Tell the kernel it runs under a hypervisor, so it uses kvmclock and PV hints.
            e.ecx |= ECX_HYPERVISOR;
            // TSC-deadline LAPIC timer: KVM emulates it in software (an hrtimer) but does not
            // list it in KVM_GET_SUPPORTED_CPUID; VMMs add it when the capability is there
            // (QEMU, Firecracker do). Linux then programs timer events as TSC deadlines and
            // skips calibrating the LAPIC timer against the PIT, which on this nested host
            // (PIT and TSC both emulated under TCG) is a measurement of noise.
            if caps.tsc_deadline {
                e.ecx |= ECX_TSC_DEADLINE;
            }
            if ncpus > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        0x7 if e.index == 0 => {
            // IA32_ARCH_CAPABILITIES (MSR 0x10a) is refused by this nested host
            // (QEMU's `-cpu host` fails on it here), so do not advertise it.
            e.edx &= !EDX_ARCH_CAPABILITIES;
        }
        0x8000_0007 => {
            // Invariant TSC: with it, Linux prefers the raw TSC over kvmclock. On a nested
            // host (KVM inside QEMU TCG, or PVM) the TSC the guest sees is not steady; the
            // guest's clock then froze for seconds and boots hung after init. kvmclock
            // corrects for this, so keep it the clocksource (QEMU hides invtsc by default
            // for the same reason: it is not migratable).
            e.edx &= !EDX_INVTSC;
        }
        0xa => {
            // No virtual PMU: the nested host cannot back performance counters reliably,
            // and a guest probing them only gets #GP noise.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0xb | 0x1f => {
            // x2APIC topology: one thread per core, `ncpus` cores, id = vCPU index.
            // Level 0 is SMT (shift 0, 1 thread), level 1 is core (shift covers ncpus).
            let core_shift = 32 - u32::from(ncpus.max(1) - 1).leading_zeros();
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = core_shift;
                    e.ebx = u32::from(ncpus);
                    e.ecx = (2 << 8) | 1;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
            e.edx = u32::from(cpu);
        }
        _ => {}
    }
}

/// Applies the per-vCPU filter to every entry of `cpuid`.
pub fn filter(cpuid: &mut CpuId, cpu: u8, ncpus: u8, caps: HostCaps) {
    for e in cpuid.as_mut_slice() {
        fix_entry(e, cpu, ncpus, caps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_reports_our_apic_id_and_hypervisor() {
        let mut e = entry(1, 0);
        fix_entry(&mut e, 3, 4, HostCaps::default());
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        let mut e = entry(1, 0);
        fix_entry(&mut e, 0, 1, HostCaps::default());
        assert_eq!(e.edx & EDX_HTT, 0);
    }

    #[test]
    fn arch_capabilities_and_pmu_are_hidden() {
        let mut e = entry(7, 0);
        fix_entry(&mut e, 0, 1, HostCaps::default());
        assert_eq!(e.edx & EDX_ARCH_CAPABILITIES, 0);
        let mut e = entry(0xa, 0);
        fix_entry(&mut e, 0, 1, HostCaps::default());
        assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0));
    }

    #[test]
    fn tsc_deadline_follows_the_host_capability() {
        let mut e = entry(1, 0);
        e.ecx = 0;
        fix_entry(&mut e, 0, 1, HostCaps::default());
        assert_eq!(e.ecx & ECX_TSC_DEADLINE, 0);
        fix_entry(&mut e, 0, 1, HostCaps { tsc_deadline: true });
        assert_ne!(e.ecx & ECX_TSC_DEADLINE, 0);
    }

    #[test]
    fn invariant_tsc_is_hidden() {
        let mut e = entry(0x8000_0007, 0);
        fix_entry(&mut e, 0, 1, HostCaps::default());
        assert_eq!(e.edx & EDX_INVTSC, 0);
    }

    #[test]
    fn topology_leaf_gives_x2apic_id() {
        let mut e = entry(0xb, 1);
        fix_entry(&mut e, 2, 4, HostCaps::default());
        assert_eq!((e.eax, e.ebx, e.edx), (2, 4, 2));
    }
}
