//! Every role: reflectors keep the caches current. A VM or VMI event updates that VM's
//! view on the spot (`Shared::vm_changed`); any other change that matters wakes the serving
//! loop, which recomputes every view and the set of BMCs (port, name, users) the registry
//! serves (a controller's serves none). Each cache's first full list, then the first pass
//! that binds every BMC, make the process ready (`/readyz`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::view::{
    VM_FIELDS, VMI_FIELDS, boot_override, guid, power_state, prune, users_from_secret,
};
use super::{
    KubeBackend, MANAGED_BY, Shared, Stores, VirtualMachineBMC, Writers, labeled, names, port_key,
    secrets, vm_resource, vmi_resource,
};
use crate::agent::name_guid;
use crate::agent::registry::Registry;
use crate::engine::VmView;
use crate::engine::config::{BmcConfig, User};

/// Starts the reflectors, the serving loop and the leader's loops, those the role
/// ([`super::ClusterOptions::role`]) runs. Dropping the handles does not stop them; abort
/// them to stop.
pub fn spawn(
    backend: &KubeBackend,
    writers: Writers,
    registry: Arc<Registry>,
) -> Vec<JoinHandle<()>> {
    let sh = backend.shared.clone();
    let client = sh.client.clone();
    let managed = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let vmbmcs = match sh.opts.labels.clone() {
        // No CRD: the selected VMs stand for VirtualMachineBMCs.
        // The selected VMs are watched once the port proofs' key is known, so that no VM is
        // ever read without its port's proof checked.
        Some(m) => {
            let (key_sh, vms) = (sh.clone(), client.clone());
            let key = futures::stream::once(async move {
                loop {
                    match port_key::load_or_create(&key_sh.client, &m.secret_namespace).await {
                        Ok(key) => {
                            let _ = key_sh.port_key.set(key.clone());
                            return (m, key);
                        }
                        Err(e) => {
                            log::warn!("label mode: {e}; retrying");
                            tokio::time::sleep(RETRY).await;
                        }
                    }
                }
            });
            let events = key.flat_map(move |(m, key)| {
                watcher(
                    Api::<DynamicObject>::all_with(vms.clone(), &vm_resource()),
                    watcher::Config::default().labels(&m.selector),
                )
                .default_backoff()
                .map_ok(move |ev| labeled::events(ev, &m.secret_name, &key))
            });
            reflect_stream(
                &sh,
                "virtualmachines (selected)",
                writers.vmbmc,
                events,
                labeled_event,
            )
        }
        None => reflect(
            &sh,
            "virtualmachinebmcs",
            writers.vmbmc,
            Api::<VirtualMachineBMC>::all(client.clone()),
            watcher::Config::default(),
            vmbmc_event,
            |_| {},
        ),
    };
    // Label mode reads one Secret; otherwise any VirtualMachineBMC may name any Secret of
    // its namespace.
    let (secrets, secret_watch) = match (&sh.opts.labels, &sh.stores.copies_namespace) {
        (Some(m), _) => (
            Api::<Secret>::namespaced(client.clone(), &m.secret_namespace),
            watcher::Config::default().fields(&format!("metadata.name={}", m.secret_name)),
        ),
        // An agent of the split roles: the controller's copies, in its own namespace.
        (None, Some(ns)) => (
            Api::<Secret>::namespaced(client.clone(), ns),
            watcher::Config::default().labels(&super::credentials::selector()),
        ),
        (None, None) => (
            Api::<Secret>::all(client.clone()),
            watcher::Config::default(),
        ),
    };
    // Every role reads the BMCs, their VMs, VMIs and Secrets: the agent to serve them, the
    // controller for the conditions it writes and the overrides it restores.
    let mut tasks = vec![
        vmbmcs,
        reflect(
            &sh,
            "virtualmachines",
            writers.vm,
            Api::<DynamicObject>::all_with(client.clone(), &vm_resource()),
            watcher::Config::default(),
            vm_event,
            |o| prune(&mut o.data, VM_FIELDS),
        ),
        reflect(
            &sh,
            "virtualmachineinstances",
            writers.vmi,
            Api::<DynamicObject>::all_with(client.clone(), &vmi_resource()),
            watcher::Config::default(),
            vm_event,
            |o| prune(&mut o.data, VMI_FIELDS),
        ),
        reflect_secrets(
            &sh,
            writers.secret,
            writers.secret_refeed,
            secrets,
            secret_watch,
        ),
    ];
    let role = sh.opts.role;
    if role.controls() {
        tasks.extend([
            reflect(
                &sh,
                "services",
                writers.service,
                Api::<Service>::all(client.clone()),
                watcher::Config::default().labels(&managed),
                leader_event,
                |_| {},
            ),
            reflect(
                &sh,
                "pods",
                writers.pod,
                Api::<Pod>::namespaced(client.clone(), &sh.opts.agent_namespace),
                watcher::Config::default().labels(&sh.opts.agent_selector),
                leader_event,
                |_| {},
            ),
            reflect(
                &sh,
                "endpointslices",
                writers.endpoint_slice,
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default().labels(&super::endpoints::managed_selector()),
                leader_event,
                |_| {},
            ),
            tokio::spawn(super::lease::run(sh.clone())),
            tokio::spawn(super::leader::run(sh.clone())),
        ]);
    } else {
        // No reflector feeds these caches: dropping their writers ends any wait for them
        // (`wait_ready`), and nothing reads them outside the leader's tasks.
        drop((writers.service, writers.pod, writers.endpoint_slice));
    }
    if role.serves() {
        tasks.push(tokio::spawn(super::overrides::sweep_on_start(sh.clone())));
        // Only what serves Redfish reads the virtual CDs' DataVolumes.
        tasks.push(super::media::reflect(&sh, writers.data_volume));
    } else {
        drop(writers.data_volume);
    }
    // The controller keeps the table of views and owners too (what the leader reconciles
    // per VM), but binds no socket.
    tasks.push(tokio::spawn(serve_loop(
        sh,
        role.serves().then_some(registry),
    )));
    tasks
}

/// How long a change waits for the next ones before the views are recomputed: small
/// against a client's retry time and the 100 ms within which a power change should show.
pub const DEBOUNCE: Duration = Duration::from_millis(10);

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A VirtualMachineBMC may change any BMC: a full pass; and the Secrets it names keep
/// their credentials in the cache ([`secrets`]).
fn vmbmc_event(sh: &Shared, ev: &watcher::Event<VirtualMachineBMC>) {
    secrets::vmbmc_event(sh, ev);
    sh.wake();
}

/// The Secret reflector: of a Secret only the keys a BMC reads are kept, and only if a
/// VirtualMachineBMC names it ([`secrets::trim`]); the other Secrets of the cluster (TLS
/// keys, tokens) are watched only because RBAC cannot narrow the watch, and their contents
/// have no business in this process. In CRD mode the watch starts once the named set is
/// known, and copies of Secrets that become named (or stop being named) are merged in.
fn reflect_secrets(
    sh: &Arc<Shared>,
    writer: reflector::store::Writer<Secret>,
    refeed: futures::channel::mpsc::UnboundedReceiver<secrets::Refeed>,
    api: Api<Secret>,
    wc: watcher::Config,
) -> JoinHandle<()> {
    let crd_mode = sh.opts.labels.is_none();
    let mut ready = sh.named_ready.subscribe();
    let watch = futures::stream::once(async move {
        if crd_mode {
            let _ = ready.wait_for(|r| *r).await;
        }
    })
    .flat_map(move |()| watcher(api.clone(), wc.clone()).default_backoff());
    let (for_filter, for_trim) = (sh.clone(), sh.clone());
    let refed = refeed
        .filter(move |r| std::future::ready(secrets::still_current(&for_filter, r)))
        .map(|(s, _)| Ok(watcher::Event::Apply(s)));
    let events = futures::stream::select(watch, refed).modify(move |o| {
        o.managed_fields_mut().clear();
        o.annotations_mut().remove(LAST_APPLIED);
        secrets::trim(&for_trim, o);
    });
    reflect_stream(sh, "secrets", writer, events, secret_event)
}

/// Secrets are watched cluster-wide (a VirtualMachineBMC may name any Secret of its
/// namespace), and most of them are no BMC's: only a named one's change is a full pass.
fn secret_event(sh: &Shared, ev: &watcher::Event<Secret>) {
    match ev {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
            if sh.uses_secret(&o.namespace().unwrap_or_default(), &o.name_any()) {
                sh.wake();
            }
        }
        watcher::Event::InitDone => sh.wake(),
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

/// Our Services and EndpointSlices and the agent pods matter to the leader only, never to
/// what is served.
fn leader_event<K>(sh: &Shared, _: &watcher::Event<K>) {
    sh.wake_leader_all();
}

/// A VM or VMI event concerns the BMC of that VM only. A re-list is applied to the cache
/// at its end (InitDone) and may have dropped objects without a Delete: a full pass then.
fn vm_event(sh: &Shared, ev: &watcher::Event<DynamicObject>) {
    match ev {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
            sh.vm_changed(&o.namespace().unwrap_or_default(), &o.name_any())
        }
        watcher::Event::InitDone => sh.wake(),
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

fn reflect<K>(
    sh: &Arc<Shared>,
    what: &'static str,
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    wc: watcher::Config,
    on_event: fn(&Shared, &watcher::Event<K>),
    prune: fn(&mut K),
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // default_backoff: a failing LIST or WATCH is retried with a growing delay instead of
    // a hot loop. managedFields and kubectl's last-applied annotation are dropped before
    // caching: memory the agent never reads, and for Secrets a second copy of the password;
    // `prune` drops what else of the object is never read.
    let events = watcher(api, wc).default_backoff().modify(move |o| {
        o.managed_fields_mut().clear();
        o.annotations_mut().remove(LAST_APPLIED);
        prune(o);
    });
    reflect_stream(sh, what, writer, events, on_event)
}

/// Feeds a cache from a stream of watch events; each event reaches `on_event` after the
/// cache has it.
fn reflect_stream<K>(
    sh: &Arc<Shared>,
    what: &'static str,
    writer: reflector::store::Writer<K>,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    on_event: fn(&Shared, &watcher::Event<K>),
) -> JoinHandle<()>
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    sh.ready.expect_cache(what);
    reflect_untracked(sh, what, writer, events, on_event)
}

/// The same, for a cache readiness does not wait for (its first list only marks it synced,
/// which readiness ignores for a cache it never expected).
pub(super) fn reflect_untracked<K>(
    sh: &Arc<Shared>,
    what: &'static str,
    writer: reflector::store::Writer<K>,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    on_event: fn(&Shared, &watcher::Event<K>),
) -> JoinHandle<()>
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let sh = sh.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(reflector::reflector(writer, events));
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => {
                    if matches!(ev, watcher::Event::InitDone) {
                        sh.ready.cache_synced(what);
                    }
                    on_event(&sh, &ev)
                }
                Err(e) => {
                    sh.metrics
                        .watch_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    log::warn!("watch={what} error: {e}");
                }
            }
        }
        log::error!("watch={what} ended");
    })
}

/// A selected VM changed (label mode): its VirtualMachineBMC stands in for a real one, but
/// most VM changes (status, devices) leave it as it was; only a new, changed or gone one
/// is a full pass. The rest is the VM reflector's per-VM work.
fn labeled_event(sh: &Shared, ev: &watcher::Event<VirtualMachineBMC>) {
    match ev {
        watcher::Event::Apply(b) => {
            let name = format!(
                "{}/{}",
                b.namespace().unwrap_or_default(),
                b.spec.virtual_machine_ref.name
            );
            let same = sh
                .owner(&name)
                .is_some_and(|old| old.metadata.uid == b.metadata.uid && old.status == b.status);
            if !same {
                sh.wake();
            }
        }
        watcher::Event::Delete(_) | watcher::Event::InitDone => sh.wake(),
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

/// What one BMC needs to be served.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub name: String,
    pub users: Vec<User>,
}

/// One VM's view, as the VirtualMachineBMC `b` serving it and the caches say.
pub fn view_of(
    stores: &Stores,
    b: &VirtualMachineBMC,
    ns: &str,
    vm_name: &str,
    name: &str,
) -> VmView {
    let vm = stores.vm(ns, vm_name);
    let vmi = stores.vmi(ns, vm_name);
    VmView {
        power: power_state(vm.as_deref(), vmi.as_deref()),
        boot: boot_override(
            b.status.as_ref().and_then(|s| s.boot_override.as_ref()),
            vm.as_ref().map(|o| &o.data),
        ),
        guid: vm
            .as_deref()
            .and_then(guid)
            .unwrap_or_else(|| name_guid(name)),
    }
}

/// Every VM a VirtualMachineBMC names: its view and the VirtualMachineBMC serving it (the
/// oldest naming it), by BMC name; and the BMCs to serve, by port.
#[allow(clippy::type_complexity)]
pub fn desired(
    stores: &Stores,
) -> (
    HashMap<String, VmView>,
    HashMap<String, Arc<VirtualMachineBMC>>,
    BTreeMap<u16, Served>,
) {
    let mut views = HashMap::new();
    let mut owners_by_name = HashMap::new();
    let mut bmcs = BTreeMap::new();
    let all = stores.vmbmcs();
    let owners = Stores::owners(&all);
    for b in all.iter() {
        // A name that cannot be an object's is never served, so no BMC task, power action or
        // boot override ever puts it into an API path; the leader's conditions say why.
        if Stores::duplicate_of(&owners, b).is_some() || names::check_refs(b).is_err() {
            continue;
        }
        let ns = b.namespace().unwrap_or_default();
        let vm_name = &b.spec.virtual_machine_ref.name;
        let name = format!("{ns}/{vm_name}");
        views.insert(name.clone(), view_of(stores, b, &ns, vm_name, &name));
        owners_by_name.insert(name.clone(), b.clone());
        let Some(port) = b.status.as_ref().and_then(|s| s.port) else {
            continue;
        };
        if !b.active() {
            continue;
        }
        if bmcs.contains_key(&port) {
            // The older claim keeps it; the leader moves this one.
            log::warn!("bmc={name} port={port} already served for another VirtualMachineBMC");
            continue;
        }
        let secret = stores.auth_secret(b);
        // A missing or unusable Secret leaves the BMC without users: every login is refused,
        // and the SecretAvailable condition says why.
        let users = users_from_secret(secret.as_deref()).unwrap_or_default();
        bmcs.insert(port, Served { name, users });
    }
    (views, owners_by_name, bmcs)
}

/// A DynamicObject as the JSON the API server sent (metadata included), for [`super::view`].
pub fn object_json(o: &DynamicObject) -> serde_json::Value {
    let mut v = o.data.clone();
    if !v.is_object() {
        v = serde_json::json!({});
    }
    v["metadata"] = serde_json::to_value(&o.metadata).unwrap_or_default();
    v
}

/// Recomputes the views after every change; with a registry, binds and releases the BMC
/// sockets to match.
async fn serve_loop(sh: Arc<Shared>, registry: Option<Arc<Registry>>) {
    wait_ready(&sh).await;
    log::info!("caches ready; serving");
    let mut served: BTreeMap<u16, Served> = BTreeMap::new();
    loop {
        let start = std::time::Instant::now();
        let want = sh.rebuild();
        let settled = match &registry {
            Some(r) => sync_registry(&sh.opts.base_config, r, &mut served, want).await,
            None => true,
        };
        if settled {
            sh.ready.bmcs_bound();
        }
        let cost = start.elapsed();
        log::debug!(
            "serve: {} BMC(s) with a port, rebuilt in {cost:?}",
            served.len()
        );
        // A failed bind is retried soon; otherwise a rare full pass guards against anything
        // missed (every change that matters wakes us).
        let idle = if settled { RESYNC } else { RETRY };
        let _ = tokio::time::timeout(idle, sh.serve_wake.notified()).await;
        // A burst of events (a re-list, the leader writing thousands of ports or conditions)
        // is one rebuild, not one per event: each rebuild reads every VirtualMachineBMC, so
        // the wait grows with its cost and rebuilds take at most a fifth of a core. VM and
        // VMI changes do not wait for this: they update their own view at once.
        tokio::time::sleep(DEBOUNCE.max(cost * 4)).await;
    }
}

/// How soon a failed bind or API write is tried again.
pub const RETRY: Duration = Duration::from_secs(5);
/// A full pass when nothing woke us for this long.
pub const RESYNC: Duration = Duration::from_secs(60);

/// Until every cache holds its first full list (a cache this role keeps no reflector for
/// has no writer, and its wait ends at once). Polled with a timeout in a loop: a store's
/// readiness is a single oneshot receiver that remembers only the last task's waker, so of
/// two tasks waiting at once one may never be woken (kube-runtime 5 `DelayedInit`).
pub(crate) async fn wait_ready(sh: &Shared) {
    let s = &sh.stores;
    loop {
        let all = async {
            tokio::join!(
                s.vmbmc.wait_until_ready(),
                s.vm.wait_until_ready(),
                s.vmi.wait_until_ready(),
                s.secret.wait_until_ready(),
                s.service.wait_until_ready()
            )
        };
        if tokio::time::timeout(Duration::from_millis(100), all)
            .await
            .is_ok()
        {
            return;
        }
    }
}

/// Brings the registry to `want`; false if some BMC could not be bound.
async fn sync_registry(
    base: &BmcConfig,
    registry: &Registry,
    served: &mut BTreeMap<u16, Served>,
    want: BTreeMap<u16, Served>,
) -> bool {
    let mut settled = true;
    let gone: Vec<u16> = served
        .keys()
        .filter(|p| !want.contains_key(p))
        .copied()
        .collect();
    for port in gone {
        registry.remove(port);
        served.remove(&port);
    }
    for (port, s) in want {
        match served.get(&port) {
            Some(old) if *old == s => continue,
            Some(old) if old.name == s.name => {
                registry.set_config(port, Arc::new(config_with(base, &s.users)));
                log::info!("bmc={} port={port} credentials updated", s.name);
            }
            _ => {
                if let Err(e) = registry
                    .add(&s.name, port, Arc::new(config_with(base, &s.users)))
                    .await
                {
                    log::warn!("bmc={} port={port} cannot bind: {e}", s.name);
                    served.remove(&port);
                    settled = false;
                    continue;
                }
                log::info!(
                    "bmc={} port={port} serving ({} user(s))",
                    s.name,
                    s.users.len()
                );
            }
        }
        served.insert(port, s);
    }
    settled
}

fn config_with(base: &BmcConfig, users: &[User]) -> BmcConfig {
    let mut c = base.clone();
    c.users = users.to_vec();
    c
}
