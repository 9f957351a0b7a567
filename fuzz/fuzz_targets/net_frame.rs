//! Guest TX buffers: virtio-net header + Ethernet frame validation.
#![no_main]

use cordon_net::frame::{validate_tx, VnetHdr, VNET_HDR_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = validate_tx(data) {
        let mut b = [0u8; VNET_HDR_LEN];
        b.copy_from_slice(&data[..VNET_HDR_LEN]);
        assert_eq!(VnetHdr::decode(&b), h);
        assert_eq!(&h.encode()[..], &data[..VNET_HDR_LEN]);
    }
});
