//! `cargo xtask soak [MINUTES]`: the release agent with three VMs (and its XDP fast path on
//! its veth when the object can be had) under mixed real clients for a while: ipmitool
//! (`lan`, `lanplus`), freeipmi (IPMI 1.5 and 2.0), pyghmi, python-ipmi when it is
//! installed, clients killed mid-session, and a stream of garbage datagrams. Every answer is
//! checked; every five seconds the agent's memory, file descriptors, active sessions and
//! fast-path session map are sampled, and none may keep growing. Once the clients stop and
//! the idle timeout passes, no session may be left.
//!
//! Namespaces `virtbmc-soak` (the agent) and `virtbmc-soak-client` (the clients), pins under
//! `/sys/fs/bpf/virtbmc-soak`; all of it, and every process started, is gone at the end, on
//! failure and on Ctrl-C.

mod clients;
pub mod garbage;
mod rng;
mod samples;
mod workers;

use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use virtbmc_e2e::{Bmc, NetnsPair};

use crate::{interrupt, tools};
use clients::{Clients, PythonIpmi};
use samples::{Limits, Sample};
use workers::{KILLED, READ_ONLY, READ_WRITE, Soak};

const BMC_NS: &str = "virtbmc-soak";
const CLIENT_NS: &str = "virtbmc-soak-client";
/// 10.254.24.0/24, only inside the two soak namespaces.
const NET: [u8; 3] = [10, 254, 24];
/// The garbage's own source address on the client side (the fixture names the veth ends).
const GARBAGE_IP: &str = "10.254.24.3";
const CLIENT_IFACE: &str = "vcli0";
const BMC_IFACE: &str = "vbmc0";
/// The soak's own pin folder, so that it never disturbs another agent on this machine.
const PIN_DIR: &str = "/sys/fs/bpf/virtbmc-soak";

/// Idle session timeout given to the agent: short, so that sessions of killed clients end
/// within a one-minute run and the drained state is reached soon after it.
const SESSION_TIMEOUT_SECS: u64 = 10;
/// Sessions per BMC (the agent's default, passed explicitly since the bounds derive from it).
const MAX_SESSIONS: u64 = 16;
const BMCS: u64 = 3;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Garbage datagrams per second, all ports together.
const GARBAGE_RATE: u32 = 40;

const LIMITS: Limits = Limits {
    rss_percent: 20,
    fds: 10,
    sessions: MAX_SESSIONS * BMCS,
    map: MAX_SESSIONS * BMCS,
};

pub fn run(args: &[String]) -> Result<(), String> {
    let minutes: f64 = match args.first() {
        None => 1.0,
        Some(m) => m
            .parse()
            .ok()
            .filter(|m: &f64| *m > 0.0 && m.is_finite())
            .ok_or_else(|| format!("MINUTES must be a positive number, not `{m}`"))?,
    };
    interrupt::install();
    if !virtbmc_e2e::is_root() {
        return Err("the soak creates network namespaces: run it as root".into());
    }
    tools::ensure_installed()?;
    let agent = tools::build_agent()?;
    interrupt::check()?;
    let object = xdp_object();
    interrupt::check()?;
    soak(
        &agent,
        object.as_deref(),
        Duration::from_secs_f64(minutes * 60.0),
    )
}

/// The XDP object: `$VIRTBMC_EBPF_OBJECT` when it names a file, else built as `build-ebpf`
/// does. None, said plainly, when it cannot be had: the soak then runs without the fast path.
fn xdp_object() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VIRTBMC_EBPF_OBJECT").map(PathBuf::from)
        && p.is_file()
    {
        println!("==> using VIRTBMC_EBPF_OBJECT={}", p.display());
        return Some(p);
    }
    match crate::ebpf::build_ebpf() {
        Ok(p) => Some(p),
        Err(e) => {
            println!("==> no XDP object ({e}): the soak runs without the fast path");
            None
        }
    }
}

/// Runs the soak for `length` with the agent binary `agent` and, if given, the XDP object.
/// Also called by `xtask test` with a one-minute length.
pub fn soak(agent: &Path, object: Option<&Path>, length: Duration) -> Result<(), String> {
    interrupt::install();
    for ns in [BMC_NS, CLIENT_NS] {
        if NetnsPair::exists(ns) {
            println!("==> deleting namespace {ns} left by an earlier soak, and its processes");
            crate::demo::kill_namespace(ns);
        }
    }
    let python_ipmi = PythonIpmi::find();

    let mut builder = Bmc::builder()
        .binary(agent)
        .netns(BMC_NS, CLIENT_NS, NET)
        .vm(&format!("{}={},on", READ_ONLY.name, READ_ONLY.port))
        .vm(&format!("{}={},off", READ_WRITE.name, READ_WRITE.port))
        .vm(&format!("{}={},on", KILLED.name, KILLED.port))
        .user("admin:password:admin")
        .arg("--session-timeout")
        .arg(&SESSION_TIMEOUT_SECS.to_string())
        .arg("--max-sessions")
        .arg(&MAX_SESSIONS.to_string())
        .log_level("info")
        .quiet();
    if let Some(object) = object {
        builder = builder
            .arg("--xdp-iface")
            .arg(BMC_IFACE)
            .arg("--ebpf-object")
            .arg(object.to_str().ok_or("object path is not UTF-8")?)
            .arg("--bpf-pin-dir")
            .arg(PIN_DIR);
    }
    // The fixture panics when the agent does not come up (after printing its log).
    let bmc = catch_unwind(AssertUnwindSafe(|| builder.start()))
        .map_err(|p| format!("starting the agent: {}", panic_text(&*p)))?;

    let plan = Plan {
        length,
        xdp: object.is_some(),
        python_ipmi,
    };
    let result = catch_unwind(AssertUnwindSafe(|| drive(&bmc, plan)))
        .unwrap_or_else(|p| Err(format!("the soak panicked: {}", panic_text(&*p))));
    if result.is_err() && interrupt::check().is_ok() {
        crate::demo::print_log_tails(&[("agent", bmc.log())]);
    }
    let cleanup = tear_down(bmc);
    match (result, cleanup) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(format!("the soak passed but its cleanup did not: {e}")),
    }
}

struct Plan {
    length: Duration,
    xdp: bool,
    python_ipmi: Option<PythonIpmi>,
}

fn drive(bmc: &Bmc, plan: Plan) -> Result<(), String> {
    let Plan {
        length,
        xdp,
        python_ipmi,
    } = plan;
    println!(
        "\n==> soak for {:.1} min: agent pid {} in namespace {BMC_NS} ({}), clients in {CLIENT_NS}",
        length.as_secs_f64() / 60.0,
        bmc.pid(),
        if xdp {
            "XDP fast path on its veth"
        } else {
            "no fast path"
        }
    );
    println!(
        "    {} (port {}) on, read-only clients; {} (port {}) power changes; {} (port {}) clients killed mid-session",
        READ_ONLY.name, READ_ONLY.port, READ_WRITE.name, READ_WRITE.port, KILLED.name, KILLED.port
    );
    match &python_ipmi {
        Some(p) => println!("    python-ipmi: {} ({})", p.python, p.ifaces.join(" and ")),
        None => println!(
            "    python-ipmi: not importable by {} (nor ${}): skipped",
            tools::PYGHMI_PYTHON,
            clients::PYTHON_IPMI_ENV
        ),
    }
    let (mut rng, seed) = rng::Rng::from_time();
    println!("    seed {seed}; agent log {}", bmc.log_path().display());

    let mut garbage = Garbage::start(bmc, seed)?;
    let soak = Soak::new(Clients { bmc, python_ipmi });
    let pin_dir = xdp.then_some(PIN_DIR);
    let start = Instant::now();
    let mut load = vec![samples::take(bmc, start, pin_dir)?];
    progress(&load[0], &soak);

    // The sampler runs here; the clients on threads. A Ctrl-C stops both (`Soak::running`).
    std::thread::scope(|s| {
        let seeds = [rng.next(), rng.next(), rng.next(), rng.next()];
        let soak = &soak;
        let workers = [
            s.spawn(move || workers::reader(soak, seeds[0])),
            s.spawn(move || workers::reader(soak, seeds[1])),
            s.spawn(move || workers::power(soak, seeds[2])),
            s.spawn(move || workers::killer(soak, seeds[3])),
        ];
        let mut next = start + SAMPLE_EVERY;
        while soak.running() {
            let deadline = (start + length).min(next);
            if Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            match samples::take(bmc, start, pin_dir) {
                Ok(s) => {
                    progress(&s, soak);
                    load.push(s);
                }
                Err(e) => soak.fail(format!("sampling the agent: {e}")),
            }
            next += SAMPLE_EVERY;
            if start.elapsed() >= length {
                break;
            }
        }
        soak.stop();
        for w in workers {
            if let Err(p) = w.join() {
                soak.fail(format!("a client thread panicked: {}", panic_text(&*p)));
            }
        }
    });
    let sprayed = garbage.finish();
    interrupt::check()?;

    let failures = soak.failures();
    let drained = if failures.is_empty() {
        Some(drain(bmc, start, pin_dir)?)
    } else {
        None
    };

    println!("\n==> samples of the agent (the last row once idle)");
    print!("{}", samples::table(&load, drained.as_ref()));
    println!("\n==> clients (run / failed)");
    let counts = soak.counts();
    for (kind, c) in &counts {
        println!("    {kind:<22} {:>5} / {}", c.run, c.failed);
    }
    if !counts.contains_key("python-ipmi") {
        println!("    {:<22} skipped (not installed)", "python-ipmi");
    }
    println!("    {:<22} {sprayed}", "garbage datagrams");

    let mut problems = failures;
    if let Some(drained) = &drained {
        problems.extend(samples::verdict(&load, drained, &LIMITS));
    }
    let panics = bmc.log().lines().filter(|l| l.contains("panicked")).count();
    if panics > 0 {
        problems.push(format!("the agent log has {panics} panic line(s)"));
    }
    let (run, failed) = counts
        .values()
        .fold((0, 0), |(r, f), c| (r + c.run, f + c.failed));
    if problems.is_empty() {
        let peak = |f: fn(&Sample) -> u64| load.iter().map(f).max().unwrap_or(0);
        println!(
            "\n==> soak passed: {:.1} min, {run} clients, 0 wrong answers, garbage {sprayed}; RSS {} -> {} kB, fds <= {}, sessions <= {}{}; once idle: no session left",
            length.as_secs_f64() / 60.0,
            load[0].rss_kb,
            load.last().map_or(0, |s| s.rss_kb),
            peak(|s| s.fds),
            peak(|s| s.sessions),
            if xdp {
                format!(", fast-path map <= {}", peak(|s| s.map.unwrap_or(0)))
            } else {
                String::new()
            },
        );
        Ok(())
    } else {
        println!();
        for p in &problems {
            println!("soak problem: {p}");
        }
        println!(
            "\n==> soak FAILED: {} problem(s); {run} clients, {failed} wrong answer(s)",
            problems.len()
        );
        Err(format!("soak failed: {}", first_line(&problems[0])))
    }
}

/// One line per sample while the soak runs.
fn progress(s: &Sample, soak: &Soak) {
    let (run, failed) = soak
        .counts()
        .values()
        .fold((0, 0), |(r, f), c| (r + c.run, f + c.failed));
    let map = s.map.map_or(String::new(), |m| format!(" map {m}"));
    println!(
        "[{:>4}s] rss {} kB, fds {}, sessions {}{map}; clients {run} run, {failed} failed",
        s.secs, s.rss_kb, s.fds, s.sessions
    );
}

/// Waits, once the clients stopped, for every session to end on its idle timeout; returns the
/// first sample with none left, or the last one taken when the wait ran out.
fn drain(bmc: &Bmc, start: Instant, pin_dir: Option<&str>) -> Result<Sample, String> {
    println!(
        "==> clients stopped; waiting for the {SESSION_TIMEOUT_SECS} s idle timeout to end every session"
    );
    let limit = Instant::now() + Duration::from_secs(SESSION_TIMEOUT_SECS + 5);
    loop {
        interrupt::check()?;
        let s = samples::take(bmc, start, pin_dir)?;
        if (s.sessions == 0 && s.map.unwrap_or(0) == 0) || Instant::now() > limit {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The garbage helper (`xtask soak-garbage`) in the client namespace, from its own address.
struct Garbage {
    child: Child,
}

impl Garbage {
    fn start(bmc: &Bmc, seed: u64) -> Result<Garbage, String> {
        let cidr = format!("{GARBAGE_IP}/24");
        tools::run(std::process::Command::new("ip").args([
            "-n",
            CLIENT_NS,
            "addr",
            "add",
            &cidr,
            "dev",
            CLIENT_IFACE,
        ]))?;
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let exe = exe.to_str().ok_or("xtask path is not UTF-8")?;
        let ports = [READ_ONLY.port, READ_WRITE.port, KILLED.port].map(|p| p.to_string());
        let (ip, rate, seed) = (bmc.ip(), GARBAGE_RATE.to_string(), seed.to_string());
        let child = NetnsPair::exec(
            CLIENT_NS,
            &[
                exe,
                "soak-garbage",
                GARBAGE_IP,
                &ip,
                &ports.join(","),
                &rate,
                &seed,
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the garbage helper: {e}"))?;
        println!(
            "    garbage: {GARBAGE_RATE} datagrams/s from {GARBAGE_IP} to ports {}",
            ports.join(", ")
        );
        Ok(Garbage { child })
    }

    /// Closes the helper's stdin (it stops within one interval), and returns what it says
    /// it sent.
    fn finish(&mut self) -> String {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut said = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut said);
        }
        match said.split_whitespace().collect::<Vec<_>>()[..] {
            ["sent", sent, "answered", answered] => format!("{sent} sent, {answered} answered"),
            _ => "none reported (the helper was stopped)".into(),
        }
    }
}

impl Drop for Garbage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops the agent with SIGTERM (it detaches XDP and unpins its maps), kills whatever is
/// left in the namespaces, deletes them, and checks that nothing of the soak remains.
fn tear_down(bmc: Bmc) -> Result<(), String> {
    let pid = bmc.pid().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while bmc.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut left = Vec::new();
    if bmc.alive() {
        left.push(format!("the agent (pid {pid}) ignored SIGTERM for 5 s"));
    }
    for ns in [BMC_NS, CLIENT_NS] {
        let pids = std::process::Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let others: Vec<&str> = pids.split_whitespace().filter(|p| *p != pid).collect();
        if !others.is_empty() {
            left.push(format!("processes {} still in {ns}", others.join(" ")));
        }
    }
    // The fixture kills what is left of the agent and deletes both namespaces.
    drop(bmc);
    for ns in [BMC_NS, CLIENT_NS] {
        if NetnsPair::exists(ns) {
            crate::demo::kill_namespace(ns);
            left.push(format!("namespace {ns} outlived the agent"));
        }
    }
    // The agent pins inside its own mount namespace; on this host's bpffs nothing may stay.
    if Path::new(PIN_DIR).exists() {
        let _ = std::fs::remove_dir_all(PIN_DIR);
        left.push(format!("{PIN_DIR} was left on the host"));
    }
    println!("==> tearing down: agent stopped, namespaces {BMC_NS} and {CLIENT_NS} deleted");
    let _ = std::io::stdout().flush();
    if left.is_empty() {
        Ok(())
    } else {
        Err(left.join("; "))
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
