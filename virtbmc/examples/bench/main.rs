//! Benchmark of the userspace path (prints figures; asserts nothing).
//!
//! Starts the release agent as a child process on loopback and measures, for presence ping,
//! session-less Get Channel Authentication Capabilities and in-session Get Chassis Status
//! (IPMI 1.5 MD5 and RMCP+ suite 17): answers per second and p50/p99 latency with one request
//! in flight, and answers per second with a window of 8. Then the agent's resident memory
//! with 1, 100 and 10,000 BMCs configured.
//!
//! With an XDP object (third argument or $VIRTBMC_EBPF_OBJECT) and root, it also runs the
//! agent in a network namespace behind a veth, with the fast path off and on, and prints the
//! same figures side by side with their ratio.
//!
//! Last, beside ipmi_sim (OpenIPMI's LAN BMC simulator; `$IPMI_SIM` or PATH), both on
//! loopback and driven by the same console code: whole RMCP+ sessions per second from 1, 4
//! and 16 parallel consoles and the server's CPU per session, then session-less answers from
//! 2 consoles. Skipped, saying why, when ipmi_sim is absent.
//!
//! Usage: cargo run --release -p virtbmc --example bench [-- AGENT_BIN [SECONDS [OBJECT]]]
//! Ports: BMCs on 127.0.0.1:19623-19626 and 20000-29999 (below the ephemeral range), admin
//! 10623+.

mod comparison;
mod ipmi_sim;
mod process;
mod sessions;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use process::{Agent, die_with_parent, rss_kib};
use virtbmc::console::{self, V15Session, V20Session, suite};
use virtbmc::wire::lan15::AUTH_MD5;

fn start_agent(bin: &str, bmcs: u32, base_port: u16, admin_port: u16) -> Agent {
    start_agent_with(bin, bmcs, base_port, admin_port, &[])
}

fn start_agent_with(
    bin: &str,
    bmcs: u32,
    base_port: u16,
    admin_port: u16,
    extra: &[&str],
) -> Agent {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--listen",
        "127.0.0.1",
        "--generate",
        &bmcs.to_string(),
        "--base-port",
        &base_port.to_string(),
    ])
    .args([
        "--user",
        "admin:password:admin",
        "--admin",
        &format!("127.0.0.1:{admin_port}"),
    ])
    .args(extra)
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .expect("start the agent (build it with cargo build --release -p virtbmc)");
    let agent = Agent(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", admin_port)).is_err() {
        assert!(Instant::now() < deadline, "agent did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

fn socket(target: SocketAddr) -> UdpSocket {
    let local = if target.ip().is_loopback() {
        "127.0.0.1:0"
    } else {
        "0.0.0.0:0"
    };
    let s = UdpSocket::bind(local).unwrap();
    s.connect(target).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

struct Figures {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    windowed_per_second: f64,
}

/// Closed loop, one request in flight, for `secs`; then a window of `window` in flight.
fn measure(
    sock: &UdpSocket,
    secs: f64,
    window: usize,
    next: &mut dyn FnMut() -> Vec<u8>,
) -> Figures {
    let mut buf = [0u8; 512];
    let mut lat = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < secs {
        let req = next();
        let t = Instant::now();
        sock.send(&req).unwrap();
        if sock.recv(&mut buf).is_ok() {
            lat.push(t.elapsed());
        }
    }
    let per_second = lat.len() as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    let (p50_us, p99_us) = (pct(0.50), pct(0.99));

    let mut answered = 0u64;
    let start = Instant::now();
    for _ in 0..window {
        sock.send(&next()).unwrap();
    }
    while start.elapsed().as_secs_f64() < secs {
        if sock.recv(&mut buf).is_ok() {
            answered += 1;
        }
        sock.send(&next()).unwrap();
    }
    for _ in 0..window {
        let _ = sock.recv(&mut buf);
    }
    Figures {
        per_second,
        p50_us,
        p99_us,
        windowed_per_second: answered as f64 / start.elapsed().as_secs_f64(),
    }
}

fn exchange(sock: &UdpSocket) -> impl FnMut(&[u8]) -> Option<Vec<u8>> + '_ {
    move |d| {
        sock.send(d).ok()?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    }
}

const REQUESTS: [&str; 4] = [
    "presence ping",
    "get channel auth capabilities",
    "get chassis status (1.5 MD5 session)",
    "get chassis status (RMCP+ suite 17)",
];

/// The four measurements against one BMC, in the order of [`REQUESTS`].
fn suite_figures(target: SocketAddr, secs: f64) -> Vec<Figures> {
    let mut out = Vec::new();
    let s = socket(target);
    let mut tag = 0u8;
    out.push(measure(&s, secs, 8, &mut || {
        tag = tag.wrapping_add(1);
        console::ping(tag)
    }));
    out.push(measure(&s, secs, 8, &mut || {
        console::sessionless_v15(0x06, 0x38, 1, &[0x8e, 0x04])
    }));
    let s15 = socket(target);
    let mut v15 = V15Session::open("admin", "password", AUTH_MD5, 4, &mut exchange(&s15))
        .expect("1.5 session");
    v15.call(0x06, 0x3B, &[4], &mut exchange(&s15))
        .expect("set privilege");
    out.push(measure(&s15, secs, 8, &mut || v15.request(0x00, 0x01, &[])));
    let s20 = socket(target);
    let mut v20 = V20Session::open("admin", "password", suite(17), 0x14, &mut exchange(&s20))
        .expect("RMCP+ session");
    out.push(measure(&s20, secs, 8, &mut || v20.request(0x00, 0x01, &[])));
    out
}

/// Two namespaces joined by a veth, deleted on drop.
struct Veth;

const NS_AGENT: &str = "virtbmc-bench-a";
const NS_CLIENT: &str = "virtbmc-bench-b";

impl Veth {
    fn new() -> Veth {
        let _ = Veth::teardown();
        let sh = |c: &str| {
            let ok = Command::new("sh")
                .arg("-c")
                .arg(c)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "`{c}` failed");
        };
        sh(&format!(
            "ip netns add {NS_AGENT} && ip netns add {NS_CLIENT}"
        ));
        let veth = Veth;
        sh(&format!(
            "ip link add vbench0 netns {NS_AGENT} type veth peer name vbench1 netns {NS_CLIENT}"
        ));
        sh(&format!(
            "ip -n {NS_AGENT} addr add 10.231.90.1/24 dev vbench0 && ip -n {NS_CLIENT} addr add 10.231.90.2/24 dev vbench1"
        ));
        sh(&format!(
            "ip -n {NS_AGENT} link set vbench0 up && ip -n {NS_CLIENT} link set vbench1 up"
        ));
        sh(&format!(
            "ip -n {NS_AGENT} link set lo up && ip -n {NS_CLIENT} link set lo up"
        ));
        veth
    }

    fn teardown() -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("ip netns del {NS_AGENT}; ip netns del {NS_CLIENT}"))
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        Veth::teardown();
    }
}

/// The agent in the agent namespace (nsenter, not `ip netns exec`, so bpffs pins stay visible).
fn start_agent_in_ns(bin: &str, xdp: Option<&str>) -> Agent {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{NS_AGENT}"))
        .arg(bin)
        .args([
            "--listen",
            "10.231.90.1",
            "--generate",
            "1",
            "--base-port",
            "19623",
        ])
        .args([
            "--user",
            "admin:password:admin",
            "--admin",
            "127.0.0.1:10630",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match xdp {
        Some(object) => cmd.args(["--xdp-iface", "vbench0", "--ebpf-object", object]),
        None => cmd.args(["--xdp-mode", "off"]),
    };
    let agent = Agent(cmd.spawn().expect("start the agent"));
    std::thread::sleep(Duration::from_millis(800));
    agent
}

/// Runs `f` on a thread that lives in the client namespace.
fn in_client_ns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(format!("/run/netns/{NS_CLIENT}")).expect("netns file");
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("client thread")
    })
}

fn veth_comparison(bin: &str, object: &str, secs: f64) {
    println!("\n== over a veth between two namespaces, fast path off vs on ({secs} s per figure)");
    let _veth = Veth::new();
    let target: SocketAddr = "10.231.90.1:19623".parse().unwrap();
    let mut results = Vec::new();
    for xdp in [None, Some(object)] {
        let agent = start_agent_in_ns(bin, xdp);
        results.push(in_client_ns(|| suite_figures(target, secs)));
        drop(agent);
        std::thread::sleep(Duration::from_millis(300));
    }
    println!(
        "{:<38} {:>10} {:>10} {:>6}   {:>16} {:>16}   {:>10} {:>10}",
        "request",
        "off ans/s",
        "on ans/s",
        "ratio",
        "off p50/p99 µs",
        "on p50/p99 µs",
        "off w=8",
        "on w=8"
    );
    for (i, name) in REQUESTS.iter().enumerate() {
        let (off, on) = (&results[0][i], &results[1][i]);
        println!(
            "{name:<38} {:>10.0} {:>10.0} {:>5.1}x   {:>7.1}/{:>7.1} {:>7.1}/{:>7.1}   {:>10.0} {:>10.0}",
            off.per_second,
            on.per_second,
            on.per_second / off.per_second.max(1.0),
            off.p50_us,
            off.p99_us,
            on.p50_us,
            on.p99_us,
            off.windowed_per_second,
            on.windowed_per_second
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin = args
        .first()
        .cloned()
        .unwrap_or_else(|| "target/release/virtbmc".into());
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);

    comparison::print_machine();
    println!("\n== userspace path, loopback, 1 BMC ({secs} s per figure)");
    let agent = start_agent(&bin, 1, 19623, 10623);
    let target: SocketAddr = "127.0.0.1:19623".parse().unwrap();
    println!(
        "{:<38} {:>12} {:>9} {:>9} {:>14}",
        "request", "answers/s", "p50 µs", "p99 µs", "answers/s w=8"
    );
    let row = |name: &str, f: Figures| {
        println!(
            "{name:<38} {:>12.0} {:>9.1} {:>9.1} {:>14.0}",
            f.per_second, f.p50_us, f.p99_us, f.windowed_per_second
        )
    };

    for (name, f) in REQUESTS.iter().zip(suite_figures(target, secs)) {
        row(name, f);
    }
    drop(agent);

    println!("\n== agent memory (VmRSS after start-up, sessions idle)");
    let mut base = 0;
    for (i, n) in [1u32, 100, 10_000].into_iter().enumerate() {
        let agent = start_agent(&bin, n, 20000, 10624 + i as u16);
        std::thread::sleep(Duration::from_millis(300));
        let rss = rss_kib(agent.0.id());
        if n == 1 {
            base = rss;
        }
        let per = if n > 1 {
            format!(
                "{:.1} KiB per additional BMC",
                (rss.saturating_sub(base)) as f64 / (n - 1) as f64
            )
        } else {
            String::new()
        };
        println!("{n:>6} BMCs: {rss:>8} KiB  {per}");
    }

    let object = args
        .get(2)
        .cloned()
        .or_else(|| std::env::var("VIRTBMC_EBPF_OBJECT").ok());
    match object {
        Some(object) if std::path::Path::new(&object).exists() => {
            veth_comparison(&bin, &object, secs)
        }
        _ => println!(
            "\n(no XDP object: build it with `cargo xtask build-ebpf` for the veth comparison)"
        ),
    }

    comparison::run(&bin, secs);
}
