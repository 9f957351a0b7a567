//! The virtio-net header in front of every frame, and validation of guest TX frames.
//!
//! Pure functions over byte slices (fuzz target `net_frame`): every byte comes from the guest.

use thiserror::Error;

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`), used with VERSION_1/MRG_RXBUF.
pub const VNET_HDR_LEN: usize = 12;
/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// Largest frame (without vnet header) the device accepts: 64 KiB GSO frame + Ethernet.
pub const MAX_FRAME: usize = 65535 + ETH_HLEN;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`.
pub const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP`.
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN` (flag bit on the GSO type).
pub const GSO_ECN: u8 = 0x80;

/// A decoded virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_*` flags.
    pub flags: u8,
    /// `GSO_*` type.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Segment size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
    /// Number of merged RX buffers (RX only).
    pub num_buffers: u16,
}

/// Why a guest frame was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer is shorter than the vnet header plus an Ethernet header.
    #[error("frame of {0} bytes is shorter than vnet header + Ethernet header (26)")]
    TooShort(usize),
    /// The frame is larger than 64 KiB.
    #[error("frame of {0} bytes exceeds the 65549-byte maximum")]
    TooLong(usize),
    /// Unknown flag bits.
    #[error("vnet header flags {0:#x} unknown")]
    BadFlags(u8),
    /// Unknown GSO type.
    #[error("vnet header gso_type {0:#x} unknown")]
    BadGsoType(u8),
    /// GSO requested with a zero segment size.
    #[error("GSO frame with gso_size 0")]
    ZeroGsoSize,
    /// Checksum offsets point outside the frame.
    #[error("checksum at {start}+{offset} outside a {len}-byte frame")]
    BadCsum {
        /// csum_start.
        start: u16,
        /// csum_offset.
        offset: u16,
        /// Frame length.
        len: usize,
    },
}

impl VnetHdr {
    /// Decodes the first 12 bytes of `b` (caller checks the length).
    pub fn decode(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
            num_buffers: u(10),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }
}

/// Validates a guest TX buffer (vnet header + Ethernet frame) before it goes to the TAP.
pub fn validate_tx(buf: &[u8]) -> Result<VnetHdr, FrameError> {
    if buf.len() < VNET_HDR_LEN + ETH_HLEN {
        return Err(FrameError::TooShort(buf.len()));
    }
    let frame_len = buf.len() - VNET_HDR_LEN;
    if frame_len > MAX_FRAME {
        return Err(FrameError::TooLong(frame_len));
    }
    let mut hb = [0u8; VNET_HDR_LEN];
    hb.copy_from_slice(&buf[..VNET_HDR_LEN]);
    let h = VnetHdr::decode(&hb);
    if h.flags & !(F_NEEDS_CSUM | F_DATA_VALID) != 0 {
        return Err(FrameError::BadFlags(h.flags));
    }
    match h.gso_type & !GSO_ECN {
        GSO_NONE => {}
        GSO_TCPV4 | GSO_TCPV6 | GSO_UDP => {
            if h.gso_size == 0 {
                return Err(FrameError::ZeroGsoSize);
            }
        }
        _ => return Err(FrameError::BadGsoType(h.gso_type)),
    }
    if h.gso_type == GSO_ECN {
        return Err(FrameError::BadGsoType(h.gso_type));
    }
    if h.flags & F_NEEDS_CSUM != 0 && h.csum_start as usize + h.csum_offset as usize + 2 > frame_len
    {
        return Err(FrameError::BadCsum {
            start: h.csum_start,
            offset: h.csum_offset,
            len: frame_len,
        });
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let mut b = vec![0u8; VNET_HDR_LEN + 60];
        assert!(validate_tx(&b).is_ok());
        assert_eq!(validate_tx(&b[..20]), Err(FrameError::TooShort(20)));
        b[0] = 0x40;
        assert_eq!(validate_tx(&b), Err(FrameError::BadFlags(0x40)));
        b[0] = F_NEEDS_CSUM;
        b[6] = 59; // csum_start
        assert!(matches!(validate_tx(&b), Err(FrameError::BadCsum { .. })));
        b[6] = 34;
        b[8] = 6;
        assert!(validate_tx(&b).is_ok());
        b[1] = GSO_TCPV4;
        assert_eq!(validate_tx(&b), Err(FrameError::ZeroGsoSize));
        b[1] = 9;
        assert_eq!(validate_tx(&b), Err(FrameError::BadGsoType(9)));
        assert!(matches!(
            validate_tx(&vec![0u8; 70000 + VNET_HDR_LEN]),
            Err(FrameError::TooLong(_))
        ));
        let h = VnetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 54,
            gso_size: 1400,
            csum_start: 54,
            csum_offset: 16,
            num_buffers: 3,
        };
        assert_eq!(VnetHdr::decode(&h.encode()), h);
    }
}
