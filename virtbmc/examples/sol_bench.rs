//! Serial-over-LAN benchmark (prints figures; asserts nothing). Everything in-process on
//! 127.0.0.1: the simulated cluster (kubesim) with one running VM and its BMC, and the agent in
//! cluster mode serving it.
//!
//! - Keystroke-to-echo latency (p50/p99): a key typed into the VMI's console subresource
//!   directly (as `virtctl console` does), then the same key typed through SOL (a SOL client
//!   of this file's own over RMCP+ with AES, the agent, its console WebSocket to kubesim). SOL
//!   is measured as configured out of the box (the BMC holds characters up to the Character
//!   Accumulate Interval, 60 ms, IPMI 2.0 §26.8 parameter 3) and with the Send Threshold at 1
//!   character, which sends each character as it comes.
//! - Throughput: a guest writing as fast as it can (a backend whose console never stops
//!   writing) through the agent's SOL to the client, which acknowledges every packet.
//!
//! Usage: cargo run --release -p virtbmc --example sol_bench -- [SAMPLES] [SECS]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use virtbmc::agent::metrics::Metrics;
use virtbmc::agent::registry::Registry;
use virtbmc::backend::console::{Console, ConsoleEvent};
use virtbmc::backend::{ActionFuture, Backend};
use virtbmc::cluster::{ClusterOptions, KubeBackend, serve};
use virtbmc::console::{V20Session, suite};
use virtbmc::engine::config::{BmcConfig, Privilege, User};
use virtbmc::engine::{Action, PowerState, VmView};

const PAYLOAD_SOL: u8 = 0x01;
const WAIT: Duration = Duration::from_secs(15);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// One SOL client: an RMCP+ session (suite 3: HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128) with the
/// SOL payload activated, acknowledging every character packet (§15.9).
struct SolClient {
    sock: UdpSocket,
    s: V20Session,
    seq: u8,
}

impl SolClient {
    fn connect(target: SocketAddr) -> SolClient {
        Self::try_connect(target).expect("RMCP+ session")
    }

    fn try_connect(target: SocketAddr) -> Result<SolClient, virtbmc::console::ConsoleError> {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.connect(target).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = vec![0u8; 2048];
        let mut exchange = |d: &[u8]| -> Option<Vec<u8>> {
            sock.send(d).ok()?;
            let n = sock.recv(&mut buf).ok()?;
            Some(buf[..n].to_vec())
        };
        let mut s = V20Session::open("admin", "password", suite(3), 4, &mut exchange)?;
        // Set Session Privilege Level: Administrator (SOL configuration needs it).
        let (cc, _) = s.call(0x06, 0x3B, &[0x04], &mut exchange)?;
        if cc != 0 {
            return Err(virtbmc::console::ConsoleError::Completion(cc));
        }
        Ok(SolClient { sock, s, seq: 0 })
    }

    fn call(&mut self, net_fn: u8, cmd: u8, data: &[u8]) -> (u8, Vec<u8>) {
        let req = self.s.request(net_fn, cmd, data);
        self.sock.send(&req).expect("send");
        let mut buf = vec![0u8; 2048];
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            if let Ok((0, msg)) = self.s.open_packet(&buf[..n])
                && let Ok(r) = virtbmc::wire::message::Response::parse(&msg)
            {
                return (r.cc, r.data.to_vec());
            }
        }
        panic!("no answer to {net_fn:#04x}/{cmd:#04x}");
    }

    /// Set SOL Configuration Parameters (§26.7), parameter 3: accumulate interval (5 ms
    /// units) and send threshold (characters).
    fn set_accumulate(&mut self, interval_5ms: u8, threshold: u8) {
        let (cc, _) = self.call(0x0C, 0x21, &[0x0E, 3, interval_5ms, threshold]);
        assert_eq!(cc, 0, "Set SOL Configuration Parameters");
    }

    fn activate(&mut self) {
        let (cc, data) = self.call(0x06, 0x48, &[PAYLOAD_SOL, 1, 0xC6, 0, 0, 0]);
        assert_eq!((cc, data.len()), (0, 12), "Activate Payload");
    }

    fn deactivate(&mut self) {
        let (cc, _) = self.call(0x06, 0x49, &[PAYLOAD_SOL, 1, 0, 0, 0, 0]);
        assert_eq!(cc, 0, "Deactivate Payload");
    }

    fn send_sol(&mut self, seq: u8, ack: u8, accepted: u8, data: &[u8]) {
        let mut p = vec![seq, ack, accepted, 0];
        p.extend_from_slice(data);
        let pkt = self.s.packet(PAYLOAD_SOL, &p);
        self.sock.send(&pkt).expect("send");
    }

    /// Types `data` (one packet, resent until acknowledged).
    fn type_in(&mut self, data: &[u8]) -> u8 {
        self.seq = self.seq % 15 + 1;
        self.send_sol(self.seq, 0, 0, data);
        self.seq
    }

    /// The next SOL packet's characters (acknowledged), and the ack it carried; None on a
    /// quiet second.
    fn receive(&mut self, buf: &mut [u8]) -> Option<(Vec<u8>, u8)> {
        let n = self.sock.recv(buf).ok()?;
        let Ok((PAYLOAD_SOL, p)) = self.s.open_packet(&buf[..n]) else {
            return Some((Vec::new(), 0));
        };
        if p.len() < 4 {
            return Some((Vec::new(), 0));
        }
        let (seq, ack, data) = (p[0], p[1], p[4..].to_vec());
        if seq != 0 && !data.is_empty() {
            self.send_sol(0, seq, data.len().min(255) as u8, &[]);
        }
        Some((data, ack))
    }

    /// Types `key` and reads until `echo` comes back: the time it took.
    fn echo(&mut self, key: &[u8], echo: &[u8]) -> Duration {
        let mut buf = vec![0u8; 2048];
        let start = Instant::now();
        let seq = self.type_in(key);
        let mut acked = false;
        let mut sent_at = start;
        let mut got = Vec::new();
        while !got.windows(echo.len()).any(|w| w == echo) {
            assert!(start.elapsed() < WAIT, "no echo of {key:?}; got {got:?}");
            if let Some((data, ack)) = self.receive(&mut buf) {
                acked |= ack == seq;
                got.extend_from_slice(&data);
            }
            if !acked && sent_at.elapsed() > Duration::from_millis(500) {
                // Lost on loopback is unlikely; resend as a console would (§15.9).
                self.send_sol(seq, 0, 0, key);
                sent_at = Instant::now();
            }
        }
        start.elapsed()
    }
}

/// A key and its echo, alternately: a letter, then the backspace that erases it, so the line
/// never grows.
const KEYS: [(&[u8], &[u8]); 2] = [(b"a", b"a"), (b"\x7f", b"\x08 \x08")];

fn sol_latency(target: SocketAddr, samples: usize, threshold: u8) -> Vec<Duration> {
    let mut c = SolClient::connect(target);
    c.set_accumulate(12, threshold);
    c.activate();
    // The guest is on the line once Enter brings its prompt.
    c.echo(b"\r", b"login: ");
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let (k, e) = KEYS[i % 2];
        lat.push(c.echo(k, e));
    }
    c.deactivate();
    lat.sort();
    lat
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn direct_console(sim: &kubesim::Handle) -> Ws {
    let url = format!(
        "ws://{}/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/vm1/console",
        sim.addr()
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "plain.kubevirt.io".parse().unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    tokio_tungstenite::client_async(req, tcp).await.unwrap().0
}

async fn ws_until(ws: &mut Ws, want: &[u8]) {
    let mut got = Vec::new();
    while !got.windows(want.len()).any(|w| w == want) {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!("console ended: {other:?}"),
        }
    }
}

async fn direct_latency(sim: &kubesim::Handle, samples: usize) -> Vec<Duration> {
    let mut ws = direct_console(sim).await;
    ws.send(Message::binary(b"\r".to_vec())).await.unwrap();
    ws_until(&mut ws, b"login: ").await;
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let (k, e) = KEYS[i % 2];
        let start = Instant::now();
        ws.send(Message::binary(k.to_vec())).await.unwrap();
        ws_until(&mut ws, e).await;
        lat.push(start.elapsed());
    }
    let _ = ws.close(None).await;
    lat.sort();
    lat
}

/// A machine that is always on, whose console writes as fast as it is read.
struct Flood {
    changes: tokio::sync::broadcast::Sender<Arc<str>>,
    written: Arc<AtomicU64>,
}

impl Backend for Flood {
    fn view(&self, _vm: &str) -> Option<VmView> {
        Some(VmView {
            power: PowerState::On,
            boot: None,
            guid: [0; 16],
        })
    }

    fn perform(&self, _vm: &str, _a: Action, _d: tokio::time::Instant) -> ActionFuture {
        Box::pin(async { Ok(()) })
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.changes.subscribe()
    }

    fn open_console(&self, _vm: &str) -> Console {
        let (console, events, _input) = Console::channel();
        let written = self.written.clone();
        tokio::spawn(async move {
            let _input = _input;
            if events.send(ConsoleEvent::Attached).await.is_err() {
                return;
            }
            // Printable text in 64-byte writes, as a guest's tty driver hands the UART.
            let chunk: Vec<u8> = (0..64).map(flood_byte).collect();
            while events
                .send(ConsoleEvent::Output(chunk.clone()))
                .await
                .is_ok()
            {
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        });
        console
    }
}

/// What the flooding guest writes at stream offset `k` (the 64-byte chunk of [`Flood`]).
fn flood_byte(k: u64) -> u8 {
    b' ' + (k % 64) as u8
}

/// Bytes the client received through SOL in `secs`, acknowledging each packet; packets, and
/// bytes that were not the guest's next (lost, doubled or out of order).
fn sol_throughput(target: SocketAddr, secs: f64) -> (u64, Duration, u64, u64) {
    let mut c = SolClient::connect(target);
    c.activate();
    let mut buf = vec![0u8; 2048];
    let (mut bytes, mut packets) = (0u64, 0u64);
    // The first packet starts the clock: activation and the console opening are not counted.
    let end = Instant::now() + WAIT;
    let first = loop {
        assert!(Instant::now() < end, "the guest's output never came");
        if let Some((d, _)) = c.receive(&mut buf)
            && !d.is_empty()
        {
            break d;
        }
    };
    // The stream starts at a chunk's start; where the first packet ends is where it goes on.
    let mut offset = first.len() as u64;
    let mut wrong = 0u64;
    let start = Instant::now();
    let span = Duration::from_secs_f64(secs);
    while start.elapsed() < span {
        if let Some((d, _)) = c.receive(&mut buf)
            && !d.is_empty()
        {
            for &b in &d {
                if b != flood_byte(offset) {
                    wrong += 1;
                }
                offset += 1;
            }
            bytes += d.len() as u64;
            packets += 1;
        }
    }
    let took = start.elapsed();
    c.deactivate();
    (bytes, took, packets, wrong)
}

async fn start_agent(
    sim: &kubesim::Handle,
) -> (KubeBackend, Arc<Registry>, Vec<tokio::task::JoinHandle<()>>) {
    let mut kc = kube::Config::new(sim.url().parse().unwrap());
    kc.default_retry = false;
    let client = kube::Client::try_from(kc).unwrap();
    let mut opts = ClusterOptions::new("bench-agent", "virtbmc-system", BmcConfig::new(vec![]));
    opts.port_range = 31700..=31709;
    let metrics = Arc::new(Metrics::default());
    let (backend, writers) = KubeBackend::new(client, opts, metrics.clone());
    let registry = Arc::new(Registry::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        Arc::new(backend.clone()),
        metrics,
        Duration::from_secs(3),
        Arc::new(std::sync::Mutex::new(virtbmc::fastpath::FastPath::off())),
    ));
    let tasks = serve::spawn(&backend, writers, registry.clone());
    (backend, registry, tasks)
}

async fn wait_port(registry: &Registry, name: &str) -> u16 {
    let end = Instant::now() + WAIT;
    loop {
        if let Some((_, p)) = registry.list().into_iter().find(|(n, _)| &**n == name) {
            return p;
        }
        assert!(Instant::now() < end, "{name} never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn row(what: &str, lat: &[Duration]) {
    println!(
        "  {what:<58} p50 {:>10}   p99 {:>10}   ({} keys)",
        ms(percentile(lat, 0.5)),
        ms(percentile(lat, 0.99)),
        lat.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let samples: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let secs: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3.0);

    let cfg = kubesim::Config {
        phase_delay: (Duration::from_millis(20), Duration::from_millis(60)),
        ..kubesim::Config::default()
    };
    let sim = kubesim::Server::start_with("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .expect("kubesim");
    sim.seed_vm("default", "vm1", "Always");
    sim.seed_secret(
        "default",
        "vm1-auth",
        &[("username", "admin"), ("password", "password")],
    );
    sim.seed_vmbmc("default", "vm1-bmc", "vm1", "vm1-auth");
    let (_backend, registry, _tasks) = start_agent(&sim).await;
    let port = wait_port(&registry, "default/vm1").await;
    sim.wait_vmi_phase("default", "vm1", "Running", WAIT)
        .await
        .expect("VMI running");
    // The Secret reaches the agent's cache on its own watch: wait until a session opens.
    let target: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let end = Instant::now() + WAIT;
    while SolClient::try_connect(target).is_err() {
        assert!(Instant::now() < end, "no session with the BMC");
        std::thread::sleep(Duration::from_millis(100));
    }

    println!(
        "==> keystroke to echo, one key at a time (letter, backspace), kubesim's guest echoing"
    );
    let direct = direct_latency(&sim, samples).await;
    let immediate = tokio::task::spawn_blocking(move || sol_latency(target, samples, 1))
        .await
        .unwrap();
    let batched_samples = (samples / 10).max(20);
    let batched = tokio::task::spawn_blocking(move || sol_latency(target, batched_samples, 96))
        .await
        .unwrap();
    row(
        "console subresource directly (WebSocket, as virtctl)",
        &direct,
    );
    row("SOL, as shipped (send threshold 1)", &immediate);
    row("SOL, batching (accumulate 60 ms, threshold 96)", &batched);
    println!(
        "  SOL as shipped adds: p50 {}, p99 {}   (aim: under 2 ms at p99)",
        ms(percentile(&immediate, 0.5).saturating_sub(percentile(&direct, 0.5))),
        ms(percentile(&immediate, 0.99).saturating_sub(percentile(&direct, 0.99)))
    );

    println!("\n==> a guest writing as fast as it can, through SOL (default configuration)");
    let flood = Arc::new(Flood {
        changes: tokio::sync::broadcast::channel(16).0,
        written: Arc::new(AtomicU64::new(0)),
    });
    let admin = User::new("admin", "password", Privilege::Admin).expect("user");
    let registry2 = Arc::new(Registry::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        flood.clone(),
        Arc::new(Metrics::default()),
        Duration::from_secs(3),
        Arc::new(std::sync::Mutex::new(virtbmc::fastpath::FastPath::off())),
    ));
    registry2
        .add("flood", 31720, Arc::new(BmcConfig::new(vec![admin])))
        .await
        .expect("flood BMC");
    let target: SocketAddr = "127.0.0.1:31720".parse().unwrap();
    let (bytes, took, packets, wrong) =
        tokio::task::spawn_blocking(move || sol_throughput(target, secs))
            .await
            .unwrap();
    let bps = bytes as f64 * 8.0 / took.as_secs_f64();
    println!(
        "  {bytes} bytes in {packets} packets in {:.2}s: {:.0} bit/s ({:.1}x a 115,200 bit/s line; aim: at least 1x), {:.0} bytes a packet",
        took.as_secs_f64(),
        bps,
        bps / 115_200.0,
        bytes as f64 / packets.max(1) as f64
    );
    println!(
        "  the guest wrote {} bytes; bytes received out of the guest's order: {wrong}",
        flood.written.load(Ordering::Relaxed)
    );
}
