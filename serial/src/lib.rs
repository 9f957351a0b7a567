//! virtio-console over vhost-user, with crosvm's serial parameters.
#![deny(missing_docs)]

pub mod console;
pub mod params;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use cordon_backends::{
    serve, BindMount, CommonArgs, DeviceKind, Endpoint, KeyValues, OpenedDevice, ServeOptions,
};

pub use console::Console;
pub use params::{OutputType, SerialParams};

/// `serial-device` / `cordon device serial` command line (crosvm `device console` flags).
#[derive(Parser, Debug)]
#[command(
    name = "serial-device",
    about = "vhost-user virtio-console backend, jailed",
    after_help = "Output goes to stdout unless --output-file or --port says otherwise.\n\
                  --port takes crosvm's serial parameters: type=stdout|stderr|file|unix|unix-stream|sink,\n\
                  path=PATH, input=PATH, stdin, console, earlycon, hardware=virtio-console, num=N"
)]
pub struct SerialArgs {
    /// Connection, sandbox and lifetime flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Append guest output to this file.
    #[arg(long, value_name = "PATH", conflicts_with = "port")]
    pub output_file: Option<PathBuf>,
    /// Feed this file (or fifo) to the guest as input.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["port", "stdin"])]
    pub input_file: Option<PathBuf>,
    /// Feed the backend's standard input to the guest.
    #[arg(long, conflicts_with = "port")]
    pub stdin: bool,
    /// One console port, as crosvm serial parameters (e.g. `type=file,path=/tmp/out`).
    #[arg(long, value_name = "PARAMS")]
    pub port: Option<String>,
}

impl SerialArgs {
    /// The serial parameters these flags describe.
    pub fn params(&self) -> anyhow::Result<SerialParams> {
        if let Some(p) = &self.port {
            return Ok(SerialParams::from_kv(KeyValues::parse("--port", p)?)?);
        }
        Ok(SerialParams {
            output: match &self.output_file {
                Some(p) => OutputType::File(p.clone()),
                None => OutputType::Stdout,
            },
            input: self.input_file.clone(),
            stdin: self.stdin,
            ..SerialParams::default()
        })
    }
}

struct OpenedSerial {
    opened: params::Opened,
}

impl OpenedDevice for OpenedSerial {
    fn policy(&self) -> String {
        "serial_device_vhost_user".into()
    }
    fn mounts(&self) -> Vec<BindMount> {
        Vec::new()
    }
    fn serve(self: Box<Self>, endpoint: Endpoint, opts: ServeOptions) -> anyhow::Result<()> {
        serve(Arc::new(Console::new(self.opened)), endpoint, opts)?;
        Ok(())
    }
}

fn open(p: &SerialParams) -> anyhow::Result<Box<dyn OpenedDevice>> {
    Ok(Box::new(OpenedSerial {
        opened: params::open(p)?,
    }))
}

/// The serial device kind, for the CLI registry.
pub struct SerialKind;

/// The registry entry for serial.
pub static KIND: SerialKind = SerialKind;

impl DeviceKind for SerialKind {
    fn name(&self) -> &'static str {
        "serial"
    }
    fn syntax(&self) -> &'static str {
        "vhost=SOCKET[,type=stdout|stderr|file|unix|unix-stream|sink][,path=PATH][,input=PATH][,stdin][,console][,earlycon][,hardware=virtio-console][,num=N]"
    }
    fn open(&self, opts: KeyValues) -> anyhow::Result<Box<dyn OpenedDevice>> {
        open(&SerialParams::from_kv(opts)?)
    }
    fn run_standalone(&self, argv: Vec<OsString>) -> anyhow::Result<()> {
        let args = SerialArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
        let dev = open(&args.params()?)?;
        cordon_backends::device::run_opened("serial", dev, &args.common)
    }
}
