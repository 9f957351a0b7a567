//! Compiled BPF vs direct evaluation (property test), cache eligibility, tree quality.

use cordon_seccomp::arch::X32_SYSCALL_BIT;
use cordon_seccomp::cache::is_const_allow;
use cordon_seccomp::interp::{run, SeccompData};
use cordon_seccomp::parser::parse_file;
use cordon_seccomp::policy::{Action, Atom, CmpOp, Filter, Location, Policy, Rule};
use cordon_seccomp::stats::stats;
use cordon_seccomp::{compile, source_policy_dir, Arch, CompileOptions};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Every loadable shipped policy of both architectures, parsed.
fn shipped() -> Vec<(String, Policy)> {
    let mut out = Vec::new();
    for arch in Arch::ALL {
        let dir = source_policy_dir(arch);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("policy dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "policy"))
            .collect();
        files.sort();
        for f in files {
            let p = parse_file(&f, arch).unwrap_or_else(|e| panic!("{e}"));
            out.push((
                format!(
                    "{}/{}",
                    arch.name(),
                    f.file_name().unwrap().to_string_lossy()
                ),
                p,
            ));
        }
    }
    assert!(out.len() >= 40, "expected both architectures' policies");
    out
}

fn check(policy: &Policy, default: Action, d: &SeccompData) -> Result<(), TestCaseError> {
    let prog = compile(
        policy,
        &CompileOptions {
            default_action: default,
        },
    )
    .expect("compiles");
    let got = run(prog.instructions(), d).expect("runs");
    let want = policy.evaluate(d.arch, d.nr, &d.args, default);
    prop_assert_eq!(Action::from_ret_value(got.ret), want, "{:?}", d);
    Ok(())
}

fn arb_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        0u64..16,
        any::<u32>().prop_map(|v| v as u64),
        any::<u32>().prop_map(|v| (v as u64) << 32),
        any::<u64>(),
    ]
}

fn arb_atom() -> impl Strategy<Value = Atom> {
    let op = prop_oneof![
        Just(CmpOp::Eq),
        Just(CmpOp::Ne),
        Just(CmpOp::Lt),
        Just(CmpOp::Le),
        Just(CmpOp::Gt),
        Just(CmpOp::Ge),
        Just(CmpOp::MaskedAny),
        Just(CmpOp::In),
    ];
    (0u8..6, op, arb_value()).prop_map(|(arg, op, value)| Atom { arg, op, value })
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Allow),
        Just(Action::Log),
        Just(Action::Trap),
        (0u16..4096).prop_map(Action::Errno),
    ]
}

fn arb_policy(arch: Arch) -> impl Strategy<Value = Policy> {
    let n = arch.syscalls().len();
    let rule = (
        0..n,
        prop::collection::vec(prop::collection::vec(arb_atom(), 0..4), 1..4),
        arb_action(),
        prop::option::of(arb_action()),
        1u64..1000,
    );
    prop::collection::vec(rule, 0..60).prop_map(move |rules| {
        let mut seen = std::collections::HashSet::new();
        let mut p = Policy {
            arch,
            rules: Vec::new(),
            frequency: BTreeMap::new(),
        };
        for (i, clauses, action, otherwise, freq) in rules {
            let (name, nr) = arch.syscalls()[i];
            if !seen.insert(nr) {
                continue;
            }
            p.frequency.insert(nr, freq);
            p.rules.push(Rule {
                name: name.to_string(),
                nr,
                filter: Filter {
                    clauses,
                    action,
                    otherwise,
                },
                location: Location {
                    file: PathBuf::from("gen"),
                    line: 1,
                },
            });
        }
        p
    })
}

fn arb_data(p: &Policy) -> impl Strategy<Value = SeccompData> {
    let arch = p.arch.audit_arch();
    let mut nrs: Vec<u32> = p.rules.iter().map(|r| r.nr).collect();
    nrs.extend([0, 1, X32_SYSCALL_BIT, X32_SYSCALL_BIT + 1, u32::MAX]);
    let values: Vec<u64> = p
        .rules
        .iter()
        .flat_map(|r| r.filter.clauses.iter().flatten())
        .flat_map(|a| {
            [
                a.value,
                a.value.wrapping_add(1),
                a.value.wrapping_sub(1),
                !a.value,
            ]
        })
        .chain([0, 1, u64::MAX])
        .collect();
    let arg = (prop::sample::select(values), any::<u64>(), any::<bool>())
        .prop_map(|(v, r, pick)| if pick { v } else { r });
    (
        prop_oneof![prop::sample::select(nrs), any::<u32>()],
        prop_oneof![9 => Just(arch), 1 => any::<u32>()],
        prop::array::uniform6(arg),
    )
        .prop_map(|(nr, arch, args)| SeccompData {
            nr,
            arch,
            ip: 0,
            args,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn bpf_agrees_with_policy(
        (p, ds) in prop_oneof![Just(Arch::X86_64), Just(Arch::Aarch64)]
            .prop_flat_map(arb_policy)
            .prop_flat_map(|p| { let d = prop::collection::vec(arb_data(&p), 32); (Just(p), d) }),
        default in prop_oneof![Just(Action::KillProcess), Just(Action::Log), Just(Action::Errno(1)), Just(Action::Trap)],
    ) {
        for d in &ds {
            check(&p, default, d)?;
        }
    }
}

#[test]
fn shipped_policies_agree_with_interpreter() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    for (name, p) in shipped() {
        runner
            .run(&prop::collection::vec(arb_data(&p), 16), |ds| {
                for d in &ds {
                    check(&p, Action::KillProcess, d)?;
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn unconditional_allows_are_cache_eligible() {
    for (name, p) in shipped() {
        let prog = compile(&p, &CompileOptions::default()).expect("compiles");
        for r in &p.rules {
            let uncond = r.filter.is_unconditional() && r.filter.action == Action::Allow;
            assert_eq!(
                is_const_allow(prog.instructions(), p.arch, r.nr),
                uncond,
                "{name}: {} cache eligibility",
                r.name
            );
        }
        // Unlisted syscalls and other architectures' calls are never cached as allowed.
        assert!(!is_const_allow(
            prog.instructions(),
            p.arch,
            X32_SYSCALL_BIT
        ));
    }
}

/// Names of policies some other policy @includes (building blocks, never loaded directly).
fn included_names() -> Vec<String> {
    let mut out = Vec::new();
    for arch in Arch::ALL {
        for e in std::fs::read_dir(source_policy_dir(arch))
            .expect("policy dir")
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            for l in text.lines() {
                if let Some(rest) = l.trim().strip_prefix("@include") {
                    let f = rest.trim().rsplit('/').next().unwrap_or("").to_string();
                    out.push(format!("{}/{f}", arch.name()));
                }
            }
        }
    }
    out
}

#[test]
fn weighted_path_within_target() {
    let included = included_names();
    for (name, p) in shipped() {
        if included.contains(&name) {
            continue;
        }
        let prog = compile(&p, &CompileOptions::default()).expect("compiles");
        let s = stats(&p, &prog);
        assert_eq!(s.cache_eligible, s.unconditional_allows, "{name}");
        if s.syscalls > 0 {
            assert!(
                s.weighted_mean <= s.target() as f64,
                "{name}: weighted mean {:.2} > target {}",
                s.weighted_mean,
                s.target()
            );
        }
    }
}

#[test]
fn far_jumps_are_handled() {
    // A policy big enough to need jumps farther than 255 instructions.
    let arch = Arch::X86_64;
    let mut text = String::new();
    for (name, _) in arch.syscalls().iter().take(150) {
        text.push_str(&format!(
            "{name}: arg0 == 1 || arg1 > 0x100000000 && arg2 in 0xff\n"
        ));
    }
    let p = cordon_seccomp::parser::parse_str(std::path::Path::new("big"), &text, arch)
        .expect("parses");
    let prog = compile(&p, &CompileOptions::default()).expect("compiles");
    assert!(prog.len() > 1000);
    for r in &p.rules {
        for (args, want) in [
            ([1, 0, 0, 0, 0, 0], Action::Allow),
            ([0, 0x100000001, 0x10, 0, 0, 0], Action::Allow),
            ([0, 0x100000001, 0x100, 0, 0, 0], Action::KillProcess),
            ([2, 5, 0, 0, 0, 0], Action::KillProcess),
        ] {
            let d = SeccompData {
                nr: r.nr,
                arch: arch.audit_arch(),
                ip: 0,
                args,
            };
            let got = run(prog.instructions(), &d).expect("runs");
            assert_eq!(Action::from_ret_value(got.ret), want, "{} {args:?}", r.name);
        }
    }
}

#[test]
fn bpf_file_round_trip() {
    let prog = cordon_seccomp::embedded("rng_device_vhost_user").expect("embedded");
    let bytes = prog.to_bytes();
    assert_eq!(bytes.len(), prog.len() * 8);
    assert_eq!(
        cordon_seccomp::BpfProgram::from_bytes(&bytes).expect("parses"),
        prog
    );
    assert!(cordon_seccomp::BpfProgram::from_bytes(&bytes[1..]).is_err());
}

#[test]
fn policy_dir_override() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mine.policy"), "read: 1\nexit_group: 1\n").expect("write");
    let p = cordon_seccomp::load_policy("mine", Some(dir.path())).expect("loads");
    assert!(p.len() > 3);
    let e = cordon_seccomp::load_policy("absent", Some(dir.path())).unwrap_err();
    assert!(
        e.to_string()
            .contains("neither absent.bpf nor absent.policy"),
        "{e}"
    );
    let emb = cordon_seccomp::load_policy("rng_device_vhost_user", None).expect("embedded");
    assert_eq!(Some(emb), cordon_seccomp::embedded("rng_device_vhost_user"));
}
