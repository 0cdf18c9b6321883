//! Get Chassis Status inside an IPMI 1.5 session, answered by XDP from the shared
//! session slots. A real session is opened with the engine (Get Session Challenge, Activate
//! Session), published into the maps exactly as the protocol in `virtbmc_common::session`
//! says, and then the same in-session requests go through the program and through the engine:
//! identical bytes, sequence numbers moving in step. Needs root and the object.

mod xdp_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use virtbmc::crypto::auth_code_v15;
use virtbmc::engine::config::{BmcConfig, Privilege, User};
use virtbmc::engine::entropy::TestEntropy;
use virtbmc::engine::{Bmc, Output, PowerState, VmView};
use virtbmc::fastpath::{self, FastPath};
use virtbmc_common::session::{SESSION_ACTIVE, V15Session, window_pack};
use xdp_support::*;

const MD5: u8 = 0x02;
const PASSWORD: u8 = 0x04;

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn password16() -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(b"password");
    p
}

fn peer() -> SocketAddr {
    SocketAddr::from((CLIENT_V4, CLIENT_PORT))
}

fn vm(on: bool) -> VmView {
    VmView {
        power: if on { PowerState::On } else { PowerState::Off },
        boot: None,
        guid: [7; 16],
    }
}

fn reply(bmc: &mut Bmc, datagram: &[u8], on: bool) -> Option<Vec<u8>> {
    match bmc.handle(Instant::now(), peer(), datagram, &vm(on)) {
        Output::Reply(b) => Some(b),
        _ => None,
    }
}

/// An IPMI 1.5 packet in a session with an auth code.
fn v15_session(auth: u8, seq: u32, sid: u32, msg: &[u8]) -> Vec<u8> {
    let code = auth_code_v15(auth, &password16(), sid, msg, seq).unwrap();
    let mut p = vec![0x06, 0x00, 0xFF, 0x07, auth];
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&sid.to_le_bytes());
    p.extend_from_slice(&code);
    p.push(msg.len() as u8);
    p.extend_from_slice(msg);
    p
}

/// Opens an IPMI 1.5 session with the engine: (session id, first inbound seq, next outbound).
fn activate(bmc: &mut Bmc, auth: u8) -> (u32, u32, u32) {
    let mut d = vec![auth];
    let mut name = [0u8; 16];
    name[..5].copy_from_slice(b"admin");
    d.extend_from_slice(&name);
    let r = reply(bmc, &v15(&msg(0x06, 1, 0x39, &d)), false).expect("challenge reply");
    // RMCP 4 + 1.5 header 10 (auth NONE) + msg header 7 (incl. cc): data follows.
    assert_eq!(r[20], 0x00, "challenge cc");
    let temp = u32::from_le_bytes(r[21..25].try_into().unwrap());
    let challenge: [u8; 16] = r[25..41].try_into().unwrap();
    let initial_out: u32 = 0x1000;
    let mut d = vec![auth, 0x04];
    d.extend_from_slice(&challenge);
    d.extend_from_slice(&initial_out.to_le_bytes());
    let r = reply(
        bmc,
        &v15_session(auth, 0, temp, &msg(0x06, 2, 0x3A, &d)),
        false,
    )
    .expect("activate reply");
    // RMCP 4 + auth 1 + seq 4 + sid 4 + code 16 + len 1 + msg header 6 + cc.
    assert_eq!(r[36], 0x00, "activate cc: {}", hex(&r));
    let sid = u32::from_le_bytes(r[38..42].try_into().unwrap());
    let inbound = u32::from_le_bytes(r[42..46].try_into().unwrap());
    (sid, inbound, initial_out.wrapping_add(1))
}

fn slot_for(sid: u32, auth: u8, inbound: u32, outbound: u32) -> V15Session {
    let mut peer = [0u8; 16];
    peer[..4].copy_from_slice(&CLIENT_V4.octets());
    V15Session {
        state: SESSION_ACTIVE,
        session_id: sid,
        port: BMC_PORT,
        auth_type: auth,
        privilege: 2, // the engine starts a session at USER
        family: 4,
        _pad0: 0,
        peer_port: CLIENT_PORT,
        peer,
        password: password16(),
        window: window_pack(inbound.wrapping_sub(1), 1),
        outbound,
        idle_timeout_ms: 60_000,
        last_activity_ns: fastpath::monotonic_ns(),
        fast_answers: 0,
    }
}

fn chassis_status(seq_byte: u8) -> Vec<u8> {
    msg(0x00, seq_byte, 0x01, &[])
}

#[test]
fn xdp_session_chassis_status_matches_engine() {
    if skip("xdp_session_chassis_status_matches_engine") {
        return;
    }
    let c4 = (CLIENT_V4, CLIENT_PORT);
    let b4 = (BMC_V4, BMC_PORT);
    for (auth, slot, on) in [(MD5, 7u32, false), (PASSWORD, 300, true)] {
        let config = BmcConfig::new(vec![
            User::new("admin", "password", Privilege::Admin).unwrap(),
        ]);
        let mut engine = Bmc::with_entropy(
            Arc::new(config.clone()),
            Box::new(TestEntropy(0x5EED + slot as u64)),
        );
        let (sid, inbound, outbound) = activate(&mut engine, auth);

        let mut fp = load_detached();
        fp.set_bmc(BMC_PORT, &fastpath::bmc_state(&config, on).unwrap())
            .unwrap();
        assert!(
            fp.publish_v15_session(slot, &slot_for(sid, auth, inbound, outbound))
                .unwrap()
        );

        for i in 0..5u32 {
            let seq = inbound.wrapping_add(i);
            let req = v15_session(auth, seq, sid, &chassis_status(i as u8 + 3));
            let out = fp.test_run(&v4(c4, b4, &req), 1).unwrap();
            assert_eq!(out.action, XDP_TX, "request {}", hex(&req));
            let from_engine = reply(&mut engine, &req, on).expect("engine answers");
            assert_eq!(hex(&out.frame[42..]), hex(&from_engine), "seq {seq}");
            assert_eq!(out.frame[42 + 30 + 7], on as u8, "power bit");
        }
        let slots = fp.sessions().unwrap();
        let s = slots.get(slot);
        assert_eq!(s.outbound, outbound + 5);
        assert_eq!(s.fast_answers, 5);
        assert!(s.last_activity_ns > 0);
        assert_eq!(fp.counters().unwrap().chassis_status_answered, 5);

        // The engine, following the protocol, shares the counters: its next number comes
        // from the slot, and a number XDP used is a replay for it.
        assert_eq!(slots.next_outbound(slot), outbound + 5);
        assert!(
            !slots.check_commit(slot, inbound.wrapping_add(4)),
            "XDP committed it"
        );
        assert!(slots.check_commit(slot, inbound.wrapping_add(5)));

        let pass = |fp: &FastPath, req: Vec<u8>, why: &str| {
            let out = fp.test_run(&v4(c4, b4, &req), 1).unwrap();
            assert_eq!(out.action, XDP_PASS, "{why}: {}", hex(&req));
        };
        let next = inbound.wrapping_add(6);
        pass(
            &fp,
            v15_session(auth, inbound.wrapping_add(3), sid, &chassis_status(9)),
            "replay",
        );
        pass(
            &fp,
            v15_session(auth, next + 20, sid, &chassis_status(9)),
            "too far ahead",
        );
        pass(
            &fp,
            v15_session(auth, next, sid ^ 1, &chassis_status(9)),
            "unknown session",
        );
        let other = if auth == MD5 { PASSWORD } else { MD5 };
        pass(
            &fp,
            v15_session(other, next, sid, &chassis_status(9)),
            "other auth type",
        );
        let mut bad = v15_session(auth, next, sid, &chassis_status(9));
        bad[20] ^= 1;
        pass(&fp, bad, "bad auth code");
        pass(
            &fp,
            v15_session(auth, next, sid, &msg(0x00, 9, 0x02, &[0x01])),
            "chassis control",
        );
        pass(
            &fp,
            v15_session(auth, next, sid, &msg(0x06, 9, 0x01, &[])),
            "get device id",
        );
        let out = fp
            .test_run(
                &v4(
                    (CLIENT_V4, CLIENT_PORT + 1),
                    b4,
                    &v15_session(auth, next, sid, &chassis_status(9)),
                ),
                1,
            )
            .unwrap();
        assert_eq!(out.action, XDP_PASS, "another peer port");
        slots.set_privilege(slot, 1);
        pass(
            &fp,
            v15_session(auth, next, sid, &chassis_status(9)),
            "callback privilege",
        );
        slots.set_privilege(slot, 4);
        let out = fp
            .test_run(
                &v4(c4, b4, &v15_session(auth, next, sid, &chassis_status(9))),
                1,
            )
            .unwrap();
        assert_eq!(out.action, XDP_TX, "admin privilege");
        assert!(
            !slots.check_commit(slot, next),
            "a failed or passed packet commits nothing; this one did"
        );
        fp.close_v15_session(sid, slot).unwrap();
        pass(
            &fp,
            v15_session(auth, next + 1, sid, &chassis_status(9)),
            "closed",
        );
        let slots = fp.sessions().unwrap();
        assert_eq!(
            slots.get(slot).outbound,
            outbound + 7,
            "passed packets took no number"
        );
        assert_eq!(fp.counters().unwrap().chassis_status_answered, 6);
    }
}

/// The agent's wiring: the IPMI 1.5 sessions the engine offers are published through
/// `FastPath::session_publisher`; requests of one session then alternate between the program
/// and the engine with one sequence space (no number reused, replays caught on both sides),
/// and closing the session in the engine unpublishes it.
#[test]
fn xdp_engine_publisher_shares_one_sequence_space() {
    if skip("xdp_engine_publisher_shares_one_sequence_space") {
        return;
    }
    use virtbmc::engine::DropReason;
    let c4 = (CLIENT_V4, CLIENT_PORT);
    let b4 = (BMC_V4, BMC_PORT);
    let config = BmcConfig::new(vec![
        User::new("admin", "password", Privilege::Admin).unwrap(),
    ]);
    let mut engine = Bmc::with_entropy(Arc::new(config.clone()), Box::new(TestEntropy(77)));
    let mut fp = load_detached();
    fp.set_bmc(BMC_PORT, &fastpath::bmc_state(&config, true).unwrap())
        .unwrap();
    let publisher = fp.session_publisher(BMC_PORT).expect("the fast path is on");
    let (sid, inbound, outbound) = activate(&mut engine, MD5);
    publish_offers(&mut engine, &*publisher);

    let out_seq = |payload: &[u8]| u32::from_le_bytes(payload[5..9].try_into().unwrap());
    for i in 0..6u32 {
        let req = v15_session(MD5, inbound + i, sid, &chassis_status(i as u8));
        if i % 2 == 0 {
            let out = fp.test_run(&v4(c4, b4, &req), 1).unwrap();
            assert_eq!(out.action, XDP_TX, "XDP answers seq {}", inbound + i);
            assert_eq!(out_seq(&out.frame[42..]), outbound + i);
        } else {
            let r = reply(&mut engine, &req, true).expect("engine answers");
            assert_eq!(
                out_seq(&r),
                outbound + i,
                "the engine takes the next number"
            );
        }
    }
    // Replays: what XDP accepted, the engine refuses, and the other way round.
    let again = v15_session(MD5, inbound, sid, &chassis_status(0));
    let out = engine.handle(Instant::now(), peer(), &again, &vm(true));
    assert!(matches!(out, Output::Drop(DropReason::Replay)), "{out:?}");
    let again = v15_session(MD5, inbound + 1, sid, &chassis_status(1));
    assert_eq!(
        fp.test_run(&v4(c4, b4, &again), 1).unwrap().action,
        XDP_PASS
    );
    assert_eq!(fp.counters().unwrap().chassis_status_answered, 3);

    // Close Session in the engine: unpublished, the program passes the session's packets.
    let close = v15_session(
        MD5,
        inbound + 6,
        sid,
        &msg(0x06, 7, 0x3C, &sid.to_le_bytes()),
    );
    let r = reply(&mut engine, &close, true).expect("close reply");
    assert_eq!(out_seq(&r), outbound + 6);
    let after = v15_session(MD5, inbound + 7, sid, &chassis_status(8));
    assert_eq!(
        fp.test_run(&v4(c4, b4, &after), 1).unwrap().action,
        XDP_PASS
    );
    assert_eq!(engine.active_sessions(), 0);
}

/// Idle expiry covers what the program answers: past the session's idle limit the program
/// passes its packets (consuming no sequence number), the engine's timer ends the session
/// and unpublishes it, and a password rotation ends a published session at once.
#[test]
fn xdp_published_session_ends_on_its_deadline_and_on_rotation() {
    if skip("xdp_published_session_ends_on_its_deadline_and_on_rotation") {
        return;
    }
    let c4 = (CLIENT_V4, CLIENT_PORT);
    let b4 = (BMC_V4, BMC_PORT);
    let mut config = BmcConfig::new(vec![
        User::new("admin", "password", Privilege::Admin).unwrap(),
    ]);
    config.session_timeout = std::time::Duration::from_millis(400);
    let mut engine = Bmc::with_entropy(Arc::new(config.clone()), Box::new(TestEntropy(91)));
    let mut fp = load_detached();
    fp.set_bmc(BMC_PORT, &fastpath::bmc_state(&config, true).unwrap())
        .unwrap();
    let publisher = fp.session_publisher(BMC_PORT).expect("the fast path is on");
    let (sid, inbound, _) = activate(&mut engine, MD5);
    publish_offers(&mut engine, &*publisher);

    // Kept alive by the program's answers alone, past the engine's own last sighting.
    for i in 0..4u32 {
        let req = v15_session(MD5, inbound + i, sid, &chassis_status(i as u8));
        let out = fp.test_run(&v4(c4, b4, &req), 1).unwrap();
        assert_eq!(out.action, XDP_TX, "answered while active ({i})");
        std::thread::sleep(std::time::Duration::from_millis(200));
        engine.handle_timeout(Instant::now());
        assert_eq!(
            engine.active_sessions(),
            1,
            "fast answers count as activity"
        );
    }
    let deadline = engine.poll_timeout(Instant::now()).expect("a deadline");
    assert!(deadline > Instant::now());

    // Idle past the limit: the program passes, even before the engine's timer runs.
    std::thread::sleep(std::time::Duration::from_millis(450));
    let late = v15_session(MD5, inbound + 4, sid, &chassis_status(9));
    assert_eq!(fp.test_run(&v4(c4, b4, &late), 1).unwrap().action, XDP_PASS);
    engine.handle_timeout(Instant::now());
    assert_eq!(engine.active_sessions(), 0, "expired on the timer");
    assert!(matches!(
        engine.poll_event(),
        Some(virtbmc::engine::Event::SessionExpired { id, .. }) if id == sid
    ));
    assert_eq!(fp.test_run(&v4(c4, b4, &late), 1).unwrap().action, XDP_PASS);

    // Rotation: a fresh published session ends the moment the password changes.
    config.session_timeout = std::time::Duration::from_secs(60);
    engine.set_config(Arc::new(config.clone()));
    let (sid, inbound, _) = activate(&mut engine, MD5);
    publish_offers(&mut engine, &*publisher);
    let req = v15_session(MD5, inbound, sid, &chassis_status(1));
    assert_eq!(fp.test_run(&v4(c4, b4, &req), 1).unwrap().action, XDP_TX);
    let rotated = BmcConfig::new(vec![
        User::new("admin", "rotated", Privilege::Admin).unwrap(),
    ]);
    engine.set_config(Arc::new(rotated));
    assert_eq!(engine.active_sessions(), 0);
    let req = v15_session(MD5, inbound + 1, sid, &chassis_status(2));
    assert_eq!(
        fp.test_run(&v4(c4, b4, &req), 1).unwrap().action,
        XDP_PASS,
        "unpublished at once"
    );
}

/// Every single-byte corruption of a valid MD5 in-session request is passed untouched (the
/// auth code covers the session id, the message and the sequence number; the rest is checked
/// field by field), and none of them consumes a sequence number.
#[test]
fn xdp_session_corruptions_pass() {
    if skip("xdp_session_corruptions_pass") {
        return;
    }
    let c4 = (CLIENT_V4, CLIENT_PORT);
    let b4 = (BMC_V4, BMC_PORT);
    let (sid, inbound, outbound) = (0x0102_0304u32, 500u32, 9u32);
    let mut fp = load_detached();
    fp.set_bmc(BMC_PORT, &state(false)).unwrap();
    assert!(
        fp.publish_v15_session(3, &slot_for(sid, MD5, inbound, outbound))
            .unwrap()
    );
    let good = v15_session(MD5, inbound, sid, &chassis_status(1));
    for i in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xFF] {
            let mut bad = good.clone();
            bad[i] ^= flip;
            let out = fp.test_run(&v4(c4, b4, &bad), 1).unwrap();
            assert_ne!(out.action, XDP_TX, "byte {i} ^ {flip:#x}: {}", hex(&bad));
        }
    }
    let slots = fp.sessions().unwrap();
    assert_eq!(slots.get(3).outbound, outbound, "no number taken");
    assert_eq!(fp.counters().unwrap().chassis_status_answered, 0);
    // The untouched request is still accepted: nothing was committed.
    let out = fp.test_run(&v4(c4, b4, &good), 1).unwrap();
    assert_eq!(out.action, XDP_TX);
}
