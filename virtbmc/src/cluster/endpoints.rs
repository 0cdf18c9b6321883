//! The endpoints of the leader's Services. A Service `<vm>-virtbmc` has no selector (a selector
//! picks pods of the Service's own namespace, and the agents run in theirs), so nothing in the
//! cluster gives it endpoints: the leader writes them, as the EndpointSlice controller would for
//! a selector over the agent pods. One slice per address family, `<service>-ipv4` (always) and
//! `<service>-ipv6` (when an agent has an IPv6 address), labelled
//! `kubernetes.io/service-name` (what kube-proxy reads) and
//! `endpointslice.kubernetes.io/managed-by: virtbmc` (which keeps that controller away).
//!
//! Reconcile-style like the rest of the leader: a slice is written only when the cached one
//! differs, and deleted when its Service is no longer wanted; its owner reference to the
//! VirtualMachineBMC also lets garbage collection remove it when no agent runs.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::leader::{Round, delete_unwanted, labels, owned_by, service_name};
use super::{Shared, VirtualMachineBMC};

/// Names the Service a slice serves.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Who writes a slice: anything but the EndpointSlice controller's name keeps it off.
pub const SLICE_MANAGED_BY: (&str, &str) = ("endpointslice.kubernetes.io/managed-by", "virtbmc");

/// The slices the reflector watches: ours.
pub fn managed_selector() -> String {
    format!("{}={}", SLICE_MANAGED_BY.0, SLICE_MANAGED_BY.1)
}

pub fn slice_name(service: &str, address_type: &str) -> String {
    format!("{service}-{}", address_type.to_ascii_lowercase())
}

/// The agent pods as endpoints, per address family, sorted by pod name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Agents {
    pub ipv4: Vec<Endpoint>,
    pub ipv6: Vec<Endpoint>,
}

impl Agents {
    /// The endpoints of these pods, by the EndpointSlice controller's rules: a pod without
    /// an IP, or finished (Succeeded, Failed), is left out; `serving` is the pod's Ready
    /// condition, `ready` is serving and not terminating (a pod being deleted). Pure, for tests.
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Agents {
        let mut pods: Vec<&Pod> = pods.into_iter().collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut agents = Agents::default();
        for pod in pods {
            let Some(status) = pod.status.as_ref() else {
                continue;
            };
            if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
                continue;
            }
            let mut ips: Vec<&str> = status
                .pod_ips
                .iter()
                .flatten()
                .map(|p| p.ip.as_str())
                .collect();
            if ips.is_empty() {
                ips.extend(status.pod_ip.as_deref());
            }
            // One address per family (a dual-stack pod has one of each).
            let mut seen_v4 = false;
            let mut seen_v6 = false;
            for ip in ips {
                match ip.parse::<IpAddr>() {
                    Ok(IpAddr::V4(_)) if !seen_v4 => {
                        seen_v4 = true;
                        agents.ipv4.push(endpoint(pod, ip));
                    }
                    Ok(IpAddr::V6(_)) if !seen_v6 => {
                        seen_v6 = true;
                        agents.ipv6.push(endpoint(pod, ip));
                    }
                    _ => {}
                }
            }
        }
        agents
    }

    /// The agents as the caches show them; None until the pod and slice caches hold their
    /// first lists (before that, every slice would look wrong or unwanted). Not awaited: the
    /// Services and conditions must not wait for the pods, and the first list wakes the
    /// leader anyway.
    pub fn cached(sh: &Shared) -> Option<Agents> {
        let s = &sh.stores;
        let pods = s.pod.wait_until_ready().now_or_never();
        let slices = s.endpoint_slice.wait_until_ready().now_or_never();
        if !matches!((pods, slices), (Some(Ok(())), Some(Ok(())))) {
            log::debug!("endpoints: pod or EndpointSlice cache not ready yet");
            return None;
        }
        Some(Agents::from_pods(s.pod.state().iter().map(|p| &**p)))
    }

    /// The slices each Service gets: IPv4 always (perhaps with no endpoints: the Service then
    /// routes nowhere, as it should), IPv6 only when an agent has an IPv6 address.
    pub fn families(&self) -> Vec<(&'static str, &[Endpoint])> {
        let mut f = vec![("IPv4", self.ipv4.as_slice())];
        if !self.ipv6.is_empty() {
            f.push(("IPv6", self.ipv6.as_slice()));
        }
        f
    }
}

fn endpoint(pod: &Pod, ip: &str) -> Endpoint {
    let serving = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let terminating = pod.metadata.deletion_timestamp.is_some();
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(serving && !terminating),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The slice of `b`'s Service for one address family: the agents on `port`.
pub fn desired(
    b: &VirtualMachineBMC,
    port: u16,
    address_type: &str,
    endpoints: &[Endpoint],
) -> EndpointSlice {
    let service = service_name(&b.spec.virtual_machine_ref.name);
    let mut labels = labels(b);
    labels.insert(SERVICE_NAME_LABEL.into(), service.clone());
    labels.insert(SLICE_MANAGED_BY.0.into(), SLICE_MANAGED_BY.1.into());
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(&service, address_type)),
            namespace: b.namespace(),
            labels: Some(labels),
            owner_references: owned_by(b),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: Some(endpoints.to_vec()),
        // Named as the Service's ports, which is how kube-proxy pairs them.
        ports: Some(
            [("ipmi", "UDP"), ("redfish", "TCP")]
                .into_iter()
                .map(|(name, protocol)| EndpointPort {
                    name: Some(name.into()),
                    protocol: Some(protocol.into()),
                    port: Some(port.into()),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// Whether the cached slice already says what `want` says. Labels others added are theirs;
/// an empty endpoint list may come back as none.
fn up_to_date(have: &EndpointSlice, want: &EndpointSlice) -> bool {
    let labelled = want
        .labels()
        .iter()
        .all(|(k, v)| have.labels().get(k) == Some(v));
    labelled
        && have.address_type == want.address_type
        && have.endpoints.as_deref().unwrap_or_default()
            == want.endpoints.as_deref().unwrap_or_default()
        && have.ports == want.ports
        && have.meta().owner_references == want.meta().owner_references
}

/// Writes the slices of `b`'s Service that differ from the cache.
pub(super) async fn ensure(
    sh: &Shared,
    b: &VirtualMachineBMC,
    port: u16,
    agents: &Agents,
    round: &Round,
) {
    let ns = b.namespace().unwrap_or_default();
    for (address_type, endpoints) in agents.families() {
        let want = desired(b, port, address_type, endpoints);
        let name = want.name_any();
        let have = sh
            .stores
            .endpoint_slice
            .get(&ObjectRef::new(&name).within(&ns));
        if have.is_some_and(|h| up_to_date(&h, &want)) {
            continue;
        }
        let ready = endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .count();
        let api: Api<EndpointSlice> = Api::namespaced(sh.client.clone(), &ns);
        match api
            .patch(
                &name,
                &PatchParams::apply("virtbmc").force(),
                &Patch::Apply(&want),
            )
            .await
        {
            Ok(_) => log::info!(
                "endpointslice={ns}/{name} port={port} endpoints={} ready={ready} applied",
                endpoints.len()
            ),
            Err(e) => {
                log::warn!("endpointslice={ns}/{name} apply: {e}");
                round.fail();
            }
        }
    }
}

/// Deletes our slices whose Service is not in `services` (namespace, name), or whose
/// address family no agent has any more.
pub(super) async fn remove_stale(
    sh: &Shared,
    services: &BTreeSet<(String, String)>,
    agents: &Agents,
    round: &Round,
) {
    let keep: BTreeSet<(String, String)> = services
        .iter()
        .flat_map(|(ns, svc)| {
            agents
                .families()
                .into_iter()
                .map(|(t, _)| (ns.clone(), slice_name(svc, t)))
        })
        .collect();
    delete_unwanted(
        sh,
        sh.stores.endpoint_slice.state(),
        &keep,
        "endpointslice",
        round,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ips: &[&str], ready: bool, phase: &str) -> Pod {
        let ips: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "virtbmc-system", "uid": format!("uid-{name}")},
            "spec": {"nodeName": format!("node-{name}"), "containers": []},
            "status": {"phase": phase, "podIPs": ips,
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    /// "address ready serving terminating node" per endpoint, conditions as 1 or 0.
    fn summary(es: &[Endpoint]) -> Vec<String> {
        let bit = |b: Option<bool>| u8::from(b.unwrap());
        es.iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                format!(
                    "{} {}{}{} {}",
                    e.addresses.join(","),
                    bit(c.ready),
                    bit(c.serving),
                    bit(c.terminating),
                    e.node_name.clone().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn endpoints_follow_the_controller_rules() {
        let mut going = pod("d", &["10.0.0.4"], true, "Running");
        going.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        let pods = [
            pod("b", &["10.0.0.2", "fd00::2"], false, "Running"),
            pod("a", &["10.0.0.1"], true, "Running"),
            pod("c", &[], true, "Pending"),
            going,
            pod("e", &["10.0.0.5"], true, "Failed"),
        ];
        let a = Agents::from_pods(&pods);
        // Sorted by pod; no IP (c) or finished (e): left out; terminating (d): serving but
        // not ready.
        assert_eq!(
            summary(&a.ipv4),
            [
                "10.0.0.1 110 node-a",
                "10.0.0.2 000 node-b",
                "10.0.0.4 011 node-d"
            ]
        );
        assert_eq!(summary(&a.ipv6), ["fd00::2 000 node-b"]);
        assert_eq!(
            a.families().iter().map(|f| f.0).collect::<Vec<_>>(),
            ["IPv4", "IPv6"]
        );
        assert_eq!(
            Agents::from_pods(&pods[1..2]).families().len(),
            1,
            "no IPv6 slice without an IPv6 agent"
        );
    }

    #[test]
    fn a_slice_is_up_to_date_whatever_others_add() {
        let b = crate::cluster::VirtualMachineBMC::new(
            "vm1-bmc",
            crate::cluster::crd::VirtualMachineBMCSpec {
                virtual_machine_ref: crate::cluster::crd::LocalObjectReference {
                    name: "vm1".into(),
                },
                ..Default::default()
            },
        );
        let agents = Agents::from_pods(&[pod("a", &["10.0.0.1"], true, "Running")]);
        let want = desired(&b, 10001, "IPv4", &agents.ipv4);
        assert_eq!(want.name_any(), "vm1-virtbmc-ipv4");
        assert_eq!(want.labels()[SERVICE_NAME_LABEL], "vm1-virtbmc");
        let mut have = want.clone();
        have.labels_mut().insert("someone".into(), "else".into());
        assert!(up_to_date(&have, &want));
        have.ports.as_mut().unwrap()[0].port = Some(10002);
        assert!(!up_to_date(&have, &want));
        let empty = desired(&b, 10001, "IPv4", &[]);
        let mut none = empty.clone();
        none.endpoints = None;
        assert!(up_to_date(&none, &empty), "[] comes back as null");
        assert!(!up_to_date(&none, &want));
    }
}
