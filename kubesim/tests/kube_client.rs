//! kubesim against the real kube 5 client: the wire protocol is proven by the client that the
//! agent uses.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, CustomResource, ResourceExt};
use kubesim::{Config, Fault, Handle, Kind, Server};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachine",
    namespaced
)]
#[kube(status = "VmStatus")]
pub struct VmSpec {
    #[serde(
        rename = "runStrategy",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub run_strategy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    #[serde(default)]
    pub template: Value,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct VmStatus {
    #[serde(rename = "printableStatus", default)]
    pub printable_status: Option<String>,
    #[serde(default)]
    pub ready: Option<bool>,
    #[serde(rename = "stateChangeRequests", default)]
    pub state_change_requests: Option<Vec<Value>>,
}

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstance",
    namespaced
)]
#[kube(status = "VmiStatus")]
pub struct VmiSpec {
    #[serde(default)]
    pub domain: Value,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct VmiStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(rename = "nodeName", default)]
    pub node_name: Option<String>,
}

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "bmc.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineBMC",
    namespaced
)]
#[kube(status = "BmcStatus")]
pub struct VirtualMachineBmcSpec {
    #[serde(rename = "virtualMachineRef")]
    pub virtual_machine_ref: Value,
    #[serde(rename = "authSecretRef")]
    pub auth_secret_ref: Value,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct BmcStatus {
    #[serde(rename = "clusterIP", default)]
    pub cluster_ip: Option<String>,
    #[serde(default)]
    pub conditions: Option<Vec<Value>>,
}

const T: Duration = Duration::from_secs(10);

fn fast() -> Config {
    Config {
        bookmark_interval: Duration::from_millis(200),
        phase_delay: (Duration::from_millis(20), Duration::from_millis(60)),
        stop_delay: Duration::from_millis(100),
        cleanup_delay: Duration::from_millis(50),
        ..Config::default()
    }
}

async fn sim() -> (Handle, Client) {
    sim_with(fast()).await
}

async fn sim_with(cfg: Config) -> (Handle, Client) {
    let h = Server::start_with("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap();
    let mut kc = kube::Config::new(h.url().parse().unwrap());
    // Faults with 429/503/504 must reach the test, not be retried.
    kc.default_retry = false;
    let client = Client::try_from(kc).unwrap();
    (h, client)
}

fn api_err(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn vm_action(
    client: &Client,
    name: &str,
    action: &str,
    body: Value,
) -> Result<String, kube::Error> {
    let body = if body.is_null() {
        vec![]
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    let req = kube::core::Request::new(
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines",
    )
    .replace_subresource(action, name, &PostParams::default(), body)
    .unwrap();
    client.request_text(req).await
}

#[tokio::test]
async fn secret_and_lease_crud() {
    let (sim, client) = sim().await;
    // The kubeconfig the binary writes works with kube's own loader.
    let kc = kube::config::Kubeconfig::from_yaml(&sim.kubeconfig("default")).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let via_kubeconfig = Client::try_from(cfg).unwrap();
    Api::<Secret>::default_namespaced(via_kubeconfig)
        .list(&ListParams::default())
        .await
        .unwrap();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let s = Secret {
        metadata: ObjectMeta {
            name: Some("auth".into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("username".into(), "admin".into())])),
        ..Default::default()
    };
    let created = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert!(created.metadata.uid.is_some());
    let data = created.data.unwrap();
    assert_eq!(data["username"].0, b"admin");
    let err = api_err(
        secrets
            .create(&PostParams::default(), &s)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(err.message, "secrets \"auth\" already exists");
    let err = api_err(secrets.get("nope").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert_eq!(err.message, "secrets \"nope\" not found");
    sim.seed_secret("default", "other", &[("password", "password")]);
    let list = secrets.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    assert!(list.metadata.resource_version.is_some());
    let got = secrets.get("auth").await.unwrap();
    let del = secrets
        .delete("auth", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        del.is_right(),
        "a Secret without finalizers answers a Status"
    );
    assert!(secrets.get_opt("auth").await.unwrap().is_none());
    drop(got);

    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let l = Lease {
        metadata: ObjectMeta {
            name: Some("virtbmc-node1".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("a".into()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let v1 = leases.create(&PostParams::default(), &l).await.unwrap();
    let mut v2 = v1.clone();
    v2.spec.as_mut().unwrap().holder_identity = Some("b".into());
    let v2 = leases
        .replace("virtbmc-node1", &PostParams::default(), &v2)
        .await
        .unwrap();
    assert_ne!(v1.resource_version(), v2.resource_version());
    // Replacing with the stale v1 loses the race.
    let mut stale = v1.clone();
    stale.spec.as_mut().unwrap().holder_identity = Some("c".into());
    let err = api_err(
        leases
            .replace("virtbmc-node1", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        err.message,
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"virtbmc-node1\": the object has been modified; please apply your changes to the latest version and try again"
    );
    // Lease disallows unconditional update.
    let mut no_rv = v2.clone();
    no_rv.metadata.resource_version = None;
    let err = api_err(
        leases
            .replace("virtbmc-node1", &PostParams::default(), &no_rv)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    // ... but allows create on update.
    let mut fresh = l.clone();
    fresh.metadata.name = Some("new".into());
    leases
        .replace("new", &PostParams::default(), &fresh)
        .await
        .unwrap();
    // Apply creates and then merges.
    let applied = leases
        .patch(
            "applied",
            &PatchParams::apply("virtbmc").force(),
            &Patch::Apply(json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": "x"}})),
        )
        .await
        .unwrap();
    assert_eq!(applied.spec.unwrap().holder_identity.as_deref(), Some("x"));
    // Strategic merge on a built-in type is accepted.
    leases
        .patch(
            "applied",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"leaseDurationSeconds": 10}})),
        )
        .await
        .unwrap();

    let services: Api<Service> = Api::namespaced(client, "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "vm1-virtbmc"},
        "spec": {"ports": [{"name": "ipmi", "protocol": "UDP", "port": 623, "targetPort": 10623}]}
    }))
    .unwrap();
    let svc = services.create(&PostParams::default(), &svc).await.unwrap();
    assert!(svc.spec.unwrap().cluster_ip.unwrap().starts_with("10.96."));
    sim.stop().await;
}

/// Pods as the apiserver keeps them (a new pod is Pending, status only through the status
/// subresource, the spec immutable but images, graceful deletion of a scheduled pod) and
/// EndpointSlices (address type required and immutable, addresses of that type), through
/// kube's typed clients and a label-selected reflector.
#[tokio::test]
async fn pods_and_endpoint_slices() {
    let (sim, client) = sim().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "virtbmc-system");
    let pod = |name: &str, node: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "virtbmc"}},
            "spec": {"nodeName": node, "containers": [{"name": "virtbmc", "image": "virtbmc:1"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.9"},
        }))
        .unwrap()
    };
    let (store, writer) = reflector::store::<Pod>();
    let selected = watcher::Config::default().labels("app.kubernetes.io/name=virtbmc");
    let reflect = tokio::spawn(
        reflector::reflector(writer, watcher(pods.clone(), selected))
            .applied_objects()
            .for_each(|_| async {}),
    );
    let created = pods
        .create(&PostParams::default(), &pod("a", "node1"))
        .await
        .unwrap();
    let status = created.status.unwrap();
    assert_eq!(
        status.phase.as_deref(),
        Some("Pending"),
        "create drops the status"
    );
    assert!(status.pod_ip.is_none());
    assert_eq!(
        created.spec.unwrap().termination_grace_period_seconds,
        Some(30)
    );
    let err = api_err(
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "bad"}, "spec": {"containers": []}}),
            )
            .unwrap(),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        err.message,
        "pods \"bad\" is invalid: spec.containers: Required value"
    );
    // Status through its subresource; the main endpoint keeps the old status.
    let ready = json!({"status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    pods.patch_status("a", &PatchParams::default(), &Patch::Merge(&ready))
        .await
        .unwrap();
    let p = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"x": "y"}}, "status": {"podIP": "1.2.3.4"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().pod_ip.as_deref(), Some("10.0.0.1"));
    let err = api_err(
        pods.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": "node2"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"containers": [{"name": "virtbmc", "image": "virtbmc:2"}]}})),
    )
    .await
    .unwrap();
    // The label-selected reflector sees the status written through the subresource.
    let seen = sim
        .wait_until(T, |_| {
            let pods = store.state();
            pods.len() == 1
                && pods[0].status.as_ref().unwrap().pod_ip.as_deref() == Some("10.0.0.1")
        })
        .await;
    assert!(seen, "reflector never saw the pod's status");
    // A scheduled pod is deleted gracefully: it stays, marked, until a DELETE with grace
    // period 0; an unscheduled one goes at once. DELETE answers with the object.
    let del = pods.delete("a", &DeleteParams::default()).await.unwrap();
    let marked = del.left().expect("a pod DELETE answers the object");
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(30));
    assert!(marked.metadata.deletion_timestamp.is_some());
    pods.patch_status(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})),
    )
    .await
    .unwrap();
    assert!(
        pods.get_opt("a").await.unwrap().is_some(),
        "still terminating"
    );
    pods.delete(
        "a",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(pods.get_opt("a").await.unwrap().is_none());
    pods.create(&PostParams::default(), &pod("b", ""))
        .await
        .unwrap();
    pods.delete("b", &DeleteParams::default()).await.unwrap();
    assert!(
        pods.get_opt("b").await.unwrap().is_none(),
        "never scheduled: gone at once"
    );
    assert!(
        sim.wait_until(T, |_| store.state().is_empty()).await,
        "reflector never saw the pods go"
    );
    reflect.abort();

    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let slice = |at: &str, addr: &str| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "vm1-virtbmc-ipv4", "labels": {"kubernetes.io/service-name": "vm1-virtbmc"}},
            "addressType": at,
            "ports": [{"port": 10000, "protocol": "UDP"}],
            "endpoints": [{"addresses": [addr], "conditions": {"ready": true}, "nodeName": "node1"}],
        }))
        .unwrap()
    };
    let err = api_err(
        slices
            .create(&PostParams::default(), &slice("IPv4", "fd00::1"))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    let s = slices
        .patch(
            "vm1-virtbmc-ipv4",
            &PatchParams::apply("virtbmc").force(),
            &Patch::Apply(slice("IPv4", "10.0.0.1")),
        )
        .await
        .unwrap();
    assert_eq!(
        s.ports.unwrap()[0].name.as_deref(),
        Some(""),
        "port name defaults to empty"
    );
    let err = api_err(
        slices
            .patch(
                "vm1-virtbmc-ipv4",
                &PatchParams::apply("virtbmc").force(),
                &Patch::Apply(slice("IPv6", "fd00::1")),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (err.code, err.reason.as_str()),
        (422, "Invalid"),
        "addressType is immutable"
    );
    let all: Api<EndpointSlice> = Api::all(client);
    let listed = all
        .list(&ListParams::default().labels("kubernetes.io/service-name=vm1-virtbmc"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(
        listed.items[0].endpoints.as_ref().unwrap()[0].addresses,
        ["10.0.0.1"]
    );
    let del = slices
        .delete("vm1-virtbmc-ipv4", &DeleteParams::default())
        .await
        .unwrap();
    assert!(del.is_right(), "an EndpointSlice DELETE answers a Status");
    sim.stop().await;
}

#[tokio::test]
async fn vm_crud_status_subresource_and_json_patch() {
    let (sim, client) = sim_with(Config {
        controller: false,
        ..fast()
    })
    .await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vm = VirtualMachine::new(
        "vm1",
        VmSpec {
            run_strategy: Some("Halted".into()),
            running: None,
            template: json!({}),
        },
    );
    let mut vm_with_status = vm.clone();
    vm_with_status.status = Some(VmStatus {
        printable_status: Some("Bogus".into()),
        ..Default::default()
    });
    let created = vms
        .create(&PostParams::default(), &vm_with_status)
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.status.is_none(), "create drops .status");
    // The webhook filled the firmware uuid.
    let fw_uuid = created.spec.template["spec"]["domain"]["firmware"]["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(fw_uuid.len(), 36);

    // Status through the status subresource only.
    let st = vms
        .patch_status("vm1", &PatchParams::default(), &Patch::Merge(json!({"status": {"printableStatus": "Stopped"}, "spec": {"runStrategy": "Always"}})))
        .await
        .unwrap();
    assert_eq!(
        st.status.as_ref().unwrap().printable_status.as_deref(),
        Some("Stopped")
    );
    assert_eq!(
        st.spec.run_strategy.as_deref(),
        Some("Halted"),
        "status patch ignores spec"
    );
    assert_eq!(st.metadata.generation, Some(1));
    let main = vms
        .patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"printableStatus": "X"}, "metadata": {"labels": {"a": "b"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        main.status.as_ref().unwrap().printable_status.as_deref(),
        Some("Stopped"),
        "main endpoint keeps status"
    );
    assert_eq!(
        main.metadata.generation,
        Some(1),
        "metadata change keeps generation"
    );
    let main = vms
        .patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runStrategy": "Manual"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        main.metadata.generation,
        Some(2),
        "spec change bumps generation"
    );

    // JSON patch with a passing and a failing `test`.
    let rv = main.resource_version().unwrap();
    let ok: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "replace", "path": "/spec/runStrategy", "value": "Halted"}
    ]))
    .unwrap();
    vms.patch(
        "vm1",
        &PatchParams::default(),
        &Patch::Json::<()>(ok.clone()),
    )
    .await
    .unwrap();
    let err = api_err(
        vms.patch("vm1", &PatchParams::default(), &Patch::Json::<()>(ok))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        err.message,
        "the server rejected our request due to an error in our request"
    );
    // Strategic merge is not for CRDs.
    let err = api_err(
        vms.patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 415);
    // A merge patch carrying a stale resourceVersion is a precondition.
    let err = api_err(
        vms.patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"resourceVersion": rv}, "spec": {"runStrategy": "Always"}}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.code, 409);

    // PUT: 422 without RV, 409 when stale, 404 when missing.
    let cur = vms.get("vm1").await.unwrap();
    let mut no_rv = cur.clone();
    no_rv.metadata.resource_version = None;
    let err = api_err(
        vms.replace("vm1", &PostParams::default(), &no_rv)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert_eq!(
        err.message,
        "virtualmachines.kubevirt.io \"vm1\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    );
    let mut stale = cur.clone();
    stale.metadata.resource_version = Some(created.resource_version().unwrap());
    let err = api_err(
        vms.replace("vm1", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    let mut missing = cur.clone();
    missing.metadata.name = Some("ghost".into());
    let err = api_err(
        vms.replace("ghost", &PostParams::default(), &missing)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 404);
    assert_eq!(
        err.message,
        "virtualmachines.kubevirt.io \"ghost\" not found"
    );
    let details = err.details.unwrap();
    assert_eq!(details.kind, "virtualmachines");
    assert_eq!(details.group, "kubevirt.io");
    let ok = vms
        .replace("vm1", &PostParams::default(), &cur)
        .await
        .unwrap();
    assert_eq!(
        ok.status.unwrap().printable_status.as_deref(),
        Some("Stopped")
    );

    // DELETE: a CRD object without finalizers answers a Status with details.
    let del = vms.delete("vm1", &DeleteParams::default()).await.unwrap();
    let status = del.right().expect("Status");
    let d = status.details.unwrap();
    assert_eq!(
        (d.name.as_str(), d.group.as_str(), d.kind.as_str()),
        ("vm1", "kubevirt.io", "virtualmachines")
    );
    assert_eq!(d.uid, created.uid().unwrap());

    // The VM validating webhook: never both running and runStrategy.
    let mut both = VirtualMachine::new(
        "both",
        VmSpec {
            run_strategy: Some("Halted".into()),
            running: Some(false),
            template: json!({}),
        },
    );
    let e = api_err(vms.create(&PostParams::default(), &both).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        "admission webhook \"virtualmachine-validator.kubevirt.io\" denied the request: Running and RunStrategy are mutually exclusive. Note that Running is deprecated, please use RunStrategy instead"
    );
    both.spec.running = None;
    vms.create(&PostParams::default(), &both).await.unwrap();
    let e = api_err(
        vms.patch(
            "both",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"running": true}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422);

    // VMBMC has a status subresource too.
    sim.seed_vmbmc("default", "vm1-bmc", "vm1", "auth");
    let bmcs: Api<VirtualMachineBMC> = Api::namespaced(client, "default");
    let b = bmcs
        .patch_status(
            "vm1-bmc",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"clusterIP": "10.96.0.10"}})),
        )
        .await
        .unwrap();
    assert_eq!(b.status.unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));
    assert_eq!(b.spec.virtual_machine_ref["name"], "vm1");
    let e = sim
        .create(
            Kind::VirtualMachineBmc,
            "default",
            json!({"metadata": {"name": "bad"}, "spec": {"virtualMachineRef": {"name": "vm1"}}}),
        )
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            422,
            "VirtualMachineBMC.bmc.kubevirt.io \"bad\" is invalid: spec.authSecretRef: Required value"
        )
    );
    sim.stop().await;
}

#[tokio::test]
async fn list_paging_and_selectors() {
    let (sim, client) = sim_with(Config {
        controller: false,
        ..fast()
    })
    .await;
    for i in 0..7 {
        sim.seed_vm("default", &format!("vm{i}"), "Halted");
    }
    sim.seed_vm("other", "vmx", "Halted");
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let page = vms.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(page.items.len(), 3);
    let token = page.metadata.continue_.clone().unwrap();
    let rv = page.metadata.resource_version.clone().unwrap();
    sim.seed_vm("default", "late", "Halted");
    let page2 = vms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        page2.metadata.resource_version.unwrap(),
        rv,
        "pages come from one snapshot"
    );
    let page3 = vms
        .list(
            &ListParams::default()
                .limit(3)
                .continue_token(page2.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(page3.items.len(), 1);
    assert!(page3.metadata.continue_.as_deref().unwrap_or("").is_empty());
    let err = api_err(
        vms.list(&ListParams::default().continue_token("bogus"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 410);

    let all: Api<VirtualMachine> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        9
    );
    let by_name = all
        .list(&ListParams::default().fields("metadata.name=vmx"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    assert_eq!(by_name.items[0].namespace().as_deref(), Some("other"));
    let by_label = vms
        .list(&ListParams::default().labels("app in (vm1,vm2)"))
        .await
        .unwrap();
    assert_eq!(by_label.items.len(), 2);
    let err = api_err(
        vms.list(&ListParams::default().fields("spec.running=true"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 400);
    sim.stop().await;
}

#[tokio::test]
async fn watcher_init_then_applies_and_bookmarks() {
    let (sim, client) = sim_with(Config {
        controller: false,
        ..fast()
    })
    .await;
    sim.seed_vm("default", "vm1", "Halted");
    let vms: Api<VirtualMachine> = Api::all(client.clone());
    let mut stream = watcher(vms.clone(), watcher::Config::default()).boxed();
    let mut seen = vec![];
    while let Some(ev) = tokio::time::timeout(T, stream.try_next())
        .await
        .unwrap()
        .unwrap()
    {
        match ev {
            watcher::Event::Init => seen.push("Init".to_string()),
            watcher::Event::InitApply(o) => seen.push(format!("InitApply {}", o.name_any())),
            watcher::Event::InitDone => {
                seen.push("InitDone".into());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, ["Init", "InitApply vm1", "InitDone"]);
    sim.seed_vm("default", "vm2", "Halted");
    match tokio::time::timeout(T, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        watcher::Event::Apply(o) => assert_eq!(o.name_any(), "vm2"),
        other => panic!("unexpected {other:?}"),
    }
    sim.delete(Kind::VirtualMachine, "default", "vm1").unwrap();
    match tokio::time::timeout(T, stream.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        watcher::Event::Delete(o) => assert_eq!(o.name_any(), "vm1"),
        other => panic!("unexpected {other:?}"),
    }

    // Streaming lists (sendInitialEvents + the initial-events-end bookmark) also work.
    let mut streaming = watcher(vms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut names = vec![];
    loop {
        match tokio::time::timeout(T, streaming.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            watcher::Event::InitApply(o) => names.push(o.name_any()),
            watcher::Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(names, ["vm2"]);
    assert!(
        sim.requests()
            .iter()
            .any(|r| r.uri.contains("sendInitialEvents=true"))
    );

    // Raw watch: bookmarks parse into WatchEvent::Bookmark with the current RV.
    let vms_ns: Api<VirtualMachine> = Api::namespaced(client, "default");
    let rv = sim.resource_version().to_string();
    let mut raw = vms_ns
        .watch(&WatchParams::default().timeout(2), &rv)
        .await
        .unwrap()
        .boxed();
    let ev = tokio::time::timeout(T, raw.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match ev {
        WatchEvent::Bookmark(b) => {
            assert_eq!(b.metadata.resource_version, rv);
            assert_eq!(b.types.kind, "VirtualMachine");
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    // The stream closes cleanly after timeoutSeconds.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = raw.try_next().await.unwrap() {
            assert!(matches!(e, WatchEvent::Bookmark(_)));
        }
    })
    .await;
    assert!(end.is_ok(), "stream ended at timeoutSeconds");

    // A watch from an RV older than the history gets an in-stream 410.
    sim.expire_watches();
    let mut raw = vms_ns
        .watch(&WatchParams::default(), "2")
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(T, raw.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    sim.stop().await;
}

/// Expiry and dropped connections in the middle of a stream of updates: the reflector's
/// store converges to the server's state (no update lost), re-listing after a 410.
#[tokio::test]
async fn watcher_survives_expiry_and_drops_without_losing_updates() {
    let (sim, client) = sim().await;
    for i in 0..3 {
        sim.seed_vm("default", &format!("vm{i}"), "Halted");
    }
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let (reader, writer) = reflector::store::<VirtualMachine>();
    let stream = reflector(writer, watcher(vms.clone(), watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(async move {
        let mut s = stream.boxed();
        while s.next().await.is_some() {}
    });
    tokio::time::timeout(T, reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    sim.clear_requests();
    for n in 0..30 {
        match n {
            5 => sim.expire_watches(),
            10 => sim.drop_watches(),
            15 => {
                sim.set_history_window(1);
                sim.drop_watches();
            }
            20 => sim.set_history_window(100_000),
            _ => {}
        }
        for i in 0..if n > 17 { 2 } else { 3 } {
            vms.patch(
                &format!("vm{i}"),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"n": n.to_string()}}})),
            )
            .await
            .unwrap();
        }
        if n == 12 {
            sim.seed_vm("default", "added", "Halted");
        }
        if n == 17 {
            vms.delete("vm2", &DeleteParams::default()).await.unwrap();
        }
    }
    let converged = sim
        .wait_until(T, |h| {
            let server: BTreeMap<String, String> = h
                .list(Kind::VirtualMachine, Some("default"))
                .into_iter()
                .map(|o| {
                    (
                        o["metadata"]["name"].as_str().unwrap().to_string(),
                        o["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    )
                })
                .collect();
            let cache: BTreeMap<String, String> = reader
                .state()
                .iter()
                .map(|o| (o.name_any(), o.resource_version().unwrap()))
                .collect();
            server == cache
        })
        .await;
    assert!(converged, "reflector converged to the server state");
    for o in reader.state() {
        if o.name_any().starts_with("vm") {
            assert_eq!(o.labels()["n"], "29");
        }
    }
    assert!(
        reader
            .get(&kube::runtime::reflector::ObjectRef::new("vm2").within("default"))
            .is_none()
    );
    // The 410 made the watcher re-list: a LIST after the first one.
    let relists = sim
        .requests()
        .iter()
        .filter(|r| {
            r.method == "GET"
                && r.uri.contains("/virtualmachines?")
                && !r.uri.contains("watch=true")
        })
        .count();
    assert!(relists >= 1, "re-listed after expiry");
    task.abort();
    sim.stop().await;
}

#[tokio::test]
async fn start_stop_restart_drive_the_vmi() {
    let (sim, client) = sim().await;
    sim.seed_vm("default", "vm1", "Halted");
    let fw = sim.get(Kind::VirtualMachine, "default", "vm1").unwrap()["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"].clone();
    // Stopped VM: stop and restart are refused.
    let e = api_err(
        vm_action(&client, "vm1", "stop", Value::Null)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            409,
            "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"vm1\": VM is not running"
        )
    );
    let e = api_err(
        vm_action(&client, "vm1", "restart", Value::Null)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"vm1\": RunStategy Halted does not support manual restart requests"
    );
    assert_eq!(
        vm_action(&client, "vm1", "start", Value::Null)
            .await
            .unwrap(),
        ""
    );
    let uid1 = sim
        .wait_vmi_phase("default", "vm1", "Running", T)
        .await
        .expect("VMI Running");
    let vm = sim.get(Kind::VirtualMachine, "default", "vm1").unwrap();
    assert_eq!(vm["spec"]["runStrategy"], "Always");
    assert!(
        sim.wait_until(T, |h| h.printable_status("default", "vm1").as_deref()
            == Some("Running"))
            .await
    );
    let vmi = sim
        .get(Kind::VirtualMachineInstance, "default", "vm1")
        .unwrap();
    assert_eq!(
        vmi["spec"]["domain"]["firmware"]["uuid"], fw,
        "firmware uuid copied"
    );
    assert_eq!(
        vmi["metadata"]["ownerReferences"][0]["uid"],
        vm["metadata"]["uid"]
    );
    assert_eq!(vmi["metadata"]["labels"]["kubevirt.io/nodeName"], "node1");
    assert_eq!(
        vmi["metadata"]["finalizers"][0],
        "kubevirt.io/foregroundDeleteVirtualMachine"
    );

    // The VMI list by node label, typed.
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let on_node = vmis
        .list(&ListParams::default().labels("kubevirt.io/nodeName=node1"))
        .await
        .unwrap();
    assert_eq!(on_node.items.len(), 1);
    assert_eq!(
        on_node.items[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );

    let e = api_err(
        vm_action(&client, "vm1", "start", Value::Null)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e.message,
        "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"vm1\": VM is already running"
    );
    let e = api_err(
        vm_action(&client, "vm1", "restart", json!({"gracePeriodSeconds": 5}))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            400,
            "For force restart, only gracePeriod=0 is supported for now"
        )
    );

    // Hard reset of the VMI in place: 200, same uid.
    let reset = |name: &str| {
        kube::core::Request::new(
            "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances",
        )
        .replace_subresource("reset", name, &PostParams::default(), vec![])
        .unwrap()
    };
    assert_eq!(client.request_text(reset("vm1")).await.unwrap(), "");
    assert_eq!(sim.reset_count("default", "vm1"), 1);
    assert_eq!(
        sim.vmi_uid("default", "vm1").as_deref(),
        Some(uid1.as_str())
    );
    let e = api_err(client.request_text(reset("ghost")).await.unwrap_err());
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            404,
            "virtualmachineinstance.kubevirt.io \"ghost\" not found"
        )
    );

    // Restart: a new VMI (new uid) that goes Running again.
    assert_eq!(
        vm_action(&client, "vm1", "restart", json!({"gracePeriodSeconds": 0}))
            .await
            .unwrap(),
        ""
    );
    let restarted = sim
        .wait_until(T, |h| {
            h.vmi_phase("default", "vm1").as_deref() == Some("Running")
                && h.vmi_uid("default", "vm1").as_deref() != Some(&uid1)
        })
        .await;
    assert!(restarted, "a new VMI is Running after restart");
    assert!(
        sim.wait_until(T, |h| h
            .get(Kind::VirtualMachine, "default", "vm1")
            .unwrap()["status"]
            .get("stateChangeRequests")
            .is_none())
            .await
    );

    // Stop under Always flips runStrategy to Halted; the VMI goes away through Succeeded.
    assert_eq!(
        vm_action(&client, "vm1", "stop", Value::Null)
            .await
            .unwrap(),
        ""
    );
    assert_eq!(
        sim.get(Kind::VirtualMachine, "default", "vm1").unwrap()["spec"]["runStrategy"],
        "Halted"
    );
    assert!(
        sim.wait_until(T, |h| h.printable_status("default", "vm1").as_deref()
            == Some("Stopping"))
            .await
    );
    assert!(
        sim.wait_until(T, |h| h.vmi_phase("default", "vm1").is_none())
            .await
    );
    assert!(
        sim.wait_until(T, |h| h.printable_status("default", "vm1").as_deref()
            == Some("Stopped"))
            .await
    );

    let e = api_err(
        vm_action(&client, "ghost", "start", Value::Null)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "virtualmachine.kubevirt.io \"ghost\" not found")
    );
    sim.stop().await;
}

/// Every answer of KubeVirt's start/stop/restart subresources, on VMs and VMIs put in exact states by hand (no
/// controller, so nothing moves under the test).
#[tokio::test]
async fn subresource_answers_per_run_strategy() {
    let (sim, client) = sim_with(Config {
        controller: false,
        ..fast()
    })
    .await;
    let msg = |name: &str, why: &str| {
        format!("Operation cannot be fulfilled on virtualmachine.kubevirt.io \"{name}\": {why}")
    };
    let conflict = |r: Result<String, kube::Error>| {
        let e = api_err(r.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
        let d = e.details.unwrap();
        assert_eq!(
            (d.group.as_str(), d.kind.as_str()),
            ("kubevirt.io", "virtualmachine")
        );
        e.message
    };
    let vm_with_vmi = |name: &str, rs: &str, phase: &str| -> String {
        sim.seed_vm("default", name, rs);
        let vmi = sim
            .create(
                Kind::VirtualMachineInstance,
                "default",
                json!({"metadata": {"name": name, "finalizers": [kubesim::VMI_FINALIZER]}, "spec": {"terminationGracePeriodSeconds": 30}}),
            )
            .unwrap();
        sim.set_vmi_phase("default", name, phase);
        vmi["metadata"]["uid"].as_str().unwrap().to_string()
    };
    let requests = |name: &str| {
        sim.get(Kind::VirtualMachine, "default", name).unwrap()["status"]["stateChangeRequests"]
            .clone()
    };
    let strategy = |name: &str| {
        sim.get(Kind::VirtualMachine, "default", name).unwrap()["spec"]["runStrategy"].clone()
    };

    // Always
    sim.seed_vm("default", "always", "Always");
    assert_eq!(
        conflict(vm_action(&client, "always", "start", Value::Null).await),
        msg("always", "Always does not support manual start requests")
    );
    assert_eq!(
        conflict(vm_action(&client, "always", "restart", Value::Null).await),
        msg("always", "VM is not running: Halted")
    );
    vm_action(&client, "always", "stop", Value::Null)
        .await
        .unwrap();
    assert_eq!(strategy("always"), "Halted");
    let uid = vm_with_vmi("always-run", "Always", "Running");
    assert_eq!(
        conflict(vm_action(&client, "always-run", "start", Value::Null).await),
        msg("always-run", "VM is already running")
    );
    vm_action(&client, "always-run", "restart", Value::Null)
        .await
        .unwrap();
    assert_eq!(
        requests("always-run"),
        json!([{"action": "Stop", "uid": uid}, {"action": "Start"}])
    );
    let e = api_err(
        vm_action(&client, "always-run", "restart", Value::Null)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (
            500,
            "InternalError",
            "Internal error occurred: unable to complete request: stop/start already underway"
        )
    );
    let e = api_err(
        vm_action(
            &client,
            "always-run",
            "restart",
            json!({"gracePeriodSeconds": -1}),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "gracePeriod has to be greater or equal to 0")
    );

    // Halted
    sim.seed_vm("default", "halted", "Halted");
    assert_eq!(
        conflict(vm_action(&client, "halted", "stop", Value::Null).await),
        msg("halted", "VM is not running")
    );
    assert_eq!(
        conflict(vm_action(&client, "halted", "restart", Value::Null).await),
        msg(
            "halted",
            "RunStategy Halted does not support manual restart requests"
        )
    );
    vm_action(&client, "halted", "start", json!({"dryRun": ["All"]}))
        .await
        .unwrap();
    assert_eq!(strategy("halted"), "Halted", "dry run changes nothing");
    vm_action(&client, "halted", "start", Value::Null)
        .await
        .unwrap();
    assert_eq!(strategy("halted"), "Always");
    let uid = vm_with_vmi("halted-stopping", "Halted", "Running");
    assert_eq!(
        conflict(vm_action(&client, "halted-stopping", "stop", Value::Null).await),
        msg(
            "halted-stopping",
            "Halted only supports manual stop requests with a shorter graceperiod"
        )
    );
    vm_action(
        &client,
        "halted-stopping",
        "stop",
        json!({"gracePeriod": 0}),
    )
    .await
    .unwrap();
    assert_eq!(
        requests("halted-stopping"),
        json!([{"action": "Stop", "uid": uid}])
    );
    assert_eq!(
        sim.get(Kind::VirtualMachineInstance, "default", "halted-stopping")
            .unwrap()["spec"]["terminationGracePeriodSeconds"],
        0
    );
    sim.seed_vm("default", "halted-paused", "Halted");
    vm_action(&client, "halted-paused", "start", json!({"paused": true}))
        .await
        .unwrap();
    assert_eq!(
        requests("halted-paused"),
        json!([{"action": "Start", "data": {"paused": "true"}}])
    );
    assert_eq!(strategy("halted-paused"), "Halted");

    // Manual
    sim.seed_vm("default", "manual", "Manual");
    assert_eq!(
        conflict(vm_action(&client, "manual", "stop", Value::Null).await),
        msg("manual", "VM is not running")
    );
    assert_eq!(
        conflict(vm_action(&client, "manual", "restart", Value::Null).await),
        msg("manual", "VM is not running: Halted")
    );
    vm_action(&client, "manual", "start", Value::Null)
        .await
        .unwrap();
    assert_eq!(requests("manual"), json!([{"action": "Start"}]));
    assert_eq!(strategy("manual"), "Manual");
    assert_eq!(
        api_err(
            vm_action(&client, "manual", "start", Value::Null)
                .await
                .unwrap_err()
        )
        .code,
        500
    );
    let uid = vm_with_vmi("manual-done", "Manual", "Succeeded");
    assert_eq!(
        conflict(vm_action(&client, "manual-done", "stop", Value::Null).await),
        msg("manual-done", "VM is not running")
    );
    vm_action(&client, "manual-done", "start", Value::Null)
        .await
        .unwrap();
    assert_eq!(
        requests("manual-done"),
        json!([{"action": "Stop", "uid": uid}, {"action": "Start"}])
    );
    let uid = vm_with_vmi("manual-run", "Manual", "Running");
    vm_action(&client, "manual-run", "stop", Value::Null)
        .await
        .unwrap();
    assert_eq!(
        requests("manual-run"),
        json!([{"action": "Stop", "uid": uid}])
    );
    // A lone Stop may be replaced by a new request.
    vm_action(&client, "manual-run", "restart", Value::Null)
        .await
        .unwrap();
    assert_eq!(
        requests("manual-run"),
        json!([{"action": "Stop", "uid": uid}, {"action": "Start"}])
    );

    // RerunOnFailure
    vm_with_vmi("rerun-failed", "RerunOnFailure", "Failed");
    assert_eq!(
        conflict(vm_action(&client, "rerun-failed", "start", Value::Null).await),
        msg(
            "rerun-failed",
            "RerunOnFailure does not support starting VM from failed state"
        )
    );
    let uid = vm_with_vmi("rerun-done", "RerunOnFailure", "Succeeded");
    vm_action(&client, "rerun-done", "start", Value::Null)
        .await
        .unwrap();
    assert_eq!(
        requests("rerun-done"),
        json!([{"action": "Stop", "uid": uid}, {"action": "Start"}])
    );
    vm_with_vmi("rerun-run", "RerunOnFailure", "Running");
    vm_action(&client, "rerun-run", "restart", Value::Null)
        .await
        .unwrap();

    // Once
    sim.seed_vm("default", "once", "Once");
    assert_eq!(
        conflict(vm_action(&client, "once", "start", Value::Null).await),
        msg("once", "Once does not support manual start requests")
    );
    assert_eq!(
        conflict(vm_action(&client, "once", "restart", Value::Null).await),
        msg(
            "once",
            "RunStategy Once does not support manual restart requests"
        )
    );
    vm_action(&client, "once", "stop", Value::Null)
        .await
        .unwrap();
    assert_eq!(strategy("once"), "Halted");

    // The deprecated spec.running is flipped instead of runStrategy.
    sim.create(
        Kind::VirtualMachine,
        "default",
        json!({"metadata": {"name": "legacy"}, "spec": {"running": false, "template": {}}}),
    )
    .unwrap();
    vm_action(&client, "legacy", "start", Value::Null)
        .await
        .unwrap();
    let vm = sim.get(Kind::VirtualMachine, "default", "legacy").unwrap();
    assert_eq!(vm["spec"]["running"], true);
    assert!(vm["spec"].get("runStrategy").is_none());

    // v1alpha3 routes exist too.
    let req = kube::core::Request::new(
        "/apis/subresources.kubevirt.io/v1alpha3/namespaces/default/virtualmachines",
    )
    .replace_subresource("stop", "legacy", &PostParams::default(), vec![])
    .unwrap();
    client.request_text(req).await.unwrap();
    sim.stop().await;
}

/// The same actions with the controller running: the effects on VMIs.
#[tokio::test]
async fn controller_effects_per_run_strategy() {
    let (sim, client) = sim().await;
    // Manual: nothing runs until start; stop keeps runStrategy.
    sim.seed_vm("default", "manual", "Manual");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sim.vmi_phase("default", "manual").is_none());
    assert_eq!(
        sim.printable_status("default", "manual").as_deref(),
        Some("Stopped")
    );
    vm_action(&client, "manual", "start", Value::Null)
        .await
        .unwrap();
    let uid = sim
        .wait_vmi_phase("default", "manual", "Running", T)
        .await
        .unwrap();
    vm_action(&client, "manual", "stop", Value::Null)
        .await
        .unwrap();
    assert!(
        sim.wait_until(T, |h| h.vmi_phase("default", "manual").is_none())
            .await
    );
    assert_eq!(
        sim.get(Kind::VirtualMachine, "default", "manual").unwrap()["spec"]["runStrategy"],
        "Manual"
    );
    vm_action(&client, "manual", "start", Value::Null)
        .await
        .unwrap();
    let uid2 = sim
        .wait_vmi_phase("default", "manual", "Running", T)
        .await
        .unwrap();
    assert_ne!(uid, uid2);

    // RerunOnFailure: a failed VMI is replaced by a new one.
    sim.seed_vm("default", "rerun", "RerunOnFailure");
    let uid = sim
        .wait_vmi_phase("default", "rerun", "Running", T)
        .await
        .unwrap();
    sim.set_vmi_phase("default", "rerun", "Failed");
    assert!(
        sim.wait_until(T, |h| h.vmi_phase("default", "rerun").as_deref()
            == Some("Running")
            && h.vmi_uid("default", "rerun").as_deref() != Some(&uid))
            .await,
        "RerunOnFailure restarts a failed VMI"
    );

    // Once: runs, and stop patches it to Halted.
    sim.seed_vm("default", "once", "Once");
    sim.wait_vmi_phase("default", "once", "Running", T)
        .await
        .unwrap();
    vm_action(&client, "once", "stop", Value::Null)
        .await
        .unwrap();
    assert!(
        sim.wait_until(T, |h| h.vmi_phase("default", "once").is_none())
            .await
    );

    // Halted + paused start: runStrategy becomes Always, the VMI runs paused.
    sim.seed_vm("default", "paused", "Halted");
    vm_action(&client, "paused", "start", json!({"paused": true}))
        .await
        .unwrap();
    sim.wait_vmi_phase("default", "paused", "Running", T)
        .await
        .unwrap();
    assert!(
        sim.wait_until(T, |h| h.printable_status("default", "paused").as_deref()
            == Some("Paused"))
            .await
    );
    assert_eq!(
        sim.get(Kind::VirtualMachine, "default", "paused").unwrap()["spec"]["runStrategy"],
        "Always"
    );
    assert_eq!(
        sim.get(Kind::VirtualMachineInstance, "default", "paused")
            .unwrap()["spec"]["startStrategy"],
        "Paused"
    );
    sim.stop().await;
}

#[tokio::test]
async fn vm_deletion_and_vmi_finalizer() {
    let (sim, client) = sim().await;
    sim.seed_vm("default", "vm1", "Always");
    let uid = sim
        .wait_vmi_phase("default", "vm1", "Running", T)
        .await
        .unwrap();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    // Deleting the VMI (as a peer's "reset" does): finalizer holds it, Left with deletionTimestamp.
    let del = vmis.delete("vm1", &DeleteParams::default()).await.unwrap();
    let left = del.left().expect("object held by its finalizer");
    assert!(left.metadata.deletion_timestamp.is_some());
    // Always recreates it with a new uid.
    assert!(
        sim.wait_until(T, |h| h.vmi_phase("default", "vm1").as_deref()
            == Some("Running")
            && h.vmi_uid("default", "vm1").as_deref() != Some(&uid))
            .await
    );
    // Deleting the VM stops its VMI, then the VM goes.
    let vms: Api<VirtualMachine> = Api::namespaced(client, "default");
    let del = vms.delete("vm1", &DeleteParams::default()).await.unwrap();
    assert!(del.is_left(), "VM carries the controller finalizer");
    assert!(
        sim.wait_until(T, |h| h.printable_status("default", "vm1").as_deref()
            == Some("Terminating"))
            .await
    );
    assert!(
        sim.wait_until(T, |h| h
            .get(Kind::VirtualMachine, "default", "vm1")
            .is_none()
            && h.vmi_phase("default", "vm1").is_none())
            .await
    );
    // Foreground propagation: the VM waits for its VMI.
    sim.seed_vm("default", "vm2", "Always");
    sim.wait_vmi_phase("default", "vm2", "Running", T)
        .await
        .unwrap();
    let held = vms
        .delete("vm2", &DeleteParams::foreground())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert!(held.finalizers().iter().any(|f| f == "foregroundDeletion"));
    assert!(
        sim.wait_until(T, |h| h
            .get(Kind::VirtualMachine, "default", "vm2")
            .is_none()
            && h.vmi_phase("default", "vm2").is_none())
            .await
    );
    sim.stop().await;
}

#[tokio::test]
async fn injected_faults() {
    let (sim, client) = sim().await;
    sim.seed_vm("default", "vm1", "Halted");
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    sim.inject(
        Fault::on("GET", "/virtualmachines/vm1")
            .status(503)
            .times(2),
    );
    for _ in 0..2 {
        let e = api_err(vms.get("vm1").await.unwrap_err());
        assert_eq!((e.code, e.reason.as_str()), (503, "ServiceUnavailable"));
    }
    vms.get("vm1").await.unwrap();
    sim.inject(Fault::on("PUT", "/vm1/start").status(409));
    assert_eq!(
        api_err(
            vm_action(&client, "vm1", "start", Value::Null)
                .await
                .unwrap_err()
        )
        .code,
        409
    );
    sim.inject(Fault::on("PUT", "/vm1/start").status(500));
    assert_eq!(
        api_err(
            vm_action(&client, "vm1", "start", Value::Null)
                .await
                .unwrap_err()
        )
        .code,
        500
    );
    sim.inject(Fault::on("*", "/virtualmachines/nope").status(404));
    assert_eq!(api_err(vms.get("nope").await.unwrap_err()).code, 404);

    // A hang: the client's own timeout fires.
    sim.inject(Fault::on("GET", "/virtualmachines/vm1").hang());
    let r = tokio::time::timeout(Duration::from_millis(300), vms.get("vm1")).await;
    assert!(r.is_err(), "the request hung");
    vms.get("vm1").await.unwrap();

    // A disconnect: a transport error, not an API error.
    sim.inject(Fault::on("GET", "/virtualmachines/vm1").disconnect());
    assert!(!matches!(
        vms.get("vm1").await.unwrap_err(),
        kube::Error::Api(_)
    ));
    vms.get("vm1").await.unwrap();
    let seen = sim
        .requests()
        .iter()
        .filter(|r| r.uri.contains("/vm1/start"))
        .count();
    assert_eq!(seen, 2);
    sim.stop().await;
}

/// A loopback image server: 200 for `/boot.iso`, 404 for anything else. Returns its address.
fn image_server() -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let found = req.split_whitespace().nth(1) == Some("/boot.iso");
            let status = if found { "200 OK" } else { "404 Not Found" };
            let _ = write!(
                c,
                "HTTP/1.1 {status}\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n"
            );
        }
    });
    addr
}

#[tokio::test]
async fn data_volumes_import_from_their_url_and_volumes_hotplug_into_the_vm() {
    let (sim, client) = sim().await;
    let server = image_server();
    let dvs: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "cdi.kubevirt.io",
            "v1beta1",
            "DataVolume",
        )),
    );
    let dv = |name: &str, url: &str| -> kube::api::DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": { "name": name },
            "spec": { "source": { "http": { "url": url } },
                      "storage": { "resources": { "requests": { "storage": "1Gi" } } } },
        }))
        .unwrap()
    };
    let pp = PostParams::default();
    dvs.create(&pp, &dv("good", &format!("http://{server}/boot.iso")))
        .await
        .unwrap();
    dvs.create(&pp, &dv("missing", &format!("http://{server}/nothing.iso")))
        .await
        .unwrap();
    // Every phase is seen, in order, through a watch.
    let mut seen: Vec<String> = vec![];
    let mut w = dvs
        .watch(&WatchParams::default().fields("metadata.name=good"), "0")
        .await
        .unwrap()
        .boxed();
    while let Some(ev) = tokio::time::timeout(T, w.next()).await.unwrap() {
        if let WatchEvent::Added(o) | WatchEvent::Modified(o) = ev.unwrap() {
            let phase = o.data["status"]["phase"].as_str().unwrap_or("").to_string();
            if seen.last() != Some(&phase) {
                seen.push(phase.clone());
            }
            if phase == "Succeeded" {
                assert_eq!(o.data["status"]["progress"], "100.0%");
                break;
            }
        }
    }
    assert_eq!(
        seen,
        ["", "ImportScheduled", "ImportInProgress", "Succeeded"]
    );
    assert!(
        sim.wait_until(T, |s| {
            s.get(Kind::DataVolume, "default", "missing")
                .is_some_and(|d| d["status"]["phase"] == "Failed")
        })
        .await
    );
    let failed = sim.get(Kind::DataVolume, "default", "missing").unwrap();
    assert!(
        failed["status"]["conditions"][1]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP 404"),
        "{failed}"
    );

    // A VM with an empty CD-ROM drive, running.
    let mut vm = kubesim::vm_manifest("vm1", "Always");
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "cd", "cdrom": { "bus": "sata" } }));
    sim.create(Kind::VirtualMachine, "default", vm).unwrap();
    assert!(
        sim.wait_vmi_phase("default", "vm1", "Running", T)
            .await
            .is_some()
    );
    let add = json!({ "name": "cd", "disk": { "name": "cd", "cdrom": { "bus": "sata" } },
                      "volumeSource": { "dataVolume": { "name": "good", "hotpluggable": true } } });
    assert_eq!(
        vm_action(&client, "vm1", "addvolume", add.clone())
            .await
            .unwrap(),
        ""
    );
    let vm = sim.get(Kind::VirtualMachine, "default", "vm1").unwrap();
    let spec = &vm["spec"]["template"]["spec"];
    assert!(
        spec["volumes"].as_array().unwrap().contains(
            &json!({ "name": "cd", "dataVolume": { "name": "good", "hotpluggable": true } })
        ),
        "{spec}"
    );
    let cds: Vec<&Value> = spec["domain"]["devices"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["name"] == "cd")
        .collect();
    assert_eq!(cds.len(), 1, "the drive is reused: {spec}");
    let vmi = sim
        .get(Kind::VirtualMachineInstance, "default", "vm1")
        .unwrap();
    assert_eq!(vmi["status"]["volumeStatus"][0]["name"], "cd", "{vmi}");
    assert_eq!(vmi["status"]["volumeStatus"][0]["phase"], "Ready");
    // Twice: a conflict; without a disk or a name: 400.
    let e = api_err(
        vm_action(&client, "vm1", "addvolume", add)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409, "{e:?}");
    let e = api_err(
        vm_action(&client, "vm1", "addvolume", json!({ "name": "x" }))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "AddVolumeOptions requires disk to not be nil")
    );

    // Removing ejects: the volume goes, the CD-ROM drive stays.
    assert_eq!(
        vm_action(&client, "vm1", "removevolume", json!({ "name": "cd" }))
            .await
            .unwrap(),
        ""
    );
    let vm = sim.get(Kind::VirtualMachine, "default", "vm1").unwrap();
    let spec = &vm["spec"]["template"]["spec"];
    assert!(
        !spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "cd"),
        "{spec}"
    );
    assert!(
        spec["domain"]["devices"]["disks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "cd")
    );
    let vmi = sim
        .get(Kind::VirtualMachineInstance, "default", "vm1")
        .unwrap();
    assert_eq!(vmi["status"]["volumeStatus"], json!([]));
    let e = api_err(
        vm_action(&client, "vm1", "removevolume", json!({ "name": "cd" }))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
}
