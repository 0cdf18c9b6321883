//! Feeds arbitrary datagrams to the wire parsers and to one BMC engine in sequence. The
//! input is split on 0xFE so the fuzzer can build multi-packet conversations (a session
//! opened by one datagram, attacked by the next). Any panic is a bug.
//!
//! The handshakes answer with cookies (a MAC the fuzzer cannot compute), so that later
//! messages can reach the paths behind them, a datagram's first `SIDX` is replaced with the
//! last session id the BMC handed out (Open Session Response, Get Session Challenge,
//! Activate Session) and its first `CHALLENGE-ECHO-16` with the last 1.5 challenge.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use virtbmc::engine::config::{BmcConfig, Privilege, User};
use virtbmc::engine::entropy::TestEntropy;
use virtbmc::engine::{Bmc, Output, PowerState, VmView};
use virtbmc::wire::challenge::{
    ActivateRequest, ActivateResponse, ChallengeRequest, ChallengeResponse,
};
use virtbmc::wire::lanplus::{LanPlusPacket, PAYLOAD_OPEN_SESSION_RSP};
use virtbmc::wire::message::Response;
use virtbmc::wire::rakp::{OpenSessionRequest, OpenSessionResponse, Rakp1, Rakp2, Rakp3, Rakp4};
use virtbmc::wire::sol::SolPacket;
use virtbmc::wire::{lan15::Lan15Packet, message::Request, rmcp::RmcpHeader};

const SID: &[u8] = b"SIDX";
const CHALLENGE: &[u8] = b"CHALLENGE-ECHO-16";

fn splice(d: &mut Vec<u8>, token: &[u8], with: &[u8]) {
    if let Some(at) = d.windows(token.len()).position(|w| w == token) {
        d.splice(at..at + token.len(), with.iter().copied());
    }
}

/// Remembers the ids and challenge a reply hands out.
fn learn(reply: &[u8], sid: &mut [u8; 4], challenge: &mut [u8; 16]) {
    let Ok((_, rest)) = RmcpHeader::parse(reply) else { return };
    if let Ok(p) = LanPlusPacket::parse(rest, 0) {
        if p.payload_type == PAYLOAD_OPEN_SESSION_RSP {
            if let Ok(OpenSessionResponse { opened: Some(o), .. }) = OpenSessionResponse::parse(p.payload) {
                *sid = o.managed_id.to_le_bytes();
            }
        }
        return;
    }
    let Ok(p) = Lan15Packet::parse(rest) else { return };
    let Ok(r) = Response::parse(p.message) else { return };
    if let Ok(c) = ChallengeResponse::parse(r.data) {
        *sid = c.temp_id.to_le_bytes();
        *challenge = c.challenge;
    } else if let Ok(a) = ActivateResponse::parse(r.data) {
        *sid = a.session_id.to_le_bytes();
    }
}

fuzz_target!(|data: &[u8]| {
    let mut cfg = BmcConfig::new(vec![User::new("admin", "password", Privilege::Admin).unwrap()]);
    cfg.allow_auth_none = data.first().is_some_and(|b| b & 1 == 1);
    cfg.cipher_suites = vec![1, 2, 3, 15, 16, 17];
    cfg.max_sessions = 2;
    let mut bmc = Bmc::with_entropy(Arc::new(cfg), Box::new(TestEntropy(1)));
    let mut vm = VmView { power: PowerState::On, boot: None, guid: [7; 16] };
    let mut now = Instant::now();
    let peer = "10.0.0.1:623".parse().unwrap();
    let (mut sid, mut challenge) = ([0u8; 4], [0u8; 16]);
    for datagram in data.split(|b| *b == 0xFE) {
        let mut d = datagram.to_vec();
        splice(&mut d, SID, &sid);
        splice(&mut d, CHALLENGE, &challenge[..]);
        let _ = RmcpHeader::parse(&d);
        let _ = Lan15Packet::parse(&d);
        let _ = LanPlusPacket::parse(&d, 12);
        let _ = Request::parse(&d);
        let _ = OpenSessionRequest::parse(&d);
        let _ = OpenSessionResponse::parse(&d);
        let _ = Rakp1::parse(&d);
        let _ = Rakp2::parse(&d);
        let _ = Rakp3::parse(&d);
        let _ = Rakp4::parse(&d);
        let _ = ChallengeRequest::parse(&d);
        let _ = ActivateRequest::parse(&d);
        match bmc.handle(now, peer, &d, &vm) {
            Output::Action(_, _, pending) => {
                let _ = bmc.complete(pending, Ok(()));
                vm.power = if vm.power == PowerState::On { PowerState::Off } else { PowerState::On };
            }
            Output::Reply(r) => {
                assert!(r.len() <= d.len().max(64) + 64);
                learn(&r, &mut sid, &mut challenge);
            }
            Output::Drop(_) | Output::Absorbed => {}
        }
        // A SOL instance, if the input activated one, gets guest output and sends it.
        let _ = SolPacket::parse(&d);
        let _ = bmc.sol_from_guest(now, datagram);
        while bmc.poll_sol().is_some() {}
        while bmc.poll_transmit().is_some() {}
        now += Duration::from_millis(datagram.len() as u64 * 100);
        // Time passes between datagrams: the timers run, and their events drain.
        if bmc.poll_timeout(now).is_some_and(|t| t <= now) {
            bmc.handle_timeout(now);
        }
        while bmc.poll_event().is_some() {}
    }
});
