//! Guest assets, prepared once and cached under `target/guest-assets`: the Debian cloud
//! kernel (downloaded with `apt-get download`, unpacked with `dpkg -x`, `depmod -b`; never
//! installed on the host), the statically linked guest agent, and the base initramfs
//! (busybox-static, decompressed virtio modules in load order, the agent, `/init`).
//!
//! Preparation runs automatically on first use, is serialised between concurrent test
//! processes by a file lock, and fails with the install command when a tool is missing.

use super::cpio::Cpio;
use super::tools::{is_static_elf, run, tool, FileLock, INSTALL_HINT};
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The Debian meta package whose kernel the guests boot (override: `CORDON_GUEST_KERNEL_PKG`).
pub const KERNEL_META_PKG: &str = "linux-image-6.12-cloud-amd64";

/// Modules of the base initramfs, loaded in this order (dependencies first).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio-rng",
    "vmw_vsock_virtio_transport",
];

/// The guest's `/init`: mounts, loads the modules, runs the L1 script if any, else hands over
/// to the agent, which powers off.
pub const INIT_SCRIPT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
if [ -f /cordon/run.sh ] && [ ! -e /.cordon-root ]; then
  # L1: jails pivot_root, which the initramfs (rootfs) cannot do: move onto a tmpfs first.
  mkdir -p /newroot && mount -t tmpfs -o size=90% root /newroot
  for d in /*; do [ "$d" = /newroot ] || cp -a "$d" /newroot/; done
  touch /newroot/.cordon-root
  exec switch_root /newroot /init
fi
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /tmp /mnt /run; mount -t tmpfs tmp /tmp
for m in $(cat /lib/modules/order 2>/dev/null); do
  insmod /lib/modules/$m || echo "CORDON-INIT insmod $m failed"
done
ip link set lo up 2>/dev/null
echo "CORDON-INIT ready uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ -f /cordon/run.sh ]; then
  /bin/cordon-guest-agent
  echo "CORDON-SCRIPT-START"
  cd /cordon && sh /cordon/run.sh
  echo "CORDON-SCRIPT-DONE rc=$?"
  poweroff -f
fi
tty=$(sed -n 's/.*cordon[.]shell=\([a-zA-Z0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$tty" ]; then
  # Interactive (the demo on a terminal): the checks, a readable summary, then a shell on
  # /dev/$tty (the serial console, or a virtio-console); leaving the shell ends the guest.
  /bin/cordon-guest-agent --summary
  echo "CORDON-SHELL-READY a shell on this guest's /dev/$tty; 'exit' ends the guest"
  PS1='cordon-guest# ' setsid -c sh -i </dev/$tty >/dev/$tty 2>&1
  sync
  if grep -q 'cordon.exit=reboot' /proc/cmdline; then reboot -f; else poweroff -f; fi
fi
exec /bin/cordon-guest-agent --poweroff
"#;

/// Bumped when the initramfs layout changes (part of the cache key).
const LAYOUT_VERSION: &str = "3";

/// Everything a guest boot needs, cached on disk.
#[derive(Debug, Clone)]
pub struct GuestAssets {
    /// The cache directory (`target/guest-assets`).
    pub dir: PathBuf,
    /// The kernel image (bzImage).
    pub kernel: PathBuf,
    /// The kernel release, e.g. `6.12.117+deb12-cloud-amd64`.
    pub kernel_version: String,
    /// Root of the unpacked kernel package (holds `lib/modules/<version>`).
    pub kernel_root: PathBuf,
    /// The statically linked guest agent.
    pub agent: PathBuf,
    /// The base initramfs (agent, busybox, [`GUEST_MODULES`]), uncompressed cpio.
    pub initramfs: PathBuf,
}

/// The workspace root (parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The asset cache directory (`CORDON_GUEST_ASSETS` or `target/guest-assets`).
pub fn assets_dir() -> PathBuf {
    std::env::var_os("CORDON_GUEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("guest-assets"))
}

/// The prepared assets (prepared on first call in this process).
pub fn assets() -> Result<&'static GuestAssets> {
    static ASSETS: OnceLock<std::result::Result<GuestAssets, String>> = OnceLock::new();
    ASSETS
        .get_or_init(|| prepare().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("preparing guest assets: {e}"))
}

fn prepare() -> Result<GuestAssets> {
    let dir = assets_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = FileLock::acquire(&dir.join(".lock"))?;
    let (kernel_root, kernel_version) = kernel(&dir)?;
    let kernel = kernel_root.join(format!("boot/vmlinuz-{kernel_version}"));
    let agent = build_agent(&dir)?;
    let a = GuestAssets {
        initramfs: PathBuf::new(),
        dir,
        kernel,
        kernel_version,
        kernel_root,
        agent,
    };
    let initramfs = base_initramfs(&a)?;
    Ok(GuestAssets { initramfs, ..a })
}

/// Unpacks the Debian cloud kernel into `dir/kernel` unless already there.
fn kernel(dir: &Path) -> Result<(PathBuf, String)> {
    let root = dir.join("kernel");
    let done = dir.join("kernel.complete");
    if !done.exists() {
        for t in ["apt-get", "apt-cache", "dpkg", "depmod"] {
            tool(t)?;
        }
        let meta =
            std::env::var("CORDON_GUEST_KERNEL_PKG").unwrap_or_else(|_| KERNEL_META_PKG.into());
        let deps = run(Command::new("apt-cache").args(["depends", &meta])).with_context(|| {
            format!("apt-cache cannot find {meta}: run `apt-get update` ({INSTALL_HINT})")
        })?;
        let pkg = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .ok_or_else(|| anyhow!("{meta} depends on no linux-image package:\n{deps}"))?
            .to_string();
        let dl = dir.join("download");
        let _ = std::fs::remove_dir_all(&dl);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&dl)?;
        run(Command::new("apt-get")
            .arg("download")
            .arg(&pkg)
            .current_dir(&dl))
        .with_context(|| format!("apt-get download {pkg} (try `apt-get update`)"))?;
        let deb = std::fs::read_dir(&dl)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .ok_or_else(|| anyhow!("apt-get download {pkg} produced no .deb"))?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
        let ver = kernel_version(&root)?;
        run(Command::new("depmod").arg("-b").arg(&root).arg(&ver))?;
        std::fs::remove_dir_all(&dl)?;
        std::fs::write(&done, &ver)?;
    }
    let ver = kernel_version(&root)?;
    Ok((root, ver))
}

fn kernel_version(root: &Path) -> Result<String> {
    let m = root.join("lib/modules");
    let mut vers: Vec<String> = std::fs::read_dir(&m)
        .with_context(|| format!("reading {}", m.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    vers.sort();
    vers.pop()
        .ok_or_else(|| anyhow!("no kernel in {}", m.display()))
}

/// Builds `package`'s binary `bin` statically (glibc, `+crt-static`) into its own target
/// dir under the asset cache, so the host build's flags stay untouched. Returns its path.
pub fn build_static(package: &str, bin: &str) -> Result<PathBuf> {
    let dir = assets_dir();
    std::fs::create_dir_all(&dir)?;
    let _lock = FileLock::acquire(&dir.join(".static-lock"))?;
    build_static_in(&dir, package, bin)
}

fn build_static_in(dir: &Path, package: &str, bin: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target = "x86_64-unknown-linux-gnu";
    let tdir = dir.join("static-target");
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "--release",
        "-p",
        package,
        "--bin",
        bin,
        "--target",
        target,
    ])
    .arg("--target-dir")
    .arg(&tdir)
    .arg("--manifest-path")
    .arg(workspace_root().join("Cargo.toml"))
    .env("RUSTFLAGS", "-C target-feature=+crt-static")
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("CARGO_BUILD_RUSTFLAGS");
    run(&mut cmd).with_context(|| format!("building {package} statically"))?;
    let out = tdir.join(target).join("release").join(bin);
    if !is_static_elf(&out)? {
        bail!("{} is not statically linked", out.display());
    }
    Ok(out)
}

fn build_agent(dir: &Path) -> Result<PathBuf> {
    build_static_in(dir, "cordon-guest-agent", "cordon-guest-agent")
}

/// The decompressed modules (dependencies first) for `modules`: (file name, contents).
pub fn module_files(a: &GuestAssets, modules: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
    tool("modprobe")?;
    tool("xz")?;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for m in modules {
        let deps = run(Command::new("modprobe")
            .arg("-d")
            .arg(&a.kernel_root)
            .args(["-S", &a.kernel_version, "--show-depends", m]))?;
        for line in deps.lines() {
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = path.split_whitespace().next().unwrap_or_default();
            let name = Path::new(path)
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".xz").to_string())
                .unwrap_or_default();
            if out.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let data = if path.ends_with(".xz") {
                let o = Command::new("xz").arg("-dc").arg(path).output()?;
                if !o.status.success() {
                    bail!("xz -dc {path}: {}", String::from_utf8_lossy(&o.stderr));
                }
                o.stdout
            } else {
                std::fs::read(path)?
            };
            out.push((name, data));
        }
    }
    Ok(out)
}

/// A new initramfs with busybox, the agent, `/init` and the given modules; callers add
/// their own files before writing it.
pub fn initramfs(a: &GuestAssets, modules: &[&str]) -> Result<Cpio> {
    let busybox = tool("busybox")?;
    if !is_static_elf(&busybox)? {
        bail!(
            "{} is not statically linked: install busybox-static ({INSTALL_HINT})",
            busybox.display()
        );
    }
    let mut c = Cpio::new();
    for d in [
        "dev",
        "proc",
        "sys",
        "tmp",
        "mnt",
        "run",
        "root",
        "etc",
        "lib/modules",
        "var/empty",
    ] {
        c.dir(d);
    }
    c.char_dev("dev/console", 5, 1);
    c.file("bin/busybox", 0o755, &std::fs::read(&busybox)?);
    c.file("bin/cordon-guest-agent", 0o755, &std::fs::read(&a.agent)?);
    c.file("init", 0o755, INIT_SCRIPT.as_bytes());
    let mods = module_files(a, modules)?;
    let order: String = mods.iter().map(|(n, _)| format!("{n}\n")).collect();
    for (n, d) in &mods {
        c.file(&format!("lib/modules/{n}"), 0o644, d);
    }
    c.file("lib/modules/order", 0o644, order.as_bytes());
    Ok(c)
}

fn base_initramfs(a: &GuestAssets) -> Result<PathBuf> {
    let mut h = Sha256::new();
    h.update(std::fs::read(&a.agent)?);
    h.update(INIT_SCRIPT);
    h.update(LAYOUT_VERSION);
    h.update(GUEST_MODULES.join(",").as_bytes());
    h.update(a.kernel_version.as_bytes());
    h.update(std::fs::read(tool("busybox")?)?);
    let key: String = h
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = a.dir.join(format!("initramfs-{key}.cpio"));
    if !path.exists() {
        initramfs(a, GUEST_MODULES)?.write_to(&path)?;
    }
    Ok(path)
}
