//! virtio-wl wire format (as in crosvm and the Linux `virtio_wl` driver): command codes,
//! structures, and a parser for guest commands that never panics (fuzz target `wl_command`).

use thiserror::Error;

/// Guest asks for a shared-memory VFD.
pub const CMD_VFD_NEW: u32 = 256;
/// Guest closes a VFD.
pub const CMD_VFD_CLOSE: u32 = 257;
/// Guest sends bytes (and VFDs) on a VFD.
pub const CMD_VFD_SEND: u32 = 258;
/// Device delivers bytes (and VFDs) to the guest.
pub const CMD_VFD_RECV: u32 = 259;
/// Guest opens a new compositor connection (context).
pub const CMD_VFD_NEW_CTX: u32 = 260;
/// Guest asks for a pipe (not supported: answered with `RESP_INVALID_CMD`).
pub const CMD_VFD_NEW_PIPE: u32 = 261;
/// Device tells the guest a VFD hung up.
pub const CMD_VFD_HUP: u32 = 262;
/// Guest asks for a dmabuf (not supported).
pub const CMD_VFD_NEW_DMABUF: u32 = 263;
/// Guest syncs a dmabuf (not supported).
pub const CMD_VFD_DMABUF_SYNC: u32 = 264;
/// Guest sends foreign ids (not supported).
pub const CMD_VFD_SEND_FOREIGN_ID: u32 = 265;
/// Guest opens a named context.
pub const CMD_VFD_NEW_CTX_NAMED: u32 = 266;
/// Success.
pub const RESP_OK: u32 = 4096;
/// Success, with a `CtrlVfdNew` body.
pub const RESP_VFD_NEW: u32 = 4097;
/// Generic failure.
pub const RESP_ERR: u32 = 4352;
/// Allocation failed.
pub const RESP_OUT_OF_MEMORY: u32 = 4353;
/// Unknown or already used VFD id.
pub const RESP_INVALID_ID: u32 = 4354;
/// VFD of the wrong type for the command.
pub const RESP_INVALID_TYPE: u32 = 4355;
/// Bad flags.
pub const RESP_INVALID_FLAGS: u32 = 4356;
/// Unknown or malformed command.
pub const RESP_INVALID_CMD: u32 = 4357;

/// VFD flag: the guest may write.
pub const VFD_WRITE: u32 = 0x1;
/// VFD flag: the guest may read (with TRANS_FLAGS).
pub const VFD_READ: u32 = 0x2;
/// VFD flag: mapped into the shared memory region (without TRANS_FLAGS).
pub const VFD_MAP: u32 = 0x2;
/// VFD flag: a context (without TRANS_FLAGS).
pub const VFD_CONTROL: u32 = 0x4;

/// Feature bit: transition flags (READ/WRITE instead of MAP/CONTROL).
pub const F_TRANS_FLAGS: u32 = 1;
/// Feature bit: fences in VFD_SEND (not offered).
pub const F_SEND_FENCES: u32 = 2;
/// Feature bit: VFD memory lives in the device's shared memory region.
pub const F_USE_SHMEM: u32 = 3;

/// First id of device-allocated VFDs; guest ids are below it.
pub const HOST_ID_BASE: u32 = 0x4000_0000;
/// Most VFDs in one send/recv.
pub const MAX_SEND_VFDS: usize = 28;
/// Size of the VFD_RECV header (hdr + id + count).
pub const RECV_HDR_LEN: usize = 16;
/// Largest data payload in one VFD_RECV, so that it fits a 4 KiB guest buffer.
pub const IN_BUFFER_LEN: usize = 0x1000 - RECV_HDR_LEN - MAX_SEND_VFDS * 4;
/// Largest command the device reads from the guest.
pub const MAX_CMD_LEN: usize = 64 * 1024;
/// Page size of the shared memory region (pfn unit).
pub const PAGE_SIZE: u64 = 4096;

/// A decoded guest command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `VFD_NEW`: shared memory of `size` bytes for guest id `id`.
    New {
        /// Guest-chosen id.
        id: u32,
        /// Requested flags.
        flags: u32,
        /// Size in bytes.
        size: u32,
    },
    /// `VFD_CLOSE`.
    Close {
        /// VFD to close.
        id: u32,
    },
    /// `VFD_SEND`: `data` and the VFDs `vfds` on context `id`.
    Send {
        /// Target context.
        id: u32,
        /// VFDs whose fds travel along.
        vfds: Vec<u32>,
        /// Bytes.
        data: &'a [u8],
    },
    /// `VFD_NEW_CTX` (or `VFD_NEW_CTX_NAMED` with `name`).
    NewCtx {
        /// Guest-chosen id.
        id: u32,
        /// Socket name for named contexts (empty: the default compositor).
        name: String,
    },
    /// `VFD_NEW_PIPE`: a pipe the guest reads (`VFD_READ`) or writes (`VFD_WRITE`); its
    /// other end travels to the compositor in a `VFD_SEND`.
    NewPipe {
        /// Guest-chosen id.
        id: u32,
        /// `VFD_READ` or `VFD_WRITE`.
        flags: u32,
    },
    /// A known command this device does not implement (dmabufs, foreign ids).
    Unsupported(u32),
}

/// Why a command could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CmdError {
    /// Fewer bytes than the command's structure.
    #[error("virtio-wl command {cmd} truncated: {len} bytes, need {need}")]
    Truncated {
        /// Command code (0 if even the header is missing).
        cmd: u32,
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Unknown command code.
    #[error("virtio-wl command {0} unknown")]
    Unknown(u32),
    /// Too many VFDs in a send.
    #[error("VFD_SEND with {0} VFDs (max 28)")]
    TooManyVfds(u32),
    /// Named-context name not NUL-terminated UTF-8.
    #[error("VFD_NEW_CTX_NAMED name invalid")]
    BadName,
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn need(cmd: u32, b: &[u8], n: usize) -> Result<(), CmdError> {
    if b.len() < n {
        return Err(CmdError::Truncated {
            cmd,
            len: b.len(),
            need: n,
        });
    }
    Ok(())
}

/// Decodes one command from the readable part of an out-queue chain.
pub fn parse_command(b: &[u8]) -> Result<Command<'_>, CmdError> {
    need(0, b, 8)?;
    let cmd = u32_at(b, 0);
    match cmd {
        CMD_VFD_NEW => {
            need(cmd, b, 28)?;
            Ok(Command::New {
                id: u32_at(b, 8),
                flags: u32_at(b, 12),
                size: u32_at(b, 24),
            })
        }
        CMD_VFD_CLOSE => {
            need(cmd, b, 12)?;
            Ok(Command::Close { id: u32_at(b, 8) })
        }
        CMD_VFD_SEND => {
            need(cmd, b, 16)?;
            let id = u32_at(b, 8);
            let count = u32_at(b, 12);
            if count as usize > MAX_SEND_VFDS {
                return Err(CmdError::TooManyVfds(count));
            }
            let end = 16 + 4 * count as usize;
            need(cmd, b, end)?;
            let vfds = (0..count as usize).map(|i| u32_at(b, 16 + 4 * i)).collect();
            Ok(Command::Send {
                id,
                vfds,
                data: &b[end..],
            })
        }
        CMD_VFD_NEW_CTX => {
            need(cmd, b, 12)?;
            Ok(Command::NewCtx {
                id: u32_at(b, 8),
                name: String::new(),
            })
        }
        CMD_VFD_NEW_CTX_NAMED => {
            // ctrl_vfd_new (28 bytes + 4 padding) followed by a 32-byte name.
            need(cmd, b, 64)?;
            let raw = &b[32..64];
            let end = raw.iter().position(|&c| c == 0).ok_or(CmdError::BadName)?;
            let name = std::str::from_utf8(&raw[..end]).map_err(|_| CmdError::BadName)?;
            Ok(Command::NewCtx {
                id: u32_at(b, 8),
                name: name.to_string(),
            })
        }
        CMD_VFD_NEW_PIPE => {
            need(cmd, b, 28)?;
            Ok(Command::NewPipe {
                id: u32_at(b, 8),
                flags: u32_at(b, 12),
            })
        }
        CMD_VFD_NEW_DMABUF | CMD_VFD_DMABUF_SYNC | CMD_VFD_SEND_FOREIGN_ID => {
            Ok(Command::Unsupported(cmd))
        }
        other => Err(CmdError::Unknown(other)),
    }
}

/// Encodes a bare response/header `{type, flags=0}`.
pub fn hdr(kind: u32) -> Vec<u8> {
    let mut v = kind.to_le_bytes().to_vec();
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// Encodes a `CtrlVfdNew` message (`RESP_VFD_NEW` answer or host `VFD_NEW` event).
pub fn vfd_new(kind: u32, id: u32, flags: u32, pfn: u64, size: u32) -> Vec<u8> {
    let mut v = hdr(kind);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&pfn.to_le_bytes());
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// Encodes a `{hdr, vfd_id}` message (`VFD_HUP`).
pub fn vfd_msg(kind: u32, id: u32) -> Vec<u8> {
    let mut v = hdr(kind);
    v.extend_from_slice(&id.to_le_bytes());
    v
}

/// Encodes a `VFD_RECV` event.
pub fn vfd_recv(id: u32, vfds: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = hdr(CMD_VFD_RECV);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&(vfds.len() as u32).to_le_bytes());
    for x in vfds {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(data);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        let mut b = hdr(CMD_VFD_NEW_CTX);
        b.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            parse_command(&b),
            Ok(Command::NewCtx {
                id: 7,
                name: String::new()
            })
        );
        assert!(matches!(
            parse_command(&b[..6]),
            Err(CmdError::Truncated { .. })
        ));
        let mut s = hdr(CMD_VFD_SEND);
        s.extend_from_slice(&1u32.to_le_bytes());
        s.extend_from_slice(&2u32.to_le_bytes());
        s.extend_from_slice(&5u32.to_le_bytes());
        assert!(matches!(parse_command(&s), Err(CmdError::Truncated { .. })));
        s.extend_from_slice(&6u32.to_le_bytes());
        s.extend_from_slice(b"hi");
        assert_eq!(
            parse_command(&s),
            Ok(Command::Send {
                id: 1,
                vfds: vec![5, 6],
                data: b"hi"
            })
        );
        let mut t = hdr(CMD_VFD_SEND);
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&1000u32.to_le_bytes());
        assert_eq!(parse_command(&t), Err(CmdError::TooManyVfds(1000)));
        assert_eq!(parse_command(&hdr(999)), Err(CmdError::Unknown(999)));
        let n = vfd_new(CMD_VFD_NEW, 3, 1, 0, 8192);
        assert_eq!(
            parse_command(&n),
            Ok(Command::New {
                id: 3,
                flags: 1,
                size: 8192
            })
        );
    }
}
