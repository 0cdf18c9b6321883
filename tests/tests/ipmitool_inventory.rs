//! What clients read besides power and boot: sessions, users, channel, LAN parameters,
//! sensors (as OpenStack Ironic collects them), SEL, FRU, self test and identify, through
//! ipmitool over RMCP+ and IPMI 1.5, and ipmiutil's `health`. Every value printed is checked
//! against what the agent was started with or what another command reads back.

mod common;

use common::{PORT, VM};
use virtbmc_e2e::{Bmc, Iface, Out};

/// The value of the line whose label (the text before the first colon) is exactly `label`:
/// `lan print` has both "IP Address" and "IP Address Source".
fn field(out: &Out, label: &str) -> Option<String> {
    out.stdout.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == label).then(|| v.trim().to_string())
    })
}

/// ipmitool as `viewer` (USER privilege, which it must ask for with `-L USER`).
fn viewer(bmc: &Bmc, iface: Iface, args: &[&str]) -> Out {
    let mut argv = vec!["-L", "USER"];
    argv.extend_from_slice(args);
    bmc.ipmitool(iface, "viewer", "viewer", PORT, &argv)
}

#[track_caller]
fn refused(out: &Out) {
    assert!(!out.ok(), "expected a refusal:\n{out}");
    assert!(
        out.text().contains("Insufficient privilege level"),
        "expected 0xD4:\n{out}"
    );
}

/// Turns the VM on through IPMI and waits until `/vms` and `power status` both say so.
fn power_on(bmc: &Bmc, iface: Iface) {
    bmc.admin(iface, PORT, &["power", "on"]).assert_ok();
    bmc.wait_power(VM, "on");
    common::power_status_is(bmc, iface, PORT, "on");
}

#[test]
fn session_info_shows_privilege_user_and_console() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let client_ip = bmc.net.client_ip.to_string();
    for (iface, kind) in [
        (Iface::Lanplus, "IPMIv2/RMCP+"),
        (Iface::LanplusC(3), "IPMIv2/RMCP+"),
        (Iface::Lan, "IPMIv1.5"),
    ] {
        let out = bmc.admin(iface, PORT, &["session", "info", "active"]);
        out.assert_ok();
        assert_eq!(
            field(&out, "privilege level").as_deref(),
            Some("ADMINISTRATOR"),
            "{out}"
        );
        assert_eq!(field(&out, "user id").as_deref(), Some("1"), "{out}");
        assert_eq!(field(&out, "session type").as_deref(), Some(kind), "{out}");
        assert_eq!(
            field(&out, "channel number").as_deref(),
            Some("0x01"),
            "{out}"
        );
        assert_eq!(
            field(&out, "console ip").as_deref(),
            Some(client_ip.as_str()),
            "{out}"
        );
        let port: u16 = field(&out, "console port")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no console port:\n{out}"));
        assert!(port != 0 && port != PORT, "the client's own port:\n{out}");
        assert_ne!(field(&out, "session handle").as_deref(), Some("0"), "{out}");

        let out = viewer(&bmc, iface, &["session", "info", "active"]);
        out.assert_ok();
        assert_eq!(
            field(&out, "privilege level").as_deref(),
            Some("USER"),
            "{out}"
        );
        assert_eq!(field(&out, "user id").as_deref(), Some("2"), "{out}");
    }
    // `all` walks every slot: this session is the one active, then empty slots.
    let out = bmc.admin(Iface::Lanplus, PORT, &["session", "info", "all"]);
    out.assert_ok();
    assert_eq!(out.stdout.matches("privilege level").count(), 1, "{out}");
    assert_eq!(out.stdout.matches("slot count").count(), 16, "{out}");
}

#[test]
fn user_list_shows_the_configured_users() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    for iface in [Iface::Lanplus, Iface::Lan] {
        let out = bmc.admin(iface, PORT, &["user", "list", "1"]);
        out.assert_ok();
        let rows: Vec<Vec<&str>> = out
            .stdout
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), 16, "16 user ids:\n{out}");
        assert_eq!(rows[0].first(), Some(&"1"), "{out}");
        assert_eq!(rows[0].get(1), Some(&"admin"), "{out}");
        assert_eq!(rows[0].last(), Some(&"ADMINISTRATOR"), "{out}");
        assert_eq!(rows[1].get(1), Some(&"viewer"), "{out}");
        assert_eq!(rows[1].last(), Some(&"USER"), "{out}");
        assert!(
            rows[2..].iter().all(|r| r.ends_with(&["NO", "ACCESS"])),
            "empty slots have no access:\n{out}"
        );
        let summary = bmc.admin(iface, PORT, &["user", "summary", "1"]);
        summary.assert_ok();
        assert_eq!(
            field(&summary, "Maximum IDs").as_deref(),
            Some("16"),
            "{summary}"
        );
        assert_eq!(
            field(&summary, "Enabled User Count").as_deref(),
            Some("2"),
            "{summary}"
        );
        // Listing the accounts is an Operator read.
        refused(&viewer(&bmc, iface, &["user", "list", "1"]));
    }
}

/// ipmitool's `sdr -v` as Ironic runs it (ironic/drivers/modules/ipmitool.py: `-L`, `-R`,
/// `-N`, the password in a file), then Ironic's parse: blocks split by blank lines, `key :
/// value` lines; every block must name a sensor type, and some sensor must have a reading.
fn ironic_sensor_data(bmc: &Bmc) -> Vec<std::collections::HashMap<String, String>> {
    let pw = std::env::temp_dir().join(format!("{}.pw", bmc.net.bmc));
    std::fs::write(&pw, "password").unwrap();
    let ip = bmc.ip();
    let port = PORT.to_string();
    let pw_path = pw.display().to_string();
    let out = bmc.client(&[
        "ipmitool",
        "-I",
        "lanplus",
        "-H",
        &ip,
        "-L",
        "ADMINISTRATOR",
        "-p",
        &port,
        "-U",
        "admin",
        "-R",
        "3",
        "-N",
        "5",
        "-f",
        &pw_path,
        "sdr",
        "-v",
    ]);
    let _ = std::fs::remove_file(&pw);
    out.assert_ok();
    let blocks: Vec<std::collections::HashMap<String, String>> = out
        .stdout
        .split("\n\n")
        .map(|block| {
            block
                .lines()
                .filter_map(|l| {
                    let kv: Vec<&str> = l.split(':').collect();
                    (kv.len() == 2).then(|| (kv[0].trim().to_string(), kv[1].trim().to_string()))
                })
                .collect::<std::collections::HashMap<_, _>>()
        })
        .filter(|d| !d.is_empty())
        .collect();
    for b in &blocks {
        assert!(
            [
                "Sensor Type (Analog)",
                "Sensor Type (Discrete)",
                "Sensor Type (Threshold)"
            ]
            .iter()
            .any(|k| b.contains_key(*k)),
            "Ironic cannot type this block: {b:?}\n{out}"
        );
    }
    assert!(
        blocks.iter().any(|b| b.contains_key("Sensor Reading")),
        "Ironic finds no reading:\n{out}"
    );
    blocks
}

#[test]
fn sdr_power_sensor_follows_the_vm() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    // `sdr list` prints the discrete state bits (S5/G2 is offset 5, S0/G0 offset 0), `sdr -v`
    // the reading byte, which repeats the offset.
    for (power, bits, reading, state) in [
        ("off", "0x20", "5h", "S5/G2: soft-off"),
        ("on", "0x01", "0h", "S0/G0: working"),
    ] {
        if power == "on" {
            power_on(&bmc, Iface::Lanplus);
        } else {
            common::power_status_is(&bmc, Iface::Lanplus, PORT, "off");
        }
        for iface in [Iface::Lanplus, Iface::Lan] {
            let list = bmc.admin(iface, PORT, &["sdr", "list"]);
            list.assert_ok();
            let row: Vec<&str> = list
                .stdout
                .lines()
                .find(|l| l.starts_with("ACPI Power State"))
                .unwrap_or_else(|| panic!("no power sensor:\n{list}"))
                .split('|')
                .map(str::trim)
                .collect();
            assert_eq!(row[1..], [bits, "ok"], "{list}");
            let elist = bmc.admin(iface, PORT, &["sdr", "elist"]);
            elist.assert_ok().assert_stdout_has(state);
        }
        let verbose = bmc.admin(Iface::Lanplus, PORT, &["sdr", "-v"]);
        verbose
            .assert_ok()
            .assert_stdout_has("Sensor ID              : ACPI Power State (0x1)")
            .assert_stdout_has("System ACPI Power State (0x22)")
            .assert_stdout_has(&format!("[{state}]"));
        let sensors = ironic_sensor_data(&bmc);
        let acpi = sensors
            .iter()
            .find(|b| {
                b.get("Sensor ID")
                    .is_some_and(|v| v.starts_with("ACPI Power State"))
            })
            .unwrap_or_else(|| panic!("no ACPI sensor in {sensors:?}"));
        assert_eq!(
            acpi.get("Sensor Type (Discrete)").map(String::as_str),
            Some("System ACPI Power State (0x22)")
        );
        assert_eq!(
            acpi.get("Sensor Reading").map(String::as_str),
            Some(reading)
        );
    }
    // A viewer may read sensors too.
    viewer(&bmc, Iface::Lanplus, &["sdr", "list"])
        .assert_ok()
        .assert_stdout_has("ACPI Power State");
}

#[test]
fn fru_names_the_vm_with_its_uuid() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").vm("web-1=6231").start();
    for (vm, port) in [("vm-0", 6230), ("web-1", 6231)] {
        for iface in [Iface::Lanplus, Iface::Lan] {
            let out = bmc.admin(iface, port, &["fru", "print"]);
            out.assert_ok();
            assert_eq!(
                field(&out, "Product Manufacturer").as_deref(),
                Some("KubeVirt"),
                "{out}"
            );
            assert_eq!(field(&out, "Product Name").as_deref(), Some(vm), "{out}");
            let guid = common::mc_guid(&bmc, iface, port);
            assert_eq!(
                field(&out, "Product Serial").map(|s| s.to_lowercase()),
                Some(guid.to_lowercase()),
                "the serial is the System GUID:\n{out}"
            );
        }
    }
}

#[test]
fn sel_is_empty_and_tells_the_time() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    for iface in [Iface::Lanplus, Iface::Lan] {
        let info = bmc.admin(iface, PORT, &["sel", "info"]);
        info.assert_ok();
        assert_eq!(field(&info, "Entries").as_deref(), Some("0"), "{info}");
        assert_eq!(
            field(&info, "Version").as_deref(),
            Some("1.5 (v1.5, v2 compliant)"),
            "{info}"
        );
        assert_eq!(field(&info, "Overflow").as_deref(), Some("false"), "{info}");
        assert_eq!(
            field(&info, "Supported Cmds").as_deref(),
            Some("'Reserve'"),
            "{info}"
        );
        let list = bmc.admin(iface, PORT, &["sel", "list"]);
        list.assert_ok();
        assert!(list.text().contains("SEL has no entries"), "{list}");
        assert_eq!(list.stdout.trim(), "", "{list}");
    }
    // ipmitool prints the SEL time as "MM/DD/YY hh:mm:ss UTC"; the date is the agent's (the
    // clock the test reads around it, in case the day turns meanwhile).
    let today = || {
        bmc.client(&["date", "-u", "+%m/%d/%y"])
            .stdout
            .trim()
            .to_string()
    };
    let before = today();
    let time = bmc.admin(Iface::Lanplus, PORT, &["sel", "time", "get"]);
    let after = today();
    time.assert_ok();
    let date = time
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        date == before || date == after,
        "the SEL clock is the agent's wall clock ({before}):\n{time}"
    );
}

#[test]
fn lan_print_shows_the_agent_address_and_port() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let ip = bmc.ip();
    for iface in [Iface::Lanplus, Iface::Lan] {
        let out = bmc.admin(iface, PORT, &["lan", "print", "1"]);
        out.assert_ok();
        assert_eq!(
            field(&out, "IP Address").as_deref(),
            Some(ip.as_str()),
            "{out}"
        );
        assert_eq!(
            field(&out, "IP Address Source").as_deref(),
            Some("Static Address"),
            "{out}"
        );
        assert_eq!(
            field(&out, "Subnet Mask").as_deref(),
            Some("255.255.255.0"),
            "{out}"
        );
        assert_eq!(
            field(&out, "Auth Type Support").as_deref(),
            Some("MD5 PASSWORD"),
            "{out}"
        );
        assert_eq!(
            field(&out, "RMCP+ Cipher Suites").as_deref(),
            Some("3,17"),
            "{out}"
        );
        assert_eq!(
            field(&out, "Cipher Suite Priv Max").as_deref(),
            Some("aaXXXXXXXXXXXXX"),
            "{out}"
        );
        let mac = field(&out, "MAC Address").unwrap_or_default();
        assert!(
            mac.len() == 17 && mac != "00:00:00:00:00:00",
            "the veth's MAC:\n{out}"
        );
    }
    // The port is parameter 8, which `lan print` does not show: read it raw (LS byte first).
    let port = PORT.to_le_bytes();
    bmc.admin(
        Iface::Lanplus,
        PORT,
        &["raw", "0x0c", "0x02", "0x01", "0x08", "0x00", "0x00"],
    )
    .assert_ok()
    .assert_stdout_has(&format!("11 {:02x} {:02x}", port[0], port[1]));
    // Read-only: a write is refused and changes nothing.
    let set = bmc.admin(
        Iface::Lanplus,
        PORT,
        &["lan", "set", "1", "ipaddr", "10.9.9.9"],
    );
    assert!(!set.ok(), "a read-only parameter was written:\n{set}");
    let again = bmc.admin(Iface::Lanplus, PORT, &["lan", "print", "1"]);
    assert_eq!(
        field(&again, "IP Address").as_deref(),
        Some(ip.as_str()),
        "{again}"
    );
    // LAN parameters are an Operator read (`lan print` fails silently; `raw` says why).
    let print = viewer(&bmc, Iface::Lanplus, &["lan", "print", "1"]);
    assert!(
        !print.ok() && field(&print, "IP Address").is_none(),
        "{print}"
    );
    refused(&viewer(
        &bmc,
        Iface::Lanplus,
        &["raw", "0x0c", "0x02", "0x01", "0x03", "0x00", "0x00"],
    ));
}

#[test]
fn channel_selftest_and_identify() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    for iface in [Iface::Lanplus, Iface::Lan] {
        let out = bmc.admin(iface, PORT, &["channel", "info"]);
        out.assert_ok();
        assert_eq!(
            field(&out, "Channel Medium Type").as_deref(),
            Some("802.3 LAN"),
            "{out}"
        );
        assert_eq!(
            field(&out, "Session Support").as_deref(),
            Some("multi-session"),
            "{out}"
        );
        assert_eq!(
            out.stdout
                .matches("Access Mode         : always available")
                .count(),
            2,
            "{out}"
        );
        assert_eq!(
            out.stdout.matches("Per-message Auth    : enabled").count(),
            2,
            "{out}"
        );

        bmc.admin(iface, PORT, &["mc", "selftest"])
            .assert_ok()
            .assert_stdout_has("Selftest: passed");

        bmc.admin(iface, PORT, &["chassis", "identify"])
            .assert_ok()
            .assert_stdout_has("Chassis identify interval: default (15 seconds)");
        bmc.admin(iface, PORT, &["chassis", "identify", "force"])
            .assert_ok()
            .assert_stdout_has("Chassis identify interval: indefinite");
        refused(&viewer(&bmc, iface, &["chassis", "identify"]));
        viewer(&bmc, iface, &["mc", "selftest"])
            .assert_ok()
            .assert_stdout_has("Selftest: passed");
    }
}

/// ipmiutil cannot name a port (its `-p` sets the power restore policy), so this BMC is on 623.
#[test]
fn ipmiutil_health_reads_the_acpi_power_state() {
    ready_or_skip!("ipmitool", "ipmiutil");
    let bmc = Bmc::builder().vm("vm-0=623").start();
    let ip = bmc.ip();
    let health = |driver: &str| {
        let out = bmc.client(&[
            "ipmiutil", "health", "-N", &ip, "-U", "admin", "-P", "password", "-F", driver,
        ]);
        out.assert_ok();
        out
    };
    for driver in ["lan2", "lan"] {
        let out = health(driver);
        assert!(out.stdout.contains("(S5: soft off)"), "off:\n{out}");
        let selftest = out
            .stdout
            .lines()
            .find(|l| l.starts_with("Selftest status"));
        assert!(
            selftest.is_some_and(|l| l.contains("0055") && l.ends_with("(OK)")),
            "{out}"
        );
        assert!(out.stdout.contains("completed successfully"), "{out}");
    }
    bmc.ipmitool(Iface::Lanplus, "admin", "password", 623, &["power", "on"])
        .assert_ok();
    bmc.wait_power(VM, "on");
    for driver in ["lan2", "lan"] {
        let out = health(driver);
        assert!(out.stdout.contains("(S0: working)"), "on:\n{out}");
    }
}
