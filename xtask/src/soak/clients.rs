//! The real clients the soak runs, each with the check of its answer: exit code and what it
//! printed (the power state, the IPMI version, the control it confirms). Every function
//! returns the client kind (for the counts) and `Err` with the whole output when the answer
//! is wrong.

use virtbmc_e2e::{Bmc, Iface, Out};

use super::rng::Rng;

/// python-ipmi (PyPI `python-ipmi`): its native `rmcp` (IPMI 1.5) or `rmcpplus` interface,
/// no keep-alive thread, the session closed at the end. RMCP+ with its own choice, suite 17:
/// 0.6.1 derives K1 and K2 from constants as long as the digest (32 bytes for SHA-256) where
/// IPMI 2.0 §13.32 has 20 bytes, and the agent recognises that per session.
const PYTHON_IPMI: &str = r#"
import sys
import pyipmi, pyipmi.interfaces
ip, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
options = {'cipher_suite': 17} if kind == 'rmcpplus' else {}
interface = pyipmi.interfaces.create_interface(kind, keep_alive_interval=0, **options)
ipmi = pyipmi.create_connection(interface)
ipmi.session.set_session_type_rmcp(ip, port=port)
ipmi.session.set_auth_type_user('admin', 'password')
ipmi.target = pyipmi.Target(ipmb_address=0x20)
ipmi.open()
try:
    for a in sys.argv[4:]:
        if a == 'get_power':
            print('power', 'on' if ipmi.get_chassis_status().power_on else 'off')
        elif a == 'device_id':
            print('ipmi_version', ipmi.get_device_id().ipmi_version)
        else:
            getattr(ipmi, 'chassis_control_' + a)()
            print(a, 'ok')
        sys.stdout.flush()
finally:
    ipmi.close()
"#;

/// Where python-ipmi can be imported, and which of its LAN interfaces work there.
#[derive(Debug, Clone)]
pub struct PythonIpmi {
    pub python: String,
    /// `rmcp`, and `rmcpplus` when `cryptography` (AES-CBC-128) is importable too.
    pub ifaces: Vec<&'static str>,
}

/// Set to an interpreter to use another python-ipmi than the system one (a venv).
pub const PYTHON_IPMI_ENV: &str = "VIRTBMC_PYIPMI_PYTHON";

impl PythonIpmi {
    /// The first of `$VIRTBMC_PYIPMI_PYTHON` and the system interpreter that imports it.
    pub fn find() -> Option<PythonIpmi> {
        let probe = "import pyipmi.interfaces.rmcp\ntry:\n    import pyipmi.interfaces.rmcpplus, cryptography\n    print('rmcp rmcpplus')\nexcept ImportError:\n    print('rmcp')";
        let candidates = std::env::var(PYTHON_IPMI_ENV)
            .ok()
            .into_iter()
            .chain([crate::tools::PYGHMI_PYTHON.to_string()]);
        candidates.into_iter().find_map(|python| {
            let out = std::process::Command::new(&python)
                .args(["-c", probe])
                .output()
                .ok()
                .filter(|o| o.status.success())?;
            let text = String::from_utf8_lossy(&out.stdout);
            let ifaces = ["rmcp", "rmcpplus"]
                .into_iter()
                .filter(|i| text.split_whitespace().any(|w| w == *i))
                .collect();
            Some(PythonIpmi { python, ifaces })
        })
    }
}

pub type Checked = (&'static str, Result<(), String>);

pub struct Clients<'a> {
    pub bmc: &'a Bmc,
    pub python_ipmi: Option<PythonIpmi>,
}

/// freeipmi's two drivers: IPMI 1.5 by default, RMCP+ with `-D LAN_2_0`.
const FREEIPMI: [(&str, &[&str]); 2] = [
    ("freeipmi LAN", &[]),
    ("freeipmi LAN_2_0", &["-D", "LAN_2_0"]),
];

fn ipmitool_kind(iface: Iface) -> &'static str {
    if iface == Iface::Lan {
        "ipmitool -I lan"
    } else {
        "ipmitool -I lanplus"
    }
}

/// Ok when the client exited 0 and `good` holds for what it printed.
fn expect(out: Out, what: &str, good: impl FnOnce(&Out) -> bool) -> Result<(), String> {
    if out.ok() && good(&out) {
        Ok(())
    } else {
        Err(format!("expected {what}:\n{out}"))
    }
}

/// The value after `label ... :` on the first line that starts with `label`.
fn field(out: &Out, label: &str) -> Option<String> {
    out.stdout
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

impl Clients<'_> {
    fn ipmitool(&self, iface: Iface, port: u16, args: &[&str]) -> Out {
        self.bmc.admin(iface, port, args)
    }

    fn pyghmi(&self, port: u16, actions: &[&str]) -> Out {
        let (ip, port) = (self.bmc.ip(), port.to_string());
        let mut argv = vec![
            crate::tools::PYGHMI_PYTHON,
            "-c",
            virtbmc_e2e::PYGHMI_SCRIPT,
            &ip,
            &port,
        ];
        argv.extend_from_slice(actions);
        self.bmc.client(&argv)
    }

    /// python-ipmi over one of its interfaces, when it is there.
    fn python_ipmi(&self, rng: &mut Rng, port: u16, actions: &[&str]) -> Option<Out> {
        let p = self.python_ipmi.as_ref()?;
        let (ip, port) = (self.bmc.ip(), port.to_string());
        let mut argv = vec![
            p.python.as_str(),
            "-c",
            PYTHON_IPMI,
            &ip,
            &port,
            *rng.pick(&p.ifaces),
        ];
        argv.extend_from_slice(actions);
        Some(self.bmc.client(&argv))
    }

    /// `<ip>: <want>`, the line ipmipower prints per host.
    fn ipmipower_line(&self, want: &str) -> String {
        format!("{}: {want}", self.bmc.ip())
    }

    /// Reads the power state of the VM on `port` with one client picked at random and checks
    /// that it says `want` (`on` or `off`).
    pub fn read_power(&self, rng: &mut Rng, port: u16, want: &str) -> Checked {
        let iface = *rng.pick(&[Iface::Lan, Iface::Lanplus]);
        let (driver_kind, driver) = *rng.pick(&FREEIPMI);
        match rng.range(0, 6) {
            0 => (
                ipmitool_kind(iface),
                expect(
                    self.ipmitool(iface, port, &["power", "status"]),
                    &format!("power {want}"),
                    |o| o.stdout.contains(&format!("Chassis Power is {want}")),
                ),
            ),
            1 => (
                ipmitool_kind(iface),
                expect(
                    self.ipmitool(iface, port, &["chassis", "status"]),
                    &format!("System Power {want}"),
                    |o| field(o, "System Power").as_deref() == Some(want),
                ),
            ),
            2 => {
                let line = self.ipmipower_line(want);
                let out = self
                    .bmc
                    .freeipmi("ipmipower", port, &[driver, &["--stat"]].concat());
                (
                    driver_kind,
                    expect(out, &line, |o| o.stdout.lines().any(|l| l.trim() == line)),
                )
            }
            3 => {
                let out = self.bmc.freeipmi(
                    "ipmi-chassis",
                    port,
                    &[driver, &["--get-chassis-status"]].concat(),
                );
                (
                    driver_kind,
                    expect(out, &format!("System Power {want}"), |o| {
                        field(o, "System Power").as_deref() == Some(want)
                    }),
                )
            }
            4 => (
                "pyghmi",
                expect(
                    self.pyghmi(port, &["get_power"]),
                    &format!("power {want}"),
                    |o| {
                        o.stdout
                            .lines()
                            .any(|l| l.trim() == format!("power {want}"))
                    },
                ),
            ),
            _ => match self.python_ipmi(rng, port, &["get_power"]) {
                Some(out) => (
                    "python-ipmi",
                    expect(out, &format!("power {want}"), |o| {
                        o.stdout
                            .lines()
                            .any(|l| l.trim() == format!("power {want}"))
                    }),
                ),
                None => self.read_power(rng, port, want),
            },
        }
    }

    /// A read-only query of the VM on `port` (whose power is `power`): its power state, or
    /// the BMC's own identity.
    pub fn read_any(&self, rng: &mut Rng, port: u16, power: &str) -> Checked {
        let iface = *rng.pick(&[Iface::Lan, Iface::Lanplus]);
        let (driver_kind, driver) = *rng.pick(&FREEIPMI);
        match rng.range(0, 8) {
            0 => (
                ipmitool_kind(iface),
                expect(
                    self.ipmitool(iface, port, &["mc", "info"]),
                    "IPMI Version 2.0",
                    |o| field(o, "IPMI Version").as_deref() == Some("2.0"),
                ),
            ),
            1 => (
                driver_kind,
                expect(
                    self.bmc.freeipmi("bmc-info", port, driver),
                    "IPMI Version 2.0",
                    |o| field(o, "IPMI Version").as_deref() == Some("2.0"),
                ),
            ),
            2 => match self.python_ipmi(rng, port, &["device_id"]) {
                // python-ipmi prints the version as `2.0` (major.minor of the BCD byte).
                Some(out) => (
                    "python-ipmi",
                    expect(out, "ipmi_version 2.0", |o| {
                        o.stdout.lines().any(|l| l.trim() == "ipmi_version 2.0")
                    }),
                ),
                None => self.read_power(rng, port, power),
            },
            _ => self.read_power(rng, port, power),
        }
    }

    /// Powers the VM on `port` on or off with one client picked at random; checks the
    /// client's own confirmation (the state itself is the caller's to wait for).
    pub fn set_power(&self, rng: &mut Rng, port: u16, on: bool) -> Checked {
        let iface = *rng.pick(&[Iface::Lan, Iface::Lanplus]);
        let (driver_kind, driver) = *rng.pick(&FREEIPMI);
        let state = if on { "on" } else { "off" };
        match rng.range(0, 4) {
            0 => {
                let confirm = if on {
                    "Chassis Power Control: Up/On"
                } else {
                    "Chassis Power Control: Down/Off"
                };
                (
                    ipmitool_kind(iface),
                    expect(
                        self.ipmitool(iface, port, &["power", state]),
                        confirm,
                        |o| o.stdout.contains(confirm),
                    ),
                )
            }
            1 => {
                let line = self.ipmipower_line("ok");
                let flag = if on { "--on" } else { "--off" };
                let out = self
                    .bmc
                    .freeipmi("ipmipower", port, &[driver, &[flag]].concat());
                (
                    driver_kind,
                    expect(out, &line, |o| o.stdout.lines().any(|l| l.trim() == line)),
                )
            }
            2 => {
                let want = format!("set_power {state}");
                (
                    "pyghmi",
                    expect(
                        self.pyghmi(port, &[&format!("set_power={state}")]),
                        &want,
                        |o| o.stdout.lines().any(|l| l.trim() == want),
                    ),
                )
            }
            _ => {
                let action = if on { "power_up" } else { "power_down" };
                match self.python_ipmi(rng, port, &[action]) {
                    Some(out) => {
                        let want = format!("{action} ok");
                        (
                            "python-ipmi",
                            expect(out, &want, |o| o.stdout.lines().any(|l| l.trim() == want)),
                        )
                    }
                    None => self.set_power(rng, port, on),
                }
            }
        }
    }

    /// A power cycle of the VM on `port` (which is on).
    pub fn cycle(&self, rng: &mut Rng, port: u16) -> Checked {
        let iface = *rng.pick(&[Iface::Lan, Iface::Lanplus]);
        let (driver_kind, driver) = *rng.pick(&FREEIPMI);
        match rng.range(0, 3) {
            0 => {
                let confirm = "Chassis Power Control: Cycle";
                (
                    ipmitool_kind(iface),
                    expect(
                        self.ipmitool(iface, port, &["power", "cycle"]),
                        confirm,
                        |o| o.stdout.contains(confirm),
                    ),
                )
            }
            1 => {
                let line = self.ipmipower_line("ok");
                let out = self
                    .bmc
                    .freeipmi("ipmipower", port, &[driver, &["--cycle"]].concat());
                (
                    driver_kind,
                    expect(out, &line, |o| o.stdout.lines().any(|l| l.trim() == line)),
                )
            }
            _ => match self.python_ipmi(rng, port, &["power_cycle"]) {
                Some(out) => (
                    "python-ipmi",
                    expect(out, "power_cycle ok", |o| {
                        o.stdout.lines().any(|l| l.trim() == "power_cycle ok")
                    }),
                ),
                None => self.cycle(rng, port),
            },
        }
    }

    /// PXE for the next boot of the VM on `port`, with ipmitool or pyghmi.
    pub fn bootdev_pxe(&self, rng: &mut Rng, port: u16) -> Checked {
        let iface = *rng.pick(&[Iface::Lan, Iface::Lanplus]);
        if rng.chance(70) {
            let confirm = "Set Boot Device to pxe";
            (
                ipmitool_kind(iface),
                expect(
                    self.ipmitool(iface, port, &["chassis", "bootdev", "pxe"]),
                    confirm,
                    |o| o.stdout.contains(confirm),
                ),
            )
        } else {
            let want = "set_bootdev network";
            (
                "pyghmi",
                expect(self.pyghmi(port, &["set_bootdev=network,0,0"]), want, |o| {
                    o.stdout.lines().any(|l| l.trim() == want)
                }),
            )
        }
    }

    /// The boot device as ipmitool reads it back (boot parameter 5, IPMI 2.0 §28.13).
    pub fn bootdev_is_pxe(&self, rng: &mut Rng, port: u16) -> Checked {
        let iface = *rng.pick(&[Iface::Lan, Iface::Lanplus]);
        let want = "Boot Device Selector : Force PXE";
        (
            ipmitool_kind(iface),
            expect(
                self.ipmitool(iface, port, &["chassis", "bootparam", "get", "5"]),
                want,
                |o| o.stdout.contains(want),
            ),
        )
    }
}
