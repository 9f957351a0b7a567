//! crosvm-style `key=value,flag,key=value` option lists, as used by `cordon devices`.
//!
//! Values may be quoted with `"` to contain commas. Every key must be consumed by the device
//! parser; [`KeyValues::finish`] rejects whatever was left with the list of accepted keys.

use std::fmt;
use std::str::FromStr;

/// Error from parsing or validating a key=value list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The list itself is malformed (empty key, unterminated quote).
    #[error("malformed option list `{list}`: {reason}")]
    Malformed {
        /// The full option list.
        list: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key appears more than once.
    #[error("option `{0}` given more than once")]
    Duplicate(String),
    /// A key is not known to this device.
    #[error("unknown option `{key}` for {device}; accepted: {accepted}")]
    Unknown {
        /// The device kind being parsed.
        device: String,
        /// The rejected key.
        key: String,
        /// Comma-separated accepted keys.
        accepted: String,
    },
    /// A required key is missing.
    #[error("{device}: missing required option `{key}`")]
    Missing {
        /// The device kind being parsed.
        device: String,
        /// The missing key.
        key: String,
    },
    /// A value does not parse.
    #[error("{device}: invalid value `{value}` for `{key}`: {reason}")]
    Invalid {
        /// The device kind being parsed.
        device: String,
        /// The key whose value is bad.
        key: String,
        /// The bad value.
        value: String,
        /// What was expected.
        reason: String,
    },
}

/// One `key[=value]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: String,
    value: Option<String>,
    used: bool,
}

/// A parsed key=value list for one device; consume keys with the `take_*` methods.
#[derive(Debug, Clone)]
pub struct KeyValues {
    device: String,
    accepted: Vec<&'static str>,
    entries: Vec<Entry>,
}

impl KeyValues {
    /// Parses `list` (e.g. `type=stdout,console,vhost=/tmp/s`) for device kind `device`.
    pub fn parse(device: &str, list: &str) -> Result<Self, KvError> {
        let malformed = |reason: &str| KvError::Malformed {
            list: list.to_string(),
            reason: reason.to_string(),
        };
        let mut entries: Vec<Entry> = Vec::new();
        let mut chars = list.chars().peekable();
        loop {
            // key
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c == ',' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            let key = key.trim().to_string();
            let mut value = None;
            if chars.peek() == Some(&'=') {
                chars.next();
                let mut v = String::new();
                if chars.peek() == Some(&'"') {
                    chars.next();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '"' {
                            closed = true;
                            break;
                        }
                        v.push(c);
                    }
                    if !closed {
                        return Err(malformed("unterminated quote"));
                    }
                    if !matches!(chars.peek(), None | Some(',')) {
                        return Err(malformed("text after closing quote"));
                    }
                } else {
                    while let Some(&c) = chars.peek() {
                        if c == ',' {
                            break;
                        }
                        v.push(c);
                        chars.next();
                    }
                }
                value = Some(v);
            }
            if key.is_empty() {
                if value.is_some() || chars.peek().is_some() || !entries.is_empty() {
                    return Err(malformed("empty option name"));
                }
            } else {
                if entries.iter().any(|e| e.key == key) {
                    return Err(KvError::Duplicate(key));
                }
                entries.push(Entry {
                    key,
                    value,
                    used: false,
                });
            }
            match chars.next() {
                Some(',') => continue,
                None => break,
                Some(_) => return Err(malformed("unexpected character")),
            }
        }
        Ok(KeyValues {
            device: device.to_string(),
            accepted: Vec::new(),
            entries,
        })
    }

    /// The device kind name this list belongs to.
    pub fn device(&self) -> &str {
        &self.device
    }

    fn note(&mut self, key: &'static str) {
        if !self.accepted.contains(&key) {
            self.accepted.push(key);
        }
    }

    fn entry(&mut self, key: &'static str) -> Option<&mut Entry> {
        self.note(key);
        self.entries.iter_mut().find(|e| e.key == key)
    }

    /// Takes the raw value of `key`; `Some(None)` when given as a bare flag.
    pub fn take_raw(&mut self, key: &'static str) -> Option<Option<String>> {
        let e = self.entry(key)?;
        e.used = true;
        Some(e.value.clone())
    }

    /// Takes a string value; a bare flag is an error.
    pub fn take_str(&mut self, key: &'static str) -> Result<Option<String>, KvError> {
        match self.take_raw(key) {
            None => Ok(None),
            Some(Some(v)) => Ok(Some(v)),
            Some(None) => Err(self.invalid(key, "", "a value is required (`key=value`)")),
        }
    }

    /// Takes a required string value.
    pub fn require_str(&mut self, key: &'static str) -> Result<String, KvError> {
        self.take_str(key)?.ok_or_else(|| KvError::Missing {
            device: self.device.clone(),
            key: key.to_string(),
        })
    }

    /// Takes a value parsed with `FromStr`.
    pub fn take_parsed<T: FromStr>(&mut self, key: &'static str) -> Result<Option<T>, KvError>
    where
        T::Err: fmt::Display,
    {
        match self.take_str(key)? {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|e| self.invalid(key, &v, &e.to_string())),
        }
    }

    /// Takes a boolean: a bare flag is `true`; `true/false/1/0/yes/no/on/off` are accepted.
    pub fn take_bool(&mut self, key: &'static str) -> Result<Option<bool>, KvError> {
        match self.take_raw(key) {
            None => Ok(None),
            Some(None) => Ok(Some(true)),
            Some(Some(v)) => match v.as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(self.invalid(key, &v, "expected true or false")),
            },
        }
    }

    /// Takes a value that must be one of `choices`.
    pub fn take_choice(
        &mut self,
        key: &'static str,
        choices: &[&str],
    ) -> Result<Option<String>, KvError> {
        match self.take_str(key)? {
            None => Ok(None),
            Some(v) if choices.contains(&v.as_str()) => Ok(Some(v)),
            Some(v) => {
                Err(self.invalid(key, &v, &format!("accepted values: {}", choices.join(", "))))
            }
        }
    }

    /// Builds an [`KvError::Invalid`] for `key`.
    pub fn invalid(&self, key: &str, value: &str, reason: &str) -> KvError {
        KvError::Invalid {
            device: self.device.clone(),
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Fails if any key was not consumed, naming it and the accepted keys.
    pub fn finish(self) -> Result<(), KvError> {
        if let Some(e) = self.entries.iter().find(|e| !e.used) {
            return Err(KvError::Unknown {
                device: self.device.clone(),
                key: e.key.clone(),
                accepted: self.accepted.join(", "),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags_values_and_quotes() {
        let mut kv =
            KeyValues::parse("serial", "type=stdout,console,path=\"/a,b\",vhost=/tmp/s").unwrap();
        assert_eq!(kv.take_str("vhost").unwrap().as_deref(), Some("/tmp/s"));
        assert_eq!(kv.take_bool("console").unwrap(), Some(true));
        assert_eq!(kv.take_str("path").unwrap().as_deref(), Some("/a,b"));
        assert_eq!(
            kv.take_choice("type", &["stdout", "file"])
                .unwrap()
                .as_deref(),
            Some("stdout")
        );
        assert_eq!(kv.take_bool("stdin").unwrap(), None);
        kv.finish().unwrap();
    }

    #[test]
    fn rejects_unknown_and_duplicates() {
        let mut kv = KeyValues::parse("rng", "vhost=/s,bogus=1").unwrap();
        kv.take_str("vhost").unwrap();
        let err = kv.finish().unwrap_err().to_string();
        assert!(err.contains("bogus") && err.contains("vhost"), "{err}");
        assert!(matches!(
            KeyValues::parse("rng", "a=1,a=2"),
            Err(KvError::Duplicate(_))
        ));
        assert!(KeyValues::parse("rng", "a=\"x").is_err());
        assert!(KeyValues::parse("rng", "=x").is_err());
        assert!(KeyValues::parse("rng", "").unwrap().finish().is_ok());
    }

    #[test]
    fn bad_choice_names_accepted_values() {
        let mut kv = KeyValues::parse("serial", "type=tty").unwrap();
        let err = kv.take_choice("type", &["stdout", "file"]).unwrap_err();
        assert!(err.to_string().contains("stdout, file"));
    }
}
