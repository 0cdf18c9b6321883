//! The garbage stream: random datagrams and mangled copies of valid RMCP, IPMI 1.5 and RMCP+
//! ones (truncated, bit-flipped, overwritten, extended), at a bounded rate, to every BMC port.
//!
//! It runs as `xtask soak-garbage` inside the client namespace (re-executing this binary
//! under `ip netns exec`), from an address of its own: the per-source limits of the session
//! table and of RAKP then keep it from crowding out the real clients, as they would on a
//! network. No valid datagram here carries a credential, so none can change a VM.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::rng::Rng;

/// `xtask soak-garbage FROM_IP BMC_IP PORT[,PORT...] PER_SECOND SEED`: sends until its stdin
/// closes (the soak ends, or dies), then prints `sent N answered M`.
pub fn helper(args: &[String]) -> Result<(), String> {
    let [from, to, ports, rate, seed] = args else {
        return Err("usage: xtask soak-garbage FROM_IP BMC_IP PORTS PER_SECOND SEED".into());
    };
    let from: Ipv4Addr = from.parse().map_err(|e| format!("{from}: {e}"))?;
    let to: Ipv4Addr = to.parse().map_err(|e| format!("{to}: {e}"))?;
    let ports: Vec<u16> = ports
        .split(',')
        .map(|p| p.parse().map_err(|e| format!("port {p}: {e}")))
        .collect::<Result<_, String>>()?;
    let rate: u32 = rate.parse().map_err(|e| format!("{rate}: {e}"))?;
    let seed: u64 = seed.parse().map_err(|e| format!("{seed}: {e}"))?;
    if ports.is_empty() || rate == 0 {
        return Err("no ports or a zero rate".into());
    }

    let done = Arc::new(AtomicBool::new(false));
    let eof = done.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        eof.store(true, Ordering::SeqCst);
    });

    let sock = UdpSocket::bind((from, 0)).map_err(|e| format!("bind {from}: {e}"))?;
    let interval = Duration::from_secs(1) / rate;
    let mut rng = Rng::new(seed);
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut buf = [0u8; 2048];
    while !done.load(Ordering::SeqCst) {
        let next = Instant::now() + interval;
        let target = SocketAddr::from((to, *rng.pick(&ports)));
        // An ICMP error from an earlier datagram may surface here: keep sending.
        if sock.send_to(&datagram(&mut rng), target).is_ok() {
            sent += 1;
        }
        // Replies (a ping's pong, a capabilities answer) are counted while waiting for the
        // next send: the rate stays bounded whatever the agent does.
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            let _ = sock.set_read_timeout(Some(left));
            if sock.recv_from(&mut buf).is_ok() {
                answered += 1;
            }
        }
    }
    println!("sent {sent} answered {answered}");
    Ok(())
}

/// One datagram: a fifth pure noise (half of it behind a valid RMCP header, so that it gets
/// past the first check), the rest a valid message, mangled four times in five.
pub fn datagram(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(20) {
        let n = rng.range(0, 200) as usize;
        let mut d = rng.bytes(n);
        if rng.chance(50) && d.len() >= 4 {
            d[..4].copy_from_slice(&[0x06, 0x00, 0xff, 0x07]);
        }
        return d;
    }
    let mut d = valid(rng);
    if rng.chance(80) {
        mangle(rng, &mut d);
    }
    d
}

fn mangle(rng: &mut Rng, d: &mut Vec<u8>) {
    match rng.range(0, 4) {
        0 => d.truncate(rng.range(0, d.len() as u64 + 1) as usize),
        1 => {
            for _ in 0..rng.range(1, 5) {
                let bit = rng.range(0, d.len() as u64 * 8) as usize;
                d[bit / 8] ^= 1 << (bit % 8);
            }
        }
        2 => {
            let at = rng.range(0, d.len() as u64) as usize;
            let n = (rng.range(1, 9) as usize).min(d.len() - at);
            let noise = rng.bytes(n);
            d[at..at + n].copy_from_slice(&noise);
        }
        _ => {
            let n = rng.range(1, 64) as usize;
            d.extend(rng.bytes(n));
        }
    }
}

/// A well-formed request of a kind a client sends, with random session ids, sequence
/// numbers, challenges and authentication codes where a session would put its own.
fn valid(rng: &mut Rng) -> Vec<u8> {
    let random_id = rng.next() as u32 | 1;
    match rng.range(0, 10) {
        // ASF Presence Ping (DSP0136 §3.2.4.1).
        0 => vec![
            0x06,
            0x00,
            0xff,
            0x06,
            0x00,
            0x00,
            0x11,
            0xbe,
            0x80,
            rng.next() as u8,
            0x00,
            0x00,
        ],
        // Get Channel Authentication Capabilities, session-less (IPMI 2.0 §22.13).
        1 => v15(0, 0, 0, &[], 0x06, 0x38, &[0x8e, 0x04]),
        // Get Session Challenge for `admin`, MD5 (IPMI 2.0 §22.16).
        2 => {
            let mut data = vec![0x02];
            data.extend(padded(b"admin"));
            v15(0, 0, 0, &[], 0x06, 0x39, &data)
        }
        // Activate Session with a challenge and an auth code nobody issued (§22.17).
        3 => {
            let mut data = vec![0x02, 0x04];
            data.extend(rng.bytes(16));
            data.extend(rng.next().to_le_bytes()[..4].iter());
            v15(0x02, 0, random_id, &rng.bytes(16), 0x06, 0x3a, &data)
        }
        // Get Chassis Status in an IPMI 1.5 session that does not exist (the fast path's
        // in-session answer looks these up first).
        4 => {
            let seq = rng.next() as u32;
            v15(0x02, seq, random_id, &rng.bytes(16), 0x00, 0x01, &[])
        }
        // Get Channel Cipher Suites in the RMCP+ framing, session-less (§22.15).
        5 => {
            let msg = ipmi_msg(0x06, 0x54, &[0x0e, 0x00, 0x80]);
            rmcp_plus(0x00, 0, 0, &msg)
        }
        // RMCP+ Open Session Request for suite 17 (§13.17).
        6 => {
            let mut p = vec![rng.next() as u8, 0x04, 0x00, 0x00];
            p.extend(random_id.to_le_bytes());
            p.extend([0x00, 0x00, 0x00, 0x08, 0x03, 0x00, 0x00, 0x00]);
            p.extend([0x01, 0x00, 0x00, 0x08, 0x04, 0x00, 0x00, 0x00]);
            p.extend([0x02, 0x00, 0x00, 0x08, 0x01, 0x00, 0x00, 0x00]);
            rmcp_plus(0x10, 0, 0, &p)
        }
        // RAKP Message 1 for a managed session id nobody handed out (§13.20).
        7 => {
            let mut p = vec![rng.next() as u8, 0, 0, 0];
            p.extend(random_id.to_le_bytes());
            p.extend(rng.bytes(16));
            p.extend([0x14, 0x00, 0x00, 0x05]);
            p.extend(b"admin");
            rmcp_plus(0x12, 0, 0, &p)
        }
        // RAKP Message 3 with a made-up key exchange code (§13.22).
        8 => {
            let mut p = vec![rng.next() as u8, 0x00, 0x00, 0x00];
            p.extend(random_id.to_le_bytes());
            p.extend(rng.bytes(32));
            rmcp_plus(0x14, 0, 0, &p)
        }
        // An encrypted, authenticated IPMI payload in an RMCP+ session that does not exist.
        _ => {
            let n = 16 * rng.range(1, 4) as usize;
            let mut p = rng.bytes(n);
            p.extend(rng.bytes(16));
            rmcp_plus(0xc0, random_id, rng.next() as u32, &p)
        }
    }
}

/// A user name field: 16 bytes, NUL-padded.
fn padded(name: &[u8]) -> [u8; 16] {
    let mut f = [0u8; 16];
    f[..name.len()].copy_from_slice(name);
    f
}

/// IPMI 2.0 §13.8: the two-complement checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// An IPMI LAN message from the remote console (0x81) to the BMC (0x20), §13.8.
fn ipmi_msg(net_fn: u8, cmd: u8, data: &[u8]) -> Vec<u8> {
    let head = [0x20, net_fn << 2];
    let mut m = head.to_vec();
    m.push(checksum(&head));
    let body_start = m.len();
    m.extend([0x81, 0x04, cmd]);
    m.extend(data);
    let sum = checksum(&m[body_start..]);
    m.push(sum);
    m
}

/// RMCP + IPMI 1.5 session wrapper (§13.6, Table 13-8); the auth code is present unless the
/// auth type is NONE.
fn v15(auth: u8, seq: u32, session: u32, code: &[u8], net_fn: u8, cmd: u8, data: &[u8]) -> Vec<u8> {
    let msg = ipmi_msg(net_fn, cmd, data);
    let mut d = vec![0x06, 0x00, 0xff, 0x07, auth];
    d.extend(seq.to_le_bytes());
    d.extend(session.to_le_bytes());
    if auth != 0 {
        d.extend(code);
    }
    d.push(msg.len() as u8);
    d.extend(msg);
    d
}

/// RMCP + RMCP+ session wrapper (§13.6): payload type, session id, sequence, length.
fn rmcp_plus(payload_type: u8, session: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut d = vec![0x06, 0x00, 0xff, 0x07, 0x06, payload_type];
    d.extend(session.to_le_bytes());
    d.extend(seq.to_le_bytes());
    d.extend((payload.len() as u16).to_le_bytes());
    d.extend(payload);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_messages_have_sound_checksums_and_lengths() {
        // Get Channel Authentication Capabilities as ipmitool sends it (IPMI 2.0 §22.13).
        let d = v15(0, 0, 0, &[], 0x06, 0x38, &[0x8e, 0x04]);
        assert_eq!(
            d,
            [
                0x06, 0x00, 0xff, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x09, 0x20, 0x18, 0xc8, 0x81,
                0x04, 0x38, 0x8e, 0x04, 0xb1
            ]
        );
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            let d = valid(&mut rng);
            assert_eq!(&d[..4], &[0x06, 0x00, 0xff, d[3]]);
            if d[3] == 0x07 && d[4] == 0x06 {
                let len = u16::from_le_bytes([d[14], d[15]]) as usize;
                assert_eq!(d.len(), 16 + len);
            }
        }
    }

    #[test]
    fn garbage_varies_and_stays_small() {
        let mut rng = Rng::new(42);
        let all: Vec<Vec<u8>> = (0..500).map(|_| datagram(&mut rng)).collect();
        assert!(all.iter().all(|d| d.len() < 300));
        assert!(all.iter().any(|d| d.is_empty() || d.len() < 4));
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert!(distinct.len() > 450);
    }
}
