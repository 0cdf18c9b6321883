//! Raw UDP for the end-to-end tests, run inside a namespace with `ip netns exec`; std only.
//!
//! `virtbmc-e2e-udp send IP:PORT WAIT_MS`: reads one hex datagram per stdin line, sends each
//! from one socket, waits up to WAIT_MS for a reply after each and prints `reply <hex>` or
//! `none`, one line per datagram.
//!
//! `virtbmc-e2e-udp echo IP:PORT COUNT`: echoes COUNT datagrams back (fixture self-test).

use std::io::{BufRead, Write};
use std::net::UdpSocket;
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
