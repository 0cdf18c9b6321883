//! Every agent: reflectors keep the caches current, and after any change the serving loop
//! recomputes each VM's view and the set of BMCs (port, name, users) the registry serves.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::view::{boot_override, guid, power_state, users_from_secret};
use super::{
    KubeBackend, MANAGED_BY, Shared, VirtualMachineBMC, Writers, vm_resource, vmi_resource,
};
use crate::agent::name_guid;
use crate::agent::registry::Registry;
use crate::engine::VmView;
use crate::engine::config::{BmcConfig, User};

/// Starts the reflectors, the serving loop and the leader's loops. Dropping the handles
/// does not stop them; abort them to stop.
pub fn spawn(
    backend: &KubeBackend,
    writers: Writers,
    registry: Arc<Registry>,
) -> Vec<JoinHandle<()>> {
    let sh = backend.shared.clone();
    let client = sh.client.clone();
    let managed = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let mut tasks = vec![
        reflect(
            &sh,
            "virtualmachinebmcs",
            writers.vmbmc,
            Api::<VirtualMachineBMC>::all(client.clone()),
            watcher::Config::default(),
        ),
        reflect(
            &sh,
            "virtualmachines",
            writers.vm,
            Api::<DynamicObject>::all_with(client.clone(), &vm_resource()),
            watcher::Config::default(),
        ),
        reflect(
            &sh,
            "virtualmachineinstances",
            writers.vmi,
            Api::<DynamicObject>::all_with(client.clone(), &vmi_resource()),
            watcher::Config::default(),
        ),
        reflect(
            &sh,
            "secrets",
            writers.secret,
            Api::<Secret>::all(client.clone()),
            watcher::Config::default(),
        ),
        reflect(
            &sh,
            "services",
            writers.service,
            Api::<Service>::all(client.clone()),
            watcher::Config::default().labels(&managed),
        ),
        reflect(
            &sh,
            "pods",
            writers.pod,
            Api::<Pod>::namespaced(client.clone(), &sh.opts.agent_namespace),
            watcher::Config::default().labels(&sh.opts.agent_selector),
        ),
        reflect(
            &sh,
            "endpointslices",
            writers.endpoint_slice,
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default().labels(&super::endpoints::managed_selector()),
        ),
    ];
    tasks.push(tokio::spawn(serve_loop(sh.clone(), registry)));
    tasks.push(tokio::spawn(super::lease::run(sh.clone())));
    tasks.push(tokio::spawn(super::leader::run(sh)));
    tasks
}

/// How long a change waits for the next ones before the views are recomputed: small
/// against a client's retry time and the 100 ms the issue allows for a power change to show.
pub const DEBOUNCE: Duration = Duration::from_millis(10);

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn reflect<K>(
    sh: &Arc<Shared>,
    what: &'static str,
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    wc: watcher::Config,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let sh = sh.clone();
    tokio::spawn(async move {
        // default_backoff: a failing LIST or WATCH is retried with a growing delay instead of
        // a hot loop; every event (including a re-list's InitDone, after which vanished
        // objects are gone from the store without a Delete event) wakes the loops.
        // managedFields and kubectl's last-applied annotation are dropped before caching:
        // memory the agent never reads, and for Secrets a second copy of the password.
        let mut events = std::pin::pin!(reflector::reflector(
            writer,
            watcher(api, wc).default_backoff().modify(|o| {
                o.managed_fields_mut().clear();
                o.annotations_mut().remove(LAST_APPLIED);
            })
        ));
        while let Some(ev) = events.next().await {
            if let Err(e) = ev {
                sh.metrics
                    .watch_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                log::warn!("watch={what} error: {e}");
                continue;
            }
            sh.wake();
        }
        log::error!("watch={what} ended");
    })
}

/// What one BMC needs to be served.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub name: String,
    pub users: Vec<User>,
}

/// Views of every VM a VirtualMachineBMC names, and the BMCs to serve by port.
pub fn desired(sh: &Shared) -> (HashMap<String, VmView>, BTreeMap<u16, Served>) {
    let mut views = HashMap::new();
    let mut bmcs = BTreeMap::new();
    let all = sh.stores.vmbmcs();
    let owners = super::Stores::owners(&all);
    for b in all.iter().cloned() {
        let ns = b.namespace().unwrap_or_default();
        let vm_name = &b.spec.virtual_machine_ref.name;
        let name = format!("{ns}/{vm_name}");
        let vm = sh.stores.vm(&ns, vm_name);
        let vmi = sh.stores.vmi(&ns, vm_name);
        let status = b.status.as_ref();
        let view = VmView {
            power: power_state(vm.as_deref(), vmi.as_deref()),
            boot: boot_override(
                status.and_then(|s| s.boot_override.as_ref()),
                vm.as_ref().map(|o| &o.data),
            ),
            guid: vm
                .as_deref()
                .and_then(guid)
                .unwrap_or_else(|| name_guid(&name)),
        };
        views.insert(name.clone(), view);
        let Some(port) = status.and_then(|s| s.port) else {
            continue;
        };
        if !b.spec.ipmi_enabled() || super::Stores::duplicate_of(&owners, &b).is_some() {
            continue;
        }
        if bmcs.contains_key(&port) {
            // The older claim keeps it; the leader moves this one.
            log::warn!("bmc={name} port={port} already served for another VirtualMachineBMC");
            continue;
        }
        let secret = sh
            .stores
            .secret
            .get(&ObjectRef::new(&b.spec.auth_secret_ref.name).within(&ns));
        // A missing or unusable Secret leaves the BMC without users: every login is refused,
        // and the SecretAvailable condition says why.
        let users = users_from_secret(secret.as_deref()).unwrap_or_default();
        bmcs.insert(port, Served { name, users });
    }
    (views, bmcs)
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

async fn serve_loop(sh: Arc<Shared>, registry: Arc<Registry>) {
    wait_ready(&sh).await;
    log::info!("caches ready; serving");
    let mut served: BTreeMap<u16, Served> = BTreeMap::new();
    loop {
        let (views, want) = desired(&sh);
        log::debug!(
            "serve: {} view(s), {} BMC(s) with a port",
            views.len(),
            want.len()
        );
        sh.set_views(views);
        sync_registry(&sh.opts.base_config, &registry, &mut served, want).await;
        // A failed bind is retried on the next change or after a while.
        let _ = tokio::time::timeout(Duration::from_secs(5), sh.serve_wake.notified()).await;
        // A burst of events (a re-list, a controller touching many VMs) is one recompute,
        // not one per event: each recompute reads every VirtualMachineBMC.
        tokio::time::sleep(DEBOUNCE).await;
    }
}

/// Until every cache holds its first full list. Polled with a timeout in a loop: a store's
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

async fn sync_registry(
    base: &BmcConfig,
    registry: &Registry,
    served: &mut BTreeMap<u16, Served>,
    want: BTreeMap<u16, Served>,
) {
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
}

fn config_with(base: &BmcConfig, users: &[User]) -> BmcConfig {
    let mut c = base.clone();
    c.users = users.to_vec();
    c
}
