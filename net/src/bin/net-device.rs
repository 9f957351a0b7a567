//! `net-device`: the virtio-net vhost-user backend over a TAP, as a standalone program.

use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use cordon_net::options::NetOptions;
use cordon_net::NetDevice;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// virtio-net device (vhost-user backend) bridging the guest to a TAP interface.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// vhost-user socket to listen on for the frontend (VMM).
    #[arg(long)]
    socket_path: std::path::PathBuf,
    #[command(flatten)]
    net: NetOptions,
}

fn main() -> Result<()> {
    env_logger::init();
    let cli = Cli::parse();
    let cfg = cli.net.config().map_err(|e| anyhow!(e))?;
    let dev = Arc::new(NetDevice::new(cfg).context("net device")?);
    let mut daemon = VhostUserDaemon::new(
        "net-device".into(),
        dev.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| anyhow!("vhost-user daemon: {e}"))?;
    for h in daemon.get_epoll_handlers() {
        h.register_listener(dev.host_event_fd(), EventSet::IN, dev.host_event() as u64)
            .context("registering the TAP listener")?;
    }
    loop {
        daemon
            .serve(&cli.socket_path)
            .map_err(|e| anyhow!("serving {}: {e}", cli.socket_path.display()))?;
        log::info!("frontend disconnected; serving again");
    }
}
