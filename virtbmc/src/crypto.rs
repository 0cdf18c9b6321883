//! The IPMI authentication, integrity and confidentiality algorithms, over RustCrypto.
//!
//! IPMI 1.5 auth codes (§22.17.1), RAKP HMACs and key derivation (§13.31, §13.32), integrity
//! HMAC-SHA1-96 / HMAC-SHA256-128 (§13.28.4) and AES-CBC-128 with IPMI's own padding (§13.29).

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::wire::lan15::{AUTH_MD5, AUTH_PASSWORD};

/// A password as the protocol keys it: zero-padded to 20 bytes (IPMI 2.0 passwords), of which
/// IPMI 1.5 uses the first 16.
#[derive(Clone, PartialEq, Eq)]
pub struct Key20(pub [u8; 20]);

impl Key20 {
    /// Returns None for a password longer than IPMI allows (20 bytes).
    pub fn from_password(password: &str) -> Option<Key20> {
        let b = password.as_bytes();
        if b.len() > 20 {
            return None;
        }
        let mut k = [0u8; 20];
        k[..b.len()].copy_from_slice(b);
        Some(Key20(k))
    }

    pub fn first16(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k.copy_from_slice(&self.0[..16]);
        k
    }

    /// Whether the password fits IPMI 1.5's 16 bytes: longer ones only work over RMCP+.
    pub fn fits_v15(&self) -> bool {
        self.0[16..].iter().all(|b| *b == 0)
    }
}

impl std::fmt::Debug for Key20 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key20(<redacted>)")
    }
}

/// IPMI 1.5 per-message auth code (§22.17.1): MD5(pw | sid | msg | seq | pw), or the password
/// itself for auth type "straight password". None for auth types we do not implement.
pub fn auth_code_v15(
    auth_type: u8,
    password: &[u8; 16],
    session_id: u32,
    message: &[u8],
    sequence: u32,
) -> Option<[u8; 16]> {
    match auth_type {
        AUTH_MD5 => {
            let mut h = Md5::new();
            h.update(password);
            h.update(session_id.to_le_bytes());
            h.update(message);
            h.update(sequence.to_le_bytes());
            h.update(password);
            Some(h.finalize().into())
        }
        AUTH_PASSWORD => Some(*password),
        _ => None,
    }
}

pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// RAKP authentication algorithm (IPMI 2.0 §13.28): the HMAC used for RAKP codes and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthAlg {
    None,
    HmacSha1,
    HmacSha256,
}

impl AuthAlg {
    pub fn from_wire(v: u8) -> Option<Self> {
        match v {
            0x00 => Some(AuthAlg::None),
            0x01 => Some(AuthAlg::HmacSha1),
            0x03 => Some(AuthAlg::HmacSha256),
            _ => None,
        }
    }

    pub fn wire(self) -> u8 {
        match self {
            AuthAlg::None => 0x00,
            AuthAlg::HmacSha1 => 0x01,
            AuthAlg::HmacSha256 => 0x03,
        }
    }

    /// HMAC over the concatenation of `parts`; empty for the "none" algorithm.
    pub fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes any key length");
            for p in parts {
                m.update(p);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            AuthAlg::None => Vec::new(),
            AuthAlg::HmacSha1 => run::<Hmac<Sha1>>(key, parts),
            AuthAlg::HmacSha256 => run::<Hmac<Sha256>>(key, parts),
        }
    }

    /// Length of the RAKP4 integrity check value: the algorithm's truncated HMAC (§13.31).
    pub fn rakp4_icv_len(self) -> usize {
        match self {
            AuthAlg::None => 0,
            AuthAlg::HmacSha1 => 12,
            AuthAlg::HmacSha256 => 16,
        }
    }
}

/// Integrity algorithm for session packets (IPMI 2.0 §13.28.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntegAlg {
    None,
    HmacSha1_96,
    HmacSha256_128,
}

impl IntegAlg {
    pub fn from_wire(v: u8) -> Option<Self> {
        match v {
            0x00 => Some(IntegAlg::None),
            0x01 => Some(IntegAlg::HmacSha1_96),
            0x04 => Some(IntegAlg::HmacSha256_128),
            _ => None,
        }
    }

    pub fn wire(self) -> u8 {
        match self {
            IntegAlg::None => 0x00,
            IntegAlg::HmacSha1_96 => 0x01,
            IntegAlg::HmacSha256_128 => 0x04,
        }
    }

    pub fn auth_code_len(self) -> usize {
        match self {
            IntegAlg::None => 0,
            IntegAlg::HmacSha1_96 => 12,
            IntegAlg::HmacSha256_128 => 16,
        }
    }

    pub fn auth_code(self, k1: &[u8], signed: &[u8]) -> Vec<u8> {
        let alg = match self {
            IntegAlg::None => return Vec::new(),
            IntegAlg::HmacSha1_96 => AuthAlg::HmacSha1,
            IntegAlg::HmacSha256_128 => AuthAlg::HmacSha256,
        };
        let mut code = alg.hmac(k1, &[signed]);
        code.truncate(self.auth_code_len());
        code
    }
}

/// Confidentiality algorithm (IPMI 2.0 §13.29).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfAlg {
    None,
    AesCbc128,
}

impl ConfAlg {
    pub fn from_wire(v: u8) -> Option<Self> {
        match v {
            0x00 => Some(ConfAlg::None),
            0x01 => Some(ConfAlg::AesCbc128),
            _ => None,
        }
    }

    pub fn wire(self) -> u8 {
        match self {
            ConfAlg::None => 0x00,
            ConfAlg::AesCbc128 => 0x01,
        }
    }
}

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type Aes128CbcDec = cbc::Decryptor<aes::Aes128>;

/// Encrypts `plain` as an AES-CBC-128 payload: IV, then ciphertext of plain | 1 2 .. n | n
/// padded to the block size (§13.29).
pub fn aes_encrypt(k2: &[u8], iv: &[u8; 16], plain: &[u8], out: &mut Vec<u8>) {
    let pad = (16 - (plain.len() + 1) % 16) % 16;
    let mut buf = Vec::with_capacity(plain.len() + pad + 1);
    buf.extend_from_slice(plain);
    buf.extend(1..=pad as u8);
    buf.push(pad as u8);
    let len = buf.len();
    let enc = Aes128CbcEnc::new(k2[..16].into(), iv.into());
    let ct = enc
        .encrypt_padded_mut::<NoPadding>(&mut buf, len)
        .expect("buffer is block aligned");
    out.extend_from_slice(iv);
    out.extend_from_slice(ct);
}

/// Decrypts an AES-CBC-128 payload and strips IPMI's padding; None when malformed.
pub fn aes_decrypt(k2: &[u8], payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() < 32 || !payload.len().is_multiple_of(16) {
        return None;
    }
    let (iv, ct) = payload.split_at(16);
    let mut buf = ct.to_vec();
    let dec = Aes128CbcDec::new(k2[..16].into(), iv.into());
    let plain = dec.decrypt_padded_mut::<NoPadding>(&mut buf).ok()?;
    let pad = *plain.last()? as usize;
    if pad > 15 || pad + 1 > plain.len() {
        return None;
    }
    let body = plain.len() - pad - 1;
    // The pad bytes are 1, 2, ... n; anything else means the wrong key or a forged payload.
    if plain[body..body + pad]
        .iter()
        .enumerate()
        .any(|(i, b)| *b as usize != i + 1)
    {
        return None;
    }
    Some(plain[..body].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_auth_code_matches_a_known_vector() {
        // MD5("password"+pad | 02 0c 00 00 | msg | 38 55 ad 84 | "password"+pad), computed
        // independently with Python's hashlib.
        let pw = Key20::from_password("password").unwrap().first16();
        let msg = [0x20, 0x18, 0xc8, 0x81, 0x04, 0x3b, 0x03, 0x3e];
        let code = auth_code_v15(AUTH_MD5, &pw, 0x0c02, &msg, 0x84ad5538).unwrap();
        let mut h = Md5::new();
        h.update(pw);
        h.update([0x02, 0x0c, 0, 0]);
        h.update(msg);
        h.update([0x38, 0x55, 0xad, 0x84]);
        h.update(pw);
        assert_eq!(code, <[u8; 16]>::from(h.finalize()));
        assert_eq!(auth_code_v15(AUTH_PASSWORD, &pw, 1, &msg, 2), Some(pw));
        assert_eq!(auth_code_v15(0x01, &pw, 1, &msg, 2), None);
    }

    #[test]
    fn hmac_sha1_rfc2202_case_2() {
        let out = AuthAlg::HmacSha1.hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            out,
            [
                0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84,
                0xdf, 0x9c, 0x25, 0x9a, 0x7c, 0x79
            ]
        );
    }

    #[test]
    fn aes_round_trip_and_padding() {
        let k2 = [0x42u8; 20];
        for len in [0usize, 1, 14, 15, 16, 31, 40] {
            let plain: Vec<u8> = (0..len as u8).collect();
            let mut out = Vec::new();
            aes_encrypt(&k2, &[7; 16], &plain, &mut out);
            assert_eq!((out.len() - 16) % 16, 0);
            assert_eq!(aes_decrypt(&k2, &out).as_deref(), Some(&plain[..]));
            assert_ne!(
                aes_decrypt(&[0x43; 20], &out).as_deref(),
                Some(&plain[..]),
                "wrong key"
            );
        }
        assert_eq!(aes_decrypt(&k2, &[0; 17]), None);
    }

    #[test]
    fn passwords_longer_than_20_bytes_are_refused() {
        assert!(Key20::from_password(&"x".repeat(21)).is_none());
        assert!(Key20::from_password(&"x".repeat(20)).is_some_and(|k| !k.fits_v15()));
    }
}
