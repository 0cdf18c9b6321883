//! A small xorshift generator: the soak's choices (which client, when to kill it, how to
//! mangle a datagram) need variety, not quality, and xtask stays std only.

pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock and the process id; the seed is returned so that a run can say it.
    pub fn from_time() -> (Rng, u64) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = nanos ^ (u64::from(std::process::id()) << 32);
        (Rng::new(seed), seed)
    }

    pub fn new(seed: u64) -> Rng {
        // Zero is xorshift's one fixed point.
        Rng(seed | 1)
    }

    /// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators").
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn stays_in_range_and_varies() {
        let mut r = Rng::new(0);
        let v: Vec<u64> = (0..1000).map(|_| r.range(20, 200)).collect();
        assert!(v.iter().all(|x| (20..200).contains(x)));
        assert!(v.iter().any(|&x| x < 40) && v.iter().any(|&x| x > 180));
    }
}
