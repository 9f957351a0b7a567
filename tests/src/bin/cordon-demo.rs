//! `cordon-demo`: the main job in one command (run by `scripts/demo`). Boots the Debian cloud
//! kernel with `cordon run`, its block, net, rng, vsock and console devices served by one
//! `cordon devices` tree of jailed backends; the guest uses every device and reports.
//! On a PVM host this runs inside a nested L1 guest (QEMU TCG with emulated SVM), and says so.

use cordon_tests::e2e::{run_full_stack_with, Outcome};
use cordon_tests::guest::GuestMode;
use std::io::IsTerminal;
use std::process::ExitCode;

const USAGE: &str = "usage: cordon-demo [--check]\n\
  Boots a guest whose devices are served by Cordon's jailed backends; the guest runs the\n\
  agent's checks on every device and prints what it found. On a terminal you then get a\n\
  shell in the guest (`exit` ends it); the exit code is 0 only if every device worked.\n\
  --check   no shell: run the checks, power off, report (implied by CI=true or when stdin\n\
            is not a terminal). Logs: target/guest-logs/.";

fn print_report(o: &Outcome) -> bool {
    let mut all_ok = true;
    println!("\nWhat the guest found (one line per device check):");
    for c in o.guest() {
        all_ok &= c.ok;
        println!(
            "  {:<4} {:<14} {}",
            if c.ok { "ok" } else { "FAIL" },
            c.check,
            c.detail
        );
    }
    println!("\nHost side:");
    for l in o.lines("CORDON-PEER ") {
        println!("  peer {l}");
    }
    for l in o.lines("CORDON-E2E-JAIL ") {
        println!("  jailed backend {l}");
    }
    let bad = o.host_side_failures();
    for b in &bad {
        println!("  FAIL {b}");
    }
    all_ok && bad.is_empty()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut check = false;
    match args.as_slice() {
        [] => {}
        [a] if a == "--check" => check = true,
        [a] if a == "-h" || a == "--help" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("cordon-demo: unknown arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    match GuestMode::detect() {
        Ok(GuestMode::Nested) => println!(
            "cordon-demo: this host's /dev/kvm cannot boot a stock kernel (PVM, or no KVM): \
             running the demo inside a nested L1 guest (QEMU TCG with emulated AMD SVM), \
             where `cordon devices` and `cordon run` use real KVM."
        ),
        Ok(GuestMode::Direct) => {
            println!("cordon-demo: running `cordon devices` and `cordon run` directly on this host's KVM.")
        }
        Err(e) => {
            eprintln!("cordon-demo: {e:#}");
            return ExitCode::from(2);
        }
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let interactive = !check && !ci && std::io::stdin().is_terminal();
    println!("cordon-demo: preparing the guest kernel, initramfs and static binaries (cached after the first run)...");
    if interactive {
        println!(
            "cordon-demo: interactive: after its checks the guest prints what it found and gives \
             you a shell on its console (`exit` ends the guest; --check or CI=true skips the shell)."
        );
    }
    let outcome = match run_full_stack_with("demo", interactive) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cordon-demo: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let ok = print_report(&outcome);
    println!(
        "\ncordon-demo: {} in {:.1} s ({:?} mode). Full console log: {}",
        if ok {
            "every device worked"
        } else {
            "SOME DEVICES FAILED"
        },
        outcome.results.elapsed.as_secs_f64(),
        outcome.mode,
        outcome.results.log.display()
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
