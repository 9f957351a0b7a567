//! The machine-readable result lines the harness parses.
//!
//! One line per check: `CORDON-RESULT {"vm":..,"id":..,"check":..,"ok":..,"detail":..,"data":{..}}`
//! (all data values are strings). The run is framed by `CORDON-AGENT-START` and
//! `CORDON-AGENT-DONE` lines.

use std::collections::BTreeMap;
use std::io::Write;

/// Outcome of one check.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Whether the check passed.
    pub ok: bool,
    /// Human-readable explanation (the error on failure).
    pub detail: String,
    /// Observed values (hex data, sizes, ...), for the host to assert on.
    pub data: BTreeMap<String, String>,
}

impl Outcome {
    /// A passing outcome with a detail message.
    pub fn pass(detail: impl Into<String>) -> Self {
        Outcome {
            ok: true,
            detail: detail.into(),
            data: BTreeMap::new(),
        }
    }

    /// A failing outcome with the error.
    pub fn fail(detail: impl Into<String>) -> Self {
        Outcome {
            ok: false,
            detail: detail.into(),
            data: BTreeMap::new(),
        }
    }

    /// Adds an observed value.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.data.insert(key.to_string(), value.to_string());
        self
    }
}

/// JSON string literal of `s`.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                o.push_str(&format!("\\u{:04x}", c as u32))
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Formats the result line of one check.
pub fn result_line(vm: &str, id: usize, check: &str, out: &Outcome) -> String {
    let data: Vec<String> = out
        .data
        .iter()
        .map(|(k, v)| format!("{}:{}", json_str(k), json_str(v)))
        .collect();
    format!(
        "CORDON-RESULT {{\"vm\":{},\"id\":{},\"check\":{},\"ok\":{},\"detail\":{},\"data\":{{{}}}}}",
        json_str(vm),
        id,
        json_str(check),
        out.ok,
        json_str(&out.detail),
        data.join(",")
    )
}

/// One readable line for a person at the console: `  ok    hwrng          detail`.
pub fn summary_line(check: &str, out: &Outcome) -> String {
    let detail = out.detail.lines().next().unwrap_or_default();
    let detail: String = detail.chars().take(100).collect();
    format!(
        "  {:<5} {:<14} {detail}",
        if out.ok { "ok" } else { "FAIL" },
        check
    )
}

/// Writes one line to stdout (the console) in a single write, then flushes.
pub fn emit(line: &str) {
    let mut buf = Vec::with_capacity(line.len() + 2);
    buf.extend_from_slice(b"\n");
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let mut out = std::io::stdout().lock();
    // Nothing useful can be done if the console is gone.
    let _ = out.write_all(&buf);
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(json_str("a\"b\\\n\u{1}"), "\"a\\\"b\\\\\\n\\u0001\"");
        let o = Outcome::pass("fine").with("size", 4096).with("hex", "00ff");
        assert_eq!(
            result_line("g", 3, "blk-size", &o),
            "CORDON-RESULT {\"vm\":\"g\",\"id\":3,\"check\":\"blk-size\",\"ok\":true,\"detail\":\"fine\",\"data\":{\"hex\":\"00ff\",\"size\":\"4096\"}}"
        );
    }
}
