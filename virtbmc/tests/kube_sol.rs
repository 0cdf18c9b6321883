//! Serial-over-LAN in cluster mode, end to end: the agent against kubesim, real SOL clients
//! under a terminal, the VMI's console subresource behind them. Boot output and echo, a new
//! instance's boot on the same SOL session, a VM that is off, and a person's console that
//! takes the line.

mod kube_support;
mod pty;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kube_support::*;
use pty::Terminal;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const VM: &str = "default/vm1";

/// Runs blocking terminal work without stalling the runtime's other tasks (the agent).
fn blk<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

fn ipmitool_sol(port: u16, extra: &[&str]) -> Terminal {
    let port = port.to_string();
    let mut argv = vec![
        "ipmitool",
        "-I",
        "lanplus",
        "-H",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "admin",
        "-P",
        "password",
    ];
    argv.extend_from_slice(extra);
    argv.extend_from_slice(&["sol", "activate"]);
    pty::spawn(&argv)
}

/// Get Payload Activation Status for SOL as `ipmitool raw` prints it: capacity 1, then the
/// bitmap of active instances.
async fn sol_active_bitmap(port: u16) -> String {
    let out = admin(port, &["raw", "0x06", "0x4a", "0x01"]).await;
    assert!(out.ok, "{}", out.text);
    out.text.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn running(sim: &kubesim::Handle) -> String {
    sim.wait_vmi_phase(NS, "vm1", "Running", T)
        .await
        .expect("VMI running")
}

/// Reads the person's console until its output contains `needle`.
async fn person_reads(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>, needle: &str) {
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(needle) {
        match tokio::time::timeout(T, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => got.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!(
                "the person's console ended waiting for {needle:?} ({other:?}); read {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

/// ipmitool's debug lines (`-vv`) for each SOL packet it receives: the status bits.
const INACTIVE: &str = "< SOL inactive            : true";
const UNAVAILABLE: &str = "< SOL xfer unavailable    : true";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmitool_sol_shows_boots_echoes_and_yields_to_a_persons_console() {
    let sim = sim().await;
    seed(&sim, "vm1", "Always");
    let agent = Agent::start(&sim, "agent-s1", 31500..=31509).await;
    let port = agent.wait_served(VM).await;
    until_login(port, "admin", "password").await;
    let uid1 = running(&sim).await;

    let mut t = blk(|| ipmitool_sol(port, &["-vv"]));
    blk(|| t.expect("[SOL Session operational", T));
    assert_eq!(
        sol_active_bitmap(port).await,
        "01 01 00",
        "instance 1 active"
    );
    // Output the guest wrote before anyone read it comes first (kubesim holds it, as a
    // serial port's buffer would); Enter brings the prompt again.
    let boot = blk(|| t.expect("vm1 login: ", T));
    assert!(boot.contains(&format!("instance {uid1}")), "{boot:?}");
    blk(|| t.send("\r"));
    blk(|| t.expect("\r\nvm1 login: ", T));
    blk(|| t.send("hello-sol\r"));
    let echoed = blk(|| t.expect("vm1 login: ", T));
    assert!(echoed.contains("hello-sol\r\n"), "{echoed:?}");
    assert!(sim.console_attached(NS, "vm1"));

    // A power cycle from another client replaces the VMI: its boot comes on the same SOL
    // session, and typing reaches the new guest.
    let out = admin(port, &["power", "cycle"]).await;
    assert!(out.ok, "{}", out.text);
    blk(|| t.expect("Linux version 6.12.0-kubesim", T));
    let boot = blk(|| t.expect("vm1 login: ", T));
    let uid2 = sim.vmi_uid(NS, "vm1").unwrap();
    assert_ne!(uid1, uid2);
    assert!(boot.contains(&format!("instance {uid2}")), "{boot:?}");
    blk(|| t.send("again\r"));
    blk(|| t.expect("again\r\nvm1 login: ", T));

    // A hard reset is a forced restart in KubeVirt: a third instance, on the same session.
    let out = admin(port, &["power", "reset"]).await;
    assert!(out.ok, "{}", out.text);
    let uid3 = loop {
        let boot = blk(|| t.expect("vm1 login: ", T));
        let uid3 = sim.vmi_uid(NS, "vm1").unwrap();
        if uid3 != uid2 && boot.contains(&format!("instance {uid3}")) {
            break uid3;
        }
    };
    assert_ne!(uid3, uid1);
    assert_eq!(sol_active_bitmap(port).await, "01 01 00");
    // Nothing told the client SOL ended along the way.
    assert!(!t.transcript().contains(INACTIVE), "{}", t.transcript());

    // A person opens the console: kubesim gives it to them and closes ours; the agent ends
    // SOL and tells its client (the status bit "SOL deactivating", IPMI 2.0 §15.9).
    let mut person = person_console(&sim, "vm1").await;
    blk(|| t.expect(INACTIVE, T));
    assert_eq!(sol_active_bitmap(port).await, "01 00 00", "SOL ended");
    // ipmitool ignores the bit; its next keystroke finds no SOL at the BMC and it leaves.
    blk(|| t.send("x"));
    let (code, rest) = blk(|| t.wait_exit(T));
    assert_eq!(code, 1, "{}", t.transcript());
    assert!(rest.contains("SOL session closed by BMC"), "{rest:?}");

    // The line stays the person's: past the agent's grace for telling a restart from a
    // displacement, kubesim still has them on it and their typing echoes.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(sim.console_attached(NS, "vm1"));
    person
        .send(Message::binary(b"mine\r".to_vec()))
        .await
        .unwrap();
    person_reads(&mut person, "mine\r\nvm1 login: ").await;

    // A new SOL session takes the line back on purpose: a new activation is a new ask.
    let mut t2 = blk(|| ipmitool_sol(port, &[]));
    blk(|| t2.expect("[SOL Session operational", T));
    blk(|| t2.send("\r"));
    blk(|| t2.expect("vm1 login: ", T));
    blk(|| t2.send("\r~."));
    let (code, _) = blk(|| t2.wait_exit(T));
    assert_eq!(code, 0, "{}", t2.transcript());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmitool_sol_of_a_vm_that_is_off_has_no_console_until_it_starts() {
    let sim = sim().await;
    seed(&sim, "vm1", "Halted");
    let agent = Agent::start(&sim, "agent-s2", 31510..=31519).await;
    let port = agent.wait_served(VM).await;
    until_login(port, "admin", "password").await;
    agent.wait_power(VM, "off").await;

    let mut t = blk(|| ipmitool_sol(port, &["-vv"]));
    blk(|| t.expect("[SOL Session operational", T));
    // The agent says so: character transfer unavailable (IPMI 2.0 §15.9).
    blk(|| t.expect(UNAVAILABLE, T));
    // Typing goes nowhere and nothing comes back.
    blk(|| t.send("lost\r"));
    let nothing = blk(|| t.try_expect("login: ", Duration::from_secs(2)));
    assert!(nothing.is_err(), "{nothing:?}");

    let out = admin(port, &["power", "on"]).await;
    assert!(out.ok, "{}", out.text);
    let boot = blk(|| t.expect("vm1 login: ", T));
    let uid = sim.vmi_uid(NS, "vm1").unwrap();
    assert!(boot.contains(&format!("instance {uid}")), "{boot:?}");
    assert!(!boot.contains("lost"), "{boot:?}");
    blk(|| t.send("root\r"));
    blk(|| t.expect("root\r\nvm1 login: ", T));

    // Off again: the line goes, the client hears it is unavailable, SOL stays active.
    let before = t.transcript().matches(UNAVAILABLE).count();
    let out = admin(port, &["power", "off"]).await;
    assert!(out.ok, "{}", out.text);
    agent.wait_power(VM, "off").await;
    blk(|| t.expect(UNAVAILABLE, T));
    assert!(t.transcript().matches(UNAVAILABLE).count() > before);
    assert_eq!(sol_active_bitmap(port).await, "01 01 00");
    blk(|| t.send("\r~."));
    let (code, _) = blk(|| t.wait_exit(T));
    assert_eq!(code, 0, "{}", t.transcript());
    assert_eq!(sol_active_bitmap(port).await, "01 00 00");
}

fn ipmiconsole(port: u16) -> Terminal {
    let host = format!("127.0.0.1:{port}");
    pty::spawn(&["ipmiconsole", "-h", &host, "-u", "admin", "-p", "password"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmiconsole_follows_a_restart_and_hears_a_persons_console_take_the_line() {
    let sim = sim().await;
    seed(&sim, "vm1", "Always");
    let agent = Agent::start(&sim, "agent-s3", 31520..=31529).await;
    let port = agent.wait_served(VM).await;
    until_login(port, "admin", "password").await;
    let uid1 = running(&sim).await;

    let mut t = blk(|| ipmiconsole(port));
    blk(|| t.expect("[SOL established]", T));
    blk(|| t.expect("vm1 login: ", T));
    blk(|| t.send("root\r"));
    blk(|| t.expect("root\r\nvm1 login: ", T));

    let out = admin(port, &["power", "cycle"]).await;
    assert!(out.ok, "{}", out.text);
    loop {
        let boot = blk(|| t.expect("vm1 login: ", T));
        let uid = sim.vmi_uid(NS, "vm1").unwrap();
        if boot.contains("Linux version") && boot.contains(&format!("instance {uid}")) {
            assert_ne!(uid, uid1);
            break;
        }
    }

    // A person's console: the agent ends SOL with "deactivating", which freeipmi reports
    // and leaves on.
    let mut person = person_console(&sim, "vm1").await;
    blk(|| t.expect("[SOL session stolen]", T));
    let (code, _) = blk(|| t.wait_exit(T));
    assert_eq!(code, 0, "{}", t.transcript());
    assert_eq!(sol_active_bitmap(port).await, "01 00 00");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(sim.console_attached(NS, "vm1"));
    person
        .send(Message::binary(b"mine\r".to_vec()))
        .await
        .unwrap();
    person_reads(&mut person, "mine\r\nvm1 login: ").await;
}
