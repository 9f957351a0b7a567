//! The zero page (`struct boot_params`): setup header, command line, initrd and e820 map.

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{Bytes, GuestAddress};

use super::acpi::RSDP_ADDR;
use super::{CMDLINE_ADDR, HIMEM_START, LOW_RAM_END, ZERO_PAGE_ADDR};
use crate::vmm::memory::{ram_ranges, GuestMem};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_FLAG: u16 = 0xaa55;
const LOADER_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGN: u32 = 0x0100_0000;

/// Where the initrd went.
#[derive(Clone, Copy, Debug)]
pub struct Initrd {
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// The e820 map for `mem_size` bytes of RAM: base memory, the reserved BIOS area (where
/// the MP table lives), then RAM from 1 MiB, skipping the MMIO hole.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: LOW_RAM_END,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: LOW_RAM_END,
            size: HIMEM_START - LOW_RAM_END,
            r#type: E820_RESERVED,
        },
    ];
    for (start, len) in ram_ranges(mem_size) {
        let start = start.0.max(HIMEM_START);
        let end = if start == HIMEM_START && len < HIMEM_START {
            continue;
        } else if start == HIMEM_START {
            len
        } else {
            start + len
        };
        map.push(boot_e820_entry {
            addr: start,
            size: end - start,
            r#type: E820_RAM,
        });
    }
    map
}

/// Fills and writes the zero page. `hdr` is the kernel's setup header (bzImage) or `None`
/// for an ELF kernel, for which a minimal header is made.
pub fn write(
    mem: &GuestMem,
    mem_size: u64,
    hdr: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<Initrd>,
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut params = boot_params::default();
    let mut hdr = hdr.unwrap_or(setup_header {
        header: HDR_MAGIC,
        boot_flag: BOOT_FLAG,
        kernel_alignment: KERNEL_ALIGN,
        ..Default::default()
    });
    hdr.type_of_loader = LOADER_UNDEFINED;
    hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    hdr.cmdline_size = cmdline_len as u32;
    if let Some(i) = initrd {
        hdr.ramdisk_image = i.addr as u32;
        hdr.ramdisk_size = i.size as u32;
    }
    params.hdr = hdr;
    params.acpi_rsdp_addr = RSDP_ADDR;
    let map = e820_map(mem_size);
    for (i, e) in map.iter().enumerate() {
        params.e820_table[i] = *e;
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_above_1m_and_skips_hole() {
        let m = e820_map(256 << 20);
        assert_eq!(m.len(), 3);
        let (a, sz) = (m[2].addr, m[2].size);
        assert_eq!((a, sz), (HIMEM_START, (256 << 20) - HIMEM_START));
        let m = e820_map(4 << 30);
        assert_eq!(m.len(), 4);
        let (a3, a2, s2) = (m[3].addr, m[2].addr, m[2].size);
        assert_eq!(a3, 1 << 32);
        assert_eq!(a2 + s2, crate::vmm::memory::MMIO_HOLE_START);
    }
}
