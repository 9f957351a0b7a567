//! Hex encoding of binary data in parameters and results.

/// Lower-case hex of `data`.
pub fn encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// FNV-1a 64, a short fingerprint of data too long to print (the host peers print the
/// same one for what they sent and received).
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Decodes hex (either case); `None` if the input is not valid hex.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let d = [0u8, 1, 0xab, 0xff];
        assert_eq!(super::encode(&d), "0001abff");
        assert_eq!(super::decode("0001ABff").unwrap(), d);
        assert!(super::decode("abc").is_none());
        // FNV-1a 64 reference values.
        assert_eq!(super::fnv(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert!(super::decode("zz").is_none());
        assert!(super::decode("é1").is_none());
    }
}
