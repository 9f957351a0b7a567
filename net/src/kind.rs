//! The `net` device kind: `net-device`, `cordon device net`, `cordon devices --net`.

use std::ffi::OsString;
use std::sync::Arc;

use clap::Parser;
use cordon_backends::{
    serve, CommonArgs, DeviceKind, Endpoint, KeyValues, OpenedDevice, ServeOptions,
};

use crate::options::{parse_mac, NetOptions};
use crate::NetDevice;

/// Arguments of the standalone `net-device`.
#[derive(Parser, Debug)]
#[command(
    name = "net-device",
    about = "vhost-user virtio-net backend over a TAP device, jailed"
)]
pub struct NetArgs {
    /// Connection and sandbox flags.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Device options.
    #[command(flatten)]
    pub net: NetOptions,
}

struct OpenedNet(Arc<NetDevice>);

impl OpenedDevice for OpenedNet {
    fn policy(&self) -> String {
        "net_device_vhost_user".into()
    }

    fn adopted_fds(&self) -> Vec<std::os::fd::RawFd> {
        // A handed-over tap-fd was open before `open`; created TAP fds are listed too
        // (harmless: the supervisor keeps each fd once).
        self.0.tap_fds()
    }

    fn serve(self: Box<Self>, endpoint: Endpoint, opts: ServeOptions) -> anyhow::Result<()> {
        serve(self.0, endpoint, opts)?;
        Ok(())
    }
}

/// Opens the TAP (creating/configuring it: needs CAP_NET_ADMIN, before the jail).
fn open(opts: &NetOptions) -> anyhow::Result<Box<dyn OpenedDevice>> {
    cordon_backends::virtio::limit_malloc_arenas();
    let cfg = opts.config().map_err(|e| anyhow::anyhow!(e))?;
    let dev = NetDevice::new(cfg).map_err(|e| anyhow::anyhow!("net: {e}"))?;
    log::info!("net: serving TAP {}", dev.tap_name());
    Ok(Box::new(OpenedNet(Arc::new(dev))))
}

/// The net device kind.
pub struct NetKind;

/// The registry entry for `cordon devices --net`.
pub static KIND: NetKind = NetKind;

impl DeviceKind for NetKind {
    fn name(&self) -> &'static str {
        "net"
    }

    fn syntax(&self) -> &'static str {
        "vhost=SOCK,(tap-name=NAME[,host-ip=IP,netmask=MASK]|tap-fd=N)[,mac=MAC][,queues=N]"
    }

    fn open(&self, mut kv: KeyValues) -> anyhow::Result<Box<dyn OpenedDevice>> {
        let mac = match kv.take_str("mac")? {
            Some(m) => Some(parse_mac(&m).map_err(|e| anyhow::anyhow!(e))?),
            None => None,
        };
        let opts = NetOptions {
            tap_name: kv.take_str("tap-name")?,
            tap_fd: kv.take_parsed("tap-fd")?,
            host_ip: kv.take_parsed("host-ip")?,
            netmask: kv.take_parsed("netmask")?,
            mac,
            queues: kv.take_parsed("queues")?.unwrap_or(1),
        };
        kv.finish()?;
        open(&opts)
    }

    fn run_standalone(&self, argv: Vec<OsString>) -> anyhow::Result<()> {
        let args = NetArgs::try_parse_from(argv).unwrap_or_else(|e| e.exit());
        let dev = open(&args.net)?;
        cordon_backends::device::run_opened("net", dev, &args.common)
    }
}
