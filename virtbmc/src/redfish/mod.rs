//! Redfish over HTTPS beside each BMC's IPMI: the same port number on TCP, the same users,
//! power view, boot override and action path as the IPMI side (one backend, two protocols).
//!
//! - [`tls`]: the certificate (files, reloaded, or self-signed).
//! - [`conn`]: the accept loop and HTTP/1.1 connections, with their limits and timeouts.
//! - [`routes`]: the resources and what each method does.
//! - [`auth`]: Basic credentials and sessions.
//! - [`system`]: power and boot mapped onto the backend's view and actions.
//! - [`media`]: the virtual CD, its resources and what InsertMedia and a PATCH ask for.
//! - [`error`]: error answers with Base registry messages.

pub mod auth;
pub mod conn;
pub mod error;
pub mod media;
pub mod metrics;
mod resources;
pub mod routes;
pub mod system;
pub mod tls;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::backend::Backend;
use crate::engine::config::BmcConfig;
pub use metrics::RedfishMetrics;

/// What every Redfish port of the agent shares.
pub struct Redfish {
    pub tls: tokio_rustls::TlsAcceptor,
    /// Plain HTTP on the same ports as well (`--redfish-plain-http`).
    pub plain_http: bool,
    pub metrics: Arc<RedfishMetrics>,
}

/// One BMC's Redfish service.
pub struct Service {
    pub name: Arc<str>,
    pub backend: Arc<dyn Backend>,
    pub config: watch::Receiver<Arc<BmcConfig>>,
    pub action_timeout: Duration,
    pub metrics: Arc<RedfishMetrics>,
    pub sessions: Mutex<auth::Sessions>,
    /// The boot mode last asked for, reported while no override holds one.
    pub efi: AtomicBool,
}

impl Service {
    pub fn config(&self) -> Arc<BmcConfig> {
        self.config.borrow().clone()
    }

    pub fn hardware(&self) -> Option<crate::backend::Hardware> {
        self.backend.hardware(&self.name)
    }

    pub fn sessions(&self) -> std::sync::MutexGuard<'_, auth::Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Serves `listener` until the returned task is aborted (the BMC's removal); its
/// connections end with it. Sessions of users whose credentials change end at once.
pub fn spawn(
    redfish: &Redfish,
    listener: tokio::net::TcpListener,
    service: Service,
) -> tokio::task::JoinHandle<()> {
    let service = Arc::new(service);
    let (tls, plain_http) = (redfish.tls.clone(), redfish.plain_http);
    tokio::spawn(async move {
        let mut changes = service.config.clone();
        let watch_config = {
            let service = service.clone();
            async move {
                while changes.changed().await.is_ok() {
                    let config = changes.borrow_and_update().clone();
                    service.sessions().revoke_changed(&config);
                }
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = conn::serve(listener, tls, plain_http, service) => {}
            () = watch_config => {}
        }
    })
}
