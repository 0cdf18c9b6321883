//! The VMI console subresource against a plain WebSocket client (tungstenite, as any client
//! of KubeVirt's console would use): the handshake, the errors before it, the frames, one
//! client per VMI, and the socket dropped when the VMI stops.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use kubesim::{Config, Handle, Kind, Server};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws = WebSocketStream<TcpStream>;

const T: Duration = Duration::from_secs(10);

fn fast() -> Config {
    Config {
        phase_delay: (Duration::from_millis(20), Duration::from_millis(60)),
        stop_delay: Duration::from_millis(100),
        cleanup_delay: Duration::from_millis(50),
        ..Config::default()
    }
}

fn console_url(h: &Handle, name: &str) -> String {
    format!(
        "ws://{}/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/{name}/console",
        h.addr()
    )
}

/// Opens the console offering `protocol` (None: no Sec-WebSocket-Protocol header).
async fn open(
    h: &Handle,
    name: &str,
    protocol: Option<&str>,
) -> Result<(Ws, Option<String>), WsError> {
    let mut req = console_url(h, name).into_client_request()?;
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    let tcp = TcpStream::connect(h.addr()).await.unwrap();
    let (ws, res) = tokio_tungstenite::client_async(req, tcp).await?;
    let chosen = res
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((ws, chosen))
}

async fn console(h: &Handle, name: &str) -> Ws {
    let (ws, chosen) = open(h, name, Some("plain.kubevirt.io")).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("plain.kubevirt.io"));
    ws
}

/// Reads binary frames until their bytes contain `needle`; returns all bytes read.
async fn read_until(ws: &mut Ws, needle: &str) -> String {
    let mut got = Vec::new();
    let r = tokio::time::timeout(T, async {
        while !String::from_utf8_lossy(&got).contains(needle) {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("waiting for {needle:?} after {got:?}: {other:?}"),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(r.is_ok(), "no {needle:?} in time; read {text:?}");
    text
}

/// The next binary frame's bytes.
async fn next_binary(ws: &mut Ws) -> Vec<u8> {
    match tokio::time::timeout(T, ws.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => b.to_vec(),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

/// The socket ends without a close frame (what virtctl reports as 1006).
async fn expect_dropped(ws: &mut Ws) {
    let r = tokio::time::timeout(T, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the socket did not end");
    assert!(
        matches!(
            r,
            Some(Err(WsError::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )))
        ),
        "expected a drop without close frame, got {r:?}"
    );
}

async fn running_vm(h: &Handle, name: &str) -> String {
    h.seed_vm("default", name, "Always");
    h.wait_vmi_phase("default", name, "Running", T)
        .await
        .expect("VMI running")
}

fn http_error(e: WsError) -> (u16, Value) {
    match e {
        WsError::Http(res) => {
            let body = res.body().clone().unwrap_or_default();
            (
                res.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            )
        }
        other => panic!("expected an HTTP answer, got {other:?}"),
    }
}

#[tokio::test]
async fn upgrade_boot_echo_and_line() {
    let h = Server::start_with("127.0.0.1:0".parse().unwrap(), fast())
        .await
        .unwrap();
    let uid = running_vm(&h, "vm1").await;
    let mut ws = console(&h, "vm1").await;
    let boot = read_until(&mut ws, "vm1 login: ").await;
    assert!(boot.contains("Linux version"), "{boot:?}");
    assert!(boot.contains(&format!("instance {uid}")), "{boot:?}");

    ws.send(Message::binary(b"root".to_vec())).await.unwrap();
    assert_eq!(read_until(&mut ws, "root").await, "root");
    // A text frame is not serial input: it is skipped.
    ws.send(Message::text("ignored")).await.unwrap();
    ws.send(Message::binary(b"\x7f".to_vec())).await.unwrap();
    assert_eq!(next_binary(&mut ws).await, b"\x08 \x08");
    // Enter: a new line and the prompt again (CR LF is one Enter).
    ws.send(Message::binary(b"\r\n".to_vec())).await.unwrap();
    assert_eq!(read_until(&mut ws, "login: ").await, "\r\nvm1 login: ");
    // A ping is answered.
    ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(T, ws.next()).await.unwrap();
    assert!(
        matches!(pong, Some(Ok(Message::Pong(ref p))) if &p[..] == b"p"),
        "{pong:?}"
    );

    // A client that offers no subprotocol still gets the socket, with none named (gorilla).
    drop(ws);
    let (mut ws2, chosen) = open(&h, "vm1", None).await.unwrap();
    assert_eq!(chosen, None);
    ws2.send(Message::binary(b"z".to_vec())).await.unwrap();
    // Nothing replayed: the first bytes are the echo.
    assert_eq!(next_binary(&mut ws2).await, b"z");
    h.stop().await;
}

#[tokio::test]
async fn errors_before_the_upgrade() {
    let h = Server::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Config {
            controller: false,
            ..fast()
        },
    )
    .await
    .unwrap();
    let (code, status) = http_error(
        open(&h, "vm1", Some("plain.kubevirt.io"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
    assert_eq!(status["reason"], "NotFound");

    h.create(
        Kind::VirtualMachineInstance,
        "default",
        json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": { "name": "vm1" },
            "spec": { "domain": { "devices": {} } },
        }),
    )
    .unwrap();
    for phase in ["Pending", "Scheduled", "Succeeded"] {
        h.set_vmi_phase("default", "vm1", phase);
        let (code, status) = http_error(
            open(&h, "vm1", Some("plain.kubevirt.io"))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 400, "{phase}");
        assert_eq!(status["message"], "VMI is not running", "{phase}");
    }
    h.set_vmi_phase("default", "vm1", "Failed");
    let (code, _) = http_error(
        open(&h, "vm1", Some("plain.kubevirt.io"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);

    h.set_vmi_phase("default", "vm1", "Running");
    let mut ws = console(&h, "vm1").await;
    read_until(&mut ws, "vm1 login: ").await;
    // The instance stops running: the socket is dropped, no close frame.
    h.set_vmi_phase("default", "vm1", "Succeeded");
    expect_dropped(&mut ws).await;

    h.set_vmi_phase("default", "vm1", "Running");
    h.merge_patch(
        Kind::VirtualMachineInstance,
        "default",
        "vm1",
        json!({ "spec": { "domain": { "devices": { "autoattachSerialConsole": false } } } }),
    )
    .unwrap();
    let (code, status) = http_error(
        open(&h, "vm1", Some("plain.kubevirt.io"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
    assert_eq!(status["message"], "No serial consoles are present.");
    h.stop().await;
}

#[tokio::test]
async fn a_second_client_closes_the_first() {
    let h = Server::start_with("127.0.0.1:0".parse().unwrap(), fast())
        .await
        .unwrap();
    running_vm(&h, "vm1").await;
    let mut first = console(&h, "vm1").await;
    read_until(&mut first, "vm1 login: ").await;
    let mut second = console(&h, "vm1").await;
    expect_dropped(&mut first).await;
    second.send(Message::binary(b"abc".to_vec())).await.unwrap();
    assert_eq!(read_until(&mut second, "abc").await, "abc");
    h.stop().await;
}

#[tokio::test]
async fn stop_drops_the_socket_and_a_new_instance_boots_again() {
    let h = Server::start_with("127.0.0.1:0".parse().unwrap(), fast())
        .await
        .unwrap();
    let uid1 = running_vm(&h, "vm1").await;
    let mut ws = console(&h, "vm1").await;
    read_until(&mut ws, &format!("instance {uid1}")).await;

    // A power cycle through the VM: the VMI stops (socket dropped), a new one boots.
    h.merge_patch(
        Kind::VirtualMachine,
        "default",
        "vm1",
        json!({ "spec": { "runStrategy": "Halted" } }),
    )
    .unwrap();
    expect_dropped(&mut ws).await;
    assert!(
        h.wait_until(T, |h| h.vmi_uid("default", "vm1").is_none())
            .await,
        "VMI gone"
    );
    let (code, _) = http_error(
        open(&h, "vm1", Some("plain.kubevirt.io"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
    h.merge_patch(
        Kind::VirtualMachine,
        "default",
        "vm1",
        json!({ "spec": { "runStrategy": "Always" } }),
    )
    .unwrap();
    let uid2 = h
        .wait_vmi_phase("default", "vm1", "Running", T)
        .await
        .unwrap();
    assert_ne!(uid1, uid2);
    let mut ws = console(&h, "vm1").await;
    let boot = read_until(&mut ws, "vm1 login: ").await;
    assert!(boot.contains(&format!("instance {uid2}")), "{boot:?}");

    // A hard reset (the VMI `reset` subresource) reboots the instance in place: the socket
    // stays and the boot shows again.
    ws.send(Message::binary(b"abc".to_vec())).await.unwrap();
    read_until(&mut ws, "abc").await;
    let (code, _) = put(
        &h,
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/vm1/reset",
    )
    .await;
    assert_eq!(code, 200);
    let boot = read_until(&mut ws, "vm1 login: ").await;
    assert!(
        boot.starts_with("\r\n[    0.000000] Linux version"),
        "{boot:?}"
    );
    assert!(boot.contains(&format!("instance {uid2}")), "{boot:?}");
    assert_eq!(h.vmi_uid("default", "vm1").as_deref(), Some(uid2.as_str()));
    h.stop().await;
}

/// `PUT path` with an empty body over HTTP/1.0: the status code and the body.
async fn put(h: &Handle, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = TcpStream::connect(h.addr()).await.unwrap();
    conn.write_all(format!("PUT {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_string())
}
