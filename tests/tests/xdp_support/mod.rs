//! Shared by the `xdp_*` tests: loading the real XDP object, crafting frames, and the expected
//! reply bytes written down independently of the program (from the spec and the captured clients).
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use virtbmc::fastpath::{FastPath, FastPathConfig, XdpMode};
use virtbmc_common::BmcState;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const BMC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
pub const BMC_V4: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x231, 0, 0, 0, 0, 0, 2);
pub const BMC_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x231, 0, 0, 0, 0, 0, 1);
pub const CLIENT_PORT: u16 = 40000;
pub const BMC_PORT: u16 = 6230;

/// Cipher suite records for suites 3 and 17, as the engine encodes them.
pub const RECORDS_3_17: [u8; 10] = [0xC0, 0x03, 0x01, 0x41, 0x81, 0xC0, 0x11, 0x03, 0x44, 0x81];

pub const XDP_DROP: u32 = virtbmc::fastpath::XDP_DROP;
pub const XDP_PASS: u32 = virtbmc::fastpath::XDP_PASS;
pub const XDP_TX: u32 = virtbmc::fastpath::XDP_TX;

/// The object built by `cargo xtask build-ebpf` (or `$VIRTBMC_EBPF_OBJECT`).
pub fn object() -> PathBuf {
    let ws = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    FastPathConfig::default_object(None, Some(&ws))
}

/// True when the test must be skipped: not root, or no object. A missing root fails under
/// `VIRTBMC_E2E_REQUIRED=1` (as the other end-to-end tests); a missing object fails only under
/// `VIRTBMC_XDP_REQUIRED=1`, since building it needs the nightly toolchain
/// (`cargo xtask build-ebpf`), which a plain stable CI run may not have.
pub fn skip(test: &str) -> bool {
    let set = |v: &str| std::env::var(v).is_ok_and(|v| v == "1");
    let mut missing = Vec::new();
    if !virtbmc_e2e::is_root() {
        if set("VIRTBMC_E2E_REQUIRED") || set("VIRTBMC_XDP_REQUIRED") {
            panic!("{test}: root required (VIRTBMC_E2E_REQUIRED/VIRTBMC_XDP_REQUIRED=1)");
        }
        missing.push("root".to_string());
    }
    if !object().exists() {
        if set("VIRTBMC_XDP_REQUIRED") {
            panic!(
                "{test}: VIRTBMC_XDP_REQUIRED=1 but {} is missing",
                object().display()
            );
        }
        missing.push(format!("{} (cargo xtask build-ebpf)", object().display()));
    }
    if missing.is_empty() {
        return false;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIP {test}: needs {}",
        missing.join(", ")
    );
    true
}

static N: AtomicU32 = AtomicU32::new(0);

/// Loads the program without attaching it, maps pinned in a folder of its own.
pub fn load_detached() -> FastPath {
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut cfg = FastPathConfig::new(object(), None, XdpMode::Auto);
    cfg.pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/virtbmc-test-{}-{n}",
        std::process::id()
    ));
    FastPath::start(&cfg).expect("loading the XDP object")
}

pub fn state(allow_none: bool) -> BmcState {
    BmcState::with_ciphers(false, allow_none, &RECORDS_3_17).unwrap()
}

// ---- frames ----

fn be16(v: u16) -> [u8; 2] {
    v.to_be_bytes()
}

fn csum(data: &[u8], mut acc: u32) -> u16 {
    let mut i = 0;
    while i + 1 < data.len() {
        acc += u16::from_be_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    if data.len() % 2 == 1 {
        acc += (data[data.len() - 1] as u32) << 8;
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    !(acc as u16)
}

/// Recomputes the IPv4 header checksum of a frame after a test edited the header.
pub fn fix_ip_checksum(frame: &mut [u8]) {
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&frame[14..34], 0);
    frame[24..26].copy_from_slice(&be16(c));
}

/// Ethernet + IPv4 + UDP frame. The request's UDP checksum is a pseudo-header partial sum, as
/// a veth client's CHECKSUM_PARTIAL packet carries (the program must not depend on it).
pub fn v4(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    v4_opts(src, dst, payload, 64, 0x1234, 0x4000)
}

pub fn v4_opts(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
    ttl: u8,
    id: u16,
    frag: u16,
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&BMC_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&be16(0x0800));
    let udp_len = 8 + payload.len() as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&be16(20 + udp_len));
    ip.extend_from_slice(&be16(id));
    ip.extend_from_slice(&be16(frag));
    ip.extend_from_slice(&[ttl, 17, 0, 0]);
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&be16(c));
    f.extend_from_slice(&ip);
    f.extend_from_slice(&be16(src.1));
    f.extend_from_slice(&be16(dst.1));
    f.extend_from_slice(&be16(udp_len));
    f.extend_from_slice(&be16(0xBEEF)); // junk "partial" checksum
    f.extend_from_slice(payload);
    f
}

pub fn v6(src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&BMC_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&be16(0x86DD));
    let udp_len = 8 + payload.len() as u16;
    f.extend_from_slice(&[0x60, 0x01, 0x23, 0x45]);
    f.extend_from_slice(&be16(udp_len));
    f.extend_from_slice(&[17, 55]);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    f.extend_from_slice(&be16(src.1));
    f.extend_from_slice(&be16(dst.1));
    f.extend_from_slice(&be16(udp_len));
    f.extend_from_slice(&be16(0xBEEF));
    f.extend_from_slice(payload);
    f
}

/// The reply frame the program must produce for a v4 request from `client` to `bmc`.
pub fn v4_reply(client: (Ipv4Addr, u16), bmc: (Ipv4Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&BMC_MAC);
    f.extend_from_slice(&be16(0x0800));
    let udp_len = 8 + payload.len() as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&be16(20 + udp_len));
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&bmc.0.octets());
    ip.extend_from_slice(&client.0.octets());
    let c = csum(&ip, 0);
    ip[10..12].copy_from_slice(&be16(c));
    f.extend_from_slice(&ip);
    f.extend_from_slice(&be16(bmc.1));
    f.extend_from_slice(&be16(client.1));
    f.extend_from_slice(&be16(udp_len));
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

pub fn v6_reply(client: (Ipv6Addr, u16), bmc: (Ipv6Addr, u16), payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&BMC_MAC);
    f.extend_from_slice(&be16(0x86DD));
    let udp_len = 8 + payload.len() as u16;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&be16(udp_len));
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&bmc.0.octets());
    f.extend_from_slice(&client.0.octets());
    let mut udp = Vec::new();
    udp.extend_from_slice(&be16(bmc.1));
    udp.extend_from_slice(&be16(client.1));
    udp.extend_from_slice(&be16(udp_len));
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&bmc.0.octets());
    pseudo.extend_from_slice(&client.0.octets());
    pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(&udp);
    let mut c = csum(&pseudo, 0);
    if c == 0 {
        c = 0xFFFF;
    }
    udp[6..8].copy_from_slice(&be16(c));
    f.extend_from_slice(&udp);
    f
}

/// Checks that a v6 frame's UDP checksum verifies (sum over pseudo-header + datagram is 0).
pub fn v6_udp_checksum_ok(frame: &[u8]) -> bool {
    let ip = &frame[14..54];
    let udp = &frame[54..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[8..40]);
    pseudo.extend_from_slice(&(udp.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(udp);
    csum(&pseudo, 0) == 0
}

// ---- RMCP / IPMI payloads ----

pub fn ping(tag: u8) -> Vec<u8> {
    vec![
        0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, tag, 0x00, 0x00,
    ]
}

pub fn pong(tag: u8) -> Vec<u8> {
    let mut v = vec![
        0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x40, tag, 0x00, 0x10,
    ];
    v.extend_from_slice(&[
        0x00, 0x00, 0x11, 0xBE, 0, 0, 0, 0, 0x81, 0x00, 0, 0, 0, 0, 0, 0,
    ]);
    v
}

fn chk(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// An IPMI request message to the BMC (rsAddr 0x20) from rqAddr 0x81.
pub fn msg(net_fn: u8, rq_seq: u8, cmd: u8, data: &[u8]) -> Vec<u8> {
    msg_full(0x20, net_fn, 0, 0x81, rq_seq, 0, cmd, data)
}

#[allow(clippy::too_many_arguments)]
pub fn msg_full(
    rs_addr: u8,
    net_fn: u8,
    rs_lun: u8,
    rq_addr: u8,
    rq_seq: u8,
    rq_lun: u8,
    cmd: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut m = vec![rs_addr, net_fn << 2 | rs_lun];
    m.push(chk(&m));
    let body_start = m.len();
    m.extend_from_slice(&[rq_addr, rq_seq << 2 | rq_lun, cmd]);
    m.extend_from_slice(data);
    m.push(chk(&m[body_start..]));
    m
}

/// The response message to request message `req` (IPMI 2.0 §13.8).
pub fn response(req: &[u8], cc: u8, data: &[u8]) -> Vec<u8> {
    let (rs_addr, netfn_lun, rq_addr, seq_lun, cmd) = (req[0], req[1], req[3], req[4], req[5]);
    let mut m = vec![rq_addr, ((netfn_lun >> 2) + 1) << 2 | (seq_lun & 3)];
    m.push(chk(&m));
    let body_start = m.len();
    m.extend_from_slice(&[rs_addr, (seq_lun & 0xFC) | (netfn_lun & 3), cmd, cc]);
    m.extend_from_slice(data);
    m.push(chk(&m[body_start..]));
    m
}

/// Session-less IPMI 1.5 wrapper.
pub fn v15(msg: &[u8]) -> Vec<u8> {
    let mut p = vec![
        0x06,
        0x00,
        0xFF,
        0x07,
        0x00,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        msg.len() as u8,
    ];
    p.extend_from_slice(msg);
    p
}

/// Session-less RMCP+ wrapper (IPMI payload).
pub fn v20(msg: &[u8]) -> Vec<u8> {
    let mut p = vec![0x06, 0x00, 0xFF, 0x07, 0x06, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    p.extend_from_slice(&(msg.len() as u16).to_le_bytes());
    p.extend_from_slice(msg);
    p
}

pub fn auth_caps_req(ch: u8, privilege: u8) -> Vec<u8> {
    msg(0x06, 1, 0x38, &[ch, privilege])
}

pub fn auth_caps_data(ch: u8, allow_none: bool) -> Vec<u8> {
    let ext = ch & 0x80 != 0;
    let auth = if ext { 0x80 } else { 0 } | 0x04 | 0x10 | if allow_none { 0x01 } else { 0 };
    vec![0x01, auth, 0x04, if ext { 0x03 } else { 0x00 }, 0, 0, 0, 0]
}

pub fn cipher_req(ch: u8, payload_type: u8, index: u8) -> Vec<u8> {
    msg(0x06, 2, 0x54, &[ch, payload_type, index])
}

pub fn cipher_data(records: &[u8], index: u8) -> Vec<u8> {
    let start = (index & 0x3F) as usize * 16;
    let mut d = vec![0x01];
    if start < records.len() {
        d.extend_from_slice(&records[start..records.len().min(start + 16)]);
    }
    d
}

/// The agent's part after each datagram: the IPMI 1.5 sessions the engine offers go into
/// the fast path's maps, and their slots back to the engine.
#[allow(dead_code)]
pub fn publish_offers(
    engine: &mut virtbmc::engine::Bmc,
    publisher: &dyn virtbmc::engine::session::SessionPublisher,
) {
    while let Some(offer) = engine.poll_publish() {
        if let Some(shared) = publisher.publish(&offer) {
            engine.attach_shared(offer.session_id, shared);
        }
    }
}
