//! The virtio-vsock packet header: layout, constants and validation.
//!
//! Every byte here comes from the guest and is hostile, so parsing is a pure function over a
//! byte slice that never panics; the fuzz target `vsock_header` drives it directly.

use thiserror::Error;

/// Size in bytes of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// The well-known CID of the host.
pub const HOST_CID: u64 = 2;
/// Largest payload the device accepts or produces in one packet (Linux uses 64 KiB).
pub const MAX_PKT_PAYLOAD: u32 = 64 * 1024;

/// `VIRTIO_VSOCK_TYPE_STREAM`: the only socket type this device supports.
pub const TYPE_STREAM: u16 = 1;

/// `VIRTIO_VSOCK_OP_REQUEST`: open a connection.
pub const OP_REQUEST: u16 = 1;
/// `VIRTIO_VSOCK_OP_RESPONSE`: accept a connection.
pub const OP_RESPONSE: u16 = 2;
/// `VIRTIO_VSOCK_OP_RST`: refuse or abort a connection.
pub const OP_RST: u16 = 3;
/// `VIRTIO_VSOCK_OP_SHUTDOWN`: half or full close (see the `SHUTDOWN_*` flags).
pub const OP_SHUTDOWN: u16 = 4;
/// `VIRTIO_VSOCK_OP_RW`: stream data.
pub const OP_RW: u16 = 5;
/// `VIRTIO_VSOCK_OP_CREDIT_UPDATE`: announce receive buffer space.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// `VIRTIO_VSOCK_OP_CREDIT_REQUEST`: ask the peer for a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// Shutdown flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A decoded `struct virtio_vsock_hdr` (all fields little endian on the wire).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length following the header.
    pub len: u32,
    /// Socket type (`TYPE_STREAM`).
    pub type_: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Operation flags (shutdown flags for `OP_SHUTDOWN`).
    pub flags: u32,
    /// Sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far.
    pub fwd_cnt: u32,
}

/// Why a guest packet header was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than 44 bytes were available for the header.
    #[error("vsock header truncated: {0} bytes, need 44")]
    Truncated(usize),
    /// The source CID is not the guest's CID.
    #[error("vsock packet from CID {got}, guest CID is {want}")]
    BadSrcCid {
        /// CID found in the header.
        got: u64,
        /// The configured guest CID.
        want: u64,
    },
    /// The destination CID is not the host.
    #[error("vsock packet to CID {0}, only the host (CID 2) is reachable")]
    BadDstCid(u64),
    /// The socket type is not stream.
    #[error("vsock socket type {0} unsupported (only stream, 1)")]
    BadType(u16),
    /// The operation code is unknown.
    #[error("vsock op {0} unknown")]
    BadOp(u16),
    /// The payload length is too large or disagrees with the buffer.
    #[error("vsock payload length {len} invalid ({avail} bytes present, max {max})")]
    BadLen {
        /// Length claimed by the header.
        len: u32,
        /// Bytes actually present after the header.
        avail: usize,
        /// Largest accepted payload.
        max: u32,
    },
    /// A non-data packet carries a payload.
    #[error("vsock op {0} must not carry a payload")]
    UnexpectedPayload(u16),
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

impl Header {
    /// Decodes a header from the first 44 bytes of `b`.
    pub fn decode(b: &[u8]) -> Result<Header, HeaderError> {
        if b.len() < HDR_LEN {
            return Err(HeaderError::Truncated(b.len()));
        }
        Ok(Header {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        })
    }

    /// Encodes the header into its 44-byte wire form.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Checks a header the guest put on the TX queue, `payload_avail` being the number of
    /// bytes that follow the header in the descriptor chain.
    ///
    /// Returns `Err` for packets that must be answered with RST (or dropped, for CID errors:
    /// a packet with a forged source cannot be answered).
    pub fn validate_tx(&self, guest_cid: u64, payload_avail: usize) -> Result<(), HeaderError> {
        if self.src_cid != guest_cid {
            return Err(HeaderError::BadSrcCid {
                got: self.src_cid,
                want: guest_cid,
            });
        }
        if self.dst_cid != HOST_CID {
            return Err(HeaderError::BadDstCid(self.dst_cid));
        }
        if self.type_ != TYPE_STREAM {
            return Err(HeaderError::BadType(self.type_));
        }
        if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&self.op) {
            return Err(HeaderError::BadOp(self.op));
        }
        if self.len > MAX_PKT_PAYLOAD || self.len as usize > payload_avail {
            return Err(HeaderError::BadLen {
                len: self.len,
                avail: payload_avail,
                max: MAX_PKT_PAYLOAD,
            });
        }
        if self.op != OP_RW && self.len != 0 {
            return Err(HeaderError::UnexpectedPayload(self.op));
        }
        Ok(())
    }

    /// Builds a header from the host side (`src`) to the guest (`dst`).
    pub fn to_guest(guest_cid: u64, src_port: u32, dst_port: u32, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            ..Default::default()
        }
    }

    /// The RST answer to this (guest-sent) header.
    pub fn rst_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        }
    }
}

/// Parses the host-side handshake line `CONNECT <port>\n` (Firecracker's hybrid vsock
/// convention). `Ok(None)` means more bytes are needed.
pub fn parse_connect_line(buf: &[u8]) -> Result<Option<(u32, usize)>, String> {
    let Some(nl) = buf.iter().position(|&c| c == b'\n') else {
        if buf.len() > 64 {
            return Err("handshake line longer than 64 bytes".into());
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..nl]).map_err(|_| "handshake is not UTF-8".to_string())?;
    let line = line.trim_end_matches('\r');
    let port = line
        .strip_prefix("CONNECT ")
        .ok_or_else(|| format!("expected `CONNECT <port>`, got {line:?}"))?;
    let port: u32 = port
        .trim()
        .parse()
        .map_err(|_| format!("bad port in handshake {line:?}"))?;
    Ok(Some((port, nl + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1,
            dst_port: 2,
            len: 5,
            type_: 1,
            op: 5,
            flags: 0,
            buf_alloc: 100,
            fwd_cnt: 7,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        assert_eq!(h.validate_tx(3, 5), Ok(()));
        assert!(matches!(
            h.validate_tx(4, 5),
            Err(HeaderError::BadSrcCid { .. })
        ));
        assert!(matches!(
            h.validate_tx(3, 4),
            Err(HeaderError::BadLen { .. })
        ));
        assert_eq!(Header::decode(&[0; 10]), Err(HeaderError::Truncated(10)));
        let bad = Header { op: 9, ..h };
        assert_eq!(bad.validate_tx(3, 5), Err(HeaderError::BadOp(9)));
        let bad = Header { dst_cid: 7, ..h };
        assert_eq!(bad.validate_tx(3, 5), Err(HeaderError::BadDstCid(7)));
        let bad = Header {
            op: OP_REQUEST,
            ..h
        };
        assert_eq!(
            bad.validate_tx(3, 5),
            Err(HeaderError::UnexpectedPayload(1))
        );
    }

    #[test]
    fn connect_line() {
        assert_eq!(parse_connect_line(b"CONNECT 52\n"), Ok(Some((52, 11))));
        assert_eq!(parse_connect_line(b"CONNECT 5"), Ok(None));
        assert!(parse_connect_line(b"HELLO 5\n").is_err());
        assert!(parse_connect_line(b"CONNECT x\n").is_err());
        assert!(parse_connect_line(&[b'a'; 80]).is_err());
    }
}
