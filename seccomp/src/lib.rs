//! Minijail-compatible seccomp policy compiler, BPF emitter and the process jail.
