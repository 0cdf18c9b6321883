//! What a BMC is configured with: its users, the auth types and cipher suites it offers, and
//! the bounds of its session table.

use std::time::Duration;

use crate::crypto::{AuthAlg, ConfAlg, IntegAlg, Key20};

/// IPMI privilege levels (IPMI 2.0 §6.8); OEM (5) is never granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Privilege {
    Callback = 1,
    User = 2,
    Operator = 3,
    Admin = 4,
}

impl Privilege {
    pub fn from_wire(v: u8) -> Option<Privilege> {
        match v & 0x0F {
            1 => Some(Privilege::Callback),
            2 => Some(Privilege::User),
            3 => Some(Privilege::Operator),
            4 => Some(Privilege::Admin),
            _ => None,
        }
    }

    pub fn wire(self) -> u8 {
        self as u8
    }
}

impl std::str::FromStr for Privilege {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "callback" => Ok(Privilege::Callback),
            "user" => Ok(Privilege::User),
            "operator" => Ok(Privilege::Operator),
            "admin" | "administrator" => Ok(Privilege::Admin),
            other => Err(format!(
                "unknown privilege {other:?} (user, operator or admin)"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub key: Key20,
    pub max_privilege: Privilege,
}

impl User {
    /// Names are at most 16 bytes on the wire (IPMI 2.0 §13.20, §22.16).
    pub fn new(name: &str, password: &str, max_privilege: Privilege) -> Result<User, String> {
        if name.is_empty() || name.len() > 16 {
            return Err(format!("user name {name:?} must be 1 to 16 bytes"));
        }
        let key = Key20::from_password(password)
            .ok_or_else(|| format!("password of {name:?} is longer than 20 bytes"))?;
        Ok(User {
            name: name.to_string(),
            key,
            max_privilege,
        })
    }
}

/// A cipher suite (IPMI 2.0 §22.15.2, table 22-20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CipherSuite {
    pub id: u8,
    pub auth: AuthAlg,
    pub integ: IntegAlg,
    pub conf: ConfAlg,
}

/// The suites this BMC can run. 0 (no authentication at all) is listed so that an operator
/// who really wants it can name it; it is never in the default set.
pub const SUITES: [CipherSuite; 7] = [
    CipherSuite {
        id: 0,
        auth: AuthAlg::None,
        integ: IntegAlg::None,
        conf: ConfAlg::None,
    },
    CipherSuite {
        id: 1,
        auth: AuthAlg::HmacSha1,
        integ: IntegAlg::None,
        conf: ConfAlg::None,
    },
    CipherSuite {
        id: 2,
        auth: AuthAlg::HmacSha1,
        integ: IntegAlg::HmacSha1_96,
        conf: ConfAlg::None,
    },
    CipherSuite {
        id: 3,
        auth: AuthAlg::HmacSha1,
        integ: IntegAlg::HmacSha1_96,
        conf: ConfAlg::AesCbc128,
    },
    CipherSuite {
        id: 15,
        auth: AuthAlg::HmacSha256,
        integ: IntegAlg::None,
        conf: ConfAlg::None,
    },
    CipherSuite {
        id: 16,
        auth: AuthAlg::HmacSha256,
        integ: IntegAlg::HmacSha256_128,
        conf: ConfAlg::None,
    },
    CipherSuite {
        id: 17,
        auth: AuthAlg::HmacSha256,
        integ: IntegAlg::HmacSha256_128,
        conf: ConfAlg::AesCbc128,
    },
];

pub const DEFAULT_SUITES: [u8; 2] = [3, 17];

pub fn suite(id: u8) -> Option<CipherSuite> {
    SUITES.iter().copied().find(|s| s.id == id)
}

#[derive(Debug, Clone)]
pub struct BmcConfig {
    pub users: Vec<User>,
    /// IPMI 1.5 auth type NONE: refused unless the operator turns it on.
    pub allow_auth_none: bool,
    /// Enabled cipher suite ids, in the order they are listed to clients.
    pub cipher_suites: Vec<u8>,
    /// Sessions per BMC, half-open and active together.
    pub max_sessions: usize,
    /// An active session idle this long is closed (IPMI 2.0 §6.12.15 suggests 60 s).
    pub session_timeout: Duration,
    /// A handshake not finished within this is forgotten.
    pub handshake_timeout: Duration,
    /// RAKP2 answers per second and burst per source address: RAKP2 carries an HMAC keyed by
    /// the password, an offline-guessing oracle (CVE-2013-4786), so hand it out slowly.
    pub rakp_per_second: f32,
    pub rakp_burst: f32,
    /// RAKP2 answers per second and burst per user name, over all sources together: with
    /// the defaults a flood gets at most 46 hashes of one password in 5 s, while 16 hosts
    /// may log in as one user at the same moment. Sources that recently completed a login
    /// are not counted here (engine/limiter.rs).
    pub rakp_per_name_per_second: f32,
    pub rakp_per_name_burst: f32,
}

impl BmcConfig {
    pub fn new(users: Vec<User>) -> BmcConfig {
        BmcConfig {
            users,
            allow_auth_none: false,
            cipher_suites: DEFAULT_SUITES.to_vec(),
            max_sessions: 16,
            session_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            rakp_per_second: 20.0,
            rakp_burst: 40.0,
            rakp_per_name_per_second: 6.0,
            rakp_per_name_burst: 16.0,
        }
    }

    pub fn user(&self, name: &[u8]) -> Option<&User> {
        self.users.iter().find(|u| u.name.as_bytes() == name)
    }

    pub fn suites(&self) -> impl Iterator<Item = CipherSuite> + '_ {
        self.cipher_suites.iter().filter_map(|id| suite(*id))
    }
}
