//! Generated per-architecture tables (see `scripts/gen-syscall-tables`).

pub mod aarch64;
pub mod x86_64;
