//! `cordon stop PATH` and `cordon status PATH`: talk to a running `cordon run -s PATH`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use cordon_frontend::vmm::control;

/// Options of `cordon stop` and `cordon status`.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The control socket (`cordon run -s PATH` or `cordon devices -s PATH`).
    #[arg(value_name = "PATH")]
    pub socket: PathBuf,
}

fn ask(a: &CtlArgs, req: &str) -> Result<serde_json::Value> {
    let line = control::request(&a.socket, req).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (is `cordon run -s {0}` running?)",
            a.socket.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| anyhow::anyhow!("{}: bad answer {line:?}: {e}", a.socket.display()))?;
    if v["ok"] != serde_json::Value::Bool(true) {
        bail!("{}: {}", a.socket.display(), v["error"]);
    }
    Ok(v)
}

/// `cordon stop`: asks the VM (a `cordon run -s PATH` socket) or the device tree (a
/// `cordon devices -s PATH` socket) to stop; returns once it acknowledged.
pub fn stop(a: CtlArgs) -> Result<()> {
    let line = control::request(&a.socket, "stop").map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (is `cordon run -s {0}` or `cordon devices -s {0}` running?)",
            a.socket.display()
        )
    })?;
    // `cordon devices` answers in plain text.
    if line == "stopping" {
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&line)
        .map_err(|e| anyhow::anyhow!("{}: bad answer {line:?}: {e}", a.socket.display()))?;
    if v["ok"] != serde_json::Value::Bool(true) {
        bail!("{}: {}", a.socket.display(), v["error"]);
    }
    Ok(())
}

/// `cordon status`: prints the VM's state and its devices with their backends.
pub fn status(a: CtlArgs) -> Result<()> {
    let v = ask(&a, "status")?;
    println!(
        "state: {}  pid: {}  uptime: {} ms",
        v["state"].as_str().unwrap_or("?"),
        v["pid"],
        v["uptime_ms"]
    );
    for d in v["devices"].as_array().into_iter().flatten() {
        println!(
            "device {:<8} backend {}  {}  reconnects: {}  driver status: {:#04x}",
            d["type"].as_str().unwrap_or("?"),
            d["socket"].as_str().unwrap_or("?"),
            if d["connected"] == serde_json::Value::Bool(true) {
                "connected"
            } else {
                "DISCONNECTED"
            },
            d["reconnects"],
            d["driver_status"].as_u64().unwrap_or(0)
        );
    }
    Ok(())
}
