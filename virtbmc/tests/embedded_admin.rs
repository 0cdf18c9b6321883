//! The agent binary in embedded mode on loopback (no root): `/readyz` says ready only with
//! every BMC socket bound.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free right now on 127.0.0.1 (TCP or UDP as asked).
fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut resp = String::new();
    c.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, resp.split_once("\r\n\r\n")?.1.to_string()))
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn readyz_answers_once_the_bmc_sockets_are_bound() {
    let (p1, p2) = (free_port(true), free_port(true));
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port(false)).parse().unwrap();
    let mut agent = Kill(
        Command::new(env!("CARGO_BIN_EXE_virtbmc"))
            .args(["--listen", "127.0.0.1", "--user", "admin:password"])
            .args(["--vm", &format!("vm1={p1}"), "--vm", &format!("vm2={p2}")])
            .args(["--admin", &admin.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the agent starts"),
    );
    let end = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Some((code, body)) = get(admin, "/readyz") {
            assert_eq!(code, 200, "{body}");
            break body;
        }
        assert!(
            agent.0.try_wait().unwrap().is_none(),
            "the agent exited before answering"
        );
        assert!(Instant::now() < end, "admin endpoint never answered");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(body, "ok\n");
    // Ready means bound: both BMC ports are taken by the agent.
    for p in [p1, p2] {
        let e = UdpSocket::bind(("127.0.0.1", p)).expect_err("the BMC port is the agent's");
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "port {p}: {e}");
    }
}
