//! `cargo xtask demo`: the agent with three VMs in namespace `virtbmc-demo`, its XDP fast path
//! attached to the namespace's veth, real ipmitool commands from namespace
//! `virtbmc-demo-client`, everything printed, then the fast path's counters and `bpftool`'s
//! view of its maps; the namespaces are deleted at the end, on failure and on Ctrl-C.

use std::time::{Duration, Instant};

use virtbmc_e2e::{Bmc, Iface, NetnsPair, Out};

use crate::{interrupt, tools};

const BMC_NS: &str = "virtbmc-demo";
const CLIENT_NS: &str = "virtbmc-demo-client";
/// 10.254.23.0/24, only inside the two demo namespaces.
const NET: [u8; 3] = [10, 254, 23];
/// The demo's own pin folder, so that it never disturbs an agent running on this machine.
const PIN_DIR: &str = "/sys/fs/bpf/virtbmc-demo";

pub fn run() -> Result<(), String> {
    interrupt::install();
    if !virtbmc_e2e::is_root() {
        return Err("the demo creates network namespaces: run it as root".into());
    }
    tools::ensure_installed()?;
    let agent = tools::build_agent()?;
    interrupt::check()?;
    let object = crate::ebpf::build_ebpf()?;
    interrupt::check()?;

    // A demo killed with SIGKILL cannot clean up; its namespaces go now.
    for ns in [BMC_NS, CLIENT_NS] {
        if NetnsPair::exists(ns) {
            println!("==> deleting namespace {ns} left by an earlier demo");
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }

    let bmc = Bmc::builder()
        .binary(&agent)
        .netns(BMC_NS, CLIENT_NS, NET)
        .vm("vm-0=6230")
        .vm("vm-1=6231,on")
        .vm("vm-2=6232")
        .user("admin:password:admin")
        .user("viewer:viewer:user")
        .arg("--xdp-iface")
        .arg("vbmc0")
        .arg("--ebpf-object")
        .arg(object.to_str().ok_or("object path is not UTF-8")?)
        .arg("--bpf-pin-dir")
        .arg(PIN_DIR)
        .log_level("info")
        .quiet()
        .start();
    // From here on, `bmc`'s Drop kills the agent and deletes both namespaces, whatever
    // happens (an error returned, a panic, or Ctrl-C turned into an error by `interrupt`).
    let result = script(&bmc);
    println!("\n==> tearing down: agent stopped, namespaces {BMC_NS} and {CLIENT_NS} deleted");
    drop(bmc);
    result
}

struct Demo<'a> {
    bmc: &'a Bmc,
    surprises: Vec<String>,
}

impl Demo<'_> {
    fn say(&self, text: &str) {
        println!("\n# {text}");
    }

    /// Runs and prints one ipmitool command; `expect_ok` records a surprise when it differs.
    fn ipmitool(
        &mut self,
        iface: Iface,
        user: &str,
        port: u16,
        args: &[&str],
        expect_ok: bool,
    ) -> Result<Out, String> {
        interrupt::check()?;
        let pass = if user == "admin" { "password" } else { user };
        let out = self.bmc.ipmitool(iface, user, pass, port, args);
        println!("{out}");
        if out.ok() != expect_ok {
            self.surprises.push(format!(
                "`{}` {}",
                out.cmdline,
                if expect_ok { "failed" } else { "succeeded" }
            ));
        }
        interrupt::check()?;
        Ok(out)
    }

    fn show_vms(&self) {
        match self.bmc.http_get("/vms") {
            Ok(body) => {
                println!("$ curl -s http://127.0.0.1:9623/vms   (in namespace {BMC_NS})");
                print!("{body}");
            }
            Err(e) => println!("/vms: {e}"),
        }
    }

    fn show_fast_path(&self) {
        match self.bmc.http_get("/metrics") {
            Ok(body) => {
                println!(
                    "$ curl -s http://127.0.0.1:9623/metrics | grep fastpath   (in namespace {BMC_NS})"
                );
                for l in body.lines().filter(|l| l.starts_with("virtbmc_fastpath")) {
                    println!("{l}");
                }
            }
            Err(e) => println!("/metrics: {e}"),
        }
        // The agent runs under `ip netns exec`, whose private /sys has its own bpffs: look
        // at the pins through the agent's mount namespace.
        let pid = self.bmc.pid().to_string();
        let dump = std::process::Command::new("nsenter")
            .args([
                "--mount", "--target", &pid, "bpftool", "map", "dump", "pinned",
            ])
            .arg(format!("{PIN_DIR}/bmcs"))
            .output();
        println!("$ bpftool map dump pinned {PIN_DIR}/bmcs   (port -> what XDP answers from)");
        match dump {
            Ok(o) => print!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => println!("bpftool: {e}"),
        }
    }

    fn wait_power(&mut self, vm: &str, want: &str) -> Result<(), String> {
        let start = Instant::now();
        loop {
            interrupt::check()?;
            let now = self.bmc.vm(vm);
            if now.power == want {
                println!(
                    "{vm} is {want} after {:.1}s (per /vms)",
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                self.surprises
                    .push(format!("{vm} not {want} after 10 s: {now:?}"));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn script(bmc: &Bmc) -> Result<(), String> {
    let mut d = Demo {
        bmc,
        surprises: Vec::new(),
    };
    println!("\n==> virtbmc demo: one agent serves a BMC per VM");
    println!("agent (namespace {BMC_NS}): {}", bmc.cmdline());
    println!("agent log: {}", bmc.log_path().display());
    println!(
        "clients run in namespace {CLIENT_NS}; the BMC address is {}",
        bmc.ip()
    );
    d.show_vms();

    d.say("IPMI 1.5 (ipmitool -I lan): vm-0 on port 6230 starts off");
    d.ipmitool(Iface::Lan, "admin", 6230, &["power", "status"], true)?;
    d.ipmitool(Iface::Lan, "admin", 6230, &["power", "on"], true)?;
    d.say("the embedded backend takes --transition-ms (300 ms) to power on; waiting for /vms");
    d.wait_power("vm-0", "on")?;
    d.ipmitool(Iface::Lan, "admin", 6230, &["power", "status"], true)?;

    d.say("IPMI 2.0 / RMCP+ (ipmitool -I lanplus, cipher suite 17 chosen by ipmitool): vm-1 was started on");
    d.ipmitool(Iface::Lanplus, "admin", 6231, &["power", "status"], true)?;

    d.say("boot device: PXE for the next boot of vm-0, read back from the BMC");
    d.ipmitool(
        Iface::Lanplus,
        "admin",
        6230,
        &["chassis", "bootdev", "pxe"],
        true,
    )?;
    d.ipmitool(
        Iface::Lanplus,
        "admin",
        6230,
        &["chassis", "bootparam", "get", "5"],
        true,
    )?;

    d.say("the BMC itself");
    d.ipmitool(Iface::Lan, "admin", 6230, &["mc", "info"], true)?;

    d.say("viewer has USER privilege: it may read power status but not power vm-1 off");
    d.ipmitool(
        Iface::Lanplus,
        "viewer",
        6231,
        &["-L", "USER", "power", "status"],
        true,
    )?;
    d.ipmitool(
        Iface::Lanplus,
        "viewer",
        6231,
        &["-L", "USER", "power", "off"],
        false,
    )?;
    d.ipmitool(Iface::Lan, "viewer", 6231, &["power", "off"], false)?;

    d.say("the agent's view after all that (vm-0 on with PXE next, vm-1 still on)");
    d.show_vms();

    d.say("what the XDP fast path answered itself: pings, auth capabilities, cipher suites and the IPMI 1.5 in-session power status; the rest was passed to the agent");
    d.show_fast_path();

    if d.surprises.is_empty() {
        println!("\n==> demo finished: every step behaved as expected");
        Ok(())
    } else {
        for s in &d.surprises {
            println!("unexpected: {s}");
        }
        let log = bmc.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        println!("\n==> last lines of the agent log:");
        for l in tail.iter().rev() {
            println!("{l}");
        }
        Err(format!(
            "{} step(s) did not behave as expected",
            d.surprises.len()
        ))
    }
}
