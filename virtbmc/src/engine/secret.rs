//! The per-process secret of one BMC: a random key drawn once from the engine's entropy and
//! never sent or logged. Everything the BMC must remember without keeping state is derived
//! from it by HMAC-SHA256 under a distinct label: handshake cookies, the stand-in keys of
//! user names it does not know, and the keys its per-name rate limit files names under.

use crate::crypto::{AuthAlg, Key20};

use super::entropy::Entropy;

pub struct Secret([u8; 32]);

impl Secret {
    pub fn draw(entropy: &mut dyn Entropy) -> Secret {
        let mut k = [0u8; 32];
        entropy.fill(&mut k);
        Secret(k)
    }

    /// HMAC-SHA256 over `label` and `parts`; labels keep the uses apart.
    pub fn mac(&self, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2);
        all.push(label);
        all.push(&[0]);
        all.extend_from_slice(parts);
        let mut out = [0u8; 32];
        out.copy_from_slice(&AuthAlg::HmacSha256.hmac(&self.0, &all));
        out
    }

    /// The key a user name this BMC does not know answers RAKP with: fixed per name for the
    /// life of the process, so that asking twice gives answers as consistent as a real
    /// user's, and unknowable without the secret, so that the answer proves nothing.
    pub fn decoy_key(&self, name: &[u8]) -> Key20 {
        let mut k = [0u8; 20];
        k.copy_from_slice(&self.mac(b"decoy user key", &[name])[..20]);
        Key20(k)
    }

    /// What the per-name rate limit files `name` under: the same for a known and an unknown
    /// name, and no name kept in memory.
    pub fn name_key(&self, name: &[u8]) -> u64 {
        let m = self.mac(b"rate limit name", &[name]);
        u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]])
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
