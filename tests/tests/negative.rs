//! What must fail, and fail without side effects: bad credentials, too little privilege,
//! auth type NONE, garbage datagrams, a full session table. Every test reads `/vms` to check
//! that nothing changed, since a client's exit code alone proves little.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use virtbmc_e2e::{Bmc, Iface, NetnsPair, Out, Shell, Vm};

const PORT: u16 = common::PORT;
const VM: &str = common::VM;
const UDP: &str = env!("CARGO_BIN_EXE_virtbmc-e2e-udp");
const IFACES: [Iface; 4] = [
    Iface::Lan,
    Iface::Lanplus,
    Iface::LanplusC(3),
    Iface::LanplusC(17),
];

/// A running VM whose counters we can compare before and after.
fn agent_with_vm_on(extra: &[&str]) -> (Bmc, Vm) {
    let mut b = Bmc::builder().vm("vm-0=6230,on");
    for a in extra {
        b = b.arg(a);
    }
    let bmc = b.start();
    let vm = bmc.wait_power(VM, "on");
    (bmc, vm)
}

#[track_caller]
fn assert_refused(out: &Out) {
    assert!(!out.ok(), "expected the client to fail:\n{out}");
    assert!(
        !out.stdout.contains("Chassis Power Control: Down/Off"),
        "{out}"
    );
}

#[track_caller]
fn assert_unchanged(bmc: &Bmc, before: &Vm) {
    // Give a wrongly accepted command time to show in the backend before comparing.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(&bmc.vm(&before.name), before, "the VM's state changed");
}

#[test]
fn wrong_password_is_refused() {
    ready_or_skip!("ipmitool", "ipmipower");
    let (bmc, before) = agent_with_vm_on(&[]);
    for iface in IFACES {
        assert_refused(&bmc.ipmitool(iface, "admin", "wrong-password", PORT, &["power", "off"]));
    }
    for driver in [&[][..], &["-D", "LAN_2_0"][..]] {
        let host = format!("{}:{PORT}", bmc.ip());
        let mut argv = vec![
            "ipmipower",
            "-h",
            &host,
            "-u",
            "admin",
            "-p",
            "wrong-password",
        ];
        argv.extend_from_slice(driver);
        argv.push("--off");
        let out = bmc.client(&argv);
        assert!(!out.stdout.contains(": ok"), "{out}");
        // With RMCP+ the client itself detects the bad RAKP 2 HMAC. With IPMI 1.5 the BMC may
        // drop an Activate Session that fails authentication, so only failure is required.
        if !driver.is_empty() {
            assert!(out.text().contains("password invalid"), "{out}");
        }
    }
    assert_unchanged(&bmc, &before);
    assert!(bmc.alive());
}

/// The name is neither confirmed nor denied: freeipmi reports what a wrong password gives
/// (a RAKP 2 that does not verify; over IPMI 1.5, no answer to Activate Session).
#[test]
fn unknown_user_is_refused() {
    ready_or_skip!("ipmitool", "ipmipower");
    let (bmc, before) = agent_with_vm_on(&[]);
    for iface in IFACES {
        assert_refused(&bmc.ipmitool(iface, "mallory", "password", PORT, &["power", "off"]));
    }
    for driver in [&[][..], &["-D", "LAN_2_0"][..]] {
        let host = format!("{}:{PORT}", bmc.ip());
        let mut argv = vec!["ipmipower", "-h", &host, "-u", "mallory", "-p", "password"];
        argv.extend_from_slice(driver);
        argv.push("--off");
        let out = bmc.client(&argv);
        assert!(!out.stdout.contains(": ok"), "{out}");
        let want = if driver.is_empty() {
            "password verification timeout"
        } else {
            "password invalid"
        };
        assert!(out.text().contains(want), "{out}");
        assert!(!out.text().contains("username invalid"), "{out}");
    }
    assert_unchanged(&bmc, &before);
}

/// A counter from the agent's `/metrics`.
#[track_caller]
fn metric(bmc: &Bmc, name: &str) -> u64 {
    let body = bmc.http_get("/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

/// What a client printed, with the user name and timings taken out.
fn words(out: &Out, user: &str) -> String {
    out.text().replace(user, "USER")
}

/// An unknown user name fails exactly as a wrong password does: ipmitool (IPMI 1.5 and
/// RMCP+ with each suite) and ipmipower print the same words and exit the same way, so that
/// no client can tell which names exist.
#[test]
fn unknown_user_and_wrong_password_look_the_same() {
    ready_or_skip!("ipmitool", "ipmipower");
    let (bmc, before) = agent_with_vm_on(&[]);
    for iface in IFACES {
        let wrong = bmc.ipmitool(iface, "admin", "wrong-password", PORT, &["power", "status"]);
        let unknown = bmc.ipmitool(
            iface,
            "mallory",
            "wrong-password",
            PORT,
            &["power", "status"],
        );
        assert_refused(&wrong);
        assert_eq!(
            (unknown.code, words(&unknown, "mallory")),
            (wrong.code, words(&wrong, "admin")),
            "{iface}: an unknown user must look like a wrong password\n{wrong}\n{unknown}"
        );
        assert!(!wrong.text().is_empty(), "{wrong}");
    }
    let host = format!("{}:{PORT}", bmc.ip());
    for driver in [&[][..], &["-D", "LAN_2_0"][..]] {
        let run = |user: &str| {
            let mut argv = vec!["ipmipower", "-h", &host, "-u", user, "-p", "wrong-password"];
            argv.extend_from_slice(driver);
            argv.push("--stat");
            bmc.client(&argv)
        };
        let (wrong, unknown) = (run("admin"), run("mallory"));
        assert!(!wrong.stdout.contains(": on"), "{wrong}");
        assert_eq!(
            (unknown.code, words(&unknown, "mallory")),
            (wrong.code, words(&wrong, "admin")),
            "ipmipower {driver:?}\n{wrong}\n{unknown}"
        );
    }
    assert_unchanged(&bmc, &before);
}

/// Open Session Requests from 50 other loopback addresses in the agent's namespace, none of
/// which goes on to RAKP1 (as spoofed sources cannot), while real ipmitool lanplus clients
/// log in. Open Session is answered with a cookie, so the flood neither fills the table
/// (`--max-sessions 2`) nor pushes a real handshake out. `/metrics` shows the flood reached
/// the engine before, while and after the clients ran.
#[test]
fn lanplus_logins_complete_during_an_open_session_flood() {
    ready_or_skip!("ipmitool");
    let (bmc, before) = agent_with_vm_on(&["--max-sessions", "2"]);
    let handled = || metric(&bmc, "virtbmc_requests_total");
    let start = handled();
    let target = format!("{}:{PORT}", bmc.ip());
    let mut flood = NetnsPair::exec(&bmc.net.bmc, &[UDP, "open-flood", &target, "50", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let during = handled();
    for iface in [
        Iface::Lanplus,
        Iface::LanplusC(3),
        Iface::LanplusC(17),
        Iface::Lanplus,
    ] {
        common::power_status_is(&bmc, iface, PORT, "on");
    }
    let after_logins = handled();
    assert!(
        flood.try_wait().unwrap().is_none(),
        "the flood ended before the logins did"
    );
    let out = flood.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let sent: u64 = text
        .trim()
        .strip_prefix("sent ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("flood printed {text:?}"));
    let end = handled();
    eprintln!(
        "flood: {sent} Open Sessions sent; the engine handled {} datagrams before the logins, {} during, {} in all",
        during - start,
        after_logins - during,
        end - start
    );
    assert!(during - start > 500, "the flood did not reach the agent");
    assert!(
        after_logins - during > 500,
        "the flood did not run during the logins"
    );
    assert!(end - start >= sent / 2, "most of the flood was handled");
    assert_unchanged(&bmc, &before);
    assert!(bmc.alive());
}

/// `viewer` has USER privilege. With ipmitool's default (ADMINISTRATOR requested) the session
/// itself is refused; with `-L USER` it opens, `power status` works and `power off` is refused
/// by the command's own privilege check (0xD4, IPMI 2.0 §28.3 needs OPERATOR).
#[test]
fn user_privilege_cannot_power_off() {
    ready_or_skip!("ipmitool", "ipmipower");
    let (bmc, before) = agent_with_vm_on(&[]);
    for iface in IFACES {
        assert_refused(&bmc.ipmitool(iface, "viewer", "viewer", PORT, &["power", "off"]));

        let status = bmc.ipmitool(
            iface,
            "viewer",
            "viewer",
            PORT,
            &["-L", "USER", "power", "status"],
        );
        status.assert_ok().assert_stdout_has("Chassis Power is on");
        let off = bmc.ipmitool(
            iface,
            "viewer",
            "viewer",
            PORT,
            &["-L", "USER", "power", "off"],
        );
        assert_refused(&off);
        assert!(off.text().contains("Insufficient privilege level"), "{off}");
    }
    // ipmipower asks for OPERATOR, which viewer cannot have.
    let host = format!("{}:{PORT}", bmc.ip());
    for driver in [&[][..], &["-D", "LAN_2_0"][..]] {
        let mut argv = vec!["ipmipower", "-h", &host, "-u", "viewer", "-p", "viewer"];
        argv.extend_from_slice(driver);
        argv.push("--off");
        let out = bmc.client(&argv);
        assert!(!out.stdout.contains(": ok"), "{out}");
    }
    assert_unchanged(&bmc, &before);
}

/// Auth type NONE (IPMI 1.5) is refused unless `--allow-auth-none`.
#[test]
fn auth_none_is_refused_by_default() {
    ready_or_skip!("ipmitool");
    let (bmc, before) = agent_with_vm_on(&[]);
    let out = bmc.ipmitool(
        Iface::Lan,
        "admin",
        "password",
        PORT,
        &["-A", "NONE", "power", "off"],
    );
    assert_refused(&out);
    assert_unchanged(&bmc, &before);
}

// ---- raw datagrams ----

/// Two's-complement checksum of IPMI message bytes (IPMI 2.0 §13.8).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// An IPMI request message `rsAddr netFn/LUN csum rqAddr rqSeq cmd data csum` (BMC 0x20).
fn ipmi_msg(netfn: u8, cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut m = vec![0x20, netfn << 2];
    m.push(checksum(&m));
    let body_start = m.len();
    m.extend_from_slice(&[0x81, 0x00, cmd]);
    m.extend_from_slice(data);
    let c = checksum(&m[body_start..]);
    m.push(c);
    m
}

fn asf_ping(tag: u8) -> Vec<u8> {
    vec![
        0x06, 0x00, 0xff, 0x06, 0x00, 0x00, 0x11, 0xbe, 0x80, tag, 0x00, 0x00,
    ]
}

/// Session-less IPMI 1.5 Get Channel Authentication Capabilities (`8e 04`, as lanplus asks).
fn auth_caps_v15() -> Vec<u8> {
    let msg = ipmi_msg(0x06, 0x38, &[0x8e, 0x04]);
    let mut p = vec![
        0x06,
        0x00,
        0xff,
        0x07,
        0x00,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        msg.len() as u8,
    ];
    p.extend_from_slice(&msg);
    p
}

/// An RMCP+ (auth type 0x06) packet with the given payload type and session id.
fn rmcpplus(payload_type: u8, session_id: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x06, 0x00, 0xff, 0x07, 0x06, payload_type];
    p.extend_from_slice(&session_id.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    p.extend_from_slice(payload);
    p
}

/// RMCP+ Open Session Request for cipher suite 3 (RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128),
/// privilege 0 ("highest"), as ipmitool sends it (IPMI 2.0 §13.17).
fn open_session_request(tag: u8, console_id: u32) -> Vec<u8> {
    let mut p = vec![tag, 0x00, 0x00, 0x00];
    p.extend_from_slice(&console_id.to_le_bytes());
    for (kind, alg) in [(0u8, 1u8), (1, 1), (2, 1)] {
        p.extend_from_slice(&[kind, 0, 0, 8, alg, 0, 0, 0]);
    }
    rmcpplus(0x10, 0, 0, &p)
}

/// RAKP Message 1 for a session id (IPMI 2.0 §13.20).
fn rakp1(session_id: u32, name: &[u8], name_len: u8) -> Vec<u8> {
    let mut p = vec![0x01, 0, 0, 0];
    p.extend_from_slice(&session_id.to_le_bytes());
    p.extend_from_slice(&[0x5a; 16]);
    p.extend_from_slice(&[0x14, 0, 0, name_len]);
    p.extend_from_slice(name);
    rmcpplus(0x12, 0, 0, &p)
}

/// Small deterministic PRNG (xorshift64*) so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn garbage() -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut g: Vec<Vec<u8>> = vec![vec![]];
    // Pure noise, then noise behind each real header prefix.
    for _ in 0..64 {
        let n = (rng.next() % 300) as usize;
        g.push(rng.bytes(n));
    }
    for prefix in [
        &[0x06u8, 0x00, 0xff, 0x07][..],
        &[0x06, 0x00, 0xff, 0x07, 0x06],
        &[0x06, 0x00, 0xff, 0x06],
    ] {
        for _ in 0..32 {
            let n = (rng.next() % 80) as usize;
            let mut p = prefix.to_vec();
            p.extend(rng.bytes(n));
            g.push(p);
        }
    }
    // Every truncation of well-formed packets.
    let full = [
        asf_ping(7),
        auth_caps_v15(),
        open_session_request(1, 0xa0a2_a3a4),
        rakp1(0x1234_5678, b"admin", 5),
        rmcpplus(0x00, 0, 0, &ipmi_msg(0x06, 0x54, &[0x0e, 0x00, 0x80])),
    ];
    for p in &full {
        for len in 0..p.len() {
            g.push(p[..len].to_vec());
        }
    }
    // Lying lengths and bad checksums.
    let mut caps = auth_caps_v15();
    caps[13] = 0xff;
    g.push(caps);
    let mut caps = auth_caps_v15();
    let last = caps.len() - 1;
    caps[last] ^= 0xff;
    g.push(caps);
    let mut caps = auth_caps_v15();
    caps[16] ^= 0x55; // header checksum
    g.push(caps);
    let mut osr = open_session_request(2, 1);
    osr[14] = 0xff;
    osr[15] = 0xff;
    g.push(osr);
    g.push(rmcpplus(0x10, 0, 0, &[]));
    // RAKP 1 naming a user longer than the packet, and for sessions that do not exist.
    g.push(rakp1(0x1234_5678, b"admin", 0xff));
    g.push(rakp1(0, &[b'a'; 64], 64));
    g.push(rmcpplus(0x14, 0, 0, &rng.bytes(40)));
    // "Authenticated" and "encrypted" payloads for unknown sessions; 1.5 session packets
    // with each auth type and a random auth code.
    for pt in [0x40u8, 0x80, 0xc0, 0xc1, 0x7f] {
        g.push(rmcpplus(pt, rng.next() as u32, 1, &rng.bytes(48)));
    }
    for auth in 0u8..=5 {
        let mut p = vec![0x06, 0x00, 0xff, 0x07, auth];
        p.extend(rng.bytes(8));
        p.extend(rng.bytes(16));
        p.push(8);
        p.extend(ipmi_msg(0x00, 0x02, &[0x00]));
        g.push(p);
    }
    // Big datagrams.
    g.push(rng.bytes(1400));
    let mut big = vec![
        0x06, 0x00, 0xff, 0x07, 0x06, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xd0, 0x07,
    ];
    big.extend(rng.bytes(2000));
    g.push(big);
    g
}

#[test]
fn garbage_datagrams_do_not_kill_the_agent() {
    ready_or_skip!("ipmitool");
    let (bmc, before) = agent_with_vm_on(&[]);
    // The raw sender really reaches the agent: a well-formed request is answered before and
    // after the garbage (otherwise this test would prove nothing).
    let sanity = |when: &str| {
        let r = bmc.udp(UDP, PORT, &[auth_caps_v15()], 2000).remove(0);
        assert!(
            r.as_ref()
                .is_some_and(|r| r.starts_with(&[0x06, 0x00, 0xff, 0x07])),
            "no RMCP answer to Get Channel Auth Capabilities {when} the garbage: {r:02x?}"
        );
    };
    sanity("before");
    let garbage = garbage();
    let replies = bmc.udp(UDP, PORT, &garbage, 10);
    let answered = replies.iter().filter(|r| r.is_some()).count();
    eprintln!(
        "{} garbage datagrams sent, {answered} answered",
        garbage.len()
    );
    sanity("after");

    assert!(bmc.alive(), "agent died on garbage:\n{}", bmc.log());
    assert_eq!(bmc.http_get("/healthz").as_deref().map(str::trim), Ok("ok"));
    for iface in [Iface::Lan, Iface::Lanplus] {
        common::power_status_is(&bmc, iface, PORT, "on");
    }
    assert_eq!(bmc.vm(VM), before, "garbage changed the VM");
}

/// `--max-sessions 4`: a source holds at most half the table. Two ipmitool shells from the
/// client address hold its two sessions; while both were used within the last second, a third
/// client from the same address (lan and lanplus) is refused rather than one of them being
/// taken; the held sessions keep working; once they close, a new client gets in.
#[test]
fn busy_sessions_are_never_taken_for_a_new_client() {
    ready_or_skip!("ipmitool");
    let (bmc, before) = agent_with_vm_on(&["--max-sessions", "4"]);
    let mut a = Shell::open(&bmc, Iface::Lanplus, PORT);
    let mut b = Shell::open(&bmc, Iface::Lan, PORT);
    for iface in [Iface::Lanplus, Iface::Lan] {
        a.run("power status", "Chassis Power is on").unwrap();
        b.run("power status", "Chassis Power is on").unwrap();
        let out = bmc.admin(iface, PORT, &["power", "off"]);
        assert_refused(&out);
    }
    assert_unchanged(&bmc, &before);
    assert!(
        bmc.log()
            .contains("new session refused: source holds half of the session table"),
        "the refusal is logged:\n{}",
        bmc.log()
    );

    // The active sessions survived the attempts.
    a.run("power status", "Chassis Power is on").unwrap();
    b.run("power status", "Chassis Power is on").unwrap();
    a.close();
    b.close();
    common::power_status_is(&bmc, Iface::Lanplus, PORT, "on");
    common::power_status_is(&bmc, Iface::Lan, PORT, "on");
    assert!(bmc.alive());
}

/// `--max-sessions 2 --session-timeout 3`: a burst of unauthenticated RMCP+ Open Session
/// Requests. Checked: each is answered with status 0x00 (success) or 0x01 (insufficient
/// resources to create a session, IPMI 2.0 §13.24 table 13-15), echoing the console's session id; the agent survives; and
/// half-open sessions cannot lock real clients out for longer than the session timeout
/// (whether the agent evicts them or lets them expire is its choice).
#[test]
fn open_session_flood_is_bounded() {
    ready_or_skip!("ipmitool");
    let (bmc, before) = agent_with_vm_on(&["--max-sessions", "2", "--session-timeout", "3"]);
    let requests: Vec<Vec<u8>> = (0..8u32)
        .map(|i| open_session_request(i as u8, 0xc0de_0000 + i))
        .collect();
    let replies = bmc.udp(UDP, PORT, &requests, 500);
    let mut statuses = Vec::new();
    for (i, r) in replies.iter().enumerate() {
        let r = r
            .as_ref()
            .unwrap_or_else(|| panic!("Open Session Request {i} unanswered"));
        // RMCP(4) auth type(1) payload type(1) sid(4) seq(4) len(2), then the payload:
        // tag, status, max priv, reserved, console session id (4), BMC session id (4), ...
        assert!(
            r.len() >= 24 && r[5] & 0x3f == 0x11,
            "not an Open Session Response: {r:02x?}"
        );
        assert_eq!(r[16], i as u8, "message tag echoed");
        let status = r[17];
        assert!(
            status == 0x00 || status == 0x01,
            "status {status:#04x} for request {i}"
        );
        if status == 0x00 {
            assert_eq!(
                &r[20..24],
                &(0xc0de_0000 + i as u32).to_le_bytes(),
                "console id echoed"
            );
        }
        statuses.push(status);
    }
    eprintln!("Open Session statuses with --max-sessions 2: {statuses:02x?}");
    assert!(bmc.alive());

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = bmc.admin(Iface::Lanplus, PORT, &["power", "status"]);
        if out.ok() && out.stdout.contains("Chassis Power is on") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "real client locked out after the flood:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(bmc.vm(VM), before);
}

/// `--max-sessions 1 --session-timeout 2`: a shell that opens a session and then sits idle
/// holds the only slot, so a new client is refused; once the idle session times out, a new
/// client gets in (idle sessions time out; the table is bounded).
#[test]
fn idle_session_times_out_and_frees_its_slot() {
    ready_or_skip!("ipmitool");
    let (bmc, before) = agent_with_vm_on(&["--max-sessions", "1", "--session-timeout", "2"]);
    let mut idle = Shell::open(&bmc, Iface::Lanplus, PORT);
    idle.run("power status", "Chassis Power is on").unwrap();
    assert_refused(&bmc.admin(Iface::Lanplus, PORT, &["power", "off"]));

    std::thread::sleep(Duration::from_millis(3500));
    common::power_status_is(&bmc, Iface::Lanplus, PORT, "on");
    common::power_status_is(&bmc, Iface::Lan, PORT, "on");
    drop(idle);
    assert_unchanged(&bmc, &before);
}

/// The agent logs at `trace` here while real sessions (1.5 and 2.0, good and bad passwords)
/// run: its log must never contain the password, as text, hex or a byte list: a
/// password or key is never logged.
#[test]
fn passwords_never_reach_the_log() {
    ready_or_skip!("ipmitool", "ipmipower");
    const SECRET: &str = "Zq7-secret-Xw9";
    let bmc = Bmc::builder()
        .vm("vm-0=6230")
        .user(&format!("admin:{SECRET}:admin"))
        .log_level("trace")
        .start();
    for iface in IFACES {
        bmc.ipmitool(iface, "admin", SECRET, PORT, &["power", "status"])
            .assert_ok()
            .assert_stdout_has("Chassis Power is off");
        assert!(
            !bmc.ipmitool(iface, "admin", "Zq7-wrong-Xw9", PORT, &["power", "status"])
                .ok()
        );
    }
    let host = format!("{}:{PORT}", bmc.ip());
    let out = bmc.client(&[
        "ipmipower",
        "-h",
        &host,
        "-u",
        "admin",
        "-p",
        SECRET,
        "-D",
        "LAN_2_0",
        "--stat",
    ]);
    assert!(out.stdout.contains(": off"), "{out}");

    let log = bmc.log();
    let hex = virtbmc_e2e::hex::encode(SECRET.as_bytes());
    let spaced: Vec<String> = SECRET.bytes().map(|b| format!("{b:02x}")).collect();
    let list = format!("{:?}", SECRET.as_bytes());
    for (what, needle) in [
        ("text", SECRET.to_string()),
        ("hex", hex.clone()),
        ("HEX", hex.to_uppercase()),
        ("spaced hex", spaced.join(" ")),
        ("byte list", list[1..list.len() - 1].to_string()),
        ("wrong password", "Zq7-wrong-Xw9".to_string()),
    ] {
        assert!(
            !log.contains(&needle),
            "the agent log contains the password ({what})"
        );
    }
    assert!(
        !log.is_empty(),
        "no log at all: the check above proves nothing"
    );
}

/// The UDP helper's `dup-proxy` in the client namespace, killed on drop.
struct DupProxy(Child);

impl DupProxy {
    const PORT: u16 = 16230;
    fn start(bmc: &Bmc) -> DupProxy {
        let listen = format!("127.0.0.1:{}", Self::PORT);
        let target = format!("{}:{PORT}", bmc.ip());
        let mut child = bmc.spawn_client(&[UDP, "dup-proxy", &listen, &target]);
        let mut ready = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready");
        DupProxy(child)
    }
}

impl DupProxy {
    /// Stops the relay and returns how many datagrams it duplicated.
    fn finish(mut self) -> usize {
        let _ = self.0.kill();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(self.0.stderr.as_mut().unwrap(), &mut err);
        err.lines().filter(|l| l.starts_with("dup ")).count()
    }
}

impl Drop for DupProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every in-session request reaches the agent twice (a duplicating network, or a client
/// retransmitting while the action runs). A hard reset or power cycle is not idempotent:
/// the duplicate must be dropped as a replay or answered without acting again (IPMI 2.0
/// §6.12.13 sequence numbers: an action must not run twice). Checked through
/// `/vms`: each client run moves the counters exactly once.
#[test]
fn duplicated_requests_act_once() {
    ready_or_skip!("ipmitool", "ipmipower");
    let (bmc, v0) = agent_with_vm_on(&["--transition-ms", "200"]);
    let proxy = DupProxy::start(&bmc);
    let host = "127.0.0.1";
    let port = DupProxy::PORT;

    let mut resets = 0;
    for iface in [Iface::Lan, Iface::Lanplus, Iface::LanplusC(3)] {
        bmc.ipmitool_via(host, port, iface, &["power", "status"])
            .assert_ok()
            .assert_stdout_has("Chassis Power is on");
        let out = bmc.ipmitool_via(host, port, iface, &["power", "reset"]);
        out.assert_ok()
            .assert_stdout_has("Chassis Power Control: Reset");
        resets += 1;
        let v = bmc.wait_vm(VM, "reset counted", Duration::from_secs(5), |v| {
            v.resets >= v0.resets + resets && v.power == "on"
        });
        std::thread::sleep(Duration::from_millis(700));
        let v2 = bmc.vm(VM);
        assert_eq!(
            v2.resets,
            v0.resets + resets,
            "a duplicated reset ran twice ({iface}): {v:?}"
        );
    }

    let before = bmc.vm(VM);
    let out = bmc.ipmitool_via(host, port, Iface::Lanplus, &["power", "cycle"]);
    out.assert_ok();
    bmc.wait_vm(VM, "cycle done", Duration::from_secs(10), |v| {
        v.starts > before.starts && v.power == "on"
    });
    std::thread::sleep(Duration::from_millis(1000));
    let v = bmc.vm(VM);
    assert_eq!(
        (v.starts, v.stops),
        (before.starts + 1, before.stops + 1),
        "a duplicated power cycle ran twice: {v:?}"
    );

    let target = format!("{host}:{port}");
    let out = bmc.client(&[
        "ipmipower",
        "-h",
        &target,
        "-u",
        "admin",
        "-p",
        "password",
        "-D",
        "LAN_2_0",
        "--off",
    ]);
    assert!(out.stdout.contains(": ok"), "{out}");
    let v = bmc.wait_power(VM, "off");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        bmc.vm(VM).stops,
        v.stops,
        "a duplicated power off ran twice"
    );
    let dups = proxy.finish();
    assert!(
        dups >= 20,
        "the relay duplicated only {dups} datagrams: the test proves nothing"
    );
    eprintln!("{dups} in-session datagrams were sent twice");
    assert!(bmc.alive());
}
