//! Human-readable disassembly of seccomp BPF programs (`cordon seccomp dump`).

use crate::bpf::*;
use crate::policy::Action;

fn operand(off: u32) -> String {
    match off {
        SECCOMP_DATA_NR => "nr".to_string(),
        SECCOMP_DATA_ARCH => "arch".to_string(),
        8 => "ip.lo".to_string(),
        12 => "ip.hi".to_string(),
        o if (SECCOMP_DATA_ARGS..SECCOMP_DATA_LEN).contains(&o) && o.is_multiple_of(4) => {
            let i = (o - SECCOMP_DATA_ARGS) / 8;
            let half = if o.is_multiple_of(8) { "lo" } else { "hi" };
            format!("args[{i}].{half}")
        }
        o => format!("[{o}]"),
    }
}

/// Formats one instruction at index `pc`.
pub fn instruction(pc: usize, i: &SockFilter) -> String {
    let src = if i.code & BPF_X != 0 {
        "x".to_string()
    } else {
        format!("#{:#x}", i.k)
    };
    let target = |off: u8| pc + 1 + off as usize;
    let text = match i.code & 0x07 {
        BPF_LD if i.code & 0xe0 == BPF_ABS => format!("ld   {}", operand(i.k)),
        BPF_LD if i.code & 0xe0 == BPF_IMM => format!("ld   #{:#x}", i.k),
        BPF_LD if i.code & 0xe0 == BPF_MEM => format!("ld   M[{}]", i.k),
        BPF_LD if i.code & 0xe0 == BPF_LEN => "ld   len".to_string(),
        BPF_LDX if i.code & 0xe0 == BPF_IMM => format!("ldx  #{:#x}", i.k),
        BPF_LDX if i.code & 0xe0 == BPF_MEM => format!("ldx  M[{}]", i.k),
        BPF_LDX if i.code & 0xe0 == BPF_LEN => "ldx  len".to_string(),
        BPF_ST => format!("st   M[{}]", i.k),
        BPF_STX => format!("stx  M[{}]", i.k),
        BPF_ALU => {
            let op = match i.code & 0xf0 {
                BPF_ADD => "add",
                BPF_SUB => "sub",
                BPF_MUL => "mul",
                BPF_DIV => "div",
                BPF_OR => "or",
                BPF_AND => "and",
                BPF_LSH => "lsh",
                BPF_RSH => "rsh",
                BPF_NEG => return format!("{pc:04}: neg"),
                BPF_MOD => "mod",
                BPF_XOR => "xor",
                _ => "alu?",
            };
            format!("{op:<4} {src}")
        }
        BPF_JMP => match i.code & 0xf0 {
            BPF_JA => format!("ja   {:04}", pc + 1 + i.k as usize),
            op => {
                let name = match op {
                    BPF_JEQ => "jeq",
                    BPF_JGT => "jgt",
                    BPF_JGE => "jge",
                    BPF_JSET => "jset",
                    _ => "j?",
                };
                format!(
                    "{name:<4} {src:<12} jt {:04}  jf {:04}",
                    target(i.jt),
                    target(i.jf)
                )
            }
        },
        BPF_RET if i.code & 0x18 == BPF_A => "ret  a".to_string(),
        BPF_RET => format!("ret  {}", Action::from_ret_value(i.k)),
        BPF_MISC if i.code & 0xf8 == BPF_TXA => "txa".to_string(),
        BPF_MISC => "tax".to_string(),
        _ => format!("unknown code={:#06x} k={:#x}", i.code, i.k),
    };
    format!("{pc:04}: {text}")
}

/// Formats a whole program, one instruction per line.
pub fn program(prog: &[SockFilter]) -> String {
    let mut s = String::new();
    for (pc, i) in prog.iter().enumerate() {
        s.push_str(&instruction(pc, i));
        s.push('\n');
    }
    s
}
