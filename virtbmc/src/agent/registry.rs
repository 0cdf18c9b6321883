//! The BMCs this agent serves, by port: added, reconfigured and removed while running (the
//! Kubernetes backend adds one per VirtualMachineBMC; the embedded backend adds them at start).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics::Metrics;
use super::server::BmcTask;
use crate::backend::Backend;
use crate::engine::Bmc;
use crate::engine::config::BmcConfig;

struct Entry {
    name: Arc<str>,
    config: watch::Sender<Arc<BmcConfig>>,
    task: JoinHandle<()>,
}

pub struct Registry {
    listen: IpAddr,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    action_timeout: Duration,
    entries: Mutex<HashMap<u16, Entry>>,
}

impl Registry {
    pub fn new(
        listen: IpAddr,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
        action_timeout: Duration,
    ) -> Registry {
        Registry {
            listen,
            backend,
            metrics,
            action_timeout,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `port` and starts serving the BMC of `name`. Replaces a BMC already on the port.
    pub async fn add(&self, name: &str, port: u16, config: Arc<BmcConfig>) -> std::io::Result<()> {
        self.remove(port);
        let socket = UdpSocket::bind(SocketAddr::new(self.listen, port)).await?;
        let (tx, rx) = watch::channel(config.clone());
        let name: Arc<str> = Arc::from(name);
        let task = BmcTask {
            name: name.clone(),
            socket,
            bmc: Bmc::new(config),
            backend: self.backend.clone(),
            metrics: self.metrics.clone(),
            action_timeout: self.action_timeout,
            config: rx,
        };
        let handle = tokio::spawn(task.run());
        self.lock().insert(
            port,
            Entry {
                name,
                config: tx,
                task: handle,
            },
        );
        Ok(())
    }

    /// New credentials or suites take effect for the next session on that BMC.
    pub fn set_config(&self, port: u16, config: Arc<BmcConfig>) -> bool {
        self.lock()
            .get(&port)
            .is_some_and(|e| e.config.send(config).is_ok())
    }

    pub fn remove(&self, port: u16) -> bool {
        match self.lock().remove(&port) {
            Some(e) => {
                e.task.abort();
                log::info!("bmc={} port={port} removed", e.name);
                true
            }
            None => false,
        }
    }

    /// (name, port) of every BMC, sorted by port.
    pub fn list(&self) -> Vec<(Arc<str>, u16)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(p, e)| (e.name.clone(), *p))
            .collect();
        v.sort_by_key(|(_, p)| *p);
        v
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for (_, e) in self.lock().drain() {
            e.task.abort();
        }
    }
}
