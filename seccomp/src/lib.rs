//! Minijail-compatible seccomp policy compiler, BPF emitter and the process jail.
//!
//! * [`parser`] reads minijail policy files (`@include`, `@frequency`, argument tests).
//! * [`compiler`] turns a [`Policy`] into a classic BPF [`BpfProgram`].
//! * [`install`] loads a program into the kernel (no_new_privs + TSYNC).
//! * [`embedded`] returns the shipped policies compiled at build time.
//! * [`jail`] sandboxes a device process (namespaces, pivot_root, caps, rlimits, seccomp).
//! * [`interp`], [`cache`], [`stats`] analyse programs in user space.
#![deny(missing_docs)]

pub mod arch;
pub mod bpf;
pub mod cache;
pub mod compiler;
pub mod disasm;
mod embedded;
pub mod generate;
pub mod install;
pub mod interp;
pub mod jail;
pub mod parser;
pub mod policy;
pub mod stats;
pub mod tables;

pub use arch::Arch;
pub use bpf::{BpfProgram, SockFilter};
pub use compiler::{compile, CompileOptions};
pub use embedded::{embedded, embedded_names, load_policy, source_policy_dir, LoadError};
pub use install::install;
pub use jail::Jail;
pub use parser::{parse_file, ParseError};
pub use policy::{Action, Policy};
