//! IPMI 1.5 sessions (IPMI 2.0 §22.16-§22.17, §6.12): Get Session Challenge, Activate
//! Session, and per-message authenticated packets.

use std::net::SocketAddr;
use std::time::Instant;

use super::commands::{self, CMD_ACTIVATE_SESSION, CMD_GET_SESSION_CHALLENGE, NETFN_APP};
use super::config::Privilege;
use super::cookie::Cookies;
use super::session::{Active, ActiveAuth, PublishV15, SeqWindow, Session, State};
use super::{Bmc, DropReason, Output, cc, outbound};
use crate::crypto::{auth_code_v15, ct_eq};
use crate::engine::vm::VmView;
use crate::wire::challenge::{
    ActivateRequest, ActivateResponse, ChallengeRequest, ChallengeResponse,
};
use crate::wire::lan15::{AUTH_MD5, AUTH_NONE, AUTH_PASSWORD, Lan15Packet};
use crate::wire::message::Request;

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
        // Activate Session arrives under the temporary id Get Session Challenge handed out,
        // which is no session of ours but a cookie.
        let session = match self.sessions.get_mut(pkt.session_id) {
            Some(s) if s.peer == peer => s,
            Some(_) => return Output::Drop(DropReason::UnknownSession),
            None => return self.activate(now, peer, &pkt),
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
        Output::Reply(outbound::sessionless_v15(&req, code, &data))
    }

    /// Get Session Challenge (IPMI 2.0 §22.16): request auth type and 16-byte user name.
    /// The answer is a cookie (engine/cookie.rs): nothing is kept. A name this BMC does not
    /// know (or whose password is too long for IPMI 1.5) gets the same answer, and fails at
    /// Activate Session as a wrong password does.
    fn challenge(&mut self, now: Instant, peer: SocketAddr, d: &[u8]) -> (u8, Vec<u8>) {
        let Ok(req) = ChallengeRequest::parse(d) else {
            return (cc::REQUEST_LENGTH_INVALID, Vec::new());
        };
        let allowed = matches!(req.auth_type, AUTH_MD5 | AUTH_PASSWORD)
            || (req.auth_type == AUTH_NONE && self.config.allow_auth_none);
        if !allowed {
            return (cc::INVALID_DATA_FIELD, Vec::new());
        }
        if req.user().is_empty() {
            return (cc::NULL_USER_DISABLED, Vec::new());
        }
        let req = ChallengeRequest {
            auth_type: req.auth_type,
            name: name16(req.user()),
        };
        let mut nonce = [0u8; 4];
        self.entropy.fill(&mut nonce);
        let mut out = Vec::with_capacity(20);
        self.cookies
            .challenge(&self.secret, now, peer, &req, nonce)
            .emit(&mut out);
        (cc::OK, out)
    }

    /// Activate Session (IPMI 2.0 §22.17) under a temporary id: the echoed challenge names
    /// the user and proves that the console got our answer at this address within two
    /// cookie slices; the packet's auth code proves the password. The session then runs at
    /// USER until raised. Anything that fails before the password is proven gets no answer,
    /// whatever the reason, as a wrong password gets none.
    fn activate(&mut self, now: Instant, peer: SocketAddr, pkt: &Lan15Packet) -> Output {
        let temp_id = pkt.session_id;
        let req = match Request::parse(pkt.message) {
            Ok(r) => r,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        if (req.net_fn, req.cmd) != (NETFN_APP, CMD_ACTIVATE_SESSION) {
            return Output::Drop(DropReason::UnknownSession);
        }
        self.stats.count(&req);
        let act = match ActivateRequest::parse(req.data) {
            Ok(a) => a,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        if pkt.auth_type == AUTH_NONE && !self.config.allow_auth_none {
            return Output::Drop(DropReason::AuthFailed);
        }
        let tag = &act.challenge[..8];
        let Some(user) = self
            .config
            .users
            .iter()
            .filter(|u| u.key.fits_v15())
            .find(|u| {
                ct_eq(
                    &Cookies::name_tag(&self.secret, &name16(u.name.as_bytes())),
                    tag,
                )
            })
            .cloned()
        else {
            return Output::Drop(DropReason::AuthFailed);
        };
        let asked = ChallengeRequest {
            auth_type: pkt.auth_type,
            name: name16(user.name.as_bytes()),
        };
        let echoed = ChallengeResponse {
            temp_id,
            challenge: act.challenge,
        };
        if !self
            .cookies
            .check_challenge(&self.secret, now, peer, &asked, &echoed)
        {
            return Output::Drop(DropReason::UnknownSession);
        }
        let password = user.key.first16();
        if pkt.auth_type != AUTH_NONE {
            let want = auth_code_v15(pkt.auth_type, &password, temp_id, pkt.message, pkt.sequence);
            match (want, pkt.auth_code) {
                (Some(w), Some(got)) if ct_eq(&w, got) => {}
                _ => return Output::Drop(DropReason::AuthFailed),
            }
        }
        let reply_with = |code: u8, data: &[u8], seq: u32| {
            let mut msg = Vec::with_capacity(8 + data.len());
            req.emit_response(code, data, &mut msg);
            Output::Reply(outbound::v15(pkt.auth_type, &password, temp_id, seq, &msg))
        };
        if act.auth_type != pkt.auth_type {
            return reply_with(cc::INVALID_DATA_FIELD, &[], 0);
        }
        let Some(requested) = Privilege::from_wire(act.privilege) else {
            return reply_with(cc::INVALID_DATA_FIELD, &[], 0);
        };
        if requested > user.max_privilege {
            return reply_with(cc::PRIVILEGE_EXCEEDS_LIMIT, &[], 0);
        }
        // The session id follows from the cookie under the secret: as unguessable as a random
        // one, and the same for a duplicated or replayed Activate Session, which must not
        // open a second session.
        let derived = self.secret.mac(
            b"ipmi 1.5 session id",
            &[&temp_id.to_le_bytes(), &act.challenge],
        );
        let new_id = crate::wire::le_u32(&derived).max(1);
        if self.sessions.contains(new_id) {
            return Output::Drop(DropReason::Replay);
        }
        let mut inbound_start = self.entropy.u32();
        if inbound_start == 0 {
            inbound_start = 1;
        }
        let outbound = act.initial_outbound;
        let auth_type = pkt.auth_type;
        let privilege = Privilege::User.min(requested);
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
            shared: None,
        };
        let session = Session {
            id: new_id,
            peer,
            state: State::Active(Box::new(active)),
            last_activity: now,
        };
        if self.admit(session, now).is_err() {
            return reply_with(cc::OUT_OF_SPACE, &[], 0);
        }
        self.offer_to_fast_path(PublishV15 {
            session_id: new_id,
            peer,
            auth_type,
            password,
            inbound_start,
            next_outbound: outbound.wrapping_add(1),
            privilege,
            idle_timeout: self.config.session_timeout,
        });
        self.stats.sessions_opened += 1;
        let mut data = Vec::with_capacity(10);
        ActivateResponse {
            auth_type,
            session_id: new_id,
            initial_inbound: inbound_start,
            privilege: requested.wire(),
        }
        .emit(&mut data);
        reply_with(cc::OK, &data, outbound)
    }
}

/// Activated sessions waiting for the driver to publish them: a driver that never asks keeps
/// only the newest this many.
const MAX_TO_PUBLISH: usize = 64;

impl Bmc {
    fn offer_to_fast_path(&mut self, p: PublishV15) {
        if self.to_publish.len() >= MAX_TO_PUBLISH {
            self.to_publish.pop_front();
        }
        self.to_publish.push_back(p);
    }

    /// The next IPMI 1.5 session the fast path may answer as well (the driver writes it into
    /// the fast path's maps and hands the shared slot back with [`Bmc::attach_shared`]).
    /// Offered only while its sequence state and privilege are still what activation left,
    /// which is the state the offer carries; a session that moved on stays the engine's.
    pub fn poll_publish(&mut self) -> Option<PublishV15> {
        while let Some(p) = self.to_publish.pop_front() {
            let unchanged = match self.sessions.get_mut(p.session_id).map(|s| &s.state) {
                Some(State::Active(a)) => {
                    a.shared.is_none()
                        && a.outbound == p.next_outbound
                        && a.inbound == SeqWindow::new(p.inbound_start, WINDOW, WINDOW)
                        && a.privilege == p.privilege
                }
                _ => false,
            };
            if unchanged {
                return Some(p);
            }
        }
        None
    }

    /// The fast path's slot of session `id`, published from [`Bmc::poll_publish`]'s offer:
    /// from now on its sequence state lives there. A session that ended meanwhile drops it,
    /// which unpublishes it.
    pub fn attach_shared(&mut self, id: u32, shared: Box<dyn super::session::SharedSession>) {
        if let Some(State::Active(a)) = self.sessions.get_mut(id).map(|s| &mut s.state)
            && a.shared.is_none()
        {
            a.shared = Some(shared);
        }
    }
}

/// A user name as IPMI 1.5 carries it: 16 bytes, NUL-padded.
fn name16(name: &[u8]) -> [u8; 16] {
    let mut n = [0u8; 16];
    let len = name.len().min(16);
    n[..len].copy_from_slice(&name[..len]);
    n
}
