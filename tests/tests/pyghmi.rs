//! pyghmi, the IPMI client of OpenStack Ironic (Debian's python3-pyghmi): power, boot device
//! and read-back through its `Command` API, which asks for cipher suite 17, reads the boot
//! device as "default" when the valid bit is clear, and sends nothing from `set_power` when
//! the state already matches.

mod common;

use virtbmc_e2e::{Bmc, Out};

/// Debian's package installs for the system interpreter (not a pyenv or venv one).
const PYTHON: &str = "/usr/bin/python3";

fn pyghmi(bmc: &Bmc, actions: &[&str]) -> Out {
    let ip = bmc.ip();
    let port = common::PORT.to_string();
    let mut argv = vec![PYTHON, "-c", virtbmc_e2e::PYGHMI_SCRIPT, &ip, &port];
    argv.extend_from_slice(actions);
    let out = bmc.client(&argv);
    out.assert_ok();
    out
}

fn pyghmi_ready() -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("pyghmi")
        .to_string();
    if virtbmc_e2e::skip_unless_ready(&test, &[]) {
        return false;
    }
    let ok = std::process::Command::new(PYTHON)
        .args(["-c", "import pyghmi.ipmi.command"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("VIRTBMC_E2E_REQUIRED").is_ok_and(|v| v == "1") {
            panic!(
                "{test}: VIRTBMC_E2E_REQUIRED=1 but {PYTHON} cannot import pyghmi (apt-get install python3-pyghmi)"
            );
        }
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIP {test}: needs python3-pyghmi for {PYTHON}"
        );
    }
    ok
}

#[test]
fn pyghmi_power_and_bootdev() {
    if !pyghmi_ready() {
        return;
    }
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    pyghmi(&bmc, &["get_power", "get_bootdev"])
        .assert_stdout_has("power off")
        .assert_stdout_has("bootdev default ");

    pyghmi(&bmc, &["set_power=on", "get_power"]).assert_stdout_has("power on");
    let v = bmc.vm(common::VM);
    assert_eq!((v.power.as_str(), v.starts), ("on", 1), "{v:?}");
    // Already on: pyghmi sends nothing, and nothing changes.
    pyghmi(&bmc, &["set_power=on"]);
    assert_eq!(bmc.vm(common::VM).starts, 1);

    pyghmi(&bmc, &["set_bootdev=network,0,0", "get_bootdev"])
        .assert_stdout_has("bootdev network 0 0");
    let v = bmc.vm(common::VM);
    assert_eq!(
        (v.boot.as_str(), v.persistent, v.efi),
        ("pxe", false, false),
        "{v:?}"
    );

    pyghmi(&bmc, &["set_bootdev=hd,1,1", "get_bootdev"]).assert_stdout_has("bootdev hd 1 1");
    let v = bmc.vm(common::VM);
    assert_eq!(
        (v.boot.as_str(), v.persistent, v.efi),
        ("disk", true, true),
        "{v:?}"
    );

    pyghmi(&bmc, &["set_power=off", "get_power"]).assert_stdout_has("power off");
    let v = bmc.vm(common::VM);
    assert_eq!((v.power.as_str(), v.stops), ("off", 1), "{v:?}");
}
