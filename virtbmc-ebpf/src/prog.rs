//! The virtbmc XDP program: answers the stateless pre-session traffic of every BMC the agent
//! serves straight from the `BMCS` map, and passes everything else to the agent's sockets.
//!
//! Answered (see `virtbmc-common` for the maps and PROTOCOL.md for the messages):
//! - ASF Presence Ping (DMTF ASF 2.0 §3.2.4.3) -> Presence Pong.
//! - Session-less Get Channel Authentication Capabilities (IPMI 2.0 §22.13), IPMI 1.5 framing.
//! - Session-less Get Channel Cipher Suites (IPMI 2.0 §22.15), IPMI 1.5 or RMCP+ framing.
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
    btf_maps::{HashMap, PerCpuArray},
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_store_bytes},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use virtbmc_common::{BmcState, Counters, MAX_BMCS, MAX_CIPHER_RECORDS, ipmi::*};

#[btf_map]
static BMCS: HashMap<u16, BmcState, { MAX_BMCS as usize }> = HashMap::new();

#[btf_map]
static COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

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
    let kind = build_reply(ctx.ctx, bmc, plen, poff, &mut out);
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
    let old_len = ctx.data_end() - ctx.data();
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
