//! Policy -> classic BPF.
//!
//! Layout: check `seccomp_data.arch` (kill on mismatch), load the syscall number, then walk
//! a binary search tree over syscall-number *ranges* (adjacent syscalls with the same
//! constant verdict are merged; x32 numbers on x86_64 form a range that always kills). The
//! tree's shape minimizes the `@frequency`-weighted number of comparisons (optimal
//! alphabetic tree by dynamic programming). Leaves are either a `ret` or an argument-check
//! block doing full 64-bit comparisons on the two 32-bit halves. Paths to unconditionally
//! allowed syscalls read only `arch` and `nr`, so the kernel can cache their verdict.

use crate::bpf::*;
use crate::policy::{Action, Atom, CmpOp, Filter, Policy};
use std::collections::HashMap;
use std::fmt;

/// Compilation options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// Action for syscalls the policy does not list.
    pub default_action: Action,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            default_action: Action::KillProcess,
        }
    }
}

/// Compilation failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompileError {
    /// The program would exceed the kernel's instruction limit.
    TooLong(usize),
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::TooLong(n) => write!(
                f,
                "compiled filter has {n} instructions, more than the kernel limit of {BPF_MAXINSNS}"
            ),
        }
    }
}

impl std::error::Error for CompileError {}

/// Builds a program back to front, so every jump target is already placed.
/// A label is the index of an instruction in `rev` (0 = last instruction of the program).
struct Emitter {
    rev: Vec<SockFilter>,
    rets: HashMap<u32, usize>,
}

/// Keeps room for the two trampolines one conditional jump may need.
const MAX_SHORT: usize = 253;

impl Emitter {
    fn new() -> Self {
        Emitter {
            rev: Vec::new(),
            rets: HashMap::new(),
        }
    }

    fn emit(&mut self, i: SockFilter) -> usize {
        self.rev.push(i);
        self.rev.len() - 1
    }

    fn ret(&mut self, value: u32) -> usize {
        if let Some(&l) = self.rets.get(&value) {
            return l;
        }
        self.fresh_ret(value)
    }

    fn fresh_ret(&mut self, value: u32) -> usize {
        let l = self.emit(SockFilter::stmt(BPF_RET | BPF_K, value));
        self.rets.insert(value, l);
        l
    }

    fn load(&mut self, off: u32) -> usize {
        self.emit(SockFilter::stmt(BPF_LD | BPF_W | BPF_ABS, off))
    }

    /// Distance from the next emitted instruction to `target`.
    fn dist(&self, target: usize) -> usize {
        self.rev.len() - target - 1
    }

    /// Makes `target` reachable by a short jump from the next instruction.
    fn near(&mut self, target: usize) -> usize {
        if self.dist(target) <= MAX_SHORT {
            return target;
        }
        let t = self.rev[target];
        if t.code == BPF_RET | BPF_K {
            self.fresh_ret(t.k)
        } else {
            let off = self.dist(target) as u32;
            self.emit(SockFilter::stmt(BPF_JMP | BPF_JA, off))
        }
    }

    /// Emits `if (A op k) goto jt else goto jf`.
    fn jump(&mut self, op: u16, k: u32, jt: usize, jf: usize) -> usize {
        let jf = self.near(jf);
        let jt = self.near(jt);
        let jf = self.near(jf);
        let (dt, df) = (self.dist(jt), self.dist(jf));
        // `near` guarantees both fit; saturate defensively.
        let code = BPF_JMP | op | BPF_K;
        self.emit(SockFilter::jump(
            code,
            k,
            dt.min(255) as u8,
            df.min(255) as u8,
        ))
    }

    /// Places `target` right after the next instruction (an unconditional jump if needed).
    fn fallthrough_to(&mut self, target: usize) -> usize {
        if target + 1 == self.rev.len() {
            target
        } else {
            let off = self.dist(target) as u32;
            self.emit(SockFilter::stmt(BPF_JMP | BPF_JA, off))
        }
    }

    fn finish(self) -> Result<BpfProgram, CompileError> {
        let mut v = self.rev;
        v.reverse();
        if v.len() > BPF_MAXINSNS {
            return Err(CompileError::TooLong(v.len()));
        }
        Ok(BpfProgram::new(v))
    }

    /// `argN OP value` on 64 bits: goes to `t` when true, `f` when false.
    fn atom(&mut self, a: &Atom, t: usize, f: usize) -> usize {
        let (lo, hi) = (a.value as u32, (a.value >> 32) as u32);
        let (olo, ohi) = (arg_lo(a.arg), arg_hi(a.arg));
        match a.op {
            CmpOp::Eq | CmpOp::Ne => {
                let (t, f) = if a.op == CmpOp::Eq { (t, f) } else { (f, t) };
                self.jump(BPF_JEQ, lo, t, f);
                let l = self.load(olo);
                self.jump(BPF_JEQ, hi, l, f);
                self.load(ohi)
            }
            CmpOp::Gt | CmpOp::Ge | CmpOp::Lt | CmpOp::Le => {
                let (op, t, f) = match a.op {
                    CmpOp::Gt => (BPF_JGT, t, f),
                    CmpOp::Ge => (BPF_JGE, t, f),
                    CmpOp::Lt => (BPF_JGE, f, t),
                    _ => (BPF_JGT, f, t),
                };
                self.jump(op, lo, t, f);
                let l = self.load(olo);
                let eq = self.jump(BPF_JEQ, hi, l, f);
                self.jump(BPF_JGT, hi, t, eq);
                self.load(ohi)
            }
            CmpOp::MaskedAny => {
                let mut next = f;
                if lo != 0 {
                    self.jump(BPF_JSET, lo, t, f);
                    next = self.load(olo);
                }
                if hi != 0 {
                    self.jump(BPF_JSET, hi, t, next);
                    next = self.load(ohi);
                }
                next
            }
            CmpOp::In => {
                let (mlo, mhi) = (!lo, !hi);
                let mut next = t;
                if mlo != 0 {
                    self.jump(BPF_JSET, mlo, f, t);
                    next = self.load(olo);
                }
                if mhi != 0 {
                    self.jump(BPF_JSET, mhi, f, next);
                    next = self.load(ohi);
                }
                next
            }
        }
    }

    /// A syscall's argument-check block.
    fn filter(&mut self, flt: &Filter, default: Action) -> usize {
        let matched = self.ret(flt.action.ret_value());
        let mut fail = self.ret(flt.otherwise.unwrap_or(default).ret_value());
        let cl = &flt.clauses;
        let mut i = cl.len();
        while i > 0 {
            // A run of `argN == v1 || argN == v2 || ...` (same high word) loads each half once.
            if let Some(key) = eq_key(&cl[i - 1]) {
                let mut j = i - 1;
                while j > 0 && eq_key(&cl[j - 1]) == Some(key) {
                    j -= 1;
                }
                if i - j >= 2 {
                    fail = self.eq_run(key, &cl[j..i], matched, fail);
                    i = j;
                    continue;
                }
            }
            let mut ok = matched;
            for a in cl[i - 1].iter().rev() {
                ok = self.atom(a, ok, fail);
            }
            fail = ok;
            i -= 1;
        }
        fail
    }

    /// `ld hi; jeq HI else f; ld lo; jeq v1 -> t; jeq v2 -> t; ...; else f`.
    fn eq_run(&mut self, (arg, hi): (u8, u32), run: &[Vec<Atom>], t: usize, f: usize) -> usize {
        let mut next = f;
        for c in run.iter().rev() {
            next = self.jump(BPF_JEQ, c[0].value as u32, t, next);
        }
        let lo = self.load(arg_lo(arg));
        self.jump(BPF_JEQ, hi, lo, f);
        self.load(arg_hi(arg))
    }
}

/// (argument, high word) of a clause that is a single `==` test.
fn eq_key(clause: &[Atom]) -> Option<(u8, u32)> {
    match clause {
        [a] if a.op == CmpOp::Eq => Some((a.arg, (a.value >> 32) as u32)),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug)]
enum Leaf {
    Ret(u32),
    Rule(usize),
}

#[derive(Clone, Copy, Debug)]
struct Range {
    lo: u32,
    leaf: Leaf,
    weight: u64,
}

/// Weight scale so that any listed syscall outweighs every unlisted range together.
const LISTED_SCALE: u64 = 1 << 12;

fn ranges(policy: &Policy, default: Action) -> Vec<Range> {
    let mut rules: Vec<(u32, usize)> = policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.nr, i))
        .collect();
    rules.sort_unstable();
    let limit = policy.arch.reject_from();
    let mut out: Vec<Range> = Vec::new();
    let push = |out: &mut Vec<Range>, lo: u32, leaf: Leaf, weight: u64| {
        if let (Some(last), Leaf::Ret(v)) = (out.last_mut(), leaf) {
            if matches!(last.leaf, Leaf::Ret(w) if w == v) {
                last.weight = last.weight.saturating_add(weight);
                return;
            }
        }
        out.push(Range { lo, leaf, weight });
    };
    let dflt = default.ret_value();
    let mut next: u64 = 0;
    for (nr, i) in rules {
        if limit.is_some_and(|l| nr >= l) {
            continue;
        }
        if (nr as u64) > next {
            push(&mut out, next as u32, Leaf::Ret(dflt), 1);
        }
        let r = &policy.rules[i];
        let w = policy.weight(nr).saturating_mul(LISTED_SCALE).max(1);
        let leaf = if r.filter.is_unconditional() {
            Leaf::Ret(r.filter.action.ret_value())
        } else {
            Leaf::Rule(i)
        };
        push(&mut out, nr, leaf, w);
        next = nr as u64 + 1;
    }
    let end = limit.map(|l| l as u64).unwrap_or(1 << 32);
    if next < end {
        push(&mut out, next as u32, Leaf::Ret(dflt), 1);
    }
    if let Some(l) = limit {
        push(&mut out, l, Leaf::Ret(SECCOMP_RET_KILL_PROCESS), 1);
    }
    out
}

/// Optimal alphabetic tree (Knuth's O(n^2) DP). `root[i][j]` = last leaf of the left subtree.
fn optimal_splits(w: &[u64]) -> Vec<Vec<usize>> {
    let n = w.len();
    let mut pre = vec![0u64; n + 1];
    for i in 0..n {
        pre[i + 1] = pre[i].saturating_add(w[i]);
    }
    let mut cost = vec![vec![0u64; n]; n];
    let mut root = vec![vec![0usize; n]; n];
    for (i, r) in root.iter_mut().enumerate() {
        r[i] = i;
    }
    for len in 2..=n {
        for i in 0..=n - len {
            let j = i + len - 1;
            let (lo, hi) = if len == 2 {
                (i, i)
            } else {
                (root[i][j - 1], root[i + 1][j].min(j - 1))
            };
            let mut best = (u64::MAX, lo);
            let mid2 = i + j; // prefer balanced splits on ties
            for k in lo..=hi.max(lo) {
                let c = cost[i][k].saturating_add(cost[k + 1][j]);
                let better = c < best.0
                    || (c == best.0
                        && (2 * k + 1).abs_diff(mid2) < (2 * best.1 + 1).abs_diff(mid2));
                if better {
                    best = (c, k);
                }
            }
            cost[i][j] = best.0.saturating_add(pre[j + 1] - pre[i]);
            root[i][j] = best.1;
        }
    }
    root
}

/// Compiles a policy into a seccomp filter.
pub fn compile(policy: &Policy, opts: &CompileOptions) -> Result<BpfProgram, CompileError> {
    let rs = ranges(policy, opts.default_action);
    let weights: Vec<u64> = rs.iter().map(|r| r.weight).collect();
    let root = optimal_splits(&weights);
    let mut e = Emitter::new();
    let entry = tree(&mut e, policy, opts, &rs, &root, 0, rs.len() - 1);
    prologue(&mut e, policy, entry);
    e.finish()
}

fn tree(
    e: &mut Emitter,
    policy: &Policy,
    opts: &CompileOptions,
    rs: &[Range],
    root: &[Vec<usize>],
    i: usize,
    j: usize,
) -> usize {
    if i == j {
        return match rs[i].leaf {
            Leaf::Ret(v) => e.ret(v),
            Leaf::Rule(r) => e.filter(&policy.rules[r].filter, opts.default_action),
        };
    }
    let k = root[i][j];
    let right = tree(e, policy, opts, rs, root, k + 1, j);
    let left = tree(e, policy, opts, rs, root, i, k);
    e.jump(BPF_JGE, rs[k + 1].lo, right, left)
}

fn prologue(e: &mut Emitter, policy: &Policy, entry: usize) {
    e.fallthrough_to(entry);
    let load_nr = e.load(SECCOMP_DATA_NR);
    let kill = e.ret(SECCOMP_RET_KILL_PROCESS);
    e.jump(BPF_JEQ, policy.arch.audit_arch(), load_nr, kill);
    e.load(SECCOMP_DATA_ARCH);
}

/// Compiles the same policy as a linear filter (one comparison per syscall, in decreasing
/// frequency order, like libseccomp's default output). Used as a baseline by statistics.
pub fn compile_linear(policy: &Policy, opts: &CompileOptions) -> Result<BpfProgram, CompileError> {
    let mut e = Emitter::new();
    let mut order: Vec<usize> = (0..policy.rules.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(policy.weight(policy.rules[i].nr)));
    let mut next = e.ret(opts.default_action.ret_value());
    for &i in order.iter().rev() {
        let r = &policy.rules[i];
        let blk = if r.filter.is_unconditional() {
            e.ret(r.filter.action.ret_value())
        } else {
            e.filter(&r.filter, opts.default_action)
        };
        next = e.jump(BPF_JEQ, r.nr, blk, next);
    }
    if let Some(x) = policy.arch.reject_from() {
        let kill = e.ret(SECCOMP_RET_KILL_PROCESS);
        next = e.jump(BPF_JGE, x, kill, next);
    }
    prologue(&mut e, policy, next);
    e.finish()
}
