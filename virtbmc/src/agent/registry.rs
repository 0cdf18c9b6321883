//! The BMCs this agent serves, by port: added, reconfigured and removed while running (the
//! Kubernetes backend adds one per VirtualMachineBMC; the embedded backend adds them at start).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics::Metrics;
use super::server::BmcTask;
use crate::backend::Backend;
use crate::engine::Bmc;
use crate::engine::config::BmcConfig;
use crate::engine::site::{LanInterface, Site, WallClock};
use crate::fastpath::{self, FastPath};
use crate::redfish::Redfish;

/// The fast path, shared by the registry (map writes) and the admin endpoint (counters).
pub type SharedFastPath = Arc<Mutex<FastPath>>;

struct Entry {
    name: Arc<str>,
    config: watch::Sender<Arc<BmcConfig>>,
    /// Active sessions of this BMC, written by its task: a removed BMC leaves the sum with
    /// its entry.
    sessions: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    /// The BMC's Redfish port (TCP, same number), when Redfish is served.
    redfish: Option<JoinHandle<()>>,
}

pub struct Registry {
    listen: IpAddr,
    /// The interface behind `listen`, looked up once: every BMC reports it.
    lan: Option<LanInterface>,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    action_timeout: Duration,
    entries: Mutex<HashMap<u16, Entry>>,
    fastpath: SharedFastPath,
    redfish: Option<Arc<Redfish>>,
}

impl Registry {
    pub fn new(
        listen: IpAddr,
        backend: Arc<dyn Backend>,
        metrics: Arc<Metrics>,
        action_timeout: Duration,
        fastpath: SharedFastPath,
    ) -> Registry {
        let lan = super::netinfo::lan_interface(listen);
        match &lan {
            Some(l) => log::info!(
                "listen address {listen}: netmask {} gateway {}",
                l.netmask,
                l.gateway.map_or("none".to_string(), |g| g.to_string())
            ),
            None => log::info!(
                "listen address {listen} is on no single interface: BMCs report no IP address"
            ),
        }
        Registry {
            listen,
            lan,
            backend,
            metrics,
            action_timeout,
            entries: Mutex::new(HashMap::new()),
            fastpath,
            redfish: None,
        }
    }

    /// Serves Redfish on each BMC's port number over TCP, beside IPMI on UDP.
    pub fn with_redfish(mut self, redfish: Arc<Redfish>) -> Registry {
        self.redfish = Some(redfish);
        self
    }

    fn fast(&self) -> std::sync::MutexGuard<'_, FastPath> {
        self.fastpath.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the fast path's view of one BMC: power from the backend's snapshot, auth types
    /// and cipher records from the engine's own encoder. A failed write leaves the map as it
    /// was; userspace still answers correctly, so it is logged, not fatal.
    fn publish(&self, fp: &mut FastPath, name: &str, port: u16, config: &BmcConfig) {
        if !fp.is_on() {
            return;
        }
        let on = self.backend.view(name).is_some_and(|v| v.power.is_on());
        match fastpath::bmc_state(config, on).and_then(|state| fp.set_bmc(port, &state)) {
            Ok(()) => log::debug!("fastpath: bmc={name} port={port} power_on={on}"),
            Err(e) => log::warn!("fastpath: bmc={name} port={port} map update failed: {e}"),
        }
    }

    /// Re-publishes every BMC serving `name` (its view changed).
    pub fn sync(&self, name: &str) {
        let targets: Vec<(u16, Arc<BmcConfig>)> = self
            .lock()
            .iter()
            .filter(|(_, e)| &*e.name == name)
            .map(|(p, e)| (*p, e.config.borrow().clone()))
            .collect();
        let mut fp = self.fast();
        for (port, config) in targets {
            self.publish(&mut fp, name, port, &config);
        }
    }

    /// Re-publishes every BMC (after missed change notifications).
    pub fn sync_all(&self) {
        let all: Vec<(Arc<str>, u16, Arc<BmcConfig>)> = self
            .lock()
            .iter()
            .map(|(p, e)| (e.name.clone(), *p, e.config.borrow().clone()))
            .collect();
        let mut fp = self.fast();
        for (name, port, config) in all {
            self.publish(&mut fp, &name, port, &config);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `port` and starts serving the BMC of `name`. Replaces a BMC already on the port.
    pub async fn add(&self, name: &str, port: u16, config: Arc<BmcConfig>) -> std::io::Result<()> {
        self.remove(port);
        let socket = UdpSocket::bind(SocketAddr::new(self.listen, port)).await?;
        let tcp = match &self.redfish {
            Some(_) => Some(TcpListener::bind(SocketAddr::new(self.listen, port)).await?),
            None => None,
        };
        let (tx, rx) = watch::channel(config.clone());
        let name: Arc<str> = Arc::from(name);
        let redfish = self.redfish.as_ref().zip(tcp).map(|(rf, listener)| {
            crate::redfish::spawn(
                rf,
                listener,
                crate::redfish::Service {
                    name: name.clone(),
                    backend: self.backend.clone(),
                    config: tx.subscribe(),
                    action_timeout: self.action_timeout,
                    metrics: rf.metrics.clone(),
                    sessions: Default::default(),
                    efi: std::sync::atomic::AtomicBool::new(true),
                },
            )
        });
        let mut bmc = Bmc::new(config.clone());
        bmc.set_site(Site {
            vm_name: name.to_string(),
            local: SocketAddr::new(self.listen, port),
            lan: self.lan,
            clock: wall_clock(),
        });
        let publisher = {
            // The socket is bound first, so a packet the program passes always has a receiver.
            let mut fp = self.fast();
            self.publish(&mut fp, &name, port, &config);
            fp.session_publisher(port)
        };
        let sessions = Arc::new(AtomicUsize::new(0));
        let task = BmcTask {
            name: name.clone(),
            socket,
            bmc,
            backend: self.backend.clone(),
            metrics: self.metrics.clone(),
            action_timeout: self.action_timeout,
            config: rx,
            active_sessions: sessions.clone(),
            publisher,
        };
        let handle = tokio::spawn(task.run());
        self.lock().insert(
            port,
            Entry {
                name,
                config: tx,
                sessions,
                task: handle,
                redfish,
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
        let entry = self.lock().remove(&port);
        match entry {
            Some(e) => {
                // The program must stop answering before the socket goes.
                if let Err(err) = self.fast().remove_bmc(port) {
                    log::warn!("fastpath: port={port} removal failed: {err}");
                }
                e.task.abort();
                if let Some(r) = e.redfish {
                    r.abort();
                }
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

    /// Active sessions summed over every BMC (the `virtbmc_sessions_active` gauge).
    pub fn active_sessions(&self) -> usize {
        self.lock().values().map(|e| e.sessions.load(Relaxed)).sum()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The wall-clock time now, for a BMC's SEL clock (None if the clock is before 1970).
fn wall_clock() -> Option<WallClock> {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(WallClock {
        at: std::time::Instant::now(),
        unix,
    })
}

impl Drop for Registry {
    fn drop(&mut self) {
        let ports: Vec<u16> = self.lock().keys().copied().collect();
        for port in ports {
            self.remove(port);
        }
    }
}
