//! Differential test: the same crafted request through the XDP program (`BPF_PROG_TEST_RUN`)
//! and through the userspace engine. Whenever XDP answers, the engine must answer with the
//! identical UDP payload; the BMC state the program sees is built with the engine's encoder
//! (`fastpath::bmc_state`). Needs root and the object; skipped otherwise.

mod xdp_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use virtbmc::engine::config::{BmcConfig, Privilege, User};
use virtbmc::engine::{Bmc, Output, PowerState, VmView};
use virtbmc::fastpath;
use xdp_support::*;

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every request form the program answers, with variations, and near misses.
fn corpus() -> Vec<Vec<u8>> {
    let mut c = Vec::new();
    for tag in [0x00, 0x42, 0xFF] {
        c.push(ping(tag));
    }
    for ch in [0x0E, 0x8E, 0x01, 0x81, 0x02, 0x4E] {
        for privilege in 0..=6 {
            c.push(v15(&auth_caps_req(ch, privilege)));
            c.push(v20(&auth_caps_req(ch, privilege)));
        }
    }
    c.push(v15(&msg_full(
        0x20,
        0x06,
        2,
        0x81,
        63,
        1,
        0x38,
        &[0x0E, 0x04],
    )));
    c.push(v15(&msg_full(
        0x20,
        0x06,
        1,
        0x8F,
        5,
        3,
        0x38,
        &[0x8E, 0x02],
    )));
    for ch in [0x0E, 0x01, 0x8E, 0x03] {
        for pt in [0x00, 0x01] {
            for index in [0x00, 0x01, 0x80, 0x81, 0x82, 0xBF] {
                c.push(v15(&cipher_req(ch, pt, index)));
                c.push(v20(&cipher_req(ch, pt, index)));
            }
        }
    }
    c.push(v20(&msg_full(
        0x20,
        0x06,
        3,
        0x81,
        17,
        2,
        0x54,
        &[0x0E, 0x00, 0x80],
    )));
    c
}

fn engine_reply(bmc: &mut Bmc, datagram: &[u8]) -> Option<Vec<u8>> {
    let peer: SocketAddr = "10.231.0.2:40000".parse().unwrap();
    let vm = VmView {
        power: PowerState::Off,
        boot: None,
        guid: [7; 16],
    };
    match bmc.handle(Instant::now(), peer, datagram, &vm) {
        Output::Reply(b) => Some(b),
        _ => None,
    }
}

#[test]
fn xdp_and_engine_give_identical_bytes() {
    if skip("xdp_and_engine_give_identical_bytes") {
        return;
    }
    let c4 = (CLIENT_V4, CLIENT_PORT);
    let b4 = (BMC_V4, BMC_PORT);
    let mut answered = 0;
    for (allow_none, suites) in [
        (false, vec![3, 17]),
        (true, vec![17]),
        (false, vec![1, 2, 3, 15, 16, 17]),
    ] {
        let mut config = BmcConfig::new(vec![
            User::new("admin", "password", Privilege::Admin).unwrap(),
        ]);
        config.allow_auth_none = allow_none;
        config.cipher_suites = suites;
        let mut fp = load_detached();
        let state = fastpath::bmc_state(&config, false).unwrap();
        fp.set_bmc(BMC_PORT, &state).unwrap();
        let mut engine = Bmc::new(Arc::new(config));
        for req in corpus() {
            let out = fp.test_run(&v4(c4, b4, &req), 1).unwrap();
            let from_engine = engine_reply(&mut engine, &req);
            if out.action == XDP_TX {
                let from_xdp = &out.frame[42..];
                assert_eq!(
                    from_engine.as_deref().map(hex),
                    Some(hex(from_xdp)),
                    "request {} (allow_none {allow_none})",
                    hex(&req)
                );
                answered += 1;
            } else {
                assert_eq!(out.action, XDP_PASS, "request {}", hex(&req));
            }
        }
    }
    // The corpus holds many answerable requests; make sure they were compared.
    assert!(answered >= 60, "only {answered} answered requests compared");
}

/// The stage-3 shared window (virtbmc_common::session) decides exactly as the engine's own
/// `SeqWindow` with the IPMI 1.5 bounds, for a long pseudo-random run (no root needed).
#[test]
fn xdp_shared_window_matches_engine_window() {
    use virtbmc::engine::session::SeqWindow;
    use virtbmc_common::session::{WINDOW_V15, window_check, window_commit, window_pack};
    for start in [1u32, 1000, u32::MAX - 20] {
        let mut engine = SeqWindow::new(start, WINDOW_V15, WINDOW_V15);
        let mut shared = window_pack(start.wrapping_sub(1), 1);
        let mut x: u32 = 0x9E37_79B9 ^ start;
        let mut cur = start;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let seq = cur.wrapping_add(x % 24).wrapping_sub(10);
            let ok = engine.check(seq);
            assert_eq!(window_check(shared, seq), ok, "seq {seq}");
            if ok {
                engine.commit(seq);
                shared = window_commit(shared, seq);
                if seq.wrapping_sub(cur) < 1 << 31 {
                    cur = seq;
                }
            }
        }
    }
}
