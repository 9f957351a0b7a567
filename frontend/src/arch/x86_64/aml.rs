//! A tiny AML (ACPI Machine Language) encoder: just the objects the VMM's DSDT needs
//! (scopes, devices, named integers, strings, packages and resource-template buffers).
//!
//! Encodings follow the ACPI specification, section 20 ("ACPI Machine Language
//! Specification"). Every function returns the bytes of one term.

const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const NAME_OP: u8 = 0x08;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const STRING_PREFIX: u8 = 0x0d;
const QWORD_PREFIX: u8 = 0x0e;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const EXT_OP_PREFIX: u8 = 0x5b;
const DEVICE_OP: u8 = 0x82;
const ROOT_CHAR: u8 = b'\\';

/// A PkgLength followed by `body`: the length counts itself and the body.
pub fn pkg(body: &[u8]) -> Vec<u8> {
    let n = body.len();
    // One byte holds up to 63; each extra byte adds 8 bits (the lead byte keeps 4).
    let extra = if n < 0x3f {
        0
    } else if n + 2 < 1 << 12 {
        1
    } else if n + 3 < 1 << 20 {
        2
    } else {
        3
    };
    let total = n + 1 + extra;
    let mut out = Vec::with_capacity(total);
    if extra == 0 {
        out.push(total as u8);
    } else {
        out.push(((extra as u8) << 6) | (total & 0xf) as u8);
        for i in 0..extra {
            out.push((total >> (4 + 8 * i)) as u8);
        }
    }
    out.extend_from_slice(body);
    out
}

/// A name path: `\` for a leading root, then 4-character segments, `_`-padded.
/// `"\\_SB_"`, `"PCI0"` and `"_S5"` are accepted; longer paths are not needed here.
pub fn name(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let rest = match path.strip_prefix('\\') {
        Some(r) => {
            out.push(ROOT_CHAR);
            r
        }
        None => path,
    };
    let mut seg = [b'_'; 4];
    for (i, b) in rest.bytes().take(4).enumerate() {
        seg[i] = b;
    }
    out.extend_from_slice(&seg);
    out
}

/// The smallest integer encoding of `v`.
pub fn int(v: u64) -> Vec<u8> {
    match v {
        0 => vec![ZERO_OP],
        1 => vec![ONE_OP],
        2..=0xff => vec![BYTE_PREFIX, v as u8],
        0x100..=0xffff => {
            let mut o = vec![WORD_PREFIX];
            o.extend_from_slice(&(v as u16).to_le_bytes());
            o
        }
        0x1_0000..=0xffff_ffff => {
            let mut o = vec![DWORD_PREFIX];
            o.extend_from_slice(&(v as u32).to_le_bytes());
            o
        }
        _ => {
            let mut o = vec![QWORD_PREFIX];
            o.extend_from_slice(&v.to_le_bytes());
            o
        }
    }
}

/// A string constant (ASCII, no NUL inside).
pub fn string(s: &str) -> Vec<u8> {
    let mut o = vec![STRING_PREFIX];
    o.extend(s.bytes().filter(|b| *b != 0));
    o.push(0);
    o
}

/// A compressed EISA id such as `PNP0A03`, as the 32-bit integer ASL's `EisaId()` makes.
pub fn eisa_id(id: &str) -> Vec<u8> {
    let b = id.as_bytes();
    let letter = |i: usize| u32::from(b.get(i).copied().unwrap_or(b'@').wrapping_sub(0x40)) & 0x1f;
    let hex = |i: usize| {
        b.get(i)
            .and_then(|c| (*c as char).to_digit(16))
            .unwrap_or(0)
    };
    let vendor = (letter(0) << 10) | (letter(1) << 5) | letter(2);
    let product = (hex(3) << 12) | (hex(4) << 8) | (hex(5) << 4) | hex(6);
    // Stored big-endian: vendor bytes first, then product bytes.
    let v = [
        (vendor >> 8) as u8,
        vendor as u8,
        (product >> 8) as u8,
        product as u8,
    ];
    let mut o = vec![DWORD_PREFIX];
    o.extend_from_slice(&v);
    o
}

/// `Name(path, value)`.
pub fn name_decl(path: &str, value: &[u8]) -> Vec<u8> {
    let mut o = vec![NAME_OP];
    o.extend(name(path));
    o.extend_from_slice(value);
    o
}

/// `Package() { elements }`.
pub fn package(elements: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![elements.len() as u8];
    for e in elements {
        body.extend_from_slice(e);
    }
    let mut o = vec![PACKAGE_OP];
    o.extend(pkg(&body));
    o
}

/// `Buffer() { bytes }`.
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    let mut body = int(bytes.len() as u64);
    body.extend_from_slice(bytes);
    let mut o = vec![BUFFER_OP];
    o.extend(pkg(&body));
    o
}

/// `Scope(path) { terms }`.
pub fn scope(path: &str, terms: &[Vec<u8>]) -> Vec<u8> {
    let mut body = name(path);
    for t in terms {
        body.extend_from_slice(t);
    }
    let mut o = vec![SCOPE_OP];
    o.extend(pkg(&body));
    o
}

/// `Device(path) { terms }`.
pub fn device(path: &str, terms: &[Vec<u8>]) -> Vec<u8> {
    let mut body = name(path);
    for t in terms {
        body.extend_from_slice(t);
    }
    let mut o = vec![EXT_OP_PREFIX, DEVICE_OP];
    o.extend(pkg(&body));
    o
}

/// Resource descriptors for `_CRS` buffers (ACPI section 6.4).
pub mod res {
    /// Address-space descriptor flags: producer, positive decode, fixed minimum and
    /// maximum (the window is exactly what it says).
    const FIXED_WINDOW: u8 = 0x0c;

    fn word_space(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
        let len = max.wrapping_sub(min).wrapping_add(1);
        let mut o = vec![0x88, 0x0d, 0x00, kind, FIXED_WINDOW, type_flags];
        for v in [0u16, min, max, 0, len] {
            o.extend_from_slice(&v.to_le_bytes());
        }
        o
    }

    /// `WordBusNumber` covering buses `min..=max`.
    pub fn bus_numbers(min: u8, max: u8) -> Vec<u8> {
        word_space(2, 0, u16::from(min), u16::from(max))
    }

    /// `WordIO` window `min..=max` (entire ISA and non-ISA range).
    pub fn io_window(min: u16, max: u16) -> Vec<u8> {
        word_space(1, 0x03, min, max)
    }

    /// `IO(Decode16, base, base, 1, len)`: fixed I/O ports the device itself uses.
    pub fn io_ports(base: u16, len: u8) -> Vec<u8> {
        let b = base.to_le_bytes();
        vec![0x47, 0x01, b[0], b[1], b[0], b[1], 0x01, len]
    }

    /// `DWordMemory` window `min..=max`, non-cacheable, read-write.
    pub fn mem32_window(min: u32, max: u32) -> Vec<u8> {
        let len = max.wrapping_sub(min).wrapping_add(1);
        let mut o = vec![0x87, 0x17, 0x00, 0x00, FIXED_WINDOW, 0x01];
        for v in [0u32, min, max, 0, len] {
            o.extend_from_slice(&v.to_le_bytes());
        }
        o
    }

    /// End tag (checksum 0: "treat as correct").
    pub fn end() -> Vec<u8> {
        vec![0x79, 0x00]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg(&[0u8; 3])[0], 4);
        let p = pkg(&[0u8; 62]);
        assert_eq!(p[0], 63);
        // 63 bytes of body: 2-byte PkgLength, total 65 = 0x41.
        let p = pkg(&[0u8; 63]);
        assert_eq!(&p[..2], &[0x40 | 0x1, 0x4]);
        assert_eq!(p.len(), 65);
        let p = pkg(&[0u8; 5000]);
        assert_eq!(p.len(), 5003);
        let total = 5003usize;
        assert_eq!(p[0], 0x80 | (total & 0xf) as u8);
        assert_eq!(p[1], (total >> 4) as u8);
        assert_eq!(p[2], (total >> 12) as u8);
    }

    #[test]
    fn eisa_id_matches_asl() {
        // EisaId("PNP0A03") == 0x030AD041.
        assert_eq!(eisa_id("PNP0A03"), vec![0x0c, 0x41, 0xd0, 0x0a, 0x03]);
    }

    #[test]
    fn integers_use_the_smallest_form() {
        assert_eq!(int(0), vec![0]);
        assert_eq!(int(1), vec![1]);
        assert_eq!(int(5), vec![0x0a, 5]);
        assert_eq!(int(0x1234), vec![0x0b, 0x34, 0x12]);
        assert_eq!(int(0xc000_0000), vec![0x0c, 0, 0, 0, 0xc0]);
    }

    #[test]
    fn s5_package() {
        let s5 = name_decl("_S5", &package(&[int(5), int(0), int(0), int(0)]));
        assert_eq!(
            s5,
            vec![0x08, b'_', b'S', b'5', b'_', 0x12, 0x07, 0x04, 0x0a, 0x05, 0, 0, 0]
        );
    }
}
