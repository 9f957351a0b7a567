//! Minimal ACPI tables: RSDP, XSDT, FADT (+ FACS), MADT and a DSDT.
//!
//! Enough for the Debian cloud kernel (no `CONFIG_X86_MPPARSE`: it finds CPUs and the
//! IOAPIC only through ACPI) to bring up every vCPU, route legacy interrupts through the
//! IOAPIC, find the PCI host bridge, and power off:
//! - **MADT**: one local APIC per vCPU (APIC id = vCPU index), the in-kernel IOAPIC
//!   (GSI base 0, ISA IRQs identity-mapped like KVM's default routing), an interrupt
//!   source override for the SCI (IRQ 9, level, active high) and LINT1 = NMI.
//! - **FADT**: classic (not hardware-reduced) fixed hardware with only a PM1a event and
//!   control block (see [`crate::devices::acpi_pm`]); no SMI command port (already in ACPI
//!   mode), no PM timer, no GPE blocks; a reset register. Hardware-reduced mode was not
//!   chosen: Linux then drops the 8259 and the PIT (`acpi_generic_reduced_hw_init`) and
//!   needs a TSC-deadline LAPIC timer and ACPI-described legacy devices, a larger change to
//!   a boot path that already works with the PIT.
//! - **DSDT**: `\_S5` (sleep type 5 for power-off), `\_SB.PCI0` (PNP0A03, bus 0, the
//!   0xcf8 configuration ports, the I/O and 32-bit MMIO windows) and one `ACPI0007`
//!   processor device per vCPU.
//!
//! The tables live in the BIOS area (0xe0000), which the e820 map reports as reserved;
//! the RSDP is 16-byte aligned there, so Linux finds it by scanning, and its address is
//! also in the zero page (`acpi_rsdp_addr`).

use vm_memory::{Bytes, GuestAddress};

use super::aml;
use super::{IOAPIC_ADDR, LAPIC_ADDR};
use crate::vmm::memory::{GuestMem, MMIO_HOLE_START};

/// Where the RSDP goes (start of the BIOS read-only area, scanned by Linux).
pub const RSDP_ADDR: u64 = 0xe_0000;
/// End of the area the tables may use.
const TABLES_END: u64 = 0x10_0000;

/// First I/O port of the PM1a event block (status, then enable; 2 bytes each).
pub const PM1A_EVT_PORT: u16 = 0x600;
/// PM1a event block length.
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block port (16 bits: SCI_EN, SLP_TYP, SLP_EN).
pub const PM1A_CNT_PORT: u16 = 0x604;
/// PM1a control block length.
pub const PM1_CNT_LEN: u8 = 2;
/// The FADT reset register (one byte).
pub const RESET_PORT: u16 = 0x608;
/// The value the guest writes to [`RESET_PORT`] to reset.
pub const RESET_VALUE: u8 = 1;
/// Sleep type `\_S5` declares; the guest writes it to SLP_TYP to power off.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The SCI interrupt (never raised: there are no ACPI events).
pub const SCI_IRQ: u8 = 9;

const OEM_ID: &[u8; 6] = b"CORDON";
const CREATOR_ID: &[u8; 4] = b"CRDN";

/// Errors while writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the BIOS area.
    #[error("ACPI tables do not fit below {TABLES_END:#x}")]
    TooBig,
    /// The guest memory write failed.
    #[error("cannot write the ACPI tables: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Sum-to-zero checksum byte for `bytes`.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// A system description table: the 36-byte header, then `body`; length and checksum
/// filled in.
fn sdt(signature: &[u8; 4], revision: u8, table_id: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let len = 36 + body.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(signature);
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(revision);
    t.push(0); // checksum, below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(table_id);
    t.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
    t.extend_from_slice(CREATOR_ID);
    t.extend_from_slice(&1u32.to_le_bytes()); // creator revision
    t.extend_from_slice(body);
    t[9] = checksum(&t);
    t
}

/// The IOAPIC's id: after the local APICs (ids 0..ncpus).
pub fn ioapic_id(ncpus: u8) -> u8 {
    ncpus
}

/// The MADT for `ncpus` vCPUs.
pub fn madt(ncpus: u8) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes()); // PCAT_COMPAT: the in-kernel 8259s exist
    for cpu in 0..ncpus {
        // Processor local APIC: processor UID, APIC id, enabled.
        b.extend_from_slice(&[0, 8, cpu, cpu]);
        b.extend_from_slice(&1u32.to_le_bytes());
    }
    // IOAPIC: id, reserved, address, GSI base.
    b.extend_from_slice(&[1, 12, ioapic_id(ncpus), 0]);
    b.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source override: ISA IRQ 9 (SCI) -> GSI 9, level-triggered, active high.
    b.extend_from_slice(&[2, 10, 0, SCI_IRQ]);
    b.extend_from_slice(&u32::from(SCI_IRQ).to_le_bytes());
    b.extend_from_slice(&0x000du16.to_le_bytes());
    // Local APIC NMI: all processors, conforming, LINT1.
    b.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    sdt(b"APIC", 5, b"CRDNMADT", &b)
}

/// A generic address structure for `width` bits of system I/O at `port`.
fn gas_io(port: u16, width: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = width;
    g[3] = 1; // byte access
    g[4..6].copy_from_slice(&port.to_le_bytes());
    g
}

/// The FADT (revision 6) pointing at `dsdt` and `facs`.
pub fn fadt(dsdt: u64, facs: u64) -> Vec<u8> {
    // Body offsets below are table offsets minus the 36-byte header.
    let mut b = vec![0u8; 276 - 36];
    let mut put =
        |off: usize, bytes: &[u8]| b[off - 36..off - 36 + bytes.len()].copy_from_slice(bytes);
    put(36, &(facs as u32).to_le_bytes()); // FIRMWARE_CTRL
    put(40, &(dsdt as u32).to_le_bytes()); // DSDT
    put(46, &u16::from(SCI_IRQ).to_le_bytes()); // SCI_INT
                                                // SMI_CMD 0: no SMM, the platform is always in ACPI mode.
    put(56, &u32::from(PM1A_EVT_PORT).to_le_bytes()); // PM1a_EVT_BLK
    put(64, &u32::from(PM1A_CNT_PORT).to_le_bytes()); // PM1a_CNT_BLK
    put(88, &[PM1_EVT_LEN, PM1_CNT_LEN]); // PM1_EVT_LEN, PM1_CNT_LEN
                                          // P_LVL2/3_LAT > 100 / > 1000: C2 and C3 not supported.
    put(96, &101u16.to_le_bytes());
    put(98, &1001u16.to_le_bytes());
    // IAPC_BOOT_ARCH: legacy devices (serial, RTC), an 8042, no VGA. MSI is supported.
    put(109, &0x0007u16.to_le_bytes());
    // Flags: WBINVD, C1 on all CPUs, no fixed power/sleep buttons, reset register.
    let flags: u32 = 1 | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 10);
    put(112, &flags.to_le_bytes());
    put(116, &gas_io(RESET_PORT, 8));
    put(128, &[RESET_VALUE]);
    put(131, &[5]); // FADT minor version: ACPI 6.5
    put(132, &facs.to_le_bytes()); // X_FIRMWARE_CTRL
    put(140, &dsdt.to_le_bytes()); // X_DSDT
                                   // The X_PM1a blocks stay zero: ACPICA builds them from the 32-bit ones above.
    put(268, b"CORDON\0\0"); // hypervisor vendor identity
    sdt(b"FACP", 6, b"CRDNFACP", &b)
}

/// The FACS (64 bytes, no waking vector: the VM only powers off or resets).
pub fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

/// The DSDT for `ncpus` vCPUs.
pub fn dsdt(ncpus: u8) -> Vec<u8> {
    use aml::res;
    let mut crs = Vec::new();
    crs.extend(res::bus_numbers(0, 0xff));
    crs.extend(res::io_ports(0xcf8, 8));
    crs.extend(res::io_window(0x0000, 0x0cf7));
    crs.extend(res::io_window(0x0d00, 0xffff));
    crs.extend(res::mem32_window(
        MMIO_HOLE_START as u32,
        IOAPIC_ADDR as u32 - 1,
    ));
    crs.extend(res::end());
    let pci = aml::device(
        "PCI0",
        &[
            aml::name_decl("_HID", &aml::eisa_id("PNP0A03")),
            aml::name_decl("_UID", &aml::int(0)),
            aml::name_decl("_SEG", &aml::int(0)),
            aml::name_decl("_BBN", &aml::int(0)),
            aml::name_decl("_CRS", &aml::buffer(&crs)),
        ],
    );
    let mut sb = vec![pci];
    for cpu in 0..ncpus {
        sb.push(aml::device(
            &format!("C{cpu:03X}"),
            &[
                aml::name_decl("_HID", &aml::string("ACPI0007")),
                aml::name_decl("_UID", &aml::int(u64::from(cpu))),
            ],
        ));
    }
    let mut body = aml::name_decl(
        "_S5",
        &aml::package(&[
            aml::int(u64::from(S5_SLEEP_TYPE)),
            aml::int(u64::from(S5_SLEEP_TYPE)),
            aml::int(0),
            aml::int(0),
        ]),
    );
    body.extend(aml::scope("\\_SB", &sb));
    sdt(b"DSDT", 2, b"CRDNDSDT", &body)
}

/// The XSDT listing `tables`.
pub fn xsdt(tables: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = tables.iter().flat_map(|a| a.to_le_bytes()).collect();
    sdt(b"XSDT", 1, b"CRDNXSDT", &body)
}

/// The ACPI 2.0 RSDP pointing at the XSDT.
pub fn rsdp(xsdt: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(36);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum of the first 20 bytes
    r.extend_from_slice(OEM_ID);
    r.push(2); // revision: ACPI 2.0+
    r.extend_from_slice(&0u32.to_le_bytes()); // no RSDT
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.push(0); // extended checksum
    r.extend_from_slice(&[0; 3]);
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// Builds every table for `ncpus` vCPUs, laid out from [`RSDP_ADDR`]: returns
/// (guest address, bytes) pairs.
pub fn build(ncpus: u8) -> Result<Vec<(u64, Vec<u8>)>, AcpiError> {
    let align = |a: u64, to: u64| (a + to - 1) & !(to - 1);
    let mut next = RSDP_ADDR + 64;
    let mut place = |len: usize, to: u64| {
        let at = align(next, to);
        next = at + len as u64;
        at
    };
    let facs_t = facs();
    let facs_at = place(facs_t.len(), 64);
    let dsdt_t = dsdt(ncpus);
    let dsdt_at = place(dsdt_t.len(), 16);
    let fadt_t = fadt(dsdt_at, facs_at);
    let fadt_at = place(fadt_t.len(), 16);
    let madt_t = madt(ncpus);
    let madt_at = place(madt_t.len(), 16);
    let xsdt_t = xsdt(&[fadt_at, madt_at]);
    let xsdt_at = place(xsdt_t.len(), 16);
    if next > TABLES_END {
        return Err(AcpiError::TooBig);
    }
    Ok(vec![
        (RSDP_ADDR, rsdp(xsdt_at)),
        (facs_at, facs_t),
        (dsdt_at, dsdt_t),
        (fadt_at, fadt_t),
        (madt_at, madt_t),
        (xsdt_at, xsdt_t),
    ])
}

/// Writes the tables for `ncpus` vCPUs into guest memory; returns the RSDP address.
pub fn write(mem: &GuestMem, ncpus: u8) -> Result<u64, AcpiError> {
    for (addr, bytes) in build(ncpus)? {
        mem.write_slice(&bytes, GuestAddress(addr))?;
    }
    Ok(RSDP_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn find<'a>(tables: &'a [(u64, Vec<u8>)], sig: &[u8]) -> &'a (u64, Vec<u8>) {
        tables.iter().find(|(_, t)| &t[..4] == sig).unwrap()
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    #[test]
    fn checksums_lengths_and_pointers_are_consistent() {
        for n in [1u8, 2, 32] {
            let t = build(n).unwrap();
            let (at, rsdp) = &t[0];
            assert_eq!(*at, RSDP_ADDR);
            assert_eq!(&rsdp[..8], b"RSD PTR ");
            assert_eq!(sum(&rsdp[..20]), 0);
            assert_eq!(sum(rsdp), 0);
            for (addr, tab) in &t[1..] {
                assert!(*addr + tab.len() as u64 <= TABLES_END);
                if &tab[..4] != b"FACS" {
                    assert_eq!(u32_at(tab, 4) as usize, tab.len());
                    assert_eq!(sum(tab), 0, "{}", String::from_utf8_lossy(&tab[..4]));
                }
            }
            let (xsdt_at, xsdt) = find(&t, b"XSDT");
            assert_eq!(u64_at(rsdp, 24), *xsdt_at);
            let (fadt_at, fadt) = find(&t, b"FACP");
            let (madt_at, _) = find(&t, b"APIC");
            assert_eq!(u64_at(xsdt, 36), *fadt_at);
            assert_eq!(u64_at(xsdt, 44), *madt_at);
            let (dsdt_at, _) = find(&t, b"DSDT");
            assert_eq!(u64_at(fadt, 140), *dsdt_at);
            assert_eq!(u32_at(fadt, 40) as u64, *dsdt_at);
            let (facs_at, _) = find(&t, b"FACS");
            assert_eq!(facs_at % 64, 0);
            assert_eq!(u64_at(fadt, 132), *facs_at);
        }
    }

    #[test]
    fn madt_has_one_enabled_local_apic_per_cpu_and_the_ioapic() {
        let m = madt(4);
        let mut off = 44;
        let (mut lapics, mut ioapics) = (vec![], 0);
        while off < m.len() {
            let (kind, len) = (m[off], m[off + 1] as usize);
            match kind {
                0 => {
                    assert_eq!(u32_at(&m, off + 4) & 1, 1);
                    lapics.push(m[off + 3]);
                }
                1 => {
                    ioapics += 1;
                    assert_eq!(m[off + 2], ioapic_id(4));
                    assert_eq!(u32_at(&m, off + 4) as u64, IOAPIC_ADDR);
                }
                _ => {}
            }
            off += len;
        }
        assert_eq!(off, m.len());
        assert_eq!(lapics, vec![0, 1, 2, 3]);
        assert_eq!(ioapics, 1);
    }

    #[test]
    fn fadt_declares_pm1a_blocks_and_reset_register() {
        let f = fadt(0x1000, 0x2000);
        assert_eq!(f.len(), 276);
        assert_eq!(u32_at(&f, 56), u32::from(PM1A_EVT_PORT));
        assert_eq!(u32_at(&f, 64), u32::from(PM1A_CNT_PORT));
        assert_eq!(f[89], PM1_CNT_LEN);
        assert_ne!(u32_at(&f, 112) & (1 << 10), 0);
        assert_eq!(u32_at(&f, 112) & (1 << 20), 0, "not hardware-reduced");
        assert_eq!(u16::from_le_bytes([f[120], f[121]]), RESET_PORT);
        assert_eq!(f[128], RESET_VALUE);
    }

    #[test]
    fn dsdt_declares_s5_pci_root_and_cpus() {
        let d = dsdt(2);
        let has = |needle: &[u8]| d.windows(needle.len()).any(|w| w == needle);
        assert!(has(&[b'_', b'S', b'5', b'_', 0x12]));
        assert!(has(b"PCI0"));
        assert!(has(&aml::eisa_id("PNP0A03")));
        assert!(has(b"C000") && has(b"C001") && !has(b"C002"));
        assert!(has(b"ACPI0007\0"));
    }
}
