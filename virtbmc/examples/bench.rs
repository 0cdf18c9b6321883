//! Benchmark of the userspace path (prints figures; asserts nothing).
//!
//! Starts the release agent as a child process on loopback and measures, for presence ping,
//! session-less Get Channel Authentication Capabilities and in-session Get Chassis Status
//! (IPMI 1.5 MD5 and RMCP+ suite 17): answers per second and p50/p99 latency with one request
//! in flight, and answers per second with a window of 8. Then the agent's resident memory
//! with 1, 100 and 10,000 BMCs configured.
//!
//! Usage: cargo run --release -p virtbmc --example bench [-- AGENT_BIN [SECONDS]]
//! Ports: BMCs on 127.0.0.1:19623 and 20000-29999 (below the ephemeral range), admin 10623+.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virtbmc::console::{self, V15Session, V20Session, suite};
use virtbmc::wire::lan15::AUTH_MD5;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(bin: &str, bmcs: u32, base_port: u16, admin_port: u16) -> Agent {
    let child = Command::new(bin)
        .args([
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
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
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

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn socket(target: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
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

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin = args
        .first()
        .cloned()
        .unwrap_or_else(|| "target/release/virtbmc".into());
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);

    println!("== userspace path, loopback, 1 BMC ({secs} s per figure)");
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

    let s = socket(target);
    let mut tag = 0u8;
    row(
        "presence ping",
        measure(&s, secs, 8, &mut || {
            tag = tag.wrapping_add(1);
            console::ping(tag)
        }),
    );
    row(
        "get channel auth capabilities",
        measure(&s, secs, 8, &mut || {
            console::sessionless_v15(0x06, 0x38, 1, &[0x8e, 0x04])
        }),
    );

    let s15 = socket(target);
    let mut v15 = V15Session::open("admin", "password", AUTH_MD5, 4, &mut exchange(&s15))
        .expect("1.5 session");
    row(
        "get chassis status (1.5 MD5 session)",
        measure(&s15, secs, 8, &mut || v15.request(0x00, 0x01, &[])),
    );

    let s20 = socket(target);
    let mut v20 = V20Session::open("admin", "password", suite(17), 0x14, &mut exchange(&s20))
        .expect("RMCP+ session");
    row(
        "get chassis status (RMCP+ suite 17)",
        measure(&s20, secs, 8, &mut || v20.request(0x00, 0x01, &[])),
    );
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
}
