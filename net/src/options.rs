//! Command-line and `key=value` options of the net device.

use std::net::Ipv4Addr;

use clap::Args;

use crate::device::{NetConfig, TapSource};

/// Options of `net-device` / `cordon device net` / `cordon devices --net`.
#[derive(Args, Clone, Debug, Default)]
pub struct NetOptions {
    /// Name of the TAP interface to create (or attach to) before jailing.
    #[arg(long)]
    pub tap_name: Option<String>,
    /// An already open TAP fd (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) handed over by the parent.
    #[arg(long, conflicts_with = "tap_name")]
    pub tap_fd: Option<i32>,
    /// Host-side IPv4 address assigned to the created TAP.
    #[arg(long)]
    pub host_ip: Option<Ipv4Addr>,
    /// Netmask for --host-ip.
    #[arg(long)]
    pub netmask: Option<Ipv4Addr>,
    /// Guest MAC address (aa:bb:cc:dd:ee:ff), exposed in the config space.
    #[arg(long, value_parser = parse_mac)]
    pub mac: Option<[u8; 6]>,
    /// Number of queue pairs (a multi-queue TAP is created when > 1).
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!(
            "mac `{s}` must be six hex bytes like 52:54:00:12:34:56"
        ));
    }
    let mut m = [0u8; 6];
    for (d, p) in m.iter_mut().zip(parts) {
        *d =
            u8::from_str_radix(p, 16).map_err(|_| format!("mac `{s}`: `{p}` is not a hex byte"))?;
    }
    Ok(m)
}

impl NetOptions {
    /// The device configuration these options describe.
    pub fn config(&self) -> Result<NetConfig, String> {
        let tap = match (&self.tap_name, self.tap_fd) {
            (Some(n), None) => TapSource::Create {
                name: n.clone(),
                host_ip: self.host_ip,
                netmask: self.netmask,
            },
            (None, Some(fd)) => {
                if self.host_ip.is_some() || self.netmask.is_some() {
                    return Err("host-ip/netmask need tap-name (a handed-over tap-fd is configured by its owner)".into());
                }
                TapSource::Fd(fd)
            }
            _ => return Err("net needs exactly one of tap-name=NAME or tap-fd=N".into()),
        };
        Ok(NetConfig {
            tap,
            mac: self.mac,
            queue_pairs: self.queues,
        })
    }
}
