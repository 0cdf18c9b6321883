//! Who is asking: HTTP Basic credentials or a session token (Redfish DSP0266 §13.3), checked
//! against the same users, passwords and privileges as the BMC's IPMI side. Passwords are
//! compared in constant time, and an unknown user name costs the same comparison as a known
//! one, so that neither the answer nor its timing tells which names exist.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::crypto::Key20;
use crate::engine::config::{BmcConfig, Privilege};

/// Sessions kept per BMC; a new login past it ends the one idle longest.
pub const MAX_SESSIONS: usize = 32;
/// Idle seconds before a session ends (the Redfish SessionService.SessionTimeout).
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(600);

/// The Redfish role of an IPMI privilege (DSP0266 §13.4 predefined roles). Callback users
/// may do nothing over IPMI but ask for channel authentication: no Redfish role.
pub fn role(p: Privilege) -> Option<&'static str> {
    match p {
        Privilege::Admin => Some("Administrator"),
        Privilege::Operator => Some("Operator"),
        Privilege::User => Some("ReadOnly"),
        Privilege::Callback => None,
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: String,
    pub privilege: Privilege,
    /// The session it came with, if any.
    pub session: Option<String>,
}

/// Checks `name` and `password` against `config`. The comparison always runs over a key,
/// the user's or a fixed stand-in, and over the whole key.
pub fn check_password(config: &BmcConfig, name: &str, password: &str) -> Option<Privilege> {
    let user = config.user(name.as_bytes());
    let stand_in = Key20([0xA5; 20]);
    let expected = user.map_or(&stand_in, |u| &u.key);
    let given = Key20::from_password(password);
    let given_ok = given.is_some() as u8;
    let given = given.unwrap_or(Key20([0x5A; 20]));
    let same = expected.0.ct_eq(&given.0).unwrap_u8() & given_ok & user.is_some() as u8;
    if same == 1 {
        user.map(|u| u.max_privilege)
    } else {
        None
    }
}

/// Decodes an `Authorization: Basic` value into name and password.
pub fn basic(value: &str) -> Option<(String, String)> {
    let b64 = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let raw = base64_decode(b64.trim())?;
    let s = String::from_utf8(raw).ok()?;
    let (n, p) = s.split_once(':')?;
    Some((n.to_string(), p.to_string()))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 || s.len() > 1024 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

#[derive(Debug, Clone)]
struct Session {
    id: String,
    user: String,
    /// The user's key and privilege at login: a session whose user's Secret changed since
    /// (password, privilege, or the user gone) ends at its next use.
    key: Key20,
    privilege: Privilege,
    last_used: Instant,
}

/// One BMC's Redfish sessions, keyed by the SHA-256 of their token (the token itself is
/// never kept, so a lookup by hash leaks nothing about other tokens through timing).
#[derive(Debug, Default)]
pub struct Sessions {
    by_token: HashMap<[u8; 32], Session>,
}

fn token_hash(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::getrandom(&mut b).expect("OS random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a login made: the session's id and its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub id: String,
    pub token: String,
}

impl Sessions {
    fn expire(&mut self, now: Instant) {
        self.by_token
            .retain(|_, s| now.duration_since(s.last_used) < SESSION_TIMEOUT);
    }

    /// Opens a session for a user whose password was just checked.
    pub fn open(&mut self, config: &BmcConfig, user: &str, now: Instant) -> Option<Login> {
        let u = config.user(user.as_bytes())?;
        self.expire(now);
        if self.by_token.len() >= MAX_SESSIONS {
            let oldest = self
                .by_token
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.by_token.remove(&k);
            }
        }
        let login = Login {
            id: random_hex(8),
            token: random_hex(32),
        };
        self.by_token.insert(
            token_hash(&login.token),
            Session {
                id: login.id.clone(),
                user: u.name.clone(),
                key: u.key.clone(),
                privilege: u.max_privilege,
                last_used: now,
            },
        );
        Some(login)
    }

    /// The caller behind `token`, if its session is live and its user unchanged.
    pub fn caller(&mut self, config: &BmcConfig, token: &str, now: Instant) -> Option<Caller> {
        self.expire(now);
        let h = token_hash(token);
        let s = self.by_token.get_mut(&h)?;
        let current = config.user(s.user.as_bytes());
        let unchanged = current.is_some_and(|u| {
            u.key.0.ct_eq(&s.key.0).unwrap_u8() == 1 && u.max_privilege == s.privilege
        });
        if !unchanged {
            log::info!(
                "redfish: session {} of user {} ended: its credentials changed",
                s.id,
                s.user
            );
            self.by_token.remove(&h);
            return None;
        }
        s.last_used = now;
        Some(Caller {
            user: s.user.clone(),
            privilege: s.privilege,
            session: Some(s.id.clone()),
        })
    }

    /// Ends sessions whose user's credentials changed (called when the configuration does).
    pub fn revoke_changed(&mut self, config: &BmcConfig) {
        self.by_token.retain(|_, s| {
            config.user(s.user.as_bytes()).is_some_and(|u| {
                u.key.0.ct_eq(&s.key.0).unwrap_u8() == 1 && u.max_privilege == s.privilege
            })
        });
    }

    /// (id, user) of every live session, sorted by id.
    pub fn list(&mut self, now: Instant) -> Vec<(String, String)> {
        self.expire(now);
        let mut v: Vec<_> = self
            .by_token
            .values()
            .map(|s| (s.id.clone(), s.user.clone()))
            .collect();
        v.sort();
        v
    }

    /// Ends session `id`; false if there is none.
    pub fn close(&mut self, id: &str) -> bool {
        let before = self.by_token.len();
        self.by_token.retain(|_, s| s.id != id);
        self.by_token.len() != before
    }

    pub fn len(&self) -> usize {
        self.by_token.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::User;

    fn config(password: &str) -> BmcConfig {
        BmcConfig::new(vec![
            User::new("admin", password, Privilege::Admin).unwrap(),
            User::new("cb", "x", Privilege::Callback).unwrap(),
        ])
    }

    #[test]
    fn passwords_are_checked_and_unknown_names_fail_alike() {
        let c = config("secret");
        assert_eq!(
            check_password(&c, "admin", "secret"),
            Some(Privilege::Admin)
        );
        assert_eq!(check_password(&c, "admin", "secreT"), None);
        assert_eq!(check_password(&c, "admin", ""), None);
        assert_eq!(check_password(&c, "nobody", "secret"), None);
        assert_eq!(check_password(&c, "admin", &"x".repeat(21)), None);
        assert_eq!(role(Privilege::Callback), None);
    }

    #[test]
    fn basic_header_decodes() {
        assert_eq!(
            basic("Basic YWRtaW46c2VjcmV0"),
            Some(("admin".into(), "secret".into()))
        );
        assert_eq!(basic("Basic YWRtaW46"), Some(("admin".into(), "".into())));
        assert_eq!(basic("Basic !!!"), None);
        assert_eq!(basic("Bearer x"), None);
        assert_eq!(basic("Basic Y"), None);
    }

    #[test]
    fn sessions_expire_are_bounded_and_end_when_the_secret_changes() {
        let c = config("secret");
        let mut s = Sessions::default();
        let t0 = Instant::now();
        let a = s.open(&c, "admin", t0).unwrap();
        assert_eq!(s.caller(&c, &a.token, t0).unwrap().user, "admin");
        assert_eq!(s.caller(&c, "wrong", t0), None);
        // Used just before the limit: still live, and the idle clock restarts.
        let t1 = t0 + SESSION_TIMEOUT - Duration::from_secs(1);
        assert!(s.caller(&c, &a.token, t1).is_some());
        assert!(s.caller(&c, &a.token, t1 + SESSION_TIMEOUT).is_none());
        // Bounded: the oldest goes.
        let first = s.open(&c, "admin", t0).unwrap();
        for i in 0..MAX_SESSIONS {
            s.open(&c, "admin", t0 + Duration::from_millis(i as u64 + 1))
                .unwrap();
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(
            s.caller(&c, &first.token, t0 + Duration::from_secs(1))
                .is_none()
        );
        // A new password ends the sessions opened with the old one.
        let b = s.open(&c, "admin", t0).unwrap();
        let changed = config("other");
        assert!(s.caller(&changed, &b.token, t0).is_none());
        assert!(s.caller(&c, &b.token, t0).is_none(), "gone for good");
        assert!(!s.is_empty());
        s.revoke_changed(&changed);
        assert!(s.is_empty());
    }
}
