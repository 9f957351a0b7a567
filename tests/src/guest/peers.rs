//! Peer backends from other projects, used to test the harness itself and as reference
//! implementations beside Cordon's backends: qemu-storage-daemon's vhost-user-blk export.

use super::tools::tool;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running qemu-storage-daemon serving one image as a vhost-user-blk socket (killed on drop).
pub struct QsdBlk {
    child: Child,
    /// The vhost-user socket.
    pub socket: PathBuf,
}

/// qemu-storage-daemon's arguments serving `image` (raw file, writable, discard=unmap,
/// host page cache used) as a vhost-user-blk export on `socket`. Shared by [`QsdBlk`] and
/// scripts that start it elsewhere (the in-guest benchmark's L1).
pub fn qsd_blk_args(image: &str, socket: &str) -> [String; 4] {
    [
        "--blockdev".into(),
        format!("driver=file,node-name=f,filename={image},discard=unmap,cache.direct=off"),
        "--export".into(),
        format!(
            "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={socket},writable=on"
        ),
    ]
}

impl QsdBlk {
    /// Serves `image` (raw, writable, discard=unmap) on `socket`; returns once the socket exists.
    pub fn start(image: &Path, socket: &Path) -> Result<Self> {
        let qsd = tool("qemu-storage-daemon")?;
        let _ = std::fs::remove_file(socket);
        let mut child = Command::new(qsd)
            .args(qsd_blk_args(
                &image.display().to_string(),
                &socket.display().to_string(),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-storage-daemon")?;
        let start = Instant::now();
        while !socket.exists() {
            if let Some(s) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                bail!("qemu-storage-daemon exited ({s}): {err}");
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                bail!("qemu-storage-daemon did not create {}", socket.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(QsdBlk {
            child,
            socket: socket.to_path_buf(),
        })
    }
}

impl Drop for QsdBlk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates an ext4 image of `size_mb` MiB at `path` holding `files` (name, contents).
pub fn ext4_image(path: &Path, size_mb: u64, files: &[(&str, &[u8])]) -> Result<()> {
    let mkfs = tool("mkfs.ext4")?;
    let src = tempfile::tempdir()?;
    for (n, d) in files {
        std::fs::write(src.path().join(n), d)?;
    }
    let f = std::fs::File::create(path)?;
    f.set_len(size_mb << 20)?;
    drop(f);
    super::tools::run(
        Command::new(mkfs)
            .args(["-q", "-F", "-d"])
            .arg(src.path())
            .arg(path),
    )?;
    Ok(())
}
