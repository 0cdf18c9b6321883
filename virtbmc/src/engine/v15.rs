//! IPMI 1.5 sessions (IPMI 2.0 §22.16-§22.17, §6.12): Get Session Challenge, Activate
//! Session, and per-message authenticated packets.

use std::net::SocketAddr;
use std::time::Instant;

use super::commands::{self, CMD_ACTIVATE_SESSION, CMD_GET_SESSION_CHALLENGE, NETFN_APP};
use super::config::Privilege;
use super::session::{Active, ActiveAuth, ChallengeSent, PublishV15, SeqWindow, Session, State};
use super::{Bmc, DropReason, Output, cc};
use crate::crypto::{auth_code_v15, ct_eq};
use crate::engine::vm::VmView;
use crate::wire::lan15::{AUTH_MD5, AUTH_NONE, AUTH_PASSWORD, Lan15Packet};
use crate::wire::message::Request;
use crate::wire::rmcp::{self, RmcpHeader};

/// IPMI 1.5 sequence window: ±8 (IPMI 2.0 §6.12.13).
const WINDOW: u32 = 8;

impl Bmc {
    pub(super) fn handle_v15(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        buf: &[u8],
        vm: &VmView,
    ) -> Output {
        let pkt = match Lan15Packet::parse(buf) {
            Ok(p) => p,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        if pkt.session_id == 0 {
            return self.sessionless_v15(now, peer, &pkt, vm);
        }
        // Activate Session arrives under the temporary id Get Session Challenge handed out.
        let state_is_challenge = match self.sessions.get_mut(pkt.session_id) {
            Some(s) if s.peer == peer => matches!(s.state, State::ChallengeSent(_)),
            _ => return Output::Drop(DropReason::UnknownSession),
        };
        if state_is_challenge {
            return self.activate(now, &pkt);
        }
        let Some(session) = self.sessions.get_mut(pkt.session_id) else {
            return Output::Drop(DropReason::UnknownSession);
        };
        let State::Active(active) = &mut session.state else {
            return Output::Drop(DropReason::UnknownSession);
        };
        let ActiveAuth::V15 {
            auth_type,
            password,
        } = &active.auth
        else {
            return Output::Drop(DropReason::UnknownSession);
        };
        if pkt.auth_type != *auth_type {
            return Output::Drop(DropReason::AuthFailed);
        }
        if *auth_type != AUTH_NONE {
            let want = auth_code_v15(
                *auth_type,
                password,
                pkt.session_id,
                pkt.message,
                pkt.sequence,
            );
            match (want, pkt.auth_code) {
                (Some(w), Some(got)) if ct_eq(&w, got) => {}
                _ => return Output::Drop(DropReason::AuthFailed),
            }
        }
        if !active.accept(pkt.sequence) {
            return Output::Drop(DropReason::Replay);
        }
        self.in_session(now, pkt.session_id, pkt.message, vm)
    }

    fn sessionless_v15(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        pkt: &Lan15Packet,
        vm: &VmView,
    ) -> Output {
        if pkt.auth_type != AUTH_NONE || pkt.sequence != 0 {
            return Output::Drop(DropReason::NotAllowed);
        }
        let req = match Request::parse(pkt.message) {
            Ok(r) => r,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        self.stats.count(&req);
        if !commands::is_sessionless(req.net_fn, req.cmd) {
            return Output::Drop(DropReason::NotAllowed);
        }
        let (code, data) = match (req.net_fn, req.cmd) {
            (NETFN_APP, CMD_GET_SESSION_CHALLENGE) => self.challenge(now, peer, req.data),
            // Activate Session needs the temporary session id; outside one it is an error.
            (NETFN_APP, CMD_ACTIVATE_SESSION) => (cc::INVALID_SESSION_ID, Vec::new()),
            _ => match self.sessionless(now, &req, vm) {
                commands::Outcome::Reply(code, data) => (code, data),
                commands::Outcome::Action(..) => return Output::Drop(DropReason::NotAllowed),
            },
        };
        Output::Reply(sessionless_reply(&req, code, &data))
    }

    /// Get Session Challenge (IPMI 2.0 §22.16): request auth type and 16-byte user name.
    fn challenge(&mut self, now: Instant, peer: SocketAddr, d: &[u8]) -> (u8, Vec<u8>) {
        if d.len() != 17 {
            return (cc::REQUEST_LENGTH_INVALID, Vec::new());
        }
        let auth_type = d[0] & 0x0F;
        let allowed = matches!(auth_type, AUTH_MD5 | AUTH_PASSWORD)
            || (auth_type == AUTH_NONE && self.config.allow_auth_none);
        if !allowed {
            return (cc::INVALID_DATA_FIELD, Vec::new());
        }
        let name_len = d[1..].iter().position(|b| *b == 0).unwrap_or(16);
        if name_len == 0 {
            return (cc::NULL_USER_DISABLED, Vec::new());
        }
        // A password longer than 16 bytes cannot be typed into IPMI 1.5: that user is RMCP+ only.
        let user = match self.config.user(&d[1..1 + name_len]) {
            Some(u) if u.key.fits_v15() => u.name.clone(),
            _ => return (cc::INVALID_USER, Vec::new()),
        };
        let id = self.new_session_id();
        let challenge = self.entropy.bytes16();
        let session = Session {
            id,
            peer,
            state: State::ChallengeSent(ChallengeSent {
                user,
                auth_type,
                challenge,
            }),
            last_activity: now,
        };
        if self.admit(session, now).is_err() {
            return (cc::OUT_OF_SPACE, Vec::new());
        }
        let mut out = id.to_le_bytes().to_vec();
        out.extend_from_slice(&challenge);
        (cc::OK, out)
    }

    /// Activate Session (IPMI 2.0 §22.17): proves the password with the packet's auth code
    /// and echoes the challenge; the session then runs at USER until raised.
    fn activate(&mut self, now: Instant, pkt: &Lan15Packet) -> Output {
        let temp_id = pkt.session_id;
        let Some(session) = self.sessions.get_mut(temp_id) else {
            return Output::Drop(DropReason::UnknownSession);
        };
        let State::ChallengeSent(ch) = &session.state else {
            return Output::Drop(DropReason::UnknownSession);
        };
        let ch = ch.clone();
        let Some(user) = self.config.user(ch.user.as_bytes()).cloned() else {
            // The user was removed between challenge and activation.
            self.sessions.remove(temp_id);
            return Output::Drop(DropReason::AuthFailed);
        };
        let password = user.key.first16();
        if pkt.auth_type != ch.auth_type {
            return Output::Drop(DropReason::AuthFailed);
        }
        if ch.auth_type != AUTH_NONE {
            let want = auth_code_v15(ch.auth_type, &password, temp_id, pkt.message, pkt.sequence);
            match (want, pkt.auth_code) {
                (Some(w), Some(got)) if ct_eq(&w, got) => {}
                _ => return Output::Drop(DropReason::AuthFailed),
            }
        }
        let req = match Request::parse(pkt.message) {
            Ok(r) => r,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        self.stats.count(&req);
        if (req.net_fn, req.cmd) != (NETFN_APP, CMD_ACTIVATE_SESSION) {
            return Output::Drop(DropReason::NotAllowed);
        }
        let d = req.data;
        let reply_with = |code: u8, data: &[u8], seq: u32| {
            let mut msg = Vec::new();
            req.emit_response(code, data, &mut msg);
            let mut out = Vec::new();
            RmcpHeader {
                sequence: rmcp::RMCP_SEQ_NO_ACK,
                class: rmcp::CLASS_IPMI,
            }
            .emit(&mut out);
            let code = auth_code_v15(pkt.auth_type, &password, temp_id, &msg, seq);
            Lan15Packet::emit(pkt.auth_type, seq, temp_id, code.as_ref(), &msg, &mut out);
            Output::Reply(out)
        };
        if d.len() != 22 {
            return reply_with(cc::REQUEST_LENGTH_INVALID, &[], 0);
        }
        if d[0] & 0x0F != ch.auth_type || !ct_eq(&d[2..18], &ch.challenge) {
            return reply_with(cc::INVALID_DATA_FIELD, &[], 0);
        }
        let Some(requested) = Privilege::from_wire(d[1]) else {
            return reply_with(cc::INVALID_DATA_FIELD, &[], 0);
        };
        if requested > user.max_privilege {
            return reply_with(cc::PRIVILEGE_EXCEEDS_LIMIT, &[], 0);
        }
        let outbound = crate::wire::le_u32(&d[18..22]);
        let auth_type = ch.auth_type;
        let new_id = self.new_session_id();
        let mut inbound_start = self.entropy.u32();
        if inbound_start == 0 {
            inbound_start = 1;
        }
        let mut data = vec![auth_type];
        data.extend_from_slice(&new_id.to_le_bytes());
        data.extend_from_slice(&inbound_start.to_le_bytes());
        data.push(requested.wire());
        let reply = reply_with(cc::OK, &data, outbound);
        let privilege = Privilege::User.min(requested);
        let shared = self.publisher.as_ref().and_then(|p| {
            let peer = self.sessions.get_mut(temp_id).map(|s| s.peer)?;
            let next_outbound = outbound.wrapping_add(1);
            p.publish(&PublishV15 {
                session_id: new_id,
                peer,
                auth_type,
                password,
                inbound_start,
                next_outbound,
                privilege,
                idle_timeout: self.config.session_timeout,
            })
        });
        let active = Active {
            auth: ActiveAuth::V15 {
                auth_type,
                password,
            },
            user: user.name.clone(),
            privilege,
            max_privilege: requested,
            inbound: SeqWindow::new(inbound_start, WINDOW, WINDOW),
            outbound: outbound.wrapping_add(1),
            in_flight: None,
            shared,
        };
        // The half-open entry becomes the session under its new, unguessable id.
        if let Some(s) = self.sessions.get_mut(temp_id) {
            s.id = new_id;
            s.state = State::Active(Box::new(active));
            s.last_activity = now;
        }
        self.stats.sessions_opened += 1;
        reply
    }
}

/// A reply outside any session, in the IPMI 1.5 form.
pub(crate) fn sessionless_reply(req: &Request, code: u8, data: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(8 + data.len());
    req.emit_response(code, data, &mut msg);
    let mut out = Vec::with_capacity(14 + msg.len());
    RmcpHeader {
        sequence: rmcp::RMCP_SEQ_NO_ACK,
        class: rmcp::CLASS_IPMI,
    }
    .emit(&mut out);
    Lan15Packet::emit(AUTH_NONE, 0, 0, None, &msg, &mut out);
    out
}
