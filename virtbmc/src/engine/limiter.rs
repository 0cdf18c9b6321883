//! Per-source token buckets, bounded in size, for answers that cost us or help an attacker
//! (RAKP2's password-keyed HMAC).

use std::net::IpAddr;
use std::time::Instant;

const MAX_SOURCES: usize = 64;

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
        let elapsed = now.saturating_duration_since(b.2).as_secs_f32();
        b.1 = (b.1 + elapsed * per_second).min(burst);
        b.2 = now;
        if b.1 >= 1.0 {
            b.1 -= 1.0;
            true
        } else {
            false
        }
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
}
