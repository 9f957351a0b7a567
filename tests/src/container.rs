//! OCI containers for Cordon backends, run by a real OCI runtime (`runc`).
//!
//! No image registry is reachable here, so a bundle is written by hand: a tiny read-only
//! rootfs around one statically linked device binary, a `config.json` with no capabilities,
//! `noNewPrivileges`, its own namespaces, a small tmpfs `/tmp` (where the device's own jail
//! stages its empty root) and bind mounts of exactly the socket directory and the device's
//! resources. The device then jails itself again inside the container (user namespace,
//! pivot_root, seccomp), as it does on a host.

use crate::guest::console::{read_log, tail};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A host path made visible inside the container.
#[derive(Debug, Clone)]
pub struct Bind {
    /// Host path (file or directory).
    pub host: PathBuf,
    /// Path inside the container.
    pub container: String,
    /// Whether the container may write to it.
    pub writable: bool,
}

/// An OCI bundle for one device backend, started with `runc run --detach`.
pub struct Container {
    id: String,
    bundle: PathBuf,
    log: PathBuf,
}

/// How to build a [`Container`].
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Container id (unique per test run).
    pub id: String,
    /// The statically linked binary, copied to `/bin/<name>` in the rootfs.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Bind mounts (socket directory, image files...).
    pub binds: Vec<Bind>,
    /// Open descriptors of this process handed to the device as fds 3, 4, ... in order
    /// (`runc run --preserve-fds N`), e.g. a TAP opened by the privileged parent for
    /// `net-device --tap-fd 3`. This process keeps its own copies.
    pub pass_fds: Vec<RawFd>,
}

/// Duplicates `fd` to a descriptor number >= 64 (close-on-exec), so that moving the copies
/// onto 3, 4, ... in the child never overwrites a source that is still to be moved.
fn dup_high(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor or fails; the result is checked.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64) };
    if n < 0 {
        bail!(
            "cannot duplicate fd {fd} to hand it to the container: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: `n` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn runc() -> Result<PathBuf> {
    crate::guest::tools::tool("runc")
}

/// The OCI `config.json` for `spec`: no capabilities, read-only root, new namespaces.
pub fn oci_config(spec: &ContainerSpec, bin_name: &str) -> Value {
    let mut args = vec![format!("/bin/{bin_name}")];
    args.extend(spec.args.iter().cloned());
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=1m"]}),
    ];
    for b in &spec.binds {
        mounts.push(json!({
            "destination": b.container,
            "type": "bind",
            "source": b.host,
            "options": ["rbind", if b.writable { "rw" } else { "ro" }],
        }));
    }
    let no_caps: Vec<String> = Vec::new();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["RUST_LOG=info"],
            "cwd": "/",
            "capabilities": {
                "bounding": no_caps, "effective": no_caps, "permitted": no_caps,
                "inheritable": no_caps, "ambient": no_caps
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": spec.id,
        "mounts": mounts,
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "network"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

impl Container {
    /// Writes the bundle under `dir` and starts the container detached; its output goes to
    /// `dir/<id>.log`.
    pub fn start(dir: &Path, spec: &ContainerSpec) -> Result<Self> {
        let runc = runc()?;
        let bundle = dir.join(&spec.id);
        let rootfs = bundle.join("rootfs");
        for d in ["bin", "proc", "dev", "tmp", "run"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        let bin_name = spec
            .binary
            .file_name()
            .and_then(|n| n.to_str())
            .context("binary has no file name")?
            .to_string();
        std::fs::copy(&spec.binary, rootfs.join("bin").join(&bin_name))
            .with_context(|| format!("copying {}", spec.binary.display()))?;
        for b in &spec.binds {
            let target = rootfs.join(b.container.trim_start_matches('/'));
            if b.host.is_dir() {
                std::fs::create_dir_all(&target)?;
            } else {
                if let Some(p) = target.parent() {
                    std::fs::create_dir_all(p)?;
                }
                std::fs::write(&target, b"")?;
            }
        }
        let config = oci_config(spec, &bin_name);
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&config)?,
        )?;
        let log = dir.join(format!("{}.log", spec.id));
        let out = std::fs::File::create(&log)?;
        // A stale container of the same id (an aborted earlier run) would make `run` fail.
        let _ = Command::new(&runc)
            .args(["delete", "--force", &spec.id])
            .stderr(Stdio::null())
            .status();
        let mut cmd = Command::new(&runc);
        cmd.args(["run", "--detach"]);
        // runc hands the container stdio + $LISTEN_FDS + N descriptors: make sure no
        // inherited socket-activation variables shift the numbering.
        cmd.env_remove("LISTEN_FDS").env_remove("LISTEN_PID");
        let high = spec
            .pass_fds
            .iter()
            .map(|&fd| dup_high(fd))
            .collect::<Result<Vec<_>>>()?;
        if !high.is_empty() {
            cmd.arg("--preserve-fds").arg(high.len().to_string());
            let raw: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
            // SAFETY: only async-signal-safe dup2 calls between fork and exec; dup2 clears
            // close-on-exec on the target, so runc inherits exactly fds 3..3+N.
            unsafe {
                cmd.pre_exec(move || {
                    for (i, &fd) in raw.iter().enumerate() {
                        if libc::dup2(fd, 3 + i as RawFd) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let status = cmd
            .arg("--bundle")
            .arg(&bundle)
            .arg(&spec.id)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .context("starting runc")?;
        drop(high);
        if !status.success() {
            bail!(
                "runc run {} failed ({status}):\n{}",
                spec.id,
                tail(&read_log(&log))
            );
        }
        Ok(Container {
            id: spec.id.clone(),
            bundle,
            log,
        })
    }

    /// Waits until `path` (a socket the container creates in a bound directory) exists.
    pub fn wait_for_path(&self, path: &Path, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while !path.exists() {
            if start.elapsed() > timeout || self.status().is_ok_and(|s| s == "stopped") {
                bail!(
                    "container {} did not create {} within {timeout:?} (state: {}):\n{}",
                    self.id,
                    path.display(),
                    self.status().unwrap_or_else(|e| e.to_string()),
                    tail(&self.output())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The host pid of the container's init process (`runc state`).
    pub fn pid(&self) -> Result<u32> {
        let out = Command::new(runc()?)
            .args(["state", &self.id])
            .output()
            .context("runc state")?;
        let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "runc state {}: {}",
                self.id,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        v["pid"]
            .as_u64()
            .map(|p| p as u32)
            .context("runc state has no pid")
    }

    /// The container's status as `runc state` reports it (`running`, `stopped`...).
    pub fn status(&self) -> Result<String> {
        let out = Command::new(runc()?).args(["state", &self.id]).output()?;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        Ok(v["status"].as_str().unwrap_or("gone").to_string())
    }

    /// What the device printed (stdout and stderr).
    pub fn output(&self) -> String {
        read_log(&self.log)
    }

    /// The bundle directory.
    pub fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// The container id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A failure report: the container's state and the tail of its output (the device's
    /// and runc's stderr).
    pub fn report(&self) -> String {
        format!(
            "--- container {} ({}), output:\n{}",
            self.id,
            self.status().unwrap_or_else(|e| e.to_string()),
            tail(&self.output())
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Ok(runc) = runc() {
            let _ = Command::new(&runc)
                .args(["kill", &self.id, "KILL"])
                .stderr(Stdio::null())
                .status();
            let _ = Command::new(&runc)
                .args(["delete", "--force", &self.id])
                .stderr(Stdio::null())
                .status();
        }
    }
}
