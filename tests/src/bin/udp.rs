//! Raw UDP for the end-to-end tests, run inside a namespace with `ip netns exec`; std only.
//!
//! `virtbmc-e2e-udp send IP:PORT WAIT_MS`: reads one hex datagram per stdin line, sends each
//! from one socket, waits up to WAIT_MS for a reply after each and prints `reply <hex>` or
//! `none`, one line per datagram.
//!
//! `virtbmc-e2e-udp echo IP:PORT COUNT`: echoes COUNT datagrams back (fixture self-test).
//!
//! `virtbmc-e2e-udp open-flood IP:PORT SOURCES SECONDS`: sends RMCP+ Open Session Requests
//! (suite 3, a console id of their own each) from SOURCES loopback addresses 127.0.0.2 on,
//! round robin, for SECONDS (at most 20,000 per second and 1,000,000 in all), reading none
//! of the answers: sources that never go on to RAKP1, as spoofed ones would not. Prints
//! `sent N` at the end. Run it where the target is a local address (the agent's namespace).
//!
//! `virtbmc-e2e-udp dup-proxy LISTEN TARGET`: a UDP relay that forwards every datagram a
//! client sends to TARGET and the replies back, and sends every in-session request (nonzero
//! session id) twice, as a network that duplicates packets (or a client retransmitting
//! at once) would. Prints `ready` once listening; runs until killed.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: virtbmc-e2e-udp send IP:PORT WAIT_MS < hex-lines | echo IP:PORT COUNT");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["send", target, wait] => send(target, wait.parse().unwrap_or_else(|_| usage())),
        ["echo", bind, count] => echo(bind, count.parse().unwrap_or_else(|_| usage())),
        ["dup-proxy", listen, target] => dup_proxy(listen, target),
        ["open-flood", target, sources, secs] => open_flood(
            target,
            sources.parse().unwrap_or_else(|_| usage()),
            secs.parse().unwrap_or_else(|_| usage()),
        ),
        _ => usage(),
    }
}

fn send(target: &str, wait_ms: u64) {
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
    sock.connect(target).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(wait_ms.max(1))))
        .unwrap();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut buf = [0u8; 4096];
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("stdin");
        let datagram = virtbmc_e2e::hex::decode(&line).expect("hex datagram");
        // ECONNREFUSED left by an earlier ICMP error is not fatal: keep sending.
        let _ = sock.send(&datagram);
        match sock.recv(&mut buf) {
            Ok(n) => writeln!(out, "reply {}", virtbmc_e2e::hex::encode(&buf[..n])).unwrap(),
            Err(_) => writeln!(out, "none").unwrap(),
        }
        out.flush().unwrap();
    }
}

fn open_flood(target: &str, sources: u8, secs: u64) {
    let target: SocketAddr = target.parse().expect("target IP:PORT");
    let socks: Vec<UdpSocket> = (0..sources.clamp(1, 250))
        .map(|i| UdpSocket::bind(("127.0.0.".to_string() + &(i + 2).to_string(), 0)).expect("bind"))
        .collect();
    let start = std::time::Instant::now();
    let mut sent: u32 = 0;
    while start.elapsed() < Duration::from_secs(secs.min(60)) && sent < 1_000_000 {
        // RMCP, RMCP+ session-less Open Session Request (IPMI 2.0 §13.17) for suite 3.
        let mut d = vec![
            0x06, 0x00, 0xff, 0x07, 0x06, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0,
        ];
        d.extend_from_slice(&[sent as u8, 0, 0, 0]);
        d.extend_from_slice(&(0x5000_0000 + sent).to_le_bytes());
        for kind in 0u8..3 {
            d.extend_from_slice(&[kind, 0, 0, 8, 1, 0, 0, 0]);
        }
        let _ = socks[sent as usize % socks.len()].send_to(&d, target);
        sent += 1;
        std::thread::sleep(Duration::from_micros(50));
    }
    println!("sent {sent}");
}

fn echo(bind: &str, count: usize) {
    let sock = UdpSocket::bind(bind).expect("bind");
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..count {
        let (n, from) = sock.recv_from(&mut buf).expect("recv");
        sock.send_to(&buf[..n], from).expect("send");
    }
}

/// An RMCP datagram of class IPMI that belongs to an established or pending session: IPMI 1.5
/// (session id at bytes 9..13) or an RMCP+ IPMI payload (type 0, session id at bytes 6..10).
/// Session set-up messages (Open Session, RAKP) are not duplicated.
fn in_session(d: &[u8]) -> bool {
    if d.len() < 14 || d[0] != 0x06 || d[3] != 0x07 {
        return false;
    }
    if d[4] == 0x06 {
        d[5] & 0x3f == 0x00 && d[6..10] != [0; 4]
    } else {
        d[9..13] != [0; 4]
    }
}

fn dup_proxy(listen: &str, target: &str) {
    let front = UdpSocket::bind(listen).expect("bind");
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut upstream: HashMap<SocketAddr, UdpSocket> = HashMap::new();
    let mut buf = [0u8; 4096];
    loop {
        let (n, client) = front.recv_from(&mut buf).expect("recv");
        let up = upstream.entry(client).or_insert_with(|| {
            // One upstream socket per client, so replies find their way back.
            let up = UdpSocket::bind("0.0.0.0:0").expect("bind upstream");
            up.connect(target).expect("connect");
            let (back, front) = (up.try_clone().unwrap(), front.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = back.recv(&mut buf) {
                    let _ = front.send_to(&buf[..n], client);
                }
            });
            up
        });
        let _ = up.send(&buf[..n]);
        if in_session(&buf[..n]) {
            let _ = up.send(&buf[..n]);
            // Counted by the test, so that it knows duplicates really went out.
            eprintln!("dup {n}");
        }
    }
}
