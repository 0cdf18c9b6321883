//! Every datagram the engine sends is framed here: the RMCP header, then the IPMI 1.5 or
//! RMCP+ session wrapper with its auth code, integrity trailer or encryption (IPMI 2.0
//! §13.6, §13.28.4, §13.29). Only the ASF presence pong is not, as the fast path shares it.

use super::config::CipherSuite;
use crate::crypto::{ConfAlg, IntegAlg, aes_encrypt, auth_code_v15};
use crate::wire::lan15::{AUTH_NONE, Lan15Packet};
use crate::wire::lanplus::{FLAG_AUTHENTICATED, FLAG_ENCRYPTED, LanPlusPacket};
use crate::wire::message::Request;
use crate::wire::rmcp::{self, RmcpHeader};

fn rmcp_header(out: &mut Vec<u8>) {
    RmcpHeader {
        sequence: rmcp::RMCP_SEQ_NO_ACK,
        class: rmcp::CLASS_IPMI,
    }
    .emit(out);
}

/// A session-less RMCP+ payload (discovery replies, Open Session Response, RAKP 2 and 4).
pub(super) fn sessionless_v20(payload_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    rmcp_header(&mut out);
    LanPlusPacket::emit(payload_type, 0, 0, payload, &mut out);
    out
}

/// The reply to `req` outside any session, in the IPMI 1.5 form.
pub(super) fn sessionless_v15(req: &Request, code: u8, data: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(8 + data.len());
    req.emit_response(code, data, &mut msg);
    v15(AUTH_NONE, &[0; 16], 0, 0, &msg)
}

/// An IPMI 1.5 message in session `session_id`, signed with `auth_type` under `password`
/// (no auth code for auth type NONE).
pub(super) fn v15(
    auth_type: u8,
    password: &[u8; 16],
    session_id: u32,
    seq: u32,
    msg: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(30 + msg.len());
    rmcp_header(&mut out);
    let code = auth_code_v15(auth_type, password, session_id, msg, seq);
    Lan15Packet::emit(auth_type, seq, session_id, code.as_ref(), msg, &mut out);
    out
}

/// An in-session RMCP+ payload (an IPMI message, SOL characters): encrypted when the suite has confidentiality, then
/// signed when it has integrity.
pub(super) fn v20(
    payload_type: u8,
    console_id: u32,
    seq: u32,
    suite: &CipherSuite,
    keys: (&[u8], &[u8]),
    iv: &[u8; 16],
    msg: &[u8],
) -> Vec<u8> {
    let (k1, k2) = keys;
    let mut flags = payload_type;
    let payload = if suite.conf == ConfAlg::AesCbc128 {
        flags |= FLAG_ENCRYPTED;
        let mut p = Vec::with_capacity(msg.len() + 32);
        aes_encrypt(k2, iv, msg, &mut p);
        p
    } else {
        msg.to_vec()
    };
    if suite.integ != IntegAlg::None {
        flags |= FLAG_AUTHENTICATED;
    }
    let mut out = Vec::with_capacity(64 + payload.len());
    rmcp_header(&mut out);
    let start = out.len();
    LanPlusPacket::emit(flags, console_id, seq, &payload, &mut out);
    let code = suite.integ.auth_code(k1, &out[start..]);
    out.extend_from_slice(&code);
    out
}
