//! Guest virtio-wl commands: parsing and execution (no compositor, no shm channel).
#![no_main]

use cordon_wayland::protocol::parse_command;
use cordon_wayland::{WlConfig, WlDevice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_command(data);
    let dev = WlDevice::new(WlConfig { wayland_sock: "/nonexistent/wayland-0".into(), shm_size: 1 << 20 }).unwrap();
    // Split into commands on 0xfe bytes to exercise sequences.
    for cmd in data.split(|&b| b == 0xfe) {
        let resp = dev.handle_command(cmd);
        assert!(resp.len() >= 8, "every command gets an answer");
    }
});
