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

/// One row of the statistics report.
#[derive(Clone, Debug)]
pub struct Row {
    /// Policy file name without `.policy`.
    pub name: String,
    /// Architecture.
    pub arch: Arch,
    /// Cordon's tree filter.
    pub tree: Stats,
    /// The same policy as a linear filter (one compare per syscall).
    pub linear: Stats,
}

/// The loadable policies of a directory: `*.policy` files no other policy there
/// `@include`s, sorted.
pub fn loadable_policies(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    let mut included = std::collections::BTreeSet::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "policy") {
            for l in std::fs::read_to_string(&p)?.lines() {
                if let Some(rest) = l.trim().strip_prefix("@include") {
                    if let Some(f) = std::path::Path::new(rest.trim()).file_name() {
                        included.insert(f.to_os_string());
                    }
                }
            }
            files.push(p);
        }
    }
    files.retain(|p| p.file_name().is_some_and(|f| !included.contains(f)));
    files.sort();
    Ok(files)
}

/// Compiles each file both ways and measures it.
pub fn report(
    files: &[std::path::PathBuf],
    arch: Arch,
    opts: &crate::compiler::CompileOptions,
) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for f in files {
        let p = crate::parser::parse_file(f, arch).map_err(|e| e.to_string())?;
        let tree =
            crate::compiler::compile(&p, opts).map_err(|e| format!("{}: {e}", f.display()))?;
        let lin = crate::compiler::compile_linear(&p, opts)
            .map_err(|e| format!("{}: {e}", f.display()))?;
        rows.push(Row {
            name: f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            arch,
            tree: stats(&p, &tree),
            linear: stats(&p, &lin),
        });
    }
    Ok(rows)
}

/// Renders rows as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| arch | policy | syscalls | insns | weighted mean | max path | target ceil(log2 n)+4 | linear insns | linear weighted mean | cache-eligible allows |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {} | {} | {} | {:.2} | {}/{} |\n",
            r.arch.name(),
            r.name,
            r.tree.syscalls,
            r.tree.instructions,
            r.tree.weighted_mean,
            r.tree.max_path,
            r.tree.target(),
            r.linear.instructions,
            r.linear.weighted_mean,
            r.tree.cache_eligible,
            r.tree.unconditional_allows,
        ));
    }
    s
}
