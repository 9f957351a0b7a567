//! Policy language: accepted syntax and every error message with its location.

use cordon_seccomp::parser::{parse_str, parse_with, FileSource};
use cordon_seccomp::policy::{Action, CmpOp};
use cordon_seccomp::Arch;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Mem(HashMap<PathBuf, String>);

impl FileSource for Mem {
    fn read(&self, path: &Path) -> Result<String, String> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| "No such file or directory (os error 2)".to_string())
    }
}

fn mem(files: &[(&str, &str)]) -> Mem {
    Mem(files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), t.to_string()))
        .collect())
}

fn err(text: &str) -> String {
    parse_str(Path::new("t.policy"), text, Arch::X86_64)
        .expect_err("must fail")
        .to_string()
}

#[test]
fn accepts_minijail_syntax() {
    let text = "# comment\n\nread: 1\nwrite: 1 # trailing\n\
        mmap: arg2 in ~PROT_EXEC\n\
        madvise: arg2 == MADV_DONTNEED || arg2 == 0x4 && arg1 >= 010\n\
        ioctl: arg1 == TCGETS|TCSETS; return ENOTTY\n\
        open: return EPERM\n\
        kill: arg1 != SIGKILL\n\
        getpid: log\n";
    let p = parse_str(Path::new("t.policy"), text, Arch::X86_64).expect("parses");
    assert_eq!(p.rules.len(), 8);
    let mmap = &p.rules[2].filter;
    assert_eq!(mmap.clauses[0][0].op, CmpOp::In);
    assert_eq!(mmap.clauses[0][0].value, !4u64);
    let madv = &p.rules[3].filter;
    assert_eq!(madv.clauses.len(), 2, "|| splits clauses");
    assert_eq!(madv.clauses[1].len(), 2, "&& binds tighter than ||");
    assert_eq!(madv.clauses[1][1].value, 8, "octal");
    let ioctl = &p.rules[4].filter;
    assert_eq!(ioctl.clauses[0][0].value, 0x5401 | 0x5402);
    assert_eq!(ioctl.otherwise, Some(Action::Errno(25)));
    assert_eq!(p.rules[5].filter.action, Action::Errno(1));
    assert_eq!(p.rules[7].filter.action, Action::Log);
    assert_eq!(p.rules[0].nr, 0);
}

#[test]
fn aarch64_tables_differ() {
    let p = parse_str(
        Path::new("a.policy"),
        "read: 1\nopenat: arg2 & O_DIRECTORY\n",
        Arch::Aarch64,
    )
    .expect("parses");
    assert_eq!(p.rules[0].nr, 63);
    assert_eq!(p.rules[1].filter.clauses[0][0].value, 0o40000);
    let e = parse_str(Path::new("a.policy"), "open: 1\n", Arch::Aarch64).unwrap_err();
    assert_eq!(e.to_string(), "a.policy:1:1: unknown syscall 'open'");
}

#[test]
fn unknown_syscall() {
    assert_eq!(
        err("read: 1\n  frobnicate: 1\n"),
        "t.policy:2:3: unknown syscall 'frobnicate'"
    );
}

#[test]
fn unknown_constant() {
    assert_eq!(
        err("mmap: arg2 == PROT_READ|PROT_BOGUS\n"),
        "t.policy:1:25: unknown constant 'PROT_BOGUS'"
    );
}

#[test]
fn syntax_errors() {
    assert_eq!(
        err("read 1\n"),
        "t.policy:1:6: syntax error: expected ':' after 'read'"
    );
    assert_eq!(
        err("read:\n"),
        "t.policy:1:6: syntax error: missing expression after ':'"
    );
    assert_eq!(
        err("read: arg7 == 1\n"),
        "t.policy:1:7: syntax error: expected an argument arg0..arg5, found 'arg7'"
    );
    assert_eq!(
        err("read: arg0 1\n"),
        "t.policy:1:12: syntax error: expected an operator (== != < <= > >= & in)"
    );
    assert_eq!(
        err("read: arg0 == 1 arg1\n"),
        "t.policy:1:17: syntax error: unexpected 'arg1' after the expression"
    );
    assert_eq!(
        err("read: arg0 == 0x\n"),
        "t.policy:1:15: syntax error: invalid number '0x'"
    );
    assert_eq!(
        err("read: return 5000\n"),
        "t.policy:1:14: syntax error: errno 5000 out of range (0..=4095)"
    );
    assert_eq!(
        err("@bogus x\n"),
        "t.policy:1:1: syntax error: unknown directive '@bogus' (expected @include or @frequency)"
    );
    assert_eq!(
        err("read: arg0 == $\n"),
        "t.policy:1:15: syntax error: unexpected character '$'"
    );
}

#[test]
fn duplicate_syscall() {
    assert_eq!(
        err("read: 1\nwrite: 1\nread: arg0 == 0\n"),
        "t.policy:3:1: duplicate syscall 'read' (first defined at t.policy:1)"
    );
}

#[test]
fn include_one_level_and_frequency() {
    let fs = mem(&[
        ("/p/top.policy", "@include ./common.policy\nwrite: 1\n"),
        (
            "/p/common.policy",
            "@frequency ./common.frequency\nread: 1\n",
        ),
        ("/p/common.frequency", "read: 10\nread: 5\nwrite: 3\n"),
    ]);
    let p = parse_with(Path::new("/p/top.policy"), Arch::X86_64, &fs).expect("parses");
    assert_eq!(p.rules.len(), 2);
    assert_eq!(p.weight(0), 15);
    assert_eq!(p.weight(1), 3);
    assert_eq!(p.rules[0].location.to_string(), "/p/./common.policy:2");
}

#[test]
fn include_depth() {
    let fs = mem(&[
        ("/p/top.policy", "@include ./a.policy\n"),
        ("/p/a.policy", "read: 1\n@include ./b.policy\n"),
        ("/p/b.policy", "write: 1\n"),
    ]);
    let e = parse_with(Path::new("/p/top.policy"), Arch::X86_64, &fs).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/p/./a.policy:2:10: @include of './b.policy' from an included file: only one level of @include is allowed"
    );
}

#[test]
fn missing_file() {
    let fs = mem(&[("/p/top.policy", "read: 1\n@include ./gone.policy\n")]);
    let e = parse_with(Path::new("/p/top.policy"), Arch::X86_64, &fs).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/p/top.policy:2:10: cannot read '/p/./gone.policy': No such file or directory (os error 2)"
    );
    let fs = mem(&[("/p/top.policy", "@frequency ./f\n")]);
    let e = parse_with(Path::new("/p/top.policy"), Arch::X86_64, &fs).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/p/top.policy:1:12: cannot read '/p/./f'"),
        "{e}"
    );
}

#[test]
fn absolute_crosvm_include_falls_back_to_sibling() {
    let fs = mem(&[
        (
            "/p/top.policy",
            "@include /usr/share/policy/crosvm/common_device.policy\n",
        ),
        ("/p/common_device.policy", "read: 1\n"),
    ]);
    let p = parse_with(Path::new("/p/top.policy"), Arch::X86_64, &fs).expect("parses");
    assert_eq!(p.rules[0].name, "read");
}

#[test]
fn frequency_errors() {
    let fs = mem(&[
        ("/p/top.policy", "@frequency ./f\nread: 1\n"),
        ("/p/f", "read: many\n"),
    ]);
    let e = parse_with(Path::new("/p/top.policy"), Arch::X86_64, &fs).unwrap_err();
    assert_eq!(e.to_string(), "/p/./f:1:7: syntax error: expected a count");
}
