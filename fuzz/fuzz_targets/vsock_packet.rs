//! Guest vsock packets: header decoding, validation, and the connection state machine.
#![no_main]

use cordon_vsock::muxer::Muxer;
use cordon_vsock::packet::{Header, HDR_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let Ok(mut mux) = Muxer::new(3, &dir.path().join("v.sock")) else { return };
    let mut rest = data;
    let mut out = Vec::new();
    // A sequence of packets: header, then up to `len` payload bytes.
    while rest.len() >= HDR_LEN {
        let Ok(h) = Header::decode(rest) else { return };
        rest = &rest[HDR_LEN..];
        let n = (h.len as usize).min(rest.len());
        let _ = h.validate_tx(3, n);
        mux.handle_guest_packet(&h, &rest[..n]);
        rest = &rest[n..];
        while let Some(r) = mux.next_rx(4096, &mut out) {
            assert_eq!(r.len as usize, out.len());
        }
    }
    let _ = cordon_vsock::packet::parse_connect_line(data);
});
