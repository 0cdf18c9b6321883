//! Sessions: typed handshake states, sliding sequence windows, and the bounded table.
//!
//! Each state is its own type so that a message can only act on a session in the state it
//! belongs to (a RAKP3 cannot touch an active session, an in-session command cannot reach a
//! half-open one). Sessions are keyed by the id this BMC assigned, drawn from a CSPRNG.

use std::net::SocketAddr;
use std::time::Instant;

use super::config::{CipherSuite, Privilege};

/// Accepted sequence numbers: a window around the highest one seen, with a bitmap of the
/// numbers already used so that a verbatim replay inside the window is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqWindow {
    highest: u32,
    /// Bit i set = `highest - i` was accepted.
    seen: u32,
    behind: u32,
    ahead: u32,
}

impl SeqWindow {
    /// `next` is the first number the peer may send; `behind`/`ahead` bound how far a number
    /// may lag or jump (IPMI 2.0 §6.12.13: 1.5 uses ±8, RMCP+ -16/+15 as OpenIPMI does).
    pub fn new(next: u32, behind: u32, ahead: u32) -> SeqWindow {
        SeqWindow {
            highest: next.wrapping_sub(1),
            seen: 1,
            behind,
            ahead,
        }
    }

    pub fn check(&self, seq: u32) -> bool {
        let fwd = seq.wrapping_sub(self.highest);
        if fwd != 0 && fwd <= self.ahead {
            return true;
        }
        let back = self.highest.wrapping_sub(seq);
        back < self.behind && back < 32 && self.seen & (1 << back) == 0
    }

    /// Records `seq`; call only after `check` passed and the packet authenticated.
    pub fn commit(&mut self, seq: u32) {
        let fwd = seq.wrapping_sub(self.highest);
        if fwd != 0 && fwd <= self.ahead {
            self.seen = if fwd >= 32 { 0 } else { self.seen << fwd };
            self.seen |= 1;
            self.highest = seq;
        } else {
            let back = self.highest.wrapping_sub(seq);
            if back < 32 {
                self.seen |= 1 << back;
            }
        }
    }
}

/// IPMI 1.5: Get Session Challenge answered, Activate Session awaited.
#[derive(Debug, Clone)]
pub struct ChallengeSent {
    pub user: String,
    pub auth_type: u8,
    pub challenge: [u8; 16],
}

/// RMCP+: Open Session answered, RAKP1 awaited.
#[derive(Debug, Clone)]
pub struct Opened {
    pub console_id: u32,
    pub suite: CipherSuite,
}

/// RMCP+: RAKP2 sent, RAKP3 awaited.
#[derive(Debug, Clone)]
pub struct Rakp2Sent {
    pub opened: Opened,
    pub user: String,
    pub role: u8,
    pub rm: [u8; 16],
    pub rc: [u8; 16],
    pub sik: Vec<u8>,
    /// The GUID sent in RAKP2; RAKP4's check value covers the same bytes.
    pub guid: [u8; 16],
}

#[derive(Debug, Clone)]
pub enum ActiveAuth {
    /// IPMI 1.5 with per-message auth code of `auth_type` keyed by the password.
    V15 { auth_type: u8, password: [u8; 16] },
    /// RMCP+ with the negotiated suite and derived keys.
    V20 {
        console_id: u32,
        suite: CipherSuite,
        k1: Vec<u8>,
        k2: Vec<u8>,
    },
}

/// An IPMI 1.5 session's sequence state published to the fast path: memory both sides update
/// atomically (the protocol is fixed in virtbmc-common's `session` module). While published,
/// the engine keeps no private window or outbound counter. Dropping it unpublishes.
pub trait SharedSession: Send + Sync + std::fmt::Debug {
    /// Checks and commits an inbound sequence number in one atomic step.
    fn accept(&self, seq: u32) -> bool;
    /// Takes the next outbound sequence number.
    fn next_outbound(&self) -> u32;
    fn set_privilege(&self, privilege: Privilege);
    /// When the fast path last answered in this session, if it did.
    fn last_fast_answer(&self, now: Instant) -> Option<Instant>;
}

/// What the fast path needs to answer inside an IPMI 1.5 session.
#[derive(Debug, Clone)]
pub struct PublishV15 {
    pub session_id: u32,
    pub peer: SocketAddr,
    pub auth_type: u8,
    pub password: [u8; 16],
    /// The first inbound sequence number the console may use.
    pub inbound_start: u32,
    pub next_outbound: u32,
    pub privilege: Privilege,
}

/// Where an engine publishes its IPMI 1.5 sessions (the agent's fast path); None when the
/// session cannot be published, which only means the engine answers everything itself.
pub trait SessionPublisher: Send + Sync {
    fn publish(&self, session: &PublishV15) -> Option<Box<dyn SharedSession>>;
}

#[derive(Debug)]
pub struct Active {
    pub auth: ActiveAuth,
    pub user: String,
    pub privilege: Privilege,
    pub max_privilege: Privilege,
    pub inbound: SeqWindow,
    pub outbound: u32,
    /// A mutating command sent to the backend and not yet answered: its (rqSeq, cmd). A
    /// client's retransmission of it is ignored instead of run twice.
    pub in_flight: Option<(u8, u8)>,
    /// Set when the session is published to the fast path: its sequence state lives there.
    pub shared: Option<Box<dyn SharedSession>>,
}

impl Active {
    /// Accepts and commits an inbound sequence number (call after the packet authenticated).
    pub fn accept(&mut self, seq: u32) -> bool {
        match &self.shared {
            Some(shared) => shared.accept(seq),
            None if self.inbound.check(seq) => {
                self.inbound.commit(seq);
                true
            }
            None => false,
        }
    }

    pub fn next_outbound(&mut self) -> u32 {
        match &self.shared {
            Some(shared) => shared.next_outbound(),
            None => {
                let seq = self.outbound;
                self.outbound = seq.wrapping_add(1);
                seq
            }
        }
    }
}

#[derive(Debug)]
pub enum State {
    ChallengeSent(ChallengeSent),
    Opened(Opened),
    Rakp2Sent(Box<Rakp2Sent>),
    Active(Box<Active>),
}

#[derive(Debug)]
pub struct Session {
    pub id: u32,
    pub peer: SocketAddr,
    pub state: State,
    pub last_activity: Instant,
}

impl Session {
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Active(_))
    }

    /// The later of the engine's and the fast path's last activity.
    fn last_seen(&self, now: Instant) -> Instant {
        match &self.state {
            State::Active(a) => match a.shared.as_ref().and_then(|s| s.last_fast_answer(now)) {
                Some(fast) => fast.max(self.last_activity),
                None => self.last_activity,
            },
            _ => self.last_activity,
        }
    }
}

/// Why a new session could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableFull;

/// A bounded table. A full table recycles its oldest half-open session (a handshake is cheap
/// to restart) and otherwise refuses: an active session is never evicted.
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: Vec<Session>,
}

impl SessionTable {
    pub fn get_mut(&mut self, id: u32) -> Option<&mut Session> {
        self.sessions.iter_mut().find(|s| s.id == id)
    }

    /// Every session, half-open and active, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.iter()
    }

    pub fn contains(&self, id: u32) -> bool {
        self.sessions.iter().any(|s| s.id == id)
    }

    pub fn remove(&mut self, id: u32) -> Option<Session> {
        let i = self.sessions.iter().position(|s| s.id == id)?;
        Some(self.sessions.swap_remove(i))
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn active_count(&self) -> usize {
        self.sessions.iter().filter(|s| s.is_active()).count()
    }

    /// Forgets idle active sessions and stale handshakes; returns how many went.
    pub fn expire(
        &mut self,
        now: Instant,
        idle: std::time::Duration,
        handshake: std::time::Duration,
    ) -> usize {
        let before = self.sessions.len();
        self.sessions.retain(|s| {
            let limit = if s.is_active() { idle } else { handshake };
            now.saturating_duration_since(s.last_seen(now)) < limit
        });
        before - self.sessions.len()
    }

    pub fn insert(&mut self, session: Session, capacity: usize) -> Result<(), TableFull> {
        if self.sessions.len() >= capacity {
            let oldest_half_open = self
                .sessions
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.is_active())
                .min_by_key(|(_, s)| s.last_activity)
                .map(|(i, _)| i)
                .ok_or(TableFull)?;
            self.sessions.swap_remove(oldest_half_open);
        }
        self.sessions.push(session);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_refuses_replays_and_far_jumps() {
        let mut w = SeqWindow::new(100, 16, 15);
        assert!(w.check(100));
        w.commit(100);
        assert!(!w.check(100), "replay");
        assert!(w.check(102));
        w.commit(102);
        assert!(w.check(101), "late but unseen");
        w.commit(101);
        assert!(!w.check(101));
        assert!(!w.check(102 + 16), "too far ahead");
        assert!(w.check(102 + 15));
        assert!(!w.check(102 - 16), "too far behind");
    }

    #[test]
    fn window_wraps_around_u32() {
        let mut w = SeqWindow::new(u32::MAX, 8, 8);
        w.commit(u32::MAX);
        assert!(w.check(0));
        w.commit(0);
        assert!(!w.check(u32::MAX));
        assert!(w.check(5));
    }

    fn session(id: u32, active: bool, t: Instant) -> Session {
        let state = if active {
            State::Active(Box::new(Active {
                auth: ActiveAuth::V15 {
                    auth_type: 2,
                    password: [0; 16],
                },
                user: "u".into(),
                privilege: Privilege::User,
                max_privilege: Privilege::User,
                inbound: SeqWindow::new(1, 8, 8),
                outbound: 1,
                in_flight: None,
                shared: None,
            }))
        } else {
            State::ChallengeSent(ChallengeSent {
                user: "u".into(),
                auth_type: 2,
                challenge: [0; 16],
            })
        };
        Session {
            id,
            peer: "127.0.0.1:1".parse().unwrap(),
            state,
            last_activity: t,
        }
    }

    #[test]
    fn full_table_recycles_half_open_never_active() {
        let t = Instant::now();
        let mut table = SessionTable::default();
        table.insert(session(1, true, t), 2).unwrap();
        table.insert(session(2, false, t), 2).unwrap();
        table.insert(session(3, false, t), 2).unwrap();
        assert!(table.contains(1) && table.contains(3) && !table.contains(2));
        table.insert(session(4, true, t), 2).unwrap();
        assert_eq!(table.insert(session(5, true, t), 2), Err(TableFull));
        assert!(table.contains(1) && table.contains(4));
    }
}
