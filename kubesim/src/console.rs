//! virt-api's serial console subresource
//! (`GET /apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/console`)
//! and a simulated guest on the other end of the line.
//!
//! What KubeVirt does, and this module with it:
//! - Checks before the upgrade (pkg/virt-api/rest/console.go and the subresource helper): the
//!   VMI must exist (404), have a serial console (`autoattachSerialConsole: false` is 400 "No
//!   serial consoles are present."), not be Failed (409) and be Running (400 "VMI is not
//!   running").
//! - A WebSocket (RFC 6455) whose only subprotocol is `plain.kubevirt.io`; like gorilla's
//!   upgrader, the answer names it when the client offered it and names none otherwise.
//! - Binary frames carry the raw serial bytes both ways, no channel byte; other data frames
//!   are skipped (client-go's websocket.go); pings are answered; no pings are sent.
//! - One client per VMI: a new one closes the old (virt-handler's console handler stops the
//!   previous stream). The socket also goes when the VMI stops running. Either way it is
//!   dropped without a close frame, as when virt-handler closes the connection under
//!   virt-api's splice (virtctl sees 1006).
//! - Nothing is replayed to a new client: what a client read is gone.
//!
//! The guest: each VMI instance (uid) boots once, printing a kernel's boot lines and a login
//! prompt; a hard reset (the `reset` subresource) boots it again in place. Typed bytes are
//! echoed, Enter prints the prompt again, Backspace erases. Output nobody has read yet is
//! held (the last 64 KiB), so a client that connects after the VMI turned Running still sees
//! its boot; a real UART with nobody on the socket loses it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{Notify, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::http::{RespBody, State, stopped};
use crate::kinds::Kind;
use crate::kubevirt;
use crate::status::ApiError;

/// The console's one subprotocol (client-go subresources/constants.go `PlainStreamProtocolName`).
pub const SUBPROTOCOL: &str = "plain.kubevirt.io";

/// Guest output held for a client that is not reading (or not there yet).
const PENDING_MAX: usize = 64 * 1024;
/// The longest line the guest's line discipline keeps.
const LINE_MAX: usize = 4096;
/// Largest frame or message accepted from a client: keystrokes and pastes, not files.
const MESSAGE_MAX: usize = 64 * 1024;

/// `(namespace, name)` when `path` is a VMI's console subresource.
pub fn path(path: &str) -> Option<(String, String)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [
            "apis",
            "subresources.kubevirt.io",
            "v1" | "v1alpha3",
            "namespaces",
            ns,
            "virtualmachineinstances",
            name,
            "console",
        ] => Some((ns.to_string(), name.to_string())),
        _ => None,
    }
}

/// Every VMI's simulated guest, keyed `ns/name`.
#[derive(Default)]
pub struct Consoles {
    guests: Mutex<HashMap<String, Guest>>,
    next_client: AtomicU64,
}

/// One VMI instance's guest and the client on its line.
struct Guest {
    uid: String,
    prompt: String,
    /// Output the guest wrote that no client has read yet.
    pending: Vec<u8>,
    /// The line being typed.
    line: Vec<u8>,
    /// The previous input byte was a CR (so a following LF is the same Enter).
    after_cr: bool,
    /// The attached client's number, and the sender whose drop detaches it.
    client: Option<(u64, oneshot::Sender<()>)>,
    /// Wakes the attached client's task when output appears without its input (a reboot).
    wake: Arc<Notify>,
}

impl Guest {
    fn boot(vmi: &Value, uid: &str) -> Guest {
        let name = vmi["metadata"]["name"].as_str().unwrap_or("localhost");
        let mut g = Guest {
            uid: uid.to_string(),
            prompt: format!("{name} login: "),
            pending: Vec::new(),
            line: Vec::new(),
            after_cr: false,
            client: None,
            wake: Arc::new(Notify::new()),
        };
        g.print_boot(vmi);
        g
    }

    fn print_boot(&mut self, vmi: &Value) {
        let node = vmi["status"]["nodeName"].as_str().unwrap_or("node");
        let serial = vmi["spec"]["domain"]["firmware"]["serial"]
            .as_str()
            .unwrap_or("");
        let text = format!(
            "\r\n[    0.000000] Linux version 6.12.0-kubesim (builder@kubesim) #1 SMP PREEMPT_DYNAMIC\r\n\
             [    0.000000] Command line: BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro console=tty0 console=ttyS0,115200n8\r\n\
             [    0.000000] DMI: KubeVirt None/RHEL, BIOS 1.16.3 04/01/2014\r\n\
             [    0.000000] Hypervisor detected: KVM\r\n\
             [    0.512345] serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A\r\n\
             [    1.234567] Run /sbin/init as init process\r\n\
             \r\nKubesim Linux (instance {uid}, serial {serial:?}, on {node}) ttyS0\r\n\r\n{prompt}",
            uid = self.uid,
            prompt = self.prompt,
        );
        self.print(text.as_bytes());
        self.line.clear();
    }

    fn print(&mut self, b: &[u8]) {
        self.pending.extend_from_slice(b);
        if self.pending.len() > PENDING_MAX {
            // An overrun drops the oldest bytes, as a full FIFO would.
            let excess = self.pending.len() - PENDING_MAX;
            self.pending.drain(..excess);
        }
    }

    /// The line discipline of a login prompt on a serial tty.
    fn input(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let after_cr = std::mem::replace(&mut self.after_cr, b == b'\r');
            match b {
                b'\n' if after_cr => {}
                b'\r' | b'\n' => {
                    self.line.clear();
                    let out = format!("\r\n{}", self.prompt);
                    self.print(out.as_bytes());
                }
                0x08 | 0x7f => {
                    if self.line.pop().is_some() {
                        self.print(b"\x08 \x08");
                    }
                }
                0x03 => {
                    self.line.clear();
                    let out = format!("^C\r\n{}", self.prompt);
                    self.print(out.as_bytes());
                }
                _ => {
                    if self.line.len() < LINE_MAX {
                        self.line.push(b);
                        self.print(&[b]);
                    }
                }
            }
        }
    }
}

/// Whether `vmi` is the running instance `uid`.
fn running(vmi: Option<&Value>, uid: &str) -> bool {
    vmi.is_some_and(|v| kubevirt::phase(v) == "Running" && v["metadata"]["uid"] == uid)
}

impl Consoles {
    fn guests(&self) -> std::sync::MutexGuard<'_, HashMap<String, Guest>> {
        self.guests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a new client on the line of `vmi` (instance `uid`), detaching the one there; the
    /// guest boots if this instance has not yet.
    fn attach(
        &self,
        key: &str,
        vmi: &Value,
        uid: &str,
    ) -> (u64, oneshot::Receiver<()>, Arc<Notify>) {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut guests = self.guests();
        let g = guests
            .entry(key.to_string())
            .and_modify(|g| {
                if g.uid != uid {
                    *g = Guest::boot(vmi, uid);
                }
            })
            .or_insert_with(|| Guest::boot(vmi, uid));
        // Dropping the previous sender is what closes the previous client.
        g.client = Some((id, tx));
        (id, rx, g.wake.clone())
    }

    fn detach(&self, key: &str, id: u64) {
        if let Some(g) = self.guests().get_mut(key)
            && g.client.as_ref().is_some_and(|(c, _)| *c == id)
        {
            g.client = None;
        }
    }

    /// Output for client `id`, if it is still the one attached.
    fn take_output(&self, key: &str, id: u64) -> Vec<u8> {
        match self.guests().get_mut(key) {
            Some(g) if g.client.as_ref().is_some_and(|(c, _)| *c == id) => {
                std::mem::take(&mut g.pending)
            }
            _ => Vec::new(),
        }
    }

    fn input(&self, key: &str, id: u64, bytes: &[u8]) {
        if let Some(g) = self.guests().get_mut(key)
            && g.client.as_ref().is_some_and(|(c, _)| *c == id)
        {
            g.input(bytes);
        }
    }

    /// Whether a client is on the console of VMI `key` (`ns/name`).
    pub fn attached(&self, key: &str) -> bool {
        self.guests().get(key).is_some_and(|g| g.client.is_some())
    }

    /// A hard reset of the running instance: the guest boots again in place.
    pub fn reset(&self, key: &str, vmi: &Value) {
        let uid = vmi["metadata"]["uid"].as_str().unwrap_or("");
        if let Some(g) = self.guests().get_mut(key)
            && g.uid == uid
        {
            g.print_boot(vmi);
            g.wake.notify_one();
        }
    }
}

fn empty(code: StatusCode) -> Response<RespBody> {
    Response::builder()
        .status(code)
        .body(
            Empty::<Bytes>::new()
                .map_err(|n: Infallible| match n {})
                .boxed(),
        )
        .expect("valid response")
}

fn header_has_token(
    req: &Request<hyper::body::Incoming>,
    name: header::HeaderName,
    token: &str,
) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Answers a console request: an API error before the upgrade, or 101 and a task that runs
/// the client's session once the connection is upgraded.
pub fn handle(
    state: &Arc<State>,
    ns: &str,
    name: &str,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<RespBody>, ApiError> {
    if req.method() != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    let kind = Kind::VirtualMachineInstance;
    let vmi = state
        .store
        .get(kind, ns, name)
        .ok_or_else(|| ApiError::not_found(kind.info(), name))?;
    if vmi["spec"]["domain"]["devices"]["autoattachSerialConsole"] == false {
        return Err(ApiError::bad_request("No serial consoles are present."));
    }
    match kubevirt::phase(&vmi) {
        "Running" => {}
        "Failed" => {
            return Err(ApiError::conflict(
                kind.info(),
                name,
                "VMI is in failed status",
            ));
        }
        _ => return Err(ApiError::bad_request("VMI is not running")),
    }
    let uid = vmi["metadata"]["uid"].as_str().unwrap_or("").to_string();

    // RFC 6455 §4.2.1: what makes the request an opening handshake.
    if !header_has_token(&req, header::CONNECTION, "upgrade")
        || !header_has_token(&req, header::UPGRADE, "websocket")
    {
        return Err(ApiError::bad_request(
            "websocket: the client is not using the websocket protocol: 'upgrade' token not found in 'Connection' header",
        ));
    }
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err(ApiError::bad_request(
            "websocket: unsupported version: 13 not found in 'Sec-Websocket-Version' header",
        ));
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Err(ApiError::bad_request(
            "websocket: not a websocket handshake: 'Sec-WebSocket-Key' header is missing or blank",
        ));
    };
    let offered = header_has_token(&req, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL);

    let key_name = format!("{ns}/{name}");
    let (id, kicked, wake) = state.consoles.attach(&key_name, &vmi, &uid);
    log::info!("console {key_name}: client {id} attached (vmi uid {uid})");
    let st = state.clone();
    let (ns, name) = (ns.to_string(), name.to_string());
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(up) => {
                let cfg = WebSocketConfig::default()
                    .max_message_size(Some(MESSAGE_MAX))
                    .max_frame_size(Some(MESSAGE_MAX));
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, Some(cfg))
                        .await;
                session(&st, &ns, &name, &uid, id, kicked, wake, ws).await;
            }
            Err(e) => log::debug!("console {key_name}: upgrade failed: {e}"),
        }
        st.consoles.detach(&key_name, id);
        log::info!("console {key_name}: client {id} gone");
    });

    let mut res = empty(StatusCode::SWITCHING_PROTOCOLS);
    let h = res.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    let accept = derive_accept_key(key.as_bytes());
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        header::HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if offered {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            header::HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    Ok(res)
}

/// Resolves when client `id` must go: another client took the line, the instance stopped
/// running (or was replaced), or the server is stopping.
async fn ended(state: &State, ns: &str, name: &str, uid: &str, kicked: oneshot::Receiver<()>) {
    let mut changes = state.store.subscribe();
    let vmi_left = async {
        loop {
            changes.borrow_and_update();
            if !running(
                state
                    .store
                    .get(Kind::VirtualMachineInstance, ns, name)
                    .as_ref(),
                uid,
            ) {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = kicked => {}
        _ = vmi_left => {}
        _ = stopped(state.stop.clone()) => {}
    }
}

#[allow(clippy::too_many_arguments)]
async fn session<S>(
    state: &State,
    ns: &str,
    name: &str,
    uid: &str,
    id: u64,
    kicked: oneshot::Receiver<()>,
    wake: Arc<Notify>,
    ws: WebSocketStream<S>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let key = format!("{ns}/{name}");
    let (mut sink, mut stream) = ws.split();
    let end = ended(state, ns, name, uid, kicked);
    tokio::pin!(end);
    loop {
        let out = state.consoles.take_output(&key, id);
        if !out.is_empty() {
            tokio::select! {
                r = sink.send(Message::binary(out)) => if r.is_err() { return },
                _ = &mut end => return,
            }
            continue;
        }
        tokio::select! {
            // Returning drops the socket: no close frame, as virt-handler's side closes.
            _ = &mut end => return,
            _ = wake.notified() => {}
            m = stream.next() => match m {
                Some(Ok(Message::Binary(b))) => state.consoles.input(&key, id, &b),
                // The close reply goes out on the next read, which then ends the stream.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}
