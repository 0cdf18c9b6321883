//! Get Chassis Status inside an IPMI 1.5 session answered by XDP. This module fixes
//! the shared state and the protocol the engine and the program must both follow. The program
//! implements it (`virtbmc-ebpf/src/prog.rs`, `session_reply`), the loader implements the
//! userspace half (`virtbmc::fastpath::SessionSlots`, and `FastPath::session_publisher`, a
//! `SessionPublisher`), and the engine routes a published session's sequence state through
//! it (`engine::session::SharedSession`). The program answers only for sessions the agent
//! publishes: the engine offers each activated session (`Bmc::poll_publish`), the agent
//! writes it into the maps and hands the slot back (`Bmc::attach_shared`).
//!
//! # Why not a `bpf_spin_lock` in a hash value
//! Userspace cannot take a `bpf_spin_lock`: `BPF_F_LOCK` makes one lookup or one update
//! atomic, not a read-modify-write. An engine that reads the window, decides, and writes it
//! back races the program between the two syscalls; two replies with the same outbound
//! sequence number follow, and freeipmi rejects a repeated one. So the state both sides
//! modify is plain shared memory with CPU atomics on both sides:
//!
//! # Maps
//! | name (pin) | kind | key | value | writer |
//! |---|---|---|---|---|
//! | `SESSION_IDS` (`session_ids`) | hash, [`MAX_SESSIONS`] | `u32` session id (host order of the LE wire value) | `u32` slot index | engine only |
//! | `SESSIONS` (`sessions`) | array, [`MAX_SESSIONS`], `BPF_F_MMAPABLE` | `u32` slot | [`V15Session`] | both, by the rules below |
//!
//! The agent `mmap`s `SESSIONS` (`MAP_SHARED`, read/write) and accesses the atomic fields with
//! `AtomicU32`/`AtomicU64` on the mapped memory; the program uses the BPF atomic
//! instructions (`-C target-cpu=v3`: fetch-add, cmpxchg) on the same words.
//!
//! # Field ownership
//! - Immutable while `state == ACTIVE`: `session_id`, `port`, `auth_type`, `peer`,
//!   `peer_port`, `family`, `password`, `idle_timeout_ms`. Written by the engine before it publishes.
//! - `state`, `privilege`: engine writes (atomic store, Release); program reads (Acquire).
//! - `window`, `outbound`, `last_activity_ns`, `fast_answers`: both sides, atomics only.
//!
//! # Protocol
//! 1. **Publish** (engine, right after a successful Activate Session, IPMI 2.0 §22.17):
//!    take a FREE slot, fill the immutable fields, `window = pack(inbound_start - 1, 1)`
//!    (exactly `SeqWindow::new(inbound_start, 8, 8)`), `outbound` = the next outbound number,
//!    `privilege`, `last_activity_ns = now`; then store `state = ACTIVE` (Release); then insert
//!    `SESSION_IDS[id] = slot`. From this moment the engine keeps no private copy of the window
//!    or the outbound counter for that session: it uses the slot for every packet.
//! 2. **Inbound sequence** (both sides, IPMI 2.0 §6.12.13, ±8): only after the packet's auth
//!    code verified, `loop { old = window.load(); if !window_check(old, seq) { reject };
//!    if window.cas(old, window_commit(old, seq)) { break } }` with [`window_check`] /
//!    [`window_commit`] below, which are exactly the engine's `SeqWindow::check/commit`.
//!    The program gives up after [`CAS_TRIES`] failed exchanges and passes the packet, which is
//!    then decided by the engine (nothing was committed).
//! 3. **Outbound sequence** (both sides): `seq = outbound.fetch_add(1)` for each reply that
//!    carries one.
//! 4. **Activity** (both sides): the program stores `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) in
//!    `last_activity_ns` on every answer, the engine on every packet it handles in the
//!    session; the engine's idle timeout uses the later of its own `last_activity` and this
//!    one (read CLOCK_MONOTONIC with `clock_gettime` to compare). The program answers only
//!    while `now - last_activity_ns < idle_timeout_ms`: a session past its deadline is the
//!    engine's to expire, even if the engine's timer has not run yet.
//! 5. **Privilege** (engine): Set Session Privilege stores the new level. The program answers
//!    Get Chassis Status only at USER (2) or above, as the engine's privilege table requires;
//!    below it passes (the engine answers 0xD4).
//! 6. **Close / expire** (engine): store `state = CLOSING`, delete `SESSION_IDS[id]`; the slot
//!    becomes FREE (and reusable) only on a later sweep, at least one second on: any program
//!    run that found the old index has finished by then. The program checks
//!    `state == ACTIVE && session_id == id` after the lookup, so a reused slot never answers
//!    for an old id.
//!
//! # What the program answers with this state
//! An IPMI 1.5 packet to a BMC port with auth type MD5 or straight password, a non-zero
//! session id found as above, source address and port equal to the session's peer, auth type
//! equal to the session's, a message that is Get Chassis Status (netFn 0x00, cmd 0x01, no
//! data, rsAddr 0x20, both checksums right), an auth code that verifies (MD5 over password,
//! session id, message, sequence, password; or the password itself), and a sequence number
//! the window accepts. The reply: auth type, `seq = outbound.fetch_add(1)`, the session id,
//! the auth code computed the same way over the reply message with that sequence, message
//! length, and the response message with data `[power_on, 0x00, 0x00]` from `BMCS[port]`:
//! exactly what the engine's `seal` produces. Anything else passes untouched.

/// Maximum number of published IPMI 1.5 sessions per node.
pub const MAX_SESSIONS: u32 = 16384;
/// Bounded compare-and-swap attempts in the program before it passes the packet on.
pub const CAS_TRIES: u32 = 4;
/// IPMI 1.5 sequence window, both directions (IPMI 2.0 §6.12.13).
pub const WINDOW_V15: u32 = 8;

pub const SESSION_FREE: u32 = 0;
pub const SESSION_ACTIVE: u32 = 1;
pub const SESSION_CLOSING: u32 = 2;

pub const SESSION_IDS_MAP: &str = "SESSION_IDS";
pub const SESSION_IDS_PIN: &str = "session_ids";
pub const SESSIONS_MAP: &str = "SESSIONS";
pub const SESSIONS_PIN: &str = "sessions";

/// One published IPMI 1.5 session: a slot of the mmapable array `SESSIONS`. 80 bytes,
/// 8-byte aligned, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct V15Session {
    /// [`SESSION_FREE`], [`SESSION_ACTIVE`] or [`SESSION_CLOSING`].
    pub state: u32,
    /// The session id this slot serves (as a host-order `u32` of the LE wire bytes).
    pub session_id: u32,
    /// The BMC's UDP port (host order).
    pub port: u16,
    /// 0x02 MD5 or 0x04 straight password; anything else is never answered by the program.
    pub auth_type: u8,
    /// Current session privilege, 1..=4 (IPMI 2.0 §22.18).
    pub privilege: u8,
    /// 4 for IPv4 (address in the first 4 bytes of `peer`), 6 for IPv6.
    pub family: u8,
    pub _pad0: u8,
    /// The client's UDP port (host order).
    pub peer_port: u16,
    pub peer: [u8; 16],
    /// The user's password, zero-padded to 16 bytes (the IPMI 1.5 key).
    pub password: [u8; 16],
    /// Inbound window, [`window_pack`]`(highest, seen)`.
    pub window: u64,
    /// Next outbound session sequence number.
    pub outbound: u32,
    /// The session's idle limit in milliseconds: past `last_activity_ns` plus this, the
    /// program no longer answers (the engine expires the session on its own timer).
    pub idle_timeout_ms: u32,
    /// CLOCK_MONOTONIC nanoseconds of the last activity in this session, the program's
    /// answers and the engine's alike.
    pub last_activity_ns: u64,
    /// Answers the program gave in this session.
    pub fast_answers: u64,
}

/// The window word: the highest accepted number in the low half, the bitmap of accepted
/// numbers at and below it (bit i = `highest - i`) in the high half.
#[inline(always)]
pub const fn window_pack(highest: u32, seen: u32) -> u64 {
    (highest as u64) | ((seen as u64) << 32)
}

/// Whether `seq` is acceptable: at most `ahead` past the highest number accepted, or less
/// than `behind` (and 32) under it and not used yet. IPMI 2.0 §6.12.13: 1.5 sessions use ±8;
/// the engine uses 16 behind and 15 ahead for RMCP+, as OpenIPMI does.
#[inline(always)]
pub const fn window_accepts(window: u64, seq: u32, behind: u32, ahead: u32) -> bool {
    let highest = window as u32;
    let seen = (window >> 32) as u32;
    let fwd = seq.wrapping_sub(highest);
    if fwd != 0 && fwd <= ahead {
        return true;
    }
    let back = highest.wrapping_sub(seq);
    back < behind && back < 32 && seen & (1 << back) == 0
}

/// The window after accepting `seq` (call only when [`window_accepts`] holds with the same
/// `ahead`).
#[inline(always)]
pub const fn window_advance(window: u64, seq: u32, ahead: u32) -> u64 {
    let highest = window as u32;
    let seen = (window >> 32) as u32;
    let fwd = seq.wrapping_sub(highest);
    if fwd != 0 && fwd <= ahead {
        let seen = if fwd >= 32 { 0 } else { seen << fwd };
        window_pack(seq, seen | 1)
    } else {
        let back = highest.wrapping_sub(seq);
        let seen = if back < 32 { seen | (1 << back) } else { seen };
        window_pack(highest, seen)
    }
}

/// Whether `seq` is acceptable in an IPMI 1.5 session (not a replay, within ±[`WINDOW_V15`]).
#[inline(always)]
pub const fn window_check(window: u64, seq: u32) -> bool {
    window_accepts(window, seq, WINDOW_V15, WINDOW_V15)
}

/// The IPMI 1.5 window after accepting `seq` (call only when [`window_check`] holds).
#[inline(always)]
pub const fn window_commit(window: u64, seq: u32) -> u64 {
    window_advance(window, seq, WINDOW_V15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<V15Session>(), 80);
        assert_eq!(core::mem::align_of::<V15Session>(), 8);
    }

    #[test]
    fn window_matches_the_engine_rules() {
        // SeqWindow::new(100, 8, 8): highest 99, seen 1.
        let mut w = window_pack(99, 1);
        assert!(window_check(w, 100));
        assert!(!window_check(w, 99), "the start-1 slot counts as seen");
        w = window_commit(w, 100);
        assert!(!window_check(w, 100), "replay");
        assert!(window_check(w, 108));
        assert!(!window_check(w, 109), "too far ahead");
        w = window_commit(w, 105);
        assert!(window_check(w, 101) && window_check(w, 98));
        assert!(!window_check(w, 97), "too far behind");
        w = window_commit(w, 101);
        assert!(!window_check(w, 101));
        assert!(!window_check(w, 105));
        // Wrap-around.
        let w = window_commit(window_pack(u32::MAX, 1), 0);
        assert!(!window_check(w, 0) && window_check(w, 1));
    }
}
