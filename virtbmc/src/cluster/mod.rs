//! The Kubernetes backend: every agent of the DaemonSet serves every `VirtualMachineBMC`; an
//! elected controller gives them ports, Services and conditions ([`role`] says which process
//! does which).
//!
//! - [`crd`]: the `VirtualMachineBMC` resource (the peer's fields, plus `status.port`).
//! - [`view`]: cluster objects to the engine's view (power from the VMI phase, GUID, boot
//!   override) and a BMC's users (from the Secret).
//! - [`serve`]: reflectors over VMBMCs, VMs, VMIs, Secrets, the agent pods, and our Services
//!   and EndpointSlices. A VM or VMI event recomputes that VM's view at once; a VMBMC, a
//!   Secret one names, or a re-list rebuilds every view and the registry's BMC set
//!   (throttled). Changed names are announced to the fast path.
//! - [`labeled`]: the mode without the CRD, where selected VMs stand for VMBMCs.
//! - [`actions`]: power through KubeVirt's `start`/`stop`/`restart` subresources, boot devices
//!   through guarded JSON Patches ([`boot`]), refusals as Kubernetes Events, aggregated per
//!   VM and reason ([`events`]).
//! - [`overrides`]: how a boot override is recorded, applied and restored so that no
//!   deadline, race or restart leaves a VM booting from the override's device for good.
//! - [`role`]: which of this work a process does (serving, the leader's writes, or both).
//! - [`lease`] and [`leader`]: one elected controller allocates ports, owns the Services, writes
//!   status conditions and restores one-shot boot overrides.
//! - [`endpoints`]: the leader's EndpointSlices, which route each Service to the agent pods.
//! - [`port_key`]: in label mode, the proof that a VM's port annotation is virtbmc's own.
//! - [`names`]: the names a spec refers to, checked before any of them reaches an API path.
//! - [`secrets`]: only the Secrets a VirtualMachineBMC names keep their credentials in memory.
//! - [`hardware`]: a VM's vCPUs and memory as its spec declares them (Redfish's summaries).
//! - [`credentials`]: with the roles split, the controller's per-BMC copies of the users,
//!   the only Secrets agents read.
//! - [`console`]: a VM's serial console, KubeVirt's `console` subresource of its running VMI.
//! - [`media`]: a VM's virtual CD, a CDI DataVolume hotplugged into its CD-ROM drive.

pub mod actions;
pub mod boot;
pub mod console;
pub mod crd;
pub mod credentials;
pub mod endpoints;
pub mod events;
pub mod hardware;
pub mod labeled;
pub mod leader;
pub mod lease;
pub mod media;
pub mod names;
pub mod overrides;
pub mod port_key;
pub mod role;
pub mod secrets;
pub mod serve;
pub mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, ObjectRef, Store};
use tokio::sync::{Notify, broadcast};

use crate::agent::metrics::Metrics;
use crate::agent::ready::Readiness;
use crate::backend::media::{MediaError, MediaFuture, Medium};
use crate::backend::{ActionFuture, Backend};
use crate::engine::config::BmcConfig;
use crate::engine::{Action, ActionError, VmView};
pub use crd::VirtualMachineBMC;

/// Label on every object this agent creates; the Service reflector selects on it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "virtbmc");
/// Label naming the VirtualMachineBMC a Service belongs to.
pub const VMBMC_LABEL: &str = "bmc.kubevirt.io/virtualmachinebmc-name";
/// Which pods of the agent namespace are the agents (the DaemonSet's pod label).
pub const DEFAULT_AGENT_SELECTOR: &str = "app.kubernetes.io/name=virtbmc";

/// What the cluster mode needs beyond a client.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Serving, the leader's writes, or both.
    pub role: role::Role,
    /// Agent ports handed out to VirtualMachineBMCs (status.port).
    pub port_range: RangeInclusive<u16>,
    /// This agent's name in the Lease and in Events.
    pub identity: String,
    pub lease_namespace: String,
    pub lease_name: String,
    /// Where the agent pods run, and the label selector that finds them: the endpoints of
    /// every BMC's Service.
    pub agent_namespace: String,
    pub agent_selector: String,
    /// A holder that has not renewed for this long has lost the Lease.
    pub lease_duration: Duration,
    /// Without the CRD: the VMs this selects get a BMC, all with one Secret's user.
    pub labels: Option<labeled::LabelMode>,
    /// Cipher suites, session limits...: every BMC's configuration, users aside.
    pub base_config: BmcConfig,
    /// The ConfigMap, in each VM's namespace, whose CA verifies https virtual media images.
    pub media_ca_configmap: Option<String>,
}

impl ClusterOptions {
    pub fn new(identity: &str, lease_namespace: &str, base_config: BmcConfig) -> ClusterOptions {
        ClusterOptions {
            role: role::Role::All,
            port_range: 10000..=19999,
            identity: identity.to_string(),
            lease_namespace: lease_namespace.to_string(),
            lease_name: "virtbmc-leader".into(),
            agent_namespace: lease_namespace.to_string(),
            agent_selector: DEFAULT_AGENT_SELECTOR.into(),
            lease_duration: Duration::from_secs(15),
            labels: None,
            base_config,
            media_ca_configmap: None,
        }
    }
}

pub fn vm_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "kubevirt.io",
        "v1",
        "VirtualMachine",
    ))
}

pub fn vmi_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "kubevirt.io",
        "v1",
        "VirtualMachineInstance",
    ))
}

/// The reflectors' caches: what views, the registry and the leader read.
#[derive(Clone)]
pub struct Stores {
    pub vmbmc: Store<VirtualMachineBMC>,
    pub vm: Store<DynamicObject>,
    pub vmi: Store<DynamicObject>,
    pub secret: Store<Secret>,
    pub service: Store<Service>,
    /// The agent pods.
    pub pod: Store<Pod>,
    /// Our EndpointSlices.
    pub endpoint_slice: Store<EndpointSlice>,
    /// Our DataVolumes: the images in the VMs' CD drives.
    pub data_volume: Store<DynamicObject>,
    /// Label mode: the namespace of the one Secret (otherwise each VirtualMachineBMC's own).
    secret_namespace: Option<String>,
    /// An agent of the split roles: the namespace of the controller's copies, which it reads
    /// in place of the tenants' Secrets.
    pub copies_namespace: Option<String>,
}

/// The write halves of [`Stores`], consumed by [`serve::spawn`].
pub struct Writers {
    pub vmbmc: reflector::store::Writer<VirtualMachineBMC>,
    pub vm: reflector::store::Writer<DynamicObject>,
    pub vmi: reflector::store::Writer<DynamicObject>,
    pub secret: reflector::store::Writer<Secret>,
    pub service: reflector::store::Writer<Service>,
    pub pod: reflector::store::Writer<Pod>,
    pub endpoint_slice: reflector::store::Writer<EndpointSlice>,
    pub data_volume: reflector::store::Writer<DynamicObject>,
    /// Secret copies for the Secret reflector (see [`secrets`]).
    pub secret_refeed: futures::channel::mpsc::UnboundedReceiver<secrets::Refeed>,
}

impl Stores {
    fn new(
        secret_namespace: Option<String>,
        copies_namespace: Option<String>,
        secret_refeed: futures::channel::mpsc::UnboundedReceiver<secrets::Refeed>,
    ) -> (Stores, Writers) {
        let vmbmc = reflector::store::Writer::default();
        let vm = reflector::store::Writer::new(vm_resource());
        let vmi = reflector::store::Writer::new(vmi_resource());
        let secret = reflector::store::Writer::default();
        let service = reflector::store::Writer::default();
        let pod = reflector::store::Writer::default();
        let endpoint_slice = reflector::store::Writer::default();
        let data_volume = reflector::store::Writer::new(media::dv_resource());
        let stores = Stores {
            vmbmc: vmbmc.as_reader(),
            vm: vm.as_reader(),
            vmi: vmi.as_reader(),
            secret: secret.as_reader(),
            service: service.as_reader(),
            pod: pod.as_reader(),
            endpoint_slice: endpoint_slice.as_reader(),
            data_volume: data_volume.as_reader(),
            secret_namespace,
            copies_namespace,
        };
        (
            stores,
            Writers {
                vmbmc,
                vm,
                vmi,
                secret,
                service,
                pod,
                endpoint_slice,
                data_volume,
                secret_refeed,
            },
        )
    }

    /// (namespace, name) of the Secret with `b`'s user.
    pub fn secret_ref(&self, b: &VirtualMachineBMC) -> (String, String) {
        if let Some(ns) = &self.copies_namespace {
            return (ns.clone(), credentials::copy_name(b));
        }
        let ns = match &self.secret_namespace {
            Some(ns) => ns.clone(),
            None => b.metadata.namespace.clone().unwrap_or_default(),
        };
        (ns, b.spec.auth_secret_ref.name.clone())
    }

    /// The Secret with `b`'s user, if cached.
    pub fn auth_secret(&self, b: &VirtualMachineBMC) -> Option<Arc<Secret>> {
        let (ns, name) = self.secret_ref(b);
        self.secret.get(&ObjectRef::new(&name).within(&ns))
    }

    pub fn vm(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.vm
            .get(&ObjectRef::new_with(name, vm_resource()).within(ns))
    }

    pub fn vmi(&self, ns: &str, name: &str) -> Option<Arc<DynamicObject>> {
        self.vmi
            .get(&ObjectRef::new_with(name, vmi_resource()).within(ns))
    }

    /// Every VirtualMachineBMC, oldest first (then by namespace and name): the order that
    /// decides who keeps a port two of them claim.
    pub fn vmbmcs(&self) -> Vec<Arc<VirtualMachineBMC>> {
        let mut v = self.vmbmc.state();
        v.sort_by(|a, b| {
            let key = |o: &VirtualMachineBMC| {
                (
                    o.metadata.creation_timestamp.clone().map(|t| t.0),
                    o.metadata.namespace.clone(),
                    o.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        v
    }

    /// The VirtualMachineBMC that serves each VM, keyed (namespace, vm): the oldest naming
    /// it (`bmcs` in [`Stores::vmbmcs`] order). One Service `<vm>-virtbmc`, one port.
    pub fn owners(
        bmcs: &[Arc<VirtualMachineBMC>],
    ) -> HashMap<(String, String), Arc<VirtualMachineBMC>> {
        let mut m = HashMap::new();
        for b in bmcs {
            let key = (
                b.metadata.namespace.clone().unwrap_or_default(),
                b.spec.virtual_machine_ref.name.clone(),
            );
            m.entry(key).or_insert_with(|| b.clone());
        }
        m
    }

    /// For a VirtualMachineBMC naming a VM an older one already names: that older one's name.
    pub fn duplicate_of(
        owners: &HashMap<(String, String), Arc<VirtualMachineBMC>>,
        b: &VirtualMachineBMC,
    ) -> Option<String> {
        let key = (
            b.metadata.namespace.clone().unwrap_or_default(),
            b.spec.virtual_machine_ref.name.clone(),
        );
        let first = owners.get(&key)?;
        (first.metadata.uid != b.metadata.uid)
            .then(|| first.metadata.name.clone().unwrap_or_default())
    }
}

/// What the BMC tasks read, keyed by BMC name `<namespace>/<vm>`: each served VM's view and
/// the VirtualMachineBMC serving it (the oldest naming the VM). One lock for both, so a
/// per-VM refresh and a full rebuild never interleave into a stale view.
#[derive(Default)]
struct Table {
    views: HashMap<String, VmView>,
    owners: HashMap<String, Arc<VirtualMachineBMC>>,
}

/// What the leader must look at again: everything, or the BMCs of some VMs.
#[derive(Default, Debug)]
pub(crate) struct Dirty {
    pub all: bool,
    pub names: BTreeSet<String>,
}

/// State shared by the backend, the serving loop and the leader.
pub struct Shared {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    /// Which caches have synced and whether the BMCs they name are bound (`/readyz`).
    pub ready: Arc<Readiness>,
    pub opts: ClusterOptions,
    pub stores: Stores,
    table: RwLock<Table>,
    changes: broadcast::Sender<Arc<str>>,
    leader: AtomicBool,
    leader_dirty: Mutex<Dirty>,
    /// Repeated Events folded into one, per VM and reason.
    pub(crate) events: events::SharedCorrelator,
    /// Wakes the serving loop (full rebuild) and the leader loop.
    pub(crate) serve_wake: Notify,
    pub(crate) leader_wake: Notify,
    /// The Secrets VirtualMachineBMCs name: the only ones whose credentials are cached.
    named_secrets: Mutex<secrets::Named>,
    /// True once `named_secrets` reflects the loaded VirtualMachineBMC cache.
    pub(crate) named_ready: tokio::sync::watch::Sender<bool>,
    pub(crate) secret_refeed: futures::channel::mpsc::UnboundedSender<secrets::Refeed>,
    /// Boot override changes running past their requests' deadlines.
    work: Mutex<tokio::task::JoinSet<()>>,
    /// Set once the start-up pass over every recorded boot override is done.
    pub(crate) overrides_swept: AtomicBool,
    /// VMs (`ns/vm`) whose boot override a request of this agent is changing: its own work
    /// finishes them, so the leader's pass in the same process leaves them alone.
    pub(crate) overrides_changing: Mutex<BTreeSet<String>>,
    /// Label mode: the key of the port annotations' proofs, once read (or made).
    pub(crate) port_key: std::sync::OnceLock<port_key::PortKey>,
}

impl Shared {
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    pub(crate) fn set_leader(&self, on: bool) {
        if self.leader.swap(on, Ordering::Relaxed) != on {
            log::info!("identity={} leader={on}", self.opts.identity);
            self.wake_leader_all();
        }
    }

    /// Runs `f` to its end whoever waits for it (reaping the ones already ended).
    pub(crate) fn spawn_work(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut work = self.work.lock().unwrap_or_else(|e| e.into_inner());
        while work.try_join_next().is_some() {}
        work.spawn(f);
    }

    /// Stops the work [`Shared::spawn_work`] started, as a process exit would: what it leaves
    /// half done, the next agent finishes ([`overrides`]).
    pub fn abort_work(&self) {
        self.work
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .abort_all();
    }

    /// Gives the changes under way up to `d` to end (at shutdown); what is left then is
    /// dropped, for the next agent to finish.
    pub async fn finish_work(&self, d: Duration) {
        let mut work = std::mem::take(&mut *self.work.lock().unwrap_or_else(|e| e.into_inner()));
        let _ = tokio::time::timeout(d, async { while work.join_next().await.is_some() {} }).await;
    }

    /// Whether the start-up pass has finished or undone every override left half done.
    pub fn overrides_swept(&self) -> bool {
        self.overrides_swept.load(Ordering::Relaxed)
    }

    /// Times a KubeVirt call into the metrics.
    pub(crate) async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, kube::Error> {
        let start = std::time::Instant::now();
        let r = f.await;
        let m = &self.metrics;
        m.kube_calls.fetch_add(1, Ordering::Relaxed);
        m.kube_call_micros
            .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        if r.is_err() {
            m.kube_call_errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// After a change that may touch any BMC (a VirtualMachineBMC, a Secret, a Service, a
    /// re-list): the serving loop rebuilds everything and the leader reconciles everything.
    pub(crate) fn wake(&self) {
        self.serve_wake.notify_one();
        self.wake_leader_all();
    }

    pub(crate) fn wake_leader_all(&self) {
        self.dirty().all = true;
        self.leader_wake.notify_one();
    }

    pub(crate) fn named(&self) -> std::sync::MutexGuard<'_, secrets::Named> {
        self.named_secrets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dirty(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.leader_dirty.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the leader must reconcile now (and forgets it).
    pub(crate) fn take_dirty(&self) -> Dirty {
        std::mem::take(&mut *self.dirty())
    }

    /// After a VM or VMI event: only that VM's BMC can change, so only its view is
    /// recomputed, at once (no debounce, no pass over every BMC: this is the path from a
    /// phase change to the fast-path map and the next answer), and only it is handed to the
    /// leader (conditions, the end of a one-shot override).
    pub(crate) fn vm_changed(&self, ns: &str, vm: &str) {
        let name = format!("{ns}/{vm}");
        let mut t = self.table();
        let Some(b) = t.owners.get(&name).cloned() else {
            return;
        };
        let view = serve::view_of(&self.stores, &b, ns, vm, &name);
        let changed = t.views.get(&name) != Some(&view);
        if changed {
            t.views.insert(name.clone(), view);
        }
        drop(t);
        if changed {
            let _ = self.changes.send(Arc::from(name.as_str()));
        }
        self.dirty().names.insert(name);
        self.leader_wake.notify_one();
    }

    fn table(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn view(&self, name: &str) -> Option<VmView> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .views
            .get(name)
            .copied()
    }

    /// Whether a served VirtualMachineBMC names this Secret.
    pub(crate) fn uses_secret(&self, ns: &str, secret: &str) -> bool {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .owners
            .values()
            .any(|b| self.stores.secret_ref(b) == (ns.to_string(), secret.to_string()))
    }

    /// The VirtualMachineBMC serving the BMC `name` (`<namespace>/<vm>`).
    pub fn owner(&self, name: &str) -> Option<Arc<VirtualMachineBMC>> {
        self.table
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .owners
            .get(name)
            .cloned()
    }

    /// Recomputes every view and owner from the caches, announcing the names whose view
    /// changed, appeared or went; returns the BMCs to serve by port. Computed under the
    /// table's lock: a VM event meanwhile waits, then recomputes from the newer cache.
    pub(crate) fn rebuild(&self) -> BTreeMap<u16, serve::Served> {
        let mut t = self.table();
        let (views, owners, bmcs) = serve::desired(&self.stores);
        let mut changed: Vec<Arc<str>> = views
            .iter()
            .filter(|(k, v)| t.views.get(*k) != Some(v))
            .map(|(k, _)| Arc::from(k.as_str()))
            .collect();
        changed.extend(
            t.views
                .keys()
                .filter(|k| !views.contains_key(*k))
                .map(|k| Arc::from(k.as_str())),
        );
        t.views = views;
        t.owners = owners;
        drop(t);
        for name in changed {
            // Nobody listening (no fast path) is fine.
            let _ = self.changes.send(name);
        }
        bmcs
    }
}

/// The backend the BMC tasks read and act through.
#[derive(Clone)]
pub struct KubeBackend {
    pub shared: Arc<Shared>,
}

impl KubeBackend {
    /// A backend with empty caches; [`serve::spawn`] fills them.
    pub fn new(
        client: Client,
        opts: ClusterOptions,
        metrics: Arc<Metrics>,
    ) -> (KubeBackend, Writers) {
        let (refeed_tx, refeed_rx) = futures::channel::mpsc::unbounded();
        // Label mode reads its one Secret whatever the role.
        let copies = (opts.role.serves() && opts.role.credential_copies() && opts.labels.is_none())
            .then(|| opts.agent_namespace.clone());
        let (stores, writers) = Stores::new(
            opts.labels.as_ref().map(|m| m.secret_namespace.clone()),
            copies,
            refeed_rx,
        );
        let shared = Arc::new(Shared {
            client,
            metrics,
            ready: Arc::new(Readiness::default()),
            opts,
            stores,
            table: RwLock::new(Table::default()),
            leader_dirty: Mutex::new(Dirty::default()),
            events: Default::default(),
            changes: broadcast::channel(4096).0,
            leader: AtomicBool::new(false),
            serve_wake: Notify::new(),
            leader_wake: Notify::new(),
            named_secrets: Mutex::default(),
            named_ready: tokio::sync::watch::channel(false).0,
            secret_refeed: refeed_tx,
            work: Mutex::default(),
            overrides_swept: AtomicBool::new(false),
            overrides_changing: Mutex::default(),
            port_key: std::sync::OnceLock::new(),
        });
        (KubeBackend { shared }, writers)
    }
}

/// BMC names are `<namespace>/<vm>`.
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    name.split_once('/')
}

impl Backend for KubeBackend {
    fn view(&self, vm: &str) -> Option<VmView> {
        self.shared.view(vm)
    }

    fn perform(&self, vm: &str, action: Action, deadline: tokio::time::Instant) -> ActionFuture {
        let shared = self.shared.clone();
        let name = vm.to_string();
        Box::pin(async move {
            let (ns, vm) = split_name(&name)
                .filter(|(ns, vm)| names::is_label(ns) && names::is_subdomain(vm))
                .ok_or_else(|| ActionError::Failed(format!("{name} is not namespace/name")))?;
            actions::perform(&shared, ns, vm, action, deadline).await
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.shared.changes.subscribe()
    }

    fn open_console(&self, vm: &str) -> crate::backend::console::Console {
        console::open(&self.shared, vm)
    }

    fn hardware(&self, vm: &str) -> Option<crate::backend::Hardware> {
        let (ns, name) = split_name(vm)?;
        let object = self.shared.stores.vm(ns, name)?;
        Some(hardware::of_vm(&object.data))
    }

    fn media(&self, vm: &str) -> Result<Option<Medium>, MediaError> {
        let (ns, name) = split_name(vm).ok_or_else(|| MediaError::NoMachine(vm.to_string()))?;
        media::read(&self.shared.stores, ns, name)
    }

    fn insert_media(&self, vm: &str, image: &str) -> MediaFuture {
        let (shared, name, image) = (self.shared.clone(), vm.to_string(), image.to_string());
        Box::pin(async move {
            let (ns, vm) = split_name(&name).ok_or_else(|| MediaError::NoMachine(name.clone()))?;
            let r = media::insert(&shared, ns, vm, &image).await;
            media::record_failure(&shared, ns, vm, "insert", &r);
            r
        })
    }

    fn eject_media(&self, vm: &str) -> MediaFuture {
        let (shared, name) = (self.shared.clone(), vm.to_string());
        Box::pin(async move {
            let (ns, vm) = split_name(&name).ok_or_else(|| MediaError::NoMachine(name.clone()))?;
            let r = media::eject(&shared, ns, vm).await.map(|_| ());
            media::record_failure(&shared, ns, vm, "eject", &r);
            r
        })
    }
}
