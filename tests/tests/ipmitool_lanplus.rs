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

/// Without `-C`, ipmitool must not wait for a cipher-suite answer (a BMC that
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

/// `--cipher-suites 3`: ipmitool without `-C` picks 3 from the list and works; `-C 17` is
/// refused at Open Session (the suite is not offered, so it must not be accepted either).
#[test]
fn lanplus_only_offered_cipher_suites() {
    ready_or_skip!("ipmitool");
    let bmc = virtbmc_e2e::Bmc::builder()
        .vm("vm-0=6230")
        .arg("--cipher-suites")
        .arg("3")
        .start();
    common::power_status_is(&bmc, Iface::Lanplus, common::PORT, "off");
    common::power_status_is(&bmc, Iface::LanplusC(3), common::PORT, "off");
    let out = bmc.admin(Iface::LanplusC(17), common::PORT, &["power", "on"]);
    assert!(!out.ok(), "suite 17 accepted although not offered:\n{out}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(bmc.vm(common::VM).starts, 0);
}

/// Eight clients at once against one BMC (four lanplus, four lan): all succeed.
#[test]
fn concurrent_clients_all_succeed() {
    ready_or_skip!("ipmitool");
    let bmc = virtbmc_e2e::Bmc::builder().vm("vm-0=6230,on").start();
    let outs: Vec<virtbmc_e2e::Out> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let iface = if i % 2 == 0 {
                    Iface::Lanplus
                } else {
                    Iface::Lan
                };
                let bmc = &bmc;
                s.spawn(move || bmc.admin(iface, common::PORT, &["power", "status"]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &outs {
        out.assert_ok().assert_stdout_has("Chassis Power is on");
    }
}

/// IPMI 2.0 §28.12: one-shot boot flags that no restart follows are cleared after 60 s, unless
/// boot parameter 3 bit 3 keeps them (what Ironic and pyghmi send first); persistent flags are
/// the machine's boot order and stay.
#[test]
fn lanplus_one_shot_bootdev_expires_without_a_restart() {
    ready_or_skip!("ipmitool");
    let bmc = virtbmc_e2e::Bmc::builder()
        .vm("vm-0=6230")
        .vm("vm-1=6231")
        .vm("vm-2=6232")
        .start();
    let set = std::time::Instant::now();
    let admin =
        |port: u16, args: &[&str]| bmc.admin(Iface::Lanplus, port, args).assert_ok().clone();
    admin(6230, &["chassis", "bootdev", "pxe"]);
    admin(6231, &["raw", "0x00", "0x08", "0x03", "0x08"]);
    admin(6231, &["chassis", "bootdev", "pxe"]);
    admin(6232, &["chassis", "bootdev", "pxe", "options=persistent"]);
    for vm in ["vm-0", "vm-1", "vm-2"] {
        assert_eq!(bmc.vm(vm).boot, "pxe", "{vm} right after bootdev");
    }
    bmc.wait_vm(
        "vm-0",
        "the one-shot override to expire",
        std::time::Duration::from_secs(75),
        |v| v.boot == "none",
    );
    let after = set.elapsed();
    assert!(after.as_secs() >= 59, "expired after only {after:?}");
    admin(6230, &["chassis", "bootparam", "get", "5"]).assert_stdout_has("- Boot Flag Invalid");
    let kept = bmc.vm("vm-1");
    assert_eq!(
        (kept.boot.as_str(), kept.persistent),
        ("pxe", false),
        "{kept:?}"
    );
    admin(6231, &["chassis", "bootparam", "get", "5"]).assert_stdout_has("- Boot Flag Valid");
    let persistent = bmc.vm("vm-2");
    assert_eq!(
        (persistent.boot.as_str(), persistent.persistent),
        ("pxe", true),
        "{persistent:?}"
    );
}
