//! Types and constants shared by the XDP fast path (`virtbmc-ebpf`) and the agent.
//!
//! Every BPF map key and value is defined here once, `#[repr(C)]`, `Copy`, with explicit
//! padding, so both sides agree on the layout byte for byte. With the `user` feature the
//! values also derive `bytemuck::Pod`, which the loader relies on to hand them to aya.
//!
//! # Maps
//! | name (pin under [`PIN_DIR`]) | kind | key | value |
//! |---|---|---|---|
//! | `BMCS` (`bmcs`) | hash, [`MAX_BMCS`] entries | `u16` UDP port, host byte order | [`BmcState`] |
//! | `COUNTERS` (`counters`) | per-CPU array, 1 entry | `u32` index 0 | [`Counters`] |
//!
//! # Who writes what
//! The agent is the only writer of `BMCS`: it inserts a port when it starts serving a BMC,
//! updates the value whenever the VM's snapshot changes (power state, cipher suites, the
//! auth-none policy) and deletes the port before it closes the BMC's socket. The program only
//! reads `BMCS`. `COUNTERS` is written by the program only; the agent sums it over CPUs.
//!
//! # What the program answers (everything else is `XDP_PASS`ed to the agent's socket)
//! - ASF Presence Ping -> Presence Pong.
//! - Session-less IPMI 1.5 Get Channel Authentication Capabilities (channel 0x0E/0x01,
//!   privilege 1..=5).
//! - Session-less Get Channel Cipher Suites (IPMI payload, list by cipher suite) in the IPMI 1.5
//!   and the RMCP+ framing; the reply uses the request's framing.
//!
//! - Get Chassis Status inside an IPMI 1.5 session (MD5 or straight password) the
//!   agent published in `SESSION_IDS`/`SESSIONS`: see [`session`] for the shared-state
//!   protocol the engine must follow before the agent publishes sessions.
//!
//! The reply bytes are exactly what the userspace engine produces for the same request and the
//! same [`BmcState`]; the differential test in `tests/tests/xdp_diff.rs` holds both to that.
#![no_std]

pub mod session;

/// Directory under bpffs where the agent pins the maps.
pub const PIN_DIR: &str = "/sys/fs/bpf/virtbmc";
/// Name of the program inside the object.
pub const PROGRAM_NAME: &str = "virtbmc_xdp";
/// Map and pin names.
pub const BMCS_MAP: &str = "BMCS";
pub const BMCS_PIN: &str = "bmcs";
pub const COUNTERS_MAP: &str = "COUNTERS";
pub const COUNTERS_PIN: &str = "counters";

/// Maximum number of BMCs (UDP ports) one agent serves through the fast path.
/// Sized for a whole default port range (10,000 BMCs) with room: a BMC the map cannot hold
/// is still answered by userspace, only slower.
pub const MAX_BMCS: u32 = 16384;
/// Capacity of [`BmcState::cipher_records`].
pub const MAX_CIPHER_RECORDS: usize = 32;

/// RMCP (DMTF ASF 2.0 §3.2.2.1) and IPMI constants the fast path needs.
pub mod ipmi {
    pub const RMCP_VERSION: u8 = 0x06;
    pub const RMCP_SEQ_NO_ACK: u8 = 0xFF;
    pub const RMCP_CLASS_ASF: u8 = 0x06;
    pub const RMCP_CLASS_IPMI: u8 = 0x07;
    /// IANA enterprise number of the ASF (4542), big endian in ASF messages.
    pub const ASF_IANA: [u8; 4] = [0x00, 0x00, 0x11, 0xBE];
    pub const ASF_TYPE_PING: u8 = 0x80;
    pub const ASF_TYPE_PONG: u8 = 0x40;
    /// Presence Pong "supported entities": bit 7 = IPMI supported, version 1.0 (0x01).
    pub const ASF_ENTITIES_IPMI: u8 = 0x81;

    pub const AUTH_TYPE_NONE: u8 = 0x00;
    pub const AUTH_TYPE_RMCPP: u8 = 0x06;
    pub const PAYLOAD_TYPE_IPMI: u8 = 0x00;

    /// The BMC's responder address.
    pub const BMC_SA: u8 = 0x20;
    pub const NETFN_APP: u8 = 0x06;
    pub const NETFN_CHASSIS: u8 = 0x00;
    pub const CMD_GET_CHANNEL_AUTH_CAPS: u8 = 0x38;
    pub const CMD_GET_CHANNEL_CIPHER_SUITES: u8 = 0x54;
    pub const CMD_GET_CHASSIS_STATUS: u8 = 0x01;
    /// "This channel" and the channel number the BMC reports for its LAN channel.
    pub const CHANNEL_CURRENT: u8 = 0x0E;
    pub const CHANNEL_LAN: u8 = 0x01;

    /// Auth type support bits in Get Channel Authentication Capabilities (IPMI 2.0 §22.13).
    pub const AUTH_CAP_NONE: u8 = 0x01;
    pub const AUTH_CAP_MD5: u8 = 0x04;
    pub const AUTH_CAP_PASSWORD: u8 = 0x10;
    pub const AUTH_CAP_EXTENDED: u8 = 0x80;
    /// Login status: non-null user names enabled.
    pub const LOGIN_NON_NULL_USERS: u8 = 0x04;
    /// Extended capabilities: IPMI 1.5 (bit 0) and 2.0 (bit 1) connections.
    pub const EXT_CAP_V15_V20: u8 = 0x03;
}

/// What the fast path knows about one BMC. Value of `BMCS`, keyed by the BMC's UDP port in
/// host byte order. 36 bytes, alignment 1, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BmcState {
    /// 1 when the VM is running (Get Chassis Status byte 1 bit 0), else 0.
    pub power_on: u8,
    /// 1 when auth type NONE is offered in Get Channel Authentication Capabilities.
    pub allow_auth_none: u8,
    /// Number of valid bytes in `cipher_records`, at most [`MAX_CIPHER_RECORDS`].
    pub cipher_len: u8,
    /// Explicit padding, must be 0.
    pub _pad0: u8,
    /// Get Channel Cipher Suites record bytes (IPMI 2.0 §22.15.2), as the engine encodes them,
    /// e.g. suites 3 and 17: `C0 03 01 41 81 C0 11 03 44 81`.
    pub cipher_records: [u8; MAX_CIPHER_RECORDS],
}

impl BmcState {
    pub const fn zeroed() -> Self {
        Self {
            power_on: 0,
            allow_auth_none: 0,
            cipher_len: 0,
            _pad0: 0,
            cipher_records: [0; MAX_CIPHER_RECORDS],
        }
    }

    /// A state with the given cipher records; `None` if they do not fit.
    pub fn with_ciphers(power_on: bool, allow_auth_none: bool, records: &[u8]) -> Option<Self> {
        if records.len() > MAX_CIPHER_RECORDS {
            return None;
        }
        let mut s = Self::zeroed();
        s.power_on = power_on as u8;
        s.allow_auth_none = allow_auth_none as u8;
        s.cipher_len = records.len() as u8;
        s.cipher_records[..records.len()].copy_from_slice(records);
        Some(s)
    }

    /// The valid cipher record bytes.
    pub fn cipher_records(&self) -> &[u8] {
        let n = (self.cipher_len as usize).min(MAX_CIPHER_RECORDS);
        &self.cipher_records[..n]
    }
}

/// Fast-path counters: value of the per-CPU array `COUNTERS` at index 0. The agent sums the
/// per-CPU copies. Only packets to a port in `BMCS` are counted; other traffic is not ours.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Counters {
    pub ping_answered: u64,
    pub auth_caps_answered: u64,
    pub cipher_suites_answered: u64,
    pub chassis_status_answered: u64,
    /// Packets to a BMC port handed to the agent's socket (`XDP_PASS`).
    pub passed: u64,
    /// Packets to a BMC port that are certainly not IPMI (truncated UDP, not RMCP version 6).
    pub dropped_malformed: u64,
}

impl Counters {
    /// Field-wise sum, for adding up per-CPU copies.
    pub fn add(&mut self, o: &Counters) {
        self.ping_answered += o.ping_answered;
        self.auth_caps_answered += o.auth_caps_answered;
        self.cipher_suites_answered += o.cipher_suites_answered;
        self.chassis_status_answered += o.chassis_status_answered;
        self.passed += o.passed;
        self.dropped_malformed += o.dropped_malformed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        assert_eq!(core::mem::size_of::<BmcState>(), 36);
        assert_eq!(core::mem::align_of::<BmcState>(), 1);
        assert_eq!(core::mem::size_of::<Counters>(), 48);
    }
}
