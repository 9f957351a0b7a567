//! Replays the kernel's constant-action bitmap rule (`seccomp_is_const_allow`, Linux 5.11+):
//! a syscall's verdict is cached only if the filter, run with just `nr` and `arch` known,
//! reaches `ret SECCOMP_RET_ALLOW` without loading anything else.

use crate::arch::Arch;
use crate::bpf::*;

/// True if the kernel would cache "allow" for syscall `nr` on `arch` under this filter.
pub fn is_const_allow(prog: &[SockFilter], arch: Arch, nr: u32) -> bool {
    let mut reg: u32 = 0;
    let mut pc: usize = 0;
    while pc < prog.len() {
        let ins = prog[pc];
        let k = ins.k;
        match ins.code {
            c if c == BPF_LD | BPF_W | BPF_ABS => match k {
                SECCOMP_DATA_NR => reg = nr,
                SECCOMP_DATA_ARCH => reg = arch.audit_arch(),
                _ => return false,
            },
            c if c == BPF_RET | BPF_K => return k == SECCOMP_RET_ALLOW,
            c if c == BPF_JMP | BPF_JA => pc = pc.saturating_add(k as usize),
            c if c == BPF_JMP | BPF_JEQ | BPF_K
                || c == BPF_JMP | BPF_JGE | BPF_K
                || c == BPF_JMP | BPF_JGT | BPF_K
                || c == BPF_JMP | BPF_JSET | BPF_K =>
            {
                let r = match c & 0xf0 {
                    BPF_JEQ => reg == k,
                    BPF_JGE => reg >= k,
                    BPF_JGT => reg > k,
                    _ => reg & k != 0,
                };
                pc += if r { ins.jt as usize } else { ins.jf as usize };
            }
            c if c == BPF_ALU | BPF_AND | BPF_K => reg &= k,
            _ => return false,
        }
        pc += 1;
    }
    false
}
