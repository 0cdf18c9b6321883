//! One BMC's socket loop: datagrams into the engine, replies out, actions to the backend
//! with a deadline ([`super::action`]), their results back into the engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::action;
use super::metrics::Metrics;
use crate::backend::Backend;
use crate::backend::console::{Console, ConsoleEvent, ConsoleInput};
use crate::engine::config::BmcConfig;
use crate::engine::session::SessionPublisher;
use crate::engine::{
    Action, ActionError, Bmc, BootOverride, DropReason, Event, MAX_DATAGRAM, Output, Pending,
    SolEffect, ToGuest, When,
};

/// At most one warning about refused sessions per BMC in this interval; the ones in between
/// are counted into the next.
const REFUSAL_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// How long the loop sleeps when no session has a deadline.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

pub struct BmcTask {
    pub name: Arc<str>,
    pub socket: UdpSocket,
    pub bmc: Bmc,
    pub backend: Arc<dyn Backend>,
    pub metrics: Arc<Metrics>,
    /// How long an action may take, a wait for a power transition included.
    pub action_timeout: Duration,
    /// Credential and suite updates (a changed Secret); they apply to the next session.
    pub config: watch::Receiver<Arc<BmcConfig>>,
    /// Where the task publishes its engine's count of active sessions, for `/metrics`.
    pub active_sessions: Arc<AtomicUsize>,
    /// The fast path's session maps for this BMC, when the fast path is on: IPMI 1.5
    /// sessions the engine offers are written there, so the program answers them too.
    pub publisher: Option<Arc<dyn SessionPublisher>>,
}

type Completion = (Pending, SocketAddr, Result<(), ActionError>);

impl BmcTask {
    pub async fn run(mut self) {
        // Completions are rare and bounded by the session table; a small queue is plenty.
        let (done_tx, mut done_rx) = mpsc::channel::<Completion>(16);
        // One byte more than the engine accepts, so oversized datagrams are seen as such.
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut refusals = RefusalLog::default();
        let mut counted = self.bmc.stats;
        let mut sol = SolPipe::new(self.metrics.clone());
        // Idle sessions end on their deadline, not on the next datagram.
        let timer = tokio::time::sleep(IDLE_WAKE);
        tokio::pin!(timer);
        loop {
            let now = tokio::time::Instant::now();
            let deadline = self
                .bmc
                .poll_timeout(now.into_std())
                .map_or(now + IDLE_WAKE, tokio::time::Instant::from_std);
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            tokio::select! {
                () = &mut timer => {
                    self.bmc.handle_timeout(tokio::time::Instant::now().into_std());
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, peer)) => self.on_datagram(&buf[..n], peer, &done_tx).await,
                    Err(e) => {
                        // ICMP errors from earlier sends surface here on Linux; keep serving.
                        log::debug!("bmc={} recv error: {e}", self.name);
                    }
                },
                Ok(()) = self.config.changed() => {
                    let config = self.config.borrow_and_update().clone();
                    self.bmc.set_config(config);
                    log::info!("bmc={} configuration updated", self.name);
                }
                event = next_console_event(&mut sol.console), if sol.wants_output(&self.bmc) => {
                    self.on_console_event(event, &mut sol);
                }
                Some((pending, peer, result)) = done_rx.recv() => {
                    match &result {
                        Ok(()) => self.metrics.actions_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(e) => {
                            log::warn!("bmc={} action failed: {e}", self.name);
                            self.metrics.actions_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        }
                    };
                    if let Some(reply) = self.bmc.complete(pending, result) {
                        self.send(&reply, peer).await;
                    }
                }
            }
            self.drain_events(&mut refusals);
            self.publish_sessions();
            self.drain_sol(&mut sol).await;
            // One place moves the agent's counters, whatever changed the engine's.
            self.metrics.add(&counted, &self.bmc.stats);
            counted = self.bmc.stats;
            self.active_sessions
                .store(self.bmc.active_sessions(), Relaxed);
        }
    }

    /// What the VM's serial line said, into the engine's SOL instance.
    fn on_console_event(&mut self, event: Option<ConsoleEvent>, sol: &mut SolPipe) {
        let now = tokio::time::Instant::now().into_std();
        match event {
            Some(ConsoleEvent::Attached) => self.bmc.sol_console(now, true),
            Some(ConsoleEvent::NoConsole) => self.bmc.sol_console(now, false),
            Some(ConsoleEvent::Output(bytes)) => {
                let taken = self.bmc.sol_from_guest(now, &bytes);
                // What the engine has no room for yet waits here; no more is read until
                // it has gone.
                sol.carry.extend_from_slice(&bytes[taken..]);
            }
            Some(ConsoleEvent::Displaced) => {
                log::info!(
                    "bmc={} serial console taken by another client; SOL ends",
                    self.name
                );
                sol.console = None;
                self.bmc.sol_lost();
            }
            None => {
                // The backend closed the line for good: SOL stays, without characters.
                sol.console = None;
                self.bmc.sol_console(now, false);
            }
        }
    }

    /// Carries out what the engine's SOL instance asked for: the console opened or closed,
    /// input for the guest, waiting output fed in, its packets sent.
    async fn drain_sol(&mut self, sol: &mut SolPipe) {
        while let Some(effect) = self.bmc.poll_sol() {
            match effect {
                SolEffect::Started => {
                    log::info!(
                        "bmc={} SOL activated by session {:#010x}",
                        self.name,
                        self.bmc.sol_owner().unwrap_or(0)
                    );
                    sol.start(self.backend.open_console(&self.name));
                }
                SolEffect::Stopped => {
                    log::info!("bmc={} SOL deactivated", self.name);
                    sol.stop();
                }
                SolEffect::ToGuest(t) => {
                    let input = match t {
                        ToGuest::Bytes(b) => ConsoleInput::Bytes(b),
                        ToGuest::Break => ConsoleInput::Break,
                    };
                    // The engine takes no more input than the queue has room for, so this
                    // fails only when the console went away meanwhile; counted.
                    let sent = sol
                        .console
                        .as_ref()
                        .is_some_and(|c| c.input.try_send(input).is_ok());
                    if !sent {
                        self.metrics.sol_input_dropped.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        // What the guest's input queue takes before the next turn: a packet beyond it goes
        // unacknowledged and the console sends it again. Without a console the instance
        // already refuses characters ("transfer unavailable").
        self.bmc.sol_guest_room(
            sol.console
                .as_ref()
                .map_or(usize::MAX, |c| c.input.capacity()),
        );
        if !sol.carry.is_empty() {
            let now = tokio::time::Instant::now().into_std();
            let taken = self.bmc.sol_from_guest(now, &sol.carry);
            sol.carry.drain(..taken);
        }
        while let Some((peer, datagram)) = self.bmc.poll_transmit() {
            self.send(&datagram, peer).await;
        }
    }

    /// Writes the IPMI 1.5 sessions the engine offers into the fast path's maps, in the same
    /// turn as the activation that made them, before this BMC reads its next datagram.
    fn publish_sessions(&mut self) {
        while let Some(offer) = self.bmc.poll_publish() {
            if let Some(shared) = self.publisher.as_ref().and_then(|p| p.publish(&offer)) {
                self.bmc.attach_shared(offer.session_id, shared);
            }
        }
    }

    /// Logs and counts what the engine reported.
    fn drain_events(&mut self, refusals: &mut RefusalLog) {
        while let Some(event) = self.bmc.poll_event() {
            match event {
                Event::SessionRefused { peer, reason } => {
                    refusals.refused(&self.name, peer, &reason.to_string());
                }
                Event::SessionReclaimed { id, peer } => {
                    log::debug!(
                        "bmc={} peer={peer} idle session {id:#010x} reclaimed",
                        self.name
                    )
                }
                Event::SessionExpired { id, peer } => {
                    log::debug!("bmc={} peer={peer} session {id:#010x} expired", self.name)
                }
                Event::SessionRevoked { id, peer, user } => log::info!(
                    "bmc={} peer={peer} session {id:#010x} of user {user:?} ended: credentials changed",
                    self.name
                ),
                Event::BootFlagsExpired(flags) => self.boot_flags_expired(flags),
            }
        }
    }

    /// One-shot boot flags expired (the engine's timer): the action that clears them goes to
    /// the backend if the machine still has them. No client waits for its result, so it is
    /// only logged and counted.
    fn boot_flags_expired(&self, flags: BootOverride) {
        if self.backend.view(&self.name).and_then(|v| v.boot) != Some(flags) {
            return;
        }
        let action = Action::SetBoot(None);
        log::info!("bmc={} boot flags expired: action={action}", self.name);
        let deadline = tokio::time::Instant::now() + self.action_timeout;
        let (backend, name, metrics) = (
            self.backend.clone(),
            self.name.clone(),
            self.metrics.clone(),
        );
        tokio::spawn(async move {
            match action::run(&*backend, &name, action, When::Now, deadline).await {
                Ok(()) => metrics.actions_ok.fetch_add(1, Relaxed),
                Err(e) => {
                    log::warn!("bmc={name} action={action} failed: {e}");
                    metrics.actions_failed.fetch_add(1, Relaxed)
                }
            };
        });
    }

    async fn on_datagram(
        &mut self,
        datagram: &[u8],
        peer: SocketAddr,
        done: &mpsc::Sender<Completion>,
    ) {
        let Some(view) = self.backend.view(&self.name) else {
            log::debug!("bmc={} no view of the machine; dropping", self.name);
            return;
        };
        let out = self.bmc.handle(
            tokio::time::Instant::now().into_std(),
            peer,
            datagram,
            &view,
        );
        match out {
            Output::Reply(reply) => self.send(&reply, peer).await,
            Output::Absorbed => {}
            Output::Drop(reason) => match reason {
                DropReason::AuthFailed => {
                    log::info!("bmc={} peer={peer} authentication failed", self.name)
                }
                other => log::debug!("bmc={} peer={peer} dropped: {other:?}", self.name),
            },
            Output::Action(action, when, pending) => {
                log::info!(
                    "bmc={} peer={peer} action={action} when={when:?}",
                    self.name
                );
                // The one deadline of this action: waiting for a transition and the backend's
                // answer both fit in it.
                let deadline = tokio::time::Instant::now() + self.action_timeout;
                let (backend, name, done) = (self.backend.clone(), self.name.clone(), done.clone());
                tokio::spawn(async move {
                    let result = action::run(&*backend, &name, action, when, deadline).await;
                    let _ = done.send((pending, peer, result)).await;
                });
            }
        }
    }

    async fn send(&self, reply: &[u8], peer: SocketAddr) {
        if let Err(e) = self.socket.send_to(reply, peer).await {
            log::debug!("bmc={} send to {peer} failed: {e}", self.name);
        }
    }
}

/// The serial console of an active SOL instance, and output read from it that the engine
/// had no room for yet (at most one event's worth: nothing more is read until it is gone).
struct SolPipe {
    console: Option<Console>,
    carry: Vec<u8>,
    active: bool,
    metrics: Arc<Metrics>,
}

impl SolPipe {
    fn new(metrics: Arc<Metrics>) -> SolPipe {
        SolPipe {
            console: None,
            carry: Vec::new(),
            active: false,
            metrics,
        }
    }

    fn start(&mut self, console: Console) {
        self.stop();
        self.console = Some(console);
        self.active = true;
        self.metrics.sol_active.fetch_add(1, Relaxed);
    }

    /// Drops the console, which closes it on the backend's side.
    fn stop(&mut self) {
        self.console = None;
        self.carry = Vec::new();
        if std::mem::take(&mut self.active) {
            self.metrics.sol_active.fetch_sub(1, Relaxed);
        }
    }

    /// Whether to read the console now: only when the engine can take what comes.
    fn wants_output(&self, bmc: &Bmc) -> bool {
        self.console.is_some() && self.carry.is_empty() && bmc.sol_room() > 0
    }
}

impl Drop for SolPipe {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn next_console_event(console: &mut Option<Console>) -> Option<ConsoleEvent> {
    match console {
        Some(c) => c.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Rate-limited warnings about refused sessions: a full table is worth an operator's
/// attention, a flood of them is not worth a flood of log lines.
#[derive(Default)]
struct RefusalLog {
    last: Option<tokio::time::Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn refused(&mut self, bmc: &str, peer: SocketAddr, reason: &str) {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < REFUSAL_WARN_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        let also = match std::mem::take(&mut self.suppressed) {
            0 => String::new(),
            n => format!(" ({n} more refused since the last warning)"),
        };
        log::warn!("bmc={bmc} peer={peer} new session refused: {reason}{also}");
        self.last = Some(now);
    }
}
