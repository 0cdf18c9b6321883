//! Published IPMI 1.5 sessions with real clients: an engine serving a UDP socket in the BMC
//! namespace, whose offered IPMI 1.5 sessions are published through
//! `FastPath::session_publisher` after each datagram, exactly as the agent does; the
//! program is attached to the veth. `ipmitool -I lan` and freeipmi then run whole sessions in
//! which the program answers Get Chassis Status and the engine everything else, sharing one
//! sequence space (freeipmi rejects a repeated outbound number). Needs root, the object,
//! ipmitool and freeipmi; skipped otherwise.

mod xdp_support;

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtbmc::engine::config::{BmcConfig, Privilege, User};
use virtbmc::engine::session::SessionPublisher;
use virtbmc::engine::{Bmc, Output, PowerState, VmView};
use virtbmc::fastpath::{self, FastPath, FastPathConfig, XdpMode};
use virtbmc_e2e::NetnsPair;
use xdp_support::*;

const PORT: u16 = 6231;

fn enter_netns(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).expect("namespace file");
    // SAFETY: a valid namespace fd; affects this thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}");
}

fn run(ns: &str, args: &[&str]) -> (bool, String) {
    let out = NetnsPair::exec(ns, &[&["timeout", "20"][..], args].concat())
        .output()
        .unwrap();
    let text = format!(
        "$ {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    (out.status.success(), text)
}

#[test]
fn xdp_session_chassis_status_with_real_clients() {
    if skip("xdp_session_chassis_status_with_real_clients")
        || virtbmc_e2e::skip_unless_ready(
            "xdp_session_chassis_status_with_real_clients",
            &["ipmitool", "ipmipower", "ipmi-chassis"],
        )
    {
        return;
    }
    let pair = NetnsPair::create();
    let config = Arc::new(BmcConfig::new(vec![
        User::new("admin", "password", Privilege::Admin).unwrap(),
    ]));
    let fp = {
        let ns = pair.bmc.clone();
        let mut cfg = FastPathConfig::new(object(), Some("vbmc0".into()), XdpMode::Auto);
        cfg.pin_dir = format!("/sys/fs/bpf/virtbmc-s3-{}", std::process::id()).into();
        std::thread::spawn(move || {
            enter_netns(&ns);
            FastPath::start(&cfg).expect("attach")
        })
        .join()
        .unwrap()
    };
    let fp = Arc::new(Mutex::new(fp));
    fp.lock()
        .unwrap()
        .set_bmc(PORT, &fastpath::bmc_state(&config, true).unwrap())
        .unwrap();
    let publisher: Arc<dyn SessionPublisher> = fp.lock().unwrap().session_publisher(PORT).unwrap();

    // The engine on its socket, as the agent runs it (power on, no actions needed here).
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (ns, ip, stop, config) = (pair.bmc.clone(), pair.bmc_ip, stop.clone(), config.clone());
        std::thread::spawn(move || {
            enter_netns(&ns);
            let sock = UdpSocket::bind(SocketAddr::from((ip, PORT))).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut bmc = Bmc::new(config);
            let vm = VmView {
                power: PowerState::On,
                boot: None,
                guid: [7; 16],
            };
            let mut buf = [0u8; 2048];
            let mut handled = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                handled += 1;
                if let Output::Reply(r) = bmc.handle(Instant::now(), peer, &buf[..n], &vm) {
                    let _ = sock.send_to(&r, peer);
                }
                publish_offers(&mut bmc, &*publisher);
            }
            handled
        })
    };

    let host = pair.bmc_ip.to_string();
    let hp = format!("{host}:{PORT}");
    let port = PORT.to_string();
    let ipmitool = [
        "ipmitool", "-I", "lan", "-U", "admin", "-P", "password", "-H", &host, "-p", &port,
    ];
    let (ok, text) = run(
        &pair.client,
        &[&ipmitool[..], &["chassis", "status"]].concat(),
    );
    assert!(ok && text.contains("System Power         : on"), "{text}");
    let (ok, text) = run(
        &pair.client,
        &[&ipmitool[..], &["power", "status"]].concat(),
    );
    assert!(ok && text.contains("Chassis Power is on"), "{text}");
    let after_ipmitool = fp.lock().unwrap().counters().unwrap();
    assert!(
        after_ipmitool.chassis_status_answered >= 2,
        "{after_ipmitool:?}"
    );

    // freeipmi (IPMI 1.5 by default): strictly increasing outbound numbers are checked.
    let free = ["-h", &hp, "-u", "admin", "-p", "password"];
    let (ok, text) = run(
        &pair.client,
        &[&["ipmipower"][..], &free, &["--stat"]].concat(),
    );
    assert!(ok && text.contains(": on"), "{text}");
    let (ok, text) = run(
        &pair.client,
        &[&["ipmi-chassis"][..], &free, &["--get-chassis-status"]].concat(),
    );
    assert!(
        ok && text.contains("System Power") && text.contains(": on"),
        "{text}"
    );
    let c = fp.lock().unwrap().counters().unwrap();
    assert!(
        c.chassis_status_answered >= after_ipmitool.chassis_status_answered + 2,
        "{c:?}"
    );
    eprintln!("fast path counters: {c:?}");

    stop.store(true, Ordering::Relaxed);
    let handled = server.join().unwrap();
    assert!(handled > 0);
}
