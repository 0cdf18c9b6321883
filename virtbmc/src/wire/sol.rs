//! The Serial-over-LAN payload (RMCP+ payload type 1, IPMI 2.0 §15.9): a four-byte header
//! (packet sequence, acked sequence, accepted character count, operation or status) and the
//! characters.

use super::WireError;

/// RMCP+ payload type of SOL (IPMI 2.0 §13.27.3).
pub const PAYLOAD_SOL: u8 = 0x01;
pub const HEADER_LEN: usize = 4;

/// Operation bits, console to BMC (§15.9, table 15-2).
pub mod op {
    pub const NACK: u8 = 0x40;
    pub const RING: u8 = 0x20;
    pub const BREAK: u8 = 0x10;
    pub const DEASSERT_CTS: u8 = 0x08;
    pub const DEASSERT_DCD_DSR: u8 = 0x04;
    pub const FLUSH_INBOUND: u8 = 0x02;
    pub const FLUSH_OUTBOUND: u8 = 0x01;
}

/// Status bits, BMC to console (§15.9, table 15-3).
pub mod status {
    pub const NACK: u8 = 0x40;
    pub const TRANSFER_UNAVAILABLE: u8 = 0x20;
    pub const DEACTIVATING: u8 = 0x10;
    pub const TRANSMIT_OVERRUN: u8 = 0x08;
    pub const BREAK_DETECTED: u8 = 0x04;
}

/// One SOL packet. Sequence numbers are 4 bits, 1 to 15; 0 in `seq` marks an ACK-only
/// packet and 0 in `ack` a packet that acknowledges nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolPacket<'a> {
    pub seq: u8,
    pub ack: u8,
    pub accepted: u8,
    pub op: u8,
    pub data: &'a [u8],
}

impl<'a> SolPacket<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let head = buf.get(..HEADER_LEN).ok_or(WireError::Truncated)?;
        Ok(SolPacket {
            seq: head[0] & 0x0F,
            ack: head[1] & 0x0F,
            accepted: head[2],
            op: head[3],
            data: &buf[HEADER_LEN..],
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.seq & 0x0F, self.ack & 0x0F, self.accepted, self.op]);
        out.extend_from_slice(self.data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_emits_the_header() {
        let p = SolPacket::parse(&[0xF3, 0x12, 5, op::BREAK, b'a']).unwrap();
        assert_eq!(
            (p.seq, p.ack, p.accepted, p.op, p.data),
            (3, 2, 5, 0x10, &b"a"[..])
        );
        let mut out = Vec::new();
        p.emit(&mut out);
        assert_eq!(out, [3, 2, 5, 0x10, b'a']);
        assert_eq!(SolPacket::parse(&[1, 2, 3]), Err(WireError::Truncated));
    }
}
