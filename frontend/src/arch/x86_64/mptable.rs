//! Intel MultiProcessor Specification 1.4 table: tells a kernel without ACPI how many
//! CPUs there are and where the IOAPIC is (virtual-wire mode, ISA IRQs 0-23 on the IOAPIC).

use vm_memory::{Bytes, GuestAddress};

use super::{IOAPIC_ADDR, LAPIC_ADDR, LOW_RAM_END};
use crate::vmm::memory::GuestMem;

/// Largest vCPU count whose MP table fits in the last KiB of base memory.
pub const MAX_CPUS: u8 = 32;
/// Number of IOAPIC pins wired to ISA IRQs.
const IOAPIC_PINS: u8 = 24;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// Too many CPUs for the table.
    #[error("--cpus {0} is out of range (accepted: 1..={MAX_CPUS})")]
    TooManyCpus(u8),
    /// The guest memory write failed.
    #[error("cannot write the MP table: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the table bytes for `ncpus` CPUs, to be placed at guest address `base`.
pub fn build(ncpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if ncpus == 0 || ncpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus(ncpus));
    }
    let ioapic_id = ncpus + 1;
    let mut entries = Vec::new();
    let mut count = 0u16;
    for cpu in 0..ncpus {
        entries.push(0u8); // processor entry
        entries.push(cpu); // local APIC id
        entries.push(0x14); // local APIC version
        entries.push(if cpu == 0 { 3 } else { 1 }); // enabled (+ BSP)
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0, b'I', b'S', b'A', b' ', b' ', b' ']); // bus 0: ISA
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, 0x11, 1]); // IOAPIC, enabled
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS {
        // I/O interrupt: INT, conforming polarity/trigger, ISA bus IRQ -> IOAPIC pin.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: LINT0 = ExtINT, LINT1 = NMI, to all local APICs.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"CORDON  ");
    header.extend_from_slice(b"000000000000");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&[0u8; 4]); // extended table length/checksum, reserved
    header.extend_from_slice(&entries);
    header[7] = checksum(&header);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&((base + 16) as u32).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&header);
    Ok(fp)
}

/// Writes the MP table for `ncpus` CPUs into the last KiB of base memory.
pub fn write(mem: &GuestMem, ncpus: u8) -> Result<(), MpTableError> {
    let bytes = build(ncpus, LOW_RAM_END)?;
    mem.write_slice(&bytes, GuestAddress(LOW_RAM_END))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_zero_and_table_fits() {
        for n in [1u8, 2, MAX_CPUS] {
            let t = build(n, LOW_RAM_END).unwrap();
            assert!(t.len() <= 1024, "{n} cpus: {} bytes", t.len());
            assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
            assert_eq!(&t[16..20], b"PCMP");
            let len = u16::from_le_bytes([t[20], t[21]]) as usize;
            assert_eq!(len, t.len() - 16);
            assert_eq!(t[16..].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        }
    }

    #[test]
    fn cpu_count_is_checked() {
        assert!(build(0, 0).is_err());
        assert!(build(MAX_CPUS + 1, 0).is_err());
    }
}
