//! `ipmitool -I lanplus` (IPMI 2.0 / RMCP+): without `-C` (ipmitool asks for the cipher
//! suites and picks 17), and with `-C 3` and `-C 17`.

mod common;

use virtbmc_e2e::Iface;

const ALL: [Iface; 3] = [Iface::Lanplus, Iface::LanplusC(3), Iface::LanplusC(17)];

#[test]
fn lanplus_power_sequence() {
    ready_or_skip!("ipmitool");
    common::power_sequence(Iface::Lanplus);
}

#[test]
fn lanplus_c3_power_sequence() {
    ready_or_skip!("ipmitool");
    common::power_sequence(Iface::LanplusC(3));
}

#[test]
fn lanplus_c17_power_sequence() {
    ready_or_skip!("ipmitool");
    common::power_sequence(Iface::LanplusC(17));
}

#[test]
fn lanplus_bootdev_and_bootparam() {
    ready_or_skip!("ipmitool");
    common::bootdev_sequence(Iface::Lanplus);
}

#[test]
fn lanplus_c3_bootdev_and_bootparam() {
    ready_or_skip!("ipmitool");
    common::bootdev_sequence(Iface::LanplusC(3));
}

#[test]
fn lanplus_c17_bootdev_and_bootparam() {
    ready_or_skip!("ipmitool");
    common::bootdev_sequence(Iface::LanplusC(17));
}

#[test]
fn lanplus_mc_info_and_guid() {
    ready_or_skip!("ipmitool");
    common::mc_sequence(Iface::Lanplus);
}

#[test]
fn lanplus_c3_and_c17_mc_info_and_guid() {
    ready_or_skip!("ipmitool");
    common::mc_sequence(Iface::LanplusC(3));
    common::mc_sequence(Iface::LanplusC(17));
}

/// Without `-C`, ipmitool must not wait for a cipher-suite answer (PROTOCOL.md: a BMC that
/// ignores the session-less RMCP+ Get Channel Cipher Suites costs every call 10 s).
#[test]
fn lanplus_without_c_is_fast() {
    ready_or_skip!("ipmitool");
    let bmc = virtbmc_e2e::Bmc::builder().vm("vm-0=6230").start();
    for iface in ALL {
        let out = bmc.admin(iface, common::PORT, &["power", "status"]);
        out.assert_ok().assert_stdout_has("Chassis Power is off");
        assert!(
            out.elapsed.as_secs_f64() < 3.0,
            "{iface} took {:?}:\n{out}",
            out.elapsed
        );
    }
}
