//! A VM's serial console in cluster mode: KubeVirt's `console` subresource of the running
//! VMI, followed across restarts for as long as the [`Console`] is held.
//!
//! The subresource (virt-api, pkg/virt-api/rest/console.go) is a WebSocket whose only
//! subprotocol is `plain.kubevirt.io`: raw serial bytes in binary frames both ways, other
//! frames skipped (client-go kubevirt/typed/core/v1/websocket.go). kube's `Client::connect`
//! insists on the `v4`/`v5.channel.k8s.io` subprotocols and fails the handshake otherwise, so
//! the upgrade is done here over the same client's HTTP stack (`Client::send`: its base URL,
//! TLS and credentials apply), checking the 101 as RFC 6455 §4.1 asks.
//!
//! KubeVirt gives a VMI's console to one client at a time: a new connection closes the old,
//! and the socket also goes, without a close frame either way, when the VMI stops. So when
//! the socket ends, the cached VMI tells the two apart: an instance that stopped or was
//! replaced means a power transition (report [`ConsoleEvent::NoConsole`], then attach to the
//! next instance); the same instance still running after a grace period means someone
//! else's `virtctl console` took the line ([`ConsoleEvent::Displaced`]), and this console
//! leaves it to them rather than take it back.
//!
//! Every wait is on the backend's change announcements (a VM's view changes with each VMI
//! phase and instance), never a poll; both queues are the bounded ones of [`Console`], and
//! the socket is not read while the event queue is full.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::header;
use hyper_util::rt::TokioIo;
use kube::Client;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::{Shared, names, split_name};
use crate::backend::console::{Console, ConsoleEvent, ConsoleInput};

/// The console's one subprotocol (client-go subresources/constants.go).
pub const SUBPROTOCOL: &str = "plain.kubevirt.io";

/// How long the instance may still look running in the cache after its socket closed before
/// the close counts as another client's: virt-handler reports the VMI's end a moment after
/// the domain (and with it the serial socket) went.
const DISPLACED_GRACE: Duration = Duration::from_secs(5);
/// Upper bound on the upgrade request: the agent's client has no read timeout of its own.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a closing console waits to send its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Retry delays after a failed connection to a running instance (client-go retries a 400
/// every second): doubled up to the maximum, and cut short by any change of the VM.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Largest frame or message taken from the socket. virt-handler writes what one read of the
/// serial socket returned (at most 32 KiB); the bound keeps a held console's memory to the
/// event queue's depth times this.
const MESSAGE_MAX: usize = 64 * 1024;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Why the console could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("request failed: {0}")]
    Request(#[from] kube::Error),
    #[error("{code}: {message}")]
    Refused { code: u16, message: String },
    #[error("not a WebSocket answer: {0}")]
    Handshake(&'static str),
    #[error("upgrade failed: {0}")]
    Upgrade(#[from] hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Opens the console of the VMI `ns/vm` (names already checked: they go into the path).
pub async fn connect(client: &Client, ns: &str, vm: &str) -> Result<Socket, ConnectError> {
    let path = format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{vm}/console"
    );
    let key = generate_key();
    let req = http::Request::get(path)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, &key)
        .header(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL)
        .body(kube::client::Body::empty())
        .map_err(|_| ConnectError::Handshake("request"))?;
    let res = tokio::time::timeout(CONNECT_TIMEOUT, client.send(req))
        .await
        .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))??;
    if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let code = res.status().as_u16();
        // virt-api's errors are Status objects; keep the message a person can act on.
        let body = tokio::time::timeout(CONNECT_TIMEOUT, res.into_body().collect_bytes())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|s| s["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into());
        return Err(ConnectError::Refused { code, message });
    }
    let h = res.headers();
    let has = |name: header::HeaderName, want: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
    };
    // RFC 6455 §4.1, the client's checks of the server's handshake.
    if !has(header::UPGRADE, "websocket") {
        return Err(ConnectError::Handshake("no Upgrade: websocket"));
    }
    if !has(header::CONNECTION, "upgrade") {
        return Err(ConnectError::Handshake("no Connection: Upgrade"));
    }
    if h.get(header::SEC_WEBSOCKET_ACCEPT)
        .is_none_or(|v| v.as_bytes() != derive_accept_key(key.as_bytes()).as_bytes())
    {
        return Err(ConnectError::Handshake("wrong Sec-WebSocket-Accept"));
    }
    // A subprotocol we did not offer fails the connection; none named is gorilla's answer to
    // a client that offered nothing it knows, which cannot be ours, but is not a protocol
    // error either.
    if h.get(header::SEC_WEBSOCKET_PROTOCOL)
        .is_some_and(|p| p.as_bytes() != SUBPROTOCOL.as_bytes())
    {
        return Err(ConnectError::Handshake("another Sec-WebSocket-Protocol"));
    }
    let upgraded = hyper::upgrade::on(res).await?;
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(MESSAGE_MAX))
        .max_frame_size(Some(MESSAGE_MAX));
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, Some(cfg)).await)
}

/// The console of the BMC `name` (`<namespace>/<vm>`), followed by a task that lives as long
/// as the returned [`Console`].
pub fn open(shared: &Arc<Shared>, name: &str) -> Console {
    let Some((ns, vm)) =
        split_name(name).filter(|(ns, vm)| names::is_label(ns) && names::is_subdomain(vm))
    else {
        return Console::unavailable();
    };
    let (console, events, input) = Console::channel();
    let line = Line {
        shared: shared.clone(),
        ns: ns.to_string(),
        vm: vm.to_string(),
        name: name.to_string(),
        // Subscribed before the first look at the cache, so no change falls in between.
        changes: shared.changes.subscribe(),
        events,
        input,
    };
    tokio::spawn(line.run());
    console
}

/// How a connected socket's pump ended.
enum Pumped {
    /// The [`Console`] was dropped.
    Dropped,
    /// The socket closed or failed.
    Closed,
}

/// The task's side of one [`Console`].
struct Line {
    shared: Arc<Shared>,
    ns: String,
    vm: String,
    name: String,
    changes: broadcast::Receiver<Arc<str>>,
    events: mpsc::Sender<ConsoleEvent>,
    input: mpsc::Receiver<ConsoleInput>,
}

impl Line {
    /// The uid of the VMI when it is running (paused included: its console still works)
    /// and not being deleted. A stop or restart under way keeps an open socket to the end
    /// of the guest's shutdown, but is no instance to open one to, nor to take one back from.
    fn running_instance(&self) -> Option<String> {
        let vmi = self.shared.stores.vmi(&self.ns, &self.vm)?;
        (vmi.data["status"]["phase"] == "Running" && vmi.metadata.deletion_timestamp.is_none())
            .then(|| vmi.metadata.uid.clone())
            .flatten()
    }

    async fn run(mut self) {
        let mut no_console_said = false;
        let mut retry = RETRY_MIN;
        loop {
            let Some(uid) = self.running_instance() else {
                if !no_console_said {
                    if !self.report(ConsoleEvent::NoConsole).await {
                        return;
                    }
                    no_console_said = true;
                }
                if !self.wait_change(None).await {
                    return;
                }
                continue;
            };
            let connected = tokio::select! {
                r = connect(&self.shared.client, &self.ns, &self.vm) => r,
                _ = self.events.closed() => return,
            };
            let socket = match connected {
                Ok(s) => s,
                Err(e) => {
                    // A 400 "VMI is not running" is virt-api a step ahead of or behind our
                    // cache; anything else is the API server's. Either way: no line for
                    // now, and another try on the next change or after a while.
                    log::warn!("console vm={} uid={uid}: {e}", self.name);
                    if !no_console_said {
                        if !self.report(ConsoleEvent::NoConsole).await {
                            return;
                        }
                        no_console_said = true;
                    }
                    if !self.wait_change(Some(Instant::now() + retry)).await {
                        return;
                    }
                    retry = (retry * 2).min(RETRY_MAX);
                    continue;
                }
            };
            log::info!("console vm={} uid={uid}: attached", self.name);
            retry = RETRY_MIN;
            no_console_said = false;
            if !self.report(ConsoleEvent::Attached).await {
                return;
            }
            if let Pumped::Dropped = self.pump(socket).await {
                return;
            }
            // Who closed it: the instance's end, or another client? The first shows in the
            // cache within the grace period (at once for an instance being deleted).
            let deadline = Instant::now() + DISPLACED_GRACE;
            while self.running_instance().as_deref() == Some(uid.as_str()) {
                if Instant::now() >= deadline {
                    log::info!(
                        "console vm={} uid={uid}: taken by another client",
                        self.name
                    );
                    let _ = self.report(ConsoleEvent::Displaced).await;
                    return;
                }
                if !self.wait_change(Some(deadline)).await {
                    return;
                }
            }
            log::info!("console vm={} uid={uid}: instance ended", self.name);
        }
    }

    /// Sends `event`, waiting for room; false once the [`Console`] is gone.
    async fn report(&mut self, event: ConsoleEvent) -> bool {
        self.events.send(event).await.is_ok()
    }

    /// Waits for a change of this VM's view (or a lagging announcement, which may have
    /// carried one) or for `deadline`; input meanwhile has no line to go to and is dropped,
    /// as a serial line with nothing attached drops it. False once the [`Console`] is gone.
    async fn wait_change(&mut self, deadline: Option<Instant>) -> bool {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = self.events.closed() => return false,
                _ = &mut sleep => return true,
                r = self.changes.recv() => match r {
                    Ok(n) if *n == *self.name => return true,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return true,
                    // The backend went away: nothing will change any more.
                    Err(broadcast::error::RecvError::Closed) => return false,
                },
                i = self.input.recv() => if i.is_none() { return false },
            }
        }
    }

    /// Moves bytes between the socket and the queues until one side ends. The socket is read
    /// only with room in the event queue reserved, so a SOL client that stops reading stops
    /// the reading of the console (and virt-handler's of the guest's serial port).
    async fn pump(&mut self, socket: Socket) -> Pumped {
        let (mut sink, mut stream) = socket.split();
        let pumped = self.pump_halves(&mut sink, &mut stream).await;
        if let Pumped::Dropped = pumped {
            // Leaving: a close frame, so virt-handler sees a client that left rather than a
            // lost connection; bounded, as the other side may not be reading.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
        }
        pumped
    }

    async fn pump_halves(
        &mut self,
        sink: &mut futures::stream::SplitSink<Socket, Message>,
        stream: &mut futures::stream::SplitStream<Socket>,
    ) -> Pumped {
        let Line { events, input, .. } = self;
        let mut permit = None;
        loop {
            tokio::select! {
                p = events.reserve(), if permit.is_none() => match p {
                    Ok(p) => permit = Some(p),
                    Err(_) => return Pumped::Dropped,
                },
                m = stream.next(), if permit.is_some() => match m {
                    Some(Ok(Message::Binary(b))) => {
                        if !b.is_empty()
                            && let Some(p) = permit.take()
                        {
                            p.send(ConsoleEvent::Output(b.to_vec()));
                        }
                    }
                    // Text frames are not serial data (client-go skips them); a ping's pong
                    // and a close's reply go out with the next read, which then ends.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        log::debug!("console: socket ended: {e}");
                        return Pumped::Closed;
                    }
                    None => return Pumped::Closed,
                },
                i = input.recv() => match i {
                    Some(ConsoleInput::Bytes(b)) => {
                        if b.is_empty() {
                            continue;
                        }
                        tokio::select! {
                            r = sink.send(Message::binary(b)) => if r.is_err() {
                                return Pumped::Closed;
                            },
                            _ = events.closed() => return Pumped::Dropped,
                        }
                    }
                    // The plain.kubevirt.io stream carries bytes only: KubeVirt has no way to
                    // send a break to the guest's serial port (virt-handler copies frames to
                    // the socket of QEMU's chardev, which has no out-of-band signals).
                    Some(ConsoleInput::Break) => {}
                    None => return Pumped::Dropped,
                },
            }
        }
    }
}
