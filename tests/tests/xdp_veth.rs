//! The XDP program on a real veth: attached (auto mode, so generic/skb on veth) to the BMC
//! side of a namespace pair made by the e2e fixture, no agent socket behind it; real
//! `rmcpping` / `ipmiping` and a UDP socket in the client namespace get their answers from XDP
//! alone. Checks the counters, `bpftool map dump` of the pinned map, and that the pins go away.
//! Needs root, the object, rmcpping, ipmiping and bpftool; skipped otherwise.

mod xdp_support;

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use virtbmc::fastpath::{Attached, FastPath, FastPathConfig, PIN_DIR, XdpMode};

/// The agent pins under PIN_DIR; a test run uses a folder of its own beside it, so that it
/// never disturbs (or is disturbed by) an agent or another test run on the machine.
fn pin_dir() -> String {
    format!("{PIN_DIR}-veth-{}", std::process::id())
}
use virtbmc_e2e::NetnsPair;
use xdp_support::*;

/// The fixture's interface name on the BMC side of the pair.
const BMC_IF: &str = "vbmc0";
/// rmcpping and ipmiping only talk to port 623.
const PORT: u16 = 623;

/// Runs `f` on a thread that has joined network namespace `ns` (setns only moves the thread).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("namespace file");
        // SAFETY: a valid namespace fd; affects this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

fn has_tool(t: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {t} || test -x /usr/sbin/{t}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One request from a UDP socket in the client namespace; the reply's payload.
fn udp_request(ns: &str, bmc: Ipv4Addr, payload: Vec<u8>) -> Option<Vec<u8>> {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.send_to(&payload, SocketAddr::from((bmc, PORT))).unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = s.recv_from(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    })
}

#[test]
fn xdp_veth_real_clients() {
    if skip("xdp_veth_real_clients") {
        return;
    }
    let missing: Vec<_> = ["rmcpping", "ipmiping", "bpftool", "ip"]
        .into_iter()
        .filter(|t| !has_tool(t))
        .collect();
    if !missing.is_empty() {
        if std::env::var("VIRTBMC_XDP_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("xdp_veth_real_clients: missing {missing:?}");
        }
        eprintln!("SKIP xdp_veth_real_clients: missing {missing:?}");
        return;
    }
    let pair = NetnsPair::create();
    let mut cfg = FastPathConfig::new(object(), Some(BMC_IF.to_string()), XdpMode::Auto);
    cfg.pin_dir = pin_dir().into();
    let mut fp: FastPath = in_netns(&pair.bmc, move || FastPath::start(&cfg).expect("attach"));
    assert_eq!(
        fp.attached(),
        Some((BMC_IF, Attached::Skb)),
        "auto picks generic mode on veth"
    );
    fp.set_bmc(PORT, &state(false)).unwrap();

    // rmcpping: 3 ASF pings, each answered.
    let out = NetnsPair::exec(
        &pair.client,
        &[
            "rmcpping",
            "-c",
            "3",
            "-i",
            "1",
            "-t",
            "2",
            &pair.bmc_ip.to_string(),
        ],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rmcpping: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("pong received from").count(), 3, "{text}");

    // ipmiping: session-less Get Channel Authentication Capabilities.
    let out = NetnsPair::exec(
        &pair.client,
        &[
            "ipmiping",
            "-c",
            "2",
            "-i",
            "1",
            "-t",
            "2",
            &pair.bmc_ip.to_string(),
        ],
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ipmiping: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches("response received from").count(), 2, "{text}");

    // A UDP socket: cipher suites in both framings, auth caps with allow_auth_none turned on.
    let req = cipher_req(0x0E, 0x00, 0x80);
    let want = response(&req, 0, &cipher_data(&RECORDS_3_17, 0x80));
    assert_eq!(
        udp_request(&pair.client, pair.bmc_ip, v20(&req)),
        Some(v20(&want))
    );
    assert_eq!(
        udp_request(&pair.client, pair.bmc_ip, v15(&req)),
        Some(v15(&want))
    );
    fp.set_bmc(PORT, &state(true)).unwrap();
    let req = auth_caps_req(0x8E, 0x04);
    let want = v15(&response(&req, 0, &auth_caps_data(0x8E, true)));
    assert_eq!(
        udp_request(&pair.client, pair.bmc_ip, v15(&req)),
        Some(want)
    );

    let c = fp.counters().unwrap();
    assert!(c.ping_answered >= 3, "{c:?}");
    assert!(c.auth_caps_answered >= 3, "{c:?}");
    assert_eq!(c.cipher_suites_answered, 2, "{c:?}");

    // bpftool sees the pinned map with BTF: named fields.
    let out = Command::new("bpftool")
        .args([
            "-j",
            "map",
            "dump",
            "pinned",
            &format!("{}/bmcs", pin_dir()),
        ])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("bpftool -j map dump pinned .../bmcs:\n{dump}");
    let entry = parse_bmcs_dump(&dump);
    assert_eq!(entry, Some((623, 0, 1, 10)), "bpftool dump: {dump}");
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned", &format!("{}/counters", pin_dir())])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(
        dump.contains("ping_answered") && dump.contains("dropped_malformed"),
        "{dump}"
    );

    // Detach and unpin on drop; the client then gets no answer from XDP.
    drop(fp);
    assert!(!std::path::Path::new(&pin_dir()).exists(), "pins removed");
    let after = udp_request(&pair.client, pair.bmc_ip, v15(&auth_caps_req(0x0E, 4)));
    assert_eq!(after, None, "nothing answers once the program is gone");
}

/// (key, power_on, allow_auth_none, cipher_len) of the only entry of
/// `bpftool -j map dump pinned .../bmcs`, whose BTF output looks like
/// `[{"key":623,"value":{"power_on":0,"allow_auth_none":1,"cipher_len":10,...}}]`
/// (inside "formatted" for older bpftool).
fn parse_bmcs_dump(json: &str) -> Option<(u64, u64, u64, u64)> {
    fn field(s: &str, name: &str) -> Option<u64> {
        let i = s.find(&format!("\"{name}\":"))? + name.len() + 3;
        let digits: String = s[i..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits.parse().ok()
    }
    // The named value comes after the raw key/value hex arrays when both are printed.
    let named = json.rfind("\"key\":").map(|i| &json[i..])?;
    Some((
        field(named, "key")?,
        field(named, "power_on")?,
        field(named, "allow_auth_none")?,
        field(named, "cipher_len")?,
    ))
}

/// Native mode on request (the driver supports it on veth), reported as such, and gone from
/// the link after drop.
#[test]
fn xdp_veth_native_mode_on_request() {
    if skip("xdp_veth_native_mode_on_request") || !has_tool("ip") {
        return;
    }
    let pair = NetnsPair::create();
    let mut cfg = FastPathConfig::new(object(), Some(BMC_IF.to_string()), XdpMode::Native);
    cfg.pin_dir = format!("/sys/fs/bpf/virtbmc-native-{}", std::process::id()).into();
    let fp: FastPath = in_netns(&pair.bmc, move || FastPath::start(&cfg).expect("attach"));
    assert_eq!(fp.attached(), Some((BMC_IF, Attached::Native)));
    let link = |ns: &str| {
        let out = NetnsPair::exec(ns, &["ip", "-d", "link", "show", "dev", BMC_IF])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(link(&pair.bmc).contains("xdp"), "{}", link(&pair.bmc));
    drop(fp);
    assert!(!link(&pair.bmc).contains("prog/xdp"), "{}", link(&pair.bmc));
}
