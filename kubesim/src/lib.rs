//! kubesim: a Kubernetes API server for tests and the demo, speaking the wire protocol the
//! `kube` client expects (plain HTTP/1.1, JSON, chunked watch streams), with a simulated
//! KubeVirt: the VM mutating webhook, virt-api's start/stop/restart and volume hotplug
//! subresources, a virt-controller/virt-handler that moves VMIs through their phases, and
//! CDI's DataVolume importer (which really asks the image URL).
//!
//! With [`Config::auth`] it authenticates bearer tokens, authorizes each request with RBAC
//! and runs ValidatingAdmissionPolicies on updates (see [`rbac`]).
//!
//! It is a fixture: never linked into the agent. It implements what the apiserver, KubeVirt's
//! subresources and the VirtualMachineBMC resource answer, as their sources define it.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let sim = kubesim::Server::start("127.0.0.1:0".parse().unwrap()).await?;
//! sim.seed_vm("default", "vm1", "Always");
//! sim.seed_secret("default", "bmc-auth", &[("username", "admin"), ("password", "password")]);
//! sim.seed_vmbmc("default", "vm1-bmc", "vm1", "bmc-auth");
//! // kube::Config::new(sim.url().parse().unwrap()) ...
//! sim.inject(kubesim::Fault::on("PUT", "/virtualmachines/vm1/start").status(409));
//! # Ok(()) }
//! ```

mod admission;
mod cdi;
mod console;
mod controller;
mod endpointslices;
mod faults;
mod hotplug;
mod http;
mod kinds;
mod kubevirt;
mod pods;
pub mod rbac;
mod selectors;
mod status;
mod store;
mod table;
mod util;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub use faults::{Fault, FaultAction};
pub use http::RecordedRequest;
pub use kinds::Kind;
pub use kubevirt::{LEGACY_UUID_NS, VM_FINALIZER, VMI_FINALIZER, legacy_uuid};
pub use status::ApiError;
pub use store::Store;

/// Tunables. `Config::default()` suits tests (phases advance every 100-300 ms).
#[derive(Clone, Debug)]
pub struct Config {
    /// How many change events the server keeps for watches to resume from; a watch from an
    /// older resourceVersion gets the in-stream ERROR 410 (like etcd compaction).
    pub history_window: usize,
    /// How often an idle watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Stream length when the client sends no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
    /// Run the simulated virt-controller.
    pub controller: bool,
    /// Delay of each VMI phase step ("" -> Pending -> Scheduling -> Scheduled -> Running),
    /// drawn uniformly from this range.
    pub phase_delay: (Duration, Duration),
    /// Graceful guest shutdown: deletionTimestamp -> Succeeded.
    pub stop_delay: Duration,
    /// Shutdown when the VMI's terminationGracePeriodSeconds is 0 or 1 (forced stop/restart).
    pub force_stop_delay: Duration,
    /// Succeeded -> finalizer removed (the VMI is gone).
    pub cleanup_delay: Duration,
    /// `status.nodeName` and the `kubevirt.io/nodeName` label set at Scheduled. A
    /// comma-separated list spreads VMIs over several nodes (stably, by VM name).
    pub node_name: String,
    /// The controller's resync period when idle (it also wakes on every change and at each
    /// phase deadline).
    pub controller_tick: Duration,
    /// Bearer tokens, and the RBAC objects and ValidatingAdmissionPolicies to enforce; None:
    /// no authentication, every request allowed.
    pub auth: Option<rbac::AuthConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            history_window: 10_000,
            bookmark_interval: Duration::from_secs(1),
            default_watch_timeout: Duration::from_secs(1800),
            controller: true,
            phase_delay: (Duration::from_millis(100), Duration::from_millis(300)),
            stop_delay: Duration::from_millis(300),
            force_stop_delay: Duration::from_millis(50),
            cleanup_delay: Duration::from_millis(100),
            node_name: "node1".into(),
            controller_tick: Duration::from_secs(2),
            auth: None,
        }
    }
}

/// The server. Start it with [`Server::start`] or [`Server::start_with`].
pub struct Server;

impl Server {
    /// Bind `addr` (port 0 picks a free port) with the default [`Config`].
    pub async fn start(addr: SocketAddr) -> std::io::Result<Handle> {
        Self::start_with(addr, Config::default()).await
    }

    pub async fn start_with(addr: SocketAddr, cfg: Config) -> std::io::Result<Handle> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let store = Store::new(cfg.history_window);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let state = Arc::new(http::State {
            store: store.clone(),
            faults: faults::Faults::default(),
            log: Mutex::new(Vec::new()),
            cfg: cfg.clone(),
            stop: stop_rx.clone(),
            resets: Mutex::new(Default::default()),
            consoles: Default::default(),
            auth: match &cfg.auth {
                Some(a) => Some(rbac::Auth::new(a).map_err(std::io::Error::other)?),
                None => None,
            },
        });
        let accept_state = state.clone();
        let accept_stop = stop_rx.clone();
        let accept = tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(s) => s,
                        Err(e) => {
                            log::warn!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = http::stopped(accept_stop.clone()) => return,
                };
                let _ = stream.set_nodelay(true);
                let st = accept_state.clone();
                let conn_stop = st.stop.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| http::handle(st.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades();
                    tokio::select! {
                        r = conn => if let Err(e) = r { log::debug!("connection: {e}") },
                        _ = http::stopped(conn_stop) => {}
                    }
                });
            }
        });
        let controller = cfg.controller.then(|| {
            tokio::spawn(
                controller::Controller::new(store.clone(), cfg.clone()).run(stop_rx.clone()),
            )
        });
        // CDI's importer runs beside virt-controller: both are the cluster's controllers.
        let importer = cfg
            .controller
            .then(|| tokio::spawn(cdi::run(store.clone(), IMPORT_STEP, stop_rx.clone())));
        log::info!("kubesim listening on http://{local}");
        Ok(Handle {
            addr: local,
            state,
            stop: stop_tx,
            tasks: vec![Some(accept), controller, importer]
                .into_iter()
                .flatten()
                .collect(),
        })
    }
}

/// How long each DataVolume import phase lasts: long enough for a client to see each one.
pub const IMPORT_STEP: std::time::Duration = std::time::Duration::from_millis(200);

/// A running server: seed and read objects, inject faults, stop.
pub struct Handle {
    addr: SocketAddr,
    state: Arc<http::State>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// What RBAC refused on one server, readable while it runs (cheap to clone).
#[derive(Clone)]
pub struct Audit(Arc<http::State>);

impl Audit {
    /// Every request RBAC refused so far (none without [`Config::auth`]).
    pub fn denials(&self) -> Vec<rbac::Denial> {
        self.0
            .auth
            .as_ref()
            .map(|a| a.denials())
            .unwrap_or_default()
    }

    /// The grants of the policy that allowed at least one request of `user`.
    pub fn used_grants(&self, user: &str) -> std::collections::BTreeSet<rbac::Grant> {
        self.0
            .auth
            .as_ref()
            .map(|a| a.used_by(user))
            .unwrap_or_default()
    }
}

/// A realistic VirtualMachine manifest: one containerDisk (bootOrder 1), one masquerade
/// interface, labels `kubevirt.io/vm: <name>` on the template.
pub fn vm_manifest(name: &str, run_strategy: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": { "name": name, "labels": { "app": name } },
        "spec": {
            "runStrategy": run_strategy,
            "template": {
                "metadata": { "labels": { "kubevirt.io/vm": name } },
                "spec": {
                    "domain": {
                        "cpu": { "cores": 1 },
                        "memory": { "guest": "128Mi" },
                        "devices": {
                            "disks": [{ "name": "rootdisk", "disk": { "bus": "virtio" }, "bootOrder": 1 }],
                            "interfaces": [{ "name": "default", "masquerade": {} }],
                        },
                        "resources": { "requests": { "memory": "128Mi" } },
                    },
                    "networks": [{ "name": "default", "pod": {} }],
                    "terminationGracePeriodSeconds": 30,
                    "volumes": [{ "name": "rootdisk", "containerDisk": { "image": "quay.io/containerdisks/fedora:latest" } }],
                },
            },
        },
    })
}

impl Handle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `kube::Config::new(url.parse()?)`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) pointing at this server, no credentials, default `namespace`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        self.kubeconfig_as(namespace, None)
    }

    /// A kubeconfig (YAML) pointing at this server, default `namespace`, authenticating
    /// with this bearer token (None: no credentials).
    pub fn kubeconfig_as(&self, namespace: &str, token: Option<&str>) -> String {
        let user = match token {
            Some(t) => format!("\n    token: {t}"),
            None => " {}".into(),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kubesim\n  cluster:\n    server: {}\n\
             users:\n- name: kubesim\n  user:{user}\ncontexts:\n- name: kubesim\n  context:\n    cluster: kubesim\n    \
             user: kubesim\n    namespace: {namespace}\ncurrent-context: kubesim\n",
            self.url()
        )
    }

    /// The object store, for anything the helpers below do not cover.
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.state.store.resource_version()
    }

    /// Create any object as a POST would (defaults, webhook; `.status` is dropped for kinds
    /// with a status subresource: use [`Handle::set_status`] for that).
    pub fn create(&self, kind: Kind, ns: &str, obj: Value) -> Result<Value, ApiError> {
        self.state.store.create(kind, ns, obj, false)
    }

    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        self.state.store.get(kind, ns, name)
    }

    /// All objects of a kind in `ns` (or everywhere).
    pub fn list(&self, kind: Kind, ns: Option<&str>) -> Vec<Value> {
        self.state
            .store
            .all(kind, ns)
            .into_iter()
            .map(|a| (*a).clone())
            .collect()
    }

    /// A JSON merge patch on the object (not its status), unconditional.
    pub fn merge_patch(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        patch: Value,
    ) -> Result<Value, ApiError> {
        let body = serde_json::to_vec(&patch).expect("serialisable");
        self.state
            .store
            .patch(
                kind,
                ns,
                name,
                store::PatchType::Merge,
                &body,
                store::Target::Main,
                None,
                false,
            )
            .map(|(o, _)| o)
    }

    /// Replace `.status` (any kind), as a controller would.
    pub fn set_status(&self, kind: Kind, ns: &str, name: &str, status: Value) -> Option<Value> {
        self.state
            .store
            .modify(kind, ns, name, |o| o["status"] = status)
    }

    /// DELETE as a client would (finalizers hold the object).
    pub fn delete(&self, kind: Kind, ns: &str, name: &str) -> Result<(), ApiError> {
        self.state
            .store
            .delete(kind, ns, name, &json!({}), false)
            .map(|_| ())
    }

    /// Create a VirtualMachine from [`vm_manifest`] with this runStrategy.
    pub fn seed_vm(&self, ns: &str, name: &str, run_strategy: &str) -> Value {
        self.create(Kind::VirtualMachine, ns, vm_manifest(name, run_strategy))
            .expect("seed_vm: create VirtualMachine")
    }

    /// Create a Secret from plain-text keys (stored base64 in `data`).
    pub fn seed_secret(&self, ns: &str, name: &str, data: &[(&str, &str)]) -> Value {
        let sd: serde_json::Map<String, Value> = data
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        self.create(
            Kind::Secret,
            ns,
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "stringData": sd }),
        )
        .expect("seed_secret: create Secret")
    }

    /// Create a VirtualMachineBMC (`bmc.kubevirt.io/v1beta1`) for `vm` with credentials in `secret`.
    pub fn seed_vmbmc(&self, ns: &str, name: &str, vm: &str, secret: &str) -> Value {
        self.create(
            Kind::VirtualMachineBmc,
            ns,
            json!({
                "apiVersion": "bmc.kubevirt.io/v1beta1",
                "kind": "VirtualMachineBMC",
                "metadata": { "name": name },
                "spec": {
                    "virtualMachineRef": { "name": vm },
                    "authSecretRef": { "name": secret },
                },
            }),
        )
        .expect("seed_vmbmc: create VirtualMachineBMC")
    }

    /// The VMI's `status.phase` ("" before the controller's first step), None if no VMI.
    pub fn vmi_phase(&self, ns: &str, name: &str) -> Option<String> {
        self.get(Kind::VirtualMachineInstance, ns, name)
            .map(|v| kubevirt::phase(&v).to_string())
    }

    /// The VMI's uid, None if no VMI.
    pub fn vmi_uid(&self, ns: &str, name: &str) -> Option<String> {
        self.get(Kind::VirtualMachineInstance, ns, name)
            .and_then(|v| v["metadata"]["uid"].as_str().map(str::to_string))
    }

    /// The VM's `status.printableStatus`.
    pub fn printable_status(&self, ns: &str, name: &str) -> Option<String> {
        self.get(Kind::VirtualMachine, ns, name)
            .and_then(|v| v["status"]["printableStatus"].as_str().map(str::to_string))
    }

    /// Force a VMI phase, e.g. "Failed" to simulate a guest crash.
    pub fn set_vmi_phase(&self, ns: &str, name: &str, phase: &str) -> Option<Value> {
        self.state
            .store
            .modify(Kind::VirtualMachineInstance, ns, name, |o| {
                if !o["status"].is_object() {
                    o["status"] = json!({});
                }
                o["status"]["phase"] = json!(phase);
            })
    }

    /// Poll `cond` every 10 ms until it holds or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&Handle) -> bool,
    ) -> bool {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until the VMI `ns/name` is in `phase` (and return its uid).
    pub async fn wait_vmi_phase(
        &self,
        ns: &str,
        name: &str,
        phase: &str,
        timeout: Duration,
    ) -> Option<String> {
        if self
            .wait_until(timeout, |h| h.vmi_phase(ns, name).as_deref() == Some(phase))
            .await
        {
            self.vmi_uid(ns, name)
        } else {
            None
        }
    }

    /// Whether a client is connected to the serial console of VMI `ns/name`.
    pub fn console_attached(&self, ns: &str, name: &str) -> bool {
        self.state.consoles.attached(&format!("{ns}/{name}"))
    }

    /// How many times `PUT .../virtualmachineinstances/{name}/reset` succeeded for this VMI.
    pub fn reset_count(&self, ns: &str, name: &str) -> u64 {
        self.state
            .resets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&format!("{ns}/{name}"))
            .copied()
            .unwrap_or(0)
    }

    /// Add a fault rule (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        self.state.faults.add(fault);
    }

    pub fn clear_faults(&self) {
        self.state.faults.clear();
    }

    /// Cut every open watch connection mid-stream (no final chunk): clients see an EOF and
    /// re-watch from their last resourceVersion.
    pub fn drop_watches(&self) {
        self.state.store.drop_watches();
    }

    /// Forget the watch history: open watches get an in-stream ERROR 410 Expired and close,
    /// and a watch from any older resourceVersion gets the same; clients must re-list.
    pub fn expire_watches(&self) {
        self.state.store.expire_watches();
    }

    /// Keep only the last `n` events for watches to resume from.
    pub fn set_history_window(&self, n: usize) {
        self.state.store.set_history_window(n);
    }

    /// Every request seen so far (method and path?query).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn clear_requests(&self) {
        self.state
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Every request RBAC refused so far (none without [`Config::auth`]).
    pub fn denials(&self) -> Vec<rbac::Denial> {
        self.audit().denials()
    }

    /// A handle on what RBAC refused, to keep beside a client of this server.
    pub fn audit(&self) -> Audit {
        Audit(self.state.clone())
    }

    /// The grants of the policy that allowed at least one request of `user`.
    pub fn used_grants(&self, user: &str) -> std::collections::BTreeSet<rbac::Grant> {
        self.audit().used_grants(user)
    }

    /// The grants the policy gives `user` (`NAME[,GROUP...]`) that no request of theirs used.
    pub fn unused_grants(&self, user: &str) -> Vec<rbac::Grant> {
        let (Some(auth), Some(u)) = (&self.state.auth, rbac::User::parse(user)) else {
            return vec![];
        };
        let used = auth.used_by(&u.name);
        auth.grants_of(&u)
            .into_iter()
            .filter(|g| !used.contains(g))
            .collect()
    }

    /// Stop serving: the listener, every connection and watch, and the controller.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}
