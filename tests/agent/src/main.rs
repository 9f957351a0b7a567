//! Cordon guest test agent.
//!
//! Runs inside a test guest (started by the initramfs's /init), reads the check plan from
//! the kernel command line (`cordon.checks=...`, see [`spec`]), runs each check with a
//! timeout, prints one `CORDON-RESULT {json}` line per check on the console and, with
//! `--poweroff`, ends the guest (power-off, or reboot with `cordon.exit=reboot`). `--checks SPEC` runs a plan given as an argument
//! instead (handy on a host for trying a check).
//!
//! Benchmark mode: the `bench-*` checks (see [`bench`]) run workloads and report figures
//! in their result data; `--peer sink|send ...` are their host-side ends.
#![deny(missing_docs)]

mod bench;
mod checks;
mod hex;
mod peer;
mod report;
mod spec;
mod sysutil;

use report::{emit, result_line, Outcome};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: cordon-guest-agent [--poweroff] [--summary] [--checks SPEC] [--list] | --peer PEER ARGS...\n\
  Without --checks, the plan is read from /proc/cmdline (cordon.checks=, cordon.vm=, cordon.timeout=).\n\
  --summary also prints one readable line per check after the result lines.";

fn run_one(c: &spec::CheckSpec, default_timeout: Duration) -> Outcome {
    let Some(f) = checks::find(&c.name) else {
        return Outcome::fail(format!(
            "unknown check {:?}; known: {}",
            c.name,
            checks::names()
        ));
    };
    let timeout = match c.u64_or("timeout", default_timeout.as_secs()) {
        Ok(t) => Duration::from_secs(t),
        Err(e) => return Outcome::fail(e),
    };
    let (tx, rx) = mpsc::channel();
    let spec = c.clone();
    let start = Instant::now();
    // A hung check (a device that never answers) must not hang the agent: it runs on its
    // own thread, which is abandoned on timeout.
    let spawned = std::thread::Builder::new()
        .name(c.name.clone())
        .spawn(move || {
            let r = f(&spec).unwrap_or_else(Outcome::fail);
            let _ = tx.send(r);
        });
    if let Err(e) = spawned {
        return Outcome::fail(format!("spawn: {e}"));
    }
    let out = rx
        .recv_timeout(timeout)
        .unwrap_or_else(|_| Outcome::fail(format!("timed out after {} s", timeout.as_secs())));
    out.with("ms", start.elapsed().as_millis())
}

fn end_guest(exit: spec::Exit) {
    let cmd = match exit {
        spec::Exit::PowerOff => libc::LINUX_REBOOT_CMD_POWER_OFF,
        spec::Exit::Reboot => libc::LINUX_REBOOT_CMD_RESTART,
    };
    // SAFETY: tcdrain(3), sync(2) and reboot(2) take no pointers. tcdrain waits until the
    // console (a UART) has sent every result line: the kernel's own "reboot: ..." message
    // is written synchronously and, on an SMP guest, landed in the middle of a line that
    // another CPU was still transmitting.
    unsafe {
        libc::tcdrain(libc::STDOUT_FILENO);
        libc::sync();
        libc::reboot(cmd);
    }
}

fn main() {
    let mut poweroff = false;
    let mut summary = false;
    let mut plan_arg = None;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--peer") {
        std::process::exit(peer::main(&argv[1..]));
    }
    let mut args = argv.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--poweroff" => poweroff = true,
            "--summary" => summary = true,
            "--checks" => plan_arg = args.next(),
            "--list" => {
                println!("{}", checks::names());
                return;
            }
            _ => {
                eprintln!("unknown argument {a:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let plan = match plan_arg {
        Some(p) => spec::parse_cmdline(&format!("cordon.checks={p}")),
        None => std::fs::read_to_string("/proc/cmdline")
            .map_err(|e| format!("/proc/cmdline: {e}"))
            .and_then(|c| spec::parse_cmdline(&c)),
    };
    let mut exit = spec::Exit::PowerOff;
    match plan {
        Err(e) => {
            emit(&format!("CORDON-AGENT-ERROR {}", report::json_str(&e)));
            let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
            if cmdline
                .split_whitespace()
                .any(|w| w == "cordon.exit=reboot")
            {
                exit = spec::Exit::Reboot;
            }
        }
        Ok(plan) => {
            exit = plan.exit;
            emit(&format!(
                "CORDON-AGENT-START vm={} checks={}",
                plan.vm,
                plan.checks.len()
            ));
            let mut failed = 0;
            let mut lines = Vec::new();
            for c in &plan.checks {
                let out = run_one(c, plan.timeout);
                failed += usize::from(!out.ok);
                emit(&result_line(&plan.vm, c.id, &c.name, &out));
                lines.push(report::summary_line(&c.name, &out));
            }
            if summary {
                emit(&format!(
                    "What this guest found ({} of {} device checks passed):\n{}",
                    plan.checks.len() - failed,
                    plan.checks.len(),
                    lines.join("\n")
                ));
            }
            emit(&format!(
                "CORDON-AGENT-DONE vm={} checks={} failed={failed}",
                plan.vm,
                plan.checks.len()
            ));
        }
    }
    if poweroff {
        end_guest(exit);
    }
}
