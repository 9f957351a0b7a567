//! `ext4`: mount a file system from a block device, read and write a file in it.

use crate::hex;
use crate::report::Outcome;
use crate::spec::CheckSpec;
use crate::sysutil::{dev_name, dev_path, mount, umount};

/// `ext4:dev=vda[:file=NAME[:expect=HEX]][:write=NAME:hex=HEX][:ro=1]`: mounts the device,
/// reads `file` (compared with `expect`), writes `write` with `hex` and syncs, unmounts.
pub fn ext4(c: &CheckSpec) -> Result<Outcome, String> {
    let dev = c.str_or("dev", "vda");
    let target = format!("/mnt/{}", dev_name(&dev));
    std::fs::create_dir_all(&target).map_err(|e| format!("mkdir {target}: {e}"))?;
    let flags = if c.str_or("ro", "0") == "1" {
        libc::MS_RDONLY
    } else {
        0
    };
    mount(&dev_path(&dev), &target, "ext4", flags)?;
    let result = inside(c, &target);
    let unmounted = umount(&target);
    let out = result?;
    unmounted?;
    Ok(out)
}

fn safe_name(name: &str) -> Result<&str, String> {
    if name.is_empty() || name.contains('/') || name == ".." || name == "." {
        return Err(format!("file name {name:?} must be a plain name"));
    }
    Ok(name)
}

fn inside(c: &CheckSpec, root: &str) -> Result<Outcome, String> {
    let mut out = Outcome::pass(format!("mounted {} as ext4", c.str_or("dev", "vda")));
    if let Some(name) = c.params.get("file") {
        let p = format!("{root}/{}", safe_name(name)?);
        let got = std::fs::read(&p).map_err(|e| format!("read {p}: {e}"))?;
        out = out.with("hex", hex::encode(&got[..got.len().min(256)]));
        if let Some(e) = c.hex("expect")? {
            if e != got {
                out.ok = false;
                out.detail = format!(
                    "{name}: expected {}, got {}",
                    hex::encode(&e),
                    hex::encode(&got)
                );
            }
        }
    }
    if let Some(name) = c.params.get("write") {
        let p = format!("{root}/{}", safe_name(name)?);
        let data = c.hex("hex")?.ok_or("ext4 write= needs hex=")?;
        std::fs::write(&p, &data).map_err(|e| format!("write {p}: {e}"))?;
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("fsync {p}: {e}"))?;
        out = out.with("written", data.len());
    }
    Ok(out)
}
