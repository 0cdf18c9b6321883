//! RMCP+ session set-up payloads (IPMI 2.0 §13.17-§13.23): Open Session Request and
//! Response, RAKP Messages 1-4. Each is a plain struct with `parse` from a payload and
//! `emit` into a buffer; parsing never panics. Refusals (a non-zero status) are the short
//! forms the spec allows: tag, status, reserved, the console's session id.

use super::{WireError, le_u32};

fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[..N]);
    a
}

/// One of the three algorithm proposals of an Open Session Request (§13.17, table 13-17):
/// payload type (0 authentication, 1 integrity, 2 confidentiality), payload length (8, or 0
/// for "let the BMC choose"), algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    pub kind: u8,
    pub len: u8,
    pub algorithm: u8,
}

impl Proposal {
    fn parse(b: &[u8]) -> Proposal {
        Proposal {
            kind: b[0],
            len: b[3],
            algorithm: b[4] & 0x3F,
        }
    }

    fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.kind, 0, 0, self.len, self.algorithm, 0, 0, 0]);
    }

    /// The algorithm a well-formed proposal of `kind` names (None: any the BMC likes).
    pub fn wants(&self, kind: u8) -> Result<Option<u8>, WireError> {
        match (self.kind == kind, self.len) {
            (true, 0) => Ok(None),
            (true, 8) => Ok(Some(self.algorithm)),
            _ => Err(WireError::Unsupported),
        }
    }
}

/// Open Session Request (§13.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSessionRequest {
    pub tag: u8,
    /// Requested maximum privilege (low nibble; 0 = the highest the channel allows).
    pub privilege: u8,
    pub console_id: u32,
    /// Authentication, integrity, confidentiality; None when the payload is not the
    /// 32 bytes of three proposals (still answerable: the tag and console id were read).
    pub proposals: Option<[Proposal; 3]>,
}

impl OpenSessionRequest {
    pub fn parse(p: &[u8]) -> Result<Self, WireError> {
        let head = p.get(..8).ok_or(WireError::Truncated)?;
        let proposals = (p.len() == 32).then(|| {
            [
                Proposal::parse(&p[8..16]),
                Proposal::parse(&p[16..24]),
                Proposal::parse(&p[24..32]),
            ]
        });
        Ok(OpenSessionRequest {
            tag: head[0],
            privilege: head[1] & 0x0F,
            console_id: le_u32(&head[4..8]),
            proposals,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.tag, self.privilege, 0, 0]);
        out.extend_from_slice(&self.console_id.to_le_bytes());
        for p in self.proposals.iter().flatten() {
            p.emit(out);
        }
    }
}

/// What an accepted Open Session Response adds to the refusal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub managed_id: u32,
    pub auth: u8,
    pub integrity: u8,
    pub confidentiality: u8,
}

/// Open Session Response (§13.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSessionResponse {
    pub tag: u8,
    pub status: u8,
    pub privilege: u8,
    pub console_id: u32,
    /// Present when the status is 0.
    pub opened: Option<Opened>,
}

impl OpenSessionResponse {
    pub fn parse(p: &[u8]) -> Result<Self, WireError> {
        let head = p.get(..8).ok_or(WireError::Truncated)?;
        let opened = match p.len() {
            8 => None,
            36 => Some(Opened {
                managed_id: le_u32(&p[8..12]),
                auth: p[16] & 0x3F,
                integrity: p[24] & 0x3F,
                confidentiality: p[32] & 0x3F,
            }),
            _ => return Err(WireError::BadLength),
        };
        Ok(OpenSessionResponse {
            tag: head[0],
            status: head[1],
            privilege: head[2] & 0x0F,
            console_id: le_u32(&head[4..8]),
            opened,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        let privilege = if self.opened.is_some() {
            self.privilege
        } else {
            0
        };
        out.extend_from_slice(&[self.tag, self.status, privilege, 0]);
        out.extend_from_slice(&self.console_id.to_le_bytes());
        if let Some(o) = &self.opened {
            out.extend_from_slice(&o.managed_id.to_le_bytes());
            for (kind, algorithm) in [(0u8, o.auth), (1, o.integrity), (2, o.confidentiality)] {
                Proposal {
                    kind,
                    len: 8,
                    algorithm,
                }
                .emit(out);
            }
        }
    }
}

/// RAKP Message 1 (§13.20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rakp1<'a> {
    pub tag: u8,
    pub managed_id: u32,
    pub rm: [u8; 16],
    /// Requested maximum privilege (low nibble) and the name-only lookup bit (0x10).
    pub role: u8,
    /// None when the name length byte exceeds 16 or disagrees with the payload.
    pub name: Option<&'a [u8]>,
}

impl<'a> Rakp1<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Self, WireError> {
        let head = p.get(..28).ok_or(WireError::Truncated)?;
        let len = head[27] as usize;
        let name = (len <= 16 && p.len() == 28 + len).then(|| &p[28..]);
        Ok(Rakp1 {
            tag: head[0],
            managed_id: le_u32(&head[4..8]),
            rm: array(&head[8..24]),
            role: head[24],
            name,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        let name = self.name.unwrap_or_default();
        out.extend_from_slice(&[self.tag, 0, 0, 0]);
        out.extend_from_slice(&self.managed_id.to_le_bytes());
        out.extend_from_slice(&self.rm);
        out.extend_from_slice(&[self.role, 0, 0, name.len() as u8]);
        out.extend_from_slice(name);
    }
}

/// What an accepted RAKP Message 2 adds to the refusal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rakp2Body<'a> {
    pub rc: [u8; 16],
    pub guid: [u8; 16],
    /// Key exchange authentication code: HMAC keyed by the user's password (§13.31).
    pub code: &'a [u8],
}

/// RAKP Message 2 (§13.21).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rakp2<'a> {
    pub tag: u8,
    pub status: u8,
    pub console_id: u32,
    pub body: Option<Rakp2Body<'a>>,
}

impl<'a> Rakp2<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Self, WireError> {
        let head = p.get(..8).ok_or(WireError::Truncated)?;
        let body = match p.len() {
            8 => None,
            n if n >= 40 => Some(Rakp2Body {
                rc: array(&p[8..24]),
                guid: array(&p[24..40]),
                code: &p[40..],
            }),
            _ => return Err(WireError::BadLength),
        };
        Ok(Rakp2 {
            tag: head[0],
            status: head[1],
            console_id: le_u32(&head[4..8]),
            body,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.tag, self.status, 0, 0]);
        out.extend_from_slice(&self.console_id.to_le_bytes());
        if let Some(b) = &self.body {
            out.extend_from_slice(&b.rc);
            out.extend_from_slice(&b.guid);
            out.extend_from_slice(b.code);
        }
    }
}

/// RAKP Message 3 (§13.22).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rakp3<'a> {
    pub tag: u8,
    pub status: u8,
    pub managed_id: u32,
    /// The console's proof of the password (empty when it reports an error).
    pub code: &'a [u8],
}

impl<'a> Rakp3<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Self, WireError> {
        let head = p.get(..8).ok_or(WireError::Truncated)?;
        Ok(Rakp3 {
            tag: head[0],
            status: head[1],
            managed_id: le_u32(&head[4..8]),
            code: &p[8..],
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.tag, self.status, 0, 0]);
        out.extend_from_slice(&self.managed_id.to_le_bytes());
        out.extend_from_slice(self.code);
    }
}

/// RAKP Message 4 (§13.23).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rakp4<'a> {
    pub tag: u8,
    pub status: u8,
    pub console_id: u32,
    /// Integrity check value keyed by the SIK (empty on refusal).
    pub icv: &'a [u8],
}

impl<'a> Rakp4<'a> {
    pub fn parse(p: &'a [u8]) -> Result<Self, WireError> {
        let head = p.get(..8).ok_or(WireError::Truncated)?;
        Ok(Rakp4 {
            tag: head[0],
            status: head[1],
            console_id: le_u32(&head[4..8]),
            icv: &p[8..],
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.tag, self.status, 0, 0]);
        out.extend_from_slice(&self.console_id.to_le_bytes());
        out.extend_from_slice(self.icv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_session_request_as_ipmitool_sends_it() {
        // captures/sim_ipmitool_lanplus_C3: tag 0, privilege 0, console id a0a2a3a4, suite 3.
        let raw = [
            0, 0, 0, 0, 0xa4, 0xa3, 0xa2, 0xa0, 0, 0, 0, 8, 1, 0, 0, 0, 1, 0, 0, 8, 1, 0, 0, 0, 2,
            0, 0, 8, 1, 0, 0, 0,
        ];
        let r = OpenSessionRequest::parse(&raw).unwrap();
        assert_eq!((r.tag, r.privilege, r.console_id), (0, 0, 0xa0a2a3a4));
        let [a, i, c] = r.proposals.unwrap();
        assert_eq!(
            (a.wants(0), i.wants(1), c.wants(2), a.wants(1)),
            (
                Ok(Some(1)),
                Ok(Some(1)),
                Ok(Some(1)),
                Err(WireError::Unsupported)
            )
        );
        let mut again = Vec::new();
        r.emit(&mut again);
        assert_eq!(again, raw);
        let short = OpenSessionRequest::parse(&raw[..20]).unwrap();
        assert_eq!((short.console_id, short.proposals), (0xa0a2a3a4, None));
        assert_eq!(
            OpenSessionRequest::parse(&raw[..7]),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn responses_round_trip_in_both_forms() {
        let ok = OpenSessionResponse {
            tag: 3,
            status: 0,
            privilege: 4,
            console_id: 9,
            opened: Some(Opened {
                managed_id: 0x1234,
                auth: 3,
                integrity: 4,
                confidentiality: 1,
            }),
        };
        let mut b = Vec::new();
        ok.emit(&mut b);
        assert_eq!(b.len(), 36);
        assert_eq!(OpenSessionResponse::parse(&b), Ok(ok));
        let refused = OpenSessionResponse {
            status: 0x11,
            privilege: 0,
            opened: None,
            ..ok
        };
        let mut b = Vec::new();
        refused.emit(&mut b);
        assert_eq!(b, [3, 0x11, 0, 0, 9, 0, 0, 0]);
        assert_eq!(OpenSessionResponse::parse(&b), Ok(refused));
        assert_eq!(
            OpenSessionResponse::parse(&b[..5]),
            Err(WireError::Truncated)
        );

        let code = [7u8; 20];
        let r2 = Rakp2 {
            tag: 1,
            status: 0,
            console_id: 5,
            body: Some(Rakp2Body {
                rc: [1; 16],
                guid: [2; 16],
                code: &code,
            }),
        };
        let mut b = Vec::new();
        r2.emit(&mut b);
        assert_eq!(b.len(), 60);
        assert_eq!(Rakp2::parse(&b), Ok(r2));
        assert_eq!(Rakp2::parse(&b[..20]), Err(WireError::BadLength));
    }

    #[test]
    fn rakp1_name_length_must_agree() {
        let r = Rakp1 {
            tag: 1,
            managed_id: 0x0a02,
            rm: [0x5a; 16],
            role: 0x14,
            name: Some(b"admin"),
        };
        let mut b = Vec::new();
        r.emit(&mut b);
        assert_eq!(b.len(), 33);
        assert_eq!(Rakp1::parse(&b), Ok(r));
        b[27] = 6;
        assert_eq!(Rakp1::parse(&b).unwrap().name, None);
        b[27] = 0xFF;
        assert_eq!(Rakp1::parse(&b).unwrap().name, None);
        assert_eq!(Rakp1::parse(&b[..27]), Err(WireError::Truncated));

        let r3 = Rakp3 {
            tag: 2,
            status: 0,
            managed_id: 0x0a02,
            code: &[9; 20],
        };
        let mut b = Vec::new();
        r3.emit(&mut b);
        assert_eq!(Rakp3::parse(&b), Ok(r3));
        let r4 = Rakp4 {
            tag: 2,
            status: 0x0F,
            console_id: 1,
            icv: &[],
        };
        let mut b = Vec::new();
        r4.emit(&mut b);
        assert_eq!(Rakp4::parse(&b), Ok(r4));
    }
}
