//! Command-line and `key=value` options of the vsock device.

use std::path::PathBuf;

use clap::Args;

use crate::device::VsockConfig;

/// Options of `vsock-device` / `cordon device vsock` / `cordon devices --vsock`.
#[derive(Args, Clone, Debug)]
pub struct VsockOptions {
    /// Guest context id (3..=4294967295).
    #[arg(long, default_value_t = 3)]
    pub cid: u64,
    /// Host Unix socket for hybrid vsock: host programs connect here and write
    /// `CONNECT <port>\n`; guest connections to host port P go to `<uds-path>_<P>`.
    #[arg(long)]
    pub uds_path: PathBuf,
}

impl VsockOptions {
    /// The device configuration these options describe.
    pub fn config(&self) -> VsockConfig {
        VsockConfig {
            guest_cid: self.cid,
            uds_path: self.uds_path.clone(),
        }
    }
}
