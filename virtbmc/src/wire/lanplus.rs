//! The RMCP+ (IPMI 2.0) session wrapper (IPMI 2.0 §13.6, §13.28.4): auth type 0x06, payload
//! type, session id, session sequence, 2-byte payload length, payload, and for authenticated
//! packets the integrity trailer (pad to a multiple of 4, pad length, next header, AuthCode).

use super::{WireError, le_u32};

pub const PAYLOAD_IPMI: u8 = 0x00;
pub const PAYLOAD_OPEN_SESSION_REQ: u8 = 0x10;
pub const PAYLOAD_OPEN_SESSION_RSP: u8 = 0x11;
pub const PAYLOAD_RAKP1: u8 = 0x12;
pub const PAYLOAD_RAKP2: u8 = 0x13;
pub const PAYLOAD_RAKP3: u8 = 0x14;
pub const PAYLOAD_RAKP4: u8 = 0x15;
pub const FLAG_ENCRYPTED: u8 = 0x80;
pub const FLAG_AUTHENTICATED: u8 = 0x40;
const NEXT_HEADER: u8 = 0x07;
/// Offset of the payload inside the wrapper (auth type .. payload length).
pub const HEADER_LEN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanPlusPacket<'a> {
    pub payload_type: u8,
    pub encrypted: bool,
    pub authenticated: bool,
    pub session_id: u32,
    pub sequence: u32,
    pub payload: &'a [u8],
    /// Bytes covered by the AuthCode: from the auth type byte through the next-header byte.
    pub signed: &'a [u8],
    /// The AuthCode itself (empty when not authenticated).
    pub auth_code: &'a [u8],
}

impl<'a> LanPlusPacket<'a> {
    /// Parses the wrapper that follows the RMCP header. `auth_code_len` is the integrity
    /// algorithm's AuthCode length for authenticated packets (0 when the session has none).
    pub fn parse(buf: &'a [u8], auth_code_len: usize) -> Result<Self, WireError> {
        let head = buf.get(..HEADER_LEN).ok_or(WireError::Truncated)?;
        if head[0] & 0x0F != super::lan15::AUTH_RMCPP {
            return Err(WireError::Unsupported);
        }
        let len = u16::from_le_bytes([head[10], head[11]]) as usize;
        let payload = buf
            .get(HEADER_LEN..HEADER_LEN + len)
            .ok_or(WireError::BadLength)?;
        let authenticated = head[1] & FLAG_AUTHENTICATED != 0;
        let (signed, auth_code) = if authenticated && auth_code_len > 0 {
            if buf.len() < HEADER_LEN + len + 2 + auth_code_len {
                return Err(WireError::Truncated);
            }
            let (signed, code) = buf.split_at(buf.len() - auth_code_len);
            // signed ends with pad length and next header; the pad sits between payload and them.
            let pad = signed[signed.len() - 2] as usize;
            if signed[signed.len() - 1] != NEXT_HEADER
                || HEADER_LEN + len + pad + 2 != signed.len()
                || pad > 3
            {
                return Err(WireError::BadLength);
            }
            (signed, code)
        } else {
            if buf.len() != HEADER_LEN + len {
                return Err(WireError::BadLength);
            }
            (&buf[..0], &buf[..0])
        };
        Ok(LanPlusPacket {
            payload_type: head[1] & 0x3F,
            encrypted: head[1] & FLAG_ENCRYPTED != 0,
            authenticated,
            session_id: le_u32(&head[2..6]),
            sequence: le_u32(&head[6..10]),
            payload,
            signed,
            auth_code,
        })
    }

    /// Emits the header and payload; for authenticated packets also the integrity pad, pad
    /// length and next header, leaving the caller to append the AuthCode over
    /// `out[wrapper_start..]`.
    pub fn emit(
        flags_and_type: u8,
        session_id: u32,
        sequence: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.push(super::lan15::AUTH_RMCPP);
        out.push(flags_and_type);
        out.extend_from_slice(&session_id.to_le_bytes());
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(payload);
        if flags_and_type & FLAG_AUTHENTICATED != 0 {
            // Pad so that auth type .. next header is a multiple of 4 (§13.28.4).
            let pad = (4 - (out.len() - start + 2) % 4) % 4;
            out.extend(std::iter::repeat_n(0xFF, pad));
            out.push(pad as u8);
            out.push(NEXT_HEADER);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emits_and_parses_an_authenticated_packet() {
        let mut out = Vec::new();
        LanPlusPacket::emit(FLAG_AUTHENTICATED, 0x1234, 7, &[1, 2, 3], &mut out);
        assert_eq!(out.len() % 4, 0);
        out.extend_from_slice(&[9; 12]);
        let p = LanPlusPacket::parse(&out, 12).unwrap();
        assert_eq!(
            (p.session_id, p.sequence, p.payload, p.auth_code),
            (0x1234, 7, &[1, 2, 3][..], &[9; 12][..])
        );
        assert_eq!(p.signed.len(), out.len() - 12);
    }

    #[test]
    fn rejects_inconsistent_trailers() {
        let mut out = Vec::new();
        LanPlusPacket::emit(FLAG_AUTHENTICATED, 1, 1, &[1, 2, 3], &mut out);
        out.extend_from_slice(&[9; 12]);
        assert!(LanPlusPacket::parse(&out[..out.len() - 1], 12).is_err());
        assert!(LanPlusPacket::parse(&out[..10], 12).is_err());
        let mut plain = Vec::new();
        LanPlusPacket::emit(0, 0, 0, &[1, 2], &mut plain);
        plain.push(0);
        assert_eq!(LanPlusPacket::parse(&plain, 0), Err(WireError::BadLength));
    }
}
