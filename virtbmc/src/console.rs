//! A minimal IPMI console (the client side), written from the spec independently of the
//! engine's state machine: the engine's tests drive it against the engine directly, and the
//! benchmark drives it over UDP. `exchange` sends one datagram and returns the answer.

use crate::crypto::{ConfAlg, IntegAlg, Key20, aes_decrypt, aes_encrypt, auth_code_v15};
use crate::engine::config::CipherSuite;
use crate::wire::challenge::{
    ActivateRequest, ActivateResponse, ChallengeRequest, ChallengeResponse,
};
use crate::wire::lan15::{AUTH_NONE, Lan15Packet};
use crate::wire::lanplus::*;
use crate::wire::message::{Request, Response};
use crate::wire::rakp::{
    OpenSessionRequest, OpenSessionResponse, Proposal, Rakp1, Rakp2, Rakp3, Rakp4,
};
use crate::wire::rmcp::{CLASS_ASF, CLASS_IPMI, RmcpHeader};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    #[error("no answer")]
    NoAnswer,
    #[error("malformed answer")]
    Malformed,
    #[error("completion code {0:#04x}")]
    Completion(u8),
    #[error("RMCP+ status {0:#04x}")]
    Status(u8),
    #[error("BMC failed to prove the key")]
    BadProof,
}

pub fn ping(tag: u8) -> Vec<u8> {
    let mut out = Vec::new();
    RmcpHeader {
        sequence: 0xFF,
        class: CLASS_ASF,
    }
    .emit(&mut out);
    out.extend_from_slice(&[0, 0, 0x11, 0xBE, 0x80, tag, 0, 0]);
    out
}

fn message(net_fn: u8, cmd: u8, rq_seq: u8, data: &[u8]) -> Vec<u8> {
    let mut msg = Vec::new();
    Request {
        rs_addr: 0x20,
        net_fn,
        rs_lun: 0,
        rq_addr: 0x81,
        rq_seq,
        rq_lun: 0,
        cmd,
        data,
    }
    .emit(&mut msg);
    msg
}

/// A session-less request in the IPMI 1.5 form.
pub fn sessionless_v15(net_fn: u8, cmd: u8, rq_seq: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    RmcpHeader {
        sequence: 0xFF,
        class: CLASS_IPMI,
    }
    .emit(&mut out);
    Lan15Packet::emit(
        AUTH_NONE,
        0,
        0,
        None,
        &message(net_fn, cmd, rq_seq, data),
        &mut out,
    );
    out
}

/// A session-less payload in the RMCP+ form.
pub fn sessionless_v20(payload_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    RmcpHeader {
        sequence: 0xFF,
        class: CLASS_IPMI,
    }
    .emit(&mut out);
    LanPlusPacket::emit(payload_type, 0, 0, payload, &mut out);
    out
}

/// Parses a session-less 1.5 reply: (completion code, data).
pub fn parse_v15(reply: &[u8]) -> Result<(u8, Vec<u8>), ConsoleError> {
    let (_, rest) = RmcpHeader::parse(reply).map_err(|_| ConsoleError::Malformed)?;
    let p = Lan15Packet::parse(rest).map_err(|_| ConsoleError::Malformed)?;
    let r = Response::parse(p.message).map_err(|_| ConsoleError::Malformed)?;
    Ok((r.cc, r.data.to_vec()))
}

fn payload_v20(reply: &[u8], want: u8) -> Result<Vec<u8>, ConsoleError> {
    let (_, rest) = RmcpHeader::parse(reply).map_err(|_| ConsoleError::Malformed)?;
    let p = LanPlusPacket::parse(rest, 0).map_err(|_| ConsoleError::Malformed)?;
    if p.payload_type != want {
        return Err(ConsoleError::Malformed);
    }
    Ok(p.payload.to_vec())
}

/// An IPMI 1.5 session (ipmitool -I lan's sequence, minus the preamble).
#[derive(Debug, Clone)]
pub struct V15Session {
    pub id: u32,
    pub auth_type: u8,
    pub password: [u8; 16],
    pub seq: u32,
    pub rq_seq: u8,
}

impl V15Session {
    pub fn open(
        user: &str,
        password: &str,
        auth_type: u8,
        privilege: u8,
        exchange: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<V15Session, ConsoleError> {
        let mut name = [0u8; 16];
        name[..user.len().min(16)].copy_from_slice(&user.as_bytes()[..user.len().min(16)]);
        let mut d = Vec::new();
        ChallengeRequest { auth_type, name }.emit(&mut d);
        let (cc, data) = parse_v15(
            &exchange(&sessionless_v15(0x06, 0x39, 1, &d)).ok_or(ConsoleError::NoAnswer)?,
        )?;
        if cc != 0 {
            return Err(ConsoleError::Completion(cc));
        }
        let ch = ChallengeResponse::parse(&data).map_err(|_| ConsoleError::Malformed)?;
        let pw = Key20::from_password(password)
            .ok_or(ConsoleError::Malformed)?
            .first16();
        let mut s = V15Session {
            id: ch.temp_id,
            auth_type,
            password: pw,
            seq: 0,
            rq_seq: 2,
        };
        let mut d = Vec::new();
        ActivateRequest {
            auth_type,
            privilege,
            challenge: ch.challenge,
            initial_outbound: 1,
        }
        .emit(&mut d);
        let (cc, data) = s.call(0x06, 0x3A, &d, exchange)?;
        if cc != 0 {
            return Err(ConsoleError::Completion(cc));
        }
        let act = ActivateResponse::parse(&data).map_err(|_| ConsoleError::Malformed)?;
        s.id = act.session_id;
        s.seq = act.initial_inbound;
        Ok(s)
    }

    pub fn request(&mut self, net_fn: u8, cmd: u8, data: &[u8]) -> Vec<u8> {
        let msg = message(net_fn, cmd, self.rq_seq, data);
        self.rq_seq = (self.rq_seq + 1) & 0x3F;
        let code = auth_code_v15(self.auth_type, &self.password, self.id, &msg, self.seq);
        let mut out = Vec::new();
        RmcpHeader {
            sequence: 0xFF,
            class: CLASS_IPMI,
        }
        .emit(&mut out);
        Lan15Packet::emit(
            self.auth_type,
            self.seq,
            self.id,
            code.as_ref(),
            &msg,
            &mut out,
        );
        self.seq = self.seq.wrapping_add(1);
        out
    }

    /// Checks the reply's auth code and returns (completion code, data).
    pub fn parse(&self, reply: &[u8]) -> Result<(u8, Vec<u8>), ConsoleError> {
        let (_, rest) = RmcpHeader::parse(reply).map_err(|_| ConsoleError::Malformed)?;
        let p = Lan15Packet::parse(rest).map_err(|_| ConsoleError::Malformed)?;
        let want = auth_code_v15(
            self.auth_type,
            &self.password,
            p.session_id,
            p.message,
            p.sequence,
        );
        if want.as_ref() != p.auth_code {
            return Err(ConsoleError::BadProof);
        }
        let r = Response::parse(p.message).map_err(|_| ConsoleError::Malformed)?;
        Ok((r.cc, r.data.to_vec()))
    }

    pub fn call(
        &mut self,
        net_fn: u8,
        cmd: u8,
        data: &[u8],
        exchange: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<(u8, Vec<u8>), ConsoleError> {
        let req = self.request(net_fn, cmd, data);
        self.parse(&exchange(&req).ok_or(ConsoleError::NoAnswer)?)
    }
}

/// How a console runs the RMCP+ handshake.
#[derive(Debug, Clone, Copy)]
pub struct V20Options {
    pub console_id: u32,
    pub rm: [u8; 16],
    /// The privilege the Open Session Request asks for (0: the highest allowed).
    pub open_privilege: u8,
    /// Derive K1 and K2 from constants as long as the hash (32 bytes for HMAC-SHA256), as
    /// python-ipmi does; the spec's are 20 bytes (§13.32).
    pub long_kdf_constants: bool,
}

impl Default for V20Options {
    fn default() -> Self {
        V20Options {
            // ipmitool's fixed console session id.
            console_id: 0xa0a2a3a4,
            rm: [0x5A; 16],
            open_privilege: 0,
            long_kdf_constants: false,
        }
    }
}

/// An RMCP+ session (ipmitool -I lanplus's handshake).
#[derive(Debug, Clone)]
pub struct V20Session {
    pub bmc_id: u32,
    pub console_id: u32,
    pub suite: CipherSuite,
    pub k1: Vec<u8>,
    pub k2: Vec<u8>,
    /// The session integrity key K1 and K2 come from.
    pub sik: Vec<u8>,
    pub seq: u32,
    pub rq_seq: u8,
}

impl V20Session {
    pub fn open(
        user: &str,
        password: &str,
        suite: CipherSuite,
        role: u8,
        exchange: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<V20Session, ConsoleError> {
        Self::open_with(user, password, suite, role, V20Options::default(), exchange)
    }

    pub fn open_with(
        user: &str,
        password: &str,
        suite: CipherSuite,
        role: u8,
        opts: V20Options,
        exchange: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<V20Session, ConsoleError> {
        let console_id = opts.console_id;
        let mut req = Vec::new();
        OpenSessionRequest {
            tag: 0,
            privilege: opts.open_privilege,
            console_id,
            proposals: Some(
                [
                    (0, suite.auth.wire()),
                    (1, suite.integ.wire()),
                    (2, suite.conf.wire()),
                ]
                .map(|(kind, algorithm)| Proposal {
                    kind,
                    len: 8,
                    algorithm,
                }),
            ),
        }
        .emit(&mut req);
        let rsp = payload_v20(
            &exchange(&sessionless_v20(PAYLOAD_OPEN_SESSION_REQ, &req))
                .ok_or(ConsoleError::NoAnswer)?,
            PAYLOAD_OPEN_SESSION_RSP,
        )?;
        let rsp = OpenSessionResponse::parse(&rsp).map_err(|_| ConsoleError::Malformed)?;
        let opened = match rsp.opened {
            Some(o) if rsp.status == 0 => o,
            _ => return Err(ConsoleError::Status(rsp.status)),
        };
        let bmc_id = opened.managed_id;
        let rm = opts.rm;
        let name = user.as_bytes();
        let mut r1 = Vec::new();
        Rakp1 {
            tag: 1,
            managed_id: bmc_id,
            rm,
            role,
            name: Some(name),
        }
        .emit(&mut r1);
        let r2 = payload_v20(
            &exchange(&sessionless_v20(PAYLOAD_RAKP1, &r1)).ok_or(ConsoleError::NoAnswer)?,
            PAYLOAD_RAKP2,
        )?;
        let r2 = Rakp2::parse(&r2).map_err(|_| ConsoleError::Malformed)?;
        let body = match r2.body {
            Some(b) if r2.status == 0 => b,
            _ => return Err(ConsoleError::Status(r2.status)),
        };
        let (rc, guid) = (&body.rc, &body.guid);
        let kuid = Key20::from_password(password).ok_or(ConsoleError::Malformed)?;
        let want = suite.auth.hmac(
            &kuid.0,
            &[
                &console_id.to_le_bytes(),
                &bmc_id.to_le_bytes(),
                &rm,
                rc,
                guid,
                &[role, name.len() as u8],
                name,
            ],
        );
        if want != body.code {
            return Err(ConsoleError::BadProof);
        }
        let sik = suite
            .auth
            .hmac(&kuid.0, &[&rm, rc, &[role, name.len() as u8], name]);
        let code = suite.auth.hmac(
            &kuid.0,
            &[
                rc,
                &console_id.to_le_bytes(),
                &[role, name.len() as u8],
                name,
            ],
        );
        let mut r3 = Vec::new();
        Rakp3 {
            tag: 2,
            status: 0,
            managed_id: bmc_id,
            code: &code,
        }
        .emit(&mut r3);
        let r4 = payload_v20(
            &exchange(&sessionless_v20(PAYLOAD_RAKP3, &r3)).ok_or(ConsoleError::NoAnswer)?,
            PAYLOAD_RAKP4,
        )?;
        let r4 = Rakp4::parse(&r4).map_err(|_| ConsoleError::Malformed)?;
        if r4.status != 0 {
            return Err(ConsoleError::Status(r4.status));
        }
        let mut icv = suite.auth.hmac(&sik, &[&rm, &bmc_id.to_le_bytes(), guid]);
        icv.truncate(suite.auth.rakp4_icv_len());
        if r4.icv != &icv[..] {
            return Err(ConsoleError::BadProof);
        }
        let n = if opts.long_kdf_constants {
            sik.len()
        } else {
            20
        };
        let k1 = suite.auth.hmac(&sik, &[&vec![1u8; n]]);
        let k2 = suite.auth.hmac(&sik, &[&vec![2u8; n]]);
        Ok(V20Session {
            bmc_id,
            console_id,
            suite,
            k1,
            k2,
            sik,
            seq: 1,
            rq_seq: 1,
        })
    }

    pub fn request(&mut self, net_fn: u8, cmd: u8, data: &[u8]) -> Vec<u8> {
        let msg = message(net_fn, cmd, self.rq_seq, data);
        self.rq_seq = (self.rq_seq + 1) & 0x3F;
        self.packet(PAYLOAD_IPMI, &msg)
    }

    /// A payload of any type (a SOL packet, say) in this session, protected as the suite
    /// says.
    pub fn packet(&mut self, payload_type: u8, msg: &[u8]) -> Vec<u8> {
        let mut flags = payload_type;
        let payload = if self.suite.conf == ConfAlg::AesCbc128 {
            flags |= FLAG_ENCRYPTED;
            let mut p = Vec::new();
            aes_encrypt(&self.k2, &[0x33; 16], msg, &mut p);
            p
        } else {
            msg.to_vec()
        };
        if self.suite.integ != IntegAlg::None {
            flags |= FLAG_AUTHENTICATED;
        }
        let mut out = Vec::new();
        RmcpHeader {
            sequence: 0xFF,
            class: CLASS_IPMI,
        }
        .emit(&mut out);
        LanPlusPacket::emit(flags, self.bmc_id, self.seq, &payload, &mut out);
        let code = self.suite.integ.auth_code(&self.k1, &out[4..]);
        out.extend_from_slice(&code);
        self.seq = self.seq.wrapping_add(1);
        out
    }

    /// Checks and opens a datagram of this session: its payload type and plain payload.
    pub fn open_packet(&self, reply: &[u8]) -> Result<(u8, Vec<u8>), ConsoleError> {
        let (_, rest) = RmcpHeader::parse(reply).map_err(|_| ConsoleError::Malformed)?;
        let p = LanPlusPacket::parse(rest, self.suite.integ.auth_code_len())
            .map_err(|_| ConsoleError::Malformed)?;
        if p.session_id != self.console_id {
            return Err(ConsoleError::Malformed);
        }
        if self.suite.integ != IntegAlg::None
            && self.suite.integ.auth_code(&self.k1, p.signed) != p.auth_code
        {
            return Err(ConsoleError::BadProof);
        }
        let msg = if p.encrypted {
            aes_decrypt(&self.k2, p.payload).ok_or(ConsoleError::BadProof)?
        } else {
            p.payload.to_vec()
        };
        Ok((p.payload_type, msg))
    }

    pub fn parse(&self, reply: &[u8]) -> Result<(u8, Vec<u8>), ConsoleError> {
        let (_, msg) = self.open_packet(reply)?;
        let r = Response::parse(&msg).map_err(|_| ConsoleError::Malformed)?;
        Ok((r.cc, r.data.to_vec()))
    }

    pub fn call(
        &mut self,
        net_fn: u8,
        cmd: u8,
        data: &[u8],
        exchange: &mut dyn FnMut(&[u8]) -> Option<Vec<u8>>,
    ) -> Result<(u8, Vec<u8>), ConsoleError> {
        let req = self.request(net_fn, cmd, data);
        self.parse(&exchange(&req).ok_or(ConsoleError::NoAnswer)?)
    }
}

pub fn suite(id: u8) -> CipherSuite {
    crate::engine::config::suite(id).expect("known suite")
}
