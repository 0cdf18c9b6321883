//! Where a BMC runs and which machine it stands for. Fixed for the BMC's life (a new name or
//! port is a new BMC), unlike its [`super::config::BmcConfig`], which a changed Secret
//! replaces while it runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The machine's name as the backend knows it: the FRU product name.
    pub vm_name: String,
    /// The address and port clients reach this BMC at: LAN configuration parameters 3 and 8.
    pub local: SocketAddr,
    /// The network interface behind `local`, when the agent found it.
    pub lan: Option<LanInterface>,
    /// The wall-clock time at one instant, so that the engine can tell the time (Get SEL
    /// Time) from the `now` it is given, without reading a clock.
    pub clock: Option<WallClock>,
}

impl Default for Site {
    fn default() -> Site {
        Site {
            vm_name: String::new(),
            local: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 623)),
            lan: None,
            clock: None,
        }
    }
}

impl Site {
    /// The IPv4 address clients reach this BMC at (0.0.0.0 when it listens on every address
    /// or on IPv6 only: the LAN parameters have no room for anything else).
    pub fn ipv4(&self) -> Ipv4Addr {
        match self.local.ip() {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// The interface a BMC's address lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LanInterface {
    pub mac: [u8; 6],
    pub netmask: Ipv4Addr,
    /// The default gateway reached through this interface, if there is one.
    pub gateway: Option<Ipv4Addr>,
}

/// `unix` was the time since the Unix epoch at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    pub at: Instant,
    pub unix: Duration,
}

impl WallClock {
    /// Seconds since the Unix epoch at `now`, as IPMI timestamps count them (IPMI 2.0 §37).
    pub fn unix_seconds(&self, now: Instant) -> u32 {
        let t = match now.checked_duration_since(self.at) {
            Some(ahead) => self.unix + ahead,
            None => self.unix.saturating_sub(self.at - now),
        };
        u32::try_from(t.as_secs()).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_follows_now_both_ways() {
        let at = Instant::now() + Duration::from_secs(100);
        let c = WallClock {
            at,
            unix: Duration::from_secs(1_700_000_000),
        };
        assert_eq!(c.unix_seconds(at), 1_700_000_000);
        assert_eq!(c.unix_seconds(at + Duration::from_secs(61)), 1_700_000_061);
        assert_eq!(c.unix_seconds(at - Duration::from_secs(60)), 1_699_999_940);
    }

    #[test]
    fn ipv4_of_mapped_and_unspecified_addresses() {
        let mut s = Site::default();
        assert_eq!(s.ipv4(), Ipv4Addr::UNSPECIFIED);
        s.local = "[::ffff:10.1.2.3]:6230".parse().unwrap();
        assert_eq!(s.ipv4(), Ipv4Addr::new(10, 1, 2, 3));
        s.local = "[2001:db8::1]:6230".parse().unwrap();
        assert_eq!(s.ipv4(), Ipv4Addr::UNSPECIFIED);
    }
}
