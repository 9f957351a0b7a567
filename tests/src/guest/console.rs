//! Console logs of guest boots: where they are written, how they are read while the guest
//! runs, and how failures quote them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How many console lines a failure message quotes.
pub const TAIL_LINES: usize = 40;

/// Directory of console logs (`target/guest-logs`).
pub fn logs_dir() -> PathBuf {
    super::assets::target_dir().join("guest-logs")
}

/// A log name for this boot: the given one, or the current test's name (the test harness
/// names each test's thread after it), made unique within this process.
pub fn log_name(given: Option<&str>) -> String {
    static USED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let base: String = given
        .map(str::to_string)
        .or_else(|| std::thread::current().name().map(str::to_string))
        .unwrap_or_else(|| "guest".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let mut name = base.clone();
    let mut n = 1;
    while !used.insert(name.clone()) {
        n += 1;
        name = format!("{base}-{n}");
    }
    name
}

/// The console text so far (lossy UTF-8, carriage returns removed).
pub fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default()
}

/// The last [`TAIL_LINES`] lines of a console text.
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Signs of a dead guest kernel in its console.
pub fn panic_line(text: &str) -> Option<&str> {
    text.lines().find(|l| {
        l.contains("Kernel panic")
            || l.contains("KVM internal error")
            || l.contains("BUG: kernel NULL pointer")
    })
}
