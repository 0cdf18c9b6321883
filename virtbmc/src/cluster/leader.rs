//! What only the elected controller (`--role controller` or `all`) writes, recomputed after every change (reconcile-style:
//! compare the caches with what should be, write the difference, never write what is
//! already so, or every status write would wake us again):
//! - `status.port` for each VirtualMachineBMC lacking one (or sharing one with an older
//!   VirtualMachineBMC): the lowest free port of the range, written with a resourceVersion
//!   precondition; stored in the object, it survives agent restarts.
//! - the Service `<vm>-virtbmc`: UDP 623 (IPMI) and TCP 443 (Redfish) to the allocated
//!   port, which the agents serve with both protocols. It has no selector: a
//!   selector picks pods of the Service's own namespace, and the agent pods live in theirs, so
//!   the endpoints are listed explicitly: EndpointSlices of the agent pods ([`endpoints`]).
//! - status conditions Ready, VirtualMachineAvailable, SecretAvailable and status.clusterIP.
//! - the end of one-shot boot overrides: once a VMI other than the recorded one is Running,
//!   the original boot orders come back and the record goes; and whatever else of an
//!   override is left to do (see [`overrides`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, stream};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::crd::Condition;
use super::serve::{RESYNC, RETRY, wait_ready};
use super::view::{SecretProblem, users_from_secret};
use super::{
    MANAGED_BY, Shared, Stores, VMBMC_LABEL, VirtualMachineBMC, credentials, endpoints, labeled,
    names, overrides,
};

/// The IPMI port every Service exposes.
pub const IPMI_PORT: i32 = 623;
/// The Redfish (HTTPS) port every Service exposes.
pub const REDFISH_PORT: i32 = 443;

/// A BMC's Service ports: IPMI over UDP and Redfish over TCP, both to the agent port, where
/// the agents serve one protocol on each transport.
pub fn service_ports(port: u16) -> Vec<ServicePort> {
    [("ipmi", "UDP", IPMI_PORT), ("redfish", "TCP", REDFISH_PORT)]
        .into_iter()
        .map(|(name, protocol, service_port)| ServicePort {
            name: Some(name.into()),
            protocol: Some(protocol.into()),
            port: service_port,
            target_port: Some(IntOrString::Int(port.into())),
            ..Default::default()
        })
        .collect()
}

pub async fn run(sh: Arc<Shared>) {
    wait_ready(&sh).await;
    let mut pending = BTreeMap::new();
    let mut settled = false;
    loop {
        let idle = if settled { RESYNC } else { RETRY };
        let woken = tokio::time::timeout(idle, sh.leader_wake.notified())
            .await
            .is_ok();
        tokio::time::sleep(super::serve::DEBOUNCE * 5).await;
        let dirty = sh.take_dirty();
        if !sh.is_leader() {
            pending.clear();
            settled = false;
            continue;
        }
        let round = Round::default();
        if dirty.all || !woken || !settled {
            reconcile(&sh, &mut pending, &round).await;
        } else {
            // Only some VMs changed (a VMI phase, a VM's devices): their BMCs alone.
            let bmcs: Vec<_> = dirty.names.iter().filter_map(|n| sh.owner(n)).collect();
            log::debug!(
                "reconcile: {} VirtualMachineBMC(s) of changed VMs",
                bmcs.len()
            );
            let agents = endpoints::Agents::cached(&sh);
            stream::iter(&bmcs)
                .for_each_concurrent(CONCURRENT_WRITES, |b| {
                    reconcile_one(&sh, b, None, agents.as_ref(), &round)
                })
                .await;
        }
        settled = !round.failed.load(Ordering::Relaxed);
    }
}

/// One reconcile pass: whether some write failed and the pass must be retried.
#[derive(Default)]
pub(super) struct Round {
    failed: AtomicBool,
}

impl Round {
    pub(super) fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

pub fn service_name(vm: &str) -> String {
    format!("{vm}-virtbmc")
}

/// Ports to give: each VirtualMachineBMC lacking a port, or holding one an older
/// VirtualMachineBMC also holds, gets the lowest free one (None: the range is full).
/// `pending` holds ports this leader wrote that the cache does not show yet (keyed by
/// uid): they count as taken, and their owners are not given another. Pure, for tests.
pub fn allocate(
    bmcs: &[Arc<VirtualMachineBMC>],
    range: std::ops::RangeInclusive<u16>,
    pending: &BTreeMap<String, u16>,
) -> Vec<(Arc<VirtualMachineBMC>, Option<u16>)> {
    let mut used: BTreeSet<u16> = pending.values().copied().collect();
    let mut need = Vec::new();
    for b in bmcs {
        if pending.contains_key(b.metadata.uid.as_deref().unwrap_or_default()) {
            continue;
        }
        match b.status.as_ref().and_then(|s| s.port) {
            Some(p) if used.insert(p) => {}
            // Never served: no port either, until the spec is corrected.
            _ if b.active() && names::check_refs(b).is_ok() => need.push(b.clone()),
            _ => {}
        }
    }
    let mut free = range.filter(|p| !used.contains(p));
    need.into_iter().map(|b| (b, free.next())).collect()
}

/// API writes in flight at once: a first pass over thousands of VirtualMachineBMCs should
/// not be thousands of round trips in a row, nor a stampede on the API server.
const CONCURRENT_WRITES: usize = 16;

async fn reconcile(sh: &Shared, pending: &mut BTreeMap<String, u16>, round: &Round) {
    let bmcs = sh.stores.vmbmcs();
    log::debug!("reconcile: {} VirtualMachineBMC(s)", bmcs.len());
    // Forget pending ports once the cache shows them (or their owner is gone).
    let cached: HashMap<&str, Option<u16>> = bmcs
        .iter()
        .map(|b| {
            (
                b.metadata.uid.as_deref().unwrap_or_default(),
                b.status.as_ref().and_then(|s| s.port),
            )
        })
        .collect();
    pending.retain(|uid, p| cached.get(uid.as_str()).is_some_and(|c| *c != Some(*p)));
    let allocations = allocate(&bmcs, sh.opts.port_range.clone(), pending);
    let written: Vec<(String, u16)> = stream::iter(allocations)
        .map(|(b, port)| write_port(sh, b, port, round))
        .buffer_unordered(CONCURRENT_WRITES)
        .filter_map(std::future::ready)
        .collect()
        .await;
    if !written.is_empty() {
        pending.extend(written);
        // Not settled until the watch shows them.
        round.fail();
        // Services and conditions follow once the watch brings the ports back.
        return;
    }
    let owners = Stores::owners(&bmcs);
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    for b in &bmcs {
        if b.status.as_ref().and_then(|s| s.port).is_some()
            && b.active()
            && names::check_refs(b).is_ok()
            && Stores::duplicate_of(&owners, b).is_none()
        {
            wanted.insert((
                b.namespace().unwrap_or_default(),
                service_name(&b.spec.virtual_machine_ref.name),
            ));
        }
    }
    let agents = endpoints::Agents::cached(sh);
    let agents = agents.as_ref();
    stream::iter(&bmcs)
        .for_each_concurrent(CONCURRENT_WRITES, |b| {
            reconcile_one(sh, b, Stores::duplicate_of(&owners, b), agents, round)
        })
        .await;
    // Services (and their EndpointSlices) of VirtualMachineBMCs that are gone or disabled.
    delete_unwanted(sh, sh.stores.service.state(), &wanted, "service", round).await;
    if sh.opts.role.credential_copies() && sh.opts.labels.is_none() {
        copy_credentials(sh, &bmcs, &owners, round).await;
    }
    if let Some(agents) = agents {
        endpoints::remove_stale(sh, &wanted, agents, round).await;
    }
    if sh.opts.labels.is_some() {
        labeled::release_unselected(sh, round).await;
    }
    // Overrides of VMs no VirtualMachineBMC serves any more.
    if !overrides::sweep(sh, false).await {
        round.fail();
    }
}

/// The agents' copies of the users: one per served BMC, none for the others.
async fn copy_credentials(
    sh: &Shared,
    bmcs: &[Arc<VirtualMachineBMC>],
    owners: &HashMap<(String, String), Arc<VirtualMachineBMC>>,
    round: &Round,
) {
    let served: Vec<Arc<VirtualMachineBMC>> = bmcs
        .iter()
        .filter(|b| {
            b.active()
                && b.metadata.deletion_timestamp.is_none()
                && names::check_refs(b).is_ok()
                && Stores::duplicate_of(owners, b).is_none()
        })
        .cloned()
        .collect();
    let wanted = std::sync::Mutex::new(BTreeSet::new());
    stream::iter(&served)
        .for_each_concurrent(CONCURRENT_WRITES, |b| async {
            if let Some(key) = credentials::ensure(sh, b, round).await {
                wanted.lock().unwrap_or_else(|e| e.into_inner()).insert(key);
            }
        })
        .await;
    let wanted = wanted.into_inner().unwrap_or_else(|e| e.into_inner());
    credentials::remove_stale(sh, &wanted, round).await;
}

/// Deletes the `cached` objects whose (namespace, name) is not in `keep`, unless already going.
pub(super) async fn delete_unwanted<K>(
    sh: &Shared,
    cached: Vec<Arc<K>>,
    keep: &BTreeSet<(String, String)>,
    what: &str,
    round: &Round,
) where
    K: Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    for o in cached {
        let key = (o.namespace().unwrap_or_default(), o.name_any());
        if keep.contains(&key) || o.meta().deletion_timestamp.is_some() {
            continue;
        }
        let api: Api<K> = Api::namespaced(sh.client.clone(), &key.0);
        match api.delete(&key.1, &DeleteParams::default()).await {
            Ok(_) => log::info!("{what}={}/{} deleted", key.0, key.1),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                log::warn!("{what}={}/{} delete: {e}", key.0, key.1);
                round.fail();
            }
        }
    }
}

/// One VirtualMachineBMC: its Service and EndpointSlices, its conditions, the end of its
/// one-shot override. `duplicate`: the older VirtualMachineBMC naming the same VM, if any;
/// `agents`: the agent pods, once their cache is loaded.
async fn reconcile_one(
    sh: &Shared,
    b: &VirtualMachineBMC,
    duplicate: Option<String>,
    agents: Option<&endpoints::Agents>,
    round: &Round,
) {
    let port = b.status.as_ref().and_then(|s| s.port);
    if !labeled::is_synthesized(b) {
        finalizer(sh, b, round).await;
    }
    if b.metadata.deletion_timestamp.is_some() {
        return;
    }
    // A name that cannot be an object's gets its conditions and nothing else: it never
    // reaches a Service, an EndpointSlice or a VM patch.
    let valid = names::check_refs(b).is_ok();
    let svc = match port.filter(|_| valid && b.active() && duplicate.is_none()) {
        Some(port) => {
            let svc = ensure_service(sh, b, port, round).await;
            if let (Some(_), Some(agents)) = (&svc, agents) {
                endpoints::ensure(sh, b, port, agents, round).await;
            }
            svc
        }
        None => None,
    };
    write_conditions(sh, b, svc.as_ref(), duplicate.as_deref(), round).await;
    if valid && let Err(e) = overrides::reconcile_bmc(sh, b).await {
        log::warn!(
            "vm={}/{} boot override: {e}",
            b.namespace().unwrap_or_default(),
            b.spec.virtual_machine_ref.name
        );
        round.fail();
    }
}

/// Writes a VirtualMachineBMC's port; Some((uid, port)) if it was written.
async fn write_port(
    sh: &Shared,
    b: Arc<VirtualMachineBMC>,
    port: Option<u16>,
    round: &Round,
) -> Option<(String, u16)> {
    let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
    let Some(port) = port else {
        log::error!("vmbmc={ns}/{name} no free port in {:?}", sh.opts.port_range);
        round.fail();
        return None;
    };
    // The resourceVersion makes the write conditional: a VirtualMachineBMC changed since we
    // read it is looked at again on the next round.
    let written = if labeled::is_synthesized(&b) {
        labeled::write_port(sh, &b, port).await
    } else {
        let patch = json!({"metadata": {"resourceVersion": b.resource_version()}, "status": {"port": port}});
        let api: Api<VirtualMachineBMC> = Api::namespaced(sh.client.clone(), &ns);
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    };
    match written {
        Ok(_) => {
            log::info!("vmbmc={ns}/{name} port={port} allocated");
            Some((b.metadata.uid.clone().unwrap_or_default(), port))
        }
        Err(e) => {
            log::warn!("vmbmc={ns}/{name} port allocation: {e}");
            round.fail();
            None
        }
    }
}

/// Creates or corrects the Service; returns it as the cache (or the write) has it.
async fn ensure_service(
    sh: &Shared,
    b: &VirtualMachineBMC,
    port: u16,
    round: &Round,
) -> Option<Service> {
    let ns = b.namespace().unwrap_or_default();
    let name = service_name(&b.spec.virtual_machine_ref.name);
    let existing = sh.stores.service.get(&ObjectRef::new(&name).within(&ns));
    let want = service_ports(port);
    if let Some(s) = existing.as_ref() {
        let have = s
            .spec
            .as_ref()
            .and_then(|sp| sp.ports.as_deref())
            .unwrap_or_default();
        // What the API server defaults (nodePort, appProtocol) is not ours to compare.
        let right = have.len() == want.len()
            && have.iter().zip(&want).all(|(h, w)| {
                h.name == w.name
                    && h.port == w.port
                    && h.target_port == w.target_port
                    && h.protocol == w.protocol
            });
        if right {
            return Some((**s).clone());
        }
    }
    let svc = Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(labels(b)),
            annotations: b.spec.service.as_ref().and_then(|s| s.annotations.clone()),
            owner_references: owned_by(b),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(want),
            ..Default::default()
        }),
        status: None,
    };
    let api: Api<Service> = Api::namespaced(sh.client.clone(), &ns);
    match api
        .patch(
            &name,
            &PatchParams::apply("virtbmc").force(),
            &Patch::Apply(&svc),
        )
        .await
    {
        Ok(s) => {
            log::info!("service={ns}/{name} port={port} applied");
            Some(s)
        }
        Err(e) => {
            log::warn!("service={ns}/{name} apply: {e}");
            round.fail();
            existing.map(|s| (*s).clone())
        }
    }
}

/// The labels of what the leader writes for `b`: the user's `spec.service.labels`, then ours.
pub(super) fn labels(b: &VirtualMachineBMC) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = b
        .spec
        .service
        .as_ref()
        .and_then(|s| s.labels.clone())
        .unwrap_or_default();
    labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    labels.insert(VMBMC_LABEL.into(), b.name_any());
    labels.insert(
        "kubevirt.io/vm-name".into(),
        b.spec.virtual_machine_ref.name.clone(),
    );
    labels
}

/// The owner reference to `b`: garbage collection removes what the leader wrote with its
/// VirtualMachineBMC on a real cluster, even when no agent runs.
pub(super) fn owned_by(b: &VirtualMachineBMC) -> Option<Vec<OwnerReference>> {
    if labeled::is_synthesized(b) {
        return Some(vec![labeled::vm_owner(b)]);
    }
    b.controller_owner_ref(&()).map(|r| {
        vec![OwnerReference {
            block_owner_deletion: Some(false),
            ..r
        }]
    })
}

fn condition(type_: &str, ok: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        ..Default::default()
    }
}

/// The conditions a person reads with `kubectl describe vmbmc`.
pub fn conditions(
    sh: &Shared,
    b: &VirtualMachineBMC,
    svc: Option<&Service>,
    duplicate_of: Option<&str>,
) -> Vec<Condition> {
    let ns = b.namespace().unwrap_or_default();
    let vm = &b.spec.virtual_machine_ref.name;
    let secret_name = &b.spec.auth_secret_ref.name;
    let invalid =
        |bad: names::InvalidRef, type_: &str| condition(type_, false, bad.reason, bad.message());
    let vm_cond = match names::vm_ref(b) {
        Err(bad) => invalid(bad, "VirtualMachineAvailable"),
        Ok(vm) if sh.stores.vm(&ns, vm).is_some() => condition(
            "VirtualMachineAvailable",
            true,
            "VirtualMachineFound",
            format!("VirtualMachine {vm} found"),
        ),
        Ok(vm) => condition(
            "VirtualMachineAvailable",
            false,
            "VirtualMachineNotFound",
            format!("VirtualMachine {vm} not found"),
        ),
    };
    let secret = names::secret_ref(b).map(|_| sh.stores.auth_secret(b));
    let secret_cond = match secret.map(|s| users_from_secret(s.as_deref())) {
        Err(bad) => invalid(bad, "SecretAvailable"),
        Ok(found) => match found {
            Ok(_) => condition(
                "SecretAvailable",
                true,
                "SecretFound",
                format!("Secret {secret_name} provides the BMC user"),
            ),
            Err(SecretProblem::NotFound) => condition(
                "SecretAvailable",
                false,
                "SecretNotFound",
                format!("Secret {secret_name} not found: every login is refused"),
            ),
            Err(SecretProblem::Invalid(why)) => condition(
                "SecretAvailable",
                false,
                "SecretInvalid",
                format!("Secret {secret_name}: {why}: every login is refused"),
            ),
        },
    };
    let port = b.status.as_ref().and_then(|s| s.port);
    let ready = match (b.spec.ipmi_enabled(), port, svc) {
        _ if let Err(bad) = names::check_refs(b) => invalid(bad, "Ready"),
        _ if let Some(first) = duplicate_of => condition(
            "Ready",
            false,
            "DuplicateVirtualMachineRef",
            format!("VirtualMachine {vm} is served by VirtualMachineBMC {first}"),
        ),
        (false, _, _) => condition(
            "Ready",
            false,
            "IPMIDisabled",
            "spec.ipmi.enabled is false".into(),
        ),
        (true, None, _) => condition(
            "Ready",
            false,
            "PortNotAllocated",
            "waiting for a port".into(),
        ),
        (true, Some(p), Some(_)) => condition(
            "Ready",
            true,
            "ServiceReady",
            format!(
                "Service {} UDP 623 and TCP 443 -> agent port {p}",
                service_name(vm)
            ),
        ),
        (true, Some(_), None) => condition(
            "Ready",
            false,
            "ServiceNotReady",
            format!("Service {} not created yet", service_name(vm)),
        ),
    };
    vec![ready, vm_cond, secret_cond]
}

async fn write_conditions(
    sh: &Shared,
    b: &VirtualMachineBMC,
    svc: Option<&Service>,
    duplicate_of: Option<&str>,
    round: &Round,
) {
    // Label mode has no status to write to.
    if labeled::is_synthesized(b) {
        return;
    }
    let old = b.status.clone().unwrap_or_default();
    let mut new = conditions(sh, b, svc, duplicate_of);
    let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .ok()
    .and_then(|v| v.as_str().map(str::to_string))
    .unwrap_or_default();
    for c in &mut new {
        c.observed_generation = b.metadata.generation;
        c.last_transition_time = match old.conditions.iter().find(|o| o.type_ == c.type_) {
            Some(o) if o.status == c.status => o.last_transition_time.clone(),
            _ => now.clone(),
        };
    }
    let cluster_ip = svc
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| ip != "None");
    if new == old.conditions && cluster_ip == old.cluster_ip {
        return;
    }
    let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
    let api: Api<VirtualMachineBMC> = Api::namespaced(sh.client.clone(), &ns);
    let patch = json!({"status": {"conditions": new, "clusterIP": cluster_ip}});
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        log::warn!("vmbmc={ns}/{name} status: {e}");
        round.fail();
    }
}

/// Held by a VirtualMachineBMC while a one-shot boot override is pending, so that deleting
/// it first puts the VM's boot order back (without it the VM would keep booting from the
/// override's device for good).
pub const FINALIZER: &str = "bmc.kubevirt.io/boot-override";

/// Adds or removes [`FINALIZER`] as a one-shot override is pending or not; on deletion,
/// restores the boot order, then lets the object go.
async fn finalizer(sh: &Shared, b: &VirtualMachineBMC, round: &Round) {
    let has = b.finalizers().iter().any(|f| f == FINALIZER);
    let (ns, vm) = (
        b.namespace().unwrap_or_default(),
        &b.spec.virtual_machine_ref.name,
    );
    let want = if b.metadata.deletion_timestamp.is_some() {
        if !has {
            return;
        }
        if let Some(o) = b.pending_one_shot() {
            if names::vm_ref(b).is_err() {
                // The spec was changed to a name that cannot be a VM's after the override
                // was set: the VM it was set on is no longer known, and holding the
                // deletion would not bring it back.
                log::warn!(
                    "vmbmc={ns}/{} deleted with a pending one-shot override, but its spec.virtualMachineRef.name is invalid: boot order not restored",
                    b.name_any()
                );
                return finalizer_write(sh, b, has, false, round).await;
            }
            log::info!(
                "vmbmc={ns}/{} deleted with a pending one-shot {} override; restoring the boot order of vm={vm}",
                b.name_any(),
                o.device
            );
            if let Err(e) = overrides::restore_orders(sh, &ns, vm, o).await {
                log::warn!("vm={ns}/{vm} restore boot order: {e}");
                round.fail();
                return;
            }
        }
        false
    } else {
        b.pending_one_shot().is_some()
    };
    finalizer_write(sh, b, has, want, round).await
}

/// Adds or removes [`FINALIZER`] if `want` differs from `has`.
async fn finalizer_write(sh: &Shared, b: &VirtualMachineBMC, has: bool, want: bool, round: &Round) {
    if want == has {
        return;
    }
    let ns = b.namespace().unwrap_or_default();
    let mut list: Vec<String> = b
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if want {
        list.push(FINALIZER.into());
    }
    // Conditional on the resourceVersion: others' finalizers are never lost.
    let patch = json!({"metadata": {"resourceVersion": b.resource_version(), "finalizers": list}});
    let api: Api<VirtualMachineBMC> = Api::namespaced(sh.client.clone(), &ns);
    if let Err(e) = api
        .patch(
            &b.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        log::warn!("vmbmc={ns}/{} finalizer: {e}", b.name_any());
        round.fail();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::crd::{
        LocalObjectReference, VirtualMachineBMCSpec, VirtualMachineBMCStatus,
    };

    fn bmc(name: &str, port: Option<u16>) -> Arc<VirtualMachineBMC> {
        let mut b = VirtualMachineBMC::new(
            name,
            VirtualMachineBMCSpec {
                virtual_machine_ref: LocalObjectReference { name: name.into() },
                auth_secret_ref: LocalObjectReference { name: "s".into() },
                ..Default::default()
            },
        );
        b.status = Some(VirtualMachineBMCStatus {
            port,
            ..Default::default()
        });
        b.metadata.uid = Some(format!("uid-{name}"));
        Arc::new(b)
    }

    #[test]
    fn lowest_free_port_and_duplicates_move() {
        let bmcs = [
            bmc("a", Some(10001)),
            bmc("b", None),
            bmc("c", Some(10001)),
            bmc("d", None),
        ];
        let none = BTreeMap::new();
        let got: Vec<(String, Option<u16>)> = allocate(&bmcs, 10000..=10002, &none)
            .into_iter()
            .map(|(b, p)| (b.name_any(), p))
            .collect();
        assert_eq!(
            got,
            vec![
                ("b".into(), Some(10000)),
                ("c".into(), Some(10002)),
                ("d".into(), None)
            ]
        );
        // b was just given 10000 but the cache does not show it yet: b is left alone and
        // 10000 stays taken.
        let pending = BTreeMap::from([("uid-b".to_string(), 10000)]);
        let got: Vec<(String, Option<u16>)> = allocate(&bmcs, 10000..=10003, &pending)
            .into_iter()
            .map(|(b, p)| (b.name_any(), p))
            .collect();
        assert_eq!(
            got,
            vec![("c".into(), Some(10002)), ("d".into(), Some(10003))]
        );
    }
}
