//! Payload commands (IPMI 2.0 §24) and SOL configuration (§26) on a BMC, and the SOL
//! payload packets of the session that activated it. One SOL instance per machine: its
//! state is a [`SolLink`], its start, end and the characters for the guest are
//! [`SolEffect`]s for the driver, its packets to the console go out through
//! [`Bmc::poll_transmit`].

use std::net::SocketAddr;
use std::time::Instant;

use super::config::Privilege;
use super::session::{ActiveAuth, State};
use super::sol::{PAYLOAD_SIZE, SolLink, ToGuest};
use super::{Bmc, DropReason, Output, cc, channel};
use crate::crypto::{ConfAlg, IntegAlg};
use crate::wire::message::Request;
use crate::wire::sol::{PAYLOAD_SOL, SolPacket};

pub const CMD_ACTIVATE_PAYLOAD: u8 = 0x48;
pub const CMD_DEACTIVATE_PAYLOAD: u8 = 0x49;
pub const CMD_GET_PAYLOAD_ACTIVATION_STATUS: u8 = 0x4A;
pub const CMD_GET_PAYLOAD_INSTANCE_INFO: u8 = 0x4B;
pub const CMD_GET_CHANNEL_PAYLOAD_SUPPORT: u8 = 0x4E;
pub const CMD_GET_CHANNEL_PAYLOAD_VERSION: u8 = 0x4F;
/// NetFn Transport.
pub const CMD_SET_SOL_CONFIG: u8 = 0x21;
pub const CMD_GET_SOL_CONFIG: u8 = 0x22;

/// Completion codes of Activate and Deactivate Payload (§24.1, §24.2).
mod code {
    /// Activate: already active on another session. Deactivate: already deactivated.
    pub const ALREADY: u8 = 0x80;
    pub const DISABLED: u8 = 0x81;
    pub const NEEDS_NO_ENCRYPTION: u8 = 0x83;
    pub const NEEDS_ENCRYPTION: u8 = 0x84;
}

/// Datagrams of its own an engine holds for the driver at most.
const MAX_TRANSMITS: usize = 16;

/// What SOL asks of the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SolEffect {
    /// A session activated SOL: open the machine's serial console.
    Started,
    /// SOL ended (deactivated, stolen, disabled, or its session closed or expired): close it.
    Stopped,
    /// Characters or a break for the guest.
    ToGuest(ToGuest),
}

/// Whether a command is one this module answers (inside a session).
pub fn is_payload_command(net_fn: u8, cmd: u8) -> bool {
    use super::commands::{NETFN_APP, NETFN_TRANSPORT};
    matches!(
        (net_fn, cmd),
        (
            NETFN_APP,
            CMD_ACTIVATE_PAYLOAD
                | CMD_DEACTIVATE_PAYLOAD
                | CMD_GET_PAYLOAD_ACTIVATION_STATUS
                | CMD_GET_PAYLOAD_INSTANCE_INFO
                | CMD_GET_CHANNEL_PAYLOAD_SUPPORT
                | CMD_GET_CHANNEL_PAYLOAD_VERSION
        ) | (NETFN_TRANSPORT, CMD_SET_SOL_CONFIG | CMD_GET_SOL_CONFIG)
    )
}

impl Bmc {
    /// Runs a payload or SOL configuration command for session `id` (privilege already
    /// checked against the command table).
    pub(super) fn payload_command(&mut self, id: u32, req: &Request) -> (u8, Vec<u8>) {
        let d = req.data;
        let r = match req.cmd {
            _ if req.net_fn == super::commands::NETFN_TRANSPORT => {
                if req.cmd == CMD_GET_SOL_CONFIG {
                    self.sol_config.get(d, self.site.local.port())
                } else {
                    let code = self.sol_config.set(d);
                    if code == cc::OK && !self.sol_config.enabled {
                        self.sol_stop(None);
                    }
                    Err(code)
                }
            }
            CMD_GET_CHANNEL_PAYLOAD_SUPPORT => payload_support(d),
            CMD_GET_CHANNEL_PAYLOAD_VERSION => payload_version(d),
            CMD_ACTIVATE_PAYLOAD => self.activate_payload(id, d),
            CMD_DEACTIVATE_PAYLOAD => self.deactivate_payload(id, d),
            CMD_GET_PAYLOAD_ACTIVATION_STATUS => match d {
                [t] if t & 0x3F == PAYLOAD_SOL => {
                    // One instance (bits 3:0 capacity), bit 0 of the next byte: instance 1.
                    Ok(vec![0x01, u8::from(self.sol.is_some()), 0x00])
                }
                [_] => Err(cc::INVALID_DATA_FIELD),
                _ => Err(cc::REQUEST_LENGTH_INVALID),
            },
            CMD_GET_PAYLOAD_INSTANCE_INFO => match d {
                [t, 1] if t & 0x3F == PAYLOAD_SOL => {
                    let mut out = vec![0; 12];
                    if let Some(l) = &self.sol {
                        out[..4].copy_from_slice(&l.owner.to_le_bytes());
                        // §24.4: for SOL, the serial port of the instance (our only one).
                        out[4] = 1;
                    }
                    Ok(out)
                }
                [_, _] => Err(cc::INVALID_DATA_FIELD),
                _ => Err(cc::REQUEST_LENGTH_INVALID),
            },
            _ => Err(cc::INVALID_COMMAND),
        };
        match r {
            Ok(data) => (cc::OK, data),
            Err(code) => (code, Vec::new()),
        }
    }

    /// Activate Payload (§24.1): [type, instance, auxiliary (bit 7 encrypt, bit 6
    /// authenticate), 3 reserved].
    fn activate_payload(&mut self, id: u32, d: &[u8]) -> Result<Vec<u8>, u8> {
        let [t, instance, aux, _, _, _] = *d else {
            return Err(cc::REQUEST_LENGTH_INVALID);
        };
        if t & 0x3F != PAYLOAD_SOL || instance & 0x0F != 1 {
            return Err(cc::INVALID_DATA_FIELD);
        }
        let cfg = self.sol_config;
        if !cfg.enabled {
            return Err(code::DISABLED);
        }
        let Some(State::Active(active)) = self.sessions.get_mut(id).map(|s| &s.state) else {
            return Err(cc::UNSPECIFIED);
        };
        // SOL travels in RMCP+ payloads only.
        let ActiveAuth::V20 { suite, .. } = &active.auth else {
            return Err(code::DISABLED);
        };
        if active.privilege < cfg.privilege {
            return Err(cc::INSUFFICIENT_PRIVILEGE);
        }
        let (encrypts, signs) = (suite.conf != ConfAlg::None, suite.integ != IntegAlg::None);
        let (want_enc, want_auth) = (aux & 0x80 != 0, aux & 0x40 != 0);
        if (want_enc && !encrypts) || (want_auth && !signs) {
            return Err(code::NEEDS_NO_ENCRYPTION);
        }
        // The packets are protected as the session's are; a request that says otherwise, or
        // a session too weak for the configuration, is refused.
        if (!want_enc && (encrypts || cfg.force_encryption))
            || (!want_auth && (signs || cfg.force_authentication))
        {
            return Err(code::NEEDS_ENCRYPTION);
        }
        if self.sol.is_some() {
            return Err(code::ALREADY);
        }
        self.sol = Some(SolLink::new(id, true));
        self.sessions.pin(Some(id));
        self.stats.sol_activations += 1;
        self.sol_effects.push_back(SolEffect::Started);
        let size = PAYLOAD_SIZE.to_le_bytes();
        let port = self.site.local.port().to_le_bytes();
        Ok(vec![
            0, 0, 0, 0, size[0], size[1], size[0], size[1], port[0], port[1], 0xFF, 0xFF,
        ])
    }

    /// Deactivate Payload (§24.2): [type, instance, 4 reserved]. Another session may end
    /// the instance if it is the same user's or an administrator's (a console ending a
    /// stale SOL from a new session, as Ironic and ipmiconsole do).
    fn deactivate_payload(&mut self, id: u32, d: &[u8]) -> Result<Vec<u8>, u8> {
        let [t, instance, _, _, _, _] = *d else {
            return Err(cc::REQUEST_LENGTH_INVALID);
        };
        if t & 0x3F != PAYLOAD_SOL || instance & 0x0F != 1 {
            return Err(cc::INVALID_DATA_FIELD);
        }
        let Some(owner) = self.sol.as_ref().map(|l| l.owner) else {
            return Err(code::ALREADY);
        };
        if owner != id {
            let who = |bmc: &mut Bmc, sid| match bmc.sessions.get_mut(sid).map(|s| &s.state) {
                Some(State::Active(a)) => Some((a.user.clone(), a.privilege)),
                _ => None,
            };
            let me = who(self, id);
            let them = who(self, owner);
            let allowed = match (&me, &them) {
                (Some((_, Privilege::Admin)), _) => true,
                (Some((mine, _)), Some((theirs, _))) => mine == theirs,
                _ => false,
            };
            if !allowed {
                return Err(cc::INSUFFICIENT_PRIVILEGE);
            }
        }
        self.sol_stop(Some(id));
        Ok(Vec::new())
    }

    /// Ends the SOL instance. Its owner hears "deactivating" unless it asked itself
    /// (`by` is the session that ended it, None for the BMC).
    fn sol_stop(&mut self, by: Option<u32>) {
        let Some(mut link) = self.sol.take() else {
            return;
        };
        self.sessions.pin(None);
        if by != Some(link.owner) {
            let farewell = link.farewell();
            self.send_sol(link.owner, &farewell);
        }
        self.add_sol_counts(&mut link);
        self.sol_effects.push_back(SolEffect::Stopped);
    }

    /// Moves the instance's counters into the BMC's stats, so that metrics follow live.
    fn add_sol_counts(&mut self, link: &mut SolLink) {
        let c = std::mem::take(&mut link.counts);
        self.stats.sol_to_guest += c.to_guest;
        self.stats.sol_to_console += c.to_console;
        self.stats.sol_retransmissions += c.retransmissions;
        self.stats.sol_abandoned += c.abandoned;
    }

    /// Ends SOL when its session is gone (closed, expired, reclaimed or revoked).
    pub(super) fn sol_follow_sessions(&mut self) {
        let Some(owner) = self.sol.as_ref().map(|l| l.owner) else {
            return;
        };
        let alive = self.sessions.get_mut(owner).is_some_and(|s| s.is_active());
        if !alive && let Some(mut link) = self.sol.take() {
            self.sessions.pin(None);
            self.add_sol_counts(&mut link);
            self.sol_effects.push_back(SolEffect::Stopped);
        }
    }

    /// A SOL payload packet, authenticated and decrypted, in session `id`.
    pub(super) fn sol_packet(&mut self, now: Instant, id: u32, payload: &[u8]) -> Output {
        let privilege = match self.sessions.get_mut(id) {
            Some(s) => {
                s.touch(now);
                match &s.state {
                    State::Active(a) => a.privilege,
                    _ => return Output::Drop(DropReason::UnknownSession),
                }
            }
            None => return Output::Drop(DropReason::UnknownSession),
        };
        // SOL packets of a session that does not own the instance, or whose privilege fell
        // below what SOL needs, are not ours to take.
        if privilege < self.sol_config.privilege {
            return Output::Drop(DropReason::NotAllowed);
        }
        let Some(link) = self.sol.as_mut().filter(|l| l.owner == id) else {
            return Output::Drop(DropReason::NotAllowed);
        };
        let p = match SolPacket::parse(payload) {
            Ok(p) => p,
            Err(e) => return Output::Drop(DropReason::Malformed(e)),
        };
        let (ack, guest) = link.on_packet(now, &p);
        self.sol_effects
            .extend(guest.into_iter().map(SolEffect::ToGuest));
        self.sol_flush(now);
        match ack {
            Some(ack) => {
                let mut msg = Vec::with_capacity(4);
                ack.emit(&mut msg);
                self.seal_payload(id, PAYLOAD_SOL, &msg)
                    .map_or(Output::Drop(DropReason::UnknownSession), Output::Reply)
            }
            None => Output::Absorbed,
        }
    }

    /// Seals and queues a SOL packet for session `id`.
    fn send_sol(&mut self, id: u32, p: &super::sol::Outgoing) {
        let Some(peer) = self.sessions.get_mut(id).map(|s| s.peer) else {
            return;
        };
        let mut msg = Vec::with_capacity(4 + p.data.len());
        p.emit(&mut msg);
        if let Some(datagram) = self.seal_payload(id, PAYLOAD_SOL, &msg) {
            self.push_transmit(peer, datagram);
        }
    }

    /// Queues a datagram; a driver that never collects them loses the oldest, not memory
    /// (the agent collects after every datagram and timer).
    fn push_transmit(&mut self, peer: SocketAddr, datagram: Vec<u8>) {
        if self.transmits.len() >= MAX_TRANSMITS {
            self.transmits.pop_front();
        }
        self.transmits.push_back((peer, datagram));
    }

    /// Sends whatever the SOL instance has due.
    pub(super) fn sol_flush(&mut self, now: Instant) {
        let cfg = self.sol_config;
        let Some(link) = self.sol.as_mut() else {
            return;
        };
        let owner = link.owner;
        if let Some(p) = link.handle_timeout(now, &cfg) {
            self.send_sol(owner, &p);
        }
        let Some(link) = self.sol.as_mut() else {
            return;
        };
        if let Some(p) = link.poll_send(now, &cfg) {
            self.send_sol(owner, &p);
        }
        if let Some(mut link) = self.sol.take() {
            self.add_sol_counts(&mut link);
            self.sol = Some(link);
        }
    }

    pub(super) fn sol_poll_timeout(&self) -> Option<Instant> {
        self.sol.as_ref()?.poll_timeout(&self.sol_config)
    }

    /// What SOL asks of the driver next, oldest first.
    pub fn poll_sol(&mut self) -> Option<SolEffect> {
        self.sol_effects.pop_front()
    }

    /// A datagram the engine sends on its own (SOL data, retransmissions, the deactivating
    /// notice), with its destination.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// How many characters from the guest the SOL instance takes now (0 without one): the
    /// driver reads the console no further, so unread output waits in the console's queue.
    pub fn sol_room(&self) -> usize {
        self.sol.as_ref().map_or(0, SolLink::room)
    }

    /// How many inputs (runs of characters or breaks) the guest's side takes now; the driver
    /// says so before each datagram. Without it the instance takes everything.
    pub fn sol_guest_room(&mut self, inputs: usize) {
        if let Some(link) = self.sol.as_mut() {
            link.set_guest_room(inputs);
        }
    }

    /// Characters from the guest; returns how many were taken (at most [`Bmc::sol_room`]).
    pub fn sol_from_guest(&mut self, now: Instant, bytes: &[u8]) -> usize {
        let Some(link) = self.sol.as_mut() else {
            return 0;
        };
        let n = link.from_guest(now, bytes);
        self.sol_flush(now);
        n
    }

    /// The guest's serial line is there (true) or not (false, e.g. the machine is off).
    pub fn sol_console(&mut self, now: Instant, present: bool) {
        if let Some(link) = self.sol.as_mut() {
            link.set_console(present);
            self.sol_flush(now);
        }
    }

    /// The serial line is gone for good (another client took the VM's console): SOL ends and
    /// its console hears "deactivating".
    pub fn sol_lost(&mut self) {
        self.sol_stop(None);
    }

    /// The session owning the SOL instance, if one is active.
    pub fn sol_owner(&self) -> Option<u32> {
        self.sol.as_ref().map(|l| l.owner)
    }
}

/// Get Channel Payload Support (§24.8): IPMI and SOL, and the session set-up payloads
/// (Open Session and RAKP 1-4).
fn payload_support(d: &[u8]) -> Result<Vec<u8>, u8> {
    match d {
        [ch] if channel::is_ours(*ch) => Ok(vec![0x03, 0x00, 0x3F, 0x00, 0, 0, 0, 0]),
        [_] => Err(cc::INVALID_DATA_FIELD),
        _ => Err(cc::REQUEST_LENGTH_INVALID),
    }
}

/// Get Channel Payload Version (§24.9): 1.0 for IPMI and SOL; 80h for other payloads.
fn payload_version(d: &[u8]) -> Result<Vec<u8>, u8> {
    match d {
        [ch, t] if channel::is_ours(*ch) => match t & 0x3F {
            0 | PAYLOAD_SOL => Ok(vec![0x10]),
            _ => Err(0x80),
        },
        [_, _] => Err(cc::INVALID_DATA_FIELD),
        _ => Err(cc::REQUEST_LENGTH_INVALID),
    }
}
