//! `cordon seccomp ...`: lint, compile, disassemble, simulate, measure and generate
//! seccomp policies.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use cordon_seccomp::interp::{run as run_bpf, SeccompData};
use cordon_seccomp::parser::{parse_file, parse_value};
use cordon_seccomp::{
    compile, disasm, generate, stats, Action, Arch, BpfProgram, CompileOptions, Policy,
};
use std::path::{Path, PathBuf};

/// Arguments of `cordon seccomp`.
#[derive(Args, Debug)]
#[command(about = "Lint, compile, disassemble, simulate, measure and generate seccomp policies")]
pub struct SeccompCmd {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Args, Debug, Clone)]
struct Target {
    /// Architecture of the policy: x86_64 or aarch64 (default: this machine's).
    #[arg(long, value_parser = parse_arch)]
    arch: Option<Arch>,
    /// Action for unlisted syscalls: kill (= kill-process), kill-thread, trap, log, errno:N.
    #[arg(long, default_value = "kill", value_parser = parse_action)]
    default_action: Action,
}

impl Target {
    fn arch(&self) -> Arch {
        self.arch.unwrap_or_else(Arch::native)
    }
    fn opts(&self) -> CompileOptions {
        CompileOptions {
            default_action: self.default_action,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Parse and compile policies; print `OK` or the error with file:line:column.
    Check {
        /// Policy files.
        #[arg(required = true)]
        policies: Vec<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Compile a policy to a `.bpf` file (array of struct sock_filter, as minijail's).
    Compile {
        /// Policy file.
        policy: PathBuf,
        /// Output `.bpf` file.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Disassemble a `.bpf` file, a `.policy` (compiled first) or `embedded:NAME`.
    Dump {
        /// `.bpf` file, `.policy` file or `embedded:NAME`.
        source: String,
        #[command(flatten)]
        target: Target,
    },
    /// Run a syscall through a filter and print the action.
    Simulate {
        /// `.policy` file, `.bpf` file or `embedded:NAME`.
        source: String,
        /// Syscall name or number.
        syscall: String,
        /// Up to six arguments: numbers or constants (`PROT_READ|PROT_EXEC`).
        args: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Instruction count and frequency-weighted mean path per policy, vs a linear filter.
    Stats {
        /// Policy files (default: every loadable shipped policy of both architectures).
        policies: Vec<PathBuf>,
        /// Also write the Markdown table to this file.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Generate `<name>.policy` and `<name>.frequency` from `strace -f -o TRACE` output.
    Generate {
        /// strace output files.
        #[arg(required = true)]
        traces: Vec<PathBuf>,
        /// Base name of the generated files (e.g. `rng`).
        #[arg(long)]
        name: String,
        /// Directory to write into (also where the includes are looked up).
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Policies to `@include` (relative to --out-dir); syscalls they allow are not repeated.
        #[arg(long = "include")]
        includes: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
}

fn parse_arch(s: &str) -> Result<Arch, String> {
    Arch::from_name(s)
        .ok_or_else(|| format!("unknown architecture '{s}' (accepted: x86_64, aarch64)"))
}

fn parse_action(s: &str) -> Result<Action, String> {
    Action::from_name(s).ok_or_else(|| {
        format!("unknown action '{s}' (accepted: kill, kill-process, kill-thread, trap, log, allow, errno:N with N <= 4095)")
    })
}

fn load_policy_file(p: &Path, arch: Arch) -> Result<Policy> {
    parse_file(p, arch).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Loads a program and, when the source is a policy, the policy too.
fn load_source(src: &str, t: &Target) -> Result<(BpfProgram, Option<Policy>)> {
    if let Some(name) = src.strip_prefix("embedded:") {
        let p = cordon_seccomp::embedded(name).with_context(|| {
            format!(
                "no embedded policy '{name}' (known: {})",
                cordon_seccomp::embedded_names().join(", ")
            )
        })?;
        return Ok((p, None));
    }
    let path = Path::new(src);
    if path.extension().is_some_and(|e| e == "bpf") {
        let bytes = std::fs::read(path).with_context(|| format!("reading {src}"))?;
        let p = BpfProgram::from_bytes(&bytes).with_context(|| src.to_string())?;
        return Ok((p, None));
    }
    let pol = load_policy_file(path, t.arch())?;
    let prog = compile(&pol, &t.opts())?;
    Ok((prog, Some(pol)))
}

/// Runs `cordon seccomp`.
pub fn run(cmd: SeccompCmd) -> Result<()> {
    match cmd.cmd {
        Sub::Check { policies, target } => {
            let mut failed = false;
            for p in &policies {
                match load_policy_file(p, target.arch())
                    .and_then(|pol| Ok(compile(&pol, &target.opts())?))
                {
                    Ok(prog) => println!("{}: OK ({} instructions)", p.display(), prog.len()),
                    Err(e) => {
                        eprintln!("{e}");
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("some policies have errors");
            }
        }
        Sub::Compile {
            policy,
            output,
            target,
        } => {
            let pol = load_policy_file(&policy, target.arch())?;
            let prog = compile(&pol, &target.opts())?;
            std::fs::write(&output, prog.to_bytes())
                .with_context(|| format!("writing {}", output.display()))?;
            println!("{}: {} instructions", output.display(), prog.len());
        }
        Sub::Dump { source, target } => {
            let (prog, _) = load_source(&source, &target)?;
            print!("{}", disasm::program(prog.instructions()));
        }
        Sub::Simulate {
            source,
            syscall,
            args,
            target,
        } => {
            let arch = target.arch();
            let (prog, pol) = load_source(&source, &target)?;
            let nr = match syscall.parse::<u32>() {
                Ok(n) => n,
                Err(_) => arch
                    .syscall_nr(&syscall)
                    .with_context(|| format!("unknown syscall '{syscall}' on {}", arch.name()))?,
            };
            if args.len() > 6 {
                bail!("at most 6 syscall arguments, got {}", args.len());
            }
            let mut a = [0u64; 6];
            for (i, s) in args.iter().enumerate() {
                a[i] = parse_value(s, arch).map_err(|e| anyhow::anyhow!("argument {i}: {e}"))?;
            }
            let d = SeccompData {
                nr,
                arch: arch.audit_arch(),
                ip: 0,
                args: a,
            };
            let out = run_bpf(prog.instructions(), &d)?;
            let action = Action::from_ret_value(out.ret);
            println!(
                "{} ({nr}): {action} ({} instructions executed)",
                arch.syscall_name(nr).unwrap_or("?"),
                out.executed
            );
            if let Some(p) = pol {
                let direct = p.evaluate(d.arch, nr, &a, target.default_action);
                if direct != action {
                    bail!("BPF verdict {action} differs from the policy's {direct}: compiler bug");
                }
            }
        }
        Sub::Stats {
            policies,
            output,
            target,
        } => {
            let mut rows = Vec::new();
            if policies.is_empty() {
                for arch in Arch::ALL {
                    let dir = cordon_seccomp::source_policy_dir(arch);
                    let files = stats::loadable_policies(&dir).with_context(|| {
                        format!(
                            "reading the shipped policies in {} (pass policy files instead)",
                            dir.display()
                        )
                    })?;
                    rows.extend(
                        stats::report(&files, arch, &target.opts()).map_err(anyhow::Error::msg)?,
                    );
                }
            } else {
                rows = stats::report(&policies, target.arch(), &target.opts())
                    .map_err(anyhow::Error::msg)?;
            }
            let table = stats::markdown(&rows);
            print!("{table}");
            if let Some(o) = output {
                std::fs::write(&o, &table).with_context(|| format!("writing {}", o.display()))?;
            }
        }
        Sub::Generate {
            traces,
            name,
            out_dir,
            includes,
            target,
        } => {
            let arch = target.arch();
            let mut seen = std::collections::BTreeMap::new();
            for t in &traces {
                let text = std::fs::read_to_string(t)
                    .with_context(|| format!("reading {}", t.display()))?;
                let (known, unknown) = generate::count_trace(&text, arch);
                for (k, v) in known {
                    let e: &mut generate::Seen = seen.entry(k).or_default();
                    e.count += v.count;
                    e.prot_exec |= v.prot_exec;
                    e.clone_without_thread |= v.clone_without_thread;
                }
                for (k, n) in unknown {
                    log::warn!(
                        "{}: '{k}' ({n} calls) is not a {} syscall; skipped",
                        t.display(),
                        arch.name()
                    );
                }
            }
            if seen.is_empty() {
                bail!("no syscalls found in the traces (expected `strace -f -o FILE` output)");
            }
            let mut inc = Vec::new();
            for i in &includes {
                inc.push((i.clone(), load_policy_file(&out_dir.join(i), arch)?));
            }
            let (pol, freq) = generate::generate(&name, &seen, &inc);
            let pp = out_dir.join(format!("{name}.policy"));
            let fp = out_dir.join(format!("{name}.frequency"));
            std::fs::write(&pp, pol).with_context(|| format!("writing {}", pp.display()))?;
            std::fs::write(&fp, freq).with_context(|| format!("writing {}", fp.display()))?;
            load_policy_file(&pp, arch).context("the generated policy does not parse")?;
            println!(
                "wrote {} and {} ({} syscalls seen)",
                pp.display(),
                fp.display(),
                seen.len()
            );
        }
    }
    Ok(())
}
