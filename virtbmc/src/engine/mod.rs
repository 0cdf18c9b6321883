//! The sans-IO IPMI engine: one [`Bmc`] per virtual machine takes `(now, peer, datagram,
//! view of the VM)` and returns the reply bytes, or an [`Action`] for the backend (with
//! [`When`] it may run) plus what it needs to finish the reply once the action's result is
//! known. It never awaits, never
//! logs a secret, and never touches a socket or Kubernetes.

mod boot;
pub mod cc;
mod channel;
pub mod commands;
pub mod config;
mod cookie;
mod device;
pub mod entropy;
mod fru;
mod lan_config;
mod lanplus;
mod limiter;
mod outbound;
pub mod payload;
mod reservation;
mod sdr;
mod secret;
mod sel;
mod sensor;
pub mod session;
mod session_info;
pub mod site;
pub mod sol;
pub mod sol_config;
pub(crate) mod users;
mod v15;
pub mod vm;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use commands::{Context, Kept, Outcome};
use config::{BmcConfig, Privilege};
use cookie::Cookies;
use entropy::{Entropy, OsEntropy};
use limiter::{NameLimiter, SourceLimiter, TrustedSources};
pub use payload::SolEffect;
use secret::Secret;
use session::{ActiveAuth, PublishV15, Refusal, Session, SessionTable, State};
use site::Site;
pub use sol::ToGuest;
pub use vm::{Action, ActionError, BootDevice, BootOverride, PowerState, VmView, When};

use crate::wire::message::Request;
use crate::wire::rmcp::{self, AsfMessage, RmcpHeader};
use crate::wire::{WireError, lan15};

/// Datagrams longer than this are dropped unread: no legal request comes near it.
pub const MAX_DATAGRAM: usize = 1024;

/// What to do with a datagram.
#[derive(Debug)]
pub enum Output {
    /// Nothing to send (malformed, unauthenticated, replayed, or not ours to answer).
    Drop(DropReason),
    Reply(Vec<u8>),
    /// Run `action` against the backend (at once, or once the machine's power transition is
    /// over, as [`When`] says), then hand its result to [`Bmc::complete`].
    Action(Action, When, Pending),
    /// Taken, with nothing to answer at once (a SOL acknowledgement): what follows, if
    /// anything, comes from [`Bmc::poll_transmit`].
    Absorbed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Malformed(WireError),
    Oversized,
    /// A packet whose auth code, integrity data or handshake proof did not verify.
    AuthFailed,
    /// A sequence number already used or outside the window.
    Replay,
    /// No session (or handshake) with that id in the state the packet needs.
    UnknownSession,
    /// A command not allowed outside a session, or a payload we do not serve.
    NotAllowed,
    RateLimited,
    /// A retransmission of a command whose action is still running.
    InFlight,
}

/// Something that happened to a session or to boot flags, for the driver to act on, log and
/// count: the engine reports it as a value and leaves what follows (an action for the
/// backend, a log line, a metric) to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new session or handshake was refused for lack of room.
    SessionRefused { peer: SocketAddr, reason: Refusal },
    /// An idle session was taken to make room for a new one.
    SessionReclaimed { id: u32, peer: SocketAddr },
    /// A session or handshake reached its idle limit.
    SessionExpired { id: u32, peer: SocketAddr },
    /// A session ended because its user was removed, its password changed or its privilege
    /// was lowered.
    SessionRevoked {
        id: u32,
        peer: SocketAddr,
        user: String,
    },
    /// One-shot boot flags set through this BMC were followed by no restart within 60 s
    /// (IPMI 2.0 §28.12): the driver clears them ([`Action::SetBoot`] with None) if the
    /// machine still has them (another client may have replaced them since).
    BootFlagsExpired(BootOverride),
}

/// Events kept for the driver; older ones are dropped if it never collects them.
const MAX_EVENTS: usize = 64;

/// What the engine needs to finish a reply after an action ran.
#[derive(Debug, Clone)]
pub struct Pending {
    session_id: u32,
    request: OwnedRequest,
    action: Action,
    /// When the request came in: boot option timers count from it.
    at: Instant,
}

#[derive(Debug, Clone)]
struct OwnedRequest {
    rs_addr: u8,
    net_fn: u8,
    rs_lun: u8,
    rq_addr: u8,
    rq_seq: u8,
    rq_lun: u8,
    cmd: u8,
}

impl OwnedRequest {
    fn of(r: &Request) -> Self {
        OwnedRequest {
            rs_addr: r.rs_addr,
            net_fn: r.net_fn,
            rs_lun: r.rs_lun,
            rq_addr: r.rq_addr,
            rq_seq: r.rq_seq,
            rq_lun: r.rq_lun,
            cmd: r.cmd,
        }
    }

    fn as_request(&self) -> Request<'static> {
        Request {
            rs_addr: self.rs_addr,
            net_fn: self.net_fn,
            rs_lun: self.rs_lun,
            rq_addr: self.rq_addr,
            rq_seq: self.rq_seq,
            rq_lun: self.rq_lun,
            cmd: self.cmd,
            data: &[],
        }
    }
}

/// Counters a BMC keeps about itself (exported as metrics by the agent).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub requests: u64,
    pub dropped: u64,
    pub auth_failures: u64,
    pub replays: u64,
    pub sessions_opened: u64,
    pub sessions_refused: u64,
    /// Idle sessions taken to make room for new ones.
    pub sessions_reclaimed: u64,
    /// Sessions and handshakes that reached their idle limit.
    pub sessions_expired: u64,
    /// Sessions ended because their user's credentials changed.
    pub sessions_revoked: u64,
    pub rakp_rate_limited: u64,
    /// RMCP+ sessions whose console derived K1 and K2 from 32-byte constants.
    pub sessions_32byte_kdf: u64,
    /// Serial-over-LAN: activations, characters each way, packets resent to the console,
    /// and characters given up after the last retry went unacknowledged.
    pub sol_activations: u64,
    pub sol_to_guest: u64,
    pub sol_to_console: u64,
    pub sol_retransmissions: u64,
    pub sol_abandoned: u64,
    /// IPMI requests parsed, by [`commands::command_slot`].
    pub commands: [u64; commands::COMMAND_SLOTS],
}

impl Stats {
    pub(crate) fn count(&mut self, req: &Request) {
        self.commands[commands::command_slot(req.net_fn, req.cmd)] += 1;
    }
}

pub struct Bmc {
    config: Arc<BmcConfig>,
    site: Site,
    sessions: SessionTable,
    session_handles: session_info::Handles,
    kept: Kept,
    rakp_limiter: SourceLimiter,
    name_limiter: NameLimiter,
    trusted: TrustedSources,
    secret: Secret,
    cookies: Cookies,
    entropy: Box<dyn Entropy>,
    /// IPMI 1.5 sessions the fast path may take over ([`Bmc::poll_publish`]).
    to_publish: VecDeque<PublishV15>,
    events: VecDeque<Event>,
    sol_config: sol_config::SolConfig,
    sol: Option<sol::SolLink>,
    sol_effects: VecDeque<SolEffect>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    pub stats: Stats,
}

impl Bmc {
    pub fn new(config: Arc<BmcConfig>) -> Bmc {
        Bmc::with_entropy(config, Box::new(OsEntropy))
    }

    pub fn with_entropy(config: Arc<BmcConfig>, mut entropy: Box<dyn Entropy>) -> Bmc {
        Bmc {
            config,
            site: Site::default(),
            sessions: SessionTable::default(),
            session_handles: session_info::Handles::default(),
            kept: Kept::default(),
            rakp_limiter: SourceLimiter::default(),
            name_limiter: NameLimiter::default(),
            trusted: TrustedSources::default(),
            secret: Secret::draw(entropy.as_mut()),
            cookies: Cookies::default(),
            entropy,
            to_publish: VecDeque::new(),
            events: VecDeque::new(),
            sol_config: sol_config::SolConfig::default(),
            sol: None,
            sol_effects: VecDeque::new(),
            transmits: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Arc<BmcConfig> {
        &self.config
    }

    /// New users or suites apply to the next session. Credentials are live: the sessions
    /// and handshakes of a user who is gone, whose password changed or whose privilege fell
    /// below what the session negotiated end now; other users' sessions are untouched.
    pub fn set_config(&mut self, config: Arc<BmcConfig>) {
        let (old, new) = (&self.config, &config);
        let revoked = self.sessions.revoke(|s| {
            let Some(name) = s.user() else {
                return false;
            };
            let (Some(was), Some(now)) = (old.user(name.as_bytes()), new.user(name.as_bytes()))
            else {
                return true;
            };
            let negotiated = match &s.state {
                State::Active(a) => a.max_privilege,
                _ => Privilege::Callback,
            };
            was.key != now.key || now.max_privilege < negotiated
        });
        for s in revoked {
            self.stats.sessions_revoked += 1;
            let user = s.user().unwrap_or_default().to_string();
            self.event(Event::SessionRevoked {
                id: s.id,
                peer: s.peer,
                user,
            });
        }
        self.config = config;
        self.sol_follow_sessions();
    }

    /// Where this BMC runs and which machine it stands for.
    pub fn set_site(&mut self, site: Site) {
        self.site = site;
    }

    /// The next event for the driver, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn event(&mut self, e: Event) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// When [`Bmc::handle_timeout`] has work next: the earliest idle deadline of a session
    /// or handshake (a session the fast path answers counts its answers as activity), the
    /// expiry of one-shot boot flags, or SOL characters or a retransmission due.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let idle = self.sessions.next_deadline(
            now,
            self.config.session_timeout,
            self.config.handshake_timeout,
        );
        [idle, self.kept.boot.poll_timeout(), self.sol_poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Ends the sessions and handshakes past their idle limit (a published session leaves
    /// the fast path with it), and reports boot flags that expired.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(flags) = self.kept.boot.handle_timeout(now) {
            self.event(Event::BootFlagsExpired(flags));
        }
        let gone = self.sessions.expire(
            now,
            self.config.session_timeout,
            self.config.handshake_timeout,
        );
        for s in gone {
            self.stats.sessions_expired += 1;
            self.event(Event::SessionExpired {
                id: s.id,
                peer: s.peer,
            });
        }
        self.sol_follow_sessions();
        self.sol_flush(now);
    }

    /// Adds a session or handshake to the table, reclaiming an idle one when it is full.
    fn admit(&mut self, session: Session, now: Instant) -> Result<(), Refusal> {
        let peer = session.peer;
        // A console that proved a password lately may take the place of a fresh handshake
        // from a source that has not: a flood of handshakes then delays nobody who logs in.
        let trusted = &self.trusted;
        let newcomer_trusted = trusted.is_trusted(peer.ip(), now);
        let preempt = |s: &Session| newcomer_trusted && !trusted.is_trusted(s.peer.ip(), now);
        match self
            .sessions
            .insert(session, self.config.max_sessions, now, preempt)
        {
            Ok(reclaimed) => {
                if let Some(s) = reclaimed {
                    self.stats.sessions_reclaimed += 1;
                    self.event(Event::SessionReclaimed {
                        id: s.id,
                        peer: s.peer,
                    });
                }
                Ok(())
            }
            Err(reason) => {
                self.stats.sessions_refused += 1;
                self.event(Event::SessionRefused { peer, reason });
                Err(reason)
            }
        }
    }

    pub fn active_sessions(&self) -> usize {
        self.sessions.active_count()
    }

    pub fn handle(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        datagram: &[u8],
        vm: &VmView,
    ) -> Output {
        self.stats.requests += 1;
        let out = self.dispatch(now, peer, datagram, vm);
        // Whatever removed a session (Close Session, a reclaim) ends its SOL too.
        self.sol_follow_sessions();
        if let Output::Drop(reason) = &out {
            self.stats.dropped += 1;
            match reason {
                DropReason::AuthFailed => self.stats.auth_failures += 1,
                DropReason::Replay => self.stats.replays += 1,
                _ => {}
            }
        }
        out
    }

    fn dispatch(&mut self, now: Instant, peer: SocketAddr, datagram: &[u8], vm: &VmView) -> Output {
        if datagram.len() > MAX_DATAGRAM {
            return Output::Drop(DropReason::Oversized);
        }
        let (header, rest) = match RmcpHeader::parse(datagram) {
            Ok(v) => v,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        match header.class {
            rmcp::CLASS_ASF => presence_pong(header, rest),
            rmcp::CLASS_IPMI => match rest.first().map(|b| b & 0x0F) {
                Some(lan15::AUTH_RMCPP) => self.handle_lanplus(now, peer, rest, vm),
                Some(_) => self.handle_v15(now, peer, rest, vm),
                None => Output::Drop(DropReason::Malformed(WireError::Truncated)),
            },
            _ => Output::Drop(DropReason::Malformed(WireError::Unsupported)),
        }
    }

    /// Finishes the reply to a command whose action ran; None when its session is gone.
    pub fn complete(
        &mut self,
        pending: Pending,
        result: Result<(), ActionError>,
    ) -> Option<Vec<u8>> {
        if result.is_ok() {
            match pending.action {
                Action::SetBoot(flags) => self.kept.boot.flags_set(flags, pending.at),
                power => self.kept.boot.chassis_control(Some(power), pending.at),
            }
        }
        let session = self.sessions.get_mut(pending.session_id)?;
        if let State::Active(a) = &mut session.state {
            a.in_flight = None;
        }
        let code = match &result {
            Ok(()) => cc::OK,
            Err(e) => e.completion_code(),
        };
        let mut msg = Vec::with_capacity(8);
        pending
            .request
            .as_request()
            .emit_response(code, &[], &mut msg);
        self.seal(pending.session_id, &msg)
    }

    /// Runs one authenticated in-session message at the session's privilege.
    fn in_session(&mut self, now: Instant, id: u32, message: &[u8], vm: &VmView) -> Output {
        use commands::{
            CMD_ACTIVATE_SESSION, CMD_CHASSIS_CONTROL, CMD_CLOSE_SESSION, CMD_GET_CHANNEL_INFO,
            CMD_GET_SESSION_CHALLENGE, CMD_GET_SESSION_INFO, CMD_SET_SESSION_PRIVILEGE, NETFN_APP,
            NETFN_CHASSIS,
        };
        let req = match Request::parse(message) {
            Ok(r) => r,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        self.stats.count(&req);
        let privilege = match self.sessions.get_mut(id) {
            Some(session) => {
                session.touch(now);
                match &session.state {
                    State::Active(active) => active.privilege,
                    _ => return Output::Drop(DropReason::UnknownSession),
                }
            }
            None => return Output::Drop(DropReason::UnknownSession),
        };
        // The one privilege table covers the commands the engine runs itself, too.
        let allowed = commands::required_privilege(req.net_fn, req.cmd)
            .is_none_or(|needed| privilege >= needed);
        let (code, data) = match (req.net_fn, req.cmd) {
            _ if !allowed => (cc::INSUFFICIENT_PRIVILEGE, Vec::new()),
            (NETFN_APP, CMD_GET_SESSION_INFO) => self.session_info(id, req.data),
            (NETFN_APP, CMD_GET_CHANNEL_INFO) => {
                channel::channel_info(req.data, self.sessions.active_count())
            }
            (NETFN_APP, CMD_CLOSE_SESSION) => {
                // Closing a session needs its id (or handle); a session may close only itself.
                let target = (req.data.len() >= 4).then(|| crate::wire::le_u32(req.data));
                if req.data.len() != 4 && req.data.len() != 5 {
                    (cc::REQUEST_LENGTH_INVALID, Vec::new())
                } else if target != Some(id) {
                    (cc::INVALID_SESSION_ID, Vec::new())
                } else {
                    let mut msg = Vec::with_capacity(8);
                    req.emit_response(cc::OK, &[], &mut msg);
                    let reply = self.seal(id, &msg);
                    self.sessions.remove(id);
                    return reply.map_or(Output::Drop(DropReason::UnknownSession), Output::Reply);
                }
            }
            (NETFN_APP, CMD_GET_SESSION_CHALLENGE | CMD_ACTIVATE_SESSION) => {
                (cc::NOT_IN_STATE, Vec::new())
            }
            (net_fn, cmd) if payload::is_payload_command(net_fn, cmd) => {
                self.payload_command(id, &req)
            }
            _ => {
                let Some(State::Active(active)) = self.sessions.get_mut(id).map(|s| &mut s.state)
                else {
                    return Output::Drop(DropReason::UnknownSession);
                };
                if (req.net_fn, req.cmd) == (NETFN_APP, CMD_SET_SESSION_PRIVILEGE) {
                    set_privilege(active, req.data)
                } else {
                    let ctx = Context {
                        config: &self.config,
                        site: &self.site,
                        vm,
                        now,
                    };
                    match commands::execute(&req, Some(privilege), &ctx, &mut self.kept) {
                        Outcome::Reply(code, data) => {
                            if (req.net_fn, req.cmd) == (NETFN_CHASSIS, CMD_CHASSIS_CONTROL)
                                && code == cc::OK
                            {
                                // Done without an action: the machine was already there.
                                self.kept.boot.chassis_control(None, now);
                            }
                            (code, data)
                        }
                        Outcome::Action(action, when) => {
                            if active.in_flight == Some((req.rq_seq, req.cmd)) {
                                return Output::Drop(DropReason::InFlight);
                            }
                            active.in_flight = Some((req.rq_seq, req.cmd));
                            return Output::Action(
                                action,
                                when,
                                Pending {
                                    session_id: id,
                                    request: OwnedRequest::of(&req),
                                    action,
                                    at: now,
                                },
                            );
                        }
                    }
                }
            }
        };
        let mut msg = Vec::with_capacity(8 + data.len());
        req.emit_response(code, &data, &mut msg);
        self.seal(id, &msg)
            .map_or(Output::Drop(DropReason::UnknownSession), Output::Reply)
    }

    /// Runs a command outside any session (only the discovery commands get here).
    fn sessionless(&mut self, now: Instant, req: &Request, vm: &VmView) -> Outcome {
        let ctx = Context {
            config: &self.config,
            site: &self.site,
            vm,
            now,
        };
        commands::execute(req, None, &ctx, &mut self.kept)
    }

    /// Wraps a reply message for an active session: next outbound sequence number, auth code
    /// or integrity data, encryption.
    fn seal(&mut self, id: u32, msg: &[u8]) -> Option<Vec<u8>> {
        self.seal_payload(id, crate::wire::lanplus::PAYLOAD_IPMI, msg)
    }

    /// [`Bmc::seal`] for any RMCP+ payload type (an IPMI 1.5 session carries IPMI only).
    fn seal_payload(&mut self, id: u32, payload_type: u8, msg: &[u8]) -> Option<Vec<u8>> {
        let session = self.sessions.get_mut(id)?;
        let State::Active(active) = &mut session.state else {
            return None;
        };
        let seq = active.next_outbound();
        let out = match &active.auth {
            ActiveAuth::V15 {
                auth_type,
                password,
            } => outbound::v15(*auth_type, password, id, seq, msg),
            ActiveAuth::V20 {
                console_id,
                suite,
                k1,
                k2,
                ..
            } => {
                let iv = self.entropy.bytes16();
                outbound::v20(payload_type, *console_id, seq, suite, (k1, k2), &iv, msg)
            }
        };
        Some(out)
    }
}

/// Set Session Privilege Level (IPMI 2.0 §22.18): 0 reads the current level; a level above
/// the session's negotiated maximum is refused.
fn set_privilege(active: &mut session::Active, d: &[u8]) -> (u8, Vec<u8>) {
    if d.len() != 1 {
        return (cc::REQUEST_LENGTH_INVALID, Vec::new());
    }
    if d[0] & 0x0F == 0 {
        return (cc::OK, vec![active.privilege.wire()]);
    }
    match Privilege::from_wire(d[0]) {
        Some(p) if p <= active.max_privilege => {
            active.privilege = p;
            if let Some(shared) = &active.shared {
                shared.set_privilege(p);
            }
            (cc::OK, vec![p.wire()])
        }
        Some(_) => (cc::SET_PRIV_EXCEEDS_LIMIT, Vec::new()),
        None => (cc::INVALID_DATA_FIELD, Vec::new()),
    }
}

fn presence_pong(header: RmcpHeader, rest: &[u8]) -> Output {
    match AsfMessage::parse(rest) {
        Ok(m) if m.iana == rmcp::ASF_IANA && m.msg_type == rmcp::ASF_PING && m.data.is_empty() => {
            let mut out = Vec::with_capacity(28);
            rmcp::emit_pong(header.sequence, m.tag, &mut out);
            Output::Reply(out)
        }
        Ok(_) => Output::Drop(DropReason::NotAllowed),
        Err(e) => Output::Drop(DropReason::Malformed(e)),
    }
}

#[cfg(test)]
mod tests;
