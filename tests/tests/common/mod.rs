//! Scenarios shared by the ipmitool test files: each runs one client flavour against a fresh
//! agent and checks the VM's state through `/vms` after every action, not only exit codes.

#![allow(dead_code)] // each test file uses a different subset

use std::time::Duration;
use virtbmc_e2e::{Bmc, Iface, Out};

pub const PORT: u16 = 6230;
pub const VM: &str = "vm-0";

/// Skips (or fails under VIRTBMC_E2E_REQUIRED=1) unless root and the tools are present.
#[macro_export]
macro_rules! ready_or_skip {
    ($($tool:expr),*) => {{
        let test = std::thread::current().name().unwrap_or("e2e").to_string();
        if virtbmc_e2e::skip_unless_ready(&test, &[$($tool),*]) {
            return;
        }
    }};
}

/// The value after `label ... :` on the line that starts with `label`, trimmed.
pub fn field(out: &Out, label: &str) -> Option<String> {
    out.stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// A GUID printed as 8-4-4-4-12 hex digits (ipmitool and freeipmi both do).
pub fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
        && s.chars().any(|c| c.is_ascii_hexdigit() && c != '0')
}

#[track_caller]
pub fn power_status_is(bmc: &Bmc, iface: Iface, port: u16, want: &str) {
    let out = bmc.admin(iface, port, &["power", "status"]);
    out.assert_ok()
        .assert_stdout_has(&format!("Chassis Power is {want}"));
}

/// power status / on / chassis status / reset / cycle / soft / on / off, with `/vms` checked
/// after each step.
pub fn power_sequence(iface: Iface) {
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    let v0 = bmc.vm(VM);
    assert_eq!(v0.power, "off", "a VM starts off by default");
    power_status_is(&bmc, iface, PORT, "off");

    // power on: the backend takes --transition-ms, then /vms and the client both say on.
    bmc.admin(iface, PORT, &["power", "on"])
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Up/On");
    let v = bmc.wait_power(VM, "on");
    assert_eq!(v.starts, v0.starts + 1, "one completed power-on: {v:?}");
    power_status_is(&bmc, iface, PORT, "on");

    let st = bmc.admin(iface, PORT, &["chassis", "status"]);
    st.assert_ok();
    assert_eq!(field(&st, "System Power").as_deref(), Some("on"), "{st}");
    assert_eq!(
        field(&st, "Power Overload").as_deref(),
        Some("false"),
        "{st}"
    );

    // power reset: counted as a reset, power stays on.
    let before = bmc.vm(VM);
    bmc.admin(iface, PORT, &["power", "reset"])
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Reset");
    let v = bmc.wait_vm(VM, "resets+1 and on", Duration::from_secs(10), |v| {
        v.resets == before.resets + 1 && v.power == "on"
    });
    assert_eq!(
        v.stops, before.stops,
        "a hard reset is not a power-off: {v:?}"
    );

    // power cycle: off then on again; the start counter moves and it ends on.
    let before = bmc.vm(VM);
    bmc.admin(iface, PORT, &["power", "cycle"])
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Cycle");
    bmc.wait_vm(
        VM,
        "starts+1 and on after a cycle",
        Duration::from_secs(10),
        |v| v.starts > before.starts && v.power == "on",
    );
    power_status_is(&bmc, iface, PORT, "on");

    // power soft (ACPI soft shutdown): the embedded guest goes off.
    let before = bmc.vm(VM);
    bmc.admin(iface, PORT, &["power", "soft"])
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Soft");
    let v = bmc.wait_power(VM, "off");
    assert!(
        v.stops > before.stops,
        "soft shutdown completed a power-off: {v:?}"
    );
    power_status_is(&bmc, iface, PORT, "off");

    // on again, then a hard power off.
    bmc.admin(iface, PORT, &["power", "on"]).assert_ok();
    bmc.wait_power(VM, "on");
    let before = bmc.vm(VM);
    bmc.admin(iface, PORT, &["power", "off"])
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Down/Off");
    let v = bmc.wait_power(VM, "off");
    assert_eq!(v.stops, before.stops + 1, "one completed power-off: {v:?}");
    power_status_is(&bmc, iface, PORT, "off");
    let st = bmc.admin(iface, PORT, &["chassis", "status"]);
    assert_eq!(field(&st, "System Power").as_deref(), Some("off"), "{st}");
    assert_eq!(
        field(&st, "Power Overload").as_deref(),
        Some("false"),
        "{st}"
    );
}

/// (ipmitool device, /vms boot, device selector text, parameter data prefix) for a one-time
/// legacy boot: valid bit set, persistent and EFI clear (IPMI 2.0 §28.13, parameter 5).
pub const BOOTDEVS: [(&str, &str, &str, &str); 4] = [
    ("pxe", "pxe", "Force PXE", "8004"),
    ("disk", "disk", "Force Boot from default Hard-Drive", "8008"),
    ("cdrom", "cdrom", "Force Boot from CD/DVD", "8014"),
    ("bios", "bios", "Force Boot into BIOS Setup", "8018"),
];

#[track_caller]
fn bootparam5(bmc: &Bmc, iface: Iface) -> Out {
    let out = bmc.admin(iface, PORT, &["chassis", "bootparam", "get", "5"]);
    out.assert_ok()
        .assert_stdout_has("Boot parameter 5 is valid");
    out
}

/// `chassis bootdev X` for each device, then `pxe options=persistent,efiboot`; each read
/// back through `/vms` and `chassis bootparam get 5`.
pub fn bootdev_sequence(iface: Iface) {
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    assert_eq!(bmc.vm(VM).boot, "none", "no boot override at start");

    for (dev, boot, selector, data) in BOOTDEVS {
        bmc.admin(iface, PORT, &["chassis", "bootdev", dev])
            .assert_ok()
            .assert_stdout_has(&format!("Set Boot Device to {dev}"));
        let vm = bmc.vm(VM);
        assert_eq!(
            (vm.boot.as_str(), vm.persistent, vm.efi),
            (boot, false, false),
            "after bootdev {dev}: {vm:?}"
        );
        let out = bootparam5(&bmc, iface);
        out.assert_stdout_has(&format!("Boot parameter data: {data}"))
            .assert_stdout_has("- Boot Flag Valid")
            .assert_stdout_has("- Options apply to only next boot")
            .assert_stdout_has("- BIOS PC Compatible (legacy) boot")
            .assert_stdout_has(&format!("Boot Device Selector : {selector}"));
    }

    bmc.admin(
        iface,
        PORT,
        &["chassis", "bootdev", "pxe", "options=persistent,efiboot"],
    )
    .assert_ok()
    .assert_stdout_has("Set Boot Device to pxe");
    let vm = bmc.vm(VM);
    assert_eq!(
        (vm.boot.as_str(), vm.persistent, vm.efi),
        ("pxe", true, true),
        "after bootdev pxe options=persistent,efiboot: {vm:?}"
    );
    bootparam5(&bmc, iface)
        .assert_stdout_has("Boot parameter data: e004")
        .assert_stdout_has("- Boot Flag Valid")
        .assert_stdout_has("- Options apply to all future boots")
        .assert_stdout_has("- BIOS EFI boot")
        .assert_stdout_has("Boot Device Selector : Force PXE");
}

/// The System GUID that `mc guid` prints.
#[track_caller]
pub fn mc_guid(bmc: &Bmc, iface: Iface, port: u16) -> String {
    let out = bmc.admin(iface, port, &["mc", "guid"]);
    out.assert_ok();
    let guid = field(&out, "System GUID").unwrap_or_default();
    assert!(is_guid(&guid), "no System GUID in:\n{out}");
    guid
}

/// `mc info` says IPMI 2.0; `mc guid` prints one GUID per VM, stable across calls.
pub fn mc_sequence(iface: Iface) {
    let bmc = Bmc::builder().vm("vm-0=6230").vm("vm-1=6231").start();
    let out = bmc.admin(iface, PORT, &["mc", "info"]);
    out.assert_ok();
    assert_eq!(field(&out, "IPMI Version").as_deref(), Some("2.0"), "{out}");
    assert!(field(&out, "Manufacturer ID").is_some(), "{out}");

    let g0 = mc_guid(&bmc, iface, 6230);
    let g1 = mc_guid(&bmc, iface, 6231);
    assert_ne!(g0, g1, "each VM's BMC has its own GUID");
    assert_eq!(g0, mc_guid(&bmc, iface, 6230), "the GUID is stable");
}
