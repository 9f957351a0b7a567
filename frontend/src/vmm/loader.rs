//! Direct kernel boot: loads a bzImage or an uncompressed vmlinux ELF, the command line and
//! the initrd, and fills the zero page. Returns the 64-bit entry point.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::XLF_KERNEL_64;
use linux_loader::loader::{bzimage::BzImage, elf::Elf, load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::memory::{GuestMem, MMIO_HOLE_START};
use crate::arch::x86_64::zeropage::{self, Initrd};
use crate::arch::x86_64::{CMDLINE_ADDR, CMDLINE_MAX, HIMEM_START};

/// Errors while loading the guest's kernel, initrd or command line.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel file cannot be opened or read.
    #[error("--kernel {0}: {1}")]
    KernelFile(PathBuf, std::io::Error),
    /// The kernel is neither a usable bzImage nor an ELF vmlinux.
    #[error(
        "--kernel {0}: not a loadable kernel (expected a bzImage or an x86_64 vmlinux ELF): {1}"
    )]
    KernelFormat(PathBuf, String),
    /// The bzImage has no 64-bit entry point.
    #[error("--kernel {0}: this bzImage has no 64-bit entry point (XLF_KERNEL_64)")]
    No64BitEntry(PathBuf),
    /// The initrd file cannot be opened or read.
    #[error("--initrd {0}: {1}")]
    InitrdFile(PathBuf, std::io::Error),
    /// The initrd does not fit in guest memory.
    #[error("--initrd {0}: {1} bytes do not fit in guest memory below {2:#x} (raise --mem)")]
    InitrdTooBig(PathBuf, u64, u64),
    /// The command line is invalid or too long.
    #[error("--params: {0}")]
    Cmdline(String),
    /// Writing into guest memory failed.
    #[error("cannot write boot data into guest memory: {0}")]
    Memory(String),
}

/// What the vCPU needs after loading.
#[derive(Clone, Copy, Debug)]
pub struct Loaded {
    /// 64-bit entry point (guest physical).
    pub entry: u64,
    /// Where the initrd went, if any.
    pub initrd: Option<Initrd>,
}

fn is_elf(f: &mut File) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    f.seek(SeekFrom::Start(0))?;
    let n = f.read(&mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(n == 4 && magic == *b"\x7fELF")
}

/// Loads everything needed for a direct boot into `mem` and writes the zero page.
pub fn load(
    mem: &GuestMem,
    mem_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    params: &str,
) -> Result<Loaded, LoaderError> {
    let kpath = || kernel.to_path_buf();
    let mut kfile = File::open(kernel).map_err(|e| LoaderError::KernelFile(kpath(), e))?;
    let elf = is_elf(&mut kfile).map_err(|e| LoaderError::KernelFile(kpath(), e))?;
    let (entry, hdr, kernel_end) = if elf {
        let r = Elf::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| LoaderError::KernelFormat(kpath(), e.to_string()))?;
        (r.kernel_load.0, None, r.kernel_end)
    } else {
        let r = BzImage::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START)))
            .map_err(|e| LoaderError::KernelFormat(kpath(), e.to_string()))?;
        let hdr = r
            .setup_header
            .ok_or_else(|| LoaderError::KernelFormat(kpath(), "no setup header".into()))?;
        if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LoaderError::No64BitEntry(kpath()));
        }
        // The 64-bit entry sits 0x200 bytes into the protected-mode kernel.
        (r.kernel_load.0 + 0x200, Some(hdr), r.kernel_end)
    };

    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(|e| LoaderError::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(params)
        .map_err(|e| LoaderError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmdline)
        .map_err(|e| LoaderError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| LoaderError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();

    let initrd = match initrd {
        None => None,
        Some(p) => Some(load_initrd(
            mem,
            mem_size,
            p,
            hdr.map(|h| h.initrd_addr_max),
            kernel_end,
        )?),
    };
    zeropage::write(mem, mem_size, hdr, cmdline_len, initrd)
        .map_err(|e| LoaderError::Memory(e.to_string()))?;
    Ok(Loaded { entry, initrd })
}

fn load_initrd(
    mem: &GuestMem,
    mem_size: u64,
    path: &Path,
    addr_max: Option<u32>,
    kernel_end: u64,
) -> Result<Initrd, LoaderError> {
    let ipath = || path.to_path_buf();
    let mut f = File::open(path).map_err(|e| LoaderError::InitrdFile(ipath(), e))?;
    let mut data = Vec::new();
    f.read_to_end(&mut data)
        .map_err(|e| LoaderError::InitrdFile(ipath(), e))?;
    let size = data.len() as u64;
    // Highest page-aligned spot below the end of low RAM and the kernel's initrd_addr_max.
    let max = u64::from(addr_max.unwrap_or(0x37ff_ffff));
    let top = mem_size.min(MMIO_HOLE_START).min(max + 1);
    let addr = top.checked_sub(size).map(|a| a & !0xfff);
    let addr = match addr {
        Some(a) if a >= kernel_end.max(HIMEM_START) && mem.address_in_range(GuestAddress(a)) => a,
        _ => return Err(LoaderError::InitrdTooBig(ipath(), size, top)),
    };
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(|e| LoaderError::Memory(e.to_string()))?;
    Ok(Initrd { addr, size })
}
