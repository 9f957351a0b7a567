//! The `wayland` device kind: `wayland-device`, `cordon device wayland`,
//! `cordon devices --wayland`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser};
use cordon_backends::sandbox::BindMount;
use cordon_backends::{
    serve, CommonArgs, DeviceKind, Endpoint, KeyValues, OpenedDevice, ServeOptions,
};

use crate::device::{WlConfig, WlDevice};

/// Default size of the shared memory region (256 MiB).
pub const DEFAULT_SHM_SIZE: u64 = 256 << 20;

/// Device options.
#[derive(Args, Clone, Debug)]
pub struct WlOptions {
    /// Compositor socket [default: $XDG_RUNTIME_DIR/wayland-0].
    #[arg(long)]
    pub wayland_sock: Option<PathBuf>,
    /// Size in bytes of the shared memory region VFDs are mapped into (multiple of 4096).
    #[arg(long, default_value_t = DEFAULT_SHM_SIZE)]
    pub shm_size: u64,
}

impl WlOptions {
    /// The configuration, resolving the default socket from `$XDG_RUNTIME_DIR`.
    pub fn config(&self) -> anyhow::Result<WlConfig> {
        let sock = match &self.wayland_sock {
            Some(p) => std::path::absolute(p)?,
            None => {
                let dir = std::env::var_os("XDG_RUNTIME_DIR").ok_or_else(|| {
                    anyhow::anyhow!("wayland-sock not given and XDG_RUNTIME_DIR is not set")
                })?;
                PathBuf::from(dir).join("wayland-0")
            }
        };
        Ok(WlConfig {
            wayland_sock: sock,
            shm_size: self.shm_size,
        })
    }
}

/// Arguments of the standalone `wayland-device`.
#[derive(Parser, Debug)]
#[command(
    name = "wayland-device",
    about = "vhost-user virtio-wl backend forwarding to a host Wayland compositor, jailed"
)]
pub struct WlArgs {
    /// Connection and sandbox flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Device options.
    #[command(flatten)]
    pub wl: WlOptions,
}

struct OpenedWl {
    dev: Arc<WlDevice>,
    sock: PathBuf,
}

impl OpenedDevice for OpenedWl {
    fn policy(&self) -> String {
        "wayland_device_vhost_user".into()
    }

    fn mounts(&self) -> Vec<BindMount> {
        // Contexts connect to the compositor socket after jailing.
        match self.sock.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => vec![BindMount {
                path: dir.to_path_buf(),
                writable: false,
            }],
            _ => Vec::new(),
        }
    }

    fn serve(self: Box<Self>, endpoint: Endpoint, opts: ServeOptions) -> anyhow::Result<()> {
        serve(self.dev, endpoint, opts)?;
        Ok(())
    }
}

fn open(o: &WlOptions) -> anyhow::Result<Box<dyn OpenedDevice>> {
    cordon_backends::virtio::limit_malloc_arenas();
    let cfg = o.config()?;
    let sock = cfg.wayland_sock.clone();
    let dev = WlDevice::new(cfg)?;
    Ok(Box::new(OpenedWl {
        dev: Arc::new(dev),
        sock,
    }))
}

/// The wayland device kind.
pub struct WlKind;

/// The registry entry for `cordon devices --wayland`.
pub static KIND: WlKind = WlKind;

impl DeviceKind for WlKind {
    fn name(&self) -> &'static str {
        "wayland"
    }

    fn syntax(&self) -> &'static str {
        "vhost=SOCK[,wayland-sock=PATH][,shm-size=BYTES]"
    }

    fn open(&self, mut kv: KeyValues) -> anyhow::Result<Box<dyn OpenedDevice>> {
        let o = WlOptions {
            wayland_sock: kv.take_str("wayland-sock")?.map(PathBuf::from),
            shm_size: kv.take_parsed("shm-size")?.unwrap_or(DEFAULT_SHM_SIZE),
        };
        kv.finish()?;
        open(&o)
    }

    fn run_standalone(&self, argv: Vec<OsString>) -> anyhow::Result<()> {
        let args = WlArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
        let dev = open(&args.wl)?;
        cordon_backends::device::run_opened("wayland", dev, &args.common)
    }
}
