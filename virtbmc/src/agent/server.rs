//! One BMC's socket loop: datagrams into the engine, replies out, actions to the backend
//! with a deadline ([`super::action`]), their results back into the engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use super::action;
use super::metrics::Metrics;
use crate::backend::Backend;
use crate::engine::config::BmcConfig;
use crate::engine::{ActionError, Bmc, DropReason, MAX_DATAGRAM, Output, Pending};

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
}

type Completion = (Pending, SocketAddr, Result<(), ActionError>);

impl BmcTask {
    pub async fn run(mut self) {
        // Completions are rare and bounded by the session table; a small queue is plenty.
        let (done_tx, mut done_rx) = mpsc::channel::<Completion>(16);
        // One byte more than the engine accepts, so oversized datagrams are seen as such.
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            tokio::select! {
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
                Some((pending, peer, result)) = done_rx.recv() => {
                    match &result {
                        Ok(()) => self.metrics.actions_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        Err(e) => {
                            log::warn!("bmc={} action failed: {e}", self.name);
                            self.metrics.actions_failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        }
                    };
                    if let Some(reply) = self.bmc.complete(tokio::time::Instant::now().into_std(), pending, result) {
                        self.send(&reply, peer).await;
                    }
                }
            }
        }
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
        let before = self.bmc.stats;
        let out = self.bmc.handle(
            tokio::time::Instant::now().into_std(),
            peer,
            datagram,
            &view,
        );
        self.metrics.add(&before, &self.bmc.stats);
        match out {
            Output::Reply(reply) => self.send(&reply, peer).await,
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
