//! Block device options: the crosvm-style `--file PATH[:read-only]` form and the `devices`
//! key=value form (`vhost=SOCK,path=IMG[,ro,sparse,id=..,num-queues=N,direct=BOOL]`).

use std::path::PathBuf;

use thiserror::Error;

use crate::defs::VIRTIO_BLK_ID_BYTES;

/// Largest accepted `num-queues` (one worker thread per queue; the serving library's thread mask
/// is 64 bits).
pub const MAX_NUM_QUEUES: u16 = 32;
/// Default busy-poll window after a batch, in microseconds.
pub const DEFAULT_POLL_US: u32 = 50;
/// Largest accepted busy-poll window, in microseconds.
pub const MAX_POLL_US: u32 = 10_000;
/// Default number of I/O threads per queue.
pub const DEFAULT_IO_THREADS: u16 = 4;
/// Largest accepted number of I/O threads per queue.
pub const MAX_IO_THREADS: u16 = 64;
/// Default virtqueue size offered to the frontend.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

/// Errors from parsing block options. Each names the parameter and what is accepted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    /// A key that the block device does not know.
    #[error("unknown block option `{0}`; accepted: vhost, path, ro (read-only), sparse, id, num-queues, direct, block-size, queue-size, poll-us, io-threads")]
    UnknownKey(String),
    /// A value that does not parse for its key.
    #[error("invalid value `{value}` for block option `{key}`: expected {expected}")]
    InvalidValue {
        /// The option.
        key: String,
        /// What was given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A required key is missing.
    #[error("block option `{0}` is required")]
    Missing(&'static str),
    /// A key given twice.
    #[error("block option `{0}` given more than once")]
    Duplicate(String),
}

/// Everything that describes one block device (not how it is served).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOptions {
    /// Raw image file (or block device) path.
    pub path: PathBuf,
    /// Open read-only: writes, discards and write-zeroes are refused.
    pub read_only: bool,
    /// Discard punches holes in the image (and write-zeroes may unmap).
    pub sparse: bool,
    /// Open the image with O_DIRECT (host page cache bypassed).
    pub direct: bool,
    /// Device id returned by GET_ID (at most 20 bytes).
    pub id: Option<String>,
    /// Number of request queues (1..=[`MAX_NUM_QUEUES`]), one worker thread each.
    pub num_queues: u16,
    /// Logical block size advertised to the driver (power of two, 512..=65536).
    pub block_size: u32,
    /// Maximum size of each virtqueue.
    pub queue_size: u16,
    /// After completing a batch, busy-poll the queue this long (µs) before sleeping; 0 never
    /// polls.
    pub poll_us: u32,
    /// I/O threads per queue for requests that may block (0..=[`MAX_IO_THREADS`]; 0 runs
    /// every request on the queue thread, one after another).
    pub io_threads: u16,
}

impl BlockOptions {
    /// Options for `path` with Cordon's defaults (read-write, sparse, buffered, 1 queue).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BlockOptions {
            path: path.into(),
            read_only: false,
            sparse: true,
            direct: false,
            id: None,
            num_queues: 1,
            block_size: 512,
            queue_size: DEFAULT_QUEUE_SIZE,
            poll_us: DEFAULT_POLL_US,
            io_threads: DEFAULT_IO_THREADS,
        }
    }

    /// Parse crosvm's `--file PATH[:read-only]` value.
    pub fn from_file_arg(arg: &str) -> Result<Self, OptionError> {
        let (path, ro) = match arg.rsplit_once(':') {
            Some((p, "read-only")) | Some((p, "ro")) => (p, true),
            _ => (arg, false),
        };
        if path.is_empty() {
            return Err(OptionError::InvalidValue {
                key: "file".into(),
                value: arg.into(),
                expected: "PATH or PATH:read-only",
            });
        }
        let mut o = BlockOptions::new(path);
        o.read_only = ro;
        Ok(o)
    }

    /// Parse the `devices --block` key=value list. Returns the options and the `vhost=` value
    /// (the socket path or PCI address, if given; the caller decides whether it is required).
    pub fn from_key_values(s: &str) -> Result<(Self, Option<String>), OptionError> {
        let mut vhost = None;
        let mut path: Option<PathBuf> = None;
        let mut o = BlockOptions::new("");
        let mut seen: Vec<&str> = Vec::new();
        for item in s.split(',').filter(|i| !i.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v)),
                None => (item.trim(), None),
            };
            let canon = canonical_key(key).ok_or_else(|| OptionError::UnknownKey(key.into()))?;
            if seen.contains(&canon) {
                return Err(OptionError::Duplicate(canon.into()));
            }
            seen.push(canon);
            match canon {
                "vhost" => vhost = Some(required(canon, value, "a socket path")?.to_string()),
                "path" => path = Some(PathBuf::from(required(canon, value, "an image path")?)),
                "ro" => o.read_only = parse_bool(canon, value)?,
                "sparse" => o.sparse = parse_bool(canon, value)?,
                "direct" => o.direct = parse_bool(canon, value)?,
                "id" => o.id = Some(parse_id(required(canon, value, "an id string")?)?),
                "num-queues" => o.num_queues = parse_num_queues(required(canon, value, "1..=32")?)?,
                "block-size" => o.block_size = parse_block_size(required(canon, value, "512")?)?,
                "queue-size" => o.queue_size = parse_queue_size(required(canon, value, "256")?)?,
                "poll-us" => o.poll_us = parse_poll_us(required(canon, value, "0..=10000")?)?,
                "io-threads" => o.io_threads = parse_io_threads(required(canon, value, "0..=64")?)?,
                _ => return Err(OptionError::UnknownKey(key.into())),
            }
        }
        o.path = path.ok_or(OptionError::Missing("path"))?;
        Ok((o, vhost))
    }
}

fn canonical_key(key: &str) -> Option<&'static str> {
    Some(match key {
        "vhost" => "vhost",
        "path" | "file" => "path",
        "ro" | "read-only" | "read_only" => "ro",
        "sparse" => "sparse",
        "direct" | "o_direct" => "direct",
        "id" => "id",
        "num-queues" | "num_queues" => "num-queues",
        "block-size" | "block_size" => "block-size",
        "queue-size" | "queue_size" => "queue-size",
        "poll-us" | "poll_us" => "poll-us",
        "io-threads" | "io_threads" => "io-threads",
        _ => return None,
    })
}

fn required<'a>(
    key: &str,
    value: Option<&'a str>,
    expected: &'static str,
) -> Result<&'a str, OptionError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(OptionError::InvalidValue {
            key: key.into(),
            value: String::new(),
            expected,
        }),
    }
}

fn parse_bool(key: &str, value: Option<&str>) -> Result<bool, OptionError> {
    match value {
        None | Some("true") | Some("on") | Some("1") | Some("yes") => Ok(true),
        Some("false") | Some("off") | Some("0") | Some("no") => Ok(false),
        Some(v) => Err(OptionError::InvalidValue {
            key: key.into(),
            value: v.into(),
            expected: "true or false (or the bare key for true)",
        }),
    }
}

/// Validate a GET_ID string: at most 20 bytes, printable ASCII.
pub fn parse_id(v: &str) -> Result<String, OptionError> {
    if v.len() > VIRTIO_BLK_ID_BYTES || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(OptionError::InvalidValue {
            key: "id".into(),
            value: v.into(),
            expected: "at most 20 printable ASCII characters without spaces or commas",
        });
    }
    Ok(v.to_string())
}

/// Validate `num-queues`.
pub fn parse_num_queues(v: &str) -> Result<u16, OptionError> {
    match v.parse::<u16>() {
        Ok(n) if (1..=MAX_NUM_QUEUES).contains(&n) => Ok(n),
        _ => Err(OptionError::InvalidValue {
            key: "num-queues".into(),
            value: v.into(),
            expected: "an integer from 1 to 32",
        }),
    }
}

/// Validate `block-size`.
pub fn parse_block_size(v: &str) -> Result<u32, OptionError> {
    match v.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && (512..=65536).contains(&n) => Ok(n),
        _ => Err(OptionError::InvalidValue {
            key: "block-size".into(),
            value: v.into(),
            expected: "a power of two from 512 to 65536",
        }),
    }
}

/// Validate `queue-size`.
pub fn parse_queue_size(v: &str) -> Result<u16, OptionError> {
    match v.parse::<u16>() {
        Ok(n) if n.is_power_of_two() && (4..=1024).contains(&n) => Ok(n),
        _ => Err(OptionError::InvalidValue {
            key: "queue-size".into(),
            value: v.into(),
            expected: "a power of two from 4 to 1024",
        }),
    }
}

/// Validate `poll-us`.
pub fn parse_poll_us(v: &str) -> Result<u32, OptionError> {
    match v.parse::<u32>() {
        Ok(n) if n <= MAX_POLL_US => Ok(n),
        _ => Err(OptionError::InvalidValue {
            key: "poll-us".into(),
            value: v.into(),
            expected: "microseconds from 0 to 10000",
        }),
    }
}

/// Validate `io-threads`.
pub fn parse_io_threads(v: &str) -> Result<u16, OptionError> {
    match v.parse::<u16>() {
        Ok(n) if n <= MAX_IO_THREADS => Ok(n),
        _ => Err(OptionError::InvalidValue {
            key: "io-threads".into(),
            value: v.into(),
            expected: "an integer from 0 to 64 (0: no I/O threads)",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_arg_forms() {
        let o = BlockOptions::from_file_arg("/a/b.img").unwrap();
        assert_eq!(o.path, PathBuf::from("/a/b.img"));
        assert!(!o.read_only);
        let o = BlockOptions::from_file_arg("/a/b.img:read-only").unwrap();
        assert_eq!(o.path, PathBuf::from("/a/b.img"));
        assert!(o.read_only);
        assert!(BlockOptions::from_file_arg(":read-only").is_err());
    }

    #[test]
    fn key_values_any_order() {
        let (o, v) = BlockOptions::from_key_values(
            "path=/x.img,ro,id=disk0,num-queues=4,direct=true,sparse=false,vhost=/tmp/s",
        )
        .unwrap();
        assert_eq!(v.as_deref(), Some("/tmp/s"));
        assert_eq!(o.path, PathBuf::from("/x.img"));
        assert!(o.read_only && o.direct && !o.sparse);
        assert_eq!(o.id.as_deref(), Some("disk0"));
        assert_eq!(o.num_queues, 4);
        let (o, v) = BlockOptions::from_key_values("vhost=/s,path=/y").unwrap();
        assert_eq!(v.as_deref(), Some("/s"));
        assert!(!o.read_only && o.sparse && !o.direct);
    }

    #[test]
    fn key_values_errors_name_the_key() {
        let e = BlockOptions::from_key_values("path=/x,bogus=1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = BlockOptions::from_key_values("path=/x,num-queues=0").unwrap_err();
        assert!(e.to_string().contains("num-queues"), "{e}");
        let e = BlockOptions::from_key_values("path=/x,id=123456789012345678901").unwrap_err();
        assert!(e.to_string().contains("id"), "{e}");
        let e = BlockOptions::from_key_values("ro").unwrap_err();
        assert_eq!(e, OptionError::Missing("path"));
        let e = BlockOptions::from_key_values("path=/x,ro=maybe").unwrap_err();
        assert!(e.to_string().contains("ro"), "{e}");
        let e = BlockOptions::from_key_values("path=/x,io-threads=65").unwrap_err();
        assert!(e.to_string().contains("io-threads"), "{e}");
        let (o, _) = BlockOptions::from_key_values("path=/x,io-threads=0").unwrap();
        assert_eq!(o.io_threads, 0);
        let e = BlockOptions::from_key_values("path=/x,path=/y").unwrap_err();
        assert_eq!(e, OptionError::Duplicate("path".into()));
    }
}
