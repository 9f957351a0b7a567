//! virtio-blk wire definitions (virtio 1.2 §5.2) used by the device.
//!
//! Only the constants the device needs, written out here so the wire format is visible in one
//! place; values match `virtio_bindings::virtio_blk`.

/// Bytes in a virtio-blk sector: offsets in requests are always in 512-byte units.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;

/// Request type: read from the device into device-writable buffers.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// Request type: write device-readable buffers to the device.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// Request type: flush the volatile write cache.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// Request type: return the 20-byte device id string.
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Request type: discard ranges (may deallocate).
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// Request type: write zeroes to ranges.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (bad range, write to read-only, malformed request, host I/O failure).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: request type or flag not supported.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Feature: `seg_max` in config space is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature: the device is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature: `blk_size` in config space is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature: flush command supported.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Feature: more than one request queue (`num_queues` is valid).
pub const VIRTIO_BLK_F_MQ: u32 = 12;
/// Feature: discard command supported.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Feature: write-zeroes command supported.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;
/// Feature: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature: used/avail event index notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// Feature: virtio 1.0+ device.
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Flag in a write-zeroes segment: the device may deallocate the range.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// Size of the request header (`type`, `reserved`, `sector`).
pub const REQUEST_HEADER_SIZE: usize = 16;
/// Size of one discard / write-zeroes segment (`sector`, `num_sectors`, `flags`).
pub const DISCARD_SEGMENT_SIZE: usize = 16;
/// Length of the GET_ID answer.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

/// Size of the virtio-blk config space Cordon exposes: everything up to and including
/// `write_zeroes_may_unmap` and its padding (the secure-erase and zoned fields are not offered).
pub const CONFIG_SPACE_SIZE: usize = 60;
