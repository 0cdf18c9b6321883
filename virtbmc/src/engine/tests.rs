//! Engine tests: byte vectors, and a spec-written console (crate::console) driving whole
//! sessions, including the hostile inputs other virtual BMCs fall to.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{BmcConfig, Privilege, User};
use super::entropy::{Entropy, TestEntropy};
use super::session::Refusal;
use super::*;
use crate::console::{self, ConsoleError, V15Session, V20Session, suite};
use crate::wire::lan15::{AUTH_MD5, AUTH_NONE, AUTH_PASSWORD};

const PEER: &str = "10.0.0.2:40000";

fn config() -> BmcConfig {
    BmcConfig::new(vec![
        User::new("admin", "password", Privilege::Admin).unwrap(),
        User::new("op", "oppass", Privilege::Operator).unwrap(),
        User::new("viewer", "viewer", Privilege::User).unwrap(),
    ])
}

struct Rig {
    bmc: RefCell<Bmc>,
    vm: RefCell<VmView>,
    now: RefCell<Instant>,
    /// The last action the engine asked for, completed with success.
    actions: RefCell<Vec<Action>>,
}

impl Rig {
    fn new(cfg: BmcConfig) -> Rig {
        Rig {
            bmc: RefCell::new(Bmc::with_entropy(
                Arc::new(cfg),
                Box::new(TestEntropy(0x1234_5678_9abc_def1)),
            )),
            vm: RefCell::new(VmView {
                power: PowerState::Off,
                boot: None,
                guid: [0x11; 16],
            }),
            now: RefCell::new(Instant::now()),
            actions: RefCell::new(Vec::new()),
        }
    }

    fn from(&self, peer: &str, d: &[u8]) -> Output {
        let vm = *self.vm.borrow();
        self.bmc
            .borrow_mut()
            .handle(*self.now.borrow(), peer.parse().unwrap(), d, &vm)
    }

    /// Sends from PEER; actions complete successfully at once.
    fn send(&self, d: &[u8]) -> Option<Vec<u8>> {
        self.send_from(PEER, d)
    }

    fn send_from(&self, peer: &str, d: &[u8]) -> Option<Vec<u8>> {
        match self.from(peer, d) {
            Output::Reply(r) => Some(r),
            Output::Drop(_) | Output::Absorbed => None,
            Output::Action(a, _, p) => {
                self.actions.borrow_mut().push(a);
                self.bmc.borrow_mut().complete(p, Ok(()))
            }
        }
    }

    fn exchange(&self) -> impl FnMut(&[u8]) -> Option<Vec<u8>> + '_ {
        move |d| self.send(d)
    }

    fn exchange_from<'a>(&'a self, peer: &'a str) -> impl FnMut(&[u8]) -> Option<Vec<u8>> + 'a {
        move |d| self.send_from(peer, d)
    }

    fn advance(&self, by: Duration) {
        *self.now.borrow_mut() += by;
    }

    fn events(&self) -> Vec<Event> {
        std::iter::from_fn(|| self.bmc.borrow_mut().poll_event()).collect()
    }
}

#[test]
fn presence_ping_gets_pong_with_the_tag() {
    let rig = Rig::new(config());
    let pong = rig.send(&console::ping(0x42)).unwrap();
    assert_eq!(
        pong[..12],
        [
            0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x40, 0x42, 0x00, 0x10
        ]
    );
    assert_eq!(pong.len(), 28);
}

#[test]
fn auth_caps_bytes_match_the_capture_layout() {
    let rig = Rig::new(config());
    // ipmitool -I lan: 0e 04, rqSeq 1.
    let reply = rig
        .send(&console::sessionless_v15(0x06, 0x38, 1, &[0x0e, 0x04]))
        .unwrap();
    let want = [
        0x06, 0x00, 0xFF, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0,
        0x10, // RMCP, 1.5 wrapper, length 16
        0x81, 0x1C, 0x63, 0x20, 0x04, 0x38, 0x00, 0x01, 0x14, 0x04, 0x00, 0, 0, 0, 0x00, 0x8B,
    ];
    assert_eq!(reply, want);
}

#[test]
fn cipher_suites_answered_in_the_form_asked() {
    let rig = Rig::new(config());
    let mut msg = Vec::new();
    crate::wire::message::Request {
        rs_addr: 0x20,
        net_fn: 6,
        rs_lun: 0,
        rq_addr: 0x81,
        rq_seq: 0,
        rq_lun: 0,
        cmd: 0x54,
        data: &[0x0e, 0x00, 0x80],
    }
    .emit(&mut msg);
    let reply = rig.send(&console::sessionless_v20(0x00, &msg)).unwrap();
    assert_eq!(reply[4], 0x06, "RMCP+ form");
    let data = &reply[16 + 7..reply.len() - 1];
    assert_eq!(
        data,
        [0x01, 0xC0, 3, 1, 0x41, 0x81, 0xC0, 17, 3, 0x44, 0x81]
    );
    let (cc, data) = console::parse_v15(
        &rig.send(&console::sessionless_v15(
            0x06,
            0x54,
            2,
            &[0x0e, 0x00, 0x81],
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!((cc, data), (0, vec![1]));
}

#[test]
fn v15_md5_and_password_sessions_run_commands() {
    for auth in [AUTH_MD5, AUTH_PASSWORD] {
        let rig = Rig::new(config());
        let mut ex = rig.exchange();
        let mut s = V15Session::open("admin", "password", auth, 4, &mut ex).unwrap();
        assert_eq!(s.call(0x06, 0x3B, &[4], &mut ex).unwrap(), (0, vec![4]));
        assert_eq!(
            s.call(0x00, 0x01, &[], &mut ex).unwrap(),
            (0, vec![0, 0, 0])
        );
        assert_eq!(s.call(0x00, 0x02, &[1], &mut ex).unwrap(), (0, vec![]));
        assert_eq!(
            s.call(0x06, 0x42, &[0x0e], &mut ex).unwrap(),
            (0, vec![1, 4, 1, 0x81, 0xF2, 0x1B, 0, 0, 0])
        );
        assert_eq!(
            s.call(0x06, 0x42, &[0x05], &mut ex).unwrap().0,
            cc::INVALID_DATA_FIELD
        );
        let (cc, id) = s.call(0x06, 0x01, &[], &mut ex).unwrap();
        assert_eq!((cc, id.len(), id[4]), (0, 15, 0x02));
        let sid = s.id.to_le_bytes();
        assert_eq!(s.call(0x06, 0x3C, &sid, &mut ex).unwrap(), (0, vec![]));
        assert!(s.call(0x00, 0x01, &[], &mut ex).is_err(), "closed");
        drop(ex);
        assert_eq!(*rig.actions.borrow(), vec![Action::PowerOn]);
    }
}

#[test]
fn v15_outbound_sequence_strictly_increases() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V15Session::open("admin", "password", AUTH_MD5, 4, &mut ex).unwrap();
    let mut last = None;
    for _ in 0..3 {
        let r = ex(&s.request(0x00, 0x01, &[])).unwrap();
        let seq = crate::wire::le_u32(&r[5..9]);
        assert!(
            last.is_none_or(|l| seq > l),
            "freeipmi refuses a repeated outbound sequence number"
        );
        last = Some(seq);
    }
}

#[test]
fn v15_wrong_password_unknown_user_and_auth_none() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    assert_eq!(
        V15Session::open("admin", "wrong", AUTH_MD5, 4, &mut ex).unwrap_err(),
        ConsoleError::NoAnswer
    );
    // An unknown name fails exactly as a wrong password does: no answer to Activate Session.
    assert_eq!(
        V15Session::open("nobody", "x", AUTH_MD5, 4, &mut ex).unwrap_err(),
        ConsoleError::NoAnswer
    );
    assert_eq!(
        V15Session::open("admin", "password", AUTH_NONE, 4, &mut ex).unwrap_err(),
        ConsoleError::Completion(cc::INVALID_DATA_FIELD)
    );
    drop(ex);
    let stats = rig.bmc.borrow().stats;
    assert!(stats.auth_failures >= 1);
    // Every parsed request is counted by command: one challenge per attempt above.
    let slot = |n, c| stats.commands[commands::command_slot(n, c)];
    assert_eq!(
        slot(commands::NETFN_APP, commands::CMD_GET_SESSION_CHALLENGE),
        3
    );
    assert_eq!(commands::command_name(commands::COUNTED.len()), "other");

    let mut cfg = config();
    cfg.allow_auth_none = true;
    let rig = Rig::new(cfg);
    let mut ex = rig.exchange();
    let mut s = V15Session::open("admin", "password", AUTH_NONE, 4, &mut ex).unwrap();
    assert_eq!(s.call(0x00, 0x01, &[], &mut ex).unwrap().0, 0);
}

#[test]
fn v15_privilege_is_capped_by_the_user() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    assert_eq!(
        V15Session::open("viewer", "viewer", AUTH_MD5, 4, &mut ex).unwrap_err(),
        ConsoleError::Completion(cc::PRIVILEGE_EXCEEDS_LIMIT)
    );
    let mut s = V15Session::open("viewer", "viewer", AUTH_MD5, 2, &mut ex).unwrap();
    assert_eq!(
        s.call(0x06, 0x3B, &[4], &mut ex).unwrap().0,
        cc::SET_PRIV_EXCEEDS_LIMIT
    );
    assert_eq!(
        s.call(0x00, 0x02, &[0], &mut ex).unwrap().0,
        cc::INSUFFICIENT_PRIVILEGE
    );
    assert_eq!(s.call(0x00, 0x01, &[], &mut ex).unwrap().0, 0);
    drop(ex);
    assert!(rig.actions.borrow().is_empty());
}

#[test]
fn replayed_packets_are_refused() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V15Session::open("admin", "password", AUTH_MD5, 4, &mut ex).unwrap();
    ex(&s.request(0x06, 0x3B, &[4])).unwrap();
    let power_on = s.request(0x00, 0x02, &[1]);
    assert!(ex(&power_on).is_some());
    *rig.vm.borrow_mut() = VmView {
        power: PowerState::Off,
        boot: None,
        guid: [0; 16],
    };
    assert!(ex(&power_on).is_none(), "verbatim replay");
    drop(ex);
    assert_eq!(rig.actions.borrow().len(), 1);
    assert_eq!(rig.bmc.borrow().stats.replays, 1);

    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V20Session::open("admin", "password", suite(17), 0x14, &mut ex).unwrap();
    let status = s.request(0x00, 0x01, &[]);
    assert!(ex(&status).is_some());
    assert!(ex(&status).is_none(), "RMCP+ replay");
    s.seq += 100;
    assert!(
        s.call(0x00, 0x01, &[], &mut ex).is_err(),
        "jump beyond the window"
    );
}

#[test]
fn rmcp_plus_every_enabled_suite_works() {
    for id in [1u8, 2, 3, 15, 16, 17] {
        let mut cfg = config();
        cfg.cipher_suites = vec![id];
        let rig = Rig::new(cfg);
        let mut ex = rig.exchange();
        let mut s = V20Session::open("admin", "password", suite(id), 0x14, &mut ex)
            .unwrap_or_else(|e| panic!("suite {id}: {e}"));
        assert_eq!(s.call(0x06, 0x3B, &[4], &mut ex).unwrap(), (0, vec![4]));
        assert_eq!(
            s.call(0x00, 0x02, &[1], &mut ex).unwrap(),
            (0, vec![]),
            "suite {id}"
        );
        assert_eq!(
            s.call(0x06, 0x37, &[], &mut ex).unwrap(),
            (0, vec![0x11; 16])
        );
    }
}

#[test]
fn rmcp_plus_refuses_disabled_suites_and_suite_zero_by_default() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    assert_eq!(
        V20Session::open("admin", "password", suite(0), 0x14, &mut ex).unwrap_err(),
        ConsoleError::Status(0x11)
    );
    assert_eq!(
        V20Session::open("admin", "password", suite(2), 0x14, &mut ex).unwrap_err(),
        ConsoleError::Status(0x11)
    );
}

#[test]
fn rmcp_plus_wrong_password_unknown_user_and_role() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    assert_eq!(
        V20Session::open("admin", "wrong", suite(3), 0x14, &mut ex).unwrap_err(),
        ConsoleError::BadProof
    );
    // An unknown name fails exactly as a wrong password does: RAKP2 does not verify.
    assert_eq!(
        V20Session::open("nobody", "password", suite(3), 0x14, &mut ex).unwrap_err(),
        ConsoleError::BadProof
    );
    // A role above the user's limit is refused once the password is proven (RAKP4), so
    // that the refusal tells nothing to whoever does not know it.
    assert_eq!(
        V20Session::open("viewer", "viewer", suite(3), 0x14, &mut ex).unwrap_err(),
        ConsoleError::Status(0x0A)
    );
    let mut s = V20Session::open("viewer", "viewer", suite(3), 0x12, &mut ex).unwrap();
    assert_eq!(
        s.call(0x06, 0x3B, &[3], &mut ex).unwrap().0,
        cc::SET_PRIV_EXCEEDS_LIMIT
    );
    assert_eq!(
        s.call(0x00, 0x02, &[0], &mut ex).unwrap().0,
        cc::INSUFFICIENT_PRIVILEGE
    );
}

/// Open Session Request for suite 3 from `peer`: the BMC's session id.
fn open_session(rig: &Rig, peer: &str) -> u32 {
    open_session_as(rig, peer, 0x04030201)
}

/// Open Session Request for suite 3 from `peer` with `console_id`.
fn open_session_as(rig: &Rig, peer: &str, console_id: u32) -> u32 {
    let mut req = console_id.to_le_bytes().to_vec();
    req.splice(0..0, [0, 0, 0, 0]);
    req.extend_from_slice(&[
        0, 0, 0, 8, 1, 0, 0, 0, 1, 0, 0, 8, 1, 0, 0, 0, 2, 0, 0, 8, 1, 0, 0, 0,
    ]);
    let Output::Reply(r) = rig.from(peer, &console::sessionless_v20(0x10, &req)) else {
        panic!("open session")
    };
    crate::wire::le_u32(&r[16 + 8..16 + 12])
}

/// RAKP1 for `admin` (Rm = 0x77.., role ADMIN, name-only lookup) on session `id`.
fn rakp1(rig: &Rig, peer: &str, id: u32) -> Output {
    rakp1_as(rig, peer, id, b"admin")
}

fn rakp1_as(rig: &Rig, peer: &str, id: u32, name: &[u8]) -> Output {
    let mut r1 = vec![1, 0, 0, 0];
    r1.extend_from_slice(&id.to_le_bytes());
    r1.extend_from_slice(&[0x77; 16]);
    r1.extend_from_slice(&[0x14, 0, 0, name.len() as u8]);
    r1.extend_from_slice(name);
    rig.from(peer, &console::sessionless_v20(0x12, &r1))
}

/// Opens a session by hand up to RAKP2, returning (bmc id, Rc).
fn half_open(rig: &Rig, peer: &str) -> (u32, [u8; 16]) {
    let id = open_session(rig, peer);
    let Output::Reply(r) = rakp1(rig, peer, id) else {
        panic!("rakp1")
    };
    let mut rc = [0u8; 16];
    rc.copy_from_slice(&r[16 + 8..16 + 24]);
    (id, rc)
}

#[test]
fn forged_rakp3_neither_activates_nor_closes_a_handshake() {
    let rig = Rig::new(config());
    let (id, rc) = half_open(&rig, PEER);
    let mut bad = vec![2, 0, 0, 0];
    bad.extend_from_slice(&id.to_le_bytes());
    bad.extend_from_slice(&[0u8; 20]);
    let Output::Reply(r) = rig.from(PEER, &console::sessionless_v20(0x14, &bad)) else {
        panic!()
    };
    assert_eq!(r[16 + 1], 0x0F, "invalid integrity check value");
    // The real console's RAKP3 still succeeds afterwards.
    let kuid = crate::crypto::Key20::from_password("password").unwrap();
    let mut good = vec![2, 0, 0, 0];
    good.extend_from_slice(&id.to_le_bytes());
    good.extend_from_slice(&crate::crypto::AuthAlg::HmacSha1.hmac(
        &kuid.0,
        &[&rc, &0x04030201u32.to_le_bytes(), &[0x14, 5], b"admin"],
    ));
    let Output::Reply(r) = rig.from(PEER, &console::sessionless_v20(0x14, &good)) else {
        panic!()
    };
    assert_eq!(r[16 + 1], 0x00);
    assert_eq!(rig.bmc.borrow().active_sessions(), 1);
}

#[test]
fn handshake_messages_cannot_touch_an_active_session_or_come_from_elsewhere() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V20Session::open("admin", "password", suite(3), 0x14, &mut ex).unwrap();
    drop(ex);
    // RAKP1 naming the live session: ignored, no re-keying (ipmi_sim's flaw).
    let mut r1 = vec![9, 0, 0, 0];
    r1.extend_from_slice(&s.bmc_id.to_le_bytes());
    r1.extend_from_slice(&[0; 16]);
    r1.extend_from_slice(&[0x14, 0, 0, 5]);
    r1.extend_from_slice(b"admin");
    assert!(matches!(
        rig.from(PEER, &console::sessionless_v20(0x12, &r1)),
        Output::Drop(_)
    ));
    // A valid in-session packet from another address: dropped.
    let req = s.request(0x00, 0x01, &[]);
    assert!(matches!(
        rig.from("10.0.0.9:40000", &req),
        Output::Drop(DropReason::UnknownSession)
    ));
    let mut ex = rig.exchange();
    assert_eq!(
        s.call(0x00, 0x01, &[], &mut ex).unwrap().0,
        0,
        "the session still works"
    );
}

#[test]
fn encrypted_suites_refuse_plaintext_and_tampering() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V20Session::open("admin", "password", suite(3), 0x14, &mut ex).unwrap();
    let mut tampered = s.request(0x00, 0x01, &[]);
    let n = tampered.len();
    tampered[n - 20] ^= 1;
    assert!(ex(&tampered).is_none());
    let mut plain = s.clone();
    plain.suite = suite(2); // integrity but no encryption, same keys
    assert!(ex(&plain.request(0x00, 0x01, &[])).is_none());
    drop(ex);
    assert!(rig.bmc.borrow().stats.auth_failures >= 2);
}

#[test]
fn full_table_refuses_only_while_every_session_was_used_within_a_second() {
    let mut cfg = config();
    cfg.max_sessions = 2;
    let rig = Rig::new(cfg);
    let (pa, pb, pc) = ("10.0.0.2:1", "10.0.0.3:1", "10.0.0.4:1");
    let mut a = V20Session::open(
        "admin",
        "password",
        suite(17),
        0x14,
        &mut rig.exchange_from(pa),
    )
    .unwrap();
    let mut b =
        V15Session::open("admin", "password", AUTH_MD5, 4, &mut rig.exchange_from(pb)).unwrap();
    assert_eq!(
        V20Session::open(
            "admin",
            "password",
            suite(17),
            0x14,
            &mut rig.exchange_from(pc)
        )
        .unwrap_err(),
        ConsoleError::Status(0x01)
    );
    assert_eq!(
        V15Session::open("admin", "password", AUTH_MD5, 4, &mut rig.exchange_from(pc)).unwrap_err(),
        ConsoleError::Completion(cc::OUT_OF_SPACE)
    );
    assert!(matches!(
        rig.events()[..],
        [
            Event::SessionRefused {
                reason: Refusal::TableFull,
                ..
            },
            Event::SessionRefused { .. }
        ]
    ));
    // A second on, `a` is used again; `b` is the least recently active and makes room.
    rig.advance(Duration::from_millis(1100));
    assert_eq!(
        a.call(0x00, 0x01, &[], &mut rig.exchange_from(pa))
            .unwrap()
            .0,
        0
    );
    let mut c = V20Session::open(
        "admin",
        "password",
        suite(17),
        0x14,
        &mut rig.exchange_from(pc),
    )
    .unwrap();
    assert!(
        b.call(0x00, 0x01, &[], &mut rig.exchange_from(pb)).is_err(),
        "b was reclaimed"
    );
    assert!(matches!(
        rig.events()[..],
        [Event::SessionReclaimed { id, .. }] if id == b.id
    ));
    assert_eq!(
        a.call(0x00, 0x01, &[], &mut rig.exchange_from(pa))
            .unwrap()
            .0,
        0
    );
    assert_eq!(
        c.call(0x00, 0x01, &[], &mut rig.exchange_from(pc))
            .unwrap()
            .0,
        0
    );
    let cid = c.bmc_id.to_le_bytes();
    c.call(0x06, 0x3C, &cid, &mut rig.exchange_from(pc))
        .unwrap();
    assert!(
        V15Session::open("admin", "password", AUTH_MD5, 4, &mut rig.exchange_from(pb)).is_ok(),
        "a closed session's slot is free at once"
    );
}

/// Clients that never close their sessions (killed ipmitool, one session per call): two
/// hundred abandoned sessions from twenty sources, and a live session used every second
/// survives them, and a new login works once the last abandoned one is a second old.
#[test]
fn abandoned_sessions_never_lock_out_a_live_or_a_new_one() {
    let rig = Rig::new(config());
    let live_peer = "10.1.0.1:623";
    let mut live = V20Session::open(
        "admin",
        "password",
        suite(17),
        0x14,
        &mut rig.exchange_from(live_peer),
    )
    .unwrap();
    let mut refused = 0;
    for i in 0..200 {
        let peer = format!("10.2.0.{}:{}", i % 20, 1000 + i);
        if i % 15 == 0 {
            rig.advance(Duration::from_millis(1100));
            let (code, _) = live
                .call(0x00, 0x01, &[], &mut rig.exchange_from(live_peer))
                .unwrap();
            assert_eq!(code, 0, "the live session survives abandoned session {i}");
        }
        let mut ex = rig.exchange_from(&peer);
        if V20Session::open("admin", "password", suite(17), 0x14, &mut ex).is_err() {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 0,
        "each batch of 15 finds the 15 slots beside the live one idle for a second"
    );
    rig.advance(Duration::from_millis(1100));
    let mut ex = rig.exchange_from("10.3.0.1:5");
    assert!(V20Session::open("admin", "password", suite(17), 0x14, &mut ex).is_ok());
    assert!(rig.bmc.borrow().stats.sessions_reclaimed >= 185);
}

#[test]
fn credentials_are_live() {
    let rig = Rig::new(config());
    let mut admin =
        V20Session::open("admin", "password", suite(17), 0x14, &mut rig.exchange()).unwrap();
    let mut admin15 =
        V15Session::open("admin", "password", AUTH_MD5, 4, &mut rig.exchange()).unwrap();
    let mut op = V20Session::open("op", "oppass", suite(3), 0x13, &mut rig.exchange()).unwrap();
    let mut viewer =
        V20Session::open("viewer", "viewer", suite(3), 0x12, &mut rig.exchange()).unwrap();
    // Same users, same passwords: nothing ends.
    rig.bmc.borrow_mut().set_config(Arc::new(config()));
    assert_eq!(rig.bmc.borrow().active_sessions(), 4);
    // admin's password rotated, op lowered to user, viewer untouched.
    let rotated = BmcConfig::new(vec![
        User::new("admin", "new-password", Privilege::Admin).unwrap(),
        User::new("op", "oppass", Privilege::User).unwrap(),
        User::new("viewer", "viewer", Privilege::User).unwrap(),
    ]);
    rig.bmc.borrow_mut().set_config(Arc::new(rotated));
    let mut ex = rig.exchange();
    assert!(admin.call(0x00, 0x01, &[], &mut ex).is_err());
    assert!(admin15.call(0x00, 0x01, &[], &mut ex).is_err());
    assert!(op.call(0x00, 0x01, &[], &mut ex).is_err());
    assert_eq!(viewer.call(0x00, 0x01, &[], &mut ex).unwrap().0, 0);
    let revoked: Vec<String> = rig
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::SessionRevoked { user, .. } => Some(user),
            _ => None,
        })
        .collect();
    assert_eq!(revoked.len(), 3, "{revoked:?}");
    assert!(V20Session::open("admin", "new-password", suite(17), 0x14, &mut ex).is_ok());
    // viewer removed: its session ends too.
    rig.bmc
        .borrow_mut()
        .set_config(Arc::new(BmcConfig::new(vec![
            User::new("admin", "new-password", Privilege::Admin).unwrap(),
        ])));
    assert!(viewer.call(0x00, 0x01, &[], &mut ex).is_err());
    assert_eq!(rig.bmc.borrow().stats.sessions_revoked, 4);
}

#[test]
fn half_open_flood_cannot_lock_logins_out() {
    let mut cfg = config();
    cfg.max_sessions = 4;
    let rig = Rig::new(cfg);
    for i in 0..100 {
        let mut req = vec![0, 0, 0, 0, i, 0, 0, 0];
        req.extend_from_slice(&[
            0, 0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 8, 4, 0, 0, 0, 2, 0, 0, 8, 1, 0, 0, 0,
        ]);
        rig.from("10.0.0.66:1", &console::sessionless_v20(0x10, &req));
    }
    let mut ex = rig.exchange();
    assert!(V20Session::open("admin", "password", suite(17), 0x14, &mut ex).is_ok());
}

#[test]
fn idle_sessions_expire() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V15Session::open("admin", "password", AUTH_MD5, 4, &mut ex).unwrap();
    drop(ex);
    let now = *rig.now.borrow();
    let deadline = rig.bmc.borrow().poll_timeout(now);
    assert_eq!(deadline, Some(now + Duration::from_secs(60)));
    rig.advance(Duration::from_secs(60));
    rig.bmc.borrow_mut().handle_timeout(*rig.now.borrow());
    assert_eq!(
        rig.bmc.borrow().active_sessions(),
        0,
        "expired on the timer"
    );
    assert!(matches!(rig.events()[..], [Event::SessionExpired { id, .. }] if id == s.id));
    assert_eq!(rig.bmc.borrow().poll_timeout(*rig.now.borrow()), None);
    let mut ex = rig.exchange();
    assert!(s.call(0x00, 0x01, &[], &mut ex).is_err());
}

#[test]
fn retransmission_while_an_action_runs_does_not_run_it_twice() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V20Session::open("admin", "password", suite(17), 0x14, &mut ex).unwrap();
    ex(&s.request(0x06, 0x3B, &[4])).unwrap();
    drop(ex);
    *rig.vm.borrow_mut() = VmView {
        power: PowerState::On,
        boot: None,
        guid: [0; 16],
    };
    let first = s.request(0x00, 0x02, &[2]);
    let Output::Action(Action::PowerCycle, When::Now, pending) = rig.from(PEER, &first) else {
        panic!("cycle")
    };
    s.rq_seq -= 1; // a retransmission: same rqSeq, new session sequence number
    let again = s.request(0x00, 0x02, &[2]);
    assert!(matches!(
        rig.from(PEER, &again),
        Output::Drop(DropReason::InFlight)
    ));
    let reply = rig
        .bmc
        .borrow_mut()
        .complete(pending, Err(ActionError::Busy))
        .unwrap();
    assert_eq!(s.parse(&reply).unwrap().0, cc::NODE_BUSY);
}

/// Chassis Control during a transition, inside an RMCP+ session: a goal already underway is
/// answered at once without an action; one that needs the transition to end comes out as an
/// action for once the machine has settled, and its reply carries what the driver reports
/// (0xC0 when the transition outlasted the deadline).
#[test]
fn power_commands_during_a_transition() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V20Session::open("admin", "password", suite(17), 0x14, &mut ex).unwrap();
    ex(&s.request(0x06, 0x3B, &[4])).unwrap();
    drop(ex);
    let set_power = |p| rig.vm.borrow_mut().power = p;

    // Stopping reads "on"; off and soft are already underway.
    set_power(PowerState::Stopping);
    for op in [0x00, 0x05] {
        let Output::Reply(r) = rig.from(PEER, &s.request(0x00, 0x02, &[op])) else {
            panic!("op {op} while stopping answers at once")
        };
        assert_eq!(s.parse(&r).unwrap(), (cc::OK, vec![]));
    }
    // on while stopping: power on once off.
    let Output::Action(Action::PowerOn, When::Settled, pending) =
        rig.from(PEER, &s.request(0x00, 0x02, &[0x01]))
    else {
        panic!("on while stopping waits for off")
    };
    let r = rig.bmc.borrow_mut().complete(pending, Ok(())).unwrap();
    assert_eq!(s.parse(&r).unwrap(), (cc::OK, vec![]));

    // Starting reads "off"; on is already underway, soft waits, off acts at once.
    set_power(PowerState::Starting);
    let Output::Reply(r) = rig.from(PEER, &s.request(0x00, 0x02, &[0x01])) else {
        panic!("on while starting answers at once")
    };
    assert_eq!(s.parse(&r).unwrap(), (cc::OK, vec![]));
    let Output::Action(Action::PowerOff, When::Now, pending) =
        rig.from(PEER, &s.request(0x00, 0x02, &[0x00]))
    else {
        panic!("off while starting acts at once")
    };
    rig.bmc.borrow_mut().complete(pending, Ok(())).unwrap();
    let Output::Action(Action::SoftOff, When::Settled, pending) =
        rig.from(PEER, &s.request(0x00, 0x02, &[0x05]))
    else {
        panic!("soft while starting waits for on")
    };
    let r = rig
        .bmc
        .borrow_mut()
        .complete(pending, Err(ActionError::Busy))
        .unwrap();
    assert_eq!(s.parse(&r).unwrap(), (cc::NODE_BUSY, vec![]));
    // Boot devices never wait for power.
    let Output::Action(Action::SetBoot(Some(_)), When::Now, _) =
        rig.from(PEER, &s.request(0x00, 0x08, &[0x05, 0x80, 0x04, 0, 0, 0]))
    else {
        panic!("bootdev while starting acts at once")
    };
}

#[test]
fn sessionless_commands_other_than_discovery_are_dropped() {
    let rig = Rig::new(config());
    assert!(
        rig.send(&console::sessionless_v15(0x00, 0x02, 1, &[0]))
            .is_none()
    );
    assert!(
        rig.send(&console::sessionless_v15(0x00, 0x01, 1, &[]))
            .is_none()
    );
    assert!(rig.actions.borrow().is_empty());
}

#[test]
fn garbage_never_panics_and_never_amplifies_much() {
    let rig = Rig::new(config());
    let mut rng = TestEntropy(7);
    let mut seeds: Vec<Vec<u8>> = vec![
        console::ping(1),
        console::sessionless_v15(6, 0x38, 1, &[0x8e, 4]),
    ];
    {
        let mut ex = rig.exchange();
        let mut s = V20Session::open("admin", "password", suite(17), 0x14, &mut ex).unwrap();
        seeds.push(s.request(0, 1, &[]));
        let mut v = V15Session::open("admin", "password", AUTH_MD5, 4, &mut ex).unwrap();
        seeds.push(v.request(0, 1, &[]));
    }
    for i in 0..20_000 {
        let mut d = if i % 2 == 0 {
            let mut len = [0u8; 2];
            rng.fill(&mut len);
            let mut d = vec![0u8; (u16::from_le_bytes(len) % 200) as usize];
            rng.fill(&mut d);
            if d.len() > 4 && i % 4 == 0 {
                d[..4].copy_from_slice(&[6, 0, 0xFF, 7]);
            }
            d
        } else {
            seeds[i % seeds.len()].clone()
        };
        if i % 2 == 1 && !d.is_empty() {
            let pos = rng.u32() as usize % d.len();
            d[pos] ^= 1 << (rng.u32() % 8);
            d.truncate(d.len() - (rng.u32() as usize % 3).min(d.len()));
        }
        if let Output::Reply(r) = rig.from("10.0.0.7:1", &d) {
            assert!(
                r.len() <= d.len() + 28,
                "reply of {} bytes to {} bytes",
                r.len(),
                d.len()
            );
        }
    }
    assert!(matches!(
        rig.from(PEER, &vec![6u8; 2000]),
        Output::Drop(DropReason::Oversized)
    ));
}

#[test]
fn rakp2_is_rate_limited_per_source() {
    // A table large enough that the source's share does not refuse the handshakes first.
    let mut cfg = config();
    cfg.max_sessions = 256;
    let rig = Rig::new(cfg);
    let mut answered = 0;
    // A name and a console session id of its own each time: only the per-source limit bites.
    for i in 0..100u32 {
        let id = open_session_as(&rig, "10.0.0.8:1", i);
        if let Output::Reply(_) = rakp1_as(&rig, "10.0.0.8:1", id, format!("user{i}").as_bytes()) {
            answered += 1;
        }
    }
    assert_eq!(
        answered, 40,
        "the burst, then nothing within the same instant"
    );
    // Another source is not locked out.
    let mut ex = rig.exchange();
    assert!(V20Session::open("admin", "password", suite(3), 0x14, &mut ex).is_ok());
}

#[test]
fn boot_options_round_trip_through_the_backend_view() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V20Session::open("admin", "password", suite(17), 0x14, &mut ex).unwrap();
    s.call(0x06, 0x3B, &[4], &mut ex).unwrap();
    assert_eq!(s.call(0x00, 0x08, &[0x00, 0x01], &mut ex).unwrap().0, 0);
    assert_eq!(
        s.call(0x00, 0x08, &[0x04, 0x01, 0x01], &mut ex).unwrap().0,
        0
    );
    assert_eq!(
        s.call(0x00, 0x08, &[0x05, 0xE0, 0x14, 0, 0, 0], &mut ex)
            .unwrap()
            .0,
        0
    );
    assert_eq!(
        s.call(0x00, 0x08, &[0x05, 0x80, 0x3C, 0, 0, 0], &mut ex)
            .unwrap()
            .0,
        cc::INVALID_DATA_FIELD
    );
    assert_eq!(
        s.call(0x00, 0x08, &[0x07, 0], &mut ex).unwrap().0,
        cc::PARAMETER_NOT_SUPPORTED
    );
    drop(ex);
    let set = *rig.actions.borrow().last().unwrap();
    let Action::SetBoot(Some(b)) = set else {
        panic!()
    };
    assert_eq!(
        b,
        BootOverride {
            device: BootDevice::Cdrom,
            persistent: true,
            efi: true
        }
    );
    rig.vm.borrow_mut().boot = Some(b);
    let mut ex = rig.exchange();
    assert_eq!(
        s.call(0x00, 0x09, &[0x05, 0, 0], &mut ex).unwrap(),
        (0, vec![1, 5, 0xE0, 0x14, 0, 0, 0])
    );
    assert_eq!(
        s.call(0x00, 0x09, &[0x04, 0, 0], &mut ex).unwrap(),
        (0, vec![1, 4, 0, 1])
    );
}

/// A stand-in for the fast path's shared slot: the engine must route every sequence decision
/// of a published session through it, and unpublish by dropping it.
#[derive(Debug)]
struct MemShared {
    window: std::sync::Mutex<super::session::SeqWindow>,
    outbound: std::sync::atomic::AtomicU32,
    privilege: std::sync::atomic::AtomicU8,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl super::session::SharedSession for MemShared {
    fn accept(&self, seq: u32) -> bool {
        let mut w = self.window.lock().unwrap();
        w.check(seq) && {
            w.commit(seq);
            true
        }
    }
    fn next_outbound(&self) -> u32 {
        self.outbound
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }
    fn set_privilege(&self, p: Privilege) {
        self.privilege
            .store(p.wire(), std::sync::atomic::Ordering::SeqCst);
    }
    fn last_fast_answer(&self, _now: Instant) -> Option<Instant> {
        None
    }
    fn touch(&self, _now: Instant) {}
}

impl Drop for MemShared {
    fn drop(&mut self) {
        self.dropped
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct MemPublisher {
    published: std::sync::Mutex<Vec<super::session::PublishV15>>,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
}

impl super::session::SessionPublisher for MemPublisher {
    fn publish(
        &self,
        s: &super::session::PublishV15,
    ) -> Option<Box<dyn super::session::SharedSession>> {
        self.published.lock().unwrap().push(s.clone());
        Some(Box::new(MemShared {
            window: std::sync::Mutex::new(super::session::SeqWindow::new(s.inbound_start, 8, 8)),
            outbound: std::sync::atomic::AtomicU32::new(s.next_outbound),
            privilege: std::sync::atomic::AtomicU8::new(s.privilege.wire()),
            dropped: self.dropped.clone(),
        }))
    }
}

/// The engine offers a session to the fast path only with the state the offer carries: one
/// that already moved on (a packet handled before the driver asked) stays the engine's.
#[test]
fn a_v15_session_that_moved_on_before_publishing_is_not_offered() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V15Session::open("admin", "password", AUTH_MD5, 4, &mut ex).unwrap();
    assert_eq!(s.call(0x00, 0x01, &[], &mut ex).unwrap().0, 0);
    assert!(rig.bmc.borrow_mut().poll_publish().is_none());
    assert_eq!(
        s.call(0x00, 0x01, &[], &mut ex).unwrap().0,
        0,
        "still answered"
    );
}

#[test]
fn published_v15_sessions_keep_their_sequence_state_in_the_shared_slot() {
    let rig = Rig::new(config());
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = Arc::new(MemPublisher {
        published: Default::default(),
        dropped: dropped.clone(),
    });
    let mut ex = rig.exchange();
    let mut s = V15Session::open("admin", "password", AUTH_MD5, 4, &mut ex).unwrap();
    use super::session::SessionPublisher;
    // The driver's part: what the engine offers goes to the publisher, its slot back.
    let offer = rig.bmc.borrow_mut().poll_publish().expect("an offer");
    let shared = publisher.publish(&offer).unwrap();
    rig.bmc.borrow_mut().attach_shared(offer.session_id, shared);
    assert!(
        rig.bmc.borrow_mut().poll_publish().is_none(),
        "offered once"
    );
    let p = publisher.published.lock().unwrap()[0].clone();
    assert_eq!(
        (p.session_id, p.auth_type, p.inbound_start, p.next_outbound),
        (s.id, AUTH_MD5, s.seq, 2)
    );
    assert_eq!(
        p.password,
        crate::crypto::Key20::from_password("password")
            .unwrap()
            .first16()
    );
    assert_eq!(s.call(0x06, 0x3B, &[4], &mut ex).unwrap(), (0, vec![4]));
    // The fast path answered two packets meanwhile: it took sequence numbers on both sides.
    s.seq += 2;
    let reply = ex(&s.request(0x00, 0x01, &[])).unwrap();
    assert_eq!(
        crate::wire::le_u32(&reply[5..9]),
        3,
        "outbound comes from the shared counter"
    );
    let replay = {
        s.seq -= 1;
        s.request(0x00, 0x01, &[])
    };
    assert!(ex(&replay).is_none(), "the shared window refuses a replay");
    let sid = s.id.to_le_bytes();
    s.call(0x06, 0x3C, &sid, &mut ex).unwrap();
    assert_eq!(
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "closing unpublishes"
    );
}

/// An exchange that sends from `peer`, and runs `between` after the `at`-th datagram.
fn exchange_from<'a>(
    rig: &'a Rig,
    peer: &'a str,
    at: usize,
    mut between: impl FnMut(&Rig) + 'a,
) -> impl FnMut(&[u8]) -> Option<Vec<u8>> + 'a {
    let mut n = 0;
    move |d| {
        let out = match rig.from(peer, d) {
            Output::Reply(r) => Some(r),
            _ => None,
        };
        n += 1;
        if n == at {
            between(rig);
        }
        out
    }
}

#[test]
fn open_session_and_challenge_keep_nothing_in_the_table() {
    let rig = Rig::new(config());
    for i in 0..50 {
        let id = open_session_as(&rig, PEER, i);
        assert_ne!(id, 0);
        let (cc, data) = console::parse_v15(
            &rig.send(&console::sessionless_v15(
                0x06,
                0x39,
                1,
                b"\x02admin\0\0\0\0\0\0\0\0\0\0\0",
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!((cc, data.len()), (0, 20));
    }
    assert_eq!(rig.bmc.borrow().sessions.len(), 0);
    // Both still lead to sessions.
    let mut ex = rig.exchange();
    assert!(V20Session::open("admin", "password", suite(3), 0x14, &mut ex).is_ok());
    assert!(V15Session::open("admin", "password", AUTH_MD5, 4, &mut ex).is_ok());
    drop(ex);
    assert_eq!(rig.bmc.borrow().sessions.len(), 2);
}

#[test]
fn rakp1_with_a_forged_old_or_moved_cookie_is_dropped() {
    let rig = Rig::new(config());
    let id = open_session(&rig, PEER);
    // Another source, or the same address from another port, naming the id.
    for other in ["10.0.0.3:40000", "10.0.0.2:40001"] {
        assert!(matches!(
            rakp1(&rig, other, id),
            Output::Drop(DropReason::UnknownSession)
        ));
    }
    // Any other id: every bit is carried and bound, or part of the MAC.
    for bit in 0..32 {
        assert!(matches!(
            rakp1(&rig, PEER, id ^ 1 << bit),
            Output::Drop(DropReason::UnknownSession)
        ));
    }
    assert_eq!(rig.bmc.borrow().sessions.len(), 0);
    // Too old: two slices later.
    *rig.now.borrow_mut() += cookie::SLICE * 2;
    assert!(matches!(
        rakp1(&rig, PEER, id),
        Output::Drop(DropReason::UnknownSession)
    ));
    // Within two slices, the real console proceeds.
    let id = open_session(&rig, PEER);
    *rig.now.borrow_mut() += cookie::SLICE;
    assert!(matches!(rakp1(&rig, PEER, id), Output::Reply(_)));
    assert_eq!(rig.bmc.borrow().sessions.len(), 1);

    // IPMI 1.5: Activate Session from elsewhere, or too late, gets nothing.
    let rig = Rig::new(config());
    let mut ex = exchange_from(&rig, PEER, 0, |_| {});
    let mut moved = {
        let mut n = 0;
        let rig = &rig;
        move |d: &[u8]| {
            n += 1;
            let peer = if n == 1 { PEER } else { "10.0.0.3:40000" };
            match rig.from(peer, d) {
                Output::Reply(r) => Some(r),
                _ => None,
            }
        }
    };
    assert_eq!(
        V15Session::open("admin", "password", AUTH_MD5, 4, &mut moved).unwrap_err(),
        ConsoleError::NoAnswer
    );
    let mut late = exchange_from(&rig, PEER, 1, |rig| {
        *rig.now.borrow_mut() += cookie::SLICE * 2;
    });
    assert_eq!(
        V15Session::open("admin", "password", AUTH_MD5, 4, &mut late).unwrap_err(),
        ConsoleError::NoAnswer
    );
    assert_eq!(rig.bmc.borrow().sessions.len(), 0);
    assert!(V15Session::open("admin", "password", AUTH_MD5, 4, &mut ex).is_ok());
}

/// Spoofed Open Sessions and Get Session Challenges from 1000 other sources, each with its
/// own console id, arrive between a real console's first and second message.
fn spoofed_flood(rig: &Rig) {
    for i in 0..1000u32 {
        let peer = format!("10.9.{}.{}:623", i / 250, i % 250 + 1);
        open_session_as(rig, &peer, 0x5000_0000 + i);
        let mut d = vec![0x02];
        d.extend_from_slice(b"admin\0\0\0\0\0\0\0\0\0\0\0");
        rig.from(&peer, &console::sessionless_v15(0x06, 0x39, 1, &d));
    }
}

#[test]
fn a_spoofed_open_session_flood_neither_fills_the_table_nor_stops_a_handshake() {
    let mut cfg = config();
    // Room for the three real sessions from one source (which may hold half the table).
    cfg.max_sessions = 6;
    let rig = Rig::new(cfg);
    for id in [3u8, 17] {
        let mut ex = exchange_from(&rig, PEER, 1, spoofed_flood);
        let mut s = V20Session::open("admin", "password", suite(id), 0x14, &mut ex)
            .unwrap_or_else(|e| panic!("suite {id}: {e}"));
        assert_eq!(s.call(0x00, 0x01, &[], &mut ex).unwrap().0, 0);
    }
    let mut ex = exchange_from(&rig, PEER, 1, spoofed_flood);
    let mut v = V15Session::open("admin", "password", AUTH_MD5, 4, &mut ex).unwrap();
    assert_eq!(v.call(0x00, 0x01, &[], &mut ex).unwrap().0, 0);
    assert_eq!(
        rig.bmc.borrow().sessions.len(),
        3,
        "only the three real sessions"
    );
}

/// Open Session and RAKP1 for `name` from `peer`: the managed id and RAKP2 payload.
fn rakp2_for(rig: &Rig, peer: &str, console_id: u32, name: &[u8]) -> Option<(u32, Vec<u8>)> {
    let id = open_session_as(rig, peer, console_id);
    match rakp1_as(rig, peer, id, name) {
        Output::Reply(r) => Some((id, r[16..].to_vec())),
        _ => None,
    }
}

#[test]
fn an_unknown_name_gets_a_rakp2_like_a_known_one_and_fails_like_a_wrong_password() {
    let rig = Rig::new(config());
    let (_, known) = rakp2_for(&rig, PEER, 1, b"admin").unwrap();
    let (id1, unknown) = rakp2_for(&rig, PEER, 2, b"nobody").unwrap();
    let (_, low) = rakp2_for(&rig, PEER, 3, b"viewer").unwrap();
    assert_eq!((known.len(), known[1]), (60, 0));
    for r in [&unknown, &low] {
        assert_eq!((r.len(), r[1]), (known.len(), known[1]));
    }
    // Asked twice, an unknown name answers under the same stand-in key each time.
    let (id2, again) = rakp2_for(&rig, PEER, 4, b"nobody").unwrap();
    let decoy = rig.bmc.borrow().secret.decoy_key(b"nobody");
    for (console_id, id, r2) in [(2u32, id1, &unknown), (4, id2, &again)] {
        let r2 = crate::wire::rakp::Rakp2::parse(r2).unwrap();
        let b = r2.body.unwrap();
        let want = crate::crypto::AuthAlg::HmacSha1.hmac(
            &decoy.0,
            &[
                &console_id.to_le_bytes(),
                &id.to_le_bytes(),
                &[0x77; 16],
                &b.rc,
                &b.guid,
                &[0x14, 6],
                b"nobody",
            ],
        );
        assert_eq!((r2.console_id, b.code), (console_id, &want[..]));
    }
    // RAKP3 with a proof under some password: unknown name and wrong password end alike.
    let rakp4 = |name: &[u8], password: &str, console_id: u32| {
        let id = open_session_as(&rig, PEER, console_id);
        let Output::Reply(r) = rakp1_as(&rig, PEER, id, name) else {
            panic!("rakp1")
        };
        let r2 = crate::wire::rakp::Rakp2::parse(&r[16..]).unwrap();
        let rc = r2.body.unwrap().rc;
        let kuid = crate::crypto::Key20::from_password(password).unwrap();
        let code = crate::crypto::AuthAlg::HmacSha1.hmac(
            &kuid.0,
            &[
                &rc,
                &console_id.to_le_bytes(),
                &[0x14, name.len() as u8],
                name,
            ],
        );
        let mut p = Vec::new();
        crate::wire::rakp::Rakp3 {
            tag: 2,
            status: 0,
            managed_id: id,
            code: &code,
        }
        .emit(&mut p);
        match rig.from(PEER, &console::sessionless_v20(0x14, &p)) {
            Output::Reply(r) => r[16..].to_vec(),
            other => panic!("{other:?}"),
        }
    };
    let wrong = rakp4(b"admin", "wrong", 10);
    let nobody = rakp4(b"nobody", "password", 11);
    assert_eq!(wrong[1], 0x0F, "INVALID_INTEGRITY_CHECK");
    assert_eq!((nobody.len(), nobody[1]), (wrong.len(), wrong[1]));
    // A known user's own password still opens; a role above its limit is refused only then.
    assert_eq!(rakp4(b"admin", "password", 12)[1], 0);
    assert_eq!(rakp4(b"viewer", "viewer", 13)[1], 0x0A);
    assert_eq!(rakp4(b"viewer", "wrong", 14)[1], 0x0F);
}

/// RAKP2 answers to `n` Open Session + RAKP1 for `name`, each from a source of its own,
/// spread evenly over `over`; `between` runs after each.
fn rakp2_flood(
    rig: &Rig,
    name: &[u8],
    n: u32,
    over: Duration,
    mut between: impl FnMut(&Rig),
) -> usize {
    let mut answered = 0;
    for i in 0..n {
        let peer = format!("10.8.{}.{}:9", i / 250, i % 250 + 1);
        if rakp2_for(rig, &peer, i, name).is_some() {
            answered += 1;
        }
        between(rig);
        *rig.now.borrow_mut() += over / n;
    }
    answered
}

#[test]
fn one_user_name_gets_a_trickle_of_rakp2_from_many_sources() {
    for name in [&b"admin"[..], b"nobody"] {
        let rig = Rig::new(config());
        let answered = rakp2_flood(&rig, name, 1000, Duration::from_secs(5), |_| {});
        // The per-name budget, 16 at once and 6 per second; the same for a name that does
        // not exist, or the limit would tell names apart.
        assert!(
            (40..50).contains(&answered),
            "{answered} RAKP2 for {name:?} in 5 s"
        );
        assert_eq!(
            rig.bmc.borrow().stats.rakp_rate_limited,
            1000 - answered as u64
        );
        // Other names are not held back by it.
        assert!(rakp2_for(&rig, "10.7.0.1:9", 1, b"op").is_some());
    }
}

#[test]
fn a_login_script_from_one_source_is_never_refused() {
    let mut cfg = config();
    // Room for the flood's own handshakes: what is checked here is the RAKP2 limits.
    cfg.max_sessions = 64;
    let rig = Rig::new(cfg);
    // Someone floods RAKP1 for the same name from many sources meanwhile.
    let mut flood = 0u32;
    let mut ex = rig.exchange();
    for i in 0..600 {
        let mut s = V20Session::open("admin", "password", suite(17), 0x14, &mut ex)
            .unwrap_or_else(|e| panic!("login {i}: {e}"));
        assert_eq!(s.call(0x00, 0x01, &[], &mut ex).unwrap().0, 0);
        let sid = s.bmc_id.to_le_bytes();
        assert_eq!(s.call(0x06, 0x3C, &sid, &mut ex).unwrap().0, 0);
        if i % 3 == 0 {
            let peer = format!("10.8.{}.{}:9", flood / 250, flood % 250 + 1);
            rakp2_for(&rig, &peer, flood, b"admin");
            flood += 1;
        }
        // Hundreds per second.
        *rig.now.borrow_mut() += Duration::from_millis(2);
    }
    drop(ex);
    let stats = rig.bmc.borrow().stats;
    assert_eq!(stats.sessions_opened, 600);
    assert!(stats.rakp_rate_limited > 100, "the flood was limited");
    // Logins that stay open at once (up to the table) from the same source work too.
    let mut ex = rig.exchange();
    let held: Vec<_> = (0..4)
        .map(|_| V20Session::open("admin", "password", suite(3), 0x14, &mut ex).unwrap())
        .collect();
    assert_eq!(
        held.iter()
            .map(|s| s.bmc_id)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        4,
        "distinct session ids"
    );
}

#[test]
fn the_32_byte_k1_k2_variant_verifies_and_is_kept() {
    for id in [15u8, 16, 17] {
        let mut cfg = config();
        cfg.cipher_suites = vec![id];
        let rig = Rig::new(cfg);
        let mut ex = rig.exchange();
        let opts = console::V20Options {
            long_kdf_constants: true,
            ..Default::default()
        };
        let mut s = V20Session::open_with("admin", "password", suite(id), 0x14, opts, &mut ex)
            .unwrap_or_else(|e| panic!("suite {id}: {e}"));
        for _ in 0..3 {
            assert_eq!(
                s.call(0x06, 0x3B, &[4], &mut ex).unwrap(),
                (0, vec![4]),
                "suite {id}"
            );
        }
        // Chosen once: the spec's keys of the same session are refused from now on.
        let spec_k1 = s.suite.auth.hmac(&s.sik, &[&[1u8; 20]]);
        let spec_k2 = s.suite.auth.hmac(&s.sik, &[&[2u8; 20]]);
        let mut spec = s.clone();
        (spec.k1, spec.k2) = (spec_k1, spec_k2);
        let kept = spec.call(0x00, 0x01, &[], &mut ex);
        if id == 15 {
            assert!(kept.is_ok(), "suite 15 uses neither key");
        } else {
            assert!(kept.is_err(), "suite {id}: the choice is kept");
        }
        drop(ex);
        let want = u64::from(id != 15);
        assert_eq!(
            rig.bmc.borrow().stats.sessions_32byte_kdf,
            want,
            "suite {id}"
        );
        // The spec's constants still work and are not counted.
        let mut ex = rig.exchange();
        let mut s = V20Session::open("admin", "password", suite(id), 0x14, &mut ex).unwrap();
        assert_eq!(s.call(0x00, 0x01, &[], &mut ex).unwrap().0, 0);
        drop(ex);
        assert_eq!(rig.bmc.borrow().stats.sessions_32byte_kdf, want);
    }
}

#[test]
fn a_duplicated_activate_session_opens_one_session() {
    let rig = Rig::new(config());
    let mut ex = {
        let rig = &rig;
        let mut n = 0;
        move |d: &[u8]| {
            let first = rig.send(d);
            n += 1;
            if n == 2 {
                // The network delivers the Activate Session twice.
                assert!(rig.send(d).is_none(), "the copy is not answered");
            }
            first
        }
    };
    let mut s = V15Session::open("admin", "password", AUTH_MD5, 4, &mut ex).unwrap();
    assert_eq!(s.call(0x00, 0x01, &[], &mut ex).unwrap().0, 0);
    assert_eq!(rig.bmc.borrow().sessions.len(), 1);
    assert_eq!(rig.bmc.borrow().stats.replays, 1);
}

#[test]
fn session_info_describes_sessions_by_index_handle_and_id() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut admin = V20Session::open("admin", "password", suite(17), 0x14, &mut ex).unwrap();
    assert_eq!(admin.call(0x06, 0x3B, &[4], &mut ex).unwrap(), (0, vec![4]));
    let mut viewer = V15Session::open("viewer", "viewer", AUTH_MD5, 2, &mut ex).unwrap();

    // This session: RMCP+ (1h) on channel 1, admin is user 1, from 10.0.0.2:40000.
    let (code, me) = admin.call(0x06, 0x3D, &[0x00], &mut ex).unwrap();
    assert_eq!(code, 0);
    assert_eq!(
        me[1..],
        [16, 2, 1, 4, 0x11, 10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0x40, 0x9C]
    );
    let admin_handle = me[0];
    assert_ne!(admin_handle, 0);

    // The other one by its id: IPMI 1.5 (0h), viewer is user 3 of the configuration.
    let mut by_id = vec![0xFF];
    by_id.extend_from_slice(&viewer.id.to_le_bytes());
    let (code, other) = admin.call(0x06, 0x3D, &by_id, &mut ex).unwrap();
    assert_eq!((code, other.len()), (0, 18));
    assert_eq!(other[3..6], [3, 2, 0x01]);
    let viewer_handle = other[0];
    assert_ne!(viewer_handle, admin_handle);

    // By handle, and by index in handle order: the same answers; past the end, counts only.
    assert_eq!(
        viewer
            .call(0x06, 0x3D, &[0xFE, admin_handle], &mut ex)
            .unwrap(),
        (0, me.clone())
    );
    let listed: Vec<u8> = (1..=2)
        .map(|i| admin.call(0x06, 0x3D, &[i], &mut ex).unwrap().1[0])
        .collect();
    let mut handles = vec![admin_handle, viewer_handle];
    handles.sort();
    assert_eq!(listed, handles);
    assert_eq!(
        admin.call(0x06, 0x3D, &[3], &mut ex).unwrap(),
        (0, vec![0, 16, 2])
    );
    assert_eq!(
        admin
            .call(0x06, 0x3D, &[0xFF, 1, 2, 3, 4], &mut ex)
            .unwrap(),
        (0, vec![0, 16, 2])
    );
    assert_eq!(
        admin.call(0x06, 0x3D, &[0xFF, 1], &mut ex).unwrap().0,
        cc::REQUEST_LENGTH_INVALID
    );

    // Handles outlive other sessions: close the viewer, the admin keeps its handle.
    let sid = viewer.id.to_le_bytes();
    assert_eq!(viewer.call(0x06, 0x3C, &sid, &mut ex).unwrap().0, 0);
    let (_, again) = admin.call(0x06, 0x3D, &[0x00], &mut ex).unwrap();
    assert_eq!((again[0], again[2]), (admin_handle, 1));
}

#[test]
fn accounts_and_lan_parameters_through_a_session() {
    let rig = Rig::new(config());
    rig.bmc.borrow_mut().set_site(super::site::Site {
        vm_name: "vm-0".into(),
        local: "10.254.23.1:6230".parse().unwrap(),
        ..Default::default()
    });
    let mut ex = rig.exchange();
    let mut s = V20Session::open("op", "oppass", suite(3), 0x13, &mut ex).unwrap();
    // Sessions start at User: accounts are an Operator read.
    assert_eq!(
        s.call(0x06, 0x46, &[1], &mut ex).unwrap().0,
        cc::INSUFFICIENT_PRIVILEGE
    );
    assert_eq!(s.call(0x06, 0x3B, &[3], &mut ex).unwrap(), (0, vec![3]));
    let (code, name) = s.call(0x06, 0x46, &[2], &mut ex).unwrap();
    assert_eq!((code, &name[..2], name.len()), (0, &b"op"[..], 16));
    assert_eq!(
        s.call(0x06, 0x44, &[0x01, 3], &mut ex).unwrap(),
        (0, vec![16, 0x43, 3, 0x12])
    );
    assert_eq!(
        s.call(0x0C, 0x02, &[0x01, 3, 0, 0], &mut ex).unwrap(),
        (0, vec![0x11, 10, 254, 23, 1])
    );
    assert_eq!(
        s.call(0x0C, 0x02, &[0x01, 8, 0, 0], &mut ex).unwrap(),
        (0, vec![0x11, 0x56, 0x18])
    );
    assert_eq!(
        s.call(0x0C, 0x01, &[0x01, 3, 1, 2, 3, 4], &mut ex)
            .unwrap()
            .0,
        cc::INSUFFICIENT_PRIVILEGE
    );
}

#[test]
fn sdr_walk_and_power_sensor_follow_the_view() {
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V15Session::open("viewer", "viewer", AUTH_MD5, 2, &mut ex).unwrap();
    let (_, res) = s.call(0x0A, 0x22, &[], &mut ex).unwrap();
    // Walk the repository as ipmitool does: header, then body, until FFFFh.
    let mut next = [0u8, 0];
    let mut types = Vec::new();
    while next != [0xFF, 0xFF] {
        let (code, h) = s
            .call(
                0x0A,
                0x23,
                &[res[0], res[1], next[0], next[1], 0, 5],
                &mut ex,
            )
            .unwrap();
        assert_eq!(code, 0);
        let (code, body) = s
            .call(0x0A, 0x23, &[res[0], res[1], h[2], h[3], 5, h[6]], &mut ex)
            .unwrap();
        assert_eq!((code, body.len()), (0, 2 + h[6] as usize));
        types.push(h[5]);
        next = [h[0], h[1]];
    }
    assert_eq!(types, [0x02, 0x12], "compact sensor, then the MC locator");
    assert_eq!(
        s.call(0x04, 0x2D, &[1], &mut ex).unwrap(),
        (0, vec![0x05, 0x40, 0x20, 0x80]),
        "off: S5/G2"
    );
    rig.vm.borrow_mut().power = PowerState::On;
    assert_eq!(
        s.call(0x04, 0x2D, &[1], &mut ex).unwrap(),
        (0, vec![0x00, 0x40, 0x01, 0x80]),
        "on: S0/G0"
    );
    assert_eq!(s.call(0x06, 0x07, &[], &mut ex).unwrap(), (0, vec![0, 0]));
}

/// `chassis bootdev pxe` in a session that `rig` completes at once.
fn set_pxe_once(s: &mut V20Session, ex: &mut impl FnMut(&[u8]) -> Option<Vec<u8>>) {
    assert_eq!(
        s.call(0x00, 0x08, &[0x05, 0x80, 0x04, 0, 0, 0], ex)
            .unwrap(),
        (0, vec![])
    );
}

/// Whether the timers due `after` the rig's present time report expired boot flags.
fn boot_flags_expire_after(rig: &Rig, after: Duration) -> Vec<BootOverride> {
    let at = *rig.now.borrow() + after;
    rig.bmc.borrow_mut().handle_timeout(at);
    rig.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::BootFlagsExpired(flags) => Some(flags),
            _ => None,
        })
        .collect()
}

#[test]
fn one_shot_boot_flags_expire_unless_a_restart_follows() {
    let pxe = BootOverride {
        device: BootDevice::Pxe,
        persistent: false,
        efi: false,
    };
    let rig = Rig::new(config());
    {
        let mut ex = rig.exchange();
        let mut s = V20Session::open("admin", "password", suite(17), 0x14, &mut ex).unwrap();
        s.call(0x06, 0x3B, &[4], &mut ex).unwrap();
        set_pxe_once(&mut s, &mut ex);
    }
    let now = *rig.now.borrow();
    assert_eq!(
        rig.bmc.borrow().poll_timeout(now),
        Some(now + Duration::from_secs(60)),
        "the session's idle limit and the flags' expiry"
    );
    assert_eq!(boot_flags_expire_after(&rig, Duration::from_secs(59)), []);
    assert_eq!(
        boot_flags_expire_after(&rig, Duration::from_secs(60)),
        [pxe]
    );
    assert_eq!(
        boot_flags_expire_after(&rig, Duration::from_secs(120)),
        [],
        "once"
    );

    // Parameter 3 = 08h first (as Ironic sends it): no countdown.
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V20Session::open("admin", "password", suite(17), 0x14, &mut ex).unwrap();
    s.call(0x06, 0x3B, &[4], &mut ex).unwrap();
    assert_eq!(
        s.call(0x00, 0x08, &[0x03, 0x08], &mut ex).unwrap(),
        (0, vec![])
    );
    assert_eq!(
        s.call(0x00, 0x09, &[0x03, 0, 0], &mut ex).unwrap(),
        (0, vec![1, 3, 0x08])
    );
    set_pxe_once(&mut s, &mut ex);
    drop(ex);
    assert_eq!(boot_flags_expire_after(&rig, Duration::from_secs(61)), []);

    // A power on right after: the restart consumes the override, no countdown left.
    let rig = Rig::new(config());
    let mut ex = rig.exchange();
    let mut s = V20Session::open("admin", "password", suite(17), 0x14, &mut ex).unwrap();
    s.call(0x06, 0x3B, &[4], &mut ex).unwrap();
    set_pxe_once(&mut s, &mut ex);
    assert_eq!(s.call(0x00, 0x02, &[0x01], &mut ex).unwrap(), (0, vec![]));
    drop(ex);
    assert_eq!(boot_flags_expire_after(&rig, Duration::from_secs(61)), []);
    assert_eq!(
        *rig.actions.borrow(),
        [Action::SetBoot(Some(pxe)), Action::PowerOn]
    );
}

// Serial-over-LAN (IPMI 2.0 §15, §24, §26) through whole sessions.

const SECOND: &str = "10.0.0.3:40001";
const SOL: u8 = 0x01;

fn sol_rig() -> (Rig, V20Session) {
    let rig = Rig::new(config());
    rig.vm.borrow_mut().power = PowerState::On;
    let mut s = {
        let mut ex = rig.exchange();
        V20Session::open("admin", "password", suite(3), 0x14, &mut ex).unwrap()
    };
    // As ipmitool does after the handshake: the session works at Administrator.
    assert_eq!(
        call(&rig, PEER, &mut s, 0x06, 0x3B, &[0x04]),
        (0, vec![0x04])
    );
    (rig, s)
}

fn call(rig: &Rig, peer: &str, s: &mut V20Session, net_fn: u8, cmd: u8, d: &[u8]) -> (u8, Vec<u8>) {
    let mut ex = rig.exchange_from(peer);
    s.call(net_fn, cmd, d, &mut ex).unwrap()
}

/// The engine's next datagram of its own, opened by `s`: (payload type, SOL payload).
fn transmit(rig: &Rig, s: &V20Session) -> Option<(String, u8, Vec<u8>)> {
    let (peer, d) = rig.bmc.borrow_mut().poll_transmit()?;
    let (t, p) = s.open_packet(&d).unwrap();
    Some((peer.to_string(), t, p))
}

fn effects(rig: &Rig) -> Vec<SolEffect> {
    std::iter::from_fn(|| rig.bmc.borrow_mut().poll_sol()).collect()
}

const ACTIVATE_SOL: [u8; 6] = [0x01, 0x01, 0xC6, 0, 0, 0];
const DEACTIVATE_SOL: [u8; 6] = [0x01, 0x01, 0, 0, 0, 0];

#[test]
fn payload_commands_answer_as_the_spec_lays_them_out() {
    let (rig, mut s) = sol_rig();
    let mut c = |cmd, d: &[u8]| call(&rig, PEER, &mut s, 0x06, cmd, d);
    assert_eq!(c(0x4E, &[0x0E]), (0, vec![0x03, 0, 0x3F, 0, 0, 0, 0, 0]));
    assert_eq!(c(0x4F, &[0x0E, 0x01]), (0, vec![0x10]));
    assert_eq!(c(0x4F, &[0x0E, 0x02]).0, 0x80);
    assert_eq!(c(0x4A, &[0x01]), (0, vec![0x01, 0x00, 0x00]));
    assert_eq!(c(0x4B, &[0x01, 0x01]), (0, vec![0; 12]));
    assert_eq!(c(0x49, &DEACTIVATE_SOL).0, 0x80, "nothing to deactivate");
    // cc + 12 bytes: aux, inbound and outbound sizes (255), our port (623), no VLAN.
    assert_eq!(
        c(0x48, &ACTIVATE_SOL),
        (
            0,
            vec![0, 0, 0, 0, 0xFF, 0, 0xFF, 0, 0x6F, 0x02, 0xFF, 0xFF]
        )
    );
    assert_eq!(c(0x4A, &[0x01]), (0, vec![0x01, 0x01, 0x00]));
    let (code, info) = c(0x4B, &[0x01, 0x01]);
    assert_eq!((code, &info[4..]), (0, &[1, 0, 0, 0, 0, 0, 0, 0][..]));
    assert_eq!(info[..4], s.bmc_id.to_le_bytes());
    assert_eq!(effects(&rig), [SolEffect::Started]);
    let mut c = |cmd, d: &[u8]| call(&rig, PEER, &mut s, 0x06, cmd, d);
    assert_eq!(c(0x48, &ACTIVATE_SOL).0, 0x80, "one instance");
    assert_eq!(
        c(0x48, &[0x01, 0x02, 0xC6, 0, 0, 0]).0,
        cc::INVALID_DATA_FIELD
    );
    assert_eq!(c(0x48, &[0x01, 0x01, 0xC6]).0, cc::REQUEST_LENGTH_INVALID);
    assert_eq!(c(0x49, &DEACTIVATE_SOL), (0, vec![]));
    assert_eq!(c(0x49, &DEACTIVATE_SOL).0, 0x80);
    // Asking for less protection than the session has: "cannot activate without encryption".
    assert_eq!(c(0x48, &[0x01, 0x01, 0x40, 0, 0, 0]).0, 0x84);
    assert_eq!(effects(&rig), [SolEffect::Stopped]);
    assert!(transmit(&rig, &s).is_none(), "the owner ended it itself");
}

#[test]
fn sol_configuration_reads_writes_and_needs_admin_to_write() {
    let (rig, mut s) = sol_rig();
    let mut v = {
        let mut ex = rig.exchange_from(SECOND);
        V20Session::open("viewer", "viewer", suite(3), 0x12, &mut ex).unwrap()
    };
    assert_eq!(
        call(&rig, SECOND, &mut v, 0x0C, 0x22, &[0x0E, 0x02, 0, 0]),
        (0, vec![0x11, 0xC2])
    );
    assert_eq!(
        call(&rig, SECOND, &mut v, 0x0C, 0x21, &[0x0E, 0x01, 0x00]).0,
        cc::INSUFFICIENT_PRIVILEGE
    );
    assert_eq!(call(&rig, PEER, &mut s, 0x06, 0x48, &ACTIVATE_SOL).0, 0);
    // Disabling SOL ends the active instance; its console hears "deactivating".
    assert_eq!(
        call(&rig, PEER, &mut s, 0x0C, 0x21, &[0x0E, 0x01, 0x00]).0,
        0
    );
    assert_eq!(effects(&rig), [SolEffect::Started, SolEffect::Stopped]);
    let (_, t, p) = transmit(&rig, &s).unwrap();
    assert_eq!((t, p), (SOL, vec![1, 0, 0, 0x10]));
    assert_eq!(
        call(&rig, PEER, &mut s, 0x0C, 0x22, &[0x0E, 0x01, 0, 0]),
        (0, vec![0x11, 0x00])
    );
    assert_eq!(call(&rig, PEER, &mut s, 0x06, 0x48, &ACTIVATE_SOL).0, 0x81);
}

#[test]
fn sol_characters_wait_are_resent_until_acked_and_input_is_delivered_once() {
    let (rig, mut s) = sol_rig();
    // Accumulate 60 ms or 96 characters (the shipped threshold is 1: at once).
    assert_eq!(
        call(&rig, PEER, &mut s, 0x0C, 0x21, &[0x0E, 0x03, 12, 96]).0,
        0
    );
    assert_eq!(call(&rig, PEER, &mut s, 0x06, 0x48, &ACTIVATE_SOL).0, 0);
    effects(&rig);
    let now = *rig.now.borrow();
    assert_eq!(
        rig.bmc.borrow_mut().sol_from_guest(now, b"vm-0 login: "),
        12
    );
    assert!(
        transmit(&rig, &s).is_none(),
        "accumulating: under the send threshold"
    );
    let due = rig.bmc.borrow().poll_timeout(now).unwrap();
    assert_eq!(due, now + Duration::from_millis(60));
    rig.advance(Duration::from_millis(60));
    rig.bmc.borrow_mut().handle_timeout(*rig.now.borrow());
    let (peer, t, first) = transmit(&rig, &s).unwrap();
    assert_eq!((peer.as_str(), t), (PEER, SOL));
    assert_eq!(first, b"\x01\x00\x00\x00vm-0 login: ");
    // No ACK within the retry interval (100 ms): the same packet again.
    rig.advance(Duration::from_millis(100));
    rig.bmc.borrow_mut().handle_timeout(*rig.now.borrow());
    assert_eq!(transmit(&rig, &s).unwrap().2, first);
    assert_eq!(rig.bmc.borrow().stats.sol_retransmissions, 1);
    // The ACK (seq 0, ack 1, 12 accepted) needs no answer and stops the retries.
    let ack = s.packet(SOL, &[0, 1, 12, 0]);
    assert!(matches!(rig.from(PEER, &ack), Output::Absorbed));
    rig.advance(Duration::from_secs(1));
    rig.bmc.borrow_mut().handle_timeout(*rig.now.borrow());
    assert!(transmit(&rig, &s).is_none());
    // Typed characters: acknowledged with the count taken, delivered once even when the
    // console sends them again; a break goes to the guest as one.
    let typed = s.packet(SOL, &[1, 0, 0, 0x10, b'l', b's', b'\r']);
    let reply = rig.send(&typed).unwrap();
    assert_eq!(s.open_packet(&reply).unwrap(), (SOL, vec![0, 1, 3, 0]));
    let again = s.packet(SOL, &[1, 0, 0, 0, b'l', b's', b'\r']);
    let reply = rig.send(&again).unwrap();
    assert_eq!(s.open_packet(&reply).unwrap(), (SOL, vec![0, 1, 3, 0]));
    assert_eq!(
        effects(&rig),
        [
            SolEffect::ToGuest(ToGuest::Break),
            SolEffect::ToGuest(ToGuest::Bytes(b"ls\r".to_vec()))
        ]
    );
    // A guest that does not read its input: the console's packet goes unacknowledged
    // (it comes again), and is taken once there is room.
    rig.bmc.borrow_mut().sol_guest_room(0);
    let typed = s.packet(SOL, &[2, 0, 0, 0, b'x']);
    assert!(matches!(rig.from(PEER, &typed), Output::Absorbed));
    assert_eq!(effects(&rig), []);
    rig.bmc.borrow_mut().sol_guest_room(1);
    let typed = s.packet(SOL, &[2, 0, 0, 0, b'x']);
    let reply = rig.send(&typed).unwrap();
    assert_eq!(s.open_packet(&reply).unwrap(), (SOL, vec![0, 2, 1, 0]));
    assert_eq!(
        effects(&rig),
        [SolEffect::ToGuest(ToGuest::Bytes(b"x".to_vec()))]
    );
    // The line goes (the machine is off): the console hears it, its characters are refused.
    let now = *rig.now.borrow();
    rig.bmc.borrow_mut().sol_console(now, false);
    assert_eq!(transmit(&rig, &s).unwrap().2, [2, 0, 0, 0x20]);
    let typed = s.packet(SOL, &[3, 2, 0, 0, b'x']);
    let reply = rig.send(&typed).unwrap();
    assert_eq!(s.open_packet(&reply).unwrap(), (SOL, vec![0, 3, 0, 0x60]));
    assert_eq!(effects(&rig), []);
    assert_eq!(rig.bmc.borrow().stats.sol_to_guest, 4);
}

#[test]
fn sol_packets_need_the_owner_its_protection_and_the_configured_privilege() {
    let (rig, mut s) = sol_rig();
    assert_eq!(call(&rig, PEER, &mut s, 0x06, 0x48, &ACTIVATE_SOL).0, 0);
    // Plaintext SOL in an encrypted session: refused as any plaintext packet is.
    let mut plain = s.clone();
    plain.suite = suite(2);
    assert!(matches!(
        rig.from(PEER, &plain.packet(SOL, &[1, 0, 0, 0, b'x'])),
        Output::Drop(DropReason::AuthFailed)
    ));
    // Another session's SOL packets are not the owner's.
    let mut other = {
        let mut ex = rig.exchange_from(SECOND);
        V20Session::open("admin", "password", suite(3), 0x14, &mut ex).unwrap()
    };
    assert!(matches!(
        rig.from(SECOND, &other.packet(SOL, &[1, 0, 0, 0, b'x'])),
        Output::Drop(DropReason::NotAllowed)
    ));
    // The owner lowers its privilege below SOL's (raised to Admin here): its packets stop.
    assert_eq!(
        call(&rig, PEER, &mut s, 0x0C, 0x21, &[0x0E, 0x02, 0xC4]).0,
        0
    );
    assert_eq!(call(&rig, PEER, &mut s, 0x06, 0x3B, &[0x03]).0, 0);
    assert!(matches!(
        rig.from(PEER, &s.packet(SOL, &[1, 0, 0, 0, b'x'])),
        Output::Drop(DropReason::NotAllowed)
    ));
    assert_eq!(effects(&rig), [SolEffect::Started]);
}

#[test]
fn another_session_steals_or_ends_sol_and_a_closed_or_expired_session_ends_it() {
    let (rig, mut s) = sol_rig();
    assert_eq!(call(&rig, PEER, &mut s, 0x06, 0x48, &ACTIVATE_SOL).0, 0);
    // ipmiconsole's steal: the same user, from a new session, deactivates then activates.
    let mut thief = {
        let mut ex = rig.exchange_from(SECOND);
        V20Session::open("admin", "password", suite(17), 0x14, &mut ex).unwrap()
    };
    assert_eq!(
        call(&rig, SECOND, &mut thief, 0x06, 0x48, &ACTIVATE_SOL).0,
        0x80
    );
    assert_eq!(
        call(&rig, SECOND, &mut thief, 0x06, 0x49, &DEACTIVATE_SOL).0,
        0
    );
    let (peer, t, bye) = transmit(&rig, &s).unwrap();
    assert_eq!((peer.as_str(), t, bye), (PEER, SOL, vec![1, 0, 0, 0x10]));
    assert_eq!(
        call(&rig, SECOND, &mut thief, 0x06, 0x48, &ACTIVATE_SOL).0,
        0
    );
    assert_eq!(rig.bmc.borrow().sol_owner(), Some(thief.bmc_id));
    // A user who neither owns it nor is an administrator may not end it.
    let mut viewer = {
        let mut ex = rig.exchange_from("10.0.0.4:40002");
        V20Session::open("viewer", "viewer", suite(3), 0x12, &mut ex).unwrap()
    };
    assert_eq!(
        call(
            &rig,
            "10.0.0.4:40002",
            &mut viewer,
            0x06,
            0x49,
            &DEACTIVATE_SOL
        )
        .0,
        cc::INSUFFICIENT_PRIVILEGE
    );
    // Closing the owning session ends SOL.
    let close = thief.bmc_id.to_le_bytes();
    assert_eq!(call(&rig, SECOND, &mut thief, 0x06, 0x3C, &close).0, 0);
    assert_eq!(rig.bmc.borrow().sol_owner(), None);
    assert_eq!(
        effects(&rig),
        [
            SolEffect::Started,
            SolEffect::Stopped,
            SolEffect::Started,
            SolEffect::Stopped
        ]
    );
    // So does the owner's idle expiry.
    assert_eq!(call(&rig, PEER, &mut s, 0x06, 0x48, &ACTIVATE_SOL).0, 0);
    let limit = rig.bmc.borrow().config().session_timeout;
    rig.advance(limit);
    rig.bmc.borrow_mut().handle_timeout(*rig.now.borrow());
    assert_eq!(effects(&rig), [SolEffect::Started, SolEffect::Stopped]);
    assert_eq!(rig.bmc.borrow().sol_owner(), None);
}

#[test]
fn a_full_table_never_reclaims_the_session_carrying_sol() {
    let mut cfg = config();
    cfg.max_sessions = 2;
    let rig = Rig::new(cfg);
    let mut s = {
        let mut ex = rig.exchange();
        V20Session::open("admin", "password", suite(3), 0x14, &mut ex).unwrap()
    };
    assert_eq!(call(&rig, PEER, &mut s, 0x06, 0x48, &ACTIVATE_SOL).0, 0);
    rig.advance(Duration::from_secs(5));
    let mut other = {
        let mut ex = rig.exchange_from(SECOND);
        V20Session::open("admin", "password", suite(3), 0x14, &mut ex).unwrap()
    };
    rig.advance(Duration::from_secs(2));
    // The SOL session is the idlest, yet the other one makes room.
    let third = "10.0.0.5:40003";
    let mut ex = rig.exchange_from(third);
    V20Session::open("admin", "password", suite(3), 0x14, &mut ex).unwrap();
    drop(ex);
    assert_eq!(rig.bmc.borrow().sol_owner(), Some(s.bmc_id));
    assert_eq!(
        call(&rig, PEER, &mut s, 0x06, 0x4A, &[0x01]),
        (0, vec![1, 1, 0])
    );
    let mut ex = rig.exchange_from(SECOND);
    assert!(other.call(0x06, 0x01, &[], &mut ex).is_err(), "reclaimed");
}
