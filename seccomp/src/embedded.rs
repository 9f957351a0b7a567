//! Policies compiled to BPF at build time (by `build.rs`) for the target architecture, and
//! the `--seccomp-policy-dir` override.

use crate::arch::Arch;
use crate::bpf::{BpfFormatError, BpfProgram};
use crate::compiler::{compile, CompileError, CompileOptions};
use crate::parser::{parse_file, ParseError};
use std::fmt;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

/// The embedded, build-time compiled filter of policy `name` (file name without `.policy`),
/// e.g. `embedded("rng_device_vhost_user")`.
pub fn embedded(name: &str) -> Option<BpfProgram> {
    EMBEDDED
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, b)| BpfProgram::from_bytes(b).ok())
}

/// Names of every embedded policy, sorted.
pub fn embedded_names() -> Vec<&'static str> {
    EMBEDDED.iter().map(|(n, _)| *n).collect()
}

/// The directory the shipped policy sources live in (in the source tree).
pub fn source_policy_dir(arch: Arch) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("policies")
        .join(arch.name())
}

/// Why a policy could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// No embedded policy and no override with that name.
    NotFound(String, Option<PathBuf>),
    /// The override `.policy` does not parse.
    Parse(ParseError),
    /// The override `.policy` does not compile.
    Compile(PathBuf, CompileError),
    /// The override `.bpf` cannot be read.
    Io(PathBuf, std::io::Error),
    /// The override `.bpf` is malformed.
    Format(PathBuf, BpfFormatError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::NotFound(n, None) => write!(
                f,
                "no seccomp policy named '{n}' is embedded (known: {})",
                embedded_names().join(", ")
            ),
            LoadError::NotFound(n, Some(d)) => write!(
                f,
                "--seccomp-policy-dir {}: neither {n}.bpf nor {n}.policy exists there",
                d.display()
            ),
            LoadError::Parse(e) => write!(f, "{e}"),
            LoadError::Compile(p, e) => write!(f, "{}: {e}", p.display()),
            LoadError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            LoadError::Format(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

impl std::error::Error for LoadError {}

/// Loads the filter for policy `name`: from `policy_dir` when given (`<name>.bpf`, else
/// `<name>.policy` compiled now with the kill default action), otherwise the embedded one.
/// This is what `--seccomp-policy-dir DIR` maps to.
pub fn load_policy(name: &str, policy_dir: Option<&Path>) -> Result<BpfProgram, LoadError> {
    let Some(dir) = policy_dir else {
        return embedded(name).ok_or_else(|| LoadError::NotFound(name.to_string(), None));
    };
    let bpf = dir.join(format!("{name}.bpf"));
    log::debug!("seccomp policy {name}: looking in {}", dir.display());
    if bpf.exists() {
        let bytes = std::fs::read(&bpf).map_err(|e| LoadError::Io(bpf.clone(), e))?;
        return BpfProgram::from_bytes(&bytes).map_err(|e| LoadError::Format(bpf, e));
    }
    let pol = dir.join(format!("{name}.policy"));
    if pol.exists() {
        let p = parse_file(&pol, Arch::native()).map_err(LoadError::Parse)?;
        return compile(&p, &CompileOptions::default()).map_err(|e| LoadError::Compile(pol, e));
    }
    Err(LoadError::NotFound(
        name.to_string(),
        Some(dir.to_path_buf()),
    ))
}
