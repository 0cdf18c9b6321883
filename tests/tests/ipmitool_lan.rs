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
/// is on, start it only once (IPMI 2.0 §28.3: 0xC0 while busy, no effect when already on).
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
