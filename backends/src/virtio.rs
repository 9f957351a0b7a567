//! What every Cordon device offers the same way: base feature bits, the config-space
//! window (with the vhost-user offset quirk) and glibc tuning before the jail.

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// Feature bits every Cordon device offers: VERSION_1, EVENT_IDX, INDIRECT_DESC and the
/// vhost-user PROTOCOL_FEATURES bit. Devices OR their own bits into this.
pub const BASE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Offset of the device-specific config in a virtio-pci function. QEMU sends vhost-user
/// `GET_CONFIG`/`SET_CONFIG` offsets relative to the device config (0); some VMMs add this
/// offset. Both are accepted.
pub const PCI_CONFIG_OFFSET: u32 = 0x100;

/// Largest config read answered (the vhost-user config payload limit).
pub const MAX_CONFIG_READ: usize = 256;

/// Maps a frontend's config offset to an offset into the device config, accepting both the
/// QEMU form (0-based) and the PCI form (0x100-based).
pub fn config_offset(offset: u32) -> usize {
    if offset >= PCI_CONFIG_OFFSET {
        (offset - PCI_CONFIG_OFFSET) as usize
    } else {
        offset as usize
    }
}

/// Answers a config read of `size` bytes at `offset` from the device config `cfg`: bytes
/// past the end of `cfg` read as zero, the size is capped at [`MAX_CONFIG_READ`].
pub fn config_window(cfg: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let offset = config_offset(offset);
    let size = (size as usize).min(MAX_CONFIG_READ);
    let mut out = vec![0u8; size];
    if offset < cfg.len() {
        let n = (cfg.len() - offset).min(size);
        out[..n].copy_from_slice(&cfg[offset..offset + n]);
    }
    out
}

/// Caps glibc's malloc arenas before jailing: otherwise the first contended malloc in a
/// worker thread probes /sys/devices/system/cpu/online with `openat`, which the seccomp
/// policies (rightly) kill.
pub fn limit_malloc_arenas() {
    // SAFETY: mallopt only updates allocator tunables.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 4) };
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: [u8; 4] = [1, 2, 3, 4];

    #[test]
    fn both_offset_conventions_read_the_same_bytes() {
        assert_eq!(config_window(&CFG, 1, 2), vec![2, 3]);
        assert_eq!(config_window(&CFG, PCI_CONFIG_OFFSET + 1, 2), vec![2, 3]);
    }

    #[test]
    fn reads_past_the_end_are_zero_and_capped() {
        assert_eq!(config_window(&CFG, 3, 3), vec![4, 0, 0]);
        assert_eq!(config_window(&CFG, 99, 2), vec![0, 0]);
        assert_eq!(
            config_window(&CFG, u32::MAX, u32::MAX).len(),
            MAX_CONFIG_READ
        );
    }

    #[test]
    fn base_features_have_version_1_and_protocol_features() {
        assert_ne!(BASE_FEATURES & (1 << VIRTIO_F_VERSION_1), 0);
        assert_ne!(BASE_FEATURES & (1 << 30), 0);
    }
}
