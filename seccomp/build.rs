//! Compiles every shipped policy (both architectures, to validate them) and embeds the
//! target architecture's BPF programs in the library.

#[allow(dead_code)]
#[path = "src/arch.rs"]
mod arch;
#[allow(dead_code)]
#[path = "src/bpf.rs"]
mod bpf;
#[allow(dead_code)]
#[path = "src/compiler.rs"]
mod compiler;
#[allow(dead_code)]
#[path = "src/parser.rs"]
mod parser;
#[allow(dead_code)]
#[path = "src/policy.rs"]
mod policy;
#[allow(dead_code)]
#[path = "src/tables/mod.rs"]
mod tables;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let target = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    println!("cargo:rerun-if-changed=policies");
    for f in [
        "arch.rs",
        "bpf.rs",
        "compiler.rs",
        "parser.rs",
        "policy.rs",
        "tables",
    ] {
        println!("cargo:rerun-if-changed=src/{f}");
    }
    let mut table = String::from(
        "/// Embedded (name, BPF bytes) pairs.\nstatic EMBEDDED: &[(&str, &[u8])] = &[\n",
    );
    for a in arch::Arch::ALL {
        let dir = manifest.join("policies").join(a.name());
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "policy"))
            .collect();
        files.sort();
        // Files another policy @includes are building blocks (common_device, vhost_user, vvu,
        // <dev>.policy): validated through their includers, never embedded on their own.
        let mut included = std::collections::BTreeSet::new();
        for f in &files {
            let text = std::fs::read_to_string(f).expect("read policy");
            for l in text.lines() {
                if let Some(rest) = l.trim().strip_prefix("@include") {
                    if let Some(n) = Path::new(rest.trim()).file_stem().and_then(|s| s.to_str()) {
                        included.insert(n.to_string());
                    }
                }
            }
        }
        for f in files {
            let name = f
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("policy file name")
                .to_string();
            let prog = compile_one(&f, a);
            if a.name() == target && !included.contains(&name) {
                let bpf = out.join(format!("{name}.bpf"));
                std::fs::write(&bpf, prog.to_bytes()).expect("write bpf");
                writeln!(
                    table,
                    "    ({name:?}, include_bytes!({:?})),",
                    bpf.display().to_string()
                )
                .expect("fmt");
            }
        }
    }
    table.push_str("];\n");
    std::fs::write(out.join("embedded.rs"), table).expect("write embedded.rs");
}

fn compile_one(f: &Path, a: arch::Arch) -> bpf::BpfProgram {
    let p = match parser::parse_file(f, a) {
        Ok(p) => p,
        Err(e) => panic!("seccomp policy error: {e}"),
    };
    match compiler::compile(&p, &compiler::CompileOptions::default()) {
        Ok(b) => b,
        Err(e) => panic!("seccomp policy {}: {e}", f.display()),
    }
}
