//! Classic BPF instructions and programs, in the kernel's `struct sock_filter` layout.

use std::fmt;

/// One classic BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockFilter {
    /// Opcode.
    pub code: u16,
    /// Jump offset when the condition holds.
    pub jt: u8,
    /// Jump offset when the condition does not hold.
    pub jf: u8,
    /// Generic operand.
    pub k: u32,
}

impl SockFilter {
    /// A non-jump instruction.
    pub const fn stmt(code: u16, k: u32) -> Self {
        SockFilter {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }
    /// A conditional jump.
    pub const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Self {
        SockFilter { code, jt, jf, k }
    }
}

/// Instruction class: load into A.
pub const BPF_LD: u16 = 0x00;
/// Instruction class: load into X.
pub const BPF_LDX: u16 = 0x01;
/// Instruction class: store A.
pub const BPF_ST: u16 = 0x02;
/// Instruction class: store X.
pub const BPF_STX: u16 = 0x03;
/// Instruction class: arithmetic.
pub const BPF_ALU: u16 = 0x04;
/// Instruction class: jumps.
pub const BPF_JMP: u16 = 0x05;
/// Instruction class: return.
pub const BPF_RET: u16 = 0x06;
/// Instruction class: register transfers.
pub const BPF_MISC: u16 = 0x07;
/// Size: 32-bit word.
pub const BPF_W: u16 = 0x00;
/// Size: 16-bit half word.
pub const BPF_H: u16 = 0x08;
/// Size: byte.
pub const BPF_B: u16 = 0x10;
/// Mode: immediate.
pub const BPF_IMM: u16 = 0x00;
/// Mode: absolute offset into the data.
pub const BPF_ABS: u16 = 0x20;
/// Mode: X-relative offset into the data.
pub const BPF_IND: u16 = 0x40;
/// Mode: scratch memory.
pub const BPF_MEM: u16 = 0x60;
/// Mode: data length.
pub const BPF_LEN: u16 = 0x80;
/// ALU op: add.
pub const BPF_ADD: u16 = 0x00;
/// ALU op: subtract.
pub const BPF_SUB: u16 = 0x10;
/// ALU op: multiply.
pub const BPF_MUL: u16 = 0x20;
/// ALU op: divide.
pub const BPF_DIV: u16 = 0x30;
/// ALU op: or.
pub const BPF_OR: u16 = 0x40;
/// ALU op: and.
pub const BPF_AND: u16 = 0x50;
/// ALU op: left shift.
pub const BPF_LSH: u16 = 0x60;
/// ALU op: right shift.
pub const BPF_RSH: u16 = 0x70;
/// ALU op: negate.
pub const BPF_NEG: u16 = 0x80;
/// ALU op: modulo.
pub const BPF_MOD: u16 = 0x90;
/// ALU op: xor.
pub const BPF_XOR: u16 = 0xa0;
/// Jump: always.
pub const BPF_JA: u16 = 0x00;
/// Jump: equal.
pub const BPF_JEQ: u16 = 0x10;
/// Jump: greater than (unsigned).
pub const BPF_JGT: u16 = 0x20;
/// Jump: greater or equal (unsigned).
pub const BPF_JGE: u16 = 0x30;
/// Jump: any bit set.
pub const BPF_JSET: u16 = 0x40;
/// Source: the constant `k`.
pub const BPF_K: u16 = 0x00;
/// Source: register X.
pub const BPF_X: u16 = 0x08;
/// Return source: register A.
pub const BPF_A: u16 = 0x10;
/// Misc: A -> X.
pub const BPF_TAX: u16 = 0x00;
/// Misc: X -> A.
pub const BPF_TXA: u16 = 0x80;
/// Longest program the kernel accepts.
pub const BPF_MAXINSNS: usize = 4096;

/// `SECCOMP_RET_KILL_PROCESS`.
pub const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
/// `SECCOMP_RET_KILL_THREAD`.
pub const SECCOMP_RET_KILL_THREAD: u32 = 0x0000_0000;
/// `SECCOMP_RET_TRAP`.
pub const SECCOMP_RET_TRAP: u32 = 0x0003_0000;
/// `SECCOMP_RET_ERRNO`.
pub const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// `SECCOMP_RET_USER_NOTIF`.
pub const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// `SECCOMP_RET_TRACE`.
pub const SECCOMP_RET_TRACE: u32 = 0x7ff0_0000;
/// `SECCOMP_RET_LOG`.
pub const SECCOMP_RET_LOG: u32 = 0x7ffc_0000;
/// `SECCOMP_RET_ALLOW`.
pub const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// Mask of the action part of a return value.
pub const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
/// Mask of the data part of a return value.
pub const SECCOMP_RET_DATA: u32 = 0x0000_ffff;

/// Offset of `seccomp_data.nr`.
pub const SECCOMP_DATA_NR: u32 = 0;
/// Offset of `seccomp_data.arch`.
pub const SECCOMP_DATA_ARCH: u32 = 4;
/// Offset of `seccomp_data.instruction_pointer`.
pub const SECCOMP_DATA_IP: u32 = 8;
/// Offset of `seccomp_data.args[0]`.
pub const SECCOMP_DATA_ARGS: u32 = 16;
/// Size of `struct seccomp_data`.
pub const SECCOMP_DATA_LEN: u32 = 64;

/// Offset of the low 32 bits of argument `i` (both supported architectures are little endian).
pub const fn arg_lo(i: u8) -> u32 {
    SECCOMP_DATA_ARGS + 8 * i as u32
}
/// Offset of the high 32 bits of argument `i`.
pub const fn arg_hi(i: u8) -> u32 {
    arg_lo(i) + 4
}

/// A compiled seccomp filter.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BpfProgram {
    insns: Vec<SockFilter>,
}

/// Error from [`BpfProgram::from_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BpfFormatError {
    /// The length is not a multiple of 8 bytes.
    BadLength(usize),
    /// The program is empty or longer than [`BPF_MAXINSNS`].
    BadSize(usize),
}

impl fmt::Display for BpfFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BpfFormatError::BadLength(n) => {
                write!(
                    f,
                    "BPF file is {n} bytes, not a multiple of 8 (struct sock_filter)"
                )
            }
            BpfFormatError::BadSize(n) => write!(
                f,
                "BPF program has {n} instructions; it must have 1 to {BPF_MAXINSNS}"
            ),
        }
    }
}

impl std::error::Error for BpfFormatError {}

impl BpfProgram {
    /// Wraps instructions.
    pub fn new(insns: Vec<SockFilter>) -> Self {
        BpfProgram { insns }
    }

    /// The instructions.
    pub fn instructions(&self) -> &[SockFilter] {
        &self.insns
    }

    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.insns.len()
    }

    /// True if the program has no instruction.
    pub fn is_empty(&self) -> bool {
        self.insns.is_empty()
    }

    /// Serializes to the `.bpf` file format (array of little-endian `struct sock_filter`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.insns.len() * 8);
        for i in &self.insns {
            out.extend_from_slice(&i.code.to_le_bytes());
            out.push(i.jt);
            out.push(i.jf);
            out.extend_from_slice(&i.k.to_le_bytes());
        }
        out
    }

    /// Parses the `.bpf` file format.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BpfFormatError> {
        if !bytes.len().is_multiple_of(8) {
            return Err(BpfFormatError::BadLength(bytes.len()));
        }
        let n = bytes.len() / 8;
        if n == 0 || n > BPF_MAXINSNS {
            return Err(BpfFormatError::BadSize(n));
        }
        let insns = bytes
            .chunks_exact(8)
            .map(|c| SockFilter {
                code: u16::from_le_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(BpfProgram { insns })
    }
}
