//! Wire formats: RMCP/ASF, the IPMI 1.5 and 2.0 (RMCP+) session wrappers, IPMI messages,
//! and the session set-up messages of both (RMCP+ Open Session and RAKP, IPMI 1.5 Get
//! Session Challenge and Activate Session).
//!
//! Parsing never panics: every accessor is bounds-checked once when a view is built, and every
//! error is a [`WireError`]. Emitting appends to a `Vec<u8>`, so callers control allocation.

pub mod challenge;
pub mod lan15;
pub mod lanplus;
pub mod message;
pub mod rakp;
pub mod rmcp;
pub mod sol;

/// Why a datagram could not be parsed. The engine drops such datagrams (a real BMC cannot
/// answer a request whose framing it could not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("datagram truncated")]
    Truncated,
    #[error("length field disagrees with the datagram")]
    BadLength,
    #[error("unsupported RMCP version or class")]
    Unsupported,
    #[error("checksum mismatch")]
    Checksum,
}

pub(crate) fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}
