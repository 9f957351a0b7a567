//! Filter statistics: size, frequency-weighted path length, cache eligibility.

use crate::arch::Arch;
use crate::bpf::BpfProgram;
use crate::cache::is_const_allow;
use crate::interp::{run, SeccompData};
use crate::policy::{Action, Policy};

/// Statistics of one compiled policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    /// Syscalls listed in the policy.
    pub syscalls: usize,
    /// Instructions in the program.
    pub instructions: usize,
    /// Frequency-weighted mean of instructions executed per listed syscall (arguments 0).
    pub weighted_mean: f64,
    /// Longest path over listed syscalls (arguments 0).
    pub max_path: usize,
    /// Unconditionally allowed syscalls.
    pub unconditional_allows: usize,
    /// Of those, how many the kernel can cache.
    pub cache_eligible: usize,
}

impl Stats {
    /// `ceil(log2(syscalls)) + 4`, the target for [`Stats::weighted_mean`].
    pub fn target(&self) -> usize {
        let n = self.syscalls.max(1);
        (usize::BITS - (n - 1).leading_zeros()) as usize + 4
    }
}

/// Computes statistics of `prog`, the compiled form of `policy`.
pub fn stats(policy: &Policy, prog: &BpfProgram) -> Stats {
    let arch: Arch = policy.arch;
    let (mut total_w, mut sum) = (0f64, 0f64);
    let mut max_path = 0;
    let (mut uncond, mut eligible) = (0, 0);
    for r in &policy.rules {
        let d = SeccompData {
            nr: r.nr,
            arch: arch.audit_arch(),
            ..Default::default()
        };
        let n = run(prog.instructions(), &d)
            .map(|o| o.executed)
            .unwrap_or(0);
        let w = policy.weight(r.nr) as f64;
        total_w += w;
        sum += w * n as f64;
        max_path = max_path.max(n);
        if r.filter.is_unconditional() && r.filter.action == Action::Allow {
            uncond += 1;
            if is_const_allow(prog.instructions(), arch, r.nr) {
                eligible += 1;
            }
        }
    }
    Stats {
        syscalls: policy.rules.len(),
        instructions: prog.len(),
        weighted_mean: if total_w > 0.0 { sum / total_w } else { 0.0 },
        max_path,
        unconditional_allows: uncond,
        cache_eligible: eligible,
    }
}
