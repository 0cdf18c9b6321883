//! `cargo xtask demo`: the agent with three VMs in namespace `virtbmc-demo`, its XDP fast path
//! attached to the namespace's veth, real ipmitool commands from namespace
//! `virtbmc-demo-client`, everything printed, then the fast path's counters and `bpftool`'s
//! view of its maps; the namespaces are deleted at the end, on failure and on Ctrl-C.
//!
//! Also what the cluster variant (`demo cluster`, demo_cluster.rs) shares with it: the
//! namespaces, the set-up, steps that print and record surprises, the fast path's view.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use virtbmc_e2e::{Bmc, Iface, NetnsPair, Out};

use crate::{interrupt, tools};

pub const BMC_NS: &str = "virtbmc-demo";
pub const CLIENT_NS: &str = "virtbmc-demo-client";
/// 10.254.23.0/24, only inside the two demo namespaces.
pub const NET: [u8; 3] = [10, 254, 23];
/// The BMC side of the veth (named by the e2e fixture's NetnsPair): XDP attaches there.
pub const BMC_IFACE: &str = "vbmc0";
/// The demo's own pin folder, so that it never disturbs an agent running on this machine.
pub const PIN_DIR: &str = "/sys/fs/bpf/virtbmc-demo";
/// The agent's admin endpoint, on the loopback of namespace `virtbmc-demo` (its default).
pub const ADMIN: &str = "127.0.0.1:9623";

pub fn run() -> Result<(), String> {
    let (agent, object) = prepare()?;
    let bmc = Bmc::builder()
        .binary(&agent)
        .netns(BMC_NS, CLIENT_NS, NET)
        .vm("vm-0=6230")
        .vm("vm-1=6231,on")
        .vm("vm-2=6232")
        .user("admin:password:admin")
        .user("viewer:viewer:user")
        .arg("--xdp-iface")
        .arg(BMC_IFACE)
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

/// What both demos do first: Ctrl-C handling, root, the client tools, the release agent and
/// the XDP object (their paths are returned), and no namespaces left by an earlier demo.
pub fn prepare() -> Result<(PathBuf, PathBuf), String> {
    interrupt::install();
    if !virtbmc_e2e::is_root() {
        return Err("the demo creates network namespaces: run it as root".into());
    }
    tools::ensure_installed()?;
    let agent = tools::build_agent()?;
    interrupt::check()?;
    let object = crate::ebpf::build_ebpf()?;
    interrupt::check()?;

    delete_leftovers();
    Ok((agent, object))
}

/// A demo killed with SIGKILL cannot clean up: the processes and namespaces it left go now.
fn delete_leftovers() {
    for ns in [BMC_NS, CLIENT_NS] {
        if NetnsPair::exists(ns) {
            println!("==> deleting namespace {ns} left by an earlier demo, and its processes");
            kill_namespace(ns);
        }
    }
}

/// Kills every process in namespace `ns` and deletes it.
pub fn kill_namespace(ns: &str) {
    use std::process::Command;
    let pids = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for pid in pids.split_whitespace() {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

/// The demo's narration: prints each step and keeps what did not behave as expected.
#[derive(Default)]
pub struct Steps {
    surprises: Vec<String>,
}

impl Steps {
    pub fn say(&self, text: &str) {
        println!("\n# {text}");
    }

    pub fn surprise(&mut self, what: String) {
        self.surprises.push(what);
    }

    /// Prints what a client did; records a surprise when its success differs from `expect_ok`.
    pub fn client(&mut self, out: Out, expect_ok: bool) -> Result<Out, String> {
        println!("{out}");
        if out.ok() != expect_ok {
            self.surprise(format!(
                "`{}` {}",
                out.cmdline,
                if expect_ok { "failed" } else { "succeeded" }
            ));
        }
        interrupt::check()?;
        Ok(out)
    }

    /// Ok when every step behaved; otherwise lists the surprises and the last lines of each
    /// `(name, log)`.
    pub fn finish(self, logs: &[(&str, String)]) -> Result<(), String> {
        if self.surprises.is_empty() {
            println!("\n==> demo finished: every step behaved as expected");
            return Ok(());
        }
        for s in &self.surprises {
            println!("unexpected: {s}");
        }
        print_log_tails(logs);
        Err(format!(
            "{} step(s) did not behave as expected",
            self.surprises.len()
        ))
    }
}

/// The last lines of each `(name, log)`, to say why something failed.
pub fn print_log_tails(logs: &[(&str, String)]) {
    for (name, log) in logs {
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        println!("\n==> last lines of the {name} log:");
        for l in tail.iter().rev() {
            println!("{l}");
        }
    }
}

/// The XDP counters from the agent's `/metrics` (read with `admin_get`) and `bpftool`'s view
/// of its BMC map.
pub fn show_fast_path(admin_get: impl Fn(&str) -> Result<String, String>, agent_pid: u32) {
    match admin_get("/metrics") {
        Ok(body) => {
            println!("$ curl -s http://{ADMIN}/metrics | grep fastpath   (in namespace {BMC_NS})");
            for l in body.lines().filter(|l| l.starts_with("virtbmc_fastpath")) {
                println!("{l}");
            }
        }
        Err(e) => println!("/metrics: {e}"),
    }
    // The agent runs under `ip netns exec`, whose private /sys has its own bpffs: look
    // at the pins through the agent's mount namespace.
    let dump = std::process::Command::new("nsenter")
        .args(["--mount", "--target", &agent_pid.to_string()])
        .args(["bpftool", "map", "dump", "pinned"])
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

struct Demo<'a> {
    bmc: &'a Bmc,
    steps: Steps,
}

impl Demo<'_> {
    fn say(&self, text: &str) {
        self.steps.say(text);
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
        self.steps.client(out, expect_ok)
    }

    /// Runs and prints one curl command in the client namespace; it must succeed.
    fn curl(&mut self, args: &[&str]) -> Result<Out, String> {
        interrupt::check()?;
        let mut argv = vec!["curl"];
        argv.extend_from_slice(args);
        let out = self.bmc.client(&argv);
        self.steps.client(out, true)
    }

    /// A Redfish POST of `body` as the administrator, its status code shown.
    fn post_json(&mut self, url: &str, body: &str) -> Result<Out, String> {
        self.curl(&[
            "-sk",
            "-u",
            "admin:password",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            "-w",
            "HTTP %{http_code}\n",
            url,
        ])
    }

    /// A SOL session on vm-1, its terminal shown as the user saw it.
    fn sol(&mut self) -> Result<(), String> {
        interrupt::check()?;
        let ip = self.bmc.ip();
        let argv = [
            "ipmitool", "-I", "lanplus", "-H", &ip, "-p", "6231", "-U", "admin", "-P", "password",
            "sol", "activate",
        ];
        println!("$ {}", argv.join(" "));
        let mut t = self.bmc.terminal(&argv);
        let wait = Duration::from_secs(15);
        let steps = [
            ("", "[SOL Session operational"),
            ("\r", "vm-1 login: "),
            ("root\r", "vm-1 login: "),
        ];
        for (typed, want) in steps {
            if !typed.is_empty() {
                t.send(typed);
            }
            if t.try_expect(want, wait).is_err() {
                self.steps
                    .surprise(format!("SOL: no {want:?} after typing {typed:?}"));
                return Ok(());
            }
        }
        let cycle = self.bmc.ipmitool(
            Iface::Lanplus,
            "admin",
            "password",
            6231,
            &["power", "cycle"],
        );
        let ok_cycle = cycle.ok();
        if t.try_expect("Debian GNU/Linux 12 vm-1 ttyS0", wait)
            .is_err()
            || t.try_expect("vm-1 login: ", wait).is_err()
        {
            self.steps
                .surprise("SOL: no new boot's output after the power cycle".into());
        }
        t.send("\r~.");
        let exited = t.try_expect("[terminated ipmitool]", wait).is_ok();
        println!("{}", t.transcript().replace('\r', ""));
        println!(
            "(power cycle from another client: {})",
            if ok_cycle { "ok" } else { "failed" }
        );
        if !exited {
            self.steps
                .surprise("SOL: ipmitool did not end on ~.".into());
        }
        Ok(())
    }

    fn show_vms(&self) {
        match self.bmc.http_get("/vms") {
            Ok(body) => {
                println!("$ curl -s http://{ADMIN}/vms   (in namespace {BMC_NS})");
                print!("{body}");
            }
            Err(e) => println!("/vms: {e}"),
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
                self.steps
                    .surprise(format!("{vm} not {want} after 10 s: {now:?}"));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn script(bmc: &Bmc) -> Result<(), String> {
    let mut d = Demo {
        bmc,
        steps: Steps::default(),
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

    d.say("Redfish over HTTPS on the same port number (TCP): vm-2 powered on with ComputerSystem.Reset, as Ironic's sushy does it, then read back");
    let url = format!("https://{}:6232/redfish/v1/Systems/1", bmc.ip());
    d.post_json(
        &format!("{url}/Actions/ComputerSystem.Reset"),
        r#"{"ResetType":"On"}"#,
    )?;
    d.wait_power("vm-2", "on")?;
    d.curl(&["-sk", "-u", "admin:password", &url])?;

    d.say("Redfish virtual media, as Metal3's redfish-virtualmedia:// does it: an ISO inserted into vm-2's virtual CD (InsertMedia with only Image), then the drive read back");
    let cd = format!("{url}/VirtualMedia/Cd");
    d.post_json(
        &format!("{cd}/Actions/VirtualMedia.InsertMedia"),
        r#"{"Image":"http://images.example/installer.iso"}"#,
    )?;
    d.curl(&["-sk", "-u", "admin:password", &cd])?;

    d.say("Serial-over-LAN: `ipmitool -I lanplus sol activate` on vm-1 (under a terminal), Enter, a login name, a power cycle from another client, then ~.");
    d.sol()?;

    d.say("the agent's view after all that (vm-0 on with PXE next, vm-1 on again after its cycle, vm-2 on through Redfish with the ISO in its CD)");
    d.show_vms();

    d.say("what the XDP fast path answered itself: pings, auth capabilities, cipher suites and the IPMI 1.5 in-session power status; the rest was passed to the agent");
    show_fast_path(|path| bmc.http_get(path), bmc.pid());
    d.steps.finish(&[("agent", bmc.log())])
}
