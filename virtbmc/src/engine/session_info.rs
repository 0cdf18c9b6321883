//! Get Session Info (IPMI 2.0 §22.20): which sessions are active, by index, handle or id,
//! with the user, privilege and console address of each.
//!
//! Sessions are named to clients by a one-byte handle. Handles are handed out here, lowest
//! free first, the first time a session is listed, and kept for the session's life, so that
//! a handle read in one session still names the same session in the next.

use std::net::{IpAddr, Ipv4Addr};

use super::Bmc;
use super::cc;
use super::commands::LAN_CHANNEL;
use super::config::BmcConfig;
use super::session::{ActiveAuth, SessionTable, State};
use super::users;

/// Counts are six bits wide in the answer.
const COUNT_MAX: usize = 0x3F;

/// Which session a request names (§22.20 request byte 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Selector {
    /// 00h: the session the request came in.
    Current,
    /// 01h-FDh: the n-th active session.
    Index(u8),
    /// FEh: by handle.
    Handle(u8),
    /// FFh: by session id.
    Id(u32),
}

impl Selector {
    fn parse(d: &[u8]) -> Result<Selector, u8> {
        match d {
            [0x00] => Ok(Selector::Current),
            [0xFE, h] => Ok(Selector::Handle(*h)),
            [0xFF, a, b, c, e] => Ok(Selector::Id(u32::from_le_bytes([*a, *b, *c, *e]))),
            [n] if *n < 0xFE => Ok(Selector::Index(*n)),
            _ => Err(cc::REQUEST_LENGTH_INVALID),
        }
    }
}

/// Session handles, by session id.
#[derive(Debug, Default)]
pub struct Handles {
    assigned: Vec<(u32, u8)>,
}

impl Handles {
    /// Forgets the sessions gone and gives each of `active` a handle if it has none (past 254
    /// sessions there are no handles left; those sessions answer with handle 0).
    fn sync(&mut self, active: &[u32]) {
        self.assigned.retain(|(id, _)| active.contains(id));
        for id in active {
            if self.assigned.iter().any(|(i, _)| i == id) {
                continue;
            }
            if let Some(h) = (1..=0xFE).find(|h| self.assigned.iter().all(|(_, x)| x != h)) {
                self.assigned.push((*id, h));
            }
        }
        self.assigned.sort_by_key(|(_, h)| *h);
    }

    fn handle_of(&self, id: u32) -> u8 {
        self.assigned
            .iter()
            .find(|(i, _)| *i == id)
            .map_or(0, |(_, h)| *h)
    }
}

impl Bmc {
    /// Get Session Info, asked in session `current`.
    pub(super) fn session_info(&mut self, current: u32, d: &[u8]) -> (u8, Vec<u8>) {
        let selector = match Selector::parse(d) {
            Ok(s) => s,
            Err(code) => return (code, Vec::new()),
        };
        let active: Vec<u32> = self
            .sessions
            .iter()
            .filter(|s| s.is_active())
            .map(|s| s.id)
            .collect();
        self.session_handles.sync(&active);
        let handles = &self.session_handles;
        let target = match selector {
            Selector::Current => Some(current),
            Selector::Id(id) => active.contains(&id).then_some(id),
            Selector::Handle(h) => handles
                .assigned
                .iter()
                .find(|(_, x)| *x == h && h != 0)
                .map(|(id, _)| *id),
            // Active sessions in handle order, so that a listing is stable.
            Selector::Index(n) => handles.assigned.get(n as usize - 1).map(|(id, _)| *id),
        };
        let slots = self.config.max_sessions.min(COUNT_MAX) as u8;
        let count = active.len().min(COUNT_MAX) as u8;
        let data = match target {
            Some(id) => describe(
                &self.sessions,
                &self.config,
                id,
                handles.handle_of(id),
                [slots, count],
            ),
            None => None,
        };
        // No such session: handle 0 and the counts only (§22.20).
        (cc::OK, data.unwrap_or_else(|| vec![0, slots, count]))
    }
}

/// The 18 bytes describing one active session on an 802.3 LAN channel: handle, counts, user
/// id, privilege, channel with the protocol (0h IPMI 1.5, 1h RMCP+) in the high nibble, then
/// the console's IPv4 address, MAC address (unknown here: zero) and UDP port (LS byte first).
fn describe(
    table: &SessionTable,
    config: &BmcConfig,
    id: u32,
    handle: u8,
    counts: [u8; 2],
) -> Option<Vec<u8>> {
    let s = table.iter().find(|s| s.id == id)?;
    let State::Active(a) = &s.state else {
        return None;
    };
    let protocol = match a.auth {
        ActiveAuth::V15 { .. } => 0x00,
        ActiveAuth::V20 { .. } => 0x10,
    };
    let ip = match s.peer.ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    let mut out = vec![
        handle,
        counts[0],
        counts[1],
        users::user_id(config, &a.user),
        a.privilege.wire(),
        protocol | LAN_CHANNEL,
    ];
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&s.peer.port().to_le_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(Selector::parse(&[0]), Ok(Selector::Current));
        assert_eq!(Selector::parse(&[3]), Ok(Selector::Index(3)));
        assert_eq!(Selector::parse(&[0xFE, 2]), Ok(Selector::Handle(2)));
        assert_eq!(
            Selector::parse(&[0xFF, 0x78, 0x56, 0x34, 0x12]),
            Ok(Selector::Id(0x1234_5678))
        );
        for bad in [&[][..], &[0xFE], &[0xFF, 1, 2, 3], &[0, 0], &[1, 2]] {
            assert_eq!(Selector::parse(bad), Err(cc::REQUEST_LENGTH_INVALID));
        }
    }

    #[test]
    fn handles_are_kept_for_a_session_life_and_reused_after() {
        let mut h = Handles::default();
        h.sync(&[10, 20]);
        assert_eq!((h.handle_of(10), h.handle_of(20)), (1, 2));
        h.sync(&[20, 30]);
        assert_eq!((h.handle_of(20), h.handle_of(30)), (2, 1));
        assert_eq!(h.handle_of(10), 0);
        h.sync(&[20, 30, 40]);
        assert_eq!(h.handle_of(40), 3);
        assert_eq!(
            h.assigned.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [30, 20, 40],
            "listed in handle order"
        );
    }
}
