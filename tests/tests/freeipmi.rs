//! freeipmi 1.6: ipmipower, ipmi-chassis, bmc-info, ipmi-sensors, ipmi-fru, ipmi-sel (LAN =
//! IPMI 1.5 by default, `-D LAN_2_0` for RMCP+), rmcpping and ipmiping (port 623 only).
//! Default options; the port goes in the host (`-h IP:PORT`).

mod common;

use std::time::Duration;
use virtbmc_e2e::{Bmc, Out};

const PORT: u16 = common::PORT;
const VM: &str = common::VM;

/// ipmipower prints `<host>: <result>`, one line per host.
#[track_caller]
fn ipmipower_says(out: &Out, bmc: &Bmc, want: &str) {
    let line = format!("{}: {want}", bmc.ip());
    assert!(
        out.ok() && out.stdout.lines().any(|l| l.trim() == line),
        "expected {line:?}:\n{out}"
    );
}

fn ipmipower_sequence(driver: &[&str]) {
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let with = |args: &[&'static str]| -> Vec<&str> { [driver, args].concat() };

    ipmipower_says(
        &bmc.freeipmi("ipmipower", PORT, &with(&["--stat"])),
        &bmc,
        "off",
    );

    ipmipower_says(
        &bmc.freeipmi("ipmipower", PORT, &with(&["--on"])),
        &bmc,
        "ok",
    );
    let v = bmc.wait_power(VM, "on");
    assert_eq!(v.starts, 1, "{v:?}");
    ipmipower_says(
        &bmc.freeipmi("ipmipower", PORT, &with(&["--stat"])),
        &bmc,
        "on",
    );

    ipmipower_says(
        &bmc.freeipmi("ipmipower", PORT, &with(&["--reset"])),
        &bmc,
        "ok",
    );
    bmc.wait_vm(VM, "resets=1, on", Duration::from_secs(10), |v| {
        v.resets == 1 && v.power == "on"
    });

    ipmipower_says(
        &bmc.freeipmi("ipmipower", PORT, &with(&["--off"])),
        &bmc,
        "ok",
    );
    let v = bmc.wait_power(VM, "off");
    assert_eq!(v.stops, 1, "{v:?}");
    ipmipower_says(
        &bmc.freeipmi("ipmipower", PORT, &with(&["--stat"])),
        &bmc,
        "off",
    );
}

#[test]
fn ipmipower_lan() {
    ready_or_skip!("ipmipower");
    ipmipower_sequence(&[]);
}

#[test]
fn ipmipower_lan_2_0() {
    ready_or_skip!("ipmipower");
    ipmipower_sequence(&["-D", "LAN_2_0"]);
}

fn chassis_status(bmc: &Bmc, driver: &[&str]) -> Out {
    let out = bmc.freeipmi(
        "ipmi-chassis",
        PORT,
        &[driver, &["--get-chassis-status"]].concat(),
    );
    out.assert_ok();
    out
}

#[test]
fn ipmi_chassis_status_lan_and_lan_2_0() {
    ready_or_skip!("ipmi-chassis");
    let bmc = Bmc::builder().vm("vm-0=6230,on").start();
    for driver in [&[][..], &["-D", "LAN_2_0"][..]] {
        let out = chassis_status(&bmc, driver);
        assert_eq!(
            common::field(&out, "System Power").as_deref(),
            Some("on"),
            "{out}"
        );
        assert_eq!(
            common::field(&out, "Power overload").as_deref(),
            Some("false"),
            "{out}"
        );
    }
    bmc.admin(virtbmc_e2e::Iface::Lanplus, PORT, &["power", "off"])
        .assert_ok();
    bmc.wait_power(VM, "off");
    for driver in [&[][..], &["-D", "LAN_2_0"][..]] {
        let out = chassis_status(&bmc, driver);
        assert_eq!(
            common::field(&out, "System Power").as_deref(),
            Some("off"),
            "{out}"
        );
    }
}

#[test]
fn bmc_info_lan_and_lan_2_0() {
    ready_or_skip!("bmc-info");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    for driver in [&[][..], &["-D", "LAN_2_0"][..]] {
        let out = bmc.freeipmi("bmc-info", PORT, driver);
        out.assert_ok();
        assert_eq!(
            common::field(&out, "IPMI Version").as_deref(),
            Some("2.0"),
            "{out}"
        );
        let g = common::field(&out, "System GUID").unwrap_or_default();
        assert!(common::is_guid(&g), "no System GUID:\n{out}");
        // bmc-info exits 0 printing nothing on 0xC1: look at the text.
        assert_eq!(system_guid(&bmc, driver), g);
    }
}

/// `bmc-info --get-system-guid` prints the bare GUID.
#[track_caller]
fn system_guid(bmc: &Bmc, driver: &[&str]) -> String {
    let out = bmc.freeipmi("bmc-info", PORT, &[driver, &["--get-system-guid"]].concat());
    let g = out.stdout.trim().to_string();
    assert!(common::is_guid(&g), "no System GUID:\n{out}");
    g
}

/// IPMI 2.0 §20.8 (Table 20-10) sends the GUID in IPMI byte order. ipmitool decodes both
/// orders and warns "SMBIOS (WARNING: IPMI Specification violation!)" when the BMC used the
/// SMBIOS one; freeipmi decodes only the IPMI order, so with the wrong order the two clients
/// print different GUIDs for the same VM.
#[test]
fn system_guid_is_ipmi_encoded_and_clients_agree() {
    ready_or_skip!("bmc-info", "ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let out = bmc.admin(virtbmc_e2e::Iface::Lanplus, PORT, &["mc", "guid"]);
    out.assert_ok();
    let from_ipmitool = common::field(&out, "System GUID").unwrap_or_default();
    assert!(
        !out.stdout.contains("Specification violation"),
        "ipmitool reports a wrongly encoded GUID:\n{out}"
    );
    assert_eq!(
        system_guid(&bmc, &[]),
        from_ipmitool,
        "freeipmi and ipmitool disagree"
    );
    assert_eq!(system_guid(&bmc, &["-D", "LAN_2_0"]), from_ipmitool);
}

/// bmc-info's default output ends with a "Channel Information" section built from Get Channel
/// Info (App 0x42). Channel numbers are 4 bits (IPMI 2.0 §22.24): anything above 15 means the
/// client printed an unanswered request's buffer.
/// bmc-info asks Get Channel Info for channels 0 to 11: ours (1, 802.3 LAN, multi-session,
/// IPMI forum vendor) must be listed right. The others get 0xCC as on a physical BMC;
/// freeipmi 1.6.10 then prints uninitialised memory for some of them (its bug, not checked).
#[test]
fn bmc_info_channel_section_is_sane() {
    ready_or_skip!("bmc-info");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let out = bmc.freeipmi("bmc-info", PORT, &[]);
    out.assert_ok();
    let want = "Channel Number       : 1\nMedium Type          : 802.3 LAN\nProtocol Type        : IPMB-1.0\nActive Session Count : 1\nSession Support      : multi-session\nVendor ID            : Intelligent Platform Management Interface forum (7154)";
    assert!(
        out.stdout.contains(want),
        "channel 1 block missing or wrong in bmc-info output:\n{out}"
    );
}

/// rmcpping (ASF Presence Ping) and ipmiping (session-less Get Channel Auth Capabilities)
/// only talk to port 623, so this agent binds it inside its namespace.
#[test]
fn rmcpping_and_ipmiping_on_623() {
    ready_or_skip!("rmcpping", "ipmiping");
    let bmc = Bmc::builder().vm("vm-0=623").start();
    let ip = bmc.ip();
    let out = bmc.client(&["rmcpping", "-c", "2", "-t", "2", &ip]);
    out.assert_ok()
        .assert_stdout_has("2 pings transmitted, 2 pongs received in time, 0.0% packet loss");
    assert!(
        out.stdout.contains(&format!("pong received from {ip}")),
        "{out}"
    );
    let out = bmc.client(&["ipmiping", "-c", "2", "-t", "2", &ip]);
    out.assert_ok().assert_stdout_has(
        "2 requests transmitted, 2 responses received in time, 0.0% packet loss",
    );
    // Pings change nothing.
    let vm = bmc.vm(VM);
    assert_eq!((vm.power.as_str(), vm.starts), ("off", 0), "{vm:?}");
}

/// `ipmi-chassis-config` (freeipmi's boot flags tool, IPMI 1.5 and 2.0): commit a boot device,
/// read it back with `--checkout`, and see it in `/vms`.
#[test]
fn ipmi_chassis_config_boot_flags() {
    ready_or_skip!("ipmi-chassis-config");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let cases = [
        (&[][..], "PXE", "Yes", "EFI", ("pxe", true, true)),
        (
            &["-D", "LAN_2_0"][..],
            "HARD-DRIVE",
            "No",
            "PC-COMPATIBLE",
            ("disk", false, false),
        ),
        (&[][..], "CD-DVD", "No", "EFI", ("cdrom", false, true)),
        (
            &["-D", "LAN_2_0"][..],
            "BIOS-SETUP",
            "Yes",
            "PC-COMPATIBLE",
            ("bios", true, false),
        ),
    ];
    for (driver, device, persistent, boot_type, want) in cases {
        let commit = [
            "--commit",
            &format!("--key-pair=Chassis_Boot_Flags:Boot_Device={device}"),
            &format!("--key-pair=Chassis_Boot_Flags:Boot_Flags_Persistent={persistent}"),
            &format!("--key-pair=Chassis_Boot_Flags:BIOS_Boot_Type={boot_type}"),
        ]
        .map(String::from);
        let commit: Vec<&str> = commit.iter().map(String::as_str).collect();
        bmc.freeipmi("ipmi-chassis-config", PORT, &[driver, &commit].concat())
            .assert_ok();
        let vm = bmc.vm(VM);
        assert_eq!(
            (vm.boot.as_str(), vm.persistent, vm.efi),
            want,
            "{device}: {vm:?}"
        );

        let checkout = ["--checkout", "--section", "Chassis_Boot_Flags"];
        let out = bmc.freeipmi("ipmi-chassis-config", PORT, &[driver, &checkout].concat());
        out.assert_ok();
        for (key, value) in [
            ("Boot_Device", device),
            ("Boot_Flags_Persistent", persistent),
            ("BIOS_Boot_Type", boot_type),
        ] {
            let found = out.stdout.lines().any(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(key) && w.next() == Some(value)
            });
            assert!(found, "{key} {value} not read back:\n{out}");
        }
    }
}

fn joined<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<&'a str> {
    [a, b].concat()
}

/// ipmi-sensors, ipmi-fru and ipmi-sel read the SDR repository, FRU and SEL: the ACPI power
/// state sensor follows the VM, the FRU names it with the GUID bmc-info reads as its serial.
/// The SDR cache goes to a directory of this test's own, so that no earlier run answers.
#[test]
fn ipmi_sensors_fru_and_sel() {
    ready_or_skip!("ipmi-sensors", "ipmi-fru", "ipmi-sel", "ipmipower");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let cache = std::env::temp_dir().join(format!("{}-sdr-cache", bmc.net.bmc));
    std::fs::create_dir_all(&cache).unwrap();
    let cache_arg = format!("--sdr-cache-directory={}", cache.display());
    for driver in [&[][..], &["-D", "LAN_2_0"][..]] {
        let sensor_event = |bmc: &Bmc| {
            let out = bmc.freeipmi(
                "ipmi-sensors",
                PORT,
                &joined(
                    driver,
                    &[&cache_arg, "--comma-separated-output", "--no-header-output"],
                ),
            );
            out.assert_ok();
            out.stdout
                .lines()
                .find(|l| l.contains("ACPI Power State"))
                .and_then(|l| l.rsplit(',').next())
                .unwrap_or_else(|| panic!("no power sensor:\n{out}"))
                .to_string()
        };
        ipmipower_says(
            &bmc.freeipmi("ipmipower", PORT, &joined(driver, &["--off"])),
            &bmc,
            "ok",
        );
        bmc.wait_power(VM, "off");
        assert_eq!(sensor_event(&bmc), "'S5/G2'");
        ipmipower_says(
            &bmc.freeipmi("ipmipower", PORT, &joined(driver, &["--on"])),
            &bmc,
            "ok",
        );
        bmc.wait_power(VM, "on");
        assert_eq!(sensor_event(&bmc), "'S0/G0'");

        let fru = bmc.freeipmi("ipmi-fru", PORT, &joined(driver, &[&cache_arg]));
        fru.assert_ok()
            .assert_stdout_has("FRU Product Manufacturer Name: KubeVirt")
            .assert_stdout_has("FRU Product Name: vm-0")
            .assert_stdout_has(&format!(
                "FRU Product Serial Number: {}",
                system_guid(&bmc, driver).to_lowercase()
            ));

        let sel = bmc.freeipmi("ipmi-sel", PORT, &joined(driver, &["--info"]));
        sel.assert_ok();
        let entries = sel
            .stdout
            .lines()
            .find(|l| l.starts_with("Number of log entries"));
        assert!(entries.is_some_and(|l| l.ends_with(": 0")), "{sel}");
    }
    let _ = std::fs::remove_dir_all(&cache);
}
