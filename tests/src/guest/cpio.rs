//! A minimal writer for the `newc` cpio format the kernel unpacks as initramfs.

use std::collections::BTreeSet;
use std::io::Write;

/// An initramfs archive being built in memory.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    dirs: BTreeSet<String>,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.buf.extend_from_slice(hdr.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Adds a directory and its missing parents.
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        let mut cur = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            if self.dirs.insert(cur.clone()) {
                let c = cur.clone();
                self.entry(&c, S_IFDIR | 0o755, &[], (0, 0));
            }
        }
    }

    fn parent(&mut self, path: &str) {
        if let Some((p, _)) = path.trim_start_matches('/').rsplit_once('/') {
            self.dir(p);
        }
    }

    /// Adds a regular file (parents are created).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parent(path);
        self.entry(path, S_IFREG | (mode & 0o7777), data, (0, 0));
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, path: &str, major: u32, minor: u32) {
        self.parent(path);
        self.entry(path, S_IFCHR | 0o600, &[], (major, minor));
    }

    /// Finishes the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        let mut out = self.buf;
        // The kernel accepts trailing zero padding; round to 512 like cpio(1) does.
        while !out.len().is_multiple_of(512) {
            out.push(0);
        }
        out
    }

    /// Finishes the archive and writes it to `path` atomically.
    pub fn write_to(self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&self.finish())?;
        f.sync_all()?;
        std::fs::rename(tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let mut c = Cpio::new();
        c.file("/bin/x", 0o755, b"hello");
        let out = c.finish();
        // "bin" dir, then "bin/x", then the trailer.
        assert_eq!(&out[..6], b"070701");
        let s = String::from_utf8_lossy(&out);
        let bin = s.find("bin\0").unwrap();
        let x = s.find("bin/x\0").unwrap();
        assert!(bin < x);
        assert!(s.contains("hello"));
        assert!(s.contains("TRAILER!!!"));
        assert_eq!(out.len() % 512, 0);
        // the file header: mode 0100755, size 5
        let hdr = &s[x - 110..x];
        assert_eq!(&hdr[14..22], "000081ed");
        assert_eq!(&hdr[54..62], "00000005");
    }
}
