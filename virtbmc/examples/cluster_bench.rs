//! Benchmark of the cluster mode (prints figures; asserts nothing). Needs root.
//!
//! In a network namespace of its own (loopback only): the simulated cluster (kubesim) with N
//! VirtualMachines, their Secrets and VirtualMachineBMCs, and the release binary twice, as a
//! cluster runs it: `--role controller` (ports, Services, status, the per-BMC credential
//! copies) and `--role agent` (serving, with its XDP fast path on the namespace's `lo`). For
//! N = 1,000 and 10,000 it prints each process's memory per BMC and its steady-state CPU,
//! then, for one running VM whose VMI phase
//! flips between Running and Scheduled, the time from the phase change to (a) the fast-path
//! map entry changing and (b) the userspace engine answering the new power state (p50/p99).
//!
//! Usage: cargo run --release -p virtbmc --example cluster_bench -- AGENT_BIN OBJECT [N...]

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubesim::{Config, Handle, Server};
use virtbmc::console::{V20Session, suite};

const NS_NAME: &str = "virtbmc-cbench";
const PIN_DIR: &str = "/sys/fs/bpf/virtbmc-cbench";
const ADMIN: &str = "127.0.0.1:10700";
const CONTROLLER_ADMIN: &str = "127.0.0.1:10701";

struct Agent(Child);
impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first: the agent detaches and unpins on a clean shutdown.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        std::thread::sleep(Duration::from_millis(500));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Netns;
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", NS_NAME]).status();
        let _ = std::fs::remove_dir_all(PIN_DIR);
    }
}

fn sh(cmd: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "`{cmd}` failed");
}

fn http_get(path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(ADMIN).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn metric(name: &str) -> Option<f64> {
    let body = http_get("/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

fn proc_stat(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    (
        rss,
        f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0),
    )
}

/// Reads `power_on` of a port from the pinned BMC map.
fn map_power(port: u16) -> Option<u8> {
    let out = Command::new("bpftool")
        .args([
            "-j",
            "map",
            "lookup",
            "pinned",
            &format!("{PIN_DIR}/bmcs"),
            "key",
        ])
        .args(port.to_le_bytes().map(|b| b.to_string()))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let i = text.find("\"power_on\":")?;
    text[i + 11..]
        .trim_start()
        .chars()
        .next()?
        .to_digit(10)
        .map(|d| d as u8)
}

/// Percentile of the samples that completed (a missed sample is NaN and left out).
fn pct(v: &mut Vec<f64>, p: f64) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

async fn run(bin: &str, object: &str, n: usize) {
    let cfg = Config {
        bookmark_interval: Duration::from_secs(5),
        phase_delay: (Duration::from_millis(50), Duration::from_millis(100)),
        ..Config::default()
    };
    let sim: Handle = Server::start_with("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    sim.seed_secret(
        "default",
        "bmc-auth",
        &[("username", "admin"), ("password", "password")],
    );
    for i in 0..n {
        // Halted VMs cost the simulator nothing to run and are watched all the same.
        let strategy = if i == 0 { "Always" } else { "Halted" };
        sim.seed_vm("default", &format!("vm-{i}"), strategy);
        sim.seed_vmbmc(
            "default",
            &format!("vm-{i}"),
            &format!("vm-{i}"),
            "bmc-auth",
        );
    }
    let started = Instant::now();
    let controller = Agent(
        Command::new(bin)
            .args(["--kube-url", &sim.url(), "--role", "controller"])
            .args(["--port-range", "20000-31999"])
            .args([
                "--identity",
                "bench-controller",
                "--admin",
                CONTROLLER_ADMIN,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the controller"),
    );
    let agent = Agent(
        Command::new(bin)
            .args([
                "--kube-url",
                &sim.url(),
                "--role",
                "agent",
                "--listen",
                "127.0.0.1",
                "--port-range",
                "20000-31999",
            ])
            .args(["--identity", "bench", "--admin", ADMIN])
            .args([
                "--xdp-iface",
                "lo",
                "--ebpf-object",
                object,
                "--bpf-pin-dir",
                PIN_DIR,
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the agent"),
    );
    let pid = agent.0.id();
    while metric("virtbmc_bmcs ").unwrap_or(0.0) < n as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "agent never served all {n} BMCs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = started.elapsed();
    // Steady state: the controller has written every port, Service and condition.
    let all_ready = |sim: &Handle| {
        sim.list(kubesim::Kind::VirtualMachineBmc, Some("default"))
            .iter()
            .filter(|b| {
                b["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
            .count()
    };
    while all_ready(&sim) < n {
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "never all Ready"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let settled = started.elapsed();
    // And every BMC's user copied into the agents' namespace, where the agent reads it.
    let copies = |sim: &Handle| {
        sim.list(kubesim::Kind::Secret, Some("default"))
            .iter()
            .filter(|s| s["metadata"]["labels"]["app.kubernetes.io/component"] == "bmc-credentials")
            .count()
    };
    while copies(&sim) < n {
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "never all credentials copied"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let copied = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpid = controller.0.id();
    let ((rss0, cpu0), (crss0, ccpu0)) = (proc_stat(pid), proc_stat(cpid));
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let ((rss, cpu1), (crss, ccpu1)) = (proc_stat(pid), proc_stat(cpid));
    let ticks = 100.0; // USER_HZ
    let cpu = |a: u64, b: u64| (b - a) as f64 / ticks / window.as_secs_f64() * 100.0;
    println!(
        "{n:>6} VMs: all BMCs served after {:>5.1} s, all Ready after {:>5.1} s, every user copied for the agents after {:>5.1} s",
        ready.as_secs_f64(),
        settled.as_secs_f64(),
        copied.as_secs_f64(),
    );
    println!(
        "        agent      RSS {rss:>7} KiB = {:>5.1} KiB per BMC; steady CPU {:.2} % of a core (RSS {rss0} KiB before the window)",
        rss as f64 / n as f64,
        cpu(cpu0, cpu1)
    );
    println!(
        "        controller RSS {crss:>7} KiB = {:>5.1} KiB per BMC; steady CPU {:.2} % of a core (RSS {crss0} KiB before the window)",
        crss as f64 / n as f64,
        cpu(ccpu0, ccpu1)
    );

    // Latency of a phase change, on vm-0 (runStrategy Always: its VMI is Running).
    let vmbmc = sim
        .get(kubesim::Kind::VirtualMachineBmc, "default", "vm-0")
        .expect("vmbmc");
    let port = vmbmc["status"]["port"].as_u64().expect("port") as u16;
    sim.wait_vmi_phase("default", "vm-0", "Running", Duration::from_secs(60))
        .await;
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(target).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut exchange = |d: &[u8]| {
        sock.send(d).ok()?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    };
    let mut s =
        V20Session::open("admin", "password", suite(17), 0x14, &mut exchange).expect("session");
    let (mut to_map, mut to_answer) = (Vec::new(), Vec::new());
    for round in 0..20 {
        let (phase, want) = if round % 2 == 0 {
            ("Scheduled", 0u8)
        } else {
            ("Running", 1u8)
        };
        let t0 = Instant::now();
        sim.set_vmi_phase("default", "vm-0", phase);
        let (mut map_at, mut answer_at) = (None, None);
        while (map_at.is_none() || answer_at.is_none()) && t0.elapsed() < Duration::from_secs(5) {
            if map_at.is_none() && map_power(port) == Some(want) {
                map_at = Some(t0.elapsed());
            }
            if answer_at.is_none() {
                let got = s
                    .call(0x00, 0x01, &[], &mut exchange)
                    .ok()
                    .map(|(_, d)| d.first().copied().unwrap_or(9) & 1);
                if got == Some(want) {
                    answer_at = Some(t0.elapsed());
                }
            }
        }
        to_map.push(map_at.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3));
        to_answer.push(answer_at.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3));
        // Let the simulated controller settle before the next flip.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let missed = to_map
        .iter()
        .chain(&to_answer)
        .filter(|x| x.is_nan())
        .count();
    println!(
        "        VMI phase change -> fast-path map updated: p50 {:.1} ms, p99 {:.1} ms; -> userspace answers it: p50 {:.1} ms, p99 {:.1} ms (20 flips, {missed} samples over 5 s left out; map read with bpftool, ~ms resolution)",
        pct(&mut to_map.clone(), 0.5),
        pct(&mut to_map, 0.99),
        pct(&mut to_answer.clone(), 0.5),
        pct(&mut to_answer, 0.99)
    );
    drop(agent);
    drop(controller);
    sim.stop().await;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bin = args
        .first()
        .cloned()
        .unwrap_or_else(|| "target/release/virtbmc".into());
    let object = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/bpfel-unknown-none/release/virtbmc-ebpf".into());
    let sizes: Vec<usize> = if args.len() > 2 {
        args[2..].iter().filter_map(|s| s.parse().ok()).collect()
    } else {
        vec![1_000, 10_000]
    };
    let _ = Command::new("ip")
        .args(["netns", "del", NS_NAME])
        .stderr(Stdio::null())
        .status();
    sh(&format!(
        "ip netns add {NS_NAME} && ip -n {NS_NAME} link set lo up"
    ));
    let _guard = Netns;
    println!(
        "== cluster mode: kubesim + controller + agent (--kube, XDP on lo) in namespace {NS_NAME}"
    );
    // Everything below runs in the namespace: this thread, the runtime's threads it spawns,
    // and the agent process.
    let ns = std::fs::File::open(format!("/run/netns/{NS_NAME}")).expect("netns");
    // SAFETY: setns on the calling thread with a valid namespace fd.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    for n in sizes {
        rt.block_on(run(&bin, &object, n));
    }
}
