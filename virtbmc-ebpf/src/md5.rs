//! MD5 (RFC 1321) of one short message, for IPMI 1.5 auth codes (IPMI 2.0 §22.17.1):
//! password(16) | session id(4) | message | sequence(4) | password(16) is at most 55 bytes
//! for the messages the fast path answers (7-byte request, 11-byte reply), so one 64-byte
//! block always suffices.

const S: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9,
    14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15,
    21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
];

const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// The IPMI 1.5 MD5 auth code (IPMI 2.0 §22.17.1): MD5(password | session id | message |
/// sequence | password) for a message of `L` <= 15 bytes. `sid_seq` packs the session id
/// (low half) and the sequence number (high half): BPF functions take at most five arguments.
/// Its own BPF function, so the 64-byte block lives in its own stack frame.
#[inline(never)]
pub fn auth_code_md5<const L: usize>(
    password: &[u8; 16],
    msg: &[u8; L],
    sid_seq: u64,
    out: &mut [u8; 16],
) -> u32 {
    if 40 + L > 55 {
        return 0;
    }
    let mut block = [0u8; 64];
    block[..16].copy_from_slice(password);
    block[16..20].copy_from_slice(&(sid_seq as u32).to_le_bytes());
    block[20..20 + L].copy_from_slice(msg);
    block[20 + L..24 + L].copy_from_slice(&((sid_seq >> 32) as u32).to_le_bytes());
    block[24 + L..40 + L].copy_from_slice(password);
    block[40 + L] = 0x80;
    block[56..64].copy_from_slice(&(((40 + L) as u64) * 8).to_le_bytes());
    let word = |g: usize| {
        let g = (g & 15) * 4;
        u32::from_le_bytes([block[g], block[g + 1], block[g + 2], block[g + 3]])
    };
    let (mut a, mut b, mut c, mut d) = (0x67452301u32, 0xefcdab89u32, 0x98badcfeu32, 0x10325476u32);
    let mut i = 0;
    while i < 64 {
        let (f, g) = match i / 16 {
            0 => ((b & c) | (!b & d), i),
            1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
            2 => (b ^ c ^ d, (3 * i + 5) % 16),
            _ => (c ^ (b | !d), (7 * i) % 16),
        };
        let f = f.wrapping_add(a).wrapping_add(K[i]).wrapping_add(word(g));
        a = d;
        d = c;
        c = b;
        b = b.wrapping_add(f.rotate_left(S[i]));
        i += 1;
    }
    let words = [
        a.wrapping_add(0x67452301),
        b.wrapping_add(0xefcdab89),
        c.wrapping_add(0x98badcfe),
        d.wrapping_add(0x10325476),
    ];
    let mut j = 0;
    while j < 4 {
        out[4 * j..4 * j + 4].copy_from_slice(&words[j].to_le_bytes());
        j += 1;
    }
    1
}
