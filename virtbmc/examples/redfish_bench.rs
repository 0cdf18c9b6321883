//! Redfish benchmark (prints figures; asserts nothing).
//!
//! Starts the release agent (embedded backend) on loopback and measures, side by side with
//! the same work through IPMI on the same BMC:
//! - reading the machine: GET `/redfish/v1/Systems/1` (Basic auth, HTTP/1.1 keep-alive)
//!   against Get Chassis Status in an RMCP+ session (suite 17), from 1 and 4 clients;
//! - a power change: `ComputerSystem.Reset` On and ForceOff in turn against Chassis Control
//!   up and down, one client;
//! - resident memory per BMC with Redfish on and with `--no-redfish`.
//!
//! Usage: cargo run --release -p virtbmc --example redfish_bench -- AGENT_BIN [SECONDS]
//! Ports: BMCs on 127.0.0.1:21000 and 22000-23999, admin 11623+.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use virtbmc::console::{V20Session, suite};

#[path = "bench/process.rs"]
mod process;
use process::{Agent, die_with_parent, rss_kib};

fn start_agent(bin: &str, bmcs: u32, base_port: u16, admin_port: u16, extra: &[&str]) -> Agent {
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1", "--generate", &bmcs.to_string()])
        .args(["--base-port", &base_port.to_string()])
        .args(["--user", "admin:password:admin"])
        .args(["--admin", &format!("127.0.0.1:{admin_port}")])
        // Transitions as short as the embedded backend allows: the figure is the protocol's
        // cost, not the simulated machine's.
        .args(["--transition-ms", "0"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    die_with_parent(&mut cmd);
    let agent = Agent(cmd.spawn().expect("start the agent"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", admin_port)).is_err() {
        assert!(Instant::now() < deadline, "agent did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

/// The agent's certificate is self-signed: the benchmark measures, it does not verify.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One keep-alive HTTPS connection that sends requests and reads whole responses.
struct Https(StreamOwned<ClientConnection, TcpStream>);

impl Https {
    fn connect(config: &Arc<ClientConfig>, port: u16) -> Https {
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let conn = ClientConnection::new(config.clone(), name).expect("TLS client");
        Https(StreamOwned::new(conn, tcp))
    }

    /// Sends one request with Basic auth (admin:password); returns the status code.
    fn call(&mut self, method: &str, path: &str, body: &str) -> u16 {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic YWRtaW46cGFzc3dvcmQ=\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.0.write_all(head.as_bytes()).expect("send");
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = self.0.read(&mut chunk).expect("receive");
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + length {
            let n = self.0.read(&mut chunk).expect("receive body");
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
        }
        head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
    }
}

/// Answers per second from `clients` threads, each repeating `one` for `secs`; `one` returns
/// whether the answer was the expected one.
fn rate<C: 'static>(
    clients: usize,
    secs: f64,
    open: impl Fn() -> C + Send + Sync + 'static,
    one: impl Fn(&mut C, u64) -> bool + Send + Sync + 'static,
) -> (f64, u64) {
    let open = Arc::new(open);
    let one = Arc::new(one);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (open, one) = (open.clone(), one.clone());
            std::thread::spawn(move || {
                let mut c = open();
                let (mut ok, mut bad, mut i) = (0u64, 0u64, 0u64);
                let t = Instant::now();
                while t.elapsed().as_secs_f64() < secs {
                    if one(&mut c, i) {
                        ok += 1;
                    } else {
                        bad += 1;
                    }
                    i += 1;
                }
                (ok, bad)
            })
        })
        .collect();
    let (ok, bad) = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    (ok as f64 / start.elapsed().as_secs_f64(), bad)
}

/// An RMCP+ session (suite 17, administrator) on its own socket.
struct Ipmi {
    sock: UdpSocket,
    session: V20Session,
}

impl Ipmi {
    fn open(port: u16) -> Ipmi {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let session = V20Session::open("admin", "password", suite(17), 0x14, &mut exchange(&sock))
            .expect("RMCP+ session");
        let mut ipmi = Ipmi { sock, session };
        // The session starts at User, as ipmitool's do: raise it for Chassis Control.
        assert!(ipmi.call(0x06, 0x3B, &[4]), "Set Session Privilege Level");
        ipmi
    }

    fn call(&mut self, net_fn: u8, cmd: u8, data: &[u8]) -> bool {
        let mut ex = exchange(&self.sock);
        matches!(self.session.call(net_fn, cmd, data, &mut ex), Ok((0, _)))
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
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = rustls::crypto::CryptoProvider::get_default()
        .expect("a crypto provider")
        .clone();
    let tls = Arc::new(
        ClientConfig::builder()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
    );

    const PORT: u16 = 21000;
    let agent = start_agent(&bin, 1, PORT, 11623, &[]);
    let target: SocketAddr = ([127, 0, 0, 1], PORT).into();
    println!(
        "== one BMC on loopback ({secs} s per figure; {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "", "Redfish /s", "IPMI /s", "ratio"
    );
    let row = |name: &str, (r, r_bad): (f64, u64), (i, i_bad): (f64, u64)| {
        let failed = if r_bad + i_bad > 0 {
            format!("   failed: Redfish {r_bad}, IPMI {i_bad}")
        } else {
            String::new()
        };
        println!(
            "{name:<44} {r:>12.0} {i:>12.0} {:>7.2}x{failed}",
            r / i.max(1.0)
        );
    };
    for clients in [1, 4] {
        let c = tls.clone();
        let redfish = rate(
            clients,
            secs,
            move || Https::connect(&c, PORT),
            |h, _| h.call("GET", "/redfish/v1/Systems/1", "") == 200,
        );
        let ipmi = rate(
            clients,
            secs,
            move || Ipmi::open(target.port()),
            |s, _| s.call(0x00, 0x01, &[]),
        );
        row(
            &format!("read the machine, {clients} client(s)"),
            redfish,
            ipmi,
        );
    }
    let c = tls.clone();
    let redfish = rate(
        1,
        secs,
        move || Https::connect(&c, PORT),
        |h, i| {
            let kind = if i % 2 == 0 { "On" } else { "ForceOff" };
            let body = format!("{{\"ResetType\":\"{kind}\"}}");
            (200..300).contains(&h.call(
                "POST",
                "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                &body,
            ))
        },
    );
    let ipmi = rate(
        1,
        secs,
        move || Ipmi::open(target.port()),
        |s, i| s.call(0x00, 0x02, &[if i % 2 == 0 { 1 } else { 0 }]),
    );
    row("power on / off in turn, 1 client", redfish, ipmi);
    let c = tls.clone();
    let handshakes = rate(
        1,
        secs,
        || (),
        move |_, _| Https::connect(&c, PORT).call("GET", "/redfish/v1/", "") == 200,
    );
    println!(
        "{:<44} {:>12.0}   (a new TLS connection per request)",
        "service root, new connection each", handshakes.0
    );
    drop(agent);

    println!("\n== agent memory (VmRSS after start-up, idle)");
    println!(
        "{:>6}  {:>16} {:>16}",
        "BMCs", "Redfish on KiB", "--no-redfish KiB"
    );
    let mut per = Vec::new();
    let mut admin = 11624;
    for extra in [&[][..], &["--no-redfish"][..]] {
        let mut rss = Vec::new();
        for n in [1u32, 2000] {
            let agent = start_agent(&bin, n, 22000, admin, extra);
            admin += 1;
            std::thread::sleep(Duration::from_millis(500));
            rss.push(rss_kib(agent.0.id()));
        }
        per.push(rss);
    }
    for (i, n) in [1, 2000].iter().enumerate() {
        println!("{n:>6}  {:>16} {:>16}", per[0][i], per[1][i]);
    }
    let each = |r: &Vec<u64>| r[1].saturating_sub(r[0]) as f64 / 1999.0;
    println!(
        "per additional BMC: {:.1} KiB with Redfish, {:.1} KiB without ({:.2}x)",
        each(&per[0]),
        each(&per[1]),
        each(&per[0]) / each(&per[1]).max(0.1)
    );
}
