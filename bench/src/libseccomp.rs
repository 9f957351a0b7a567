//! The benchmark peer: libseccomp (Debian `libseccomp2`, loaded at run time with dlopen so
//! the workspace builds without it), used to compile the same policy as Cordon.

use anyhow::{anyhow, bail, Context, Result};
use cordon_seccomp::policy::{Action, Atom, CmpOp, Policy};
use cordon_seccomp::BpfProgram;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};

#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ScmpArgCmp {
    arg: c_uint,
    op: c_uint,
    datum_a: u64,
    datum_b: u64,
}

const SCMP_CMP_NE: c_uint = 1;
const SCMP_CMP_LT: c_uint = 2;
const SCMP_CMP_LE: c_uint = 3;
const SCMP_CMP_EQ: c_uint = 4;
const SCMP_CMP_GE: c_uint = 5;
const SCMP_CMP_GT: c_uint = 6;
const SCMP_CMP_MASKED_EQ: c_uint = 7;
const SCMP_FLTATR_CTL_NNP: c_uint = 3;
const SCMP_FLTATR_CTL_OPTIMIZE: c_uint = 8;

type InitFn = unsafe extern "C" fn(u32) -> *mut c_void;
type RuleAddArrayFn =
    unsafe extern "C" fn(*mut c_void, u32, c_int, c_uint, *const ScmpArgCmp) -> c_int;
type AttrSetFn = unsafe extern "C" fn(*mut c_void, c_uint, u32) -> c_int;
type PriorityFn = unsafe extern "C" fn(*mut c_void, c_int, u8) -> c_int;
type ExportFn = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
type ReleaseFn = unsafe extern "C" fn(*mut c_void);
type VersionFn = unsafe extern "C" fn() -> *const ScmpVersion;

#[repr(C)]
struct ScmpVersion {
    major: c_uint,
    minor: c_uint,
    micro: c_uint,
}

/// libseccomp's entry points.
pub struct LibSeccomp {
    init: InitFn,
    rule_add_array: RuleAddArrayFn,
    attr_set: AttrSetFn,
    priority: PriorityFn,
    export: ExportFn,
    release: ReleaseFn,
    /// Library version, e.g. `2.5.4`.
    pub version: String,
}

/// libseccomp optimization level (`SCMP_FLTATR_CTL_OPTIMIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Optimize {
    /// Level 1 (default): rules ordered by priority and complexity, linear.
    Default,
    /// Level 2: binary tree sorted by syscall number.
    BinaryTree,
}

fn sym<T>(h: *mut c_void, name: &CStr) -> Result<T> {
    // SAFETY: `h` is a live dlopen handle and `name` NUL-terminated.
    let p = unsafe { libc::dlsym(h, name.as_ptr()) };
    if p.is_null() {
        bail!("libseccomp has no symbol {name:?}");
    }
    // SAFETY: T is the function-pointer type matching the C prototype of `name`.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, T>(&p) })
}

impl LibSeccomp {
    /// Loads `libseccomp.so.2`.
    pub fn load() -> Result<Self> {
        // SAFETY: dlopen with a NUL-terminated library name.
        let h = unsafe { libc::dlopen(c"libseccomp.so.2".as_ptr(), libc::RTLD_NOW) };
        if h.is_null() {
            bail!("cannot load libseccomp.so.2: install it with `apt-get install libseccomp-dev` (scripts/setup does)");
        }
        let version: VersionFn = sym(h, c"seccomp_version")?;
        // SAFETY: seccomp_version returns a pointer to a static struct.
        let v = unsafe { &*version() };
        Ok(LibSeccomp {
            init: sym(h, c"seccomp_init")?,
            rule_add_array: sym(h, c"seccomp_rule_add_array")?,
            attr_set: sym(h, c"seccomp_attr_set")?,
            priority: sym(h, c"seccomp_syscall_priority")?,
            export: sym(h, c"seccomp_export_bpf")?,
            release: sym(h, c"seccomp_release")?,
            version: format!("{}.{}.{}", v.major, v.minor, v.micro),
        })
    }

    /// Compiles `policy` with libseccomp (default action kill-process, libseccomp's own
    /// arch checks, syscall priorities from the policy's `@frequency` weights) and exports
    /// the BPF.
    pub fn compile(&self, policy: &Policy, opt: Optimize) -> Result<BpfProgram> {
        // SAFETY: plain constructor; checked for null.
        let ctx = unsafe { (self.init)(Action::KillProcess.ret_value()) };
        if ctx.is_null() {
            bail!("seccomp_init failed");
        }
        let r = self.fill(ctx, policy, opt);
        let out = r.and_then(|_| self.export(ctx));
        // SAFETY: releasing the context we created.
        unsafe { (self.release)(ctx) };
        out
    }

    fn fill(&self, ctx: *mut c_void, policy: &Policy, opt: Optimize) -> Result<()> {
        let level = match opt {
            Optimize::Default => 1,
            Optimize::BinaryTree => 2,
        };
        // SAFETY: valid ctx and attribute ids from seccomp.h.
        unsafe {
            if (self.attr_set)(ctx, SCMP_FLTATR_CTL_OPTIMIZE, level) != 0 {
                bail!("seccomp_attr_set(OPTIMIZE, {level}) failed");
            }
            (self.attr_set)(ctx, SCMP_FLTATR_CTL_NNP, 0);
        }
        let max_w = policy
            .rules
            .iter()
            .map(|r| policy.weight(r.nr))
            .max()
            .unwrap_or(1)
            .max(1);
        for r in &policy.rules {
            let f = &r.filter;
            if f.otherwise.is_some() {
                bail!("{}: '; return' rules have no libseccomp equivalent", r.name);
            }
            let action = f.action.ret_value();
            let nr = r.nr as c_int;
            for clause in &f.clauses {
                for alt in expand(clause) {
                    // SAFETY: `alt` is a valid array of `alt.len()` comparisons.
                    let rc = unsafe {
                        (self.rule_add_array)(ctx, action, nr, alt.len() as c_uint, alt.as_ptr())
                    };
                    if rc != 0 {
                        bail!("seccomp_rule_add_array({}) failed: {rc}", r.name);
                    }
                }
            }
            let prio = (policy.weight(r.nr) * 255 / max_w) as u8;
            // SAFETY: valid ctx and syscall number.
            unsafe { (self.priority)(ctx, nr, prio) };
        }
        Ok(())
    }

    fn export(&self, ctx: *mut c_void) -> Result<BpfProgram> {
        // SAFETY: memfd_create with a static name.
        let fd = unsafe {
            libc::memfd_create(
                c"libseccomp-bpf".as_ptr() as *const c_char,
                libc::MFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("memfd_create");
        }
        // SAFETY: we own `fd`; File takes it over and closes it.
        let mut file = unsafe { <std::fs::File as std::os::unix::io::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: valid ctx and fd.
        let rc = unsafe { (self.export)(ctx, fd) };
        if rc != 0 {
            bail!("seccomp_export_bpf failed: {rc}");
        }
        use std::io::{Read, Seek};
        let mut bytes = Vec::new();
        file.seek(std::io::SeekFrom::Start(0))?;
        file.read_to_end(&mut bytes)?;
        BpfProgram::from_bytes(&bytes).map_err(|e| anyhow!("libseccomp output: {e}"))
    }
}

/// libseccomp ANDs the comparisons of one rule and ORs rules, but has no "any bit set"
/// test: `arg & M` becomes one alternative per bit of M (`arg & bit == bit`).
fn expand(clause: &[Atom]) -> Vec<Vec<ScmpArgCmp>> {
    let mut alts: Vec<Vec<ScmpArgCmp>> = vec![Vec::new()];
    for a in clause {
        let options: Vec<ScmpArgCmp> = match a.op {
            CmpOp::MaskedAny => (0..64)
                .filter(|b| a.value & (1u64 << b) != 0)
                .map(|b| cmp(a.arg, SCMP_CMP_MASKED_EQ, 1u64 << b, 1u64 << b))
                .collect(),
            CmpOp::In => vec![cmp(a.arg, SCMP_CMP_MASKED_EQ, !a.value, 0)],
            CmpOp::Eq => vec![cmp(a.arg, SCMP_CMP_EQ, a.value, 0)],
            CmpOp::Ne => vec![cmp(a.arg, SCMP_CMP_NE, a.value, 0)],
            CmpOp::Lt => vec![cmp(a.arg, SCMP_CMP_LT, a.value, 0)],
            CmpOp::Le => vec![cmp(a.arg, SCMP_CMP_LE, a.value, 0)],
            CmpOp::Gt => vec![cmp(a.arg, SCMP_CMP_GT, a.value, 0)],
            CmpOp::Ge => vec![cmp(a.arg, SCMP_CMP_GE, a.value, 0)],
        };
        let mut next = Vec::new();
        for base in &alts {
            for o in &options {
                let mut v = base.clone();
                v.push(*o);
                next.push(v);
            }
        }
        alts = next;
    }
    alts
}

fn cmp(arg: u8, op: c_uint, a: u64, b: u64) -> ScmpArgCmp {
    ScmpArgCmp {
        arg: arg as c_uint,
        op,
        datum_a: a,
        datum_b: b,
    }
}
