//! RMCP header (DMTF ASF 2.0 §3.2.2) and the ASF presence ping/pong (ASF 2.0 §3.2.4).

use super::WireError;

pub const RMCP_VERSION: u8 = 0x06;
/// Sequence number meaning "do not send an RMCP ACK"; IPMI always uses it (IPMI 2.0 §13.1.3).
pub const RMCP_SEQ_NO_ACK: u8 = 0xFF;
pub const CLASS_ASF: u8 = 0x06;
pub const CLASS_IPMI: u8 = 0x07;
const CLASS_ACK_BIT: u8 = 0x80;

pub const ASF_IANA: u32 = 4542;
pub const ASF_PING: u8 = 0x80;
pub const ASF_PONG: u8 = 0x40;
/// Supported entities: bit 7 = IPMI supported, low bits = ASF version 1.0.
pub const PONG_ENTITIES_IPMI: u8 = 0x81;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RmcpHeader {
    pub sequence: u8,
    pub class: u8,
}

impl RmcpHeader {
    pub const LEN: usize = 4;

    /// Parses the header; RMCP ACKs (class bit 7) are reported as `Unsupported` since a BMC
    /// that never asks for acknowledgement has nothing to do with one.
    pub fn parse(buf: &[u8]) -> Result<(RmcpHeader, &[u8]), WireError> {
        let h = buf.get(..Self::LEN).ok_or(WireError::Truncated)?;
        if h[0] != RMCP_VERSION || h[3] & CLASS_ACK_BIT != 0 {
            return Err(WireError::Unsupported);
        }
        Ok((
            RmcpHeader {
                sequence: h[2],
                class: h[3] & 0x1F,
            },
            &buf[Self::LEN..],
        ))
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[RMCP_VERSION, 0x00, self.sequence, self.class]);
    }
}

/// An ASF message header: IANA enterprise number, type, tag, data length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AsfMessage<'a> {
    pub iana: u32,
    pub msg_type: u8,
    pub tag: u8,
    pub data: &'a [u8],
}

impl<'a> AsfMessage<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let h = buf.get(..8).ok_or(WireError::Truncated)?;
        let len = h[7] as usize;
        let data = buf.get(8..8 + len).ok_or(WireError::BadLength)?;
        Ok(AsfMessage {
            iana: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
            msg_type: h[4],
            tag: h[5],
            data,
        })
    }
}

/// The whole Presence Pong datagram (RMCP header included) answering a ping with `tag`.
/// The fast path emits these same 28 bytes.
pub fn emit_pong(rmcp_seq: u8, tag: u8, out: &mut Vec<u8>) {
    RmcpHeader {
        sequence: rmcp_seq,
        class: CLASS_ASF,
    }
    .emit(out);
    out.extend_from_slice(&ASF_IANA.to_be_bytes());
    out.extend_from_slice(&[ASF_PONG, tag, 0x00, 0x10]);
    out.extend_from_slice(&ASF_IANA.to_be_bytes()); // OEM IANA
    out.extend_from_slice(&[0, 0, 0, 0]); // OEM-defined
    out.extend_from_slice(&[PONG_ENTITIES_IPMI, 0x00]); // entities, interactions
    out.extend_from_slice(&[0; 6]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_matches_captured_reply() {
        // ipmi_sim's reply to rmcpping tag 0x27 (captures/sim_rmcpping).
        let mut out = Vec::new();
        emit_pong(0xFF, 0x27, &mut out);
        let want = [
            0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x40, 0x27, 0x00, 0x10, 0x00, 0x00,
            0x11, 0xBE, 0, 0, 0, 0, 0x81, 0x00, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn rejects_acks_and_other_versions() {
        assert_eq!(
            RmcpHeader::parse(&[6, 0, 0xFF, 0x86]),
            Err(WireError::Unsupported)
        );
        assert_eq!(
            RmcpHeader::parse(&[7, 0, 0xFF, 0x07]),
            Err(WireError::Unsupported)
        );
        assert_eq!(RmcpHeader::parse(&[6, 0]), Err(WireError::Truncated));
    }
}
