//! Parsing of the check plan given on the kernel command line.
//!
//! Syntax: `cordon.checks=NAME[:KEY=VALUE]...[,NAME[:KEY=VALUE]...]...`, plus the optional
//! `cordon.vm=NAME` (labels this guest's result lines) and `cordon.timeout=SECONDS` (default
//! per-check timeout). Values cannot contain `,`, `:`, `=` or white space: binary data is
//! given as hex.

use std::collections::BTreeMap;
use std::time::Duration;

/// One requested check: its name and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    /// Position in the plan, reported back so that the harness can match results.
    pub id: usize,
    /// Check name, e.g. `blk-read`.
    pub name: String,
    /// Parameters, e.g. `dev` -> `vda`.
    pub params: BTreeMap<String, String>,
}

/// The whole plan of one agent run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Label of this guest (`cordon.vm=`), `guest` by default.
    pub vm: String,
    /// Default timeout of one check.
    pub timeout: Duration,
    /// Checks in the order they run.
    pub checks: Vec<CheckSpec>,
    /// How `--poweroff` ends the guest (`cordon.exit=`).
    pub exit: Exit,
}

/// How the agent ends the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// reboot(2) POWER_OFF (ACPI machines such as QEMU q35).
    PowerOff,
    /// reboot(2) RESTART: for VMMs without ACPI, which exit on the reset (`reboot=k`).
    Reboot,
}

/// Parses a kernel command line (the contents of `/proc/cmdline`).
pub fn parse_cmdline(cmdline: &str) -> Result<Plan, String> {
    let mut plan = Plan {
        vm: "guest".to_string(),
        timeout: Duration::from_secs(20),
        checks: Vec::new(),
        exit: Exit::PowerOff,
    };
    for word in cmdline.split_whitespace() {
        if let Some(v) = word.strip_prefix("cordon.vm=") {
            plan.vm = v.to_string();
        } else if let Some(v) = word.strip_prefix("cordon.timeout=") {
            let secs: u64 = v
                .parse()
                .map_err(|_| format!("cordon.timeout={v}: expected whole seconds"))?;
            plan.timeout = Duration::from_secs(secs);
        } else if let Some(v) = word.strip_prefix("cordon.exit=") {
            plan.exit = match v {
                "poweroff" => Exit::PowerOff,
                "reboot" => Exit::Reboot,
                _ => {
                    return Err(format!(
                        "cordon.exit={v}: accepted values are poweroff, reboot"
                    ))
                }
            };
        } else if let Some(v) = word.strip_prefix("cordon.checks=") {
            plan.checks = parse_checks(v)?;
        }
    }
    Ok(plan)
}

/// Parses the value of `cordon.checks=`.
pub fn parse_checks(value: &str) -> Result<Vec<CheckSpec>, String> {
    let mut out = Vec::new();
    for (id, item) in value.split(',').filter(|s| !s.is_empty()).enumerate() {
        let mut parts = item.split(':');
        let name = parts.next().unwrap_or_default().to_string();
        if name.is_empty() {
            return Err(format!("check #{id}: empty name in {item:?}"));
        }
        let mut params = BTreeMap::new();
        for p in parts {
            let (k, v) = p
                .split_once('=')
                .ok_or_else(|| format!("check {name}: parameter {p:?} is not KEY=VALUE"))?;
            params.insert(k.to_string(), v.to_string());
        }
        out.push(CheckSpec { id, name, params });
    }
    Ok(out)
}

impl CheckSpec {
    /// A string parameter, or `default`.
    pub fn str_or(&self, key: &str, default: &str) -> String {
        self.params
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    /// A required string parameter.
    pub fn req(&self, key: &str) -> Result<String, String> {
        self.params
            .get(key)
            .cloned()
            .ok_or_else(|| format!("check {} needs parameter {key}=", self.name))
    }

    /// A numeric parameter (decimal or 0x hex), or `default`.
    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.params.get(key) {
            None => Ok(default),
            Some(v) => parse_u64(v)
                .ok_or_else(|| format!("check {}: {key}={v} is not a number", self.name)),
        }
    }

    /// A hex-encoded byte parameter, if present.
    pub fn hex(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self.params.get(key) {
            None => Ok(None),
            Some(v) => crate::hex::decode(v)
                .map(Some)
                .ok_or_else(|| format!("check {}: {key}= is not valid hex", self.name)),
        }
    }
}

fn parse_u64(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plan_with_params() {
        let p = parse_cmdline(
            "console=ttyS0 quiet cordon.vm=l2 cordon.timeout=7 cordon.checks=blk-read:dev=vda:len=16,hwrng",
        )
        .unwrap();
        assert_eq!(p.vm, "l2");
        assert_eq!(p.timeout, Duration::from_secs(7));
        assert_eq!(p.checks.len(), 2);
        assert_eq!(p.checks[0].name, "blk-read");
        assert_eq!(p.checks[0].params["dev"], "vda");
        assert_eq!(p.checks[0].u64_or("len", 0).unwrap(), 16);
        assert_eq!(p.checks[1].id, 1);
        assert!(p.checks[1].params.is_empty());
        assert_eq!(p.exit, Exit::PowerOff);
        assert_eq!(
            parse_cmdline("cordon.exit=reboot").unwrap().exit,
            Exit::Reboot
        );
        assert!(parse_cmdline("cordon.exit=halt").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_cmdline_parses_or_errs(cmdline in ".{0,300}") {
            if let Ok(p) = parse_cmdline(&cmdline) {
                for c in &p.checks {
                    let _ = c.u64_or("len", 0);
                    let _ = c.hex("hex");
                }
            }
        }
    }

    #[test]
    fn rejects_bad_params() {
        assert!(parse_checks("blk-read:dev").is_err());
        assert!(parse_checks(":x=1").is_err());
        assert!(parse_cmdline("cordon.timeout=abc").is_err());
        let c = &parse_checks("x:n=zz:h=0g").unwrap()[0];
        assert!(c.u64_or("n", 0).is_err());
        assert!(c.hex("h").is_err());
        assert_eq!(c.u64_or("missing", 5).unwrap(), 5);
    }
}
