//! `cordon devices --restart POLICY`: when a crashed device child is forked again, and how
//! long the supervisor waits first.
//!
//! Syntax: `never` (default), `on-failure[:MAX]` or `always[:MAX]`. `on-failure` restarts a
//! child that exited with a non-zero status or was killed by a signal; `always` also restarts
//! one that exited with status 0. `MAX` (default [`DEFAULT_MAX_RESTARTS`], `0` = unlimited)
//! bounds the *consecutive* restarts: a child that stayed up for [`HEALTHY_AFTER`] resets the
//! count and the backoff. The backoff before restart `n` (1-based) is
//! `100 ms * 2^(n-1)`, capped at 5 s.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Consecutive restarts allowed when `:MAX` is not given.
pub const DEFAULT_MAX_RESTARTS: u32 = 10;
/// First backoff delay.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Largest backoff delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A child that ran this long is healthy: its next crash starts a fresh backoff and count.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Which child exits lead to a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RestartWhen {
    /// Never restart (the device's socket is removed and the run fails if it crashed).
    #[default]
    Never,
    /// Restart after a non-zero exit status or a death by signal.
    OnFailure,
    /// Restart after any exit.
    Always,
}

/// A parsed `--restart` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RestartPolicy {
    /// Which exits restart the child.
    pub when: RestartWhen,
    /// Consecutive restarts allowed (0 = unlimited).
    pub max_restarts: u32,
}

impl RestartPolicy {
    /// Whether a child that ended this way (`failed`: non-zero status or a signal) should
    /// be restarted, given `consecutive` restarts already made without a healthy run.
    pub fn should_restart(&self, failed: bool, consecutive: u32) -> bool {
        let wanted = match self.when {
            RestartWhen::Never => false,
            RestartWhen::OnFailure => failed,
            RestartWhen::Always => true,
        };
        wanted && (self.max_restarts == 0 || consecutive < self.max_restarts)
    }
}

/// The delay before consecutive restart number `n` (1-based): 100 ms doubling, capped at 5 s.
pub fn backoff(n: u32) -> Duration {
    let shift = n.saturating_sub(1).min(16);
    BACKOFF_START.saturating_mul(1u32 << shift).min(BACKOFF_CAP)
}

/// A `--restart` value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--restart `{0}`: expected never, on-failure[:MAX] or always[:MAX] (MAX: consecutive restarts, 0 = unlimited)")]
pub struct RestartParseError(String);

impl FromStr for RestartPolicy {
    type Err = RestartParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RestartParseError(s.to_string());
        let (word, max) = match s.split_once(':') {
            Some((w, m)) => (w, Some(m.parse::<u32>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let when = match word {
            "never" | "no" => RestartWhen::Never,
            "on-failure" => RestartWhen::OnFailure,
            "always" => RestartWhen::Always,
            _ => return Err(bad()),
        };
        if when == RestartWhen::Never && max.is_some() {
            return Err(bad());
        }
        Ok(RestartPolicy {
            when,
            max_restarts: max.unwrap_or(DEFAULT_MAX_RESTARTS),
        })
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.when {
            RestartWhen::Never => write!(f, "never"),
            RestartWhen::OnFailure => write!(f, "on-failure:{}", self.max_restarts),
            RestartWhen::Always => write!(f, "always:{}", self.max_restarts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policies() {
        let p: RestartPolicy = "on-failure".parse().unwrap();
        assert_eq!(p.when, RestartWhen::OnFailure);
        assert_eq!(p.max_restarts, DEFAULT_MAX_RESTARTS);
        let p: RestartPolicy = "always:3".parse().unwrap();
        assert_eq!((p.when, p.max_restarts), (RestartWhen::Always, 3));
        assert_eq!(
            "never".parse::<RestartPolicy>().unwrap().when,
            RestartWhen::Never
        );
        for bad in ["sometimes", "on-failure:x", "never:2", "", "always:-1"] {
            let e = bad.parse::<RestartPolicy>().unwrap_err().to_string();
            assert!(e.contains("on-failure[:MAX]"), "{bad}: {e}");
        }
    }

    #[test]
    fn restart_decisions() {
        let p: RestartPolicy = "on-failure:2".parse().unwrap();
        assert!(p.should_restart(true, 0));
        assert!(p.should_restart(true, 1));
        assert!(!p.should_restart(true, 2));
        assert!(!p.should_restart(false, 0));
        let a: RestartPolicy = "always:0".parse().unwrap();
        assert!(a.should_restart(false, 1000));
        assert!(!RestartPolicy::default().should_restart(true, 0));
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(6), Duration::from_millis(3200));
        assert_eq!(backoff(7), BACKOFF_CAP);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }
}
