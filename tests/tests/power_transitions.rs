//! Power commands sent while the VM is in a power transition, with real ipmitool over
//! `-I lanplus` and `-I lan`. Power status reads the state the VM is leaving ("on" while it
//! stops, "off" while it starts) and a client acts on what it read: as on a physical BMC,
//! a command whose goal is underway succeeds at once, one that needs the transition to end
//! waits for it, and only a transition longer than `--action-timeout-ms` answers 0xC0
//! ("Node busy"). Every step is read back through `/vms`.

mod common;

use std::time::Duration;

use common::{PORT, VM};
use virtbmc_e2e::{Bmc, Iface, Vm};

/// Long enough for a few ipmitool runs and `/vms` reads to fit inside one transition.
const TRANSITION_MS: &str = "2000";

#[track_caller]
fn vm_now(bmc: &Bmc, power: &str) -> Vm {
    let v = bmc.vm(VM);
    assert_eq!(v.power, power, "{v:?}");
    v
}

/// `power on` then at once `power soft`; `power off` then `power off` and `power soft`;
/// `power off` then `power on`.
fn commands_wait_for_or_join_the_transition(iface: Iface) {
    let bmc = Bmc::builder()
        .vm("vm-0=6230")
        .arg("--transition-ms")
        .arg(TRANSITION_MS)
        .arg("--action-timeout-ms")
        .arg("5000")
        .start();

    // Soft off while starting: the client reads "off" but the VM is coming up; the shutdown
    // waits for the boot to finish, then runs.
    bmc.admin(iface, PORT, &["power", "on"])
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Up/On");
    vm_now(&bmc, "starting");
    bmc.admin(iface, PORT, &["power", "soft"])
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Soft");
    let v = bmc.vm(VM);
    assert!(
        v.starts == 1 && (v.power == "stopping" || v.power == "off"),
        "soft acted once the boot was over: {v:?}"
    );
    let v = bmc.wait_power(VM, "off");
    assert_eq!((v.starts, v.stops), (1, 1), "{v:?}");

    // Off and soft while stopping: already going off, answered at once (the VM is still
    // stopping when the client returns), and the VM stops once.
    bmc.admin(iface, PORT, &["power", "on"]).assert_ok();
    bmc.wait_power(VM, "on");
    bmc.admin(iface, PORT, &["power", "off"])
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Down/Off");
    vm_now(&bmc, "stopping");
    bmc.admin(iface, PORT, &["power", "off"])
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Down/Off");
    vm_now(&bmc, "stopping");
    bmc.admin(iface, PORT, &["power", "soft"])
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Soft");
    vm_now(&bmc, "stopping");
    let v = bmc.wait_power(VM, "off");
    assert_eq!((v.starts, v.stops), (2, 2), "one power-off: {v:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bmc.vm(VM), v, "nothing else happened");

    // On while stopping: the client reads "on"; the VM powers on once it is off.
    bmc.admin(iface, PORT, &["power", "on"]).assert_ok();
    bmc.wait_power(VM, "on");
    bmc.admin(iface, PORT, &["power", "off"]).assert_ok();
    vm_now(&bmc, "stopping");
    bmc.admin(iface, PORT, &["power", "on"])
        .assert_ok()
        .assert_stdout_has("Chassis Power Control: Up/On");
    let v = bmc.vm(VM);
    assert!(
        v.stops == 3 && (v.power == "starting" || v.power == "on"),
        "power on ran once the VM was off: {v:?}"
    );
    let v = bmc.wait_power(VM, "on");
    assert_eq!((v.starts, v.stops), (4, 3), "{v:?}");
}

#[test]
fn lanplus_power_commands_during_transitions() {
    ready_or_skip!("ipmitool");
    commands_wait_for_or_join_the_transition(Iface::Lanplus);
}

#[test]
fn lan_power_commands_during_transitions() {
    ready_or_skip!("ipmitool");
    commands_wait_for_or_join_the_transition(Iface::Lan);
}

/// A transition longer than the action deadline: `power soft` while starting answers 0xC0
/// after the deadline and does nothing; once the VM is on, the same command works.
#[test]
fn a_transition_longer_than_the_deadline_is_node_busy() {
    ready_or_skip!("ipmitool");
    let bmc = Bmc::builder()
        .vm("vm-0=6230")
        .arg("--transition-ms")
        .arg("3000")
        .arg("--action-timeout-ms")
        .arg("500")
        .start();
    for (i, iface) in [Iface::Lanplus, Iface::Lan].into_iter().enumerate() {
        let n = i as u64;
        bmc.admin(iface, PORT, &["power", "on"]).assert_ok();
        vm_now(&bmc, "starting");
        let out = bmc.admin(iface, PORT, &["power", "soft"]);
        assert!(!out.ok(), "soft during a long start must fail:\n{out}");
        assert!(
            out.text().contains("Node busy"),
            "ipmitool names completion code 0xC0:\n{out}"
        );
        assert!(
            out.elapsed >= Duration::from_millis(500),
            "the agent waits out the deadline before it answers busy:\n{out}"
        );
        let v = bmc.vm(VM);
        assert_eq!(
            (v.power.as_str(), v.stops),
            ("starting", n),
            "busy did nothing: {v:?}"
        );
        let v = bmc.wait_power(VM, "on");
        assert_eq!((v.starts, v.stops), (n + 1, n), "{v:?}");

        bmc.admin(iface, PORT, &["power", "soft"])
            .assert_ok()
            .assert_stdout_has("Chassis Power Control: Soft");
        let v = bmc.wait_power(VM, "off");
        assert_eq!((v.starts, v.stops), (n + 1, n + 1), "{v:?}");
    }
}
