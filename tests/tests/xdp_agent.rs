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

/// The DaemonSet's pod, as far as one process can be: root whose bounding set holds only
/// CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (`drop: [ALL]`, `add: [BPF, NET_ADMIN, PERFMON]`),
/// no_new_privs (`allowPrivilegeEscalation: false`), and a pin folder that is a folder of a
/// bpffs mounted outside /sys (the node's /sys/fs/bpf/virtbmc as a hostPath), so nothing
/// needs CAP_SYS_ADMIN. The program loads, pins, attaches and answers.
#[test]
fn agent_loads_its_fast_path_with_the_pods_capabilities() {
    const TEST: &str = "agent_loads_its_fast_path_with_the_pods_capabilities";
    if skip(TEST) || virtbmc_e2e::skip_unless_ready(TEST, &["ipmitool", "setpriv"]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("virtbmc-e2e-caps-{}", std::process::id()));
    let pins = dir.join("bpf");
    let node_fs = dir.join("node-bpffs");
    std::fs::create_dir_all(&pins).unwrap();
    std::fs::create_dir_all(&node_fs).unwrap();
    // `ip netns exec` runs this in a mount namespace of its own, where a bpffs stands for the
    // node's and a folder of it is bind-mounted on the pin folder (the kubelet's hostPath);
    // both go with the namespace. Then every capability but the pod's is dropped for good
    // before the agent starts.
    let wrapper = dir.join("agent-with-pod-caps");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nset -e\nmount -t bpf bpf {fs}\nmkdir -p {fs}/virtbmc\nmount --bind {fs}/virtbmc {pins}\nexec setpriv --no-new-privs --inh-caps=-all --bounding-set=-all,+bpf,+net_admin,+perfmon {agent} \"$@\"\n",
            fs = node_fs.display(),
            pins = pins.display(),
            agent = virtbmc_e2e::agent_binary().display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let bmc = Bmc::builder()
        .binary(&wrapper)
        .vm(&format!("vm-0={PORT}"))
        .arg("--xdp-iface")
        .arg("vbmc0")
        .arg("--ebpf-object")
        .arg(object().to_str().unwrap())
        .arg("--bpf-pin-dir")
        .arg(pins.to_str().unwrap())
        .log_level("info,virtbmc::fastpath=debug")
        .start();
    // The agent itself holds exactly CAP_BPF (39), CAP_PERFMON (38) and CAP_NET_ADMIN (12).
    let status = std::fs::read_to_string(format!("/proc/{}/status", bmc.pid())).unwrap();
    let caps = |key: &str| {
        let hex = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {status}"));
        u64::from_str_radix(hex.trim(), 16).unwrap()
    };
    let want = (1u64 << 39) | (1 << 38) | (1 << 12);
    assert_eq!(caps("CapEff:"), want, "{status}");
    assert_eq!(caps("CapBnd:"), want, "{status}");
    assert_eq!(caps("NoNewPrivs:"), 1, "{status}");
    assert!(
        bmc.log().contains("generic"),
        "the program is attached:\n{}",
        bmc.log()
    );
    // Embedded mode: ready as soon as it answers, its socket being bound by then.
    assert_eq!(bmc.http_get("/readyz").as_deref().map(str::trim), Ok("ok"));

    let out = bmc.ipmitool(Iface::Lan, "admin", "password", PORT, &["power", "status"]);
    out.assert_ok().assert_stdout_has("Chassis Power is off");
    let c = fast_counters(&bmc);
    assert!(
        c["answered_ping"] >= 1 && c["answered_chassis_status"] >= 1,
        "the XDP program answered: {c:?}"
    );
    // Its maps are pinned where the pod mounts the node's folder (seen through the agent's
    // own mount namespace).
    let seen = std::path::PathBuf::from(format!("/proc/{}/root", bmc.pid()))
        .join(pins.strip_prefix("/").unwrap());
    let names: Vec<String> = std::fs::read_dir(&seen)
        .unwrap_or_else(|e| panic!("{}: {e}", seen.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for pin in [virtbmc_common::BMCS_PIN, virtbmc_common::COUNTERS_PIN] {
        assert!(names.iter().any(|n| n == pin), "{pin} pinned: {names:?}");
    }
    drop(bmc);
    let _ = std::fs::remove_dir_all(&dir);
}
