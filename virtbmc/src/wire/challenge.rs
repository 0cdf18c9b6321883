//! IPMI 1.5 session activation (IPMI 2.0 §22.16, §22.17): the request and response data of
//! Get Session Challenge and Activate Session, inside IPMI messages. Parsing never panics.

use super::{WireError, le_u32};

fn array16(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

/// Get Session Challenge request (§22.16): auth type and a 16-byte, NUL-padded user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengeRequest {
    pub auth_type: u8,
    pub name: [u8; 16],
}

impl ChallengeRequest {
    pub fn parse(d: &[u8]) -> Result<Self, WireError> {
        if d.len() != 17 {
            return Err(WireError::BadLength);
        }
        Ok(ChallengeRequest {
            auth_type: d[0] & 0x0F,
            name: array16(&d[1..]),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.auth_type);
        out.extend_from_slice(&self.name);
    }

    /// The user name: the bytes before the first NUL.
    pub fn user(&self) -> &[u8] {
        let len = self.name.iter().position(|b| *b == 0).unwrap_or(16);
        &self.name[..len]
    }
}

/// Get Session Challenge response data (§22.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChallengeResponse {
    pub temp_id: u32,
    pub challenge: [u8; 16],
}

impl ChallengeResponse {
    pub fn parse(d: &[u8]) -> Result<Self, WireError> {
        if d.len() != 20 {
            return Err(WireError::BadLength);
        }
        Ok(ChallengeResponse {
            temp_id: le_u32(d),
            challenge: array16(&d[4..]),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.temp_id.to_le_bytes());
        out.extend_from_slice(&self.challenge);
    }
}

/// Activate Session request (§22.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivateRequest {
    pub auth_type: u8,
    pub privilege: u8,
    /// The challenge string from Get Session Challenge, echoed.
    pub challenge: [u8; 16],
    /// The first sequence number the BMC uses towards the console.
    pub initial_outbound: u32,
}

impl ActivateRequest {
    pub fn parse(d: &[u8]) -> Result<Self, WireError> {
        if d.len() != 22 {
            return Err(WireError::BadLength);
        }
        Ok(ActivateRequest {
            auth_type: d[0] & 0x0F,
            privilege: d[1],
            challenge: array16(&d[2..18]),
            initial_outbound: le_u32(&d[18..22]),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.auth_type, self.privilege]);
        out.extend_from_slice(&self.challenge);
        out.extend_from_slice(&self.initial_outbound.to_le_bytes());
    }
}

/// Activate Session response data (§22.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivateResponse {
    pub auth_type: u8,
    pub session_id: u32,
    /// The first sequence number the console uses towards the BMC.
    pub initial_inbound: u32,
    pub privilege: u8,
}

impl ActivateResponse {
    pub fn parse(d: &[u8]) -> Result<Self, WireError> {
        if d.len() != 10 {
            return Err(WireError::BadLength);
        }
        Ok(ActivateResponse {
            auth_type: d[0] & 0x0F,
            session_id: le_u32(&d[1..5]),
            initial_inbound: le_u32(&d[5..9]),
            privilege: d[9] & 0x0F,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.auth_type);
        out.extend_from_slice(&self.session_id.to_le_bytes());
        out.extend_from_slice(&self.initial_inbound.to_le_bytes());
        out.push(self.privilege);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_request_reads_the_name_up_to_nul() {
        let mut d = vec![0x02];
        d.extend_from_slice(b"admin\0\0\0\0\0\0\0\0\0\0\0");
        let r = ChallengeRequest::parse(&d).unwrap();
        assert_eq!((r.auth_type, r.user()), (2, &b"admin"[..]));
        let mut again = Vec::new();
        r.emit(&mut again);
        assert_eq!(again, d);
        let full = ChallengeRequest {
            auth_type: 4,
            name: [b'x'; 16],
        };
        assert_eq!(full.user().len(), 16);
        assert_eq!(ChallengeRequest::parse(&d[..16]), Err(WireError::BadLength));
    }

    #[test]
    fn activate_round_trips() {
        let q = ActivateRequest {
            auth_type: 2,
            privilege: 4,
            challenge: [7; 16],
            initial_outbound: 0x0102_0304,
        };
        let mut b = Vec::new();
        q.emit(&mut b);
        assert_eq!(b.len(), 22);
        assert_eq!(ActivateRequest::parse(&b), Ok(q));
        assert_eq!(ActivateRequest::parse(&b[1..]), Err(WireError::BadLength));
        let r = ActivateResponse {
            auth_type: 2,
            session_id: 9,
            initial_inbound: 77,
            privilege: 4,
        };
        let mut b = Vec::new();
        r.emit(&mut b);
        assert_eq!(ActivateResponse::parse(&b), Ok(r));
        let c = ChallengeResponse {
            temp_id: 5,
            challenge: [1; 16],
        };
        let mut b = Vec::new();
        c.emit(&mut b);
        assert_eq!(ChallengeResponse::parse(&b), Ok(c));
    }
}
