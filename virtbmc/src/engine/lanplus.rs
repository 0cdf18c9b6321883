//! RMCP+ (IPMI 2.0 §13.17-§13.31): Open Session, RAKP 1-4, and protected session packets.

use std::net::SocketAddr;
use std::time::Instant;

use super::commands;
use super::config::{CipherSuite, Privilege};
use super::session::{Active, ActiveAuth, Opened, Rakp2Sent, SeqWindow, Session, State};
use super::{Bmc, DropReason, Output};
use crate::crypto::{AuthAlg, ConfAlg, IntegAlg, aes_decrypt, aes_encrypt, ct_eq};
use crate::engine::vm::VmView;
use crate::wire::lanplus::*;
use crate::wire::message::Request;
use crate::wire::rmcp::{self, RmcpHeader};
use crate::wire::{WireError, le_u32};

/// RMCP+ status codes (IPMI 2.0 §13.24, table 13-15).
mod status {
    pub const OK: u8 = 0x00;
    pub const NO_RESOURCES: u8 = 0x01;
    pub const INVALID_ROLE: u8 = 0x09;
    pub const UNAUTHORIZED_ROLE: u8 = 0x0A;
    pub const INVALID_NAME_LENGTH: u8 = 0x0C;
    pub const UNAUTHORIZED_NAME: u8 = 0x0D;
    pub const INVALID_INTEGRITY_CHECK: u8 = 0x0F;
    pub const NO_CIPHER_SUITE_MATCH: u8 = 0x11;
    pub const ILLEGAL_PARAMETER: u8 = 0x12;
}

/// RMCP+ sequence window: 16 behind, 15 ahead (as OpenIPMI and go-ipmi do).
const BEHIND: u32 = 16;
const AHEAD: u32 = 15;
/// K1/K2 derivation constants are 20 bytes for every algorithm (§13.32).
const CONST_1: [u8; 20] = [1; 20];
const CONST_2: [u8; 20] = [2; 20];

impl Bmc {
    pub(super) fn handle_lanplus(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        buf: &[u8],
        vm: &VmView,
    ) -> Output {
        let Some(id) = buf.get(2..6).map(le_u32) else {
            return Output::Drop(DropReason::Malformed(WireError::Truncated));
        };
        if id == 0 {
            return match LanPlusPacket::parse(buf, 0) {
                Ok(p) if !p.authenticated && !p.encrypted => {
                    self.sessionless_lanplus(now, peer, &p, vm)
                }
                Ok(_) => Output::Drop(DropReason::NotAllowed),
                Err(e) => Output::Drop(DropReason::Malformed(e)),
            };
        }
        let Some(session) = self.sessions.get_mut(id) else {
            return Output::Drop(DropReason::UnknownSession);
        };
        if session.peer != peer {
            return Output::Drop(DropReason::UnknownSession);
        }
        let State::Active(active) = &mut session.state else {
            return Output::Drop(DropReason::UnknownSession);
        };
        let ActiveAuth::V20 { suite, k1, k2, .. } = &active.auth else {
            return Output::Drop(DropReason::UnknownSession);
        };
        let pkt = match LanPlusPacket::parse(buf, suite.integ.auth_code_len()) {
            Ok(p) => p,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        if pkt.payload_type != PAYLOAD_IPMI {
            return Output::Drop(DropReason::NotAllowed);
        }
        // The suite decides what protection is required; a packet with less is refused.
        if suite.integ != IntegAlg::None
            && (!pkt.authenticated || !ct_eq(&suite.integ.auth_code(k1, pkt.signed), pkt.auth_code))
        {
            return Output::Drop(DropReason::AuthFailed);
        }
        if pkt.encrypted != (suite.conf != ConfAlg::None) {
            return Output::Drop(DropReason::AuthFailed);
        }
        let plain = if pkt.encrypted {
            match aes_decrypt(k2, pkt.payload) {
                Some(p) => p,
                None => return Output::Drop(DropReason::AuthFailed),
            }
        } else {
            pkt.payload.to_vec()
        };
        if pkt.sequence == 0 || !active.accept(pkt.sequence) {
            return Output::Drop(DropReason::Replay);
        }
        self.in_session(now, id, &plain, vm)
    }

    fn sessionless_lanplus(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        pkt: &LanPlusPacket,
        vm: &VmView,
    ) -> Output {
        match pkt.payload_type {
            PAYLOAD_IPMI => {
                let req = match Request::parse(pkt.payload) {
                    Ok(r) => r,
                    Err(e) => return Output::Drop(DropReason::Malformed(e)),
                };
                self.stats.count(&req);
                // Only discovery is served here; the 1.5 session commands have no place in RMCP+.
                let discovery = req.net_fn == commands::NETFN_APP
                    && matches!(
                        req.cmd,
                        commands::CMD_GET_AUTH_CAPS | commands::CMD_GET_CIPHER_SUITES
                    );
                if !discovery {
                    return Output::Drop(DropReason::NotAllowed);
                }
                let (code, data) = match self.sessionless(now, &req, vm) {
                    commands::Outcome::Reply(code, data) => (code, data),
                    commands::Outcome::Action(..) => {
                        return Output::Drop(DropReason::NotAllowed);
                    }
                };
                let mut msg = Vec::with_capacity(8 + data.len());
                req.emit_response(code, &data, &mut msg);
                Output::Reply(frame(PAYLOAD_IPMI, 0, &msg))
            }
            PAYLOAD_OPEN_SESSION_REQ => self.open_session(now, peer, pkt.payload),
            PAYLOAD_RAKP1 => self.rakp1(now, peer, pkt.payload, vm.guid),
            PAYLOAD_RAKP3 => self.rakp3(now, peer, pkt.payload),
            _ => Output::Drop(DropReason::NotAllowed),
        }
    }

    /// Open Session Request (§13.17): choose the suite the console named, if enabled.
    fn open_session(&mut self, now: Instant, peer: SocketAddr, p: &[u8]) -> Output {
        if p.len() < 8 {
            return Output::Drop(DropReason::Malformed(WireError::Truncated));
        }
        let (tag, console_id) = (p[0], le_u32(&p[4..8]));
        let refuse = |code: u8| {
            let mut body = vec![tag, code, 0, 0];
            body.extend_from_slice(&console_id.to_le_bytes());
            Output::Reply(frame(PAYLOAD_OPEN_SESSION_RSP, 0, &body))
        };
        if p.len() != 32 {
            return refuse(status::ILLEGAL_PARAMETER);
        }
        // Requested maximum privilege: 0 means "the highest the channel allows", and the reply
        // must name a real level (freeipmi refuses an echoed 0).
        let max_priv = match p[1] & 0x0F {
            0 => Privilege::Admin,
            v => match Privilege::from_wire(v) {
                Some(pv) => pv,
                None => return refuse(status::INVALID_ROLE),
            },
        };
        let Some(suite) = self.match_suite(&p[8..16], &p[16..24], &p[24..32]) else {
            return refuse(status::NO_CIPHER_SUITE_MATCH);
        };
        let id = self.new_session_id();
        let session = Session {
            id,
            peer,
            state: State::Opened(Opened { console_id, suite }),
            last_activity: now,
        };
        if self.admit(session, now).is_err() {
            return refuse(status::NO_RESOURCES);
        }
        let mut body = vec![tag, status::OK, max_priv.wire(), 0];
        body.extend_from_slice(&console_id.to_le_bytes());
        body.extend_from_slice(&id.to_le_bytes());
        for (kind, alg) in [
            (0u8, suite.auth.wire()),
            (1, suite.integ.wire()),
            (2, suite.conf.wire()),
        ] {
            body.extend_from_slice(&[kind, 0, 0, 8, alg, 0, 0, 0]);
        }
        Output::Reply(frame(PAYLOAD_OPEN_SESSION_RSP, 0, &body))
    }

    /// Finds the enabled suite matching the three algorithm payloads; a payload of length 0
    /// lets the BMC choose (§13.17), and the strongest enabled suite is preferred then.
    fn match_suite(&self, auth: &[u8], integ: &[u8], conf: &[u8]) -> Option<CipherSuite> {
        let want = |payload: &[u8], kind: u8| -> Result<Option<u8>, ()> {
            if payload[0] != kind {
                return Err(());
            }
            match payload[3] {
                0 => Ok(None),
                8 => Ok(Some(payload[4] & 0x3F)),
                _ => Err(()),
            }
        };
        let (a, i, c) = (
            want(auth, 0).ok()?,
            want(integ, 1).ok()?,
            want(conf, 2).ok()?,
        );
        let mut candidates: Vec<CipherSuite> = self.config.suites().collect();
        candidates.sort_by_key(|s| std::cmp::Reverse(s.id));
        candidates.into_iter().find(|s| {
            a.is_none_or(|v| AuthAlg::from_wire(v) == Some(s.auth))
                && i.is_none_or(|v| IntegAlg::from_wire(v) == Some(s.integ))
                && c.is_none_or(|v| ConfAlg::from_wire(v) == Some(s.conf))
        })
    }

    /// RAKP Message 1 (§13.20): only a session in the Opened (or RAKP2-sent, for a console's
    /// retransmission) state, from the same peer, may proceed.
    fn rakp1(&mut self, now: Instant, peer: SocketAddr, p: &[u8], guid: [u8; 16]) -> Output {
        if p.len() < 28 {
            return Output::Drop(DropReason::Malformed(WireError::Truncated));
        }
        let (tag, id) = (p[0], le_u32(&p[4..8]));
        let Some(session) = self.sessions.get_mut(id) else {
            return Output::Drop(DropReason::UnknownSession);
        };
        if session.peer != peer {
            return Output::Drop(DropReason::UnknownSession);
        }
        let opened = match &session.state {
            State::Opened(o) => o.clone(),
            State::Rakp2Sent(r) => r.opened.clone(),
            _ => return Output::Drop(DropReason::UnknownSession),
        };
        let console_id = opened.console_id;
        let refuse = |bmc: &mut Bmc, code: u8| {
            bmc.sessions.remove(id);
            let mut body = vec![tag, code, 0, 0];
            body.extend_from_slice(&console_id.to_le_bytes());
            Output::Reply(frame(PAYLOAD_RAKP2, 0, &body))
        };
        let mut rm = [0u8; 16];
        rm.copy_from_slice(&p[8..24]);
        let role = p[24];
        let name_len = p[27] as usize;
        if name_len > 16 || p.len() != 28 + name_len {
            return refuse(self, status::INVALID_NAME_LENGTH);
        }
        let name = &p[28..28 + name_len];
        if !self.rakp_limiter.allow(
            peer.ip(),
            now,
            self.config.rakp_per_second,
            self.config.rakp_burst,
        ) {
            self.stats.rakp_rate_limited += 1;
            return Output::Drop(DropReason::RateLimited);
        }
        let Some(requested) = Privilege::from_wire(role) else {
            return refuse(self, status::INVALID_ROLE);
        };
        if role & 0xE0 != 0 {
            return refuse(self, status::INVALID_ROLE);
        }
        let Some(user) = self.config.user(name).cloned() else {
            return refuse(self, status::UNAUTHORIZED_NAME);
        };
        if requested > user.max_privilege {
            return refuse(self, status::UNAUTHORIZED_ROLE);
        }
        let rc = self.entropy.bytes16();
        let kuid = &user.key.0[..];
        let auth = opened.suite.auth;
        let code = auth.hmac(
            kuid,
            &[
                &console_id.to_le_bytes(),
                &id.to_le_bytes(),
                &rm,
                &rc,
                &guid,
                &[role, name_len as u8],
                name,
            ],
        );
        let sik = auth.hmac(kuid, &[&rm, &rc, &[role, name_len as u8], name]);
        let mut body = vec![tag, status::OK, 0, 0];
        body.extend_from_slice(&console_id.to_le_bytes());
        body.extend_from_slice(&rc);
        body.extend_from_slice(&guid);
        body.extend_from_slice(&code);
        if let Some(s) = self.sessions.get_mut(id) {
            s.state = State::Rakp2Sent(Box::new(Rakp2Sent {
                opened,
                user: user.name.clone(),
                role,
                rm,
                rc,
                sik,
                guid,
            }));
            s.last_activity = now;
        }
        Output::Reply(frame(PAYLOAD_RAKP2, 0, &body))
    }

    /// RAKP Message 3 (§13.22): the console proves the password; the session becomes active.
    /// A wrong proof is answered but leaves the handshake to expire on its own deadline, so a
    /// forged RAKP3 cannot close a real console's handshake.
    fn rakp3(&mut self, now: Instant, peer: SocketAddr, p: &[u8]) -> Output {
        if p.len() < 8 {
            return Output::Drop(DropReason::Malformed(WireError::Truncated));
        }
        let (tag, console_status, id) = (p[0], p[1], le_u32(&p[4..8]));
        let Some(session) = self.sessions.get_mut(id) else {
            return Output::Drop(DropReason::UnknownSession);
        };
        if session.peer != peer {
            return Output::Drop(DropReason::UnknownSession);
        }
        let State::Rakp2Sent(hs) = &session.state else {
            return Output::Drop(DropReason::UnknownSession);
        };
        let hs = (**hs).clone();
        let console_id = hs.opened.console_id;
        let rakp4 = |code: u8, icv: &[u8]| {
            let mut body = vec![tag, code, 0, 0];
            body.extend_from_slice(&console_id.to_le_bytes());
            body.extend_from_slice(icv);
            Output::Reply(frame(PAYLOAD_RAKP4, 0, &body))
        };
        if console_status != status::OK {
            // The console gave up (it found our RAKP2 wrong, e.g. a mistyped password).
            self.sessions.remove(id);
            return Output::Drop(DropReason::AuthFailed);
        }
        let Some(user) = self.config.user(hs.user.as_bytes()).cloned() else {
            self.sessions.remove(id);
            return Output::Drop(DropReason::AuthFailed);
        };
        let suite = hs.opened.suite;
        let name = user.name.as_bytes();
        let want = suite.auth.hmac(
            &user.key.0,
            &[
                &hs.rc,
                &console_id.to_le_bytes(),
                &[hs.role, name.len() as u8],
                name,
            ],
        );
        if !ct_eq(&want, &p[8..]) {
            self.stats.auth_failures += 1;
            return rakp4(status::INVALID_INTEGRITY_CHECK, &[]);
        }
        let mut icv = suite
            .auth
            .hmac(&hs.sik, &[&hs.rm, &id.to_le_bytes(), &hs.guid]);
        icv.truncate(suite.auth.rakp4_icv_len());
        let k1 = suite.auth.hmac(&hs.sik, &[&CONST_1]);
        let k2 = suite.auth.hmac(&hs.sik, &[&CONST_2]);
        let max_privilege = Privilege::from_wire(hs.role).unwrap_or(Privilege::User);
        let active = Active {
            auth: ActiveAuth::V20 {
                console_id,
                suite,
                k1,
                k2,
            },
            user: user.name.clone(),
            privilege: Privilege::User.min(max_privilege),
            max_privilege,
            inbound: SeqWindow::new(1, BEHIND, AHEAD),
            outbound: 1,
            in_flight: None,
            shared: None,
        };
        if let Some(s) = self.sessions.get_mut(id) {
            s.state = State::Active(Box::new(active));
            s.last_activity = now;
        }
        self.stats.sessions_opened += 1;
        rakp4(status::OK, &icv)
    }
}

/// A session-less RMCP+ datagram (RMCP header included).
fn frame(payload_type: u8, session_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + HEADER_LEN + payload.len());
    RmcpHeader {
        sequence: rmcp::RMCP_SEQ_NO_ACK,
        class: rmcp::CLASS_IPMI,
    }
    .emit(&mut out);
    LanPlusPacket::emit(payload_type, session_id, 0, payload, &mut out);
    out
}

/// Wraps an in-session reply: encrypt when the suite has confidentiality, then sign.
#[allow(clippy::too_many_arguments)]
pub(super) fn seal(
    console_id: u32,
    seq: u32,
    suite: &CipherSuite,
    k1: &[u8],
    k2: &[u8],
    iv: &[u8; 16],
    msg: &[u8],
    out: &mut Vec<u8>,
) {
    let mut flags = PAYLOAD_IPMI;
    let payload = if suite.conf == ConfAlg::AesCbc128 {
        flags |= FLAG_ENCRYPTED;
        let mut p = Vec::with_capacity(msg.len() + 32);
        aes_encrypt(k2, iv, msg, &mut p);
        p
    } else {
        msg.to_vec()
    };
    if suite.integ != IntegAlg::None {
        flags |= FLAG_AUTHENTICATED;
    }
    let start = out.len();
    LanPlusPacket::emit(flags, console_id, seq, &payload, out);
    let code = suite.integ.auth_code(k1, &out[start..]);
    out.extend_from_slice(&code);
}
