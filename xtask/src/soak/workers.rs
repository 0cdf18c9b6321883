//! The soak's concurrent clients, one thread each, and what they share: a stop flag, the
//! count of each client kind run and failed, and the failures themselves. Each VM has one
//! role, so that every answer has one right value:
//!
//! - `vm-ro` is on and nobody changes it: readers query it and must see it on;
//! - `vm-rw` is changed by one thread only, which waits for each new state in `/vms` before
//!   reading it back through another client;
//! - `vm-kill` gets the clients killed mid-session, whose sessions the agent must reclaim or
//!   expire.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use virtbmc_e2e::{Iface, NetnsPair, Shell, Vm};

use super::clients::{Checked, Clients};
use super::rng::Rng;
use crate::interrupt;

/// A VM of the soak and its BMC port.
pub struct Role {
    pub name: &'static str,
    pub port: u16,
}

pub const READ_ONLY: Role = Role {
    name: "vm-ro",
    port: 6240,
};
pub const READ_WRITE: Role = Role {
    name: "vm-rw",
    port: 6241,
};
pub const KILLED: Role = Role {
    name: "vm-kill",
    port: 6242,
};

/// How long a power change may take to show in `/vms` (the embedded backend's transition is
/// 300 ms; a cycle is two).
const SETTLE: Duration = Duration::from_secs(10);

/// Why a worker's sequence ended early.
enum Halt {
    /// The run stopped (its end, another failure, Ctrl-C): nothing more is started.
    Stopped,
    Wrong(String),
}

impl From<String> for Halt {
    fn from(e: String) -> Halt {
        Halt::Wrong(e)
    }
}

impl Halt {
    /// Records a wrong answer as the soak's failure.
    fn report(self, soak: &Soak) {
        if let Halt::Wrong(e) = self {
            soak.fail(e);
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Count {
    pub run: u64,
    pub failed: u64,
}

pub struct Soak<'a> {
    pub clients: Clients<'a>,
    stop: AtomicBool,
    counts: Mutex<BTreeMap<&'static str, Count>>,
    failures: Mutex<Vec<String>>,
}

impl<'a> Soak<'a> {
    pub fn new(clients: Clients<'a>) -> Self {
        Soak {
            clients,
            stop: AtomicBool::new(false),
            counts: Mutex::new(BTreeMap::new()),
            failures: Mutex::new(Vec::new()),
        }
    }

    /// False once the run stops, or as soon as a Ctrl-C arrives: a client started after the
    /// signal would not get it, and would wait for an agent that has gone.
    pub fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst) && interrupt::check().is_ok()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Records a failure and stops the run: one wrong answer fails the soak. What fails
    /// after a Ctrl-C (the agent stops on it too) is not the agent's fault.
    pub fn fail(&self, what: String) {
        self.stop();
        if interrupt::check().is_err() {
            return;
        }
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(what);
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn counts(&self) -> BTreeMap<&'static str, Count> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs one client unless the run has stopped, and counts it; a wrong answer becomes
    /// `Halt::Wrong` naming the client and the step. A client that a Ctrl-C stopped is not
    /// counted as wrong.
    fn run(&self, step: &str, client: impl FnOnce() -> Checked) -> Result<(), Halt> {
        if !self.running() {
            return Err(Halt::Stopped);
        }
        let (kind, result) = client();
        let interrupted = interrupt::check().is_err();
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let c = counts.entry(kind).or_default();
        c.run += 1;
        match result {
            Err(e) if !interrupted => {
                c.failed += 1;
                Err(Halt::Wrong(format!("{step}: {kind}: {e}")))
            }
            _ => Ok(()),
        }
    }

    /// Sleeps up to `ms`, waking early when the run stops.
    fn pause(&self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while self.running() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
    }

    fn vm(&self, name: &str) -> Result<Vm, String> {
        let body = self.clients.bmc.http_get("/vms")?;
        Vm::parse_all(&body)?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| format!("no {name} in /vms:\n{body}"))
    }

    /// Polls `/vms` until `good` holds for the VM.
    fn wait_vm(&self, name: &str, what: &str, good: impl Fn(&Vm) -> bool) -> Result<Vm, String> {
        let start = Instant::now();
        loop {
            let vm = self.vm(name)?;
            if good(&vm) {
                return Ok(vm);
            }
            if start.elapsed() > SETTLE {
                return Err(format!("{name} not {what} after {SETTLE:?}: {vm:?}"));
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

/// Until the run stops: a read-only query of `vm-ro`, checked against its steady state.
pub fn reader(soak: &Soak, seed: u64) {
    let mut rng = Rng::new(seed);
    loop {
        let query = || soak.clients.read_any(&mut rng, READ_ONLY.port, "on");
        if let Err(halt) = soak.run("read-only vm-ro", query) {
            return halt.report(soak);
        }
        soak.pause(rng.range(100, 400));
    }
}

/// Until the run stops: on, PXE, cycle, off on `vm-rw`, each with a client picked at random,
/// each new state waited for in `/vms` and read back through a client.
pub fn power(soak: &Soak, seed: u64) {
    let mut rng = Rng::new(seed);
    loop {
        if let Err(halt) = power_round(soak, &mut rng) {
            return halt.report(soak);
        }
    }
}

fn power_round(soak: &Soak, rng: &mut Rng) -> Result<(), Halt> {
    let (c, name, port) = (&soak.clients, READ_WRITE.name, READ_WRITE.port);

    let before = soak.vm(name)?;
    soak.run("power on vm-rw", || c.set_power(rng, port, true))?;
    soak.wait_vm(name, "on, one start more", |v| {
        v.power == "on" && v.starts == before.starts + 1
    })?;
    soak.run("vm-rw on", || c.read_power(rng, port, "on"))?;
    soak.pause(200);

    soak.run("PXE next boot of vm-rw", || c.bootdev_pxe(rng, port))?;
    let vm = soak.vm(name)?;
    if vm.boot != "pxe" {
        return Err(format!("after a PXE boot override /vms says {vm:?}").into());
    }
    soak.run("vm-rw boots from PXE", || c.bootdev_is_pxe(rng, port))?;
    soak.pause(200);

    let before = soak.vm(name)?;
    soak.run("power cycle vm-rw", || c.cycle(rng, port))?;
    soak.wait_vm(name, "on again after a cycle", |v| {
        v.power == "on" && v.starts > before.starts
    })?;
    soak.run("vm-rw on after a cycle", || c.read_power(rng, port, "on"))?;
    soak.pause(200);

    let before = soak.vm(name)?;
    soak.run("power off vm-rw", || c.set_power(rng, port, false))?;
    soak.wait_vm(name, "off, one stop more", |v| {
        v.power == "off" && v.stops == before.stops + 1
    })?;
    soak.run("vm-rw off", || c.read_power(rng, port, "off"))?;
    soak.pause(200);
    Ok(())
}

/// Until the run stops: clients killed with SIGKILL on `vm-kill`, either an `ipmitool shell`
/// that answered one command (its session open), or an ipmitool run 20 to 200 ms after it
/// started, wherever it was in its handshake.
pub fn killer(soak: &Soak, seed: u64) {
    let mut rng = Rng::new(seed);
    loop {
        let iface = *rng.pick(&[Iface::Lan, Iface::Lanplus]);
        let killed = if rng.chance(50) {
            soak.run("killed client on vm-kill", || killed_shell(soak, iface))
        } else {
            let delay = Duration::from_millis(rng.range(20, 200));
            soak.run("killed client on vm-kill", || {
                killed_run(soak, iface, delay)
            })
        };
        if let Err(halt) = killed {
            return halt.report(soak);
        }
        soak.pause(rng.range(200, 500));
    }
}

/// An `ipmitool shell` that answers one command, then SIGKILL: its session stays open.
fn killed_shell(soak: &Soak, iface: Iface) -> Checked {
    let mut shell = Shell::open(soak.clients.bmc, iface, KILLED.port);
    let answered = shell.run("power status", "Chassis Power is on");
    // Shell's Drop kills the process (SIGKILL): no Close Session is sent.
    drop(shell);
    ("killed shell", answered)
}

/// An ipmitool run killed with SIGKILL `after` it started, wherever it was.
fn killed_run(soak: &Soak, iface: Iface, after: Duration) -> Checked {
    let bmc = soak.clients.bmc;
    let (ip, port) = (bmc.ip(), KILLED.port.to_string());
    let iface = if iface == Iface::Lan {
        "lan"
    } else {
        "lanplus"
    };
    let argv = [
        "ipmitool", "-I", iface, "-U", "admin", "-P", "password", "-H", &ip, "-p", &port, "power",
        "status",
    ];
    let child = NetnsPair::exec(&bmc.net.client, &argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let result = child
        .map(|mut child| {
            std::thread::sleep(after);
            let _ = child.kill();
            let _ = child.wait();
        })
        .map_err(|e| format!("spawning ipmitool: {e}"));
    ("killed ipmitool", result)
}
