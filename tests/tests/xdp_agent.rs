//! The agent with its own fast path (`--xdp-iface`): it attaches the program to its veth
//! (auto: generic mode), writes each BMC's state, publishes its IPMI 1.5 sessions, and exports
//! the program's counters on /metrics. Real ipmitool and freeipmi go through both paths.
//! Needs root, the object, the release agent and the clients; skipped otherwise.

mod xdp_support;

use virtbmc_e2e::{Bmc, Iface};
use xdp_support::*;

const PORT: u16 = 6230;

/// The program's per-action counters as the agent exports them.
fn fast_counters(bmc: &Bmc) -> std::collections::HashMap<String, u64> {
    labelled(bmc, "virtbmc_fastpath_packets_total{action=\"")
}

/// A labelled counter family from /metrics, by label value; `prefix` ends at the value.
fn labelled(bmc: &Bmc, prefix: &str) -> std::collections::HashMap<String, u64> {
    let text = bmc.http_get("/metrics").expect("metrics");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(k, v)| (k.to_string(), v.trim().parse().unwrap_or(0)))
        .collect()
}

#[test]
fn agent_attaches_its_fast_path_and_keeps_it_in_step() {
    if skip("agent_attaches_its_fast_path_and_keeps_it_in_step")
        || virtbmc_e2e::skip_unless_ready(
            "agent_attaches_its_fast_path_and_keeps_it_in_step",
            &["ipmitool", "ipmipower"],
        )
    {
        return;
    }
    let pins = format!("/sys/fs/bpf/virtbmc-e2e-agent-{}", std::process::id());
    let object = object();
    let bmc = Bmc::builder()
        .vm(&format!("vm-0={PORT}"))
        .arg("--xdp-iface")
        .arg("vbmc0")
        .arg("--ebpf-object")
        .arg(object.to_str().unwrap())
        .arg("--bpf-pin-dir")
        .arg(&pins)
        .log_level("info,virtbmc::fastpath=debug")
        .start();
    assert!(
        bmc.log().contains("generic"),
        "the agent says which mode and why:\n{}",
        bmc.log()
    );

    // IPMI 1.5: ping, auth caps and the in-session Get Chassis Status from XDP.
    let out = bmc.ipmitool(Iface::Lan, "admin", "password", PORT, &["power", "status"]);
    out.assert_ok().assert_stdout_has("Chassis Power is off");
    let c1 = fast_counters(&bmc);
    assert!(
        c1["answered_ping"] >= 1 && c1["answered_auth_caps"] >= 1,
        "{c1:?}"
    );
    assert!(
        c1["answered_chassis_status"] >= 1,
        "XDP answered power status in the session: {c1:?}"
    );
    assert!(
        c1["passed"] >= 1,
        "the session set-up went to the agent: {c1:?}"
    );

    // A power change made through userspace (RMCP+, never answered by XDP)...
    bmc.ipmitool(Iface::Lanplus, "admin", "password", PORT, &["power", "on"])
        .assert_ok();
    bmc.wait_power("vm-0", "on");
    // ...is what the next fast-path answer says.
    let out = bmc.ipmitool(Iface::Lan, "admin", "password", PORT, &["power", "status"]);
    out.assert_ok().assert_stdout_has("Chassis Power is on");
    let c2 = fast_counters(&bmc);
    // The other path: what the userspace engine handled, by command.
    let slow = labelled(&bmc, "virtbmc_requests_by_command_total{command=\"");
    assert!(
        slow["chassis_control"] >= 1 && slow["activate_session"] >= 1,
        "{slow:?}"
    );
    assert!(
        c2["answered_chassis_status"] > c1["answered_chassis_status"],
        "{c2:?}"
    );
    assert!(
        c2["answered_cipher_suites"] >= 1,
        "ipmitool -I lanplus listed suites: {c2:?}"
    );

    // freeipmi over 1.5 and 2.0, with its strictly increasing sequence check.
    for driver in [&[][..], &["-D", "LAN_2_0"][..]] {
        let args = [driver, &["--stat"][..]].concat();
        bmc.freeipmi("ipmipower", PORT, &args)
            .assert_ok()
            .assert_stdout_has("on");
    }
    let c3 = fast_counters(&bmc);
    assert!(
        c3["answered_chassis_status"] > c2["answered_chassis_status"],
        "{c3:?}"
    );
    assert_eq!(c3["dropped_malformed"], 0, "{c3:?}");
    drop(bmc);
    let _ = std::fs::remove_dir_all(&pins);
}
