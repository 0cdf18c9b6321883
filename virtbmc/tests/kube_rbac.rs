//! The shipped RBAC manifests against the agent's whole job: kubesim enforces them on the
//! agent's ServiceAccount token as the apiserver would, the agent does everything it does
//! (serve, power, boot overrides, Events, Services and EndpointSlices, the Lease, deletion),
//! and then every grant of the manifest must have allowed some request and no request of
//! the agent may have been refused. Plus what the identity must not be able to do.

mod kube_support;

use kube_support::*;
use kubesim::Kind;
use serde_json::{Value, json};

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

/// Until the agent's requests have used this grant (e.g. the Lease's renewal, on its timer).
async fn until_used(sim: &kubesim::Handle, grant: &str) {
    until(grant, || {
        sim.used_grants(AGENT_USER)
            .iter()
            .any(|g| g.to_string().contains(grant))
    })
    .await;
}

/// Fails listing every grant of the enforced manifest that no request of the agent used.
fn assert_every_grant_used(sim: &kubesim::Handle) {
    let unused: Vec<String> = sim
        .unused_grants(AGENT_USER)
        .iter()
        .map(|g| g.to_string())
        .collect();
    let used: Vec<String> = sim
        .used_grants(AGENT_USER)
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert!(
        unused.is_empty(),
        "grants nothing used:\n  {}\nused:\n  {}",
        unused.join("\n  "),
        used.join("\n  ")
    );
    assert!(!used.is_empty(), "no request went through RBAC");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_rbac_is_exactly_what_the_agent_uses() {
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
    let agent = Agent::start(&sim, "agent-rbac", 31400..=31409).await;
    let port = agent.wait_served("default/vm1").await;
    let once = agent.wait_served("default/once").await;

    // Power on (virtualmachines/start), a one-shot PXE (VM read and patched, the BMC's
    // finalizer patched), a reset (restart) that restores the order, a power off (stop).
    until_login(port, "admin", "password").await;
    let out = admin(port, &["power", "on"]).await;
    assert!(out.ok, "{}", out.text);
    let uid = sim.wait_vmi_phase(NS, "vm1", "Running", T).await.unwrap();
    agent.wait_power("default/vm1", "on").await;
    let original = boot_orders(&sim, "vm1");
    let out = admin(port, &["chassis", "bootdev", "pxe"]).await;
    assert!(out.ok, "{}", out.text);
    assert_eq!(
        boot_orders(&sim, "vm1"),
        json!({"disks": [2], "interfaces": [1]})
    );
    until("the override visible to the engine", || {
        agent
            .backend
            .shared
            .view("default/vm1")
            .is_some_and(|v| v.boot.is_some())
    })
    .await;
    let out = admin(port, &["power", "reset"]).await;
    assert!(out.ok, "{}", out.text);
    until("the boot order restored after the next start", || {
        boot_orders(&sim, "vm1") == original && sim.vmi_uid(NS, "vm1").is_some_and(|u| u != uid)
    })
    .await;
    let out = admin(port, &["power", "off"]).await;
    assert!(out.ok, "{}", out.text);
    agent.wait_power("default/vm1", "off").await;

    // Refusals become an Event, then its count.
    sim.wait_vmi_phase(NS, "once", "Running", T).await.unwrap();
    agent.wait_power("default/once", "on").await;
    until_login(once, "admin", "password").await;
    refused_twice(&sim, once, "once").await;

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
    until_used(&sim, "update leases").await;

    assert_agent_never_refused(&sim);
    assert_every_grant_used(&sim);
}

/// The same for the label mode's manifest: VMs chosen by label, one Secret by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_label_mode_rbac_is_exactly_what_the_agent_uses() {
    use virtbmc::cluster::labeled::LabelMode;
    let sim = kubesim::Server::start_with(
        "127.0.0.1:0".parse().unwrap(),
        kubesim::Config {
            auth: Some(policy(&["label-mode/rbac.yaml"])),
            ..fast()
        },
    )
    .await
    .unwrap();
    for (vm, strategy) in [("web", "Halted"), ("once", "Once")] {
        sim.seed_vm(NS, vm, strategy);
        sim.merge_patch(
            Kind::VirtualMachine,
            NS,
            vm,
            json!({"metadata": {"labels": {"bmc.kubevirt.io/enabled": "true"}}}),
        )
        .unwrap();
    }
    sim.seed_secret(
        "virtbmc-system",
        "virtbmc-credentials",
        &[("username", "admin"), ("password", "password")],
    );
    agent_pod(&sim, "agent-pod", "10.0.0.1");
    let mut opts = virtbmc::cluster::ClusterOptions::new(
        "agent-label",
        "virtbmc-system",
        virtbmc::engine::config::BmcConfig::new(vec![]),
    );
    opts.port_range = 31410..=31419;
    opts.labels = Some(
        LabelMode::new(
            "bmc.kubevirt.io/enabled=true",
            "virtbmc-system/virtbmc-credentials",
        )
        .unwrap(),
    );
    let agent = Agent::start_with(&sim, opts, std::net::Ipv4Addr::LOCALHOST).await;
    let port = agent.wait_served("default/web").await;
    let once = agent.wait_served("default/once").await;

    until_login(port, "admin", "password").await;
    let out = admin(port, &["power", "on"]).await;
    assert!(out.ok, "{}", out.text);
    let uid = sim.wait_vmi_phase(NS, "web", "Running", T).await.unwrap();
    agent.wait_power("default/web", "on").await;
    let original = boot_orders(&sim, "web");
    let out = admin(port, &["chassis", "bootdev", "pxe"]).await;
    assert!(out.ok, "{}", out.text);
    until("the override visible to the engine", || {
        agent
            .backend
            .shared
            .view("default/web")
            .is_some_and(|v| v.boot.is_some())
    })
    .await;
    let out = admin(port, &["power", "reset"]).await;
    assert!(out.ok, "{}", out.text);
    until("the boot order restored after the next start", || {
        boot_orders(&sim, "web") == original && sim.vmi_uid(NS, "web").is_some_and(|u| u != uid)
    })
    .await;
    let out = admin(port, &["power", "off"]).await;
    assert!(out.ok, "{}", out.text);
    agent.wait_power("default/web", "off").await;

    sim.wait_vmi_phase(NS, "once", "Running", T).await.unwrap();
    agent.wait_power("default/once", "on").await;
    until_login(once, "admin", "password").await;
    refused_twice(&sim, once, "once").await;

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
    until_used(&sim, "update leases").await;

    assert_agent_never_refused(&sim);
    assert_every_grant_used(&sim);
}

/// One HTTP/1.0 request with `Authorization: Bearer TOKEN`: the code and the JSON body.
async fn request(sim: &kubesim::Handle, method: &str, path: &str, token: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    conn.write_all(
        format!("{method} {path} HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
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
    let sim = kubesim::Server::start_with(
        "127.0.0.1:0".parse().unwrap(),
        kubesim::Config {
            auth: Some(policy(&["label-mode/rbac.yaml"])),
            ..fast()
        },
    )
    .await
    .unwrap();
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
