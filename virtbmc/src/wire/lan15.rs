//! The IPMI 1.5 session wrapper (IPMI 2.0 §13.6): auth type, sequence, session id, optional
//! 16-byte auth code, message length, message.

use super::{WireError, le_u32};

pub const AUTH_NONE: u8 = 0x00;
pub const AUTH_MD2: u8 = 0x01;
pub const AUTH_MD5: u8 = 0x02;
pub const AUTH_PASSWORD: u8 = 0x04;
pub const AUTH_OEM: u8 = 0x05;
/// Auth type value that marks an RMCP+ (IPMI 2.0) wrapper instead.
pub const AUTH_RMCPP: u8 = 0x06;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lan15Packet<'a> {
    pub auth_type: u8,
    pub sequence: u32,
    pub session_id: u32,
    pub auth_code: Option<&'a [u8; 16]>,
    pub message: &'a [u8],
}

impl<'a> Lan15Packet<'a> {
    /// Parses the wrapper that follows the RMCP header.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let head = buf.get(..9).ok_or(WireError::Truncated)?;
        let auth_type = head[0] & 0x0F;
        let mut at = 9;
        let auth_code = if auth_type == AUTH_NONE {
            None
        } else {
            let code = buf.get(at..at + 16).ok_or(WireError::Truncated)?;
            at += 16;
            Some(<&[u8; 16]>::try_from(code).map_err(|_| WireError::Truncated)?)
        };
        let len = *buf.get(at).ok_or(WireError::Truncated)? as usize;
        at += 1;
        let message = buf.get(at..at + len).ok_or(WireError::BadLength)?;
        // IPMI 1.5 allows one legacy pad byte after the message (§13.6, "legacy PAD").
        if buf.len() > at + len + 1 {
            return Err(WireError::BadLength);
        }
        Ok(Lan15Packet {
            auth_type,
            sequence: le_u32(&head[1..5]),
            session_id: le_u32(&head[5..9]),
            auth_code,
            message,
        })
    }

    /// Emits the wrapper (without the RMCP header) around `message`.
    pub fn emit(
        auth_type: u8,
        sequence: u32,
        session_id: u32,
        auth_code: Option<&[u8; 16]>,
        message: &[u8],
        out: &mut Vec<u8>,
    ) {
        out.push(auth_type);
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&session_id.to_le_bytes());
        if let Some(code) = auth_code {
            out.extend_from_slice(code);
        }
        out.push(message.len() as u8);
        out.extend_from_slice(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sessionless_and_authenticated_forms() {
        let raw = [0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0xAA, 0xBB, 0xCC];
        let p = Lan15Packet::parse(&raw).unwrap();
        assert_eq!(
            (p.auth_type, p.session_id, p.auth_code, p.message),
            (0, 0, None, &[0xAA, 0xBB, 0xCC][..])
        );

        let mut auth = vec![AUTH_MD5, 1, 0, 0, 0, 0x82, 4, 0, 0];
        auth.extend_from_slice(&[7; 16]);
        auth.extend_from_slice(&[1, 0xEE]);
        let p = Lan15Packet::parse(&auth).unwrap();
        assert_eq!(
            (p.sequence, p.session_id, p.auth_code, p.message),
            (1, 0x482, Some(&[7; 16]), &[0xEE][..])
        );
    }

    #[test]
    fn rejects_lengths_that_disagree() {
        assert_eq!(
            Lan15Packet::parse(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 1]),
            Err(WireError::BadLength)
        );
        assert_eq!(
            Lan15Packet::parse(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3]),
            Err(WireError::BadLength)
        );
        assert_eq!(
            Lan15Packet::parse(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            Err(WireError::Truncated)
        );
    }
}
