//! The XDP program in front of the real agent: the e2e fixture runs the agent in its
//! namespace, the program is attached (auto: generic mode on the veth) with BMCS filled from
//! the agent's configuration, and real ipmitool commands go through both. XDP answers the
//! discovery (ping, auth caps, cipher suites), the agent the sessions; the clients see one BMC.
//! Needs root, the object, the release agent and ipmitool; skipped otherwise.

mod xdp_support;

use std::fs::File;
use std::os::fd::AsRawFd;

use virtbmc::engine::config::{BmcConfig, Privilege, User};
use virtbmc::fastpath::{self, Attached, FastPath, FastPathConfig, XdpMode};
use virtbmc_e2e::{Bmc, Iface};
use xdp_support::*;

const PORT: u16 = 6230;

fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).expect("namespace file");
        // SAFETY: a valid namespace fd; affects this thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
    .join()
    .expect("netns thread")
}

#[test]
fn xdp_in_front_of_the_agent_with_ipmitool() {
    if skip("xdp_in_front_of_the_agent_with_ipmitool")
        || virtbmc_e2e::skip_unless_ready("xdp_in_front_of_the_agent_with_ipmitool", &["ipmitool"])
    {
        return;
    }
    // The fixture's agent: $VIRTBMC_BIN, else target/release/virtbmc.
    let agent = std::env::var_os("VIRTBMC_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/virtbmc")
        });
    if !agent.is_file() {
        eprintln!("SKIP xdp_in_front_of_the_agent_with_ipmitool: no release agent");
        return;
    }
    let bmc = Bmc::builder().vm(&format!("vm-0={PORT},on")).start();
    // The agent's defaults: suites 3 and 17, auth NONE refused; the VM is on.
    let config = BmcConfig::new(vec![
        User::new("admin", "password", Privilege::Admin).unwrap(),
    ]);
    let mut cfg = FastPathConfig::new(object(), Some("vbmc0".into()), XdpMode::Auto);
    cfg.pin_dir = format!("/sys/fs/bpf/virtbmc-agent-{}", std::process::id()).into();
    let mut fp: FastPath = in_netns(&bmc.net.bmc, move || FastPath::start(&cfg).expect("attach"));
    assert_eq!(fp.attached().map(|a| a.1), Some(Attached::Skb));
    fp.set_bmc(PORT, &fastpath::bmc_state(&config, true).unwrap())
        .unwrap();

    // IPMI 1.5: ping and auth caps from XDP, the session from the agent.
    let out = bmc.ipmitool(
        Iface::Lan,
        "admin",
        "password",
        PORT,
        &["chassis", "status"],
    );
    out.assert_ok()
        .assert_stdout_has("System Power         : on");
    let c = fp.counters().unwrap();
    assert!(c.ping_answered >= 1 && c.auth_caps_answered >= 1, "{c:?}");
    // The ping is answered at once: no 2 s wait for a missing pong.
    assert!(out.elapsed.as_millis() < 1500, "took {:?}", out.elapsed);

    // RMCP+: auth caps (8e 04) and the RMCP+-framed cipher suite list from XDP.
    let out = bmc.ipmitool(
        Iface::Lanplus,
        "admin",
        "password",
        PORT,
        &["power", "status"],
    );
    out.assert_ok().assert_stdout_has("Chassis Power is on");
    let c2 = fp.counters().unwrap();
    assert!(c2.cipher_suites_answered >= 1, "{c2:?}");
    assert!(c2.auth_caps_answered > c.auth_caps_answered, "{c2:?}");
    assert!(c2.passed >= 1, "the sessions went to the agent: {c2:?}");
    eprintln!("fast path counters after ipmitool lan + lanplus: {c2:?}");

    // freeipmi, IPMI 1.5 and 2.0: its auth caps requests (privilege USER/OPERATOR/ADMIN,
    // with and without the 2.0 bit) are answered by XDP too, and it takes the replies.
    for driver in [&[][..], &["-D", "LAN_2_0"][..]] {
        let args = [driver, &["--stat"][..]].concat();
        let out = bmc.freeipmi("ipmipower", PORT, &args);
        out.assert_ok().assert_stdout_has("on");
        let args = [driver, &["--get-chassis-status"][..]].concat();
        let out = bmc.freeipmi("ipmi-chassis", PORT, &args);
        out.assert_ok().assert_stdout_has("System Power");
    }
    let c3 = fp.counters().unwrap();
    assert!(c3.auth_caps_answered >= c2.auth_caps_answered + 4, "{c3:?}");
    drop(fp);
}
