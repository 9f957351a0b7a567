//! crosvm's serial parameters (`type=stdout,path=...,input=...,stdin,console,earlycon,
//! hardware=virtio-console`) and opening what they name.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;

use cordon_backends::{KeyValues, KvError};

/// Where guest output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputType {
    /// The backend's standard output.
    Stdout,
    /// The backend's standard error.
    Stderr,
    /// Appended to a file (`path=`).
    File(PathBuf),
    /// Sent as datagrams to a Unix datagram socket (`path=`), as crosvm's `unix`.
    Unix(PathBuf),
    /// Written to a Unix stream socket (`path=`), which also supplies input.
    UnixStream(PathBuf),
    /// Discarded.
    Sink,
}

/// Accepted `type=` values.
pub const TYPES: &[&str] = &["stdout", "stderr", "file", "unix", "unix-stream", "sink"];

/// Parsed serial parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialParams {
    /// Output destination.
    pub output: OutputType,
    /// Input file (`input=`).
    pub input: Option<PathBuf>,
    /// Read guest input from the backend's standard input.
    pub stdin: bool,
    /// Guest console (used by the VMM for the kernel command line; accepted here).
    pub console: bool,
    /// Early console (used by the VMM; accepted here).
    pub earlycon: bool,
    /// Port number (`num=`, 1-based, crosvm compatible).
    pub num: u8,
}

impl Default for SerialParams {
    fn default() -> Self {
        SerialParams {
            output: OutputType::Sink,
            input: None,
            stdin: false,
            console: false,
            earlycon: false,
            num: 1,
        }
    }
}

impl SerialParams {
    /// Parses a crosvm serial parameter list (`vhost=` must already be removed).
    pub fn from_kv(mut kv: KeyValues) -> Result<Self, KvError> {
        let ty = kv
            .take_choice("type", TYPES)?
            .unwrap_or_else(|| "sink".into());
        let path = kv.take_str("path")?.map(PathBuf::from);
        let need_path = |kv: &KeyValues| {
            path.clone().ok_or_else(|| KvError::Missing {
                device: kv.device().to_string(),
                key: format!("path (required by type={ty})"),
            })
        };
        let output = match ty.as_str() {
            "stdout" => OutputType::Stdout,
            "stderr" => OutputType::Stderr,
            "file" => OutputType::File(need_path(&kv)?),
            "unix" => OutputType::Unix(need_path(&kv)?),
            "unix-stream" => OutputType::UnixStream(need_path(&kv)?),
            _ => OutputType::Sink,
        };
        if path.is_some()
            && matches!(
                output,
                OutputType::Stdout | OutputType::Stderr | OutputType::Sink
            )
        {
            return Err(kv.invalid(
                "path",
                "",
                &format!("not used by type={ty}; use type=file, unix or unix-stream"),
            ));
        }
        let input = kv.take_str("input")?.map(PathBuf::from);
        let stdin = kv.take_bool("stdin")?.unwrap_or(false);
        if stdin && input.is_some() {
            return Err(kv.invalid("stdin", "", "cannot be combined with input="));
        }
        let console = kv.take_bool("console")?.unwrap_or(false);
        let earlycon = kv.take_bool("earlycon")?.unwrap_or(false);
        let num = kv.take_parsed::<u8>("num")?.unwrap_or(1);
        if !(1..=4).contains(&num) {
            return Err(kv.invalid("num", &num.to_string(), "accepted values: 1 to 4"));
        }
        if let Some(hw) = kv.take_str("hardware")? {
            if hw != "virtio-console" {
                return Err(kv.invalid(
                    "hardware",
                    &hw,
                    "a vhost-user serial backend is always hardware=virtio-console",
                ));
            }
        }
        kv.finish()?;
        Ok(SerialParams {
            output,
            input,
            stdin,
            console,
            earlycon,
            num,
        })
    }
}

/// Guest output sink.
pub enum Output {
    /// A file or dup'ed stdout/stderr.
    File(File),
    /// A connected datagram socket.
    Datagram(UnixDatagram),
    /// A connected stream socket.
    Stream(UnixStream),
    /// Nowhere.
    Sink,
}

impl Output {
    /// Terminal size `(cols, rows)` when the output is a terminal.
    pub fn winsize(&self) -> Option<(u16, u16)> {
        use std::os::fd::AsRawFd;
        let Output::File(f) = self else { return None };
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into `ws`; fails with ENOTTY on non-ttys.
        let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_col > 0 && ws.ws_row > 0).then_some((ws.ws_col, ws.ws_row))
    }

    /// Writes all of `data`, logging (not failing) on a broken destination.
    pub fn write_all(&mut self, data: &[u8]) {
        let r = match self {
            Output::File(f) => f.write_all(data).and_then(|_| f.flush()),
            Output::Stream(s) => s.write_all(data),
            Output::Datagram(d) => {
                let mut r = Ok(());
                for chunk in data.chunks(4096) {
                    if let Err(e) = d.send(chunk) {
                        r = Err(e);
                        break;
                    }
                }
                r
            }
            Output::Sink => Ok(()),
        };
        if let Err(e) = r {
            log::warn!("serial output: {e}");
        }
    }
}

/// Host-to-guest input source.
pub enum Input {
    /// Pollable (stdin, pipe, tty, socket).
    Stream(OwnedFd),
    /// A regular file, read until EOF (not pollable).
    File(File),
}

/// Everything the serial device needs, opened before the jail.
pub struct Opened {
    /// Output.
    pub output: Output,
    /// Input, if any.
    pub input: Option<Input>,
}

fn ctx<T>(what: String, r: io::Result<T>) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("serial: {what}: {e}"))
}

/// Opens output and input as described by `p`.
pub fn open(p: &SerialParams) -> anyhow::Result<Opened> {
    let mut input = None;
    let output = match &p.output {
        OutputType::Stdout => Output::File(File::from(ctx(
            "dup stdout".into(),
            io::stdout().as_fd().try_clone_to_owned(),
        )?)),
        OutputType::Stderr => Output::File(File::from(ctx(
            "dup stderr".into(),
            io::stderr().as_fd().try_clone_to_owned(),
        )?)),
        OutputType::File(path) => Output::File(ctx(
            format!("open output file {}", path.display()),
            OpenOptions::new().append(true).create(true).open(path),
        )?),
        OutputType::Unix(path) => {
            let s = ctx("create datagram socket".into(), UnixDatagram::unbound())?;
            ctx(
                format!("connect to unix socket {}", path.display()),
                s.connect(path),
            )?;
            Output::Datagram(s)
        }
        OutputType::UnixStream(path) => {
            let s = ctx(
                format!("connect to unix stream socket {}", path.display()),
                UnixStream::connect(path),
            )?;
            if p.input.is_none() && !p.stdin {
                input = Some(Input::Stream(OwnedFd::from(ctx(
                    "dup socket".into(),
                    s.try_clone(),
                )?)));
            }
            Output::Stream(s)
        }
        OutputType::Sink => Output::Sink,
    };
    if p.stdin {
        let fd = ctx("dup stdin".into(), io::stdin().as_fd().try_clone_to_owned())?;
        // A terminal passes every key to the guest as typed until this process ends.
        if ctx(
            "raw mode for stdin".into(),
            cordon_backends::terminal::raw_input(0),
        )? {
            log::info!("serial: stdin is a terminal: raw input until exit");
        }
        input = Some(Input::Stream(fd));
    } else if let Some(path) = &p.input {
        let f = ctx(format!("open input {}", path.display()), File::open(path))?;
        let regular = ctx("stat input".into(), f.metadata())?.is_file();
        input = Some(if regular {
            Input::File(f)
        } else {
            Input::Stream(OwnedFd::from(f))
        });
    }
    Ok(Opened { output, input })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<SerialParams, KvError> {
        SerialParams::from_kv(KeyValues::parse("serial", s).unwrap())
    }

    #[test]
    fn crosvm_seed_line_parses() {
        let p = parse("hardware=virtio-console,console,stdin,type=stdout,earlycon").unwrap();
        assert_eq!(p.output, OutputType::Stdout);
        assert!(p.stdin && p.console && p.earlycon);
    }

    #[test]
    fn errors_name_the_parameter() {
        assert!(parse("type=tty")
            .unwrap_err()
            .to_string()
            .contains("stdout, stderr, file"));
        assert!(parse("type=file").unwrap_err().to_string().contains("path"));
        assert!(parse("hardware=serial")
            .unwrap_err()
            .to_string()
            .contains("virtio-console"));
        assert!(parse("type=stdout,colour=1")
            .unwrap_err()
            .to_string()
            .contains("colour"));
        assert!(parse("stdin,input=/x")
            .unwrap_err()
            .to_string()
            .contains("stdin"));
        assert!(parse("num=9").unwrap_err().to_string().contains("num"));
        assert_eq!(
            parse("type=file,path=/tmp/o,input=/tmp/i").unwrap().input,
            Some(PathBuf::from("/tmp/i"))
        );
    }
}
