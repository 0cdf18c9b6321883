//! Handshake cookies: the BMC keeps no session state until the console has shown that it
//! receives what is sent to its address, as TCP's SYN cookies do.
//!
//! Open Session (IPMI 2.0 §13.17) and Get Session Challenge (§22.16) are answered from a
//! MAC under the per-process [`Secret`] over everything the next message needs: the
//! console's address and port, a time slice, and the choices made. The next message (RAKP1,
//! §13.20; Activate Session, §22.17) echoes the value, so the MAC proves that its sender got
//! our answer at the same address within the last two slices.
//!
//! - RMCP+: the 32-bit managed system session id is the cookie. It carries the chosen suite,
//!   the requested privilege, a variant (so that a console opening a second session with the
//!   same identity gets another id) and the slice's parity in clear bits, and 23 bits of MAC.
//!   RAKP1 echoes the id but not the console's own session id, and RAKP2 must carry that id
//!   and hash it: 32 bits that cannot also fit in 32 bits beside a MAC. So the console id
//!   alone waits in a bounded first-in first-out list beside the cookie, outside the session
//!   table: a flood of Open Sessions can neither fill the table nor touch a session in it,
//!   and a real console's entry is only pushed out after [`CONSOLE_IDS`] newer ones.
//! - IPMI 1.5: the temporary session id (30 bits of MAC, a fixed bit, the slice's parity)
//!   and the 16-byte challenge (8 bytes naming the user under the secret, a 4-byte random
//!   nonce so that no two challenges are alike, 4 more bytes of MAC) carry it all; Activate
//!   Session echoes both, and nothing is remembered.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::secret::Secret;
use crate::crypto::ct_eq;
use crate::wire::challenge::{ChallengeRequest, ChallengeResponse};
use crate::wire::le_u32;

/// A cookie is good until the end of the slice after the one it was made in: 5 to 10 s,
/// plenty for a console's next message and its retransmissions.
pub const SLICE: Duration = Duration::from_secs(5);
/// Console session ids waiting for their RAKP1, at most.
pub const CONSOLE_IDS: usize = 4096;
/// Managed session ids one console identity can have at once within a slice.
pub const VARIANTS: u8 = 4;

/// What an RMCP+ cookie says about the Open Session it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub console_id: u32,
    /// Index into [`super::config::SUITES`].
    pub suite_index: u8,
    /// The privilege the Open Session Request asked for (0 = the highest allowed).
    pub privilege: u8,
}

#[derive(Debug, Default)]
pub struct Cookies {
    /// The first instant this BMC saw: slices count from it (the engine reads no clock).
    epoch: Option<Instant>,
    /// (managed id, console id, slice), oldest first.
    console_ids: VecDeque<(u32, u32, u64)>,
}

fn peer_bytes(peer: SocketAddr) -> [u8; 18] {
    let ip = match peer.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let mut b = [0u8; 18];
    b[..16].copy_from_slice(&ip.octets());
    b[16..].copy_from_slice(&peer.port().to_be_bytes());
    b
}

const ID_PARITY: u32 = 1;
const ID_VARIANT_SHIFT: u32 = 1;
const ID_SUITE_SHIFT: u32 = 3;
const ID_PRIV_SHIFT: u32 = 6;
const ID_MAC_MASK: u32 = !0 << 9;

impl Cookies {
    fn slice(&mut self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_insert(now);
        now.saturating_duration_since(epoch).as_secs() / SLICE.as_secs()
    }

    /// The slice a cookie of `parity` was made in, if it is the current or the previous one;
    /// an older cookie maps onto a slice it was not made in and fails its MAC.
    fn minted(&mut self, now: Instant, parity: u32) -> Option<u64> {
        let current = self.slice(now);
        if current & 1 == u64::from(parity) {
            Some(current)
        } else {
            current.checked_sub(1)
        }
    }

    fn open_mac(secret: &Secret, peer: SocketAddr, o: &Opened, variant: u8, slice: u64) -> u32 {
        let m = secret.mac(
            b"rmcp+ open session",
            &[
                &peer_bytes(peer),
                &o.console_id.to_le_bytes(),
                &[o.suite_index, o.privilege, variant],
                &slice.to_le_bytes(),
            ],
        );
        le_u32(&m) & ID_MAC_MASK
    }

    /// The managed system session id answering an Open Session from `peer`. Call
    /// [`Cookies::remember`] with it once it is chosen.
    pub fn open(
        &mut self,
        secret: &Secret,
        now: Instant,
        peer: SocketAddr,
        o: &Opened,
        variant: u8,
    ) -> u32 {
        let slice = self.slice(now);
        Self::open_mac(secret, peer, o, variant, slice)
            | u32::from(o.privilege & 7) << ID_PRIV_SHIFT
            | u32::from(o.suite_index & 7) << ID_SUITE_SHIFT
            | u32::from(variant & 3) << ID_VARIANT_SHIFT
            | (slice & 1) as u32
    }

    /// Keeps the console id an Open Session answered with `id` named, for its RAKP1.
    pub fn remember(&mut self, now: Instant, id: u32, console_id: u32) {
        let slice = self.slice(now);
        self.expire(slice);
        if self.console_ids.len() >= CONSOLE_IDS {
            self.console_ids.pop_front();
        }
        self.console_ids.push_back((id, console_id, slice));
    }

    fn expire(&mut self, slice: u64) {
        while self
            .console_ids
            .front()
            .is_some_and(|(_, _, s)| s + 2 <= slice)
        {
            self.console_ids.pop_front();
        }
        if self.console_ids.is_empty() && self.console_ids.capacity() > 16 {
            // After a flood, give the memory back.
            self.console_ids = VecDeque::new();
        }
    }

    /// Checks the managed session id a RAKP1 from `peer` names: what its Open Session chose,
    /// or None when `peer` never got that id, or got it more than two slices ago.
    pub fn check_open(
        &mut self,
        secret: &Secret,
        now: Instant,
        peer: SocketAddr,
        id: u32,
    ) -> Option<Opened> {
        let slice = self.minted(now, id & ID_PARITY)?;
        let current = self.slice(now);
        self.expire(current);
        let console_id = self
            .console_ids
            .iter()
            .rev()
            .find(|(i, _, _)| *i == id)
            .map(|(_, c, _)| *c)?;
        let o = Opened {
            console_id,
            suite_index: (id >> ID_SUITE_SHIFT & 7) as u8,
            privilege: (id >> ID_PRIV_SHIFT & 7) as u8,
        };
        let variant = (id >> ID_VARIANT_SHIFT & 3) as u8;
        let want = Self::open_mac(secret, peer, &o, variant, slice);
        ct_eq(&want.to_le_bytes(), &(id & ID_MAC_MASK).to_le_bytes()).then_some(o)
    }

    /// Forgets the console id of `id` once its handshake is in the session table.
    pub fn forget(&mut self, id: u32) {
        self.console_ids.retain(|(i, _, _)| *i != id);
    }

    /// The temporary id and the challenge's last 4 bytes.
    fn challenge_mac(
        secret: &Secret,
        peer: SocketAddr,
        auth_type: u8,
        name: &[u8; 16],
        nonce: &[u8],
        slice: u64,
    ) -> [u8; 8] {
        let m = secret.mac(
            b"ipmi 1.5 challenge",
            &[
                &peer_bytes(peer),
                &[auth_type],
                name,
                nonce,
                &slice.to_le_bytes(),
            ],
        );
        let mut out = [0u8; 8];
        out[..4].copy_from_slice(&((le_u32(&m) & !3) | 2 | (slice & 1) as u32).to_le_bytes());
        out[4..].copy_from_slice(&m[4..8]);
        out
    }

    /// Eight bytes that name a user to this BMC alone.
    pub fn name_tag(secret: &Secret, name: &[u8; 16]) -> [u8; 8] {
        let mut t = [0u8; 8];
        t.copy_from_slice(&secret.mac(b"ipmi 1.5 user", &[name])[..8]);
        t
    }

    /// The temporary session id and challenge answering `req` (its name NUL-padded) from
    /// `peer`, with a random `nonce`.
    pub fn challenge(
        &mut self,
        secret: &Secret,
        now: Instant,
        peer: SocketAddr,
        req: &ChallengeRequest,
        nonce: [u8; 4],
    ) -> ChallengeResponse {
        let slice = self.slice(now);
        let m = Self::challenge_mac(secret, peer, req.auth_type, &req.name, &nonce, slice);
        let mut challenge = [0u8; 16];
        challenge[..8].copy_from_slice(&Self::name_tag(secret, &req.name));
        challenge[8..12].copy_from_slice(&nonce);
        challenge[12..].copy_from_slice(&m[4..]);
        ChallengeResponse {
            temp_id: le_u32(&m),
            challenge,
        }
    }

    /// Whether an Activate Session from `peer` echoes the temporary id and challenge of
    /// `echoed`, as a Get Session Challenge `req` from the same `peer` was answered in the
    /// last two slices.
    pub fn check_challenge(
        &mut self,
        secret: &Secret,
        now: Instant,
        peer: SocketAddr,
        req: &ChallengeRequest,
        echoed: &ChallengeResponse,
    ) -> bool {
        let Some(slice) = self.minted(now, echoed.temp_id & 1) else {
            return false;
        };
        let ch = &echoed.challenge;
        let want = Self::challenge_mac(secret, peer, req.auth_type, &req.name, &ch[8..12], slice);
        let mut got = [0u8; 8];
        got[..4].copy_from_slice(&echoed.temp_id.to_le_bytes());
        got[4..].copy_from_slice(&ch[12..]);
        ct_eq(&want, &got) && ct_eq(&Self::name_tag(secret, &req.name), &ch[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::entropy::TestEntropy;

    fn setup() -> (Secret, Cookies, Instant) {
        (
            Secret::draw(&mut TestEntropy(5)),
            Cookies::default(),
            Instant::now(),
        )
    }

    const A: &str = "10.0.0.2:40000";

    #[test]
    fn open_cookie_checks_source_age_and_bits() {
        let (s, mut c, t) = setup();
        let peer = A.parse().unwrap();
        let o = Opened {
            console_id: 0xa0a2a3a4,
            suite_index: 6,
            privilege: 4,
        };
        let id = c.open(&s, t, peer, &o, 1);
        c.remember(t, id, o.console_id);
        assert_eq!(c.check_open(&s, t, peer, id), Some(o));
        assert_eq!(
            c.check_open(&s, t + SLICE * 2 - Duration::from_millis(1), peer, id),
            Some(o)
        );
        assert_eq!(
            c.check_open(&s, t, "10.0.0.2:40001".parse().unwrap(), id),
            None
        );
        assert_eq!(
            c.check_open(&s, t, "10.0.0.3:40000".parse().unwrap(), id),
            None
        );
        for bit in 0..32 {
            // Every bit is either carried and bound by the MAC, or part of it.
            c.remember(t, id ^ 1 << bit, o.console_id);
            assert_eq!(c.check_open(&s, t, peer, id ^ 1 << bit), None, "bit {bit}");
        }
        assert_ne!(
            c.open(&s, t, peer, &o, 2),
            id,
            "another variant, another id"
        );
        assert_eq!(c.check_open(&s, t + SLICE * 2, peer, id), None, "too old");
    }

    #[test]
    fn console_ids_are_bounded_and_first_in_first_out() {
        let (s, mut c, t) = setup();
        let peer = A.parse().unwrap();
        let o = Opened {
            console_id: 7,
            suite_index: 3,
            privilege: 0,
        };
        let id = c.open(&s, t, peer, &o, 0);
        c.remember(t, id, 7);
        for i in 0..CONSOLE_IDS as u32 - 1 {
            c.remember(t, i, i);
        }
        assert_eq!(c.check_open(&s, t, peer, id), Some(o));
        c.remember(t, 1 << 31, 1);
        assert_eq!(c.check_open(&s, t, peer, id), None);
        assert_eq!(c.console_ids.len(), CONSOLE_IDS);
        c.remember(t + SLICE * 3, 5, 5);
        assert_eq!(c.console_ids.len(), 1, "old entries expire");
    }

    #[test]
    fn challenge_checks_source_name_auth_type_and_age() {
        let (s, mut c, t) = setup();
        let peer = A.parse().unwrap();
        let mut name = [0u8; 16];
        name[..5].copy_from_slice(b"admin");
        let req = ChallengeRequest { auth_type: 2, name };
        let ch = c.challenge(&s, t, peer, &req, [1, 2, 3, 4]);
        assert_ne!(ch.temp_id, 0);
        let ch2 = c.challenge(&s, t, peer, &req, [1, 2, 3, 5]);
        assert!(ch2.temp_id != ch.temp_id && ch2.challenge[..8] == ch.challenge[..8]);
        assert!(c.check_challenge(&s, t + SLICE, peer, &req, &ch));
        let md5_only = ChallengeRequest { auth_type: 4, name };
        assert!(!c.check_challenge(&s, t, peer, &md5_only, &ch));
        let elsewhere = "10.0.0.9:40000".parse().unwrap();
        assert!(!c.check_challenge(&s, t, elsewhere, &req, &ch));
        let mut other = req;
        other.name[0] = b'b';
        assert!(!c.check_challenge(&s, t, peer, &other, &ch));
        for i in 0..16 {
            let mut bad = ch;
            bad.challenge[i] ^= 1;
            assert!(!c.check_challenge(&s, t, peer, &req, &bad), "byte {i}");
        }
        for bit in 0..32 {
            let mut bad = ch;
            bad.temp_id ^= 1 << bit;
            assert!(!c.check_challenge(&s, t, peer, &req, &bad), "bit {bit}");
        }
        assert!(!c.check_challenge(&s, t + SLICE * 2, peer, &req, &ch));
    }
}
