//! `cordon seccomp ...` end to end through the real binary.

use std::process::{Command, Output};

fn cordon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cordon"))
        .args(args)
        .output()
        .expect("run cordon")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn policy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../seccomp/policies/x86_64")
}

#[test]
fn check_reports_location() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.policy");
    std::fs::write(&bad, "read: 1\nmmap: arg2 in ~PROT_EXECUTE\n").expect("write");
    let o = cordon(&[
        "seccomp",
        "check",
        "--arch",
        "x86_64",
        bad.to_str().expect("utf8"),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("bad.policy:2:16: unknown constant 'PROT_EXECUTE'"),
        "{}",
        text(&o)
    );
    let good = policy_dir().join("rng_device_vhost_user.policy");
    let o = cordon(&[
        "seccomp",
        "check",
        "--arch",
        "x86_64",
        good.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(": OK ("));
}

#[test]
fn compile_dump_simulate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("rng.bpf");
    let src = policy_dir().join("rng_device_vhost_user.policy");
    let (src, out) = (src.to_str().expect("utf8"), out.to_str().expect("utf8"));
    let o = cordon(&["seccomp", "compile", "--arch", "x86_64", src, "-o", out]);
    assert!(o.status.success(), "{}", text(&o));
    let size = std::fs::metadata(out).expect("bpf written").len();
    assert!(size > 0 && size % 8 == 0);
    let o = cordon(&["seccomp", "dump", out]);
    assert!(
        text(&o).starts_with("0000: ld   arch\n0001: jeq  #0xc000003e"),
        "{}",
        text(&o)
    );
    let sim = |bpf_or_policy: &str, args: &[&str]| {
        let mut a = vec!["seccomp", "simulate", "--arch", "x86_64", bpf_or_policy];
        a.extend_from_slice(args);
        text(&cordon(&a))
    };
    assert!(
        sim(src, &["mmap", "0", "4096", "PROT_READ|PROT_EXEC"]).contains("mmap (9): kill-process")
    );
    assert!(sim(out, &["mmap", "0", "4096", "PROT_READ|PROT_WRITE"]).contains("mmap (9): allow"));
    assert!(sim(src, &["clone3"]).contains("errno:38"));
    assert!(sim(src, &["socket", "AF_INET"]).contains("kill-process"));
    assert!(sim(src, &["read"]).contains("allow"));
    let o = cordon(&["seccomp", "simulate", "--arch", "x86_64", src, "frobnicate"]);
    assert!(
        text(&o).contains("unknown syscall 'frobnicate' on x86_64"),
        "{}",
        text(&o)
    );
}

#[test]
fn default_action_and_bad_values() {
    let src = policy_dir().join("rng_device_vhost_user.policy");
    let src = src.to_str().expect("utf8");
    let o = cordon(&[
        "seccomp",
        "simulate",
        "--arch",
        "x86_64",
        "--default-action",
        "log",
        src,
        "execve",
    ]);
    assert!(text(&o).contains("execve (59): log"), "{}", text(&o));
    let o = cordon(&["seccomp", "check", "--default-action", "errno:99999", src]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("unknown action 'errno:99999'"),
        "{}",
        text(&o)
    );
    let o = cordon(&["seccomp", "check", "--arch", "sparc", src]);
    assert!(
        text(&o).contains("accepted: x86_64, aarch64"),
        "{}",
        text(&o)
    );
}

#[test]
fn stats_covers_every_shipped_policy() {
    let o = cordon(&["seccomp", "stats"]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    for dev in ["block", "net", "rng", "vsock", "wayland", "serial"] {
        for arch in ["x86_64", "aarch64"] {
            assert!(
                t.contains(&format!("| {arch} | {dev}_device_vhost_user |")),
                "{t}"
            );
            assert!(t.contains(&format!("| {arch} | {dev}_device_vvu |")), "{t}");
        }
    }
}

#[test]
fn generate_from_strace() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        policy_dir().join("common_device.policy"),
        dir.path().join("common_device.policy"),
    )
    .expect("copy");
    std::fs::copy(
        policy_dir().join("common_device.frequency"),
        dir.path().join("common_device.frequency"),
    )
    .expect("copy");
    let trace = dir.path().join("trace.txt");
    std::fs::write(
        &trace,
        "1234  read(3, \"x\", 1) = 1\n\
         [pid  1235] pread64(5, \"\", 512, 0) = 512\n\
         1235  pwrite64(5, \"\", 512, 0 <unfinished ...>\n\
         1234  <... pwrite64 resumed>) = 512\n\
         1235  mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f\n\
         1235  fdatasync(5) = 0\n\
         1235  pread64(5, \"\", 512, 512) = 512\n\
         1235  +++ exited with 0 +++\n",
    )
    .expect("write");
    let o = cordon(&[
        "seccomp",
        "generate",
        "--arch",
        "x86_64",
        "--name",
        "blk",
        "--out-dir",
        dir.path().to_str().expect("utf8"),
        "--include",
        "./common_device.policy",
        trace.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let pol = std::fs::read_to_string(dir.path().join("blk.policy")).expect("policy");
    assert!(pol.contains("@include ./common_device.policy"));
    assert!(pol.contains("pread64: 1\n"));
    assert!(pol.contains("pwrite64: 1\n"));
    assert!(pol.contains("fdatasync: 1\n"));
    assert!(
        !pol.lines().any(|l| l == "read: 1" || l.starts_with("mmap")),
        "{pol}"
    );
    let freq = std::fs::read_to_string(dir.path().join("blk.frequency")).expect("frequency");
    assert!(freq.contains("pread64: 2\n"), "{freq}");
    let o = cordon(&[
        "seccomp",
        "check",
        "--arch",
        "x86_64",
        dir.path().join("blk.policy").to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
}
