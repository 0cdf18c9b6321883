//! The tokio agent: binds one UDP socket per BMC, runs each BMC's loop, serves the admin
//! endpoint, and stops cleanly on SIGINT/SIGTERM.

pub mod admin;
pub mod config;
pub mod metrics;
pub mod registry;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;

use crate::backend::Backend;
use crate::backend::embedded::{Embedded, EmbeddedBackend};
use config::Args;
use metrics::Metrics;
use registry::Registry;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot bind BMC {vm} to {addr}: {source}")]
    Bind {
        vm: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind the admin endpoint {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A GUID derived from the VM's name, stable across agent restarts (the Kubernetes backend
/// uses the VM's firmware UUID instead).
pub fn name_guid(name: &str) -> [u8; 16] {
    use sha2::Digest;
    let h = sha2::Sha256::digest(name.as_bytes());
    let mut g = [0u8; 16];
    g.copy_from_slice(&h[..16]);
    g[6] = (g[6] & 0x0F) | 0x50; // RFC 4122 version 5-style marker
    g[8] = (g[8] & 0x3F) | 0x80;
    crate::engine::vm::uuid_to_wire(g)
}

pub async fn run(args: Args) -> Result<(), AgentError> {
    let config = Arc::new(args.bmc_config().map_err(AgentError::Config)?);
    let vms = args.all_vms();
    if vms.is_empty() {
        return Err(AgentError::Config(
            "no VM to serve: pass --vm NAME=PORT or --generate N".into(),
        ));
    }
    let mut ports = std::collections::HashSet::new();
    if let Some(dup) = vms.iter().find(|v| !ports.insert(v.port)) {
        return Err(AgentError::Config(format!(
            "port {} is given to two VMs",
            dup.port
        )));
    }
    raise_fd_limit(vms.len() as u64 + 256);
    let embedded = Embedded::new(Duration::from_millis(args.transition_ms));
    let backend: Arc<dyn Backend> = Arc::new(EmbeddedBackend(embedded.clone()));
    let metrics = Arc::new(Metrics::default());
    let registry = Arc::new(Registry::new(
        args.listen,
        backend.clone(),
        metrics.clone(),
        Duration::from_millis(args.action_timeout_ms),
    ));
    for vm in &vms {
        embedded.add(&vm.name, vm.on, name_guid(&vm.name));
        let addr = SocketAddr::new(args.listen, vm.port);
        registry
            .add(&vm.name, vm.port, config.clone())
            .await
            .map_err(|source| AgentError::Bind {
                vm: vm.name.clone(),
                addr,
                source,
            })?;
    }
    let listener = TcpListener::bind(args.admin)
        .await
        .map_err(|source| AgentError::Admin {
            addr: args.admin,
            source,
        })?;
    let admin = Arc::new(admin::Admin {
        metrics,
        embedded,
        registry: registry.clone(),
    });
    tokio::spawn(admin.serve(listener));
    log::info!(
        "serving {} BMC(s) on {} (suites {:?}, auth none {}), admin on http://{}",
        vms.len(),
        args.listen,
        config.cipher_suites,
        if config.allow_auth_none {
            "allowed"
        } else {
            "refused"
        },
        args.admin
    );
    shutdown_signal().await;
    log::info!("shutting down");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// One socket per BMC: make room for them all (the soft limit is often 1024).
fn raise_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur < want {
                log::warn!(
                    "open-file limit {} is below the {want} this agent needs",
                    lim.rlim_cur
                );
            }
        }
    }
}
