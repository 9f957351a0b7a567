//! The `vsock` device kind: `vsock-device`, `cordon device vsock`, `cordon devices --vsock`.

use std::ffi::OsString;
use std::sync::Arc;

use clap::Parser;
use cordon_backends::sandbox::BindMount;
use cordon_backends::{
    serve, CommonArgs, DeviceKind, Endpoint, KeyValues, OpenedDevice, ServeOptions,
};

use crate::device::VsockConfig;
use crate::options::VsockOptions;
use crate::VsockDevice;

/// Arguments of the standalone `vsock-device`.
#[derive(Parser, Debug)]
#[command(
    name = "vsock-device",
    about = "vhost-user virtio-vsock backend (hybrid vsock over host Unix sockets), jailed"
)]
pub struct VsockArgs {
    /// Connection and sandbox flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Device options.
    #[command(flatten)]
    pub vsock: VsockOptions,
}

struct OpenedVsock {
    dev: Arc<VsockDevice>,
    cfg: VsockConfig,
}

impl OpenedDevice for OpenedVsock {
    fn policy(&self) -> String {
        "vsock_device_vhost_user".into()
    }

    fn mounts(&self) -> Vec<BindMount> {
        // Guest-initiated streams connect to `<uds-path>_<port>` sockets next to uds-path.
        match self.cfg.uds_path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => vec![BindMount {
                path: dir.to_path_buf(),
                writable: false,
            }],
            _ => Vec::new(),
        }
    }

    fn created_paths(&self) -> Vec<std::path::PathBuf> {
        // The host-side listener (`CONNECT <port>` clients) bound at open.
        vec![self.cfg.uds_path.clone()]
    }

    fn serve(self: Box<Self>, endpoint: Endpoint, opts: ServeOptions) -> anyhow::Result<()> {
        serve(self.dev, endpoint, opts)?;
        Ok(())
    }
}

fn open(opts: &VsockOptions) -> anyhow::Result<Box<dyn OpenedDevice>> {
    cordon_backends::virtio::limit_malloc_arenas();
    let mut cfg = opts.config();
    cfg.uds_path = std::path::absolute(&cfg.uds_path)?;
    let dev = VsockDevice::new(cfg.clone())
        .map_err(|e| anyhow::anyhow!("vsock uds-path={}: {e}", cfg.uds_path.display()))?;
    Ok(Box::new(OpenedVsock {
        dev: Arc::new(dev),
        cfg,
    }))
}

/// The vsock device kind.
pub struct VsockKind;

/// The registry entry for `cordon devices --vsock`.
pub static KIND: VsockKind = VsockKind;

impl DeviceKind for VsockKind {
    fn name(&self) -> &'static str {
        "vsock"
    }

    fn syntax(&self) -> &'static str {
        "vhost=SOCK,uds-path=PATH[,cid=N]"
    }

    fn open(&self, mut kv: KeyValues) -> anyhow::Result<Box<dyn OpenedDevice>> {
        let cid: Option<u64> = kv.take_parsed("cid")?;
        let uds = kv.require_str("uds-path")?;
        kv.finish()?;
        open(&VsockOptions {
            cid: cid.unwrap_or(3),
            uds_path: uds.into(),
        })
    }

    fn run_standalone(&self, argv: Vec<OsString>) -> anyhow::Result<()> {
        let args = VsockArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
        let dev = open(&args.vsock)?;
        cordon_backends::device::run_opened("vsock", dev, &args.common)
    }
}
