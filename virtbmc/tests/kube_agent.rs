//! The cluster backend against kubesim, driven by the real ipmitool (lanplus): ports and
//! Services, power per runStrategy, boot devices, credentials, deletion, watch drops and
//! expiry, API errors. Each test has its own kubesim and its own port range.

mod kube_support;

use std::time::Duration;

use kube_support::*;
use kubesim::{Fault, Kind};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_waits_for_every_cache_and_the_bmc_sockets() {
    let sim = sim().await;
    seed(&sim, "vm1", "Halted");
    // A first agent gives the BMC its port; the one under test starts as after a restart,
    // with a BMC to bind as soon as its caches know it.
    let first = Agent::start(&sim, "agent-q", 31300..=31309).await;
    let port = first.wait_served("default/vm1").await;
    drop(first);
    // Someone else holds the BMC's port for a while: the caches sync, the bind fails.
    let until_free = tokio::time::Instant::now() + T;
    let squatter = loop {
        match std::net::UdpSocket::bind(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => assert!(tokio::time::Instant::now() < until_free, "{port}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The Secrets' first list answers late, the VMIs' first fails: until both caches hold a
    // full list the agent must not take traffic.
    sim.inject(
        Fault::on("GET", "/api/v1/secrets?")
            .delay(Duration::from_secs(2))
            .times(1),
    );
    sim.inject(
        Fault::on("GET", "/virtualmachineinstances?")
            .status(500)
            .times(1),
    );
    let mut agent = Agent::start(&sim, "agent-r", 31300..=31309).await;
    let addr = agent.serve_admin().await;
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!(code, 503, "ready before any cache synced: {body}");
    assert!(
        body.starts_with("caches not synced:") && body.contains("secrets"),
        "{body}"
    );
    assert!(agent.registry.is_empty(), "a BMC bound before its caches");
    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!(
        (code, body.as_str()),
        (200, "ok\n"),
        "alive while not ready"
    );

    // Every cache synced, the BMC known but its socket not bound: still not ready.
    let mut reasons = std::collections::BTreeSet::new();
    let end = tokio::time::Instant::now() + T;
    loop {
        let (code, body) = http_get(addr, "/readyz").await;
        assert_eq!(code, 503, "ready without the BMC's socket: {body}");
        if body == "BMC sockets not bound yet\n" {
            break;
        }
        reasons.insert(body);
        assert!(
            tokio::time::Instant::now() < end,
            "caches never synced: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reasons.iter().any(|r| r.contains("secrets")),
        "the slow cache was never named: {reasons:?}"
    );
    assert!(agent.port_of("default/vm1").is_none());

    // The port comes free; the next bind attempt makes the agent ready.
    drop(squatter);
    let end = tokio::time::Instant::now() + T;
    loop {
        let (code, body) = http_get(addr, "/readyz").await;
        if code == 200 {
            assert_eq!(body, "ok\n");
            assert_eq!(
                agent.port_of("default/vm1"),
                Some(port),
                "ready without the BMC's socket"
            );
            break;
        }
        assert_eq!((code, body.as_str()), (503, "BMC sockets not bound yet\n"));
        assert!(tokio::time::Instant::now() < end, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_login(port, "admin", "password").await;
    let (code, _) = http_get(addr, "/readyz").await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmbmc_gets_a_port_and_service_power_on_starts_the_vm_password_change_and_delete() {
    let sim = sim().await;
    seed(&sim, "vm1", "Halted");
    let agent = Agent::start(&sim, "agent-a", 31000..=31009).await;
    let port = agent.wait_served("default/vm1").await;
    assert_eq!(port, 31000, "lowest free port of the range");
    until("Service and Ready condition", || {
        let svc = sim.get(Kind::Service, NS, "vm1-virtbmc");
        let b = vmbmc(&sim, "vm1").unwrap();
        svc.is_some_and(|s| {
            s["spec"]["ports"][0]["targetPort"] == json!(port)
                && s["spec"]["ports"][0]["port"] == 623
                && s["spec"]["ports"][0]["protocol"] == "UDP"
                && s["spec"]["ports"][1]["targetPort"] == json!(port)
                && s["spec"]["ports"][1]["port"] == 443
                && s["spec"]["ports"][1]["protocol"] == "TCP"
        }) && condition(&b, "Ready").as_deref() == Some("True")
            && condition(&b, "VirtualMachineAvailable").as_deref() == Some("True")
            && condition(&b, "SecretAvailable").as_deref() == Some("True")
            && b["status"]["clusterIP"].is_string()
    })
    .await;

    let out = ipmitool_on("lan", port, "admin", "password", &["power", "status"]).await;
    assert!(
        out.ok && out.text.contains("Chassis Power is off"),
        "IPMI 1.5: {}",
        out.text
    );
    let out = admin(port, &["power", "status"]).await;
    assert!(
        out.ok && out.text.contains("Chassis Power is off"),
        "{}",
        out.text
    );
    let out = admin(port, &["power", "on"]).await;
    assert!(out.ok, "{}", out.text);
    assert!(
        sim.wait_vmi_phase(NS, "vm1", "Running", T).await.is_some(),
        "VMI never Running"
    );
    agent.wait_power("default/vm1", "on").await;
    let out = admin(port, &["power", "status"]).await;
    assert!(out.text.contains("Chassis Power is on"), "{}", out.text);
    // Redfish on the same port number over TCP (the Service's 443) reads the same state.
    let system = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sk", "--max-time", "10", "-u", "admin:password"])
            .arg(format!("https://127.0.0.1:{port}/redfish/v1/Systems/1"))
            .output()
            .expect("curl")
    })
    .await
    .unwrap();
    let system: serde_json::Value =
        serde_json::from_slice(&system.stdout).expect("a Redfish System");
    assert_eq!(system["PowerState"], "On", "{system}");
    // The size the VM's spec declares: 1 core, 128Mi of guest memory.
    assert_eq!(system["ProcessorSummary"]["Count"], 1, "{system}");
    assert_eq!(
        system["MemorySummary"]["TotalSystemMemoryGiB"], 0.125,
        "{system}"
    );
    // A physical BMC asked for the state it is in says yes.
    let out = admin(port, &["power", "on"]).await;
    assert!(out.ok, "{}", out.text);
    // The GUID is the firmware uuid in IPMI's byte order. (ipmitool guesses the encoding
    // from the version nibble of both readings, so for some random uuids it prints the
    // RFC 4122 reading: compare bytes, and the text only when it says IPMI encoding.)
    let uuid = sim.get(Kind::VirtualMachine, NS, "vm1").unwrap()["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"].as_str().unwrap().to_string();
    let want =
        virtbmc::engine::vm::uuid_to_wire(virtbmc::cluster::view::parse_uuid(&uuid).unwrap());
    assert_eq!(agent.backend.shared.view("default/vm1").unwrap().guid, want);
    let out = admin(port, &["mc", "guid"]).await;
    assert!(out.ok, "{}", out.text);
    if out.text.contains("GUID Encoding : IPMI") {
        assert!(
            out.text.to_lowercase().contains(&uuid),
            "GUID is the firmware uuid {uuid}: {}",
            out.text
        );
    }

    // A changed password applies to the next session, and ends the sessions opened with
    // the old one (IPMI 1.5 and RMCP+ alike) at once.
    rotation_ends_open_sessions(&sim, port).await;

    // A second VirtualMachineBMC for the same VM: the older keeps the VM, its Service and
    // its port; the newer says why it is not ready, and nobody fights over the Service.
    sim.create(
        Kind::VirtualMachineBmc,
        NS,
        json!({"apiVersion": "bmc.kubevirt.io/v1beta1", "kind": "VirtualMachineBMC", "metadata": {"name": "vm1-again"},
               "spec": {"virtualMachineRef": {"name": "vm1"}, "authSecretRef": {"name": "vm1-auth"}}}),
    )
    .unwrap();
    until("duplicate reported", || {
        sim.get(Kind::VirtualMachineBmc, NS, "vm1-again")
            .is_some_and(|b| {
                b["status"]["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["reason"] == "DuplicateVirtualMachineRef")
                })
            })
    })
    .await;
    sim.clear_requests();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let writes = sim
        .requests()
        .iter()
        .filter(|r| {
            let r = format!("{r:?}");
            r.contains("services") && !r.contains("GET")
        })
        .count();
    assert_eq!(writes, 0, "no Service writes in steady state");
    let status_writes = sim
        .requests()
        .iter()
        .filter(|r| {
            let r = format!("{r:?}");
            r.contains("virtualmachinebmcs") && !r.contains("GET")
        })
        .count();
    assert_eq!(status_writes, 0, "no status writes in steady state");
    assert_eq!(
        sim.get(Kind::Service, NS, "vm1-virtbmc").unwrap()["spec"]["ports"][0]["targetPort"],
        json!(port)
    );
    assert_eq!(agent.port_of("default/vm1"), Some(port));
    assert_eq!(agent.registry.len(), 1);
    sim.delete(Kind::VirtualMachineBmc, NS, "vm1-again")
        .unwrap();

    // spec.ipmi.enabled=false turns the BMC off (no socket, no Service); the port is kept
    // for when it comes back.
    sim.merge_patch(
        Kind::VirtualMachineBmc,
        NS,
        "vm1-bmc",
        json!({"spec": {"ipmi": {"enabled": false}}}),
    )
    .unwrap();
    until("disabled", || {
        agent.port_of("default/vm1").is_none()
            && sim.get(Kind::Service, NS, "vm1-virtbmc").is_none()
            && vmbmc(&sim, "vm1")
                .is_some_and(|b| condition(&b, "Ready").as_deref() == Some("False"))
    })
    .await;
    sim.merge_patch(
        Kind::VirtualMachineBmc,
        NS,
        "vm1-bmc",
        json!({"spec": {"ipmi": {"enabled": true}}}),
    )
    .unwrap();
    assert_eq!(
        agent.wait_served("default/vm1").await,
        port,
        "same port after re-enabling"
    );
    until("Service back", || {
        sim.get(Kind::Service, NS, "vm1-virtbmc").is_some()
    })
    .await;

    // Deleting the VirtualMachineBMC removes its Service and its port.
    sim.delete(Kind::VirtualMachineBmc, NS, "vm1-bmc").unwrap();
    until("Service deleted and port freed", || {
        sim.get(Kind::Service, NS, "vm1-virtbmc").is_none()
            && agent.port_of("default/vm1").is_none()
    })
    .await;
    assert!(
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok(),
        "port {port} still bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secret_refuses_logins_and_says_why() {
    let sim = sim().await;
    sim.seed_vm(NS, "lonely", "Halted");
    sim.seed_vmbmc(NS, "lonely-bmc", "lonely", "nope");
    let agent = Agent::start(&sim, "agent-a", 31010..=31019).await;
    let port = agent.wait_served("default/lonely").await;
    until("SecretAvailable=False", || {
        vmbmc(&sim, "lonely")
            .and_then(|b| condition(&b, "SecretAvailable"))
            .as_deref()
            == Some("False")
    })
    .await;
    let out = admin(port, &["power", "status"]).await;
    assert!(
        !out.ok,
        "a BMC without a Secret let someone in: {}",
        out.text
    );
    // The Secret appears: logins work.
    sim.seed_secret(
        NS,
        "nope",
        &[("username", "admin"), ("password", "password")],
    );
    let end = tokio::time::Instant::now() + T;
    while !admin(port, &["power", "status"]).await.ok {
        assert!(tokio::time::Instant::now() < end, "Secret never taken up");
    }
}

/// power reset / cycle / off / soft for Always, Manual and RerunOnFailure: the VMI is replaced
/// (new uid) or gone. Manual's BMC is driven over IPMI 1.5, the others over RMCP+.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_off_reset_cycle_per_run_strategy() {
    let sim = sim().await;
    seed(&sim, "always", "Always");
    seed(&sim, "manual", "Manual");
    seed(&sim, "rerun", "RerunOnFailure");
    let agent = Agent::start(&sim, "agent-a", 31020..=31029).await;
    for vm in ["always", "manual", "rerun"] {
        let name = format!("default/{vm}");
        let port = agent.wait_served(&name).await;
        // IPMI 1.5 (-I lan) for one VM, RMCP+ for the others: both drive KubeVirt alike.
        let iface = if vm == "manual" { "lan" } else { "lanplus" };
        if vm == "manual" {
            // Manual starts nothing by itself.
            agent.wait_power(&name, "off").await;
            assert!(
                ipmitool_on(iface, port, "admin", "password", &["power", "on"])
                    .await
                    .ok
            );
        }
        let uid = sim
            .wait_vmi_phase(NS, vm, "Running", T)
            .await
            .expect("running");
        agent.wait_power(&name, "on").await;

        let out = ipmitool_on(iface, port, "admin", "password", &["power", "reset"]).await;
        assert!(out.ok, "{vm} reset: {}", out.text);
        until("a new VMI after reset", || {
            sim.vmi_uid(NS, vm).is_some_and(|u| u != uid)
                && sim.vmi_phase(NS, vm).as_deref() == Some("Running")
        })
        .await;
        let uid = sim.vmi_uid(NS, vm).unwrap();
        agent.wait_power(&name, "on").await;

        let out = ipmitool_on(iface, port, "admin", "password", &["power", "cycle"]).await;
        assert!(out.ok, "{vm} cycle: {}", out.text);
        until("a new VMI after cycle", || {
            sim.vmi_uid(NS, vm).is_some_and(|u| u != uid)
                && sim.vmi_phase(NS, vm).as_deref() == Some("Running")
        })
        .await;
        agent.wait_power(&name, "on").await;

        let out = ipmitool_on(iface, port, "admin", "password", &["power", "off"]).await;
        assert!(out.ok, "{vm} off: {}", out.text);
        until("VMI gone after off", || sim.vmi_phase(NS, vm).is_none()).await;
        agent.wait_power(&name, "off").await;
        let rs = sim.get(Kind::VirtualMachine, NS, vm).unwrap()["spec"]["runStrategy"].clone();
        assert_eq!(
            rs,
            match vm {
                "always" => "Halted",
                "manual" => "Manual",
                _ => "RerunOnFailure",
            },
            "{vm} runStrategy after stop"
        );
        let out = ipmitool_on(iface, port, "admin", "password", &["power", "off"]).await;
        assert!(out.ok, "{vm} off when off: {}", out.text);
        let out = ipmitool_on(iface, port, "admin", "password", &["power", "cycle"]).await;
        assert!(!out.ok, "{vm} cycle when off must be refused: {}", out.text);
        let out = ipmitool_on(iface, port, "admin", "password", &["power", "on"]).await;
        assert!(out.ok, "{vm} on again: {}", out.text);
        assert!(sim.wait_vmi_phase(NS, vm, "Running", T).await.is_some());
        agent.wait_power(&name, "on").await;
        let out = ipmitool_on(iface, port, "admin", "password", &["power", "soft"]).await;
        assert!(out.ok, "{vm} soft: {}", out.text);
        until("VMI gone after soft", || sim.vmi_phase(NS, vm).is_none()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootdev_pxe_patches_boot_orders_and_a_one_shot_is_restored_after_the_next_start() {
    let sim = sim().await;
    seed(&sim, "web", "Always");
    let agent = Agent::start(&sim, "agent-a", 31030..=31039).await;
    let port = agent.wait_served("default/web").await;
    let uid = sim.wait_vmi_phase(NS, "web", "Running", T).await.unwrap();
    agent.wait_power("default/web", "on").await;
    let original = boot_orders(&sim, "web");
    assert_eq!(original, json!({"disks": [1], "interfaces": [null]}));

    // A concurrent edit of the devices (422 on the guarded patch) is re-read and retried.
    sim.inject(
        Fault::on("PATCH", "/virtualmachines/web?")
            .status(422)
            .times(1),
    );
    sim.clear_requests();
    let out = admin(port, &["chassis", "bootdev", "pxe"]).await;
    assert!(out.ok, "{}", out.text);
    let patches = sim
        .requests()
        .iter()
        .filter(|r| {
            format!("{r:?}").contains("PATCH") && format!("{r:?}").contains("/virtualmachines/web?")
        })
        .count();
    assert_eq!(patches, 2, "one 422, one retry");
    assert_eq!(
        boot_orders(&sim, "web"),
        json!({"disks": [2], "interfaces": [1]})
    );
    let rec = vmbmc(&sim, "web").unwrap()["status"]["bootOverride"].clone();
    assert_eq!(
        (
            rec["mode"].as_str(),
            rec["device"].as_str(),
            rec["vmiUID"].as_str()
        ),
        (Some("Oneshot"), Some("pxe"), Some(uid.as_str()))
    );
    until("override visible to the engine", || {
        agent
            .backend
            .shared
            .view("default/web")
            .is_some_and(|v| v.boot.is_some())
    })
    .await;
    let out = admin(port, &["chassis", "bootparam", "get", "5"]).await;
    assert!(out.text.contains("PXE"), "{}", out.text);

    // The running VMI is not the one that boots with it; the next start is, and then the
    // original order comes back.
    let out = admin(port, &["power", "reset"]).await;
    assert!(out.ok, "{}", out.text);
    until("restored after the next start", || {
        boot_orders(&sim, "web") == original
            && vmbmc(&sim, "web").unwrap()["status"]["bootOverride"].is_null()
            && sim.vmi_uid(NS, "web").is_some_and(|u| u != uid)
    })
    .await;

    // A class the VM lacks is refused, and nothing is wiped.
    // (ipmitool exits 0 when Set Boot Options fails; its text says which completion code.)
    let out = admin(port, &["chassis", "bootdev", "cdrom"]).await;
    assert!(
        out.text.contains("not supported in present state"),
        "cdrom on a VM without one: 0xD5 expected: {}",
        out.text
    );
    assert_eq!(boot_orders(&sim, "web"), original);
    until("IPMIBootDeviceRefused event", || {
        sim.list(Kind::Event, Some(NS)).iter().any(|e| {
            e["reason"] == "IPMIBootDeviceRefused"
                && e["involvedObject"]["name"] == "web"
                && e["message"].as_str().is_some_and(|m| m.contains("cdrom"))
        })
    })
    .await;
    let out = admin(port, &["chassis", "bootdev", "bios"]).await;
    assert!(out.text.contains("failed"), "BIOS setup: {}", out.text);

    // Persistent with EFI: kept across a restart, firmware switched.
    let out = admin(
        port,
        &["chassis", "bootdev", "pxe", "options=persistent,efiboot"],
    )
    .await;
    assert!(out.ok, "{}", out.text);
    let vm = sim.get(Kind::VirtualMachine, NS, "web").unwrap();
    assert!(
        vm["spec"]["template"]["spec"]["domain"]["firmware"]["bootloader"]["efi"].is_object(),
        "{vm}"
    );
    let uid = sim.vmi_uid(NS, "web").unwrap();
    assert!(admin(port, &["power", "reset"]).await.ok);
    until("restarted", || {
        sim.vmi_uid(NS, "web").is_some_and(|u| u != uid)
            && sim.vmi_phase(NS, "web").as_deref() == Some("Running")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        boot_orders(&sim, "web"),
        json!({"disks": [2], "interfaces": [1]})
    );
    assert_eq!(
        vmbmc(&sim, "web").unwrap()["status"]["bootOverride"]["mode"],
        "Persistent"
    );

    // Clearing the override (bootdev none) drops the record.
    let out = admin(port, &["chassis", "bootdev", "none"]).await;
    assert!(out.ok, "{}", out.text);
    until("record cleared", || {
        vmbmc(&sim, "web").unwrap()["status"]["bootOverride"].is_null()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_drops_and_expiry_lose_no_update() {
    let sim = sim().await;
    seed(&sim, "a", "Halted");
    let agent = Agent::start(&sim, "agent-a", 31040..=31049).await;
    let port_a = agent.wait_served("default/a").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Cut every watch, then change things while the agent re-watches.
    sim.drop_watches();
    let data = json!({"data": {"password": serde_json::to_value(k8s_openapi::ByteString(b"after-drop".to_vec())).unwrap()}});
    sim.merge_patch(Kind::Secret, NS, "a-auth", data).unwrap();
    seed(&sim, "b", "Halted");
    let port_b = agent.wait_served("default/b").await;
    let end = tokio::time::Instant::now() + T;
    while !ipmitool(port_a, "admin", "after-drop", &["power", "status"])
        .await
        .ok
    {
        assert!(
            tokio::time::Instant::now() < end,
            "password change lost across a watch drop"
        );
    }

    // Expire every watch (in-stream 410): the agent re-lists. A deletion during the gap
    // produces no DELETED event, only a missing object in the new list.
    sim.expire_watches();
    sim.delete(Kind::VirtualMachineBmc, NS, "a-bmc").unwrap();
    seed(&sim, "c", "Halted");
    let port_c = agent.wait_served("default/c").await;
    until("a removed after expiry", || {
        agent.port_of("default/a").is_none()
    })
    .await;
    assert!(port_c != port_b);
    until_login(port_b, "admin", "password").await;
    until_login(port_c, "admin", "password").await;
    let requests = sim.requests();
    let relists = requests
        .iter()
        .filter(|r| format!("{r:?}").contains("virtualmachinebmcs?&limit=500"))
        .count();
    assert!(
        relists >= 2,
        "expiry must cause a re-list of VirtualMachineBMCs ({relists})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_reach_the_client_and_become_events() {
    let sim = sim().await;
    seed(&sim, "vm1", "Halted");
    seed(&sim, "once", "Once");
    let agent = Agent::start(&sim, "agent-a", 31050..=31059).await;
    let port = agent.wait_served("default/vm1").await;
    sim.inject(
        Fault::on("PUT", "/virtualmachines/vm1/start")
            .status(500)
            .times(10),
    );
    let out = admin(port, &["power", "on"]).await;
    assert!(
        !out.ok,
        "a 500 on start must fail the command: {}",
        out.text
    );
    until("IPMIActionFailed event", || {
        sim.list(Kind::Event, Some(NS)).iter().any(|e| {
            e["reason"] == "IPMIActionFailed"
                && e["involvedObject"]["name"] == "vm1"
                && e["involvedObject"]["kind"] == "VirtualMachine"
        })
    })
    .await;
    sim.clear_faults();
    assert!(sim.vmi_phase(NS, "vm1").is_none(), "nothing started");
    let m = &agent.backend.shared.metrics;
    assert!(
        m.kube_call_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // The VM is gone (404): a failure, an Event, and the condition says so.
    sim.delete(Kind::VirtualMachine, NS, "vm1").unwrap();
    until("VirtualMachineAvailable=False", || {
        vmbmc(&sim, "vm1")
            .and_then(|b| condition(&b, "VirtualMachineAvailable"))
            .as_deref()
            == Some("False")
    })
    .await;
    let out = admin(port, &["power", "on"]).await;
    assert!(!out.ok, "power on of a deleted VM: {}", out.text);
    until("two IPMIActionFailed events", || {
        sim.list(Kind::Event, Some(NS))
            .iter()
            .filter(|e| e["reason"] == "IPMIActionFailed" && e["involvedObject"]["name"] == "vm1")
            .count()
            >= 2
    })
    .await;

    // An API server that does not answer: 0xC3 to the client and an Event.
    let port = agent.wait_served("default/once").await;
    sim.inject(
        Fault::on("PUT", "/virtualmachines/once/stop")
            .hang()
            .times(10),
    );
    sim.wait_vmi_phase(NS, "once", "Running", T).await.unwrap();
    agent.wait_power("default/once", "on").await;
    let out = admin(port, &["power", "off"]).await;
    assert!(!out.ok, "a hung stop must fail the command: {}", out.text);
    until("IPMIActionTimeout event", || {
        sim.list(Kind::Event, Some(NS))
            .iter()
            .any(|e| e["reason"] == "IPMIActionTimeout" && e["involvedObject"]["name"] == "once")
    })
    .await;
    sim.clear_faults();

    // KubeVirt refuses a restart under runStrategy Once: 0xD5 and an Event.
    let port = agent.wait_served("default/once").await;
    sim.wait_vmi_phase(NS, "once", "Running", T).await.unwrap();
    agent.wait_power("default/once", "on").await;
    let out = admin(port, &["power", "reset"]).await;
    assert!(!out.ok, "{}", out.text);
    until("IPMIActionRefused event", || {
        sim.list(Kind::Event, Some(NS))
            .iter()
            .any(|e| e["reason"] == "IPMIActionRefused" && e["involvedObject"]["name"] == "once")
    })
    .await;
}

/// The Events on `vm` with this reason.
fn events_of(sim: &kubesim::Handle, vm: &str, reason: &str) -> Vec<serde_json::Value> {
    sim.list(Kind::Event, Some(NS))
        .into_iter()
        .filter(|e| e["reason"] == reason && e["involvedObject"]["name"] == vm)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refusals_aggregate_into_one_event_per_reason() {
    const RESETS: i64 = 4;
    let sim = sim().await;
    seed(&sim, "once", "Once");
    let agent = Agent::start(&sim, "agent-a", 31170..=31179).await;
    let port = agent.wait_served("default/once").await;
    sim.wait_vmi_phase(NS, "once", "Running", T).await.unwrap();
    agent.wait_power("default/once", "on").await;
    // An ipmitool retry loop against a VM KubeVirt keeps refusing: one Event, counted.
    for _ in 0..RESETS {
        let out = admin(port, &["power", "reset"]).await;
        assert!(!out.ok, "a restart under Once is refused: {}", out.text);
    }
    until("one IPMIActionRefused event counting every reset", || {
        let evs = events_of(&sim, "once", "IPMIActionRefused");
        evs.len() == 1 && evs[0]["count"] == RESETS
    })
    .await;
    // Another reason is another Event, with its own count.
    for _ in 0..2 {
        let out = admin(port, &["chassis", "bootdev", "bios"]).await;
        assert!(out.text.contains("failed"), "BIOS setup: {}", out.text);
    }
    until("one IPMIBootDeviceRefused event counting both", || {
        let evs = events_of(&sim, "once", "IPMIBootDeviceRefused");
        evs.len() == 1 && evs[0]["count"] == 2
    })
    .await;
    let evs = events_of(&sim, "once", "IPMIActionRefused");
    assert_eq!(evs.len(), 1, "{evs:?}");
    let ev = &evs[0];
    assert_eq!(ev["count"], RESETS, "{ev}");
    assert_eq!(ev["type"], "Warning");
    assert!(
        ev["lastTimestamp"].as_str() >= ev["firstTimestamp"].as_str(),
        "{ev}"
    );
    let m = &agent.backend.shared.metrics;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&m.events_created), 2);
    assert_eq!(load(&m.events_aggregated), RESETS as u64 - 1 + 1);
    assert_eq!(load(&m.events_dropped), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_survive_an_agent_restart() {
    let sim = sim().await;
    for vm in ["p1", "p2", "p3"] {
        seed(&sim, vm, "Halted");
    }
    let a = Agent::start(&sim, "agent-a", 31060..=31069).await;
    let mut before = Vec::new();
    for vm in ["p1", "p2", "p3"] {
        before.push(a.wait_served(&format!("default/{vm}")).await);
    }
    a.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new agent (new identity: it takes the Lease once the old holder's has run out).
    let b = Agent::start(&sim, "agent-b", 31060..=31069).await;
    let mut after = Vec::new();
    for vm in ["p1", "p2", "p3"] {
        after.push(b.wait_served(&format!("default/{vm}")).await);
    }
    assert_eq!(before, after);
    until("agent-b leads", || b.backend.shared.is_leader()).await;
    seed(&sim, "p4", "Halted");
    let p4 = b.wait_served("default/p4").await;
    assert!(!before.contains(&p4));
    until_login(p4, "admin", "password").await;
    let lease = sim
        .get(Kind::Lease, "virtbmc-system", "virtbmc-leader")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "agent-b");
}

/// Two agents (two "nodes"): both serve every BMC, one leads; when it goes, the other takes
/// the Lease once it has not been renewed for a lease duration, and allocates from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_serve_everything_and_the_lease_moves_when_the_leader_goes() {
    use std::net::Ipv4Addr;
    let sim = sim().await;
    seed(&sim, "n1", "Halted");
    let a = Agent::start_on(&sim, "node-a", 31080..=31089, Ipv4Addr::new(127, 0, 0, 1)).await;
    until("node-a leads", || a.backend.shared.is_leader()).await;
    let b = Agent::start_on(&sim, "node-b", 31080..=31089, Ipv4Addr::new(127, 0, 0, 2)).await;
    let port = a.wait_served("default/n1").await;
    assert_eq!(
        b.wait_served("default/n1").await,
        port,
        "every agent serves every VM on one port"
    );
    let out = ipmitool_at("127.0.0.2", port, &["power", "status"]).await;
    assert!(out.ok, "{}", out.text);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!b.backend.shared.is_leader(), "one leader at a time");

    a.stop();
    until("node-b leads", || b.backend.shared.is_leader()).await;
    let lease = sim
        .get(Kind::Lease, "virtbmc-system", "virtbmc-leader")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "node-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    seed(&sim, "n2", "Halted");
    let p2 = b.wait_served("default/n2").await;
    assert_ne!(p2, port);
    until("Service for n2", || {
        sim.get(Kind::Service, NS, "n2-virtbmc").is_some()
    })
    .await;
}

/// In a cluster the API server is HTTPS: building the TLS client must not panic for want of
/// a rustls crypto provider (kube's `ring` feature provides one).
#[tokio::test]
async fn an_https_client_builds_and_fails_cleanly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut kc = kube::Config::new(format!("https://127.0.0.1:{port}").parse().unwrap());
    kc.default_retry = false;
    let client = kube::Client::try_from(kc).expect("TLS client");
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, "default");
    assert!(api.get_opt("x").await.is_err());
}

/// A child process, killed if the test ends before it was stopped.
struct Child(Option<std::process::Child>);

impl Child {
    /// SIGTERM, then its exit status.
    async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().expect("running");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The binary itself, as the Deployment and the DaemonSet run it: `virtbmc --kube --role
/// controller` and `virtbmc --kube --role agent` (no --user), two processes with their own
/// ServiceAccount tokens, serve the cluster's BMCs between them and stop cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_in_cluster_mode() {
    let sim = sim().await;
    seed(&sim, "bin", "Halted");
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    // As in a pod: the ServiceAccount's token, and its namespace as the client's default.
    let (agent_config, controller_config) = (
        agent_kubeconfig(&sim),
        kubeconfig_as(&sim, CONTROLLER_TOKEN),
    );
    let start = |kubeconfig: &KubeconfigFile, role: &str, identity: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_virtbmc"))
            .env("KUBECONFIG", &kubeconfig.0)
            .env_remove("POD_NAMESPACE")
            .args(["--kube", "--role", role, "--listen", "127.0.0.1"])
            .args(["--port-range", "31090-31099"])
            .args(["--admin", &format!("127.0.0.1:{}", free_port())])
            .args(["--identity", identity])
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(|c| Child(Some(c)))
            .unwrap()
    };
    let mut controller = start(&controller_config, "controller", "bin-controller");
    let mut agent = start(&agent_config, "agent", "bin-agent");
    until("port allocated", || {
        vmbmc(&sim, "bin").is_some_and(|b| b["status"]["port"] == 31090)
    })
    .await;
    until_login(31090, "admin", "password").await;
    let out = admin(31090, &["power", "on"]).await;
    assert!(out.ok, "{}", out.text);
    assert!(sim.wait_vmi_phase(NS, "bin", "Running", T).await.is_some());
    let lease = sim
        .get(Kind::Lease, "virtbmc-system", "virtbmc-leader")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "bin-controller", "{lease}");
    for (what, child) in [("agent", &mut agent), ("controller", &mut controller)] {
        let status = child.terminate().await;
        assert!(status.success(), "{what}: {status}");
    }
    assert_agent_never_refused(&sim);
    let lease = sim
        .get(Kind::Lease, "virtbmc-system", "virtbmc-leader")
        .unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released on shutdown: {lease}"
    );
    // Refused: --user with --kube, a role that does not exist, and a fast path for a
    // controller, which serves no BMC.
    for bad in [
        &["--user", "a:b"][..],
        &["--role", "leader"],
        &["--role", "controller", "--xdp-iface", "lo"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_virtbmc"))
            .args(["--kube-url", &sim.url()])
            .args(bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad:?}");
    }
}

/// An agent pod of the DaemonSet, scheduled on `node`, with its kubelet-written status.
fn agent_pod(sim: &kubesim::Handle, ns: &str, name: &str, labels: serde_json::Value) {
    sim.create(
        Kind::Pod,
        ns,
        json!({"metadata": {"name": name, "labels": labels},
               "spec": {"nodeName": format!("node-{name}"), "containers": [{"name": "virtbmc", "image": "virtbmc:latest"}]}}),
    )
    .unwrap();
}

/// What a kubelet writes: phase Running, the pod IPs and the Ready condition.
fn pod_status(sim: &kubesim::Handle, name: &str, ips: &[&str], ready: bool) {
    let ips: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    sim.set_status(
        Kind::Pod,
        "virtbmc-system",
        name,
        json!({"phase": "Running", "podIP": ips[0]["ip"], "podIPs": ips,
               "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}),
    )
    .unwrap();
}

/// Each endpoint of a slice as "address ready|not-ready|terminating node".
fn slice_endpoints(slice: &serde_json::Value) -> Vec<String> {
    slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let c = &e["conditions"];
            let state = match (c["ready"] == true, c["terminating"] == true) {
                (true, _) => "ready",
                (false, true) => "terminating",
                (false, false) => "not-ready",
            };
            format!(
                "{} {state} {}",
                e["addresses"][0].as_str().unwrap_or(""),
                e["nodeName"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Until the slice `name` of the default namespace has exactly these endpoints.
async fn until_slice(sim: &kubesim::Handle, name: &str, want: &[&str]) {
    until(&format!("{name} with {want:?}"), || {
        sim.get(Kind::EndpointSlice, NS, name)
            .is_some_and(|s| slice_endpoints(&s) == want)
    })
    .await;
}

/// The selectorless Service routes to the agent pods through EndpointSlices the leader writes:
/// every agent pod of the agent namespace (and only those) on the VM's port, readiness and
/// termination followed, an IPv6 slice while an agent has an IPv6 address, nothing rewritten
/// in steady state, and the slices gone with the VirtualMachineBMC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_route_each_service_to_the_agent_pods() {
    let sim = sim().await;
    let agent_label = json!({"app.kubernetes.io/name": "virtbmc"});
    for name in ["a", "b"] {
        agent_pod(&sim, "virtbmc-system", name, agent_label.clone());
    }
    pod_status(&sim, "a", &["10.0.0.1"], true);
    pod_status(&sim, "b", &["10.0.0.2"], true);
    // Neither another app's pod in the agent namespace nor an agent-labelled pod elsewhere.
    agent_pod(
        &sim,
        "virtbmc-system",
        "other",
        json!({"app.kubernetes.io/name": "other"}),
    );
    agent_pod(&sim, NS, "stray", agent_label);
    sim.set_status(
        Kind::Pod,
        "virtbmc-system",
        "other",
        json!({"phase": "Running", "podIP": "10.0.0.9", "podIPs": [{"ip": "10.0.0.9"}]}),
    );
    sim.set_status(
        Kind::Pod,
        NS,
        "stray",
        json!({"phase": "Running", "podIP": "10.0.0.8", "podIPs": [{"ip": "10.0.0.8"}]}),
    );
    seed(&sim, "vm1", "Halted");
    let agent = Agent::start(&sim, "agent-a", 31100..=31109).await;
    let port = agent.wait_served("default/vm1").await;
    let v4_name = "vm1-virtbmc-ipv4";
    let v4 = || sim.get(Kind::EndpointSlice, NS, v4_name);
    let v6 = || sim.get(Kind::EndpointSlice, NS, "vm1-virtbmc-ipv6");
    until_slice(
        &sim,
        v4_name,
        &["10.0.0.1 ready node-a", "10.0.0.2 ready node-b"],
    )
    .await;
    let s = v4().unwrap();
    assert_eq!(s["addressType"], "IPv4");
    assert_eq!(
        s["ports"],
        json!([
            {"name": "ipmi", "protocol": "UDP", "port": port},
            {"name": "redfish", "protocol": "TCP", "port": port}
        ])
    );
    let labels = &s["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/service-name"], "vm1-virtbmc");
    assert_eq!(labels["endpointslice.kubernetes.io/managed-by"], "virtbmc");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "virtbmc");
    assert_eq!(labels["bmc.kubevirt.io/virtualmachinebmc-name"], "vm1-bmc");
    let owner = &s["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "VirtualMachineBMC");
    assert_eq!(owner["uid"], vmbmc(&sim, "vm1").unwrap()["metadata"]["uid"]);
    assert_eq!(s["endpoints"][0]["targetRef"]["name"], "a");
    assert!(v6().is_none(), "no IPv6 slice without an IPv6 agent");

    // A pod that fails its readiness probe stays, not ready.
    pod_status(&sim, "b", &["10.0.0.2"], false);
    until_slice(
        &sim,
        v4_name,
        &["10.0.0.1 ready node-a", "10.0.0.2 not-ready node-b"],
    )
    .await;

    // Steady state writes nothing: neither the slice's own watch event nor another change
    // (a VM label: the leader reconciles everything) makes it write the same slice again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sim.clear_requests();
    sim.merge_patch(
        Kind::VirtualMachine,
        NS,
        "vm1",
        json!({"metadata": {"labels": {"touched": "yes"}}}),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let writes: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.uri.contains("endpointslices") && r.method != "GET")
        .collect();
    assert!(writes.is_empty(), "steady state wrote {writes:?}");

    // A dual-stack agent: an IPv6 slice while it lasts.
    pod_status(&sim, "a", &["10.0.0.1", "fd00::1"], true);
    until_slice(&sim, "vm1-virtbmc-ipv6", &["fd00::1 ready node-a"]).await;
    assert_eq!(v6().unwrap()["addressType"], "IPv6");
    pod_status(&sim, "a", &["10.0.0.1"], true);
    until("IPv6 slice deleted", || v6().is_none()).await;

    // A pod being deleted (graceful: it lingers) is terminating, not ready; once gone, it
    // leaves the slice.
    sim.delete(Kind::Pod, "virtbmc-system", "a").unwrap();
    until_slice(
        &sim,
        v4_name,
        &["10.0.0.1 terminating node-a", "10.0.0.2 not-ready node-b"],
    )
    .await;
    sim.store()
        .delete(
            Kind::Pod,
            "virtbmc-system",
            "a",
            &json!({"gracePeriodSeconds": 0}),
            false,
        )
        .unwrap();
    until_slice(&sim, v4_name, &["10.0.0.2 not-ready node-b"]).await;

    // Deleting the VirtualMachineBMC removes its Service and its slices.
    sim.delete(Kind::VirtualMachineBmc, NS, "vm1-bmc").unwrap();
    until("slices deleted", || {
        v4().is_none() && sim.get(Kind::Service, NS, "vm1-virtbmc").is_none()
    })
    .await;
    assert!(sim.list(Kind::EndpointSlice, None).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_mode_serves_selected_vms_without_the_crd() {
    use virtbmc::cluster::labeled::{BOOT_ANNOTATION, PORT_ANNOTATION, PORT_PROOF_ANNOTATION};
    // The label mode's own least-privilege manifest.
    let sim = label_mode_sim().await;
    // No CRD: any request for VirtualMachineBMCs would fail (and fail this test below).
    sim.inject(
        Fault::on("*", "virtualmachinebmcs")
            .status(404)
            .times(usize::MAX),
    );
    sim.seed_vm(NS, "web", "Always");
    sim.seed_vm(NS, "db", "Halted");
    sim.seed_vm(NS, "other", "Halted");
    for vm in ["web", "db"] {
        select_vm(&sim, vm);
    }
    sim.seed_secret(
        "virtbmc-system",
        "virtbmc-credentials",
        &[("username", "admin"), ("password", "password")],
    );
    // A Secret of the same name in the VMs' namespace is not the one.
    sim.seed_secret(
        NS,
        "virtbmc-credentials",
        &[("username", "admin"), ("password", "other")],
    );
    let opts = label_mode_options(
        "agent-l",
        "virtbmc-system/virtbmc-credentials",
        31120..=31129,
    );
    let agent = Agent::start_with(&sim, opts, std::net::Ipv4Addr::LOCALHOST).await;

    let web = agent.wait_served("default/web").await;
    let db = agent.wait_served("default/db").await;
    assert_ne!(web, db);
    assert_eq!(agent.port_of("default/other"), None, "not selected");
    // The port lives in the VM, the Service is owned by the VM.
    let annotation = |vm: &str, key: &str| {
        sim.get(Kind::VirtualMachine, NS, vm).unwrap()["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(annotation("web", PORT_ANNOTATION), Some(web.to_string()));
    until("Service owned by the VM", || {
        sim.get(Kind::Service, NS, "web-virtbmc").is_some_and(|s| {
            s["spec"]["ports"][0]["targetPort"] == web
                && s["metadata"]["ownerReferences"][0]["kind"] == "VirtualMachine"
                && s["metadata"]["ownerReferences"][0]["uid"]
                    == sim.get(Kind::VirtualMachine, NS, "web").unwrap()["metadata"]["uid"]
        })
    })
    .await;

    // The one Secret's user, from its own namespace.
    until_login(db, "admin", "password").await;
    assert!(
        !ipmitool(db, "admin", "other", &["power", "status"])
            .await
            .ok
    );
    let out = admin(db, &["power", "on"]).await;
    assert!(out.ok, "{}", out.text);
    sim.wait_vmi_phase(NS, "db", "Running", T).await.unwrap();
    agent.wait_power("default/db", "on").await;

    // A one-shot boot override is recorded in the VM and undone after the next start.
    let uid = sim.wait_vmi_phase(NS, "web", "Running", T).await.unwrap();
    agent.wait_power("default/web", "on").await;
    let original = boot_orders(&sim, "web");
    let out = admin(web, &["chassis", "bootdev", "pxe"]).await;
    assert!(out.ok, "{}", out.text);
    assert_eq!(
        boot_orders(&sim, "web"),
        json!({"disks": [2], "interfaces": [1]})
    );
    let rec: serde_json::Value =
        serde_json::from_str(&annotation("web", BOOT_ANNOTATION).expect("override recorded"))
            .unwrap();
    assert_eq!(
        (rec["mode"].as_str(), rec["device"].as_str()),
        (Some("Oneshot"), Some("pxe"))
    );
    until("override visible to the engine", || {
        agent
            .backend
            .shared
            .view("default/web")
            .is_some_and(|v| v.boot.is_some())
    })
    .await;
    let out = admin(web, &["power", "reset"]).await;
    assert!(out.ok, "{}", out.text);
    until("restored after the next start", || {
        boot_orders(&sim, "web") == original
            && annotation("web", BOOT_ANNOTATION).is_none()
            && sim.vmi_uid(NS, "web").is_some_and(|u| u != uid)
    })
    .await;
    // The port survives: the agent never moved it.
    assert_eq!(annotation("web", PORT_ANNOTATION), Some(web.to_string()));

    // The owner of another VM copies web's port and its proof onto their VM and selects it:
    // the proof is for web's uid, so their VM gets a port of its own and web keeps its.
    assert!(
        sim.get(Kind::Secret, "virtbmc-system", "virtbmc-port-key")
            .is_some(),
        "the first agent made the proofs' key"
    );
    let proof = annotation("web", PORT_PROOF_ANNOTATION).expect("web's port is proven");
    sim.merge_patch(
        Kind::VirtualMachine,
        NS,
        "other",
        json!({"metadata": {"annotations": {PORT_ANNOTATION: web.to_string(), PORT_PROOF_ANNOTATION: proof}}}),
    )
    .unwrap();
    select_vm(&sim, "other");
    let other = agent.wait_served("default/other").await;
    assert_ne!(other, web, "a copied port is not taken");
    until("the forged annotation replaced by the agent's own", || {
        annotation("other", PORT_ANNOTATION) == Some(other.to_string())
    })
    .await;
    assert_eq!(agent.port_of("default/web"), Some(web));

    // A changed password in the one Secret applies to every BMC's next session.
    let data = json!({"data": {"password": serde_json::to_value(k8s_openapi::ByteString(b"n3w-pass".to_vec())).unwrap()}});
    sim.merge_patch(Kind::Secret, "virtbmc-system", "virtbmc-credentials", data)
        .unwrap();
    until_login(web, "admin", "n3w-pass").await;
    until_login(db, "admin", "n3w-pass").await;

    // Unselected with a one-shot override pending: no BMC, no Service, the boot order back
    // and the VM's annotations gone (its port is free).
    let db_original = boot_orders(&sim, "db");
    let out = ipmitool(db, "admin", "n3w-pass", &["chassis", "bootdev", "pxe"]).await;
    assert!(out.ok, "{}", out.text);
    assert_ne!(boot_orders(&sim, "db"), db_original);
    assert!(annotation("db", BOOT_ANNOTATION).is_some());
    sim.merge_patch(
        Kind::VirtualMachine,
        NS,
        "db",
        json!({"metadata": {"labels": {"bmc.kubevirt.io/enabled": null}}}),
    )
    .unwrap();
    until("unselected VM no longer served", || {
        agent.port_of("default/db").is_none() && sim.get(Kind::Service, NS, "db-virtbmc").is_none()
    })
    .await;
    until(
        "unselected VM's boot order and annotations released",
        || {
            boot_orders(&sim, "db") == db_original
                && annotation("db", BOOT_ANNOTATION).is_none()
                && annotation("db", PORT_ANNOTATION).is_none()
                && annotation("db", PORT_PROOF_ANNOTATION).is_none()
        },
    )
    .await;
    assert!(agent.port_of("default/web").is_some());
    let crd_requests = sim
        .requests()
        .iter()
        .filter(|r| format!("{r:?}").contains("virtualmachinebmcs"))
        .count();
    assert_eq!(
        crd_requests, 0,
        "label mode never asks for VirtualMachineBMCs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_bmc_with_a_pending_one_shot_puts_the_boot_order_back() {
    use virtbmc::cluster::leader::FINALIZER;
    let sim = sim().await;
    seed(&sim, "web", "Always");
    let agent = Agent::start(&sim, "agent-f", 31130..=31139).await;
    let port = agent.wait_served("default/web").await;
    sim.wait_vmi_phase(NS, "web", "Running", T).await.unwrap();
    let original = boot_orders(&sim, "web");
    let has_finalizer = |b: &serde_json::Value| {
        b["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
    };

    // A one-shot override holds the VirtualMachineBMC until the order is back: after the
    // next start...
    let uid = sim.vmi_uid(NS, "web").unwrap();
    let out = admin(port, &["chassis", "bootdev", "pxe"]).await;
    assert!(out.ok, "{}", out.text);
    until("finalizer added", || {
        vmbmc(&sim, "web").is_some_and(|b| has_finalizer(&b))
    })
    .await;
    let out = admin(port, &["power", "reset"]).await;
    assert!(out.ok, "{}", out.text);
    until("restored after the next start, finalizer gone", || {
        boot_orders(&sim, "web") == original
            && sim.vmi_uid(NS, "web").is_some_and(|u| u != uid)
            && vmbmc(&sim, "web").is_some_and(|b| !has_finalizer(&b))
    })
    .await;

    // ...or when the VirtualMachineBMC is deleted before that start.
    let out = admin(port, &["chassis", "bootdev", "pxe"]).await;
    assert!(out.ok, "{}", out.text);
    assert_eq!(
        boot_orders(&sim, "web"),
        json!({"disks": [2], "interfaces": [1]})
    );
    until("finalizer added", || {
        vmbmc(&sim, "web").is_some_and(|b| has_finalizer(&b))
    })
    .await;
    sim.delete(Kind::VirtualMachineBmc, NS, "web-bmc").unwrap();
    until("order restored and the VirtualMachineBMC gone", || {
        vmbmc(&sim, "web").is_none() && boot_orders(&sim, "web") == original
    })
    .await;
    until("no longer served", || {
        agent.port_of("default/web").is_none()
    })
    .await;
}

/// Power commands during a VMI's transitions (slow phases, a slow guest shutdown): soft while
/// starting waits for Running and then stops; off while stopping is answered at once; on while
/// stopping waits for the VMI to end and then starts; off while starting stops at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_commands_during_vmi_transitions() {
    let sim = kubesim::Server::start_with(
        "127.0.0.1:0".parse().unwrap(),
        kubesim::Config {
            phase_delay: (Duration::from_millis(250), Duration::from_millis(300)),
            stop_delay: Duration::from_millis(1200),
            ..fast()
        },
    )
    .await
    .unwrap();
    seed(&sim, "slow", "Halted");
    let agent = Agent::start(&sim, "agent-a", 31180..=31189).await;
    let name = "default/slow";
    let port = agent.wait_served(name).await;
    let power = || agent.backend.shared.view(name).map(|v| v.power.to_string());
    until_login(port, "admin", "password").await;

    assert!(admin(port, &["power", "on"]).await.ok);
    agent.wait_power(name, "starting").await;
    let out = admin(port, &["power", "soft"]).await;
    assert!(
        out.ok,
        "soft while starting waits, then stops: {}",
        out.text
    );
    // The stop ran once the VMI was Running: the guest is now shutting down from there.
    assert_eq!(sim.vmi_phase(NS, "slow").as_deref(), Some("Running"));
    until("the VMI deleting", || {
        sim.get(Kind::VirtualMachineInstance, NS, "slow")
            .is_some_and(|v| !v["metadata"]["deletionTimestamp"].is_null())
    })
    .await;
    until("VMI gone after soft", || {
        sim.vmi_phase(NS, "slow").is_none()
    })
    .await;
    agent.wait_power(name, "off").await;

    assert!(admin(port, &["power", "on"]).await.ok);
    sim.wait_vmi_phase(NS, "slow", "Running", T).await.unwrap();
    agent.wait_power(name, "on").await;
    assert!(admin(port, &["power", "off"]).await.ok);
    agent.wait_power(name, "stopping").await;
    let out = admin(port, &["power", "off"]).await;
    assert!(out.ok, "off while stopping: {}", out.text);
    assert_eq!(power().as_deref(), Some("stopping"), "answered at once");
    let old = sim.vmi_uid(NS, "slow").unwrap();
    let out = admin(port, &["power", "on"]).await;
    assert!(out.ok, "on while stopping waits, then starts: {}", out.text);
    until("a new VMI Running after on-while-stopping", || {
        sim.vmi_uid(NS, "slow").is_some_and(|u| u != old)
            && sim.vmi_phase(NS, "slow").as_deref() == Some("Running")
    })
    .await;
    agent.wait_power(name, "on").await;

    assert!(admin(port, &["power", "off"]).await.ok);
    until("VMI gone after off", || sim.vmi_phase(NS, "slow").is_none()).await;
    agent.wait_power(name, "off").await;
    assert!(admin(port, &["power", "on"]).await.ok);
    agent.wait_power(name, "starting").await;
    let out = admin(port, &["power", "off"]).await;
    assert!(out.ok, "off while starting: {}", out.text);
    let rs = sim.get(Kind::VirtualMachine, NS, "slow").unwrap()["spec"]["runStrategy"].clone();
    assert_eq!(rs, "Halted", "stopped at once, not after the start");
    agent.wait_power(name, "off").await;
}

fn condition_of(bmc: &serde_json::Value, type_: &str) -> serde_json::Value {
    bmc["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_).cloned())
        .unwrap_or_default()
}

/// kube-rs puts names into paths unescaped: `spec.virtualMachineRef.name: a/stop?` would
/// make a VM read a `stop` call. Such names get a condition naming the field, and the agent
/// sends nothing with them: no port, no Service, no VM request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_cannot_be_objects_get_a_condition_and_no_request() {
    use virtbmc::backend::Backend;
    use virtbmc::engine::Action;
    let sim = sim().await;
    seed(&sim, "good", "Halted");
    // The VM `a` exists: `a/stop?` in a path would reach its stop subresource.
    sim.seed_vm(NS, "a", "Always");
    sim.seed_vm(NS, "other", "Halted");
    sim.seed_vmbmc(NS, "bad-vm-bmc", "a/stop?", "good-auth");
    sim.seed_vmbmc(NS, "bad-secret-bmc", "other", "good-auth/../x");
    let agent = Agent::start(&sim, "agent-a", 31190..=31199).await;
    agent.wait_served("default/good").await;
    let cond = |bmc: &str, type_: &str| {
        sim.get(Kind::VirtualMachineBmc, NS, bmc)
            .map(|b| condition_of(&b, type_))
            .unwrap_or_default()
    };
    until("both conditions written", || {
        cond("bad-vm-bmc", "Ready")["reason"] == "InvalidVirtualMachineRef"
            && cond("bad-secret-bmc", "Ready")["reason"] == "InvalidAuthSecretRef"
    })
    .await;
    for (bmc, type_, reason, field) in [
        (
            "bad-vm-bmc",
            "Ready",
            "InvalidVirtualMachineRef",
            "spec.virtualMachineRef.name",
        ),
        (
            "bad-vm-bmc",
            "VirtualMachineAvailable",
            "InvalidVirtualMachineRef",
            "spec.virtualMachineRef.name",
        ),
        (
            "bad-secret-bmc",
            "Ready",
            "InvalidAuthSecretRef",
            "spec.authSecretRef.name",
        ),
        (
            "bad-secret-bmc",
            "SecretAvailable",
            "InvalidAuthSecretRef",
            "spec.authSecretRef.name",
        ),
    ] {
        let c = cond(bmc, type_);
        assert_eq!(c["status"], "False", "{bmc} {type_}: {c}");
        assert_eq!(c["reason"], reason, "{bmc} {type_}: {c}");
        let msg = c["message"].as_str().unwrap();
        assert!(msg.starts_with(field), "{bmc} {type_}: {msg}");
    }
    assert_eq!(
        cond("bad-secret-bmc", "VirtualMachineAvailable")["status"],
        "True"
    );
    assert_eq!(cond("bad-vm-bmc", "SecretAvailable")["status"], "True");

    // Let the leader run a few more rounds, then look at everything sent meanwhile and
    // since the start, including a power action asked of the backend directly.
    sim.merge_patch(
        Kind::VirtualMachine,
        NS,
        "other",
        json!({"metadata": {"labels": {"x": "y"}}}),
    )
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for name in [
        "default/a/stop?",
        "default/a/stop",
        "Default/good",
        "default/a?x",
    ] {
        let r = agent
            .backend
            .perform(name, Action::PowerOff, deadline)
            .await;
        assert!(r.is_err(), "{name}: {r:?}");
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let requests = sim.requests();
    assert!(requests.len() > 10, "the agent made requests: {requests:?}");
    for r in &requests {
        let uri = r.uri.to_ascii_lowercase();
        for bad in [
            "/a/",
            "/a?",
            "stop?",
            "stop%3f",
            "a%2f",
            "/..",
            "%2e%2e",
            "/x",
            "/virtualmachines/a/",
        ] {
            assert!(
                !uri.contains(bad),
                "{} {} contains {bad:?}",
                r.method,
                r.uri
            );
        }
    }
    assert!(
        !requests
            .iter()
            .any(|r| r.uri.contains("/virtualmachines/other") || r.uri.contains("other-virtbmc")),
        "a VirtualMachineBMC with an invalid Secret name is not served"
    );
    assert_eq!(
        sim.get(Kind::VirtualMachine, NS, "a").unwrap()["spec"]["runStrategy"],
        "Always"
    );
    for bmc in ["bad-vm-bmc", "bad-secret-bmc"] {
        let b = sim.get(Kind::VirtualMachineBmc, NS, bmc).unwrap();
        assert!(b["status"]["port"].is_null(), "{bmc} got a port: {b}");
    }
    assert_eq!(agent.registry.len(), 1);
    assert!(sim.get(Kind::Service, NS, "other-virtbmc").is_none());

    // Corrected, it is served like any other.
    sim.merge_patch(
        Kind::VirtualMachineBmc,
        NS,
        "bad-vm-bmc",
        json!({"spec": {"virtualMachineRef": {"name": "a"}}}),
    )
    .unwrap();
    agent.wait_served("default/a").await;
    until("Ready once corrected", || {
        cond("bad-vm-bmc", "Ready")["status"] == "True"
    })
    .await;
}

/// Whoever may create a VirtualMachineBMC must not read a Secret back through its status:
/// an unusable username or password is named by key and rule, never quoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_conditions_never_quote_the_credentials() {
    let sim = sim().await;
    let long_user = "the-admins-secret-login-name";
    let long_pass = "a-password-over-twenty-bytes";
    for (vm, user, pass) in [("u", long_user, "password"), ("p", "probe-user", long_pass)] {
        sim.seed_vm(NS, vm, "Halted");
        sim.seed_secret(
            NS,
            &format!("{vm}-auth"),
            &[("username", user), ("password", pass)],
        );
        sim.seed_vmbmc(NS, &format!("{vm}-bmc"), vm, &format!("{vm}-auth"));
    }
    let agent = Agent::start(&sim, "agent-a", 31200..=31209).await;
    agent.wait_served("default/u").await;
    let cond = |vm: &str| {
        vmbmc(&sim, vm)
            .map(|b| condition_of(&b, "SecretAvailable"))
            .unwrap_or_default()
    };
    until("SecretInvalid on both", || {
        cond("u")["reason"] == "SecretInvalid" && cond("p")["reason"] == "SecretInvalid"
    })
    .await;
    for (vm, rule, secrets) in [
        (
            "u",
            "the Secret's username must be 1 to 16 bytes",
            [long_user, "password"],
        ),
        (
            "p",
            "the Secret's password must be at most 20 bytes",
            ["probe-user", long_pass],
        ),
    ] {
        let c = cond(vm);
        assert_eq!(c["status"], "False");
        let msg = c["message"].as_str().unwrap();
        assert!(msg.contains(rule), "{msg}");
        for s in secrets {
            assert!(!msg.contains(s), "{msg:?} quotes {s:?}");
        }
        let all = vmbmc(&sim, vm).unwrap().to_string();
        for s in secrets {
            assert!(
                !all.contains(s),
                "the VirtualMachineBMC quotes {s:?}: {all}"
            );
        }
    }
}

/// Secrets are watched cluster-wide, but only those a VirtualMachineBMC names keep
/// `username` and `password` in the agent's memory: a Secret that becomes named is read
/// once, and one no longer named loses them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_named_secrets_keep_credentials_in_memory() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::runtime::reflector::ObjectRef;
    let sim = sim().await;
    seed(&sim, "vm1", "Halted");
    sim.seed_vm(NS, "vm2", "Halted");
    sim.seed_secret(
        NS,
        "unrelated",
        &[
            ("username", "root"),
            ("password", "hunter2"),
            ("tls.key", "KEY"),
        ],
    );
    sim.seed_secret(
        NS,
        "later",
        &[("username", "later"), ("password", "laterpass")],
    );
    let agent = Agent::start(&sim, "agent-a", 31210..=31219).await;
    let port1 = agent.wait_served("default/vm1").await;
    until_login(port1, "admin", "password").await;
    let cached = |name: &str| -> Option<Secret> {
        agent
            .backend
            .shared
            .stores
            .secret
            .get(&ObjectRef::new(name).within(NS))
            .map(|s| (*s).clone())
    };
    let keys = |s: &Secret| -> Vec<String> {
        let mut k: Vec<String> = s.data.iter().flat_map(|d| d.keys().cloned()).collect();
        k.extend(s.string_data.iter().flat_map(|d| d.keys().cloned()));
        k.sort();
        k
    };
    assert_eq!(keys(&cached("vm1-auth").unwrap()), ["password", "username"]);
    until("every Secret cached", || {
        cached("unrelated").is_some() && cached("later").is_some()
    })
    .await;
    assert!(keys(&cached("unrelated").unwrap()).is_empty());
    assert!(keys(&cached("later").unwrap()).is_empty());

    // A VirtualMachineBMC names `later`: it is read once, and its user logs in.
    sim.clear_requests();
    sim.seed_vmbmc(NS, "vm2-bmc", "vm2", "later");
    let port2 = agent.wait_served("default/vm2").await;
    until_login(port2, "later", "laterpass").await;
    assert_eq!(keys(&cached("later").unwrap()), ["password", "username"]);
    let reads: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.uri.contains("/secrets/"))
        .collect();
    assert!(
        reads
            .iter()
            .all(|r| r.uri.ends_with("/namespaces/default/secrets/later")),
        "{reads:?}"
    );
    assert!(!reads.is_empty(), "the newly named Secret was not read");
    assert!(keys(&cached("unrelated").unwrap()).is_empty());

    // No longer named: its credentials go at once, and the BMC with them.
    sim.delete(Kind::VirtualMachineBmc, NS, "vm2-bmc").unwrap();
    until("credentials dropped", || {
        cached("later").is_some_and(|s| keys(&s).is_empty())
    })
    .await;
    assert_eq!(keys(&cached("vm1-auth").unwrap()), ["password", "username"]);
    until_login(port1, "admin", "password").await;
}

/// With the roles split the agents read no tenant Secret: the controller keeps one copy per
/// BMC in the agents' namespace (username and password, nothing else), the agent serves
/// from it, a rotated tenant password reaches it and ends the sessions of the old one, and
/// the copy goes with its BMC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_roles_pass_credentials_through_copies_and_rotation_ends_sessions() {
    let sim = sim().await;
    seed(&sim, "vm1", "Always");
    sim.merge_patch(
        Kind::Secret,
        NS,
        "vm1-auth",
        json!({"data": {"ca.crt": serde_json::to_value(k8s_openapi::ByteString(b"not for agents".to_vec())).unwrap()}}),
    )
    .unwrap();
    let _controller = Agent::start_role(
        &sim,
        "controller-copies",
        31460..=31469,
        virtbmc::cluster::role::Role::Controller,
    )
    .await;
    let agent = Agent::start_role(
        &sim,
        "agent-copies",
        31460..=31469,
        virtbmc::cluster::role::Role::Agent,
    )
    .await;
    let port = agent.wait_served("default/vm1").await;
    until_login(port, "admin", "password").await;
    let copies: Vec<_> = sim
        .list(Kind::Secret, Some("virtbmc-system"))
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["app.kubernetes.io/component"] == "bmc-credentials")
        .collect();
    assert_eq!(copies.len(), 1, "{copies:#?}");
    let mut keys: Vec<_> = copies[0]["data"]
        .as_object()
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    assert_eq!(keys, ["password", "username"], "{}", copies[0]);
    assert_eq!(
        copies[0]["metadata"]["labels"]["bmc.kubevirt.io/virtualmachinebmc-name"],
        "vm1-bmc"
    );

    // runStrategy Always: on once its VMI runs.
    sim.wait_vmi_phase(NS, "vm1", "Running", T).await.unwrap();
    agent.wait_power("default/vm1", "on").await;
    rotation_ends_open_sessions(&sim, port).await;

    sim.delete(Kind::VirtualMachineBmc, NS, "vm1-bmc").unwrap();
    until("the copy gone with its BMC", || {
        !sim.list(Kind::Secret, Some("virtbmc-system"))
            .iter()
            .any(|s| s["metadata"]["labels"]["app.kubernetes.io/component"] == "bmc-credentials")
    })
    .await;
    assert_agent_never_refused(&sim);
}

/// Rotates vm1's password to `n3w-pass` while an `ipmitool shell` over IPMI 1.5 and one over
/// RMCP+ are open on `port`: the new password logs in, the old one is refused, and both open
/// sessions end at once.
async fn rotation_ends_open_sessions(sim: &kubesim::Handle, port: u16) {
    let mut shells = [Shell::open("lan", port), Shell::open("lanplus", port)];
    for sh in &mut shells {
        tokio::task::block_in_place(|| sh.run("power status", "Chassis Power is on")).unwrap();
    }
    let data = json!({"data": {"password": serde_json::to_value(k8s_openapi::ByteString(b"n3w-pass".to_vec())).unwrap()}});
    sim.merge_patch(Kind::Secret, NS, "vm1-auth", data).unwrap();
    until_login(port, "admin", "n3w-pass").await;
    assert!(
        !admin(port, &["power", "status"]).await.ok,
        "old password still accepted"
    );
    for sh in &mut shells {
        let after = tokio::task::block_in_place(|| sh.run("power status", "Chassis Power is on"));
        assert!(
            after.is_err(),
            "a session of the old password still answers"
        );
    }
}
