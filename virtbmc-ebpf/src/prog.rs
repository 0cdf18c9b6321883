//! The virtbmc XDP program: answers the stateless pre-session traffic of every BMC the agent
//! serves straight from the `BMCS` map, and passes everything else to the agent's sockets.
//!
//! Answered (see `virtbmc-common` for the maps):
//! - ASF Presence Ping (DMTF ASF 2.0 §3.2.4.3) -> Presence Pong.
//! - Session-less Get Channel Authentication Capabilities (IPMI 2.0 §22.13), IPMI 1.5 framing.
//! - Session-less Get Channel Cipher Suites (IPMI 2.0 §22.15), IPMI 1.5 or RMCP+ framing.
//! - Get Chassis Status (IPMI 2.0 §28.2) inside an IPMI 1.5 session the agent published, with
//!   the shared-state protocol of `virtbmc_common::session` (MD5 or straight password).
//!
//! Anything not addressed to a port in `BMCS`, and anything we are not sure about, is
//! `XDP_PASS`. Packets to a BMC port that cannot be IPMI (UDP length inconsistent with the
//! packet, or not RMCP version 6) are dropped and counted.
//!
//! Replies are built in place: the request's headers are copied to the stack, the frame is
//! resized at the head (`bpf_xdp_adjust_head`, 256 bytes of headroom are guaranteed), and the
//! new headers and payload are written with `bpf_xdp_store_bytes`. IPv4 replies carry UDP
//! checksum 0 (the request's checksum field may be a CHECKSUM_PARTIAL pseudo-header sum, so an
//! incremental update would be wrong); IPv6 replies carry the full checksum.
use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    btf_maps::{Array, HashMap, PerCpuArray},
    helpers::generated::{
        bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
        bpf_xdp_store_bytes,
    },
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use virtbmc_common::{
    BmcState, Counters, MAX_BMCS, MAX_CIPHER_RECORDS,
    ipmi::*,
    session::{CAS_TRIES, MAX_SESSIONS, SESSION_ACTIVE, V15Session, window_check, window_commit},
};

use crate::md5::auth_code_md5;

#[btf_map]
static BMCS: HashMap<u16, BmcState, { MAX_BMCS as usize }> = HashMap::new();

#[btf_map]
static COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

/// Published IPMI 1.5 sessions (see `virtbmc_common::session` for the protocol).
#[btf_map]
static SESSION_IDS: HashMap<u32, u32, { MAX_SESSIONS as usize }> = HashMap::new();

/// A session slot (for the benchmark object, which resets windows between repetitions).
#[allow(dead_code)]
#[inline(always)]
pub fn session_slot(slot: u32) -> Option<*mut V15Session> {
    SESSIONS.get_ptr_mut(slot)
}

/// `BPF_F_MMAPABLE`: the agent maps the slots and uses atomics on them.
const BPF_F_MMAPABLE: usize = 1 << 10;

#[btf_map]
static SESSIONS: Array<V15Session, { MAX_SESSIONS as usize }, BPF_F_MMAPABLE> = Array::new();

const ETH_LEN: usize = 14;
const IP4_LEN: usize = 20;
const IP6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_UDP: u8 = 17;

/// UDP payload lengths of the requests we answer.
const PING_LEN: usize = 12;
/// IPMI 1.5 session-less header: RMCP (4), auth type, seq (4), sid (4), msg length.
const V15_HDR: usize = 14;
/// RMCP+ session-less header: RMCP (4), auth type, payload type, sid (4), seq (4), length (2).
const V20_HDR: usize = 16;
/// IPMI message lengths: 6 header bytes + data + checksum.
const AUTH_CAPS_MSG: usize = 9;
const CIPHER_MSG: usize = 10;

/// Room for the longest reply payload (RMCP+ cipher suites: 16 + 25 = 41 bytes).
const OUT_CAP: usize = 64;

enum Verdict {
    Pass,
    Drop,
    Tx,
}

#[xdp]
pub fn virtbmc_xdp(ctx: XdpContext) -> u32 {
    handle(&ctx)
}

/// The whole program; also called by the benchmark programs (`src/bench.rs`).
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    match classify(ctx) {
        Handled::NotOurs => XDP_PASS,
        Handled::Ours(port, v) => match v {
            Verdict::Tx => XDP_TX,
            Verdict::Pass => {
                count(|c| c.passed += 1);
                XDP_PASS
            }
            Verdict::Drop => {
                count(|c| c.dropped_malformed += 1);
                aya_log_ebpf::debug!(ctx, "dropped malformed packet to BMC port {}", port);
                XDP_DROP
            }
        },
    }
}

enum Handled {
    NotOurs,
    Ours(u16, Verdict),
}

#[inline(always)]
fn count(f: impl FnOnce(&mut Counters)) {
    if let Some(p) = COUNTERS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this program on this CPU writes it.
        f(unsafe { &mut *p });
    }
}

/// Bounds-checked pointer into the packet.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    if start + off + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + off) as *const T)
}

#[inline(always)]
fn be16(a: u8, b: u8) -> u16 {
    u16::from_be_bytes([a, b])
}

/// What the reply needs of the request's headers, copied before the frame is resized.
struct Headers {
    /// Destination then source MAC.
    macs: [u8; 12],
    /// Source then destination address: 4 + 4 bytes for IPv4, 16 + 16 for IPv6.
    addrs: [u8; 32],
    v6: bool,
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Handled {
    let Some(eth) = ptr_at::<[u8; ETH_LEN]>(ctx, 0) else {
        return Handled::NotOurs;
    };
    // SAFETY: bounds checked by ptr_at; the packet is not resized while these are used.
    let eth = unsafe { &*eth };
    let mut addrs = [0u8; 32];
    let (v6, l3_len, ip_payload_len) = match be16(eth[12], eth[13]) {
        ETH_P_IP => {
            let Some(h) = ptr_at::<[u8; IP4_LEN]>(ctx, ETH_LEN) else {
                return Handled::NotOurs;
            };
            let h = unsafe { &*h };
            // No options, UDP, not a fragment (MF clear, offset 0): else not ours to answer.
            if h[0] != 0x45 || h[9] != IPPROTO_UDP || (h[6] & 0x3F) != 0 || h[7] != 0 {
                return Handled::NotOurs;
            }
            // A header whose checksum fails is the kernel's to drop; its addresses may be wrong.
            if csum_fold(csum_add(0, h)) != 0 {
                return Handled::NotOurs;
            }
            addrs[..8].copy_from_slice(&h[12..20]);
            let tot = be16(h[2], h[3]) as usize;
            (false, IP4_LEN, tot.wrapping_sub(IP4_LEN))
        }
        ETH_P_IPV6 => {
            let Some(h) = ptr_at::<[u8; IP6_LEN]>(ctx, ETH_LEN) else {
                return Handled::NotOurs;
            };
            let h = unsafe { &*h };
            // UDP directly after the fixed header; extension headers go to userspace.
            if h[0] >> 4 != 6 || h[6] != IPPROTO_UDP {
                return Handled::NotOurs;
            }
            addrs.copy_from_slice(&h[8..40]);
            (true, IP6_LEN, be16(h[4], h[5]) as usize)
        }
        _ => return Handled::NotOurs,
    };
    let Some(udp) = ptr_at::<[u8; UDP_LEN]>(ctx, ETH_LEN + l3_len) else {
        return Handled::NotOurs;
    };
    let udp = unsafe { &*udp };
    let dport = be16(udp[2], udp[3]);
    let Some(bmc) = BMCS.get_ptr(dport) else {
        return Handled::NotOurs;
    };
    let mut macs = [0u8; 12];
    macs.copy_from_slice(&eth[..12]);
    let hdr = Headers {
        macs,
        addrs,
        v6,
        sport: be16(udp[0], udp[1]),
        dport,
    };
    let v = serve(
        ctx,
        &hdr,
        bmc,
        be16(udp[4], udp[5]) as usize,
        ip_payload_len,
    );
    Handled::Ours(dport, v)
}

/// The packet is addressed to a BMC port: answer it, pass it or drop it.
#[inline(always)]
fn serve(
    ctx: &XdpContext,
    hdr: &Headers,
    bmc: *const BmcState,
    udp_len: usize,
    ip_payload_len: usize,
) -> Verdict {
    let l3_len = if hdr.v6 { IP6_LEN } else { IP4_LEN };
    let poff = ETH_LEN + l3_len + UDP_LEN;
    // Broadcast or multicast (group bit of the destination MAC): a reply from XDP would carry
    // the group address as its source. The agent answers those from its own address.
    if hdr.macs[0] & 1 != 0 {
        return Verdict::Pass;
    }
    // A UDP length that the IP header or the frame cannot hold: garbage the stack drops too.
    if udp_len < UDP_LEN || udp_len > ip_payload_len {
        return Verdict::Drop;
    }
    let plen = udp_len - UDP_LEN;
    if ctx.data() + poff + plen > ctx.data_end() {
        return Verdict::Drop;
    }
    // Every RMCP message starts with version 6 (ASF 2.0 §3.2.2.1).
    let Some(rmcp) = ptr_at::<[u8; 4]>(ctx, poff) else {
        return Verdict::Drop;
    };
    let rmcp = unsafe { *rmcp };
    if rmcp[0] != RMCP_VERSION {
        return Verdict::Drop;
    }
    // Only the "no ack" sequence: an ack request needs an RMCP ack first (userspace).
    if rmcp[1] != 0 || rmcp[2] != RMCP_SEQ_NO_ACK {
        return Verdict::Pass;
    }
    let mut out = Out::new();
    // Building the reply and rewriting the frame are separate BPF functions: each gets its own
    // stack frame, which keeps every frame well under the 512-byte limit.
    let kind = if plen == V15_SESSION_CHASSIS_LEN {
        session_reply(ctx.ctx, hdr, bmc, poff, &mut out)
    } else {
        build_reply(ctx.ctx, bmc, plen, poff, &mut out)
    };
    if kind == 0 {
        return Verdict::Pass;
    }
    match transmit(ctx.ctx, hdr, &out, plen) {
        Verdict::Tx => {}
        v => return v,
    }
    count(|c| match kind {
        ANSWER_PING => c.ping_answered += 1,
        ANSWER_AUTH_CAPS => c.auth_caps_answered += 1,
        ANSWER_CHASSIS_STATUS => c.chassis_status_answered += 1,
        _ => c.cipher_suites_answered += 1,
    });
    Verdict::Tx
}

/// Builds the reply payload into `out`; returns the `ANSWER_*` kind, or 0 to pass the packet.
#[inline(never)]
fn build_reply(
    raw: *mut aya_ebpf::bindings::xdp_md,
    bmc: *const BmcState,
    plen: usize,
    poff: usize,
    out: &mut Out,
) -> u32 {
    let ctx = &XdpContext::new(raw);
    // SAFETY: the map value stays valid for the whole program run (RCU); fields are bytes.
    let state = unsafe { &*bmc };
    let answered = match plen {
        PING_LEN => load::<PING_LEN>(ctx, poff).and_then(|r| ping(r, out)),
        n if n == V15_HDR + AUTH_CAPS_MSG => {
            load::<{ V15_HDR + AUTH_CAPS_MSG }>(ctx, poff).and_then(|r| auth_caps(r, state, out))
        }
        n if n == V15_HDR + CIPHER_MSG => {
            load::<{ V15_HDR + CIPHER_MSG }>(ctx, poff).and_then(|r| cipher_v15(r, state, out))
        }
        n if n == V20_HDR + CIPHER_MSG => {
            load::<{ V20_HDR + CIPHER_MSG }>(ctx, poff).and_then(|r| cipher_v20(r, state, out))
        }
        _ => None,
    };
    match answered {
        Some(Answer::Ping) => ANSWER_PING,
        Some(Answer::AuthCaps) => ANSWER_AUTH_CAPS,
        Some(Answer::CipherSuites) => ANSWER_CIPHER_SUITES,
        None => 0,
    }
}

const ANSWER_PING: u32 = 1;
const ANSWER_AUTH_CAPS: u32 = 2;
const ANSWER_CIPHER_SUITES: u32 = 3;
const ANSWER_CHASSIS_STATUS: u32 = 4;

/// IPMI 1.5 in-session Get Chassis Status: RMCP (4), auth type, seq (4), sid (4), auth code
/// (16), length, message (7).
const V15_SESSION_CHASSIS_LEN: usize = 37;
const AUTH_TYPE_MD5: u8 = 0x02;
const AUTH_TYPE_PASSWORD: u8 = 0x04;
const PRIV_USER: u8 = 2;

#[inline(always)]
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Atomics on map memory shared with userspace. `core::sync::atomic` offers no
/// read-modify-write on this target, the intrinsics lower to the BPF atomic instructions
/// (cmpxchg, fetch-add: `-C target-cpu=v3`).
mod atomic {
    use core::intrinsics::{AtomicOrdering::SeqCst, atomic_cxchg, atomic_xadd};

    /// An aligned 64-bit load is single-copy atomic; ordering comes from the cmpxchg that
    /// follows (BPF has no seq_cst plain loads before cpu v4).
    #[inline(always)]
    pub unsafe fn load_u64(p: *mut u64) -> u64 {
        unsafe { core::ptr::read_volatile(p) }
    }

    #[inline(always)]
    pub unsafe fn store_u64(p: *mut u64, v: u64) {
        unsafe { core::ptr::write_volatile(p, v) }
    }

    #[inline(always)]
    pub unsafe fn cas_u64(p: *mut u64, old: u64, new: u64) -> bool {
        unsafe { atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(p, old, new).1 }
    }

    #[inline(always)]
    pub unsafe fn fetch_add_u32(p: *mut u32, v: u32) -> u32 {
        unsafe { atomic_xadd::<u32, u32, { SeqCst }>(p, v) }
    }

    #[inline(always)]
    pub unsafe fn fetch_add_u64(p: *mut u64, v: u64) -> u64 {
        unsafe { atomic_xadd::<u64, u64, { SeqCst }>(p, v) }
    }
}

/// The IPMI 1.5 auth code (IPMI 2.0 §22.17.1): MD5(password | session id | message |
/// sequence | password), or the password itself.
#[inline(always)]
fn auth_code<const L: usize>(
    auth: u8,
    password: &[u8; 16],
    sid: u32,
    msg: &[u8; L],
    seq: u32,
    out: &mut [u8; 16],
) {
    if auth == AUTH_TYPE_PASSWORD {
        *out = *password;
    } else {
        auth_code_md5(password, msg, (sid as u64) | ((seq as u64) << 32), out);
    }
}

/// Get Chassis Status inside a published IPMI 1.5 session. Follows the protocol in
/// `virtbmc_common::session`: authenticate first, then commit the inbound sequence number and
/// take an outbound one with atomics shared with the agent. Returns the answer kind or 0.
#[inline(never)]
fn session_reply(
    raw: *mut aya_ebpf::bindings::xdp_md,
    hdr: &Headers,
    bmc: *const BmcState,
    poff: usize,
    out: &mut Out,
) -> u32 {
    let ctx = &XdpContext::new(raw);
    let Some(r) = load::<V15_SESSION_CHASSIS_LEN>(ctx, poff) else {
        return 0;
    };
    let auth = r[4];
    if r[3] != RMCP_CLASS_IPMI || (auth != AUTH_TYPE_MD5 && auth != AUTH_TYPE_PASSWORD) {
        return 0;
    }
    let seq = le32(&r[5..9]);
    let sid = le32(&r[9..13]);
    const M: usize = 30;
    if sid == 0 || r[29] != 7 {
        return 0;
    }
    // Get Chassis Status (IPMI 2.0 §28.2) to the BMC, no data, both checksums right.
    if r[M] != BMC_SA || r[M + 1] >> 2 != NETFN_CHASSIS || r[M + 5] != CMD_GET_CHASSIS_STATUS {
        return 0;
    }
    if r[M].wrapping_add(r[M + 1]).wrapping_add(r[M + 2]) != 0
        || r[M + 3]
            .wrapping_add(r[M + 4])
            .wrapping_add(r[M + 5])
            .wrapping_add(r[M + 6])
            != 0
    {
        return 0;
    }
    let Some(slot) = (unsafe { SESSION_IDS.get(sid) }).copied() else {
        return 0;
    };
    let Some(s) = SESSIONS.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: array slot memory is stable; shared fields are only touched with atomics or
    // volatile reads, immutable ones are fixed while the state is ACTIVE.
    let st = unsafe { core::ptr::read_volatile(&(*s).state) };
    let s_ref = unsafe { &*s };
    if st != SESSION_ACTIVE
        || s_ref.session_id != sid
        || s_ref.port != hdr.dport
        || s_ref.auth_type != auth
        || unsafe { core::ptr::read_volatile(&(*s).privilege) } < PRIV_USER
        || s_ref.peer_port != hdr.sport
    {
        return 0;
    }
    let peer_ok = if hdr.v6 {
        s_ref.family == 6 && s_ref.peer == hdr.addrs[0..16]
    } else {
        s_ref.family == 4 && s_ref.peer[..4] == hdr.addrs[0..4]
    };
    if !peer_ok {
        return 0;
    }
    // A session idle past its limit is the engine's to expire (its timer may not have run
    // yet): pass the packet instead of keeping the session alive from here.
    let now = unsafe { bpf_ktime_get_ns() };
    let last = unsafe { atomic::load_u64(&raw mut (*s).last_activity_ns) };
    if now.saturating_sub(last) >= s_ref.idle_timeout_ms as u64 * 1_000_000 {
        return 0;
    }
    let password = s_ref.password;
    let mut msg = [0u8; 7];
    msg.copy_from_slice(&r[M..M + 7]);
    let mut code = [0u8; 16];
    auth_code(auth, &password, sid, &msg, seq, &mut code);
    let mut diff = 0u8;
    let mut i = 0;
    while i < 16 {
        diff |= code[i] ^ r[13 + i];
        i += 1;
    }
    if diff != 0 {
        return 0;
    }
    // Commit the sequence number (bounded compare-and-swap, as the agent does).
    // SAFETY (all four): aligned fields inside the map value, shared only through atomics.
    let window = unsafe { &raw mut (*s).window };
    let mut committed = false;
    let mut tries = 0;
    while tries < CAS_TRIES {
        let old = unsafe { atomic::load_u64(window) };
        if !window_check(old, seq) {
            return 0;
        }
        if unsafe { atomic::cas_u64(window, old, window_commit(old, seq)) } {
            committed = true;
            break;
        }
        tries += 1;
    }
    if !committed {
        return 0;
    }
    let outbound = unsafe { atomic::fetch_add_u32(&raw mut (*s).outbound, 1) };
    unsafe {
        atomic::store_u64(&raw mut (*s).last_activity_ns, now);
        atomic::fetch_add_u64(&raw mut (*s).fast_answers, 1);
    }

    // The response message: header, completion code, [power, 0, 0], checksum.
    let power = unsafe { core::ptr::read_volatile(&(*bmc).power_on) } & 1;
    let b1 = (((r[M + 1] >> 2) + 1) << 2) | (r[M + 4] & 0x03);
    let b4 = (r[M + 4] & 0xFC) | (r[M + 1] & 0x03);
    let mut rmsg = [
        r[M + 3],
        b1,
        0,
        r[M],
        b4,
        r[M + 5],
        0x00,
        power,
        0x00,
        0x00,
        0,
    ];
    rmsg[2] = 0u8.wrapping_sub(rmsg[0].wrapping_add(rmsg[1]));
    let mut sum = 0u8;
    let mut i = 3;
    while i < 10 {
        sum = sum.wrapping_add(rmsg[i]);
        i += 1;
    }
    rmsg[10] = 0u8.wrapping_sub(sum);
    let mut rcode = [0u8; 16];
    auth_code(auth, &password, sid, &rmsg, outbound, &mut rcode);
    out.put_all(&[RMCP_VERSION, 0, RMCP_SEQ_NO_ACK, RMCP_CLASS_IPMI, auth]);
    out.put_all(&outbound.to_le_bytes());
    out.put_all(&sid.to_le_bytes());
    out.put_all(&rcode);
    out.put(rmsg.len() as u8);
    out.put_all(&rmsg);
    ANSWER_CHASSIS_STATUS
}

/// The `N`-byte UDP payload, in place (valid until the frame is resized).
#[inline(always)]
fn load<'a, const N: usize>(ctx: &XdpContext, poff: usize) -> Option<&'a [u8; N]> {
    let p = ptr_at::<[u8; N]>(ctx, poff)?;
    // SAFETY: bounds checked by ptr_at.
    Some(unsafe { &*p })
}

enum Answer {
    Ping,
    AuthCaps,
    CipherSuites,
}

/// The reply payload under construction. Index masks keep every write provably in bounds.
struct Out {
    buf: [u8; OUT_CAP],
    len: usize,
    /// Running sum of the bytes covered by the IPMI message's second checksum.
    sum: u8,
}

impl Out {
    #[inline(always)]
    fn new() -> Self {
        Self {
            buf: [0; OUT_CAP],
            len: 0,
            sum: 0,
        }
    }

    #[inline(always)]
    fn put(&mut self, b: u8) {
        // Volatile keeps the buffer in memory: scalarized, it overflows the 512-byte stack.
        // SAFETY: the index is masked into the buffer.
        unsafe {
            core::ptr::write_volatile(self.buf.as_mut_ptr().add(self.len & (OUT_CAP - 1)), b)
        };
        self.len += 1;
    }

    #[inline(always)]
    fn put_all(&mut self, bs: &[u8]) {
        for &b in bs {
            self.put(b);
        }
    }

    /// Puts a byte covered by the message's second checksum.
    #[inline(always)]
    fn put_sum(&mut self, b: u8) {
        self.sum = self.sum.wrapping_add(b);
        self.put(b);
    }
}

/// ASF Presence Ping (12 bytes) -> Presence Pong (28 bytes).
#[inline(always)]
fn ping<const N: usize>(r: &[u8; N], out: &mut Out) -> Option<Answer> {
    if r[3] != RMCP_CLASS_ASF
        || r[4..8] != ASF_IANA
        || r[8] != ASF_TYPE_PING
        || r[10] != 0
        || r[11] != 0
    {
        return None;
    }
    out.put_all(&[RMCP_VERSION, 0, RMCP_SEQ_NO_ACK, RMCP_CLASS_ASF]);
    out.put_all(&ASF_IANA);
    out.put_all(&[ASF_TYPE_PONG, r[9], 0, 0x10]);
    out.put_all(&ASF_IANA);
    out.put_all(&[0, 0, 0, 0, ASF_ENTITIES_IPMI, 0, 0, 0, 0, 0, 0, 0]);
    Some(Answer::Ping)
}

/// Session-less IPMI 1.5 wrapper: auth NONE, sequence 0, session 0, message length `msg`.
#[inline(always)]
fn is_v15_sessionless<const N: usize>(r: &[u8; N], msg: usize) -> bool {
    r[3] == RMCP_CLASS_IPMI && r[4] == AUTH_TYPE_NONE && r[5..13] == [0; 8] && r[13] as usize == msg
}

/// Session-less RMCP+ wrapper: IPMI payload, session 0, sequence 0, payload length `msg`.
#[inline(always)]
fn is_v20_sessionless<const N: usize>(r: &[u8; N], msg: usize) -> bool {
    r[3] == RMCP_CLASS_IPMI
        && r[4] == AUTH_TYPE_RMCPP
        && r[5] == PAYLOAD_TYPE_IPMI
        && r[6..14] == [0; 8]
        && r[14] as usize == msg
        && r[15] == 0
}

/// An App request to the BMC with both checksums right (IPMI 2.0 §13.8). `M` is the message's
/// offset in the payload, `L` its length.
#[inline(always)]
fn app_request<const N: usize, const M: usize, const L: usize>(r: &[u8; N], cmd: u8) -> bool {
    if r[M] != BMC_SA || r[M + 1] >> 2 != NETFN_APP || r[M + 5] != cmd {
        return false;
    }
    if r[M].wrapping_add(r[M + 1]).wrapping_add(r[M + 2]) != 0 {
        return false;
    }
    let mut s = 0u8;
    let mut i = 3;
    while i < L && M + i < N {
        s = s.wrapping_add(r[M + i]);
        i += 1;
    }
    s == 0
}

/// The response message header up to and including the completion code (IPMI 2.0 §13.8).
#[inline(always)]
fn reply_head<const N: usize, const M: usize>(r: &[u8; N], out: &mut Out) {
    let rs_addr = r[M];
    let netfn_lun = r[M + 1];
    let rq_addr = r[M + 3];
    let seq_lun = r[M + 4];
    let b1 = (((netfn_lun >> 2) + 1) << 2) | (seq_lun & 0x03);
    out.put(rq_addr);
    out.put(b1);
    out.put(0u8.wrapping_sub(rq_addr.wrapping_add(b1)));
    out.sum = 0;
    out.put_sum(rs_addr);
    out.put_sum((seq_lun & 0xFC) | (netfn_lun & 0x03));
    out.put_sum(r[M + 5]);
    out.put_sum(0x00);
}

#[inline(always)]
fn reply_end(out: &mut Out) {
    let c = 0u8.wrapping_sub(out.sum);
    out.put(c);
}

#[inline(always)]
fn channel_ok(ch: u8) -> bool {
    let c = ch & 0x7F;
    c == CHANNEL_CURRENT || c == CHANNEL_LAN
}

/// Get Channel Authentication Capabilities, IPMI 1.5 session-less (IPMI 2.0 §22.13).
#[inline(always)]
fn auth_caps<const N: usize>(r: &[u8; N], st: &BmcState, out: &mut Out) -> Option<Answer> {
    const M: usize = V15_HDR;
    if !is_v15_sessionless(r, AUTH_CAPS_MSG)
        || !app_request::<N, M, AUTH_CAPS_MSG>(r, CMD_GET_CHANNEL_AUTH_CAPS)
    {
        return None;
    }
    let ch = r[M + 6];
    // Callback..Administrator. OEM (5) is left to the engine, which refuses it: the client
    // must see one behaviour whichever side answers.
    let privilege = r[M + 7] & 0x0F;
    if !channel_ok(ch) || privilege == 0 || privilege > 4 {
        return None;
    }
    let ext = ch & 0x80 != 0;
    let mut auth = AUTH_CAP_MD5 | AUTH_CAP_PASSWORD;
    if ext {
        auth |= AUTH_CAP_EXTENDED;
    }
    if st.allow_auth_none != 0 {
        auth |= AUTH_CAP_NONE;
    }
    out.put_all(&[
        RMCP_VERSION,
        0,
        RMCP_SEQ_NO_ACK,
        RMCP_CLASS_IPMI,
        AUTH_TYPE_NONE,
    ]);
    out.put_all(&[0; 8]);
    out.put(7 + 8 + 1);
    reply_head::<N, M>(r, out);
    out.put_sum(CHANNEL_LAN);
    out.put_sum(auth);
    out.put_sum(LOGIN_NON_NULL_USERS);
    out.put_sum(if ext { EXT_CAP_V15_V20 } else { 0 });
    out.put_sum(0);
    out.put_sum(0);
    out.put_sum(0);
    out.put_sum(0);
    reply_end(out);
    Some(Answer::AuthCaps)
}

/// Validates a Get Channel Cipher Suites request at offset `M` and returns the record window
/// to send: (first record byte, byte count).
#[inline(always)]
fn cipher_window<const N: usize, const M: usize>(
    r: &[u8; N],
    st: &BmcState,
) -> Option<(usize, usize)> {
    if !app_request::<N, M, CIPHER_MSG>(r, CMD_GET_CHANNEL_CIPHER_SUITES) {
        return None;
    }
    let ch = r[M + 6];
    let payload_type = r[M + 7];
    let index = r[M + 8];
    // Only "list by cipher suite" of the IPMI payload: the algorithm list goes to userspace.
    if !channel_ok(ch) || payload_type != 0 || index & 0x80 == 0 {
        return None;
    }
    let len = (st.cipher_len as usize).min(MAX_CIPHER_RECORDS);
    let start = ((index & 0x3F) as usize) * 16;
    if start >= len {
        return Some((0, 0));
    }
    let n = (len - start).min(16);
    Some((start, n))
}

/// Response data of Get Channel Cipher Suites: channel 1 then up to 16 record bytes.
#[inline(always)]
fn cipher_data(st: &BmcState, out: &mut Out, start: usize, n: usize) {
    out.put_sum(CHANNEL_LAN);
    let mut i = 0;
    while i < 16 {
        if i < n {
            out.put_sum(st.cipher_records[(start + i) & (MAX_CIPHER_RECORDS - 1)]);
        }
        i += 1;
    }
}

#[inline(always)]
fn cipher_v15<const N: usize>(r: &[u8; N], st: &BmcState, out: &mut Out) -> Option<Answer> {
    const M: usize = V15_HDR;
    if !is_v15_sessionless(r, CIPHER_MSG) {
        return None;
    }
    let (start, n) = cipher_window::<N, M>(r, st)?;
    out.put_all(&[
        RMCP_VERSION,
        0,
        RMCP_SEQ_NO_ACK,
        RMCP_CLASS_IPMI,
        AUTH_TYPE_NONE,
    ]);
    out.put_all(&[0; 8]);
    out.put((7 + 1 + n + 1) as u8);
    reply_head::<N, M>(r, out);
    cipher_data(st, out, start, n);
    reply_end(out);
    Some(Answer::CipherSuites)
}

#[inline(always)]
fn cipher_v20<const N: usize>(r: &[u8; N], st: &BmcState, out: &mut Out) -> Option<Answer> {
    const M: usize = V20_HDR;
    if !is_v20_sessionless(r, CIPHER_MSG) {
        return None;
    }
    let (start, n) = cipher_window::<N, M>(r, st)?;
    out.put_all(&[
        RMCP_VERSION,
        0,
        RMCP_SEQ_NO_ACK,
        RMCP_CLASS_IPMI,
        AUTH_TYPE_RMCPP,
    ]);
    out.put(PAYLOAD_TYPE_IPMI);
    out.put_all(&[0; 8]);
    out.put((7 + 1 + n + 1) as u8);
    out.put(0);
    reply_head::<N, M>(r, out);
    cipher_data(st, out, start, n);
    reply_end(out);
    Some(Answer::CipherSuites)
}

/// One's-complement sum of big-endian 16-bit words.
#[inline(always)]
fn csum_add(mut acc: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        acc += be16(bytes[i], bytes[i + 1]) as u32;
        i += 2;
    }
    acc
}

#[inline(always)]
fn csum_fold(mut acc: u32) -> u16 {
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    !(acc as u16)
}

/// Rewrites the frame into the reply: swapped addresses and ports, the payload in `out`.
/// `plen` is the request's UDP payload length. If the kernel refuses the first resize the
/// request is passed on unchanged; a failure after it has changed the frame drops it (neither
/// happens in practice: XDP guarantees 256 bytes of headroom).
#[inline(never)]
fn transmit(
    raw: *mut aya_ebpf::bindings::xdp_md,
    hdr: &Headers,
    out: &Out,
    plen: usize,
) -> Verdict {
    let ctx = &XdpContext::new(raw);
    let rlen = out.len;
    if rlen == 0 || rlen > OUT_CAP {
        return Verdict::Pass;
    }
    let l3_len = if hdr.v6 { IP6_LEN } else { IP4_LEN };
    let hlen = ETH_LEN + l3_len + UDP_LEN;
    // A helper, not data_end - data: LLVM may fold that into pointer arithmetic the
    // verifier refuses.
    let old_len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as usize;
    // Grow (negative delta) or shrink at the head so that the payload fits exactly.
    let delta = plen as i32 - rlen as i32;
    if delta != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Verdict::Pass;
    }
    // Trailing bytes after the UDP datagram (Ethernet padding) are cut.
    let new_len = (old_len as i32 - delta) as usize;
    let want = hlen + rlen;
    if new_len > want && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((new_len - want) as i32)) } != 0 {
        return Verdict::Drop;
    }
    let udp_len = (UDP_LEN + rlen) as u16;
    let ok = if hdr.v6 {
        write_v6(ctx, hdr, out, udp_len)
    } else {
        write_v4(ctx, hdr, udp_len)
    };
    // SAFETY: out.buf is initialized, rlen is in 1..=OUT_CAP.
    let ok = ok
        && unsafe {
            bpf_xdp_store_bytes(
                ctx.ctx,
                hlen as u32,
                out.buf.as_ptr() as *mut _,
                rlen as u32,
            ) == 0
        };
    if ok { Verdict::Tx } else { Verdict::Drop }
}

/// A bounds-checked mutable view of the first `N` bytes of the (resized) frame.
#[inline(always)]
fn head_mut<'a, const N: usize>(ctx: &XdpContext) -> Option<&'a mut [u8; N]> {
    let p = ptr_at::<[u8; N]>(ctx, 0)?;
    // SAFETY: bounds checked; no other reference into the frame is alive after the resize.
    Some(unsafe { &mut *(p as *mut [u8; N]) })
}

#[inline(always)]
fn write_eth_udp(h: &mut [u8], hdr: &Headers, udp_off: usize, udp_len: u16) {
    h[0..6].copy_from_slice(&hdr.macs[6..12]);
    h[6..12].copy_from_slice(&hdr.macs[0..6]);
    h[12..14].copy_from_slice(&(if hdr.v6 { ETH_P_IPV6 } else { ETH_P_IP }).to_be_bytes());
    h[udp_off..udp_off + 2].copy_from_slice(&hdr.dport.to_be_bytes());
    h[udp_off + 2..udp_off + 4].copy_from_slice(&hdr.sport.to_be_bytes());
    h[udp_off + 4..udp_off + 6].copy_from_slice(&udp_len.to_be_bytes());
    h[udp_off + 6] = 0;
    h[udp_off + 7] = 0;
}

/// Ethernet, IPv4 and UDP headers of the reply. UDP checksum 0 is legal for IPv4 (RFC 768).
#[inline(always)]
fn write_v4(ctx: &XdpContext, hdr: &Headers, udp_len: u16) -> bool {
    let Some(h) = head_mut::<{ ETH_LEN + IP4_LEN + UDP_LEN }>(ctx) else {
        return false;
    };
    write_eth_udp(h, hdr, ETH_LEN + IP4_LEN, udp_len);
    let tot = IP4_LEN as u16 + udp_len;
    let mut ip = [0u8; IP4_LEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip[6] = 0x40; // DF, as Linux sends UDP
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    ip[12..16].copy_from_slice(&hdr.addrs[4..8]);
    ip[16..20].copy_from_slice(&hdr.addrs[0..4]);
    let c = csum_fold(csum_add(0, &ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    h[ETH_LEN..ETH_LEN + IP4_LEN].copy_from_slice(&ip);
    true
}

/// Ethernet, IPv6 and UDP headers of the reply, with the full UDP checksum (RFC 8200 §8.1).
#[inline(always)]
fn write_v6(ctx: &XdpContext, hdr: &Headers, out: &Out, udp_len: u16) -> bool {
    let Some(h) = head_mut::<{ ETH_LEN + IP6_LEN + UDP_LEN }>(ctx) else {
        return false;
    };
    let u = ETH_LEN + IP6_LEN;
    write_eth_udp(h, hdr, u, udp_len);
    h[ETH_LEN..ETH_LEN + 8].copy_from_slice(&[0x60, 0, 0, 0, 0, 0, IPPROTO_UDP, 64]);
    h[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&udp_len.to_be_bytes());
    h[ETH_LEN + 8..ETH_LEN + 24].copy_from_slice(&hdr.addrs[16..32]);
    h[ETH_LEN + 24..ETH_LEN + 40].copy_from_slice(&hdr.addrs[0..16]);
    // Pseudo-header (addresses, length, next header), UDP header, payload. `out.buf` is zero
    // past the payload, so summing all of it adds nothing extra.
    let mut acc = csum_add(0, &hdr.addrs);
    acc += 2 * udp_len as u32 + IPPROTO_UDP as u32;
    acc += hdr.sport as u32 + hdr.dport as u32;
    acc = csum_add(acc, &out.buf);
    let mut c = csum_fold(acc);
    if c == 0 {
        c = 0xFFFF;
    }
    h[u + 6..u + 8].copy_from_slice(&c.to_be_bytes());
    true
}
