//! `ipmitool -I lan` (IPMI 1.5, MD5 per-message auth) with default options.

mod common;

use virtbmc_e2e::{Bmc, Iface};

#[test]
fn lan_power_sequence() {
    ready_or_skip!("ipmitool");
    common::power_sequence(Iface::Lan);
}

#[test]
fn lan_bootdev_and_bootparam() {
    ready_or_skip!("ipmitool");
    common::bootdev_sequence(Iface::Lan);
}

#[test]
fn lan_mc_info_and_guid() {
    ready_or_skip!("ipmitool");
    common::mc_sequence(Iface::Lan);
}

/// One agent serves every VM's BMC: an action on one port leaves the other VMs alone, and
/// the IPMI 1.5 and 2.0 paths agree on a VM's GUID.
#[test]
fn lan_ports_are_separate_bmcs() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder()
        .vm("vm-0=6230")
        .vm("vm-1=6231,on")
        .vm("vm-2=6232")
        .start();
    assert_eq!(bmc.vm("vm-1").power, "on", "`,on` starts the VM powered on");
    common::power_status_is(&bmc, Iface::Lan, 6231, "on");
    common::power_status_is(&bmc, Iface::Lan, 6230, "off");

    bmc.admin(Iface::Lan, 6232, &["power", "on"]).assert_ok();
    bmc.wait_power("vm-2", "on");
    bmc.admin(Iface::Lan, 6231, &["chassis", "bootdev", "disk"])
        .assert_ok();
    let vm0 = bmc.vm("vm-0");
    assert_eq!(
        (vm0.power.as_str(), vm0.boot.as_str(), vm0.starts),
        ("off", "none", 0),
        "{vm0:?}"
    );
    assert_eq!(bmc.vm("vm-1").boot, "disk");
    assert_eq!(bmc.vm("vm-2").boot, "none");

    assert_eq!(
        common::mc_guid(&bmc, Iface::Lan, 6231),
        common::mc_guid(&bmc, Iface::Lanplus, 6231)
    );
}

/// A second `power on` while the first is still in its transition, and a third once the VM
/// is on, start it only once (IPMI 2.0 §28.3: no effect when already on or coming up).
#[test]
fn repeated_power_on_starts_once() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder()
        .vm("vm-0=6230")
        .arg("--transition-ms")
        .arg("1000")
        .start();
    bmc.admin(Iface::Lan, 6230, &["power", "on"]).assert_ok();
    let again = bmc.admin(Iface::Lan, 6230, &["power", "on"]);
    let v = bmc.wait_power("vm-0", "on");
    assert_eq!(
        v.starts, 1,
        "second power on during the transition started it twice:\n{again}"
    );
    bmc.admin(Iface::Lan, 6230, &["power", "on"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let v = bmc.vm("vm-0");
    assert_eq!((v.power.as_str(), v.starts, v.stops), ("on", 1, 0), "{v:?}");
}

/// An OPERATOR user may control power (IPMI 2.0 §28.3) with ipmitool `-L OPERATOR` (lan and
/// lanplus) and with ipmipower, which asks for OPERATOR by default.
#[test]
fn operator_can_control_power() {
    ready_or_skip!("ipmitool", "ipmipower");
    let bmc = Bmc::builder()
        .vm("vm-0=6230")
        .user("op:op-pass:operator")
        .start();
    for iface in [Iface::Lan, Iface::Lanplus] {
        bmc.ipmitool(
            iface,
            "op",
            "op-pass",
            6230,
            &["-L", "OPERATOR", "power", "on"],
        )
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Up/On");
        bmc.wait_power("vm-0", "on");
        bmc.ipmitool(
            iface,
            "op",
            "op-pass",
            6230,
            &["-L", "OPERATOR", "power", "off"],
        )
        .assert_ok();
        bmc.wait_power("vm-0", "off");
    }
    let host = format!("{}:6230", bmc.ip());
    let out = bmc.client(&[
        "ipmipower",
        "-h",
        &host,
        "-u",
        "op",
        "-p",
        "op-pass",
        "--on",
    ]);
    assert!(out.stdout.contains(": ok"), "{out}");
    let v = bmc.wait_power("vm-0", "on");
    assert_eq!((v.starts, v.stops), (3, 2), "{v:?}");
}

/// `chassis bootdev none` removes the override set before (selector 0, "No override").
#[test]
fn lan_bootdev_none_clears_the_override() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    bmc.admin(Iface::Lan, 6230, &["chassis", "bootdev", "cdrom"])
        .assert_ok();
    assert_eq!(bmc.vm("vm-0").boot, "cdrom");
    bmc.admin(Iface::Lan, 6230, &["chassis", "bootdev", "none"])
        .assert_ok()
        .assert_stdout_has("Set Boot Device to none");
    assert_eq!(bmc.vm("vm-0").boot, "none");
    bmc.admin(Iface::Lan, 6230, &["chassis", "bootparam", "get", "5"])
        .assert_ok()
        .assert_stdout_has("Boot Device Selector : No override");
}
