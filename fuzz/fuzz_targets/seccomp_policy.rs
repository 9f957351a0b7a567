//! Fuzzes the seccomp policy parser and compiler: any input must parse or fail cleanly, and
//! any policy that parses must compile to a program the interpreter runs and that agrees
//! with direct evaluation.
#![no_main]

use cordon_seccomp::interp::{run, SeccompData};
use cordon_seccomp::parser::{parse_with, FileSource};
use cordon_seccomp::{compile, Action, Arch, CompileOptions};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

/// The input is the main policy; `@include`/`@frequency` of `./inc` and `./freq` read the
/// same bytes, so include depth and frequency parsing are reached too.
struct Same<'a>(&'a str);

impl FileSource for Same<'_> {
    fn read(&self, path: &Path) -> Result<String, String> {
        match path.file_name().and_then(|n| n.to_str()) {
            Some("main.policy") | Some("inc") | Some("freq") => Ok(self.0.to_string()),
            _ => Err("No such file or directory".into()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for arch in Arch::ALL {
        let Ok(policy) = parse_with(Path::new("/f/main.policy"), arch, &Same(text)) else { continue };
        let default = Action::Errno(1);
        let prog = compile(&policy, &CompileOptions { default_action: default }).expect("parsed policies compile");
        for r in policy.rules.iter().take(8) {
            for args in [[0u64; 6], [u64::MAX; 6], [1, 2, 3, 4, 5, 6]] {
                let d = SeccompData { nr: r.nr, arch: arch.audit_arch(), ip: 0, args };
                let out = run(prog.instructions(), &d).expect("compiled programs run");
                assert_eq!(Action::from_ret_value(out.ret), policy.evaluate(d.arch, d.nr, &args, default));
            }
        }
    }
});
