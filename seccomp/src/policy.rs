//! Parsed policy: the intermediate form between the parser and the BPF compiler.

use crate::arch::Arch;
use crate::bpf::*;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// What the filter does with a syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the syscall run.
    Allow,
    /// Kill the whole process with SIGSYS.
    KillProcess,
    /// Kill the calling thread with SIGSYS.
    KillThread,
    /// Send SIGSYS to the thread (catchable).
    Trap,
    /// Let the syscall run but log it to the audit log.
    Log,
    /// Fail the syscall with this errno.
    Errno(u16),
    /// Notify a ptrace tracer with this data.
    Trace(u16),
    /// Notify a user-space supervisor.
    UserNotif,
}

impl Action {
    /// The `SECCOMP_RET_*` value of this action.
    pub fn ret_value(self) -> u32 {
        match self {
            Action::Allow => SECCOMP_RET_ALLOW,
            Action::KillProcess => SECCOMP_RET_KILL_PROCESS,
            Action::KillThread => SECCOMP_RET_KILL_THREAD,
            Action::Trap => SECCOMP_RET_TRAP,
            Action::Log => SECCOMP_RET_LOG,
            Action::Errno(e) => SECCOMP_RET_ERRNO | e as u32,
            Action::Trace(d) => SECCOMP_RET_TRACE | d as u32,
            Action::UserNotif => SECCOMP_RET_USER_NOTIF,
        }
    }

    /// Decodes a `SECCOMP_RET_*` value the way the kernel does (unknown actions kill the process).
    pub fn from_ret_value(v: u32) -> Action {
        let data = (v & SECCOMP_RET_DATA) as u16;
        match v & SECCOMP_RET_ACTION_FULL {
            SECCOMP_RET_ALLOW => Action::Allow,
            SECCOMP_RET_KILL_THREAD => Action::KillThread,
            SECCOMP_RET_TRAP => Action::Trap,
            SECCOMP_RET_LOG => Action::Log,
            SECCOMP_RET_ERRNO => Action::Errno(data),
            SECCOMP_RET_TRACE => Action::Trace(data),
            SECCOMP_RET_USER_NOTIF => Action::UserNotif,
            _ => Action::KillProcess,
        }
    }

    /// Parses an action name: `kill` (= kill-process), `kill-process`, `kill-thread`, `trap`,
    /// `log`, `allow`, `errno:N` / `errno` (EPERM).
    pub fn from_name(s: &str) -> Option<Action> {
        Some(match s {
            "kill" | "kill-process" => Action::KillProcess,
            "kill-thread" => Action::KillThread,
            "trap" => Action::Trap,
            "log" => Action::Log,
            "allow" => Action::Allow,
            "errno" => Action::Errno(1),
            _ => {
                let n = s.strip_prefix("errno:")?.parse::<u16>().ok()?;
                if n > MAX_ERRNO {
                    return None;
                }
                Action::Errno(n)
            }
        })
    }
}

/// Largest errno a `return` action may carry.
pub const MAX_ERRNO: u16 = 4095;

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Allow => write!(f, "allow"),
            Action::KillProcess => write!(f, "kill-process"),
            Action::KillThread => write!(f, "kill-thread"),
            Action::Trap => write!(f, "trap"),
            Action::Log => write!(f, "log"),
            Action::Errno(e) => write!(f, "errno:{e}"),
            Action::Trace(d) => write!(f, "trace:{d}"),
            Action::UserNotif => write!(f, "user-notif"),
        }
    }
}

/// Comparison operator of an argument test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<` (unsigned 64-bit)
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `&`: true when any bit of the mask is set.
    MaskedAny,
    /// `in`: true when every set bit lies within the mask.
    In,
}

impl CmpOp {
    /// The operator as written in policies.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::MaskedAny => "&",
            CmpOp::In => "in",
        }
    }
}

/// One test on one 64-bit syscall argument: `argN OP value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Atom {
    /// Argument index, 0 to 5.
    pub arg: u8,
    /// Operator.
    pub op: CmpOp,
    /// Right-hand side.
    pub value: u64,
}

impl Atom {
    /// Evaluates the test on an argument value.
    pub fn eval(&self, a: u64) -> bool {
        let v = self.value;
        match self.op {
            CmpOp::Eq => a == v,
            CmpOp::Ne => a != v,
            CmpOp::Lt => a < v,
            CmpOp::Le => a <= v,
            CmpOp::Gt => a > v,
            CmpOp::Ge => a >= v,
            CmpOp::MaskedAny => a & v != 0,
            CmpOp::In => a & !v == 0,
        }
    }
}

/// Where a rule came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Policy file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// The filter of one syscall: `action` if any clause holds, else `otherwise`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// OR of AND-clauses; a clause with no atom is always true.
    pub clauses: Vec<Vec<Atom>>,
    /// Action when a clause holds.
    pub action: Action,
    /// Action when no clause holds; `None` means the policy's default action.
    pub otherwise: Option<Action>,
}

impl Filter {
    /// True if the action never depends on the arguments.
    pub fn is_unconditional(&self) -> bool {
        self.clauses.iter().any(|c| c.is_empty())
    }

    /// Evaluates the filter on the arguments.
    pub fn eval(&self, args: &[u64; 6], default: Action) -> Action {
        let hit = self
            .clauses
            .iter()
            .any(|c| c.iter().all(|a| a.eval(args[a.arg as usize])));
        if hit {
            self.action
        } else {
            self.otherwise.unwrap_or(default)
        }
    }
}

/// One `syscall: expression` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Syscall name.
    pub name: String,
    /// Syscall number on the policy's architecture.
    pub nr: u32,
    /// The filter.
    pub filter: Filter,
    /// Where it was written.
    pub location: Location,
}

/// A parsed policy with its includes resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Architecture the syscall numbers belong to.
    pub arch: Arch,
    /// Rules in file order (each syscall at most once).
    pub rules: Vec<Rule>,
    /// `@frequency` counts by syscall number.
    pub frequency: BTreeMap<u32, u64>,
}

impl Policy {
    /// The rule for syscall `nr`, if any.
    pub fn rule(&self, nr: u32) -> Option<&Rule> {
        self.rules.iter().find(|r| r.nr == nr)
    }

    /// Weight of a syscall for tree shaping and statistics (1 when not in a frequency file).
    pub fn weight(&self, nr: u32) -> u64 {
        self.frequency.get(&nr).copied().unwrap_or(1)
    }

    /// Direct evaluation, without BPF: what the kernel must do for this syscall.
    pub fn evaluate(&self, arch: u32, nr: u32, args: &[u64; 6], default: Action) -> Action {
        if arch != self.arch.audit_arch() {
            return Action::KillProcess;
        }
        if let Some(x) = self.arch.reject_from() {
            if nr >= x {
                return Action::KillProcess;
            }
        }
        match self.rule(nr) {
            Some(r) => r.filter.eval(args, default),
            None => default,
        }
    }
}
