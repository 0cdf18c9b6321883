//! RMCP+ (IPMI 2.0 §13.17-§13.31): Open Session, RAKP 1-4, and protected session packets.

use std::net::SocketAddr;
use std::time::Instant;

use super::config::{CipherSuite, Privilege, SUITES};
use super::session::{Active, ActiveAuth, Rakp2Sent, SeqWindow, Session, State};
use super::{Bmc, DropReason, Output, commands, cookie, outbound};
use crate::crypto::{AuthAlg, ConfAlg, IntegAlg, aes_decrypt, ct_eq};
use crate::engine::vm::VmView;
use crate::wire::lanplus::*;
use crate::wire::message::Request;
use crate::wire::rakp::{
    self, OpenSessionRequest, OpenSessionResponse, Proposal, Rakp1, Rakp2, Rakp2Body, Rakp3, Rakp4,
};
use crate::wire::sol::PAYLOAD_SOL;
use crate::wire::{WireError, le_u32};

/// RMCP+ status codes (IPMI 2.0 §13.24, table 13-15).
mod status {
    pub const OK: u8 = 0x00;
    pub const NO_RESOURCES: u8 = 0x01;
    pub const INVALID_ROLE: u8 = 0x09;
    pub const UNAUTHORIZED_ROLE: u8 = 0x0A;
    pub const INVALID_NAME_LENGTH: u8 = 0x0C;
    pub const INVALID_INTEGRITY_CHECK: u8 = 0x0F;
    pub const NO_CIPHER_SUITE_MATCH: u8 = 0x11;
    pub const ILLEGAL_PARAMETER: u8 = 0x12;
}

/// RMCP+ sequence window: 16 behind, 15 ahead (as OpenIPMI and go-ipmi do).
const BEHIND: u32 = 16;
const AHEAD: u32 = 15;
/// K1/K2 derivation constants are 20 bytes for every algorithm (§13.32; ipmitool and
/// OpenBMC agree).
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
        let ActiveAuth::V20 {
            suite,
            k1,
            k2,
            undecided,
            ..
        } = &mut active.auth
        else {
            return Output::Drop(DropReason::UnknownSession);
        };
        let suite = *suite;
        let pkt = match LanPlusPacket::parse(buf, suite.integ.auth_code_len()) {
            Ok(p) => p,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        if pkt.payload_type != PAYLOAD_IPMI && pkt.payload_type != PAYLOAD_SOL {
            return Output::Drop(DropReason::NotAllowed);
        }
        // The suite decides what protection is required; a packet with less is refused.
        if suite.integ != IntegAlg::None {
            if !pkt.authenticated {
                return Output::Drop(DropReason::AuthFailed);
            }
            if ct_eq(&suite.integ.auth_code(k1, pkt.signed), pkt.auth_code) {
                *undecided = None;
            } else {
                // The first packet that verifies under the other pair of keys decides the
                // session for them, replies included.
                match undecided.take() {
                    Some(alt)
                        if ct_eq(&suite.integ.auth_code(&alt.0, pkt.signed), pkt.auth_code) =>
                    {
                        (*k1, *k2) = *alt;
                        self.stats.sessions_32byte_kdf += 1;
                    }
                    other => {
                        *undecided = other;
                        return Output::Drop(DropReason::AuthFailed);
                    }
                }
            }
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
        if pkt.payload_type == PAYLOAD_SOL {
            return self.sol_packet(now, id, &plain);
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
                Output::Reply(outbound::sessionless_v20(PAYLOAD_IPMI, &msg))
            }
            PAYLOAD_OPEN_SESSION_REQ => self.open_session(now, peer, pkt.payload),
            PAYLOAD_RAKP1 => self.rakp1(now, peer, pkt.payload, vm.guid),
            PAYLOAD_RAKP3 => self.rakp3(now, peer, pkt.payload),
            _ => Output::Drop(DropReason::NotAllowed),
        }
    }

    /// Open Session Request (§13.17): choose the suite the console named, if enabled, and
    /// answer with a cookie for a managed session id; nothing enters the session table.
    fn open_session(&mut self, now: Instant, peer: SocketAddr, p: &[u8]) -> Output {
        let req = match OpenSessionRequest::parse(p) {
            Ok(r) => r,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        let answer = |status: u8, privilege: u8, opened: Option<rakp::Opened>| {
            let mut body = Vec::with_capacity(36);
            OpenSessionResponse {
                tag: req.tag,
                status,
                privilege,
                console_id: req.console_id,
                opened,
            }
            .emit(&mut body);
            Output::Reply(outbound::sessionless_v20(PAYLOAD_OPEN_SESSION_RSP, &body))
        };
        let Some(proposals) = req.proposals else {
            return answer(status::ILLEGAL_PARAMETER, 0, None);
        };
        // Requested maximum privilege: 0 means "the highest the channel allows", and the reply
        // must name a real level (freeipmi refuses an echoed 0).
        let max_priv = match req.privilege {
            0 => Privilege::Admin,
            v => match Privilege::from_wire(v) {
                Some(pv) => pv,
                None => return answer(status::INVALID_ROLE, 0, None),
            },
        };
        let Some((suite_index, suite)) = self.match_suite(&proposals) else {
            return answer(status::NO_CIPHER_SUITE_MATCH, 0, None);
        };
        let opened = cookie::Opened {
            console_id: req.console_id,
            suite_index,
            privilege: req.privilege,
        };
        // A console opening another session under the same identity within a slice (same
        // address, port and console id) gets the next variant while an id is taken.
        let mut id = 0;
        for variant in 0..cookie::VARIANTS {
            id = self.cookies.open(&self.secret, now, peer, &opened, variant);
            if id != 0 && !self.sessions.contains(id) {
                break;
            }
        }
        if id == 0 || self.sessions.contains(id) {
            self.stats.sessions_refused += 1;
            return answer(status::NO_RESOURCES, 0, None);
        }
        self.cookies.remember(now, id, req.console_id);
        answer(
            status::OK,
            max_priv.wire(),
            Some(rakp::Opened {
                managed_id: id,
                auth: suite.auth.wire(),
                integrity: suite.integ.wire(),
                confidentiality: suite.conf.wire(),
            }),
        )
    }

    /// Finds the enabled suite matching the three algorithm proposals (with its index in
    /// [`SUITES`]); a proposal of length 0 lets the BMC choose (§13.17), and the strongest
    /// enabled suite is preferred then.
    fn match_suite(&self, proposals: &[Proposal; 3]) -> Option<(u8, CipherSuite)> {
        let [a, i, c] = proposals;
        let (a, i, c) = (a.wants(0).ok()?, i.wants(1).ok()?, c.wants(2).ok()?);
        let mut candidates: Vec<CipherSuite> = self.config.suites().collect();
        candidates.sort_by_key(|s| std::cmp::Reverse(s.id));
        let suite = candidates.into_iter().find(|s| {
            a.is_none_or(|v| AuthAlg::from_wire(v) == Some(s.auth))
                && i.is_none_or(|v| IntegAlg::from_wire(v) == Some(s.integ))
                && c.is_none_or(|v| ConfAlg::from_wire(v) == Some(s.conf))
        })?;
        let index = SUITES.iter().position(|s| s.id == suite.id)?;
        Some((index as u8, suite))
    }

    /// Whether a RAKP1 from `peer` for the user name `name` may have its RAKP2: a source
    /// that recently proved a password spends its own budget; any other spends from both
    /// its address's and the name's.
    fn rakp2_allowed(&mut self, now: Instant, peer: SocketAddr, name: &[u8]) -> bool {
        if self.trusted.take(peer.ip(), now) {
            return true;
        }
        let c = &self.config;
        self.rakp_limiter
            .allow(peer.ip(), now, c.rakp_per_second, c.rakp_burst)
            && self.name_limiter.allow(
                self.secret.name_key(name),
                now,
                c.rakp_per_name_per_second,
                c.rakp_per_name_burst,
            )
    }

    /// RAKP Message 1 (§13.20): only from the peer an Open Session Response named this id
    /// to, within two cookie slices; the handshake enters the session table here. A console
    /// retransmitting its RAKP1 gets a fresh RAKP2 for the same entry.
    fn rakp1(&mut self, now: Instant, peer: SocketAddr, p: &[u8], guid: [u8; 16]) -> Output {
        let r1 = match Rakp1::parse(p) {
            Ok(r) => r,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        let id = r1.managed_id;
        let (console_id, suite, open_privilege, retransmission) = match self.sessions.get_mut(id) {
            Some(s) => match &s.state {
                State::Rakp2Sent(hs) if s.peer == peer => {
                    (hs.console_id, hs.suite, hs.open_privilege, true)
                }
                _ => return Output::Drop(DropReason::UnknownSession),
            },
            None => {
                let Some(o) = self.cookies.check_open(&self.secret, now, peer, id) else {
                    return Output::Drop(DropReason::UnknownSession);
                };
                // The suite must still be offered (the configuration may have changed).
                let Some(suite) = SUITES
                    .get(o.suite_index as usize)
                    .filter(|s| self.config.cipher_suites.contains(&s.id))
                else {
                    return Output::Drop(DropReason::UnknownSession);
                };
                (o.console_id, *suite, o.privilege, false)
            }
        };
        let refuse = |bmc: &mut Bmc, code: u8| {
            if retransmission {
                bmc.sessions.remove(id);
            }
            let mut body = Vec::with_capacity(8);
            Rakp2 {
                tag: r1.tag,
                status: code,
                console_id,
                body: None,
            }
            .emit(&mut body);
            Output::Reply(outbound::sessionless_v20(PAYLOAD_RAKP2, &body))
        };
        let Some(name) = r1.name else {
            return refuse(self, status::INVALID_NAME_LENGTH);
        };
        if !self.rakp2_allowed(now, peer, name) {
            self.stats.rakp_rate_limited += 1;
            return Output::Drop(DropReason::RateLimited);
        }
        if Privilege::from_wire(r1.role).is_none() || r1.role & 0xE0 != 0 {
            return refuse(self, status::INVALID_ROLE);
        }
        // A name this BMC does not know gets the same answer under a stand-in key, and fails
        // at RAKP3 as a wrong password does (no status that tells names apart). The user's
        // privilege limit is checked there too, once the password is proven.
        let (kuid, known) = match self.config.user(name) {
            Some(user) => (user.key.clone(), true),
            None => (self.secret.decoy_key(name), false),
        };
        let rc = self.entropy.bytes16();
        let auth = suite.auth;
        let role_name = [r1.role, name.len() as u8];
        let code = auth.hmac(
            &kuid.0,
            &[
                &console_id.to_le_bytes(),
                &id.to_le_bytes(),
                &r1.rm,
                &rc,
                &guid,
                &role_name,
                name,
            ],
        );
        let sik = auth.hmac(&kuid.0, &[&r1.rm, &rc, &role_name, name]);
        let state = State::Rakp2Sent(Box::new(Rakp2Sent {
            console_id,
            suite,
            name: name.to_vec(),
            known,
            role: r1.role,
            open_privilege,
            rm: r1.rm,
            rc,
            sik,
            guid,
        }));
        if retransmission {
            if let Some(s) = self.sessions.get_mut(id) {
                s.state = state;
                s.last_activity = now;
            }
        } else {
            let session = Session {
                id,
                peer,
                state,
                last_activity: now,
            };
            if self.admit(session, now).is_err() {
                return refuse(self, status::NO_RESOURCES);
            }
            self.cookies.forget(id);
        }
        let mut body = Vec::with_capacity(8 + 32 + code.len());
        Rakp2 {
            tag: r1.tag,
            status: status::OK,
            console_id,
            body: Some(Rakp2Body {
                rc,
                guid,
                code: &code,
            }),
        }
        .emit(&mut body);
        Output::Reply(outbound::sessionless_v20(PAYLOAD_RAKP2, &body))
    }

    /// RAKP Message 3 (§13.22): the console proves the password; the session becomes active.
    /// A wrong proof is answered but leaves the handshake to expire on its own deadline, so a
    /// forged RAKP3 cannot close a real console's handshake.
    fn rakp3(&mut self, now: Instant, peer: SocketAddr, p: &[u8]) -> Output {
        let r3 = match Rakp3::parse(p) {
            Ok(r) => r,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        let id = r3.managed_id;
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
        let rakp4 = |status: u8, icv: &[u8]| {
            let mut body = Vec::with_capacity(8 + icv.len());
            Rakp4 {
                tag: r3.tag,
                status,
                console_id: hs.console_id,
                icv,
            }
            .emit(&mut body);
            Output::Reply(outbound::sessionless_v20(PAYLOAD_RAKP4, &body))
        };
        if r3.status != status::OK {
            // The console gave up (it found our RAKP2 wrong, e.g. a mistyped password).
            self.sessions.remove(id);
            return Output::Drop(DropReason::AuthFailed);
        }
        let user = if hs.known {
            match self.config.user(&hs.name).cloned() {
                Some(u) => Some(u),
                None => {
                    // The user was removed since RAKP1.
                    self.sessions.remove(id);
                    return Output::Drop(DropReason::AuthFailed);
                }
            }
        } else {
            None
        };
        let kuid = match &user {
            Some(u) => u.key.clone(),
            None => self.secret.decoy_key(&hs.name),
        };
        let suite = hs.suite;
        let want = suite.auth.hmac(
            &kuid.0,
            &[
                &hs.rc,
                &hs.console_id.to_le_bytes(),
                &[hs.role, hs.name.len() as u8],
                &hs.name,
            ],
        );
        // No console knows a stand-in key, so an unknown name always ends here.
        let Some(user) = user.filter(|_| ct_eq(&want, r3.code)) else {
            self.stats.auth_failures += 1;
            return rakp4(status::INVALID_INTEGRITY_CHECK, &[]);
        };
        self.trusted.proved(peer.ip(), now);
        let requested = Privilege::from_wire(hs.role).unwrap_or(Privilege::User);
        if requested > user.max_privilege {
            self.sessions.remove(id);
            return rakp4(status::UNAUTHORIZED_ROLE, &[]);
        }
        let mut icv = suite
            .auth
            .hmac(&hs.sik, &[&hs.rm, &id.to_le_bytes(), &hs.guid]);
        icv.truncate(suite.auth.rakp4_icv_len());
        let (k1, k2) = (
            suite.auth.hmac(&hs.sik, &[&CONST_1]),
            suite.auth.hmac(&hs.sik, &[&CONST_2]),
        );
        // HMAC-SHA256 suites: some consoles (python-ipmi) derive K1 and K2 from constants as
        // long as the hash, 32 bytes. Only a suite with integrity can tell which.
        let undecided =
            (suite.auth == AuthAlg::HmacSha256 && suite.integ != IntegAlg::None).then(|| {
                Box::new((
                    suite.auth.hmac(&hs.sik, &[&[1u8; 32]]),
                    suite.auth.hmac(&hs.sik, &[&[2u8; 32]]),
                ))
            });
        let max_privilege = match Privilege::from_wire(hs.open_privilege) {
            Some(open) => requested.min(open),
            None => requested,
        };
        let active = Active {
            auth: ActiveAuth::V20 {
                console_id: hs.console_id,
                suite,
                k1,
                k2,
                undecided,
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
