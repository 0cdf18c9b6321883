//! virtbmc beside ipmi_sim: both on loopback in the same run, driven by the same console code,
//! each figure taken in two halves in the order virtbmc, ipmi_sim, ipmi_sim, virtbmc, so that
//! a drift in the machine's load weighs on both alike.

use std::net::SocketAddr;

use crate::{ipmi_sim, sessions};

const VIRTBMC_PORT: u16 = 19624;
const VIRTBMC_STOCK_PORT: u16 = 19625;
const IPMI_SIM_PORT: u16 = 19626;

/// RMCP+ cipher suite 3 (HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128): ipmi_sim has no HMAC-SHA256,
/// so it refuses suite 17's authentication algorithm.
const SUITE: u8 = 3;

/// The core count and load average, and a warning when other work shares the machine.
pub fn print_machine() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    println!("machine: {cores} cores, load average {}", load.join(" "));
    let one_minute: f64 = load.first().and_then(|l| l.parse().ok()).unwrap_or(0.0);
    if one_minute >= 0.5 * cores as f64 {
        println!(
            "note: the machine is shared (load {one_minute} on {cores} cores): absolute figures \
             are lower and noisier than on an idle machine; ratios within one run hold better"
        );
    }
}

/// `measure(target, pid, secs)` on both servers, in two halves in the order A, B, B, A.
fn side_by_side(
    ours: (SocketAddr, u32),
    theirs: (SocketAddr, u32),
    secs: f64,
    measure: impl Fn(SocketAddr, u32, f64) -> sessions::Run,
) -> (sessions::Run, sessions::Run) {
    let half = secs / 2.0;
    let v1 = measure(ours.0, ours.1, half);
    let s1 = measure(theirs.0, theirs.1, half);
    let s2 = measure(theirs.0, theirs.1, half);
    let v2 = measure(ours.0, ours.1, half);
    (v1.and(v2), s1.and(s2))
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn cpu_ratio(v: &sessions::Run, s: &sessions::Run) -> String {
    match (v.cpu_us_each(), s.cpu_us_each()) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => "-".into(),
    }
}

fn cpu(run: &sessions::Run) -> String {
    run.cpu_us_each()
        .map_or("-".into(), |us| format!("{us:.1}"))
}

/// The process's thread count, from /proc/PID/status.
fn threads(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().to_string()))
        })
        .unwrap_or_else(|| "?".into())
}

fn failures(server: &str, what: &str, run: &sessions::Run) {
    if run.failed > 0 {
        println!(
            "  {server} {what}: {} failed (first: {})",
            run.failed,
            run.first_failure.as_deref().unwrap_or("?")
        );
    }
}

pub fn run(agent_bin: &str, secs: f64) {
    println!(
        "\n== virtbmc vs ipmi_sim, loopback, same console code, same run ({secs} s per figure \
         and server, in two halves)"
    );
    let sim_bin = match ipmi_sim::find() {
        Ok(bin) => bin,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    println!(
        "ipmi_sim: {} ({})",
        sim_bin.display(),
        ipmi_sim::version(&sim_bin)
    );
    print_machine();
    let sim = match ipmi_sim::start(&sim_bin, IPMI_SIM_PORT) {
        Ok(sim) => sim,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    // ipmi_sim keeps up to 63 sessions and limits no source; the agent gets the same table
    // size and a RAKP2 rate no client here reaches, so that both are measured doing the work
    // rather than refusing it (the agent as shipped is measured below).
    let agent = crate::start_agent_with(
        agent_bin,
        1,
        VIRTBMC_PORT,
        10640,
        &["--max-sessions", "63", "--rakp-per-second", "1000000"],
    );
    println!(
        "virtbmc: {agent_bin} --max-sessions 63 --rakp-per-second 1000000 (userspace path, no \
         fast path); ratios are virtbmc / ipmi_sim"
    );
    let (agent_pid, sim_pid) = (agent.0.id(), sim.pid());
    let ours = (SocketAddr::from(([127, 0, 0, 1], VIRTBMC_PORT)), agent_pid);
    let theirs = (SocketAddr::from(([127, 0, 0, 1], IPMI_SIM_PORT)), sim_pid);

    println!(
        "\nwhole sessions: Open Session, RAKP 1-4, Get Chassis Status, Close Session \
         (suite {SUITE}); each console loops over whole sessions"
    );
    println!(
        "{:8}   {:^29}   {:^29}",
        "", "sessions per second", "server CPU µs per session"
    );
    println!(
        "{:>8}   {:>9} {:>9} {:>9}   {:>9} {:>9} {:>9}   {:>15}",
        "consoles", "virtbmc", "ipmi_sim", "ratio", "virtbmc", "ipmi_sim", "ratio", "sessions v/i"
    );
    for clients in [1, 4, 16] {
        let (v, s) = side_by_side(ours, theirs, secs, |target, pid, secs| {
            sessions::whole_sessions(target, SUITE, clients, secs, pid)
        });
        println!(
            "{clients:>8}   {:>9.0} {:>9.0} {:>9}   {:>9} {:>9} {:>9}   {:>15}",
            v.per_second(),
            s.per_second(),
            ratio(v.per_second(), s.per_second()),
            cpu(&v),
            cpu(&s),
            cpu_ratio(&v, &s),
            format!("{}/{}", v.done, s.done)
        );
        failures("virtbmc", &format!("{clients} consoles"), &v);
        failures("ipmi_sim", &format!("{clients} consoles"), &s);
    }

    println!(
        "\nsession-less Get Channel Authentication Capabilities, 2 consoles, one request in \
         flight each"
    );
    println!(
        "{:>8} {:>11} {:>16} {:>10}",
        "server", "answers/s", "CPU µs/answer", "answers"
    );
    let (v, s) = side_by_side(ours, theirs, secs, |target, pid, secs| {
        sessions::sessionless(target, 2, secs, pid)
    });
    for (name, r) in [("virtbmc", &v), ("ipmi_sim", &s)] {
        println!(
            "{name:>8} {:>11.0} {:>16} {:>10}",
            r.per_second(),
            cpu(r),
            r.done
        );
    }
    println!(
        "{:>8} {:>11} {:>16}",
        "ratio",
        ratio(v.per_second(), s.per_second()),
        cpu_ratio(&v, &s)
    );
    failures("virtbmc", "session-less", &v);
    failures("ipmi_sim", "session-less", &s);
    println!(
        "threads: virtbmc {}, ipmi_sim {}",
        threads(agent_pid),
        threads(sim_pid)
    );
    drop(agent);
    drop(sim);

    // The agent with its defaults: 16 sessions, half of them per source address, and RAKP2
    // limited to 20 per second per source (burst 40), the price of not being a password oracle.
    let stock = crate::start_agent(agent_bin, 1, VIRTBMC_STOCK_PORT, 10641);
    let target = SocketAddr::from(([127, 0, 0, 1], VIRTBMC_STOCK_PORT));
    let r = sessions::whole_sessions(target, SUITE, 1, secs, stock.0.id());
    println!(
        "\nvirtbmc with its defaults (RAKP2: 20/s per source address, burst 40), 1 console from \
         one address: {:.0} whole sessions/s ({} in {secs} s), {} failed{}",
        r.per_second(),
        r.done,
        r.failed,
        r.first_failure
            .map_or(String::new(), |f| format!(" (first: {f})"))
    );
}
