//! Host side of the agent protocol: the checks a test asks for, and the results parsed from
//! the console.

use anyhow::{bail, Result};
use serde::Deserialize;
use std::collections::BTreeMap;

/// One check for the guest agent: a name (see `cordon-guest-agent --list`) and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Check name, e.g. `blk-read`.
    pub name: String,
    /// Parameters in order, e.g. `("dev", "vda")`.
    pub params: Vec<(String, String)>,
}

/// Lower-case hex of `data` (the encoding of binary parameters and results).
pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes hex; `None` if invalid.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Check {
    /// A check without parameters.
    pub fn new(name: &str) -> Self {
        Check {
            name: name.to_string(),
            params: Vec::new(),
        }
    }

    /// Adds a parameter.
    pub fn arg(mut self, key: &str, value: impl ToString) -> Self {
        self.params.push((key.to_string(), value.to_string()));
        self
    }

    /// Adds a binary parameter, hex-encoded.
    pub fn bytes(self, key: &str, data: &[u8]) -> Self {
        self.arg(key, hex(data))
    }

    /// `blk-read`: read `len` bytes at `offset` of `/dev/<dev>` (O_DIRECT).
    pub fn blk_read(dev: &str, offset: u64, len: usize) -> Self {
        Check::new("blk-read")
            .arg("dev", dev)
            .arg("offset", offset)
            .arg("len", len)
    }

    /// `blk-write`: write `data` at `offset` of `/dev/<dev>` (O_DIRECT + fsync).
    pub fn blk_write(dev: &str, offset: u64, data: &[u8]) -> Self {
        Check::new("blk-write")
            .arg("dev", dev)
            .arg("offset", offset)
            .bytes("hex", data)
    }

    /// `blk-rw`: write random bytes, read them back, compare.
    pub fn blk_rw(dev: &str, offset: u64, len: usize) -> Self {
        Check::new("blk-rw")
            .arg("dev", dev)
            .arg("offset", offset)
            .arg("len", len)
    }

    /// `blk-flush`: a write + fsync must complete a FLUSH request.
    pub fn blk_flush(dev: &str) -> Self {
        Check::new("blk-flush").arg("dev", dev)
    }

    /// `blk-discard`: BLKDISCARD of `len` bytes at `offset` must complete a DISCARD request.
    pub fn blk_discard(dev: &str, offset: u64, len: u64) -> Self {
        Check::new("blk-discard")
            .arg("dev", dev)
            .arg("offset", offset)
            .arg("len", len)
    }

    /// `blk-size`: report the device size and read-only flag.
    pub fn blk_size(dev: &str) -> Self {
        Check::new("blk-size").arg("dev", dev)
    }

    /// `ext4`: mount `/dev/<dev>`, read `file` (reported as hex in `data["hex"]`).
    pub fn ext4_read(dev: &str, file: &str) -> Self {
        Check::new("ext4").arg("dev", dev).arg("file", file)
    }

    /// `hwrng`: two reads of `len` bytes of /dev/hwrng differ (virtio_rng current).
    pub fn hwrng(len: usize) -> Self {
        Check::new("hwrng").arg("len", len)
    }

    /// `kernel`: boot proof (kernel release, uptime).
    pub fn kernel() -> Self {
        Check::new("kernel")
    }

    /// `kvm`: /dev/kvm works (used in the nested L1).
    pub fn kvm() -> Self {
        Check::new("kvm")
    }

    /// Renders the check as one item of `cordon.checks=`.
    pub fn token(&self) -> Result<String> {
        let bad = |s: &str| {
            s.is_empty()
                || s.chars().any(|c| {
                    matches!(c, ',' | ':' | '=' | '"' | '\'' | '\\' | '$' | '`')
                        || c.is_whitespace()
                })
        };
        if bad(&self.name) {
            bail!(
                "check name {:?} is empty or contains , : = \" or spaces",
                self.name
            );
        }
        let mut t = self.name.clone();
        for (k, v) in &self.params {
            if bad(k) || (bad(v) && !v.is_empty()) || v.is_empty() {
                bail!(
                    "check {}: parameter {k:?}={v:?} must be non-empty without , : = \" or spaces",
                    self.name
                );
            }
            t.push_str(&format!(":{k}={v}"));
        }
        Ok(t)
    }
}

/// The result of one check, as reported by the agent.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct CheckResult {
    /// Label of the guest that ran it (`guest`, or `l1`/`l2` under runner B).
    pub vm: String,
    /// Position of the check in the plan.
    pub id: usize,
    /// Check name.
    pub check: String,
    /// Whether it passed.
    pub ok: bool,
    /// Explanation or error.
    pub detail: String,
    /// Observed values (all strings; binary data as hex).
    pub data: BTreeMap<String, String>,
}

impl CheckResult {
    /// An observed value, or an error naming the check and key.
    pub fn value(&self, key: &str) -> Result<&str> {
        match self.data.get(key) {
            Some(v) => Ok(v),
            None => bail!("result of {} has no {key:?}: {self:?}", self.check),
        }
    }

    /// An observed hex value, decoded.
    pub fn bytes(&self, key: &str) -> Result<Vec<u8>> {
        let v = self.value(key)?;
        unhex(v).ok_or_else(|| anyhow::anyhow!("{} {key}={v:?} is not hex", self.check))
    }
}

/// Marker of a result line.
pub const RESULT_MARKER: &str = "CORDON-RESULT ";

/// Every result line of `vm` in a console log; malformed lines are errors.
pub fn parse_results(console: &str, vm: &str) -> Result<Vec<CheckResult>> {
    let mut out = Vec::new();
    for line in console.lines() {
        let Some(pos) = line.find(RESULT_MARKER) else {
            continue;
        };
        let json = line[pos + RESULT_MARKER.len()..].trim();
        let r: CheckResult = serde_json::from_str(json)
            .map_err(|e| anyhow::anyhow!("malformed result line {line:?}: {e}"))?;
        if r.vm == vm {
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(
            Check::blk_read("vda", 512, 16).token().unwrap(),
            "blk-read:dev=vda:offset=512:len=16"
        );
        assert_eq!(
            Check::new("x").bytes("h", b"\x01\xff").token().unwrap(),
            "x:h=01ff"
        );
        assert!(Check::new("x").arg("a", "b:c").token().is_err());
        assert!(Check::new("x y").token().is_err());
        assert!(Check::new("x").arg("a", "").token().is_err());
    }

    proptest::proptest! {
        // The console is written by the guest: any bytes must give a result or an error,
        // never a panic.
        #[test]
        fn hostile_console_never_panics(text in ".{0,400}", tail in "[ -~]{0,200}") {
            let _ = parse_results(&text, "guest");
            let _ = parse_results(&format!("{text}CORDON-RESULT {tail}\n"), "guest");
            let _ = unhex(&tail);
        }

        #[test]
        fn hex_round_trips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            proptest::prop_assert_eq!(unhex(&hex(&data)), Some(data));
        }
    }

    #[test]
    fn parses_lines() {
        let log = "junk\r\n[ 1.0] CORDON-RESULT {\"vm\":\"guest\",\"id\":0,\"check\":\"hwrng\",\"ok\":true,\"detail\":\"d\",\"data\":{\"first\":\"00ff\"}}\r\nCORDON-RESULT {\"vm\":\"l2\",\"id\":0,\"check\":\"kernel\",\"ok\":true,\"detail\":\"\",\"data\":{}}\n";
        let r = parse_results(log, "guest").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].bytes("first").unwrap(), vec![0, 0xff]);
        assert!(r[0].value("nope").is_err());
        assert_eq!(parse_results(log, "l2").unwrap().len(), 1);
        assert!(parse_results("CORDON-RESULT {bad", "guest").is_err());
    }
}
