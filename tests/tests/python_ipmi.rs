//! python-ipmi (PyPI `python-ipmi`, 0.6.1), a pure-Python IPMI library, over RMCP+ with
//! cipher suite 17. For the HMAC-SHA256 suites it derives K1 and K2 from 32-byte constants
//! where the spec and ipmitool use 20-byte ones; the agent recognises that per session and
//! counts it in `virtbmc_sessions_32byte_kdf_total`.

mod common;

use virtbmc_e2e::{Bmc, Out};

/// Installed for the system interpreter with pip (cargo xtask test does it).
const PYTHON: &str = "/usr/bin/python3";
const VERSION: &str = "0.6.1";

const SCRIPT: &str = r#"
import sys
import pyipmi
import pyipmi.interfaces
ip, port, suite = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
interface = pyipmi.interfaces.create_interface('rmcpplus', cipher_suite=suite,
                                               keep_alive_interval=0)
ipmi = pyipmi.create_connection(interface)
ipmi.session.set_session_type_rmcp(ip, port=port)
ipmi.session.set_auth_type_user(sys.argv[4], sys.argv[5])
ipmi.target = pyipmi.Target(ipmb_address=0x20)
ipmi.open()
for a in sys.argv[6:]:
    if a == 'power':
        print('power', 'on' if ipmi.get_chassis_status().power_on else 'off')
    elif a == 'status':
        st = ipmi.get_chassis_status()
        print('status power_on=%d overload=%d interlock=%d fault=%d control_fault=%d'
              % (st.power_on, st.overload, st.interlock, st.fault, st.control_fault))
    elif a == 'on':
        ipmi.chassis_control_power_up()
        print('on sent')
    sys.stdout.flush()
ipmi.close()
"#;

fn python_ipmi(bmc: &Bmc, suite: u8, user: &str, password: &str, actions: &[&str]) -> Out {
    let ip = bmc.ip();
    let port = common::PORT.to_string();
    let suite = suite.to_string();
    let mut argv = vec![PYTHON, "-c", SCRIPT, &ip, &port, &suite, user, password];
    argv.extend_from_slice(actions);
    bmc.client(&argv)
}

fn ready() -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("python_ipmi")
        .to_string();
    if virtbmc_e2e::skip_unless_ready(&test, &[]) {
        return false;
    }
    let probe = format!(
        "import importlib.metadata as m, pyipmi.interfaces.rmcpplus as r; \
         assert m.version('python-ipmi') == '{VERSION}' and r.aes_available()"
    );
    let ok = std::process::Command::new(PYTHON)
        .args(["-c", &probe])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("VIRTBMC_E2E_REQUIRED").is_ok_and(|v| v == "1") {
            panic!(
                "{test}: VIRTBMC_E2E_REQUIRED=1 but {PYTHON} lacks python-ipmi {VERSION} with AES \
                 (pip install --break-system-packages python-ipmi=={VERSION}, apt-get install python3-cryptography)"
            );
        }
        eprintln!("SKIP {test}: needs python-ipmi {VERSION} for {PYTHON}");
    }
    ok
}

#[track_caller]
fn kdf32_sessions(bmc: &Bmc) -> u64 {
    let body = bmc.http_get("/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("virtbmc_sessions_32byte_kdf_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no virtbmc_sessions_32byte_kdf_total in /metrics:\n{body}"))
}

/// Power and chassis status over suite 17, read back against `/vms`, then a power-on that
/// the backend counts; each python-ipmi session shows up as a 32-byte K1/K2 session.
#[test]
fn python_ipmi_suite_17_reads_power_and_chassis_status() {
    if !ready() {
        return;
    }
    let bmc = Bmc::builder().vm("vm-0=6230").start();
    assert_eq!(kdf32_sessions(&bmc), 0);

    let out = python_ipmi(&bmc, 17, "admin", "password", &["power", "status"]);
    out.assert_ok()
        .assert_stdout_has("power off")
        .assert_stdout_has("status power_on=0 overload=0 interlock=0 fault=0 control_fault=0");
    assert_eq!(kdf32_sessions(&bmc), 1, "{}", bmc.log());

    python_ipmi(&bmc, 17, "admin", "password", &["on"])
        .assert_ok()
        .assert_stdout_has("on sent");
    let v = bmc.wait_power(common::VM, "on");
    assert_eq!(v.starts, 1, "{v:?}");
    python_ipmi(&bmc, 17, "admin", "password", &["power", "status"])
        .assert_ok()
        .assert_stdout_has("power on")
        .assert_stdout_has("status power_on=1 overload=0");
    assert_eq!(kdf32_sessions(&bmc), 3);

    // ipmitool derives the spec's 20-byte keys: not counted.
    common::power_status_is(&bmc, virtbmc_e2e::Iface::LanplusC(17), common::PORT, "on");
    assert_eq!(kdf32_sessions(&bmc), 3);

    // A wrong password fails in the handshake and changes nothing.
    let out = python_ipmi(&bmc, 17, "admin", "wrong", &["on"]);
    assert!(!out.ok(), "{out}");
    assert!(out.text().contains("RAKP message 2"), "{out}");
    assert_eq!(bmc.vm(common::VM).starts, 1);
}
