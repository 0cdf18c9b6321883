//! The cluster backend's serial console against kubesim's console subresource (the
//! plain.kubevirt.io WebSocket, one client per VMI): boot output and echo, restarts, power
//! off, another client taking the line, backpressure, and closing.

mod kube_support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kube_support::*;
use tokio_tungstenite::tungstenite::Message;
use virtbmc::backend::Backend;
use virtbmc::backend::console::{Console, ConsoleEvent, ConsoleInput, QUEUE_DEPTH};
use virtbmc::engine::Action;

const VM: &str = "default/vm1";

async fn next(c: &mut Console) -> Option<ConsoleEvent> {
    tokio::time::timeout(T, c.events.recv())
        .await
        .expect("no console event in time")
}

/// Reads events until the output since the call contains `needle`; every other event on the
/// way goes into `others`. Returns the output.
async fn output_until(c: &mut Console, needle: &str, others: &mut Vec<ConsoleEvent>) -> String {
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains(needle) {
        match next(c).await {
            Some(ConsoleEvent::Output(b)) => out.extend_from_slice(&b),
            Some(e) => others.push(e),
            None => panic!("console ended waiting for {needle:?}; read {out:?}, saw {others:?}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Events up to the next Attached, which must come; NoConsole may precede it.
async fn until_attached(c: &mut Console) {
    loop {
        match next(c).await {
            Some(ConsoleEvent::Attached) => return,
            Some(ConsoleEvent::NoConsole) => {}
            other => panic!("expected Attached, got {other:?}"),
        }
    }
}

async fn type_in(c: &Console, bytes: &[u8]) {
    c.input
        .send(ConsoleInput::Bytes(bytes.to_vec()))
        .await
        .unwrap();
}

async fn running(sim: &kubesim::Handle) -> String {
    sim.wait_vmi_phase(NS, "vm1", "Running", T)
        .await
        .expect("VMI running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_output_echo_and_a_restart() {
    let sim = sim().await;
    seed(&sim, "vm1", "Always");
    let agent = Agent::start(&sim, "agent-c1", 31400..=31409).await;
    agent.wait_served(VM).await;
    let uid1 = running(&sim).await;
    let mut c = agent.backend.open_console(VM);
    until_attached(&mut c).await;
    let mut others = vec![];
    let boot = output_until(&mut c, "vm1 login: ", &mut others).await;
    assert!(boot.contains(&format!("instance {uid1}")), "{boot:?}");
    assert!(boot.contains("Linux version"), "{boot:?}");
    assert!(others.is_empty(), "{others:?}");

    type_in(&c, b"root").await;
    assert_eq!(output_until(&mut c, "root", &mut others).await, "root");
    type_in(&c, b"\r").await;
    assert_eq!(
        output_until(&mut c, "login: ", &mut others).await,
        "\r\nvm1 login: "
    );
    // A break has no way over KubeVirt's console; the line goes on.
    c.input.send(ConsoleInput::Break).await.unwrap();
    type_in(&c, b"x").await;
    assert_eq!(output_until(&mut c, "x", &mut others).await, "x");
    assert!(others.is_empty(), "{others:?}");

    // A restart replaces the VMI: the same console attaches to the new one and shows its boot.
    let deadline = tokio::time::Instant::now() + T;
    agent
        .backend
        .perform(VM, Action::PowerCycle, deadline)
        .await
        .unwrap();
    until_attached(&mut c).await;
    let boot = output_until(&mut c, "vm1 login: ", &mut others).await;
    let uid2 = sim.vmi_uid(NS, "vm1").unwrap();
    assert_ne!(uid1, uid2);
    assert!(
        boot.contains(&format!("instance {uid2}")),
        "{uid1} {uid2} {boot:?}"
    );
    assert!(others.is_empty(), "{others:?}");
    type_in(&c, b"again").await;
    assert_eq!(output_until(&mut c, "again", &mut others).await, "again");

    // A hard reset is a forced restart in KubeVirt: another instance, attached again.
    agent
        .backend
        .perform(VM, Action::HardReset, tokio::time::Instant::now() + T)
        .await
        .unwrap();
    until_attached(&mut c).await;
    let boot = output_until(&mut c, "vm1 login: ", &mut others).await;
    let uid3 = sim.vmi_uid(NS, "vm1").unwrap();
    assert_ne!(uid2, uid3);
    assert!(boot.contains(&format!("instance {uid3}")), "{boot:?}");
    assert!(others.is_empty(), "{others:?}");

    // Dropping the console closes the socket.
    assert!(sim.console_attached(NS, "vm1"));
    drop(c);
    until("the console socket closed", || {
        !sim.console_attached(NS, "vm1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_console_while_off_then_attached_at_power_on() {
    let sim = sim().await;
    seed(&sim, "vm1", "Halted");
    let agent = Agent::start(&sim, "agent-c2", 31410..=31419).await;
    agent.wait_served(VM).await;
    agent.wait_power(VM, "off").await;
    let mut c = agent.backend.open_console(VM);
    assert_eq!(next(&mut c).await, Some(ConsoleEvent::NoConsole));
    // Typing into no line is dropped, not queued for later.
    type_in(&c, b"lost").await;

    agent
        .backend
        .perform(VM, Action::PowerOn, tokio::time::Instant::now() + T)
        .await
        .unwrap();
    until_attached(&mut c).await;
    let mut others = vec![];
    let boot = output_until(&mut c, "vm1 login: ", &mut others).await;
    assert!(!boot.contains("lost"), "{boot:?}");
    assert!(others.is_empty(), "{others:?}");

    agent
        .backend
        .perform(VM, Action::PowerOff, tokio::time::Instant::now() + T)
        .await
        .unwrap();
    let mut seen = vec![];
    loop {
        match next(&mut c).await {
            Some(ConsoleEvent::NoConsole) => break,
            Some(ConsoleEvent::Output(_)) => {}
            other => seen.push(other),
        }
    }
    assert!(seen.is_empty(), "{seen:?}");
    until("the console socket closed", || {
        !sim.console_attached(NS, "vm1")
    })
    .await;
    // Off for good: nothing more until the VM changes.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.events.recv())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_client_displaces_the_console() {
    let sim = sim().await;
    seed(&sim, "vm1", "Always");
    let agent = Agent::start(&sim, "agent-c3", 31420..=31429).await;
    agent.wait_served(VM).await;
    running(&sim).await;
    let mut c = agent.backend.open_console(VM);
    until_attached(&mut c).await;
    let mut others = vec![];
    output_until(&mut c, "vm1 login: ", &mut others).await;

    // Someone's `virtctl console`: a plain client of the subresource.
    let mut person = person_console(&sim, "vm1").await;

    let mut seen = vec![];
    loop {
        match next(&mut c).await {
            Some(ConsoleEvent::Displaced) => break,
            Some(ConsoleEvent::Output(_)) => {}
            other => seen.push(other),
        }
    }
    assert!(seen.is_empty(), "{seen:?}");
    // The stream ends after Displaced, and the console is not taken back: the person's
    // line still echoes.
    assert_eq!(next(&mut c).await, None);
    person
        .send(Message::binary(b"mine".to_vec()))
        .await
        .unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("mine") {
        match tokio::time::timeout(T, person.next()).await.unwrap() {
            Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
            other => panic!("the person's console ended: {other:?}"),
        }
    }
    assert!(sim.console_attached(NS, "vm1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_event_queue_pauses_the_socket_and_loses_nothing() {
    let sim = sim().await;
    seed(&sim, "vm1", "Always");
    let agent = Agent::start(&sim, "agent-c4", 31430..=31439).await;
    agent.wait_served(VM).await;
    running(&sim).await;
    let mut c = agent.backend.open_console(VM);
    until_attached(&mut c).await;
    let mut others = vec![];
    output_until(&mut c, "vm1 login: ", &mut others).await;

    // Four queues' worth of keystrokes, one frame each, nobody reading the events.
    let typed: Vec<u8> = (0..QUEUE_DEPTH * 4)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    for b in &typed {
        type_in(&c, &[*b]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The queue holds at most its depth; the rest waits in the socket, in order.
    assert_eq!(c.events.len(), QUEUE_DEPTH);
    let mut out = Vec::new();
    for _ in 0..QUEUE_DEPTH {
        match c.events.try_recv() {
            Ok(ConsoleEvent::Output(b)) => out.extend_from_slice(&b),
            other => panic!("after {} bytes: {other:?}", out.len()),
        }
    }
    assert!(
        out.len() < typed.len(),
        "everything was queued: {}",
        out.len()
    );
    while out.len() < typed.len() {
        match next(&mut c).await {
            Some(ConsoleEvent::Output(b)) => out.extend_from_slice(&b),
            other => panic!("after {} bytes: {other:?}", out.len()),
        }
    }
    assert_eq!(out, typed);
}

/// A one-shot HTTP server on 127.0.0.1 answering the first request with `answer(key)`,
/// where `key` is the request's Sec-WebSocket-Key; its URL.
async fn canned(answer: impl FnOnce(&str) -> String + Send + 'static) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "request cut short");
            req.extend_from_slice(&buf[..n]);
        }
        let req = String::from_utf8_lossy(&req).to_string();
        let key = req
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .starts_with("sec-websocket-key:")
                    .then(|| l.split_once(':').unwrap().1.trim().to_string())
            })
            .expect("a Sec-WebSocket-Key");
        conn.write_all(answer(&key).as_bytes()).await.unwrap();
        // Hold the connection until the client goes.
        let _ = conn.read(&mut buf).await;
    });
    url
}

#[tokio::test]
async fn connect_checks_the_answer() {
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use virtbmc::cluster::console::{ConnectError, connect};
    let client_for = |url: String| {
        let mut kc = kube::Config::new(url.parse().unwrap());
        kc.default_retry = false;
        kube::Client::try_from(kc).unwrap()
    };

    // virt-api's refusals, with their Status message.
    let sim = kubesim::Server::start_with(
        "127.0.0.1:0".parse().unwrap(),
        kubesim::Config {
            controller: false,
            ..fast()
        },
    )
    .await
    .unwrap();
    let c = client(&sim).await;
    match connect(&c, NS, "vm1").await {
        Err(ConnectError::Refused { code: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    sim.create(
        kubesim::Kind::VirtualMachineInstance,
        NS,
        serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": { "name": "vm1" }, "spec": { "domain": { "devices": {} } },
        }),
    )
    .unwrap();
    sim.set_vmi_phase(NS, "vm1", "Scheduled");
    match connect(&c, NS, "vm1").await {
        Err(ConnectError::Refused { code: 400, message }) => {
            assert_eq!(message, "VMI is not running")
        }
        other => panic!("{other:?}"),
    }
    sim.set_vmi_phase(NS, "vm1", "Running");
    assert!(connect(&c, NS, "vm1").await.is_ok());

    // A 101 whose accept key is not derived from ours.
    let url = canned(|_| {
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            .to_string()
    })
    .await;
    match connect(&client_for(url), NS, "vm1").await {
        Err(ConnectError::Handshake(why)) => assert!(why.contains("Accept"), "{why}"),
        other => panic!("{other:?}"),
    }
    // The right key, but a subprotocol we did not offer.
    let url = canned(|key| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
    })
    .await;
    match connect(&client_for(url), NS, "vm1").await {
        Err(ConnectError::Handshake(why)) => assert!(why.contains("Protocol"), "{why}"),
        other => panic!("{other:?}"),
    }
    // The right key and no Upgrade header.
    let url = canned(|key| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
    })
    .await;
    match connect(&client_for(url), NS, "vm1").await {
        Err(ConnectError::Handshake(why)) => assert!(why.contains("Upgrade"), "{why}"),
        other => panic!("{other:?}"),
    }
    // The right key and protocol: a socket.
    let url = canned(|key| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: plain.kubevirt.io\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
    })
    .await;
    assert!(connect(&client_for(url), NS, "vm1").await.is_ok());
}
