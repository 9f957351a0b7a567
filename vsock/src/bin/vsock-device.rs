//! `vsock-device`: the hybrid virtio-vsock vhost-user backend as a standalone program.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use cordon_vsock::device::HOST_EVENT;
use cordon_vsock::options::VsockOptions;
use cordon_vsock::VsockDevice;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// Hybrid virtio-vsock device (vhost-user backend) over host Unix sockets.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// vhost-user socket to listen on for the frontend (VMM).
    #[arg(long)]
    socket_path: std::path::PathBuf,
    #[command(flatten)]
    vsock: VsockOptions,
}

fn main() -> Result<()> {
    env_logger::init();
    let cli = Cli::parse();
    let dev = Arc::new(VsockDevice::new(cli.vsock.config()).context("vsock device")?);
    let mut daemon = VhostUserDaemon::new(
        "vsock-device".into(),
        dev.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| anyhow::anyhow!("vhost-user daemon: {e}"))?;
    for h in daemon.get_epoll_handlers() {
        h.register_listener(dev.host_event_fd(), EventSet::IN, HOST_EVENT as u64)
            .context("registering the host socket listener")?;
    }
    loop {
        daemon
            .serve(&cli.socket_path)
            .map_err(|e| anyhow::anyhow!("serving {}: {e}", cli.socket_path.display()))?;
        log::info!("frontend disconnected; serving again");
    }
}
