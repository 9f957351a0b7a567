//! A userspace classic-BPF interpreter with the kernel's seccomp semantics, used by
//! `cordon seccomp simulate`, statistics and the property tests.

use crate::bpf::*;
use std::fmt;

/// The input of a seccomp filter (`struct seccomp_data`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeccompData {
    /// Syscall number.
    pub nr: u32,
    /// `AUDIT_ARCH_*` value.
    pub arch: u32,
    /// Instruction pointer.
    pub ip: u64,
    /// Syscall arguments.
    pub args: [u64; 6],
}

impl SeccompData {
    fn word(&self, off: u32) -> Option<u32> {
        if !off.is_multiple_of(4) || off >= SECCOMP_DATA_LEN {
            return None;
        }
        Some(match off {
            0 => self.nr,
            4 => self.arch,
            8 => self.ip as u32,
            12 => (self.ip >> 32) as u32,
            _ => {
                let a = self.args[((off - 16) / 8) as usize];
                if off.is_multiple_of(8) {
                    a as u32
                } else {
                    (a >> 32) as u32
                }
            }
        })
    }
}

/// Result of running a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The returned `SECCOMP_RET_*` value.
    pub ret: u32,
    /// Instructions executed, including the `ret`.
    pub executed: usize,
}

/// A program the kernel would reject or that misbehaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterpError {
    /// Jump or fall-through past the end.
    OutOfBounds(usize),
    /// Unsupported or invalid instruction.
    BadInstruction(usize, u16),
    /// Load outside `seccomp_data` or misaligned.
    BadLoad(usize, u32),
}

impl fmt::Display for InterpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterpError::OutOfBounds(pc) => write!(f, "instruction {pc}: runs past the end"),
            InterpError::BadInstruction(pc, c) => {
                write!(f, "instruction {pc}: invalid opcode {c:#06x}")
            }
            InterpError::BadLoad(pc, k) => write!(f, "instruction {pc}: invalid load at {k}"),
        }
    }
}

impl std::error::Error for InterpError {}

/// Runs `prog` on `data`.
pub fn run(prog: &[SockFilter], data: &SeccompData) -> Result<Outcome, InterpError> {
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    let mut executed = 0usize;
    loop {
        let ins = *prog.get(pc).ok_or(InterpError::OutOfBounds(pc))?;
        executed += 1;
        let k = ins.k;
        let bad = InterpError::BadInstruction(pc, ins.code);
        let src = if ins.code & BPF_X != 0 { x } else { k };
        match ins.code & 0x07 {
            BPF_LD | BPF_LDX => {
                let v = match ins.code & 0xe0 {
                    BPF_ABS if ins.code & 0x18 == BPF_W => {
                        data.word(k).ok_or(InterpError::BadLoad(pc, k))?
                    }
                    BPF_IMM => k,
                    BPF_MEM => *mem.get(k as usize).ok_or(bad)?,
                    BPF_LEN => SECCOMP_DATA_LEN,
                    _ => return Err(bad),
                };
                if ins.code & 0x07 == BPF_LD {
                    a = v
                } else {
                    x = v
                }
            }
            BPF_ST => *mem.get_mut(k as usize).ok_or(bad)? = a,
            BPF_STX => *mem.get_mut(k as usize).ok_or(bad)? = x,
            BPF_ALU => {
                a = match ins.code & 0xf0 {
                    BPF_ADD => a.wrapping_add(src),
                    BPF_SUB => a.wrapping_sub(src),
                    BPF_MUL => a.wrapping_mul(src),
                    BPF_DIV => {
                        if src == 0 {
                            return Ok(Outcome { ret: 0, executed });
                        }
                        a / src
                    }
                    BPF_MOD => {
                        if src == 0 {
                            return Ok(Outcome { ret: 0, executed });
                        }
                        a % src
                    }
                    BPF_OR => a | src,
                    BPF_AND => a & src,
                    BPF_XOR => a ^ src,
                    BPF_LSH => a.checked_shl(src).unwrap_or(0),
                    BPF_RSH => a.checked_shr(src).unwrap_or(0),
                    BPF_NEG => a.wrapping_neg(),
                    _ => return Err(bad),
                }
            }
            BPF_JMP => {
                let off = match ins.code & 0xf0 {
                    BPF_JA => k as usize,
                    op => {
                        let c = match op {
                            BPF_JEQ => a == src,
                            BPF_JGT => a > src,
                            BPF_JGE => a >= src,
                            BPF_JSET => a & src != 0,
                            _ => return Err(bad),
                        };
                        if c {
                            ins.jt as usize
                        } else {
                            ins.jf as usize
                        }
                    }
                };
                pc = pc.checked_add(off).ok_or(InterpError::OutOfBounds(pc))?;
            }
            BPF_RET => {
                let ret = match ins.code & 0x18 {
                    BPF_K => k,
                    BPF_A => a,
                    _ => return Err(bad),
                };
                return Ok(Outcome { ret, executed });
            }
            _ => {
                // BPF_MISC
                match ins.code & 0xf8 {
                    BPF_TAX => x = a,
                    BPF_TXA => a = x,
                    _ => return Err(bad),
                }
            }
        }
        pc += 1;
    }
}
