//! Sessions: typed handshake states, sliding sequence windows, and the bounded table.
//!
//! Each state is its own type so that a message can only act on a session in the state it
//! belongs to (a RAKP3 cannot touch an active session, an in-session command cannot reach a
//! half-open one). Sessions are keyed by the id this BMC assigned: a MAC under the BMC's
//! random per-process secret (engine/cookie.rs), as unguessable as a random id.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use virtbmc_common::session::{window_accepts, window_advance, window_pack};

use super::config::{CipherSuite, Privilege};

/// Accepted sequence numbers: a window around the highest one seen, with a bitmap of the
/// numbers already used so that a verbatim replay inside the window is refused. The rules
/// are the ones the fast path applies to published sessions, written once in
/// `virtbmc_common::session`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqWindow {
    /// [`window_pack`]`(highest, seen)`: bit i of `seen` set = `highest - i` was accepted.
    window: u64,
    behind: u32,
    ahead: u32,
}

impl SeqWindow {
    /// `next` is the first number the peer may send; `behind`/`ahead` bound how far a number
    /// may lag or jump (IPMI 2.0 §6.12.13: 1.5 uses ±8, RMCP+ -16/+15 as OpenIPMI does).
    pub fn new(next: u32, behind: u32, ahead: u32) -> SeqWindow {
        SeqWindow {
            window: window_pack(next.wrapping_sub(1), 1),
            behind,
            ahead,
        }
    }

    pub fn check(&self, seq: u32) -> bool {
        window_accepts(self.window, seq, self.behind, self.ahead)
    }

    /// Records `seq`; call only after `check` passed and the packet authenticated.
    pub fn commit(&mut self, seq: u32) {
        self.window = window_advance(self.window, seq, self.ahead);
    }
}

/// RMCP+: RAKP2 sent, RAKP3 awaited. Nothing comes before it: Open Session is answered
/// with a cookie (engine/cookie.rs), and this is made from a RAKP1 that echoed it.
#[derive(Debug, Clone)]
pub struct Rakp2Sent {
    pub console_id: u32,
    pub suite: CipherSuite,
    /// The name as RAKP1 gave it; `known` says whether this BMC has such a user. An unknown
    /// name runs the same handshake under a stand-in key and fails where a wrong password
    /// does, so that no answer tells which names exist.
    pub name: Vec<u8>,
    pub known: bool,
    pub role: u8,
    /// The privilege the Open Session Request asked for (0 = any).
    pub open_privilege: u8,
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
        /// K1 and K2 derived from 32-byte constants, which some consoles use for the
        /// HMAC-SHA256 suites; kept until the first packet that verifies says which pair
        /// the console has.
        undecided: Option<Box<(Vec<u8>, Vec<u8>)>>,
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
    /// Records activity the engine handled, so the fast path's idle deadline moves too.
    fn touch(&self, now: Instant);
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
    /// The fast path stops answering once the session has been idle this long.
    pub idle_timeout: Duration,
}

/// Where the driver publishes the IPMI 1.5 sessions the engine offers
/// ([`Bmc::poll_publish`](super::Bmc::poll_publish)): the agent's fast path. None when the
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

    /// The user the session is (or is being) authenticated as, once the handshake named one.
    pub fn user(&self) -> Option<&str> {
        match &self.state {
            // An unknown name's handshake has no user to end with a credential change.
            State::Rakp2Sent(r) if r.known => std::str::from_utf8(&r.name).ok(),
            State::Rakp2Sent(_) => None,
            State::Active(a) => Some(&a.user),
        }
    }

    /// Records activity: here, and in the fast path's slot when the session is published.
    pub fn touch(&mut self, now: Instant) {
        self.last_activity = now;
        if let State::Active(a) = &self.state
            && let Some(shared) = &a.shared
        {
            shared.touch(now);
        }
    }

    /// The later of the engine's and the fast path's last activity.
    pub fn last_seen(&self, now: Instant) -> Instant {
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
pub enum Refusal {
    /// Every session in the table was used within [`RECLAIM_IDLE`].
    TableFull,
    /// The source address already holds its share of the table, all of it recently used.
    SourceShare,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::TableFull => "session table full of recently active sessions",
            Refusal::SourceShare => "source holds half of the session table",
        })
    }
}

/// A session idle at least this long may be reclaimed for a new one; one used more recently
/// is never taken. Clients that vanish without Close Session (a killed ipmitool, libraries
/// that open a session per call) would otherwise hold the table until the idle timeout.
pub const RECLAIM_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// A handshake (RAKP2 sent, RAKP3 awaited) this old may make room for a new entry before any
/// session does: handshakes come from sources that have shown they receive our answers, but
/// nothing else is known of them yet.
pub const HANDSHAKE_RECLAIM_IDLE: std::time::Duration = std::time::Duration::from_millis(250);

/// A bounded table. When it is full, the least recently active session idle for at least
/// [`RECLAIM_IDLE`] makes room; one source address holds at most half of it.
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: Vec<Session>,
    /// A session never reclaimed however idle it looks: the one carrying Serial-over-LAN,
    /// whose console may be silent for long while a person reads.
    pinned: Option<u32>,
}

impl SessionTable {
    pub fn pin(&mut self, id: Option<u32>) {
        self.pinned = id;
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut Session> {
        self.sessions.iter_mut().find(|s| s.id == id)
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

    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.sessions.iter()
    }

    /// The idle limit of a session: the session timeout once active, the handshake timeout
    /// before.
    fn limit(s: &Session, idle: Duration, handshake: Duration) -> Duration {
        if s.is_active() { idle } else { handshake }
    }

    /// Removes the idle active sessions and stale handshakes and returns them.
    pub fn expire(&mut self, now: Instant, idle: Duration, handshake: Duration) -> Vec<Session> {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.sessions.len() {
            let s = &self.sessions[i];
            let limit = Self::limit(s, idle, handshake);
            if now.saturating_duration_since(s.last_seen(now)) >= limit {
                gone.push(self.sessions.swap_remove(i));
            } else {
                i += 1;
            }
        }
        gone
    }

    /// When the next session reaches its idle limit, if any session is open.
    pub fn next_deadline(
        &self,
        now: Instant,
        idle: Duration,
        handshake: Duration,
    ) -> Option<Instant> {
        self.sessions
            .iter()
            .map(|s| s.last_seen(now) + Self::limit(s, idle, handshake))
            .min()
    }

    /// Removes and returns the sessions `revoke` picks (their credentials changed).
    pub fn revoke(&mut self, mut revoke: impl FnMut(&Session) -> bool) -> Vec<Session> {
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.sessions.len() {
            if revoke(&self.sessions[i]) {
                gone.push(self.sessions.swap_remove(i));
            } else {
                i += 1;
            }
        }
        gone
    }

    /// What makes room among the entries `pick` selects: the handshake waiting longest, if
    /// it has waited [`HANDSHAKE_RECLAIM_IDLE`] (a console answers RAKP2 within a round
    /// trip; a handshake left hanging, a peer's or an attacker's, costs its owner only a
    /// retry), else the least recently active session, if it has been idle [`RECLAIM_IDLE`].
    fn reclaimable(&self, now: Instant, pick: impl Fn(&Session) -> bool) -> Option<usize> {
        let oldest = |active: bool, floor: Duration| {
            self.sessions
                .iter()
                .enumerate()
                .filter(|(_, s)| pick(s) && s.is_active() == active && Some(s.id) != self.pinned)
                .map(|(i, s)| (i, s.last_seen(now)))
                .min_by_key(|(_, seen)| *seen)
                .filter(|(_, seen)| now.saturating_duration_since(*seen) >= floor)
                .map(|(i, _)| i)
        };
        oldest(false, HANDSHAKE_RECLAIM_IDLE).or_else(|| oldest(true, RECLAIM_IDLE))
    }

    /// Adds a session, reclaiming an idle one when the table (or the source's half of it) is
    /// full; returns the session that made room, if one did. When nothing is idle enough,
    /// the oldest handshake that `preempt` allows is taken whatever its age (a console that
    /// recently proved a password goes before handshakes of consoles that have not).
    pub fn insert(
        &mut self,
        session: Session,
        capacity: usize,
        now: Instant,
        preempt: impl Fn(&Session) -> bool,
    ) -> Result<Option<Session>, Refusal> {
        let ip = session.peer.ip();
        let share = (capacity / 2).max(1);
        let from_source = self.sessions.iter().filter(|s| s.peer.ip() == ip).count();
        let preemptable = |pick: &dyn Fn(&Session) -> bool| {
            self.sessions
                .iter()
                .enumerate()
                .filter(|(_, s)| pick(s) && !s.is_active() && preempt(s))
                .min_by_key(|(_, s)| s.last_seen(now))
                .map(|(i, _)| i)
        };
        let victim = if from_source >= share {
            let own = |s: &Session| s.peer.ip() == ip;
            Some(
                self.reclaimable(now, own)
                    .or_else(|| preemptable(&own))
                    .ok_or(Refusal::SourceShare)?,
            )
        } else if self.sessions.len() >= capacity {
            Some(
                self.reclaimable(now, |_| true)
                    .or_else(|| preemptable(&|_| true))
                    .ok_or(Refusal::TableFull)?,
            )
        } else {
            None
        };
        let reclaimed = victim.map(|i| self.sessions.swap_remove(i));
        self.sessions.push(session);
        Ok(reclaimed)
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
            State::Rakp2Sent(Box::new(Rakp2Sent {
                console_id: 1,
                suite: crate::engine::config::SUITES[3],
                name: b"u".to_vec(),
                known: true,
                role: 0x14,
                open_privilege: 0,
                rm: [0; 16],
                rc: [0; 16],
                sik: Vec::new(),
                guid: [0; 16],
            }))
        };
        Session {
            id,
            peer: "127.0.0.1:1".parse().unwrap(),
            state,
            last_activity: t,
        }
    }

    fn from(mut s: Session, peer: &str) -> Session {
        s.peer = peer.parse().unwrap();
        s
    }

    #[test]
    fn full_table_reclaims_the_least_recently_active_idle_session() {
        let t = Instant::now();
        let cap = 4;
        let mut table = SessionTable::default();
        for (id, age) in [(1, 5), (2, 9), (3, 3), (4, 2)] {
            let s = from(
                session(id, true, t - Duration::from_secs(age)),
                &format!("10.0.0.{id}:1"),
            );
            assert_eq!(
                table.insert(s, cap, t, |_| false).map(|r| r.map(|s| s.id)),
                Ok(None)
            );
        }
        let got = table.insert(from(session(5, true, t), "10.0.0.5:1"), cap, t, |_| false);
        assert_eq!(got.map(|r| r.map(|s| s.id)), Ok(Some(2)), "the idlest goes");
        assert!(table.contains(5) && !table.contains(2));
    }

    #[test]
    fn a_session_used_within_a_second_is_never_taken() {
        let t = Instant::now();
        let mut table = SessionTable::default();
        let recent = t - Duration::from_millis(900);
        table
            .insert(from(session(1, true, recent), "10.0.0.1:1"), 2, t, |_| {
                false
            })
            .unwrap();
        let handshake = t - Duration::from_millis(100);
        table
            .insert(
                from(session(2, false, handshake), "10.0.0.2:1"),
                2,
                t,
                |_| false,
            )
            .unwrap();
        let s = from(session(3, true, t), "10.0.0.3:1");
        assert_eq!(
            table.insert(s, 2, t, |_| false).map(|_| ()),
            Err(Refusal::TableFull)
        );
        let later = t + Duration::from_millis(200);
        let s = from(session(3, true, later), "10.0.0.3:1");
        let taken = table.insert(s, 2, later, |_| false).unwrap().unwrap();
        assert_eq!(taken.id, 2, "the handshake left hanging goes first");
        assert!(table.contains(1));
    }

    #[test]
    fn a_hanging_handshake_makes_room_before_an_idle_session() {
        let t = Instant::now();
        let mut table = SessionTable::default();
        let idle = t - Duration::from_secs(5);
        table
            .insert(from(session(1, true, idle), "10.0.0.1:1"), 2, t, |_| false)
            .unwrap();
        let fresh = t - Duration::from_millis(100);
        table
            .insert(from(session(2, false, fresh), "10.0.0.2:1"), 2, t, |_| {
                false
            })
            .unwrap();
        // The handshake is too fresh to take: the idle session goes.
        let got = table.insert(from(session(3, false, t), "10.0.0.3:1"), 2, t, |_| false);
        assert_eq!(got.map(|r| r.map(|s| s.id)), Ok(Some(1)));
        // A handshake left hanging a quarter second goes before a session idle for longer.
        let mut table = SessionTable::default();
        table
            .insert(from(session(5, true, idle), "10.0.0.5:1"), 2, t, |_| false)
            .unwrap();
        let hanging = t - Duration::from_millis(300);
        table
            .insert(from(session(6, false, hanging), "10.0.0.6:1"), 2, t, |_| {
                false
            })
            .unwrap();
        let got = table.insert(from(session(7, true, t), "10.0.0.7:1"), 2, t, |_| false);
        assert_eq!(got.map(|r| r.map(|s| s.id)), Ok(Some(6)));
        assert!(table.contains(5));
    }

    #[test]
    fn a_trusted_console_takes_the_place_of_a_fresh_untrusted_handshake() {
        let t = Instant::now();
        let mut table = SessionTable::default();
        let live = t - Duration::from_millis(10);
        table
            .insert(from(session(1, true, live), "10.0.0.1:1"), 2, t, |_| false)
            .unwrap();
        table
            .insert(from(session(2, false, live), "10.0.0.2:1"), 2, t, |_| false)
            .unwrap();
        let untrusted =
            |s: &Session| s.peer.ip() != "10.0.0.9".parse::<std::net::IpAddr>().unwrap();
        let newcomer = || from(session(3, false, t), "10.0.0.3:1");
        assert_eq!(
            table.insert(newcomer(), 2, t, |_| false).map(|_| ()),
            Err(Refusal::TableFull),
            "nothing idle, nothing preemptable"
        );
        let got = table.insert(newcomer(), 2, t, untrusted);
        assert_eq!(
            got.map(|r| r.map(|s| s.id)),
            Ok(Some(2)),
            "the fresh handshake goes"
        );
        assert!(table.contains(1), "an active session is never preempted");
        let got = table.insert(from(session(4, false, t), "10.0.0.4:1"), 2, t, |_| true);
        assert_eq!(got.map(|r| r.map(|s| s.id)), Ok(Some(3)));
        let last = table.insert(from(session(5, false, t), "10.0.0.5:1"), 2, t, |s| {
            s.id != 4
        });
        assert_eq!(last.map(|_| ()), Err(Refusal::TableFull));
    }

    #[test]
    fn one_source_holds_at_most_half_the_table() {
        let t = Instant::now();
        let mut table = SessionTable::default();
        for id in 1..=4 {
            let s = from(session(id, true, t), &format!("10.0.0.9:{id}"));
            table.insert(s, 8, t, |_| false).unwrap();
        }
        let fifth = from(session(5, true, t), "10.0.0.9:5");
        assert_eq!(
            table.insert(fifth, 8, t, |_| false).map(|_| ()),
            Err(Refusal::SourceShare)
        );
        // Another source still gets in, and the busy source reclaims only its own sessions.
        table
            .insert(from(session(6, true, t), "10.0.0.8:1"), 8, t, |_| false)
            .unwrap();
        let later = t + Duration::from_secs(2);
        let fifth = from(session(5, true, later), "10.0.0.9:5");
        let taken = table.insert(fifth, 8, later, |_| false).unwrap().unwrap();
        assert_eq!(
            taken.peer.ip(),
            "10.0.0.9".parse::<std::net::IpAddr>().unwrap()
        );
        assert!(table.contains(6));
    }

    #[test]
    fn expiry_returns_what_went_and_the_next_deadline() {
        let t = Instant::now();
        let (idle, hs) = (Duration::from_secs(60), Duration::from_secs(10));
        let mut table = SessionTable::default();
        table
            .insert(from(session(1, true, t), "10.0.0.1:1"), 8, t, |_| false)
            .unwrap();
        table
            .insert(from(session(2, false, t), "10.0.0.2:1"), 8, t, |_| false)
            .unwrap();
        assert_eq!(table.next_deadline(t, idle, hs), Some(t + hs));
        let gone = table.expire(t + hs, idle, hs);
        assert_eq!(gone.iter().map(|s| s.id).collect::<Vec<_>>(), [2]);
        assert_eq!(table.next_deadline(t, idle, hs), Some(t + idle));
        assert!(
            table
                .expire(t + idle - Duration::from_millis(1), idle, hs)
                .is_empty()
        );
        assert_eq!(table.expire(t + idle, idle, hs).len(), 1);
        assert_eq!(table.next_deadline(t, idle, hs), None);
    }
}
