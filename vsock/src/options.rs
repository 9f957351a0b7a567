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
    /// Parses crosvm-style `cid=3,uds-path=/tmp/v.sock` (other keys are rejected).
    pub fn from_kv(s: &str) -> Result<VsockOptions, String> {
        let mut cid = 3u64;
        let mut uds = None;
        for kv in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("vsock option `{kv}` is not key=value"))?;
            match k {
                "cid" => {
                    cid = v
                        .parse()
                        .map_err(|_| format!("vsock cid=`{v}` is not a number (3..=4294967295)"))?
                }
                "uds-path" | "uds_path" => uds = Some(PathBuf::from(v)),
                _ => {
                    return Err(format!(
                        "unknown vsock option `{k}` (accepted: cid, uds-path)"
                    ))
                }
            }
        }
        let uds_path = uds.ok_or("vsock needs uds-path=PATH")?;
        Ok(VsockOptions { cid, uds_path })
    }

    /// The device configuration these options describe.
    pub fn config(&self) -> VsockConfig {
        VsockConfig {
            guest_cid: self.cid,
            uds_path: self.uds_path.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv() {
        let o = VsockOptions::from_kv("cid=5,uds-path=/tmp/x").unwrap();
        assert_eq!((o.cid, o.uds_path.to_str().unwrap()), (5, "/tmp/x"));
        assert!(VsockOptions::from_kv("cid=x,uds-path=/a")
            .unwrap_err()
            .contains("cid"));
        assert!(VsockOptions::from_kv("foo=1")
            .unwrap_err()
            .contains("accepted"));
        assert!(VsockOptions::from_kv("cid=4")
            .unwrap_err()
            .contains("uds-path"));
    }
}
