//! The shipped RBAC manifests against the whole job: kubesim enforces them on the agent's and
//! the controller's ServiceAccount tokens as the apiserver would, an agent (`--role agent`)
//! and a controller (`--role controller`) do everything they do (serve, power, boot
//! overrides and their restore, the serial console, Events, Services and EndpointSlices, the
//! Lease, deletion), and then every grant of each identity must have allowed some request of
//! it and no request of either may have been refused. Plus what each identity must not be
//! able to do.

mod kube_support;

use kube_support::*;
use kubesim::Kind;
use serde_json::{Value, json};
use virtbmc::backend::Backend;
use virtbmc::backend::console::ConsoleEvent;
use virtbmc::cluster::role::Role;

/// An agent pod of the DaemonSet in virtbmc-system, Running and Ready at `ip`.
fn agent_pod(sim: &kubesim::Handle, name: &str, ip: &str) {
    sim.create(
        Kind::Pod,
        "virtbmc-system",
        json!({"metadata": {"name": name, "labels": {"app.kubernetes.io/name": "virtbmc"}},
               "spec": {"nodeName": "node1", "containers": [{"name": "virtbmc", "image": "virtbmc:latest"}]}}),
    )
    .unwrap();
    sim.set_status(
        Kind::Pod,
        "virtbmc-system",
        name,
        json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
               "conditions": [{"type": "Ready", "status": "True"}]}),
    )
    .unwrap();
}

fn events_of(sim: &kubesim::Handle, vm: &str, reason: &str) -> Vec<Value> {
    sim.list(Kind::Event, Some(NS))
        .into_iter()
        .filter(|e| e["reason"] == reason && e["involvedObject"]["name"] == vm)
        .collect()
}

/// Until `user`'s requests have used this grant (e.g. the Lease's renewal, on its timer).
async fn until_used(sim: &kubesim::Handle, user: &str, grant: &str) {
    until(grant, || {
        sim.used_grants(user)
            .iter()
            .any(|g| g.to_string().contains(grant))
    })
    .await;
}

/// Fails listing every grant the enforced manifests give `user` that no request of it used.
fn assert_every_grant_used(sim: &kubesim::Handle, user: &str) {
    let unused: Vec<String> = sim
        .unused_grants(user)
        .iter()
        .map(|g| g.to_string())
        .collect();
    let used: Vec<String> = sim
        .used_grants(user)
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert!(
        unused.is_empty(),
        "{user}: grants nothing used:\n  {}\nused:\n  {}",
        unused.join("\n  "),
        used.join("\n  ")
    );
    assert!(!used.is_empty(), "{user}: no request went through RBAC");
}

/// Serial-over-LAN's side of the console: the running VMI's console subresource, opened
/// through the agent's backend, attaches and shows the guest's output.
async fn console_attaches(agent: &Agent, bmc: &str) {
    let mut console = agent.backend.open_console(bmc);
    let attached = tokio::time::timeout(T, async {
        while let Some(event) = console.events.recv().await {
            if event == ConsoleEvent::Attached {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(attached, Ok(true), "{bmc}: the console attaches");
}

/// A power action KubeVirt refuses twice: one Event created, then patched with its count.
async fn refused_twice(sim: &kubesim::Handle, port: u16, vm: &str) {
    for _ in 0..2 {
        let out = admin(port, &["power", "reset"]).await;
        assert!(!out.ok, "a restart under Once is refused: {}", out.text);
    }
    until("one Event counting both refusals", || {
        let evs = events_of(sim, vm, "IPMIActionRefused");
        evs.len() == 1 && evs[0]["count"] == 2
    })
    .await;
}

/// Power on (virtualmachines/start), a one-shot PXE (VM read and patched, the record
/// written), a reset (restart) that restores the order, a power off (stop), on `vm` served
/// on `port`.
async fn power_and_a_one_shot_pxe(sim: &kubesim::Handle, agent: &Agent, vm: &str, port: u16) {
    let bmc = format!("{NS}/{vm}");
    until_login(port, "admin", "password").await;
    let out = admin(port, &["power", "on"]).await;
    assert!(out.ok, "{}", out.text);
    let uid = sim.wait_vmi_phase(NS, vm, "Running", T).await.unwrap();
    agent.wait_power(&bmc, "on").await;
    let original = boot_orders(sim, vm);
    let out = admin(port, &["chassis", "bootdev", "pxe"]).await;
    assert!(out.ok, "{}", out.text);
    assert_eq!(
        boot_orders(sim, vm),
        json!({"disks": [2], "interfaces": [1]})
    );
    until("the override visible to the engine", || {
        agent
            .backend
            .shared
            .view(&bmc)
            .is_some_and(|v| v.boot.is_some())
    })
    .await;
    let out = admin(port, &["power", "reset"]).await;
    assert!(out.ok, "{}", out.text);
    until("the boot order restored after the next start", || {
        boot_orders(sim, vm) == original && sim.vmi_uid(NS, vm).is_some_and(|u| u != uid)
    })
    .await;
    let out = admin(port, &["power", "off"]).await;
    assert!(out.ok, "{}", out.text);
    agent.wait_power(&bmc, "off").await;
}

/// The VM `once` (runStrategy Once, served on `port`): its console attaches, a CD goes in
/// and out, and a restart KubeVirt refuses twice becomes an Event, then its count.
async fn console_and_refusals(sim: &kubesim::Handle, agent: &Agent, port: u16) {
    sim.wait_vmi_phase(NS, "once", "Running", T).await.unwrap();
    agent.wait_power("default/once", "on").await;
    console_attaches(agent, "default/once").await;
    media_in_and_out(sim, agent, "once").await;
    until_login(port, "admin", "password").await;
    refused_twice(sim, port, "once").await;
}

/// Virtual media through the backend: the DataVolume created and hotplugged (addvolume),
/// then unplugged (removevolume) and deleted; the DataVolume watch runs all along.
async fn media_in_and_out(sim: &kubesim::Handle, agent: &Agent, vm: &str) {
    let bmc = format!("{NS}/{vm}");
    let dv = format!("{vm}-virtbmc-cd");
    agent
        .backend
        .insert_media(&bmc, "http://127.0.0.1:9/boot.iso")
        .await
        .unwrap();
    assert!(sim.get(Kind::DataVolume, NS, &dv).is_some());
    until("the drive read from the caches", || {
        agent.backend.media(&bmc).is_ok_and(|m| m.is_some())
    })
    .await;
    // At once: the eject reads the VM fresh, so it finds the volume the insert just added.
    agent.backend.eject_media(&bmc).await.unwrap();
    let vm = sim.get(Kind::VirtualMachine, NS, vm).unwrap();
    assert_eq!(virtbmc::cluster::media::attached(&vm, &dv), None, "{vm}");
    assert!(sim.get(Kind::DataVolume, NS, &dv).is_none());
    until_used(sim, AGENT_USER, "list datavolumes").await;
}

/// The agent and the controller as the DaemonSet and the Deployment run them: two processes,
/// two tokens, each with its own half of the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rbac_is_exactly_what_the_agent_and_the_controller_use() {
    let sim = sim().await;
    seed(&sim, "vm1", "Halted");
    seed(&sim, "once", "Once");
    // A Secret that exists before any VirtualMachineBMC names it: read when one does.
    sim.seed_secret(
        NS,
        "late-auth",
        &[("username", "admin"), ("password", "password")],
    );
    agent_pod(&sim, "agent-pod", "10.0.0.1");
    let controller =
        Agent::start_role(&sim, "controller-rbac", 31400..=31409, Role::Controller).await;
    let agent = Agent::start_role(&sim, "agent-rbac", 31400..=31409, Role::Agent).await;
    let port = agent.wait_served("default/vm1").await;
    let once = agent.wait_served("default/once").await;

    // With the BMC's finalizer patched while the one-shot PXE is pending.
    power_and_a_one_shot_pxe(&sim, &agent, "vm1", port).await;
    console_and_refusals(&sim, &agent, once).await;

    // A BMC naming the Secret that was already there.
    sim.seed_vm(NS, "late", "Halted");
    sim.seed_vmbmc(NS, "late-bmc", "late", "late-auth");
    let late = agent.wait_served("default/late").await;
    until_login(late, "admin", "password").await;

    // The EndpointSlices route to the agent pod; the BMC's deletion takes its Service and
    // slices.
    until("vm1's slice", || {
        sim.list(Kind::EndpointSlice, Some(NS))
            .iter()
            .any(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "vm1-virtbmc")
    })
    .await;
    sim.delete(Kind::VirtualMachineBmc, NS, "vm1-bmc").unwrap();
    until("vm1's Service and slices gone", || {
        sim.get(Kind::Service, NS, "vm1-virtbmc").is_none()
            && !sim
                .list(Kind::EndpointSlice, Some(NS))
                .iter()
                .any(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "vm1-virtbmc")
    })
    .await;
    until_used(&sim, CONTROLLER_USER, "update leases").await;
    assert!(controller.backend.shared.is_leader());
    // The controller served nothing; the agent never ran for the Lease.
    assert_eq!(controller.registry.list().len(), 0);
    assert!(!agent.backend.shared.is_leader());

    assert_agent_never_refused(&sim);
    assert_every_grant_used(&sim, AGENT_USER);
    assert_every_grant_used(&sim, CONTROLLER_USER);
}

/// The same for the label mode's manifest: VMs chosen by label, one Secret by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_label_mode_rbac_is_exactly_what_the_agent_uses() {
    let sim = label_mode_sim().await;
    for (vm, strategy) in [("web", "Halted"), ("once", "Once")] {
        sim.seed_vm(NS, vm, strategy);
        select_vm(&sim, vm);
    }
    sim.seed_secret(
        "virtbmc-system",
        "virtbmc-credentials",
        &[("username", "admin"), ("password", "password")],
    );
    agent_pod(&sim, "agent-pod", "10.0.0.1");
    let opts = label_mode_options(
        "agent-label",
        "virtbmc-system/virtbmc-credentials",
        31410..=31419,
    );
    let agent = Agent::start_with(&sim, opts, std::net::Ipv4Addr::LOCALHOST).await;
    let port = agent.wait_served("default/web").await;
    let once = agent.wait_served("default/once").await;

    power_and_a_one_shot_pxe(&sim, &agent, "web", port).await;

    console_and_refusals(&sim, &agent, once).await;

    until("web's slice", || {
        sim.list(Kind::EndpointSlice, Some(NS))
            .iter()
            .any(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "web-virtbmc")
    })
    .await;
    // Unselected: its Service and slices go.
    sim.merge_patch(
        Kind::VirtualMachine,
        NS,
        "web",
        json!({"metadata": {"labels": {"bmc.kubevirt.io/enabled": null}}}),
    )
    .unwrap();
    until("web's Service and slices gone", || {
        sim.get(Kind::Service, NS, "web-virtbmc").is_none()
            && !sim
                .list(Kind::EndpointSlice, Some(NS))
                .iter()
                .any(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "web-virtbmc")
    })
    .await;
    until_used(&sim, AGENT_USER, "update leases").await;

    assert_agent_never_refused(&sim);
    assert_every_grant_used(&sim, AGENT_USER);
}

/// One HTTP/1.0 request with `Authorization: Bearer TOKEN`: the code and the JSON body.
async fn request(sim: &kubesim::Handle, method: &str, path: &str, token: &str) -> (u16, Value) {
    send(sim, method, path, token, None).await
}

/// A PATCH with this content type and body.
async fn patch(
    sim: &kubesim::Handle,
    path: &str,
    token: &str,
    content_type: &str,
    body: Value,
) -> (u16, Value) {
    send(sim, "PATCH", path, token, Some((content_type, body))).await
}

async fn send(
    sim: &kubesim::Handle,
    method: &str,
    path: &str,
    token: &str,
    body: Option<(&str, Value)>,
) -> (u16, Value) {
    let mut head = format!("{method} {path} HTTP/1.0\r\nAuthorization: Bearer {token}\r\n");
    let payload = match body {
        Some((ct, b)) => {
            let b = b.to_string();
            head += &format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", b.len());
            b
        }
        None => String::new(),
    };
    let (code, body) = http_exchange(sim.addr(), &format!("{head}\r\n{payload}")).await;
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// What the apiserver writes for an RBAC refusal.
fn forbidden(message: &str, details: Value) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": "Forbidden", "details": details, "code": 403,
    })
}

/// The agent's token may not delete a VM (under either manifest), nor read a Secret other
/// than the one the label mode names; an unknown token is not anyone. The refusals come
/// back as the apiserver's Status, through the agent's own client too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_identity_cannot_delete_vms_or_read_other_secrets() {
    let sa = "User \"system:serviceaccount:virtbmc-system:virtbmc\"";
    for manifest in ["rbac.yaml", "label-mode/rbac.yaml"] {
        let sim = kubesim::Server::start_with(
            "127.0.0.1:0".parse().unwrap(),
            kubesim::Config {
                auth: Some(policy(&[manifest])),
                ..fast()
            },
        )
        .await
        .unwrap();
        seed(&sim, "vm1", "Halted");
        let (code, body) = request(
            &sim,
            "DELETE",
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1",
            AGENT_TOKEN,
        )
        .await;
        assert_eq!(code, 403, "{manifest}: {body}");
        assert_eq!(
            body,
            forbidden(
                &format!(
                    "virtualmachines.kubevirt.io \"vm1\" is forbidden: {sa} cannot delete resource \
                     \"virtualmachines\" in API group \"kubevirt.io\" in the namespace \"default\""
                ),
                json!({"name": "vm1", "group": "kubevirt.io", "kind": "virtualmachines"}),
            ),
            "{manifest}"
        );
        assert!(sim.get(Kind::VirtualMachine, NS, "vm1").is_some());
        // Nor through KubeVirt's subresources the agent does not use.
        let (code, body) = request(
            &sim,
            "PUT",
            "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/vm1/reset",
            AGENT_TOKEN,
        )
        .await;
        assert_eq!(code, 403, "{manifest}: {body}");
        assert_eq!(
            body["message"],
            format!(
                "virtualmachineinstances.subresources.kubevirt.io \"vm1\" is forbidden: {sa} cannot \
                 update resource \"virtualmachineinstances/reset\" in API group \
                 \"subresources.kubevirt.io\" in the namespace \"default\""
            )
        );
        // The admin may.
        let (code, body) = request(
            &sim,
            "GET",
            "/api/v1/namespaces/default/secrets/vm1-auth",
            ADMIN_TOKEN,
        )
        .await;
        assert_eq!((code, &body["metadata"]["name"]), (200, &json!("vm1-auth")));
        // No token anyone holds: 401, whatever the path.
        for path in ["/api/v1/namespaces/default/secrets/vm1-auth", "/apis"] {
            let (code, body) = request(&sim, "GET", path, "not-a-token").await;
            assert_eq!(
                (code, body),
                (
                    401,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
                ),
                "{manifest} {path}"
            );
        }
    }

    // Label mode: one Secret, by name, in the agent's namespace; nothing else.
    let sim = label_mode_sim().await;
    for ns in ["virtbmc-system", NS] {
        sim.seed_secret(
            ns,
            "virtbmc-credentials",
            &[("username", "admin"), ("password", "password")],
        );
    }
    sim.seed_secret(
        "virtbmc-system",
        "other",
        &[("username", "root"), ("password", "secret")],
    );
    // What the agent sends: a list of that one name.
    let (code, body) = request(
        &sim,
        "GET",
        "/api/v1/namespaces/virtbmc-system/secrets?fieldSelector=metadata.name%3Dvirtbmc-credentials",
        AGENT_TOKEN,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1), "{body}");
    for (path, name, ns, verb) in [
        (
            "/api/v1/namespaces/virtbmc-system/secrets/other",
            "other",
            "virtbmc-system",
            "get",
        ),
        (
            "/api/v1/namespaces/default/secrets/virtbmc-credentials",
            "virtbmc-credentials",
            "default",
            "get",
        ),
        (
            "/api/v1/namespaces/virtbmc-system/secrets",
            "",
            "virtbmc-system",
            "list",
        ),
    ] {
        let (code, body) = request(&sim, "GET", path, AGENT_TOKEN).await;
        let what = if name.is_empty() {
            "secrets".to_string()
        } else {
            format!("secrets \"{name}\"")
        };
        let mut details = json!({"kind": "secrets"});
        if !name.is_empty() {
            details["name"] = json!(name);
        }
        assert_eq!(
            (code, body),
            (
                403,
                forbidden(
                    &format!(
                        "{what} is forbidden: {sa} cannot {verb} resource \"secrets\" in API group \"\" \
                         in the namespace \"{ns}\""
                    ),
                    details
                )
            ),
            "{path}"
        );
    }
    // The agent's own client (kube, from its kubeconfig) sees the same refusal.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client(&sim).await, "virtbmc-system");
    match secrets.get("other").await {
        Err(kube::Error::Api(s)) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"), "{s:?}");
            assert!(s.message.contains("cannot get resource"), "{s:?}");
        }
        other => panic!("read a Secret outside its scope: {other:?}"),
    }
    let refused = sim.denials();
    assert_eq!(refused.len(), 4, "{refused:#?}");
    assert!(refused.iter().all(|d| d.user == AGENT_USER));
}

const VM1: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1";
const JSON_PATCH: &str = "application/json-patch+json";
const MERGE_PATCH: &str = "application/merge-patch+json";

/// What the apiserver answers when the boot-orders-only policy denies a request.
fn denied_by_policy(why: &str) -> Value {
    let reason = format!(
        "ValidatingAdmissionPolicy 'virtbmc-agent-boot-orders-only' with binding \
         'virtbmc-agent-boot-orders-only' denied request: the virtbmc agent may change boot \
         orders only, not {why}"
    );
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("virtualmachines.kubevirt.io \"vm1\" is forbidden: {reason}"),
        "reason": "Forbidden",
        "details": {"name": "vm1", "group": "kubevirt.io", "kind": "virtualmachines",
                    "causes": [{"message": reason}]},
        "code": 403,
    })
}

/// manifests/admission-policy.yaml: the agent's ServiceAccount may change a VM's boot
/// orders, its bootloader and the label mode's two annotations, and nothing else (each
/// refusal a 403 with the policy's message, the VM untouched); an admin is not matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admission_policy_lets_the_agent_change_boot_orders_only() {
    let sim = sim().await;
    sim.seed_vm(NS, "vm1", "Halted");
    let devices = "/spec/template/spec/domain/devices";

    // What the agent writes: boot orders (guarded by a test), the bootloader, annotations.
    let (code, body) = patch(
        &sim,
        VM1,
        AGENT_TOKEN,
        JSON_PATCH,
        json!([
            {"op": "test", "path": format!("{devices}/disks/0/bootOrder"), "value": 1},
            {"op": "replace", "path": format!("{devices}/disks/0/bootOrder"), "value": 2},
            {"op": "add", "path": format!("{devices}/interfaces/0/bootOrder"), "value": 1},
            {"op": "add", "path": "/spec/template/spec/domain/firmware/bootloader", "value": {"efi": {}}},
        ]),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        boot_orders(&sim, "vm1"),
        json!({"disks": [2], "interfaces": [1]})
    );
    let (code, body) = patch(
        &sim,
        VM1,
        AGENT_TOKEN,
        MERGE_PATCH,
        json!({"metadata": {"annotations": {"bmc.kubevirt.io/port": "31000", "bmc.kubevirt.io/boot-override": "{}"}}}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = patch(
        &sim,
        VM1,
        AGENT_TOKEN,
        JSON_PATCH,
        json!([{"op": "remove", "path": "/metadata/annotations/bmc.kubevirt.io~1boot-override"}]),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // What a write could change (the controller writes status and resourceVersion meanwhile).
    let writable = |sim: &kubesim::Handle| {
        let vm = sim.get(Kind::VirtualMachine, NS, "vm1").unwrap();
        json!([
            vm["spec"],
            vm["metadata"]["annotations"],
            vm["metadata"]["labels"]
        ])
    };
    let unchanged = writable(&sim);

    // Anything else is refused.
    let volume = json!({"name": "extra", "containerDisk": {"image": "quay.io/evil/disk:latest"}});
    for (what, ctype, p, why) in [
        (
            "a new volume",
            JSON_PATCH,
            json!([{"op": "add", "path": "/spec/template/spec/volumes/-", "value": volume}]),
            "the template's volumes, networks, scheduling or other fields outside its domain",
        ),
        (
            "another container disk image",
            JSON_PATCH,
            json!([{"op": "replace", "path": "/spec/template/spec/volumes/0/containerDisk/image",
                    "value": "quay.io/evil/disk:latest"}]),
            "the template's volumes, networks, scheduling or other fields outside its domain",
        ),
        (
            "a boot order with a disk's bus",
            JSON_PATCH,
            json!([
                {"op": "replace", "path": format!("{devices}/disks/0/bootOrder"), "value": 1},
                {"op": "replace", "path": format!("{devices}/disks/0/disk/bus"), "value": "sata"},
            ]),
            "a disk, other than its bootOrder (or the disks' names or order)",
        ),
        (
            "a disk field this policy never names",
            JSON_PATCH,
            json!([{"op": "add", "path": format!("{devices}/disks/0/futureField"), "value": true}]),
            "a disk, other than its bootOrder (or the disks' names or order)",
        ),
        (
            "a spec field this policy never names",
            MERGE_PATCH,
            json!({"spec": {"futureField": {"enabled": true}}}),
            "the VirtualMachine's spec outside its template, or the template's metadata",
        ),
        (
            "a new disk",
            JSON_PATCH,
            json!([{"op": "add", "path": format!("{devices}/disks/-"),
                    "value": {"name": "extra", "disk": {"bus": "virtio"}, "bootOrder": 1}}]),
            "a disk, other than its bootOrder (or the disks' names or order)",
        ),
        (
            "an interface's MAC address",
            JSON_PATCH,
            json!([{"op": "add", "path": format!("{devices}/interfaces/0/macAddress"),
                    "value": "02:00:00:00:00:01"}]),
            "an interface, other than its bootOrder (or the interfaces' names or order)",
        ),
        (
            "the runStrategy",
            MERGE_PATCH,
            json!({"spec": {"runStrategy": "Always"}}),
            "the VirtualMachine's spec outside its template, or the template's metadata",
        ),
        (
            "the memory",
            MERGE_PATCH,
            json!({"spec": {"template": {"spec": {"domain": {"memory": {"guest": "64Gi"}}}}}}),
            "the domain's CPU, memory, resources or other fields outside its devices, or its \
             firmware other than the bootloader",
        ),
        (
            "another annotation",
            MERGE_PATCH,
            json!({"metadata": {"annotations": {"kubevirt.io/keep-me": "x"}}}),
            "the VirtualMachine's labels, finalizers, owners, or annotations other than \
             bmc.kubevirt.io/port(-proof) and bmc.kubevirt.io/boot-override(-applied)",
        ),
    ] {
        let (code, body) = patch(&sim, VM1, AGENT_TOKEN, ctype, p).await;
        assert_eq!((code, body), (403, denied_by_policy(why)), "{what}");
        assert_eq!(writable(&sim), unchanged, "{what} changed the VM");
    }
    let mut replaced = sim.get(Kind::VirtualMachine, NS, "vm1").unwrap();
    replaced["spec"]["template"]["spec"]["volumes"][0]["containerDisk"]["image"] =
        json!("quay.io/evil/disk:latest");
    let (code, body) = send(
        &sim,
        "PUT",
        VM1,
        AGENT_TOKEN,
        Some(("application/json", replaced.clone())),
    )
    .await;
    // A PUT never reaches the policy: RBAC grants the agent patch, not update.
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body["message"],
        "virtualmachines.kubevirt.io \"vm1\" is forbidden: User \
         \"system:serviceaccount:virtbmc-system:virtbmc\" cannot update resource \
         \"virtualmachines\" in API group \"kubevirt.io\" in the namespace \"default\""
    );
    assert_eq!(writable(&sim), unchanged);

    // The policy binds the agent's ServiceAccount only: an admin changes the image.
    let (code, body) = send(
        &sim,
        "PUT",
        VM1,
        ADMIN_TOKEN,
        Some(("application/json", replaced)),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = patch(
        &sim,
        VM1,
        ADMIN_TOKEN,
        JSON_PATCH,
        json!([{"op": "add", "path": "/spec/template/spec/volumes/-", "value": volume}]),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let vm = sim.get(Kind::VirtualMachine, NS, "vm1").unwrap();
    let volumes = &vm["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        (
            volumes.as_array().map(Vec::len),
            &volumes[0]["containerDisk"]["image"]
        ),
        (Some(2), &json!("quay.io/evil/disk:latest"))
    );
}

/// What the agents' token must not do, now that the controller does it: write a Service, an
/// EndpointSlice (here the cluster DNS's, which would reroute every lookup to a node), the
/// Lease, a BMC's finalizers, or any of a BMC's status but its boot override record; nor read
/// a tenant's Secret. Each is
/// refused with 403 and leaves the object as it was; the controller's token may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_identity_cannot_write_services_slices_the_lease_or_bmc_status_nor_read_secrets()
{
    let sim = sim().await;
    seed(&sim, "vm1", "Halted");
    let sa = "User \"system:serviceaccount:virtbmc-system:virtbmc\"";
    sim.create(
        Kind::Service,
        NS,
        json!({"metadata": {"name": "vm1-virtbmc"},
               "spec": {"ports": [{"name": "ipmi", "protocol": "UDP", "port": 623, "targetPort": 31500}]}}),
    )
    .unwrap();
    sim.create(
        Kind::EndpointSlice,
        "kube-system",
        json!({"metadata": {"name": "kube-dns-abcde",
                            "labels": {"kubernetes.io/service-name": "kube-dns"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.96.0.10"]}],
               "ports": [{"name": "dns", "protocol": "UDP", "port": 53}]}),
    )
    .unwrap();
    sim.create(
        Kind::Lease,
        "virtbmc-system",
        json!({"metadata": {"name": "virtbmc-leader"},
               "spec": {"holderIdentity": "controller-0", "leaseDurationSeconds": 15}}),
    )
    .unwrap();
    sim.set_status(
        Kind::VirtualMachineBmc,
        NS,
        "vm1-bmc",
        json!({"port": 31500}),
    )
    .unwrap();
    let before = |sim: &kubesim::Handle| {
        json!([
            sim.get(Kind::Service, NS, "vm1-virtbmc").unwrap()["spec"],
            sim.get(Kind::EndpointSlice, "kube-system", "kube-dns-abcde")
                .unwrap()["endpoints"],
            sim.get(Kind::Lease, "virtbmc-system", "virtbmc-leader")
                .unwrap()["spec"],
            vmbmc(sim, "vm1").unwrap()["status"],
            vmbmc(sim, "vm1").unwrap()["metadata"]["finalizers"],
        ])
    };
    let unchanged = before(&sim);

    let apply = "application/apply-patch+yaml";
    let rbac_refusals = [
        (
            "apply a Service",
            "/api/v1/namespaces/default/services/vm1-virtbmc?fieldManager=virtbmc&force=true",
            apply,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "vm1-virtbmc"},
                   "spec": {"ports": [{"name": "ipmi", "protocol": "UDP", "port": 623, "targetPort": 9999}]}}),
            "services \"vm1-virtbmc\" is forbidden: {sa} cannot patch resource \"services\" in API group \"\" in the namespace \"default\"",
        ),
        (
            "repoint the cluster DNS's EndpointSlice",
            "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices/kube-dns-abcde",
            MERGE_PATCH,
            json!({"endpoints": [{"addresses": ["10.0.0.66"]}]}),
            "endpointslices.discovery.k8s.io \"kube-dns-abcde\" is forbidden: {sa} cannot patch resource \"endpointslices\" in API group \"discovery.k8s.io\" in the namespace \"kube-system\"",
        ),
        (
            "take the Lease",
            "/apis/coordination.k8s.io/v1/namespaces/virtbmc-system/leases/virtbmc-leader",
            MERGE_PATCH,
            json!({"spec": {"holderIdentity": "node-1"}}),
            "leases.coordination.k8s.io \"virtbmc-leader\" is forbidden: {sa} cannot patch resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"virtbmc-system\"",
        ),
        (
            "add a finalizer to a BMC",
            "/apis/bmc.kubevirt.io/v1beta1/namespaces/default/virtualmachinebmcs/vm1-bmc",
            MERGE_PATCH,
            json!({"metadata": {"finalizers": ["evil.example/hold"]}}),
            "virtualmachinebmcs.bmc.kubevirt.io \"vm1-bmc\" is forbidden: {sa} cannot patch resource \"virtualmachinebmcs\" in API group \"bmc.kubevirt.io\" in the namespace \"default\"",
        ),
    ];
    for (what, path, ctype, body, message) in rbac_refusals {
        let (code, got) = patch(&sim, path, AGENT_TOKEN, ctype, body).await;
        assert_eq!(code, 403, "{what}: {got}");
        assert_eq!(got["reason"], "Forbidden", "{what}: {got}");
        assert_eq!(got["message"], message.replace("{sa}", sa), "{what}: {got}");
    }
    // Nor delete a Service or an EndpointSlice, nor read a tenant's Secret (the controller
    // copies each BMC's user into the agents' namespace), nor list the cluster's Secrets.
    for (method, path) in [
        ("DELETE", "/api/v1/namespaces/default/services/vm1-virtbmc"),
        (
            "DELETE",
            "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices/kube-dns-abcde",
        ),
        ("GET", "/api/v1/namespaces/default/secrets/vm1-auth"),
        ("GET", "/api/v1/secrets"),
    ] {
        let (code, got) = request(&sim, method, path, AGENT_TOKEN).await;
        assert_eq!(code, 403, "{method} {path}: {got}");
    }

    // A BMC's status: RBAC lets the agent patch it for the boot override record, and the
    // admission policy refuses every other field.
    let status =
        "/apis/bmc.kubevirt.io/v1beta1/namespaces/default/virtualmachinebmcs/vm1-bmc/status";
    for (what, body) in [
        ("move the port", json!({"status": {"port": 31501}})),
        (
            "write a condition",
            json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "ServiceReady", "message": "lies"}]}}),
        ),
        (
            "set the clusterIP",
            json!({"status": {"clusterIP": "10.96.0.10"}}),
        ),
    ] {
        let (code, got) = patch(&sim, status, AGENT_TOKEN, MERGE_PATCH, body).await;
        assert_eq!(code, 403, "{what}: {got}");
        assert_eq!(got["reason"], "Forbidden", "{what}: {got}");
        let message = got["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(
                "ValidatingAdmissionPolicy 'virtbmc-agent-boot-override-only' with binding \
                 'virtbmc-agent-boot-override-only' denied request: the virtbmc agent may write \
                 a BMC's boot override record only, not its port, conditions or clusterIP"
            ),
            "{what}: {got}"
        );
    }
    assert_eq!(before(&sim), unchanged, "a refused write changed something");
    // RBAC's eight refusals (the policy's three are admission's, after RBAC allowed them).
    let refused = sim.denials();
    assert_eq!(refused.len(), 8, "{refused:#?}");
    assert!(refused.iter().all(|d| d.user == AGENT_USER), "{refused:#?}");

    // The record itself the agent may write (a boot device command does), and clear.
    let record = json!({"mode": "Oneshot", "device": "pxe"});
    let (code, got) = patch(
        &sim,
        status,
        AGENT_TOKEN,
        MERGE_PATCH,
        json!({"status": {"bootOverride": record}}),
    )
    .await;
    assert_eq!(code, 200, "{got}");
    let (code, got) = patch(
        &sim,
        status,
        AGENT_TOKEN,
        MERGE_PATCH,
        json!({"status": {"bootOverride": null}}),
    )
    .await;
    assert_eq!(code, 200, "{got}");
    // The controller's token does what the agent's may not.
    let (code, got) = patch(
        &sim,
        status,
        CONTROLLER_TOKEN,
        MERGE_PATCH,
        json!({"status": {"port": 31501}}),
    )
    .await;
    assert_eq!(
        (code, &got["status"]["port"]),
        (200, &json!(31501)),
        "{got}"
    );
    let (code, got) = patch(
        &sim,
        "/apis/coordination.k8s.io/v1/namespaces/virtbmc-system/leases/virtbmc-leader",
        CONTROLLER_TOKEN,
        MERGE_PATCH,
        json!({"spec": {"holderIdentity": "controller-1"}}),
    )
    .await;
    // RBAC gives the controller update on the Lease (what its election sends), not patch.
    assert_eq!(code, 403, "{got}");
    let mut lease = sim
        .get(Kind::Lease, "virtbmc-system", "virtbmc-leader")
        .unwrap();
    lease["spec"]["holderIdentity"] = json!("controller-1");
    let (code, got) = send(
        &sim,
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/virtbmc-system/leases/virtbmc-leader",
        CONTROLLER_TOKEN,
        Some(("application/json", lease)),
    )
    .await;
    assert_eq!(code, 200, "{got}");
}
