//! A flat GDT for the 64-bit boot protocol, and the matching KVM segment descriptors.

use kvm_bindings::kvm_segment;

/// Selector of the 64-bit code segment (`__BOOT_CS` in the Linux boot protocol).
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the data segment (`__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the TSS.
pub const TSS_SELECTOR: u16 = 0x20;

/// Builds one GDT descriptor from access/flags bits (`0xF0FF` layout), base and limit.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
        | ((limit & 0xf_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

/// The boot GDT: null, null, code64 (0x10), data (0x18), TSS (0x20).
pub fn boot_gdt() -> [u64; 5] {
    [
        0,
        0,
        entry(0xa09b, 0, 0xfffff),
        entry(0xc093, 0, 0xfffff),
        entry(0x808b, 0, 0xfffff),
    ]
}

/// Decodes a GDT descriptor into the segment KVM loads for `selector`.
pub fn segment(descriptor: u64, selector: u16) -> kvm_segment {
    let g = ((descriptor >> 55) & 1) as u8;
    let raw_limit = ((descriptor & 0xffff) | ((descriptor >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((descriptor >> 16) & 0xff_ffff) | ((descriptor >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((descriptor >> 40) & 0xf) as u8,
        present: ((descriptor >> 47) & 1) as u8,
        dpl: ((descriptor >> 45) & 3) as u8,
        db: ((descriptor >> 54) & 1) as u8,
        s: ((descriptor >> 44) & 1) as u8,
        l: ((descriptor >> 53) & 1) as u8,
        g,
        avl: ((descriptor >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_long_mode() {
        let gdt = boot_gdt();
        let cs = segment(gdt[2], CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.type_), (1, 0, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(gdt[3], DATA_SELECTOR);
        assert_eq!((ds.l, ds.db, ds.type_), (0, 1, 3));
        let tss = segment(gdt[4], TSS_SELECTOR);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
    }

    #[test]
    fn descriptor_round_trips_base_and_limit() {
        let d = entry(0x4093, 0x1234_5678, 0xabcde);
        let s = segment(d, 0x8);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcde);
    }
}
