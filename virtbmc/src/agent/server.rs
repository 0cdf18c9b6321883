//! One BMC's socket loop: datagrams into the engine, replies out, actions to the backend
//! with a deadline, their results back into the engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

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
            let deadline = self.bmc.poll_timeout();
            let timer = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = timer => self.on_timer(),
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

    /// The engine's timer fired (a one-shot boot override expired): its action goes to the
    /// backend; no client waits for the result, so it is only logged and counted.
    fn on_timer(&mut self) {
        let view = self.backend.view(&self.name);
        let now = tokio::time::Instant::now().into_std();
        let Some(action) = self.bmc.handle_timeout(now, view.as_ref()) else {
            return;
        };
        log::info!("bmc={} boot flags expired: action={action}", self.name);
        let fut = self.backend.perform(&self.name, action);
        let (deadline, name, metrics) =
            (self.action_timeout, self.name.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let result = tokio::time::timeout(deadline, fut)
                .await
                .unwrap_or(Err(ActionError::Timeout));
            match result {
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
            Output::Action(action, pending) => {
                log::info!("bmc={} peer={peer} action={action}", self.name);
                let fut = self.backend.perform(&self.name, action);
                let deadline = self.action_timeout;
                let done = done.clone();
                tokio::spawn(async move {
                    let result = tokio::time::timeout(deadline, fut)
                        .await
                        .unwrap_or(Err(ActionError::Timeout));
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
