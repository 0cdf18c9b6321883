//! Where the per-process secret, nonces, random numbers and IVs come from. The engine takes a
//! source so that tests can be deterministic; the agent always uses the OS CSPRNG.

pub trait Entropy: Send + Sync {
    fn fill(&mut self, buf: &mut [u8]);

    fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        u32::from_le_bytes(b)
    }

    fn bytes16(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        self.fill(&mut b);
        b
    }
}

/// The operating system's CSPRNG (getrandom(2)).
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        // getrandom(2) only fails before the kernel pool is initialised or on a bad pointer;
        // a BMC without randomness must not hand out predictable ids, so stop loudly.
        getrandom::getrandom(buf).expect("the OS random source failed");
    }
}

/// A predictable source for tests only (xorshift).
#[derive(Debug, Clone, Copy)]
pub struct TestEntropy(pub u64);

impl Entropy for TestEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}
