//! Token buckets, bounded in size, for answers that cost us or help an attacker: RAKP2
//! carries an HMAC keyed by the user's password, which can be guessed at offline
//! (CVE-2013-4786). Three limits apply to it:
//!
//! - per source address ([`SourceLimiter`]), so that one client cannot take them all;
//! - per user name across all sources ([`NameLimiter`]), so that many sources together get
//!   only a trickle of hashes of one password. Names are filed under a keyed hash and a
//!   name this BMC does not know is limited exactly as a known one, or the limit itself
//!   would tell which names exist;
//! - and none of those for a source that recently proved a password ([`TrustedSources`]):
//!   it has a budget of its own, refunded by each login that completes, so that a script
//!   logging in and out back to back is never slowed, whatever floods the other limits.

use std::net::IpAddr;
use std::time::{Duration, Instant};

const MAX_SOURCES: usize = 64;
const MAX_NAMES: usize = 256;
const MAX_TRUSTED: usize = 64;
/// How long a proven password vouches for its source.
const TRUST_FOR: Duration = Duration::from_secs(60);
/// RAKP2 answers a trusted source may have outstanding: each verified RAKP3 refunds one.
const TRUSTED_BURST: f32 = 16.0;
const TRUSTED_PER_SECOND: f32 = 1.0;

/// Refills `tokens` for the time since `last` and takes one if there is one.
fn take(tokens: &mut f32, last: &mut Instant, now: Instant, per_second: f32, burst: f32) -> bool {
    let elapsed = now.saturating_duration_since(*last).as_secs_f32();
    *tokens = (*tokens + elapsed * per_second).min(burst);
    *last = now;
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        true
    } else {
        false
    }
}

#[derive(Debug, Default)]
pub struct SourceLimiter {
    buckets: Vec<(IpAddr, f32, Instant)>,
}

impl SourceLimiter {
    /// Takes one token for `ip`; false when its bucket is empty. When the table is full the
    /// stalest source is forgotten, so a spoofed flood costs a real client at most a refill.
    pub fn allow(&mut self, ip: IpAddr, now: Instant, per_second: f32, burst: f32) -> bool {
        let i = match self.buckets.iter().position(|b| b.0 == ip) {
            Some(i) => i,
            None => {
                if self.buckets.len() >= MAX_SOURCES {
                    let stalest = self
                        .buckets
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, b)| b.2)
                        .map(|(i, _)| i)
                        .unwrap_or(0);
                    self.buckets.swap_remove(stalest);
                }
                self.buckets.push((ip, burst, now));
                self.buckets.len() - 1
            }
        };
        let b = &mut self.buckets[i];
        take(&mut b.1, &mut b.2, now, per_second, burst)
    }
}

/// Per-name token buckets, keyed by [`super::secret::Secret::name_key`].
#[derive(Debug, Default)]
pub struct NameLimiter {
    buckets: Vec<(u64, f32, Instant)>,
}

impl NameLimiter {
    /// Takes one token for the name `key`; false when its bucket is empty. A full table
    /// makes room only by forgetting a bucket that has refilled (a new one is the same), so
    /// that cycling through many names cannot refill the one under attack; with none to
    /// forget, a name not in the table waits.
    pub fn allow(&mut self, key: u64, now: Instant, per_second: f32, burst: f32) -> bool {
        let i = match self.buckets.iter().position(|b| b.0 == key) {
            Some(i) => i,
            None => {
                if self.buckets.len() >= MAX_NAMES {
                    let refilled = self.buckets.iter().position(|b| {
                        b.1 + now.saturating_duration_since(b.2).as_secs_f32() * per_second >= burst
                    });
                    match refilled {
                        Some(j) => {
                            self.buckets.swap_remove(j);
                        }
                        None => return false,
                    }
                }
                self.buckets.push((key, burst, now));
                self.buckets.len() - 1
            }
        };
        let b = &mut self.buckets[i];
        take(&mut b.1, &mut b.2, now, per_second, burst)
    }
}

/// Sources whose console proved a password within [`TRUST_FOR`], each with its own budget.
#[derive(Debug, Default)]
pub struct TrustedSources {
    /// (address, tokens, last refill, last proof)
    sources: Vec<(IpAddr, f32, Instant, Instant)>,
}

impl TrustedSources {
    /// Takes one from `ip`'s own budget; false when `ip` is not trusted or its budget is
    /// spent (the shared limits then apply).
    pub fn take(&mut self, ip: IpAddr, now: Instant) -> bool {
        match self.sources.iter_mut().find(|s| s.0 == ip) {
            Some(s) if now.saturating_duration_since(s.3) < TRUST_FOR => {
                take(&mut s.1, &mut s.2, now, TRUSTED_PER_SECOND, TRUSTED_BURST)
            }
            _ => false,
        }
    }

    /// Whether a console at `ip` proved a password within [`TRUST_FOR`].
    pub fn is_trusted(&self, ip: IpAddr, now: Instant) -> bool {
        self.sources
            .iter()
            .any(|s| s.0 == ip && now.saturating_duration_since(s.3) < TRUST_FOR)
    }

    /// A console at `ip` proved a password: trust it (again) and refund the RAKP2 it used.
    pub fn proved(&mut self, ip: IpAddr, now: Instant) {
        if let Some(s) = self.sources.iter_mut().find(|s| s.0 == ip) {
            s.1 = (s.1 + 1.0).min(TRUSTED_BURST);
            s.3 = now;
            return;
        }
        if self.sources.len() >= MAX_TRUSTED {
            let stalest = self
                .sources
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.3)
                .map(|(i, _)| i)
                .unwrap_or(0);
            self.sources.swap_remove(stalest);
        }
        self.sources.push((ip, TRUSTED_BURST, now, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refills_over_time_and_isolates_sources() {
        let mut l = SourceLimiter::default();
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!((0..5).filter(|_| l.allow(a, t, 1.0, 3.0)).count(), 3);
        assert!(l.allow(b, t, 1.0, 3.0));
        assert!(l.allow(a, t + Duration::from_secs(1), 1.0, 3.0));
        assert!(!l.allow(a, t + Duration::from_secs(1), 1.0, 3.0));
    }

    #[test]
    fn many_names_cannot_refill_the_one_under_attack() {
        let mut l = NameLimiter::default();
        let t = Instant::now();
        assert_eq!((0..20).filter(|_| l.allow(1, t, 8.0, 8.0)).count(), 8);
        for k in 2..2 + MAX_NAMES as u64 {
            l.allow(k, t, 8.0, 8.0);
        }
        assert!(!l.allow(1, t, 8.0, 8.0), "still drained, not forgotten");
        assert!(!l.allow(9999, t, 8.0, 8.0), "no room for a new name yet");
        let later = t + Duration::from_secs(1);
        assert!(
            l.allow(9999, later, 8.0, 8.0),
            "a refilled bucket makes room"
        );
        assert_eq!((0..20).filter(|_| l.allow(1, later, 8.0, 8.0)).count(), 8);
    }

    #[test]
    fn trusted_sources_keep_a_budget_refunded_by_each_login() {
        let mut tr = TrustedSources::default();
        let t = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!tr.take(a, t), "not trusted before a proof");
        tr.proved(a, t);
        for _ in 0..1000 {
            assert!(tr.take(a, t));
            tr.proved(a, t);
        }
        assert_eq!((0..100).filter(|_| tr.take(a, t)).count(), 16);
        assert!(!tr.take(a, t + TRUST_FOR), "trust runs out");
    }
}
