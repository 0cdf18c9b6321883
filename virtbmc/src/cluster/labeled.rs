//! The mode without the CRD (`--vm-selector` and `--auth-secret`), for users who cannot
//! install CustomResourceDefinitions: every VirtualMachine the label selector matches gets a
//! BMC, and every BMC takes its user from one Secret.
//!
//! Inside the agent each such VM becomes a VirtualMachineBMC that exists only in the cache
//! (marked with [`SYNTHESIZED`]), so views, ports, Services, EndpointSlices and boot
//! overrides run the same code in both modes. What the CRD's status holds lives in the VM's
//! own annotations instead: [`PORT_ANNOTATION`] (written once by the leader, with the VM's
//! resourceVersion as precondition, so it survives restarts and is never given twice) and
//! [`BOOT_ANNOTATION`] (a pending boot override, as JSON). There are no conditions: Events
//! and the Service say what a user needs.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde_json::json;

use super::crd::{
    BootOverrideStatus, LocalObjectReference, VirtualMachineBMCSpec, VirtualMachineBMCStatus,
};
use super::leader::Round;
use super::port_key::PortKey;
use super::{Shared, VirtualMachineBMC, vm_resource};

/// The agent port of the VM's BMC.
pub const PORT_ANNOTATION: &str = "bmc.kubevirt.io/port";
/// Proof that [`PORT_ANNOTATION`] was written by virtbmc ([`PortKey`]).
pub const PORT_PROOF_ANNOTATION: &str = "bmc.kubevirt.io/port-proof";
/// A pending boot override (the CRD's `status.bootOverride`), as JSON.
pub const BOOT_ANNOTATION: &str = "bmc.kubevirt.io/boot-override";
/// Marks a VirtualMachineBMC made from a VM; never written to the cluster.
pub const SYNTHESIZED: &str = "bmc.kubevirt.io/synthesized-from";

/// Which VMs get a BMC and whose Secret they all use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMode {
    pub selector: String,
    pub secret_namespace: String,
    pub secret_name: String,
}

impl LabelMode {
    /// From `--vm-selector` and `--auth-secret NAMESPACE/NAME`.
    pub fn new(selector: &str, secret: &str) -> Result<LabelMode, String> {
        let (ns, name) = secret
            .split_once('/')
            .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
            .filter(|(ns, name)| super::names::is_label(ns) && super::names::is_subdomain(name))
            .ok_or_else(|| format!("--auth-secret {secret:?}: expected NAMESPACE/NAME"))?;
        if selector.trim().is_empty() {
            return Err("--vm-selector is empty: it would give every VM a BMC".into());
        }
        Ok(LabelMode {
            selector: selector.to_string(),
            secret_namespace: ns.to_string(),
            secret_name: name.to_string(),
        })
    }
}

pub fn is_synthesized(b: &VirtualMachineBMC) -> bool {
    b.annotations().contains_key(SYNTHESIZED)
}

/// The VirtualMachineBMC a selected VM stands for. It carries the VM's uid, resourceVersion
/// and creation time (ports go oldest first, and a port write is conditional on the VM's
/// resourceVersion). An annotation that does not parse is ignored (and logged): the leader
/// then allocates a port, and the override reads as none. So is a port without `key`'s
/// proof for this VM: someone else wrote it.
pub fn synthesize(vm: &DynamicObject, secret_name: &str, key: &PortKey) -> VirtualMachineBMC {
    let ns = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    let annotations = vm.annotations();
    let uid = vm.metadata.uid.as_deref().unwrap_or_default();
    let proven = |p: &u16| {
        let proof = annotations.get(PORT_PROOF_ANNOTATION);
        let ok = proof.is_some_and(|proof| key.verify(uid, *p, proof));
        if !ok {
            log::warn!(
                "vm={ns}/{name} {PORT_ANNOTATION}={p} was not written by virtbmc (no valid {PORT_PROOF_ANNOTATION}); ignored"
            );
        }
        ok
    };
    let port = annotations.get(PORT_ANNOTATION).and_then(|p| {
        p.parse::<u16>().ok().filter(|p| *p != 0).or_else(|| {
            log::warn!("vm={ns}/{name} {PORT_ANNOTATION}={p:?} is not a port; ignored");
            None
        })
    });
    let port = port.filter(proven);
    let boot_override = annotations.get(BOOT_ANNOTATION).and_then(|j| {
        serde_json::from_str::<BootOverrideStatus>(j)
            .map_err(|e| log::warn!("vm={ns}/{name} {BOOT_ANNOTATION}: {e}; ignored"))
            .ok()
    });
    VirtualMachineBMC {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns),
            uid: vm.metadata.uid.clone(),
            resource_version: vm.metadata.resource_version.clone(),
            creation_timestamp: vm.metadata.creation_timestamp.clone(),
            annotations: Some(BTreeMap::from([(
                SYNTHESIZED.to_string(),
                "VirtualMachine".to_string(),
            )])),
            ..Default::default()
        },
        spec: VirtualMachineBMCSpec {
            virtual_machine_ref: LocalObjectReference { name },
            auth_secret_ref: LocalObjectReference {
                name: secret_name.to_string(),
            },
            ipmi: None,
            service: None,
        },
        status: Some(VirtualMachineBMCStatus {
            port,
            boot_override,
            ..Default::default()
        }),
    }
}

/// The selected VMs' watch events as VirtualMachineBMC events.
pub fn events(
    ev: watcher::Event<DynamicObject>,
    secret_name: &str,
    key: &PortKey,
) -> watcher::Event<VirtualMachineBMC> {
    use watcher::Event::*;
    match ev {
        Apply(o) => Apply(synthesize(&o, secret_name, key)),
        Delete(o) => Delete(synthesize(&o, secret_name, key)),
        Init => Init,
        InitApply(o) => InitApply(synthesize(&o, secret_name, key)),
        InitDone => InitDone,
    }
}

/// What a Service or EndpointSlice of a synthesized BMC is owned by: the VM itself, so
/// garbage collection removes them with it.
pub fn vm_owner(b: &VirtualMachineBMC) -> OwnerReference {
    OwnerReference {
        api_version: "kubevirt.io/v1".into(),
        kind: "VirtualMachine".into(),
        name: b.spec.virtual_machine_ref.name.clone(),
        uid: b.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(false),
    }
}

fn vms(sh: &Shared, b: &VirtualMachineBMC) -> Api<DynamicObject> {
    Api::namespaced_with(
        sh.client.clone(),
        &b.namespace().unwrap_or_default(),
        &vm_resource(),
    )
}

async fn merge_vm(
    sh: &Shared,
    b: &VirtualMachineBMC,
    patch: serde_json::Value,
) -> Result<(), kube::Error> {
    vms(sh, b)
        .patch(
            &b.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
}

/// Records the port in the VM, with its proof, if the VM is still as `b` saw it.
pub async fn write_port(sh: &Shared, b: &VirtualMachineBMC, port: u16) -> Result<(), kube::Error> {
    // Set before any VM is synthesized: the selected VMs are watched only once it is.
    let proof = sh
        .port_key
        .get()
        .map(|k| k.proof(b.uid().as_deref().unwrap_or_default(), port));
    let patch = json!({"metadata": {
        "resourceVersion": b.resource_version(),
        "annotations": {PORT_ANNOTATION: port.to_string(), PORT_PROOF_ANNOTATION: proof},
    }});
    merge_vm(sh, b, patch).await
}

/// VMs no longer selected that still carry our annotations: a pending one-shot override is
/// undone (the VM would otherwise boot from its device for good), then both annotations go,
/// so the port is free and a VM selected again starts afresh.
pub(super) async fn release_unselected(sh: &Shared, round: &Round) {
    for vm in sh.stores.vm.state() {
        let annotations = vm.annotations();
        if !annotations.contains_key(PORT_ANNOTATION) && !annotations.contains_key(BOOT_ANNOTATION)
        {
            continue;
        }
        let (ns, name) = (vm.namespace().unwrap_or_default(), vm.name_any());
        if sh
            .stores
            .vmbmc
            .get(&ObjectRef::new(&name).within(&ns))
            .is_some()
            || vm.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let pending = annotations
            .get(BOOT_ANNOTATION)
            .and_then(|j| serde_json::from_str::<BootOverrideStatus>(j).ok())
            .filter(|o| o.mode == "Oneshot");
        if let Some(o) = pending {
            log::info!(
                "vm={ns}/{name} no longer selected with a pending one-shot {} override; restoring its boot order",
                o.device
            );
            if let Err(e) = super::overrides::restore_orders(sh, &ns, &name, &o).await {
                log::warn!("vm={ns}/{name} restore boot order: {e}");
                round.fail();
                continue;
            }
        }
        // Each annotation is removed only if it still says what we read (a JSON Patch
        // `test`): restoring the orders has just changed the resourceVersion.
        let ops: Vec<serde_json::Value> = [PORT_ANNOTATION, PORT_PROOF_ANNOTATION, BOOT_ANNOTATION]
            .iter()
            .filter_map(|k| {
                annotations
                    .get(*k)
                    .map(|v| (super::overrides::annotation_path(k), v))
            })
            .flat_map(|(path, v)| {
                [
                    json!({"op": "test", "path": path, "value": v}),
                    json!({"op": "remove", "path": path}),
                ]
            })
            .collect();
        let patch: json_patch::Patch =
            serde_json::from_value(serde_json::Value::Array(ops)).expect("a valid JSON Patch");
        let api: Api<DynamicObject> = Api::namespaced_with(sh.client.clone(), &ns, &vm_resource());
        match api
            .patch(&name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => log::info!("vm={ns}/{name} no longer selected; its BMC port is free"),
            Err(e) => {
                log::warn!("vm={ns}/{name} remove BMC annotations: {e}");
                round.fail();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(annotations: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "prod", "uid": "u-1",
                "resourceVersion": "42", "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": annotations},
            "spec": {}
        }))
        .unwrap()
    }

    #[test]
    fn a_selected_vm_is_a_bmc_with_the_one_secret() {
        let o = BootOverrideStatus {
            mode: "Oneshot".into(),
            device: "pxe".into(),
            ..Default::default()
        };
        let key = PortKey::new([3; 32]);
        let b = synthesize(
            &vm(json!({PORT_ANNOTATION: "10007",
                PORT_PROOF_ANNOTATION: key.proof("u-1", 10007),
                BOOT_ANNOTATION: serde_json::to_string(&o).unwrap()})),
            "creds",
            &key,
        );
        assert!(is_synthesized(&b));
        assert_eq!(b.name_any(), "web");
        assert_eq!(b.namespace().as_deref(), Some("prod"));
        assert_eq!(b.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(b.resource_version().as_deref(), Some("42"));
        assert_eq!(b.spec.virtual_machine_ref.name, "web");
        assert_eq!(b.spec.auth_secret_ref.name, "creds");
        assert!(b.spec.ipmi_enabled());
        let st = b.status.unwrap();
        assert_eq!(st.port, Some(10007));
        assert_eq!(st.boot_override, Some(o));
        let owner = vm_owner(&synthesize(&vm(json!({})), "creds", &key));
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("VirtualMachine", "web", "u-1")
        );
    }

    #[test]
    fn unreadable_annotations_are_ignored() {
        let key = PortKey::new([3; 32]);
        for bad in ["", "0", "70000", "ten"] {
            let b = synthesize(&vm(json!({PORT_ANNOTATION: bad})), "s", &key);
            assert_eq!(b.status.unwrap().port, None, "{bad:?}");
        }
        let b = synthesize(&vm(json!({BOOT_ANNOTATION: "{not json"})), "s", &key);
        assert_eq!(b.status.unwrap().boot_override, None);
    }

    /// A port the VM's owner wrote (no proof, a proof copied from another VM, or one made for
    /// another port) is no port: the leader gives the VM one of its own.
    #[test]
    fn a_port_without_virtbmc_s_proof_is_ignored() {
        let key = PortKey::new([3; 32]);
        let port = |annotations| synthesize(&vm(annotations), "s", &key).status.unwrap().port;
        assert_eq!(port(json!({PORT_ANNOTATION: "10007"})), None);
        assert_eq!(
            port(json!({PORT_ANNOTATION: "10007", PORT_PROOF_ANNOTATION: key.proof("u-2", 10007)})),
            None
        );
        assert_eq!(
            port(json!({PORT_ANNOTATION: "10007", PORT_PROOF_ANNOTATION: key.proof("u-1", 10008)})),
            None
        );
        let other = PortKey::new([4; 32]);
        assert_eq!(
            port(
                json!({PORT_ANNOTATION: "10007", PORT_PROOF_ANNOTATION: other.proof("u-1", 10007)})
            ),
            None
        );
        assert_eq!(
            port(json!({PORT_ANNOTATION: "10007", PORT_PROOF_ANNOTATION: key.proof("u-1", 10007)})),
            Some(10007)
        );
    }

    #[test]
    fn flags() {
        let m = LabelMode::new("bmc=on", "virtbmc-system/creds").unwrap();
        assert_eq!(
            (m.secret_namespace.as_str(), m.secret_name.as_str()),
            ("virtbmc-system", "creds")
        );
        for bad in [
            "creds",
            "/creds",
            "ns/",
            "a/b/c",
            "ns/a?b",
            "ns/Creds",
            "n.s/creds",
        ] {
            assert!(LabelMode::new("bmc=on", bad).is_err(), "{bad}");
        }
        assert!(LabelMode::new(" ", "a/b").is_err());
    }
}
