//! Boot overrides under stress, against kubesim: the action deadline firing before the
//! record, between the record and the VM patch, and after the VM patch; two agents racing
//! overrides for one VM (also with stale caches); an agent killed in the middle of a change
//! and the next one starting; and a run of latency, 500s and dropped watches. Every result is
//! read back from the API server: the VM's boot orders, the record, the applied marker.

mod kube_support;

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_support::*;
use kubesim::{Fault, Kind};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use virtbmc::backend::Backend;
use virtbmc::engine::ActionError;
use virtbmc::engine::vm::{Action, BootDevice, BootOverride};

const VM: &str = "web";
const BMC: &str = "default/web";
const MARKER: &str = "bmc.kubevirt.io/boot-override-applied";

fn original() -> Value {
    json!({"disks": [1], "interfaces": [null]})
}

fn pxe_first() -> Value {
    json!({"disks": [2], "interfaces": [1]})
}

/// The record's baseline as every record of these tests must keep it.
fn baseline() -> Value {
    json!({"disk:rootdisk": 1})
}

fn record(sim: &kubesim::Handle) -> Value {
    vmbmc(sim, VM).unwrap()["status"]["bootOverride"].clone()
}

fn marker(sim: &kubesim::Handle) -> Option<Value> {
    let vm = sim.get(Kind::VirtualMachine, NS, VM).unwrap();
    vm["metadata"]["annotations"][MARKER]
        .as_str()
        .map(|s| serde_json::from_str(s).unwrap())
}

fn one_shot(device: BootDevice) -> Action {
    Action::SetBoot(Some(BootOverride {
        device,
        persistent: false,
        efi: false,
    }))
}

async fn perform(agent: &Agent, action: Action, deadline: Duration) -> Result<(), ActionError> {
    agent
        .backend
        .perform(BMC, action, Instant::now() + deadline)
        .await
}

/// Holds the Lease as another agent would, renewing it, so the agents under test never
/// lead: what they finish, they finish without the leader. Abort to let the Lease lapse.
async fn hold_lease(sim: &kubesim::Handle) -> JoinHandle<()> {
    let api: Api<Lease> = Api::namespaced(client_as(sim, ADMIN_TOKEN).await, "virtbmc-system");
    let first = renew(&api, 0).await;
    assert!(first, "lease held");
    tokio::spawn(async move {
        for tick in 1.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            renew(&api, tick).await;
        }
    })
}

async fn renew(api: &Api<Lease>, tick: u64) -> bool {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "virtbmc-leader", "annotations": {"tick": tick.to_string()}},
        "spec": {"holderIdentity": "elsewhere", "leaseDurationSeconds": 2},
    });
    api.patch(
        "virtbmc-leader",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&lease),
    )
    .await
    .is_ok()
}

/// Restarts the VM through KubeVirt's API (no agent involved) and waits for the new VMI
/// to run: the boot a one-shot override is for.
async fn reboot(sim: &kubesim::Handle) {
    let before = sim.vmi_uid(NS, VM);
    let req = kube::core::Request::new(format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{NS}/virtualmachines"
    ))
    .replace_subresource("restart", VM, &PostParams::default(), b"{}".to_vec())
    .unwrap();
    client_as(sim, ADMIN_TOKEN)
        .await
        .request_text(req)
        .await
        .unwrap();
    until("the VM rebooted", || {
        sim.vmi_uid(NS, VM)
            .is_some_and(|u| Some(&u) != before.as_ref())
            && sim.vmi_phase(NS, VM).as_deref() == Some("Running")
    })
    .await;
}

/// The VM back at its own orders, no record, no marker.
async fn until_original(sim: &kubesim::Handle, what: &str) {
    until(what, || {
        boot_orders(sim, VM) == original() && record(sim).is_null() && marker(sim).is_none()
    })
    .await;
}

/// A one-shot PXE override in full: recorded over the original baseline, applied, marked.
async fn until_pxe_applied(sim: &kubesim::Handle, what: &str) {
    until(what, || {
        let r = record(sim);
        r["device"] == "pxe"
            && r["mode"] == "Oneshot"
            && r["bootOrders"] == baseline()
            && boot_orders(sim, VM) == pxe_first()
            && marker(sim).is_some_and(|m| m["bootOrders"] == baseline())
    })
    .await;
}

/// The VM running, with its Secret and VirtualMachineBMC; `port` written as a leader
/// would (for agents that never lead).
/// The agent's start-up pass is over: from now on only its requests (and a leader) write.
async fn until_swept(agent: &Agent) {
    until("start-up pass over overrides", || {
        agent.backend.shared.overrides_swept()
    })
    .await;
}

async fn running_vm(sim: &kubesim::Handle, port: Option<u16>) {
    seed(sim, VM, "Always");
    if let Some(port) = port {
        sim.set_status(
            Kind::VirtualMachineBmc,
            NS,
            "web-bmc",
            json!({"port": port}),
        )
        .unwrap();
    }
    sim.wait_vmi_phase(NS, VM, "Running", T).await.unwrap();
    assert_eq!(boot_orders(sim, VM), original());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_the_answer_never_the_work() {
    let sim = sim().await;
    running_vm(&sim, Some(31200)).await;
    let holder = hold_lease(&sim).await;
    let agent = Agent::start(&sim, "agent-a", 31200..=31209).await;
    agent.wait_served(BMC).await;
    until_swept(&agent).await;
    let late = Duration::from_millis(1500);
    let deadline = Duration::from_millis(300);

    // Before the record: the status write is slow. 0xC3, nothing written yet; then the
    // record and the VM, by the request's own task (the leader is elsewhere).
    sim.inject(Fault::on("PATCH", "/virtualmachinebmcs/web-bmc/status").delay(late));
    let r = perform(&agent, one_shot(BootDevice::Pxe), deadline).await;
    assert_eq!(r, Err(ActionError::Timeout));
    assert!(record(&sim).is_null(), "{}", record(&sim));
    assert_eq!(boot_orders(&sim, VM), original());
    until_pxe_applied(&sim, "recorded and applied after the deadline").await;
    assert_eq!(perform(&agent, Action::SetBoot(None), T).await, Ok(()));
    until_original(&sim, "cleared").await;

    // After the record, before the VM patch: the record is there at once, the orders follow.
    sim.inject(Fault::on("PATCH", "/virtualmachines/web?").delay(late));
    let r = perform(&agent, one_shot(BootDevice::Pxe), deadline).await;
    assert_eq!(r, Err(ActionError::Timeout));
    assert_eq!(record(&sim)["device"], "pxe");
    assert_eq!(boot_orders(&sim, VM), original());
    assert!(marker(&sim).is_none());
    until_pxe_applied(&sim, "applied after the deadline").await;
    assert_eq!(perform(&agent, Action::SetBoot(None), T).await, Ok(()));
    until_original(&sim, "cleared").await;

    // After the VM patch: the read that confirms it is slow.
    sim.inject(
        Fault::on("GET", "/virtualmachines/web")
            .after(2)
            .delay(late),
    );
    let r = perform(&agent, one_shot(BootDevice::Pxe), deadline).await;
    assert_eq!(r, Err(ActionError::Timeout));
    until_pxe_applied(&sim, "applied before the deadline, confirmed after").await;

    // 500s on the record and on the VM patch: retried with backoff, to the end.
    sim.clear_faults();
    assert_eq!(perform(&agent, Action::SetBoot(None), T).await, Ok(()));
    until_original(&sim, "cleared").await;
    sim.inject(
        Fault::on("PATCH", "/virtualmachinebmcs/web-bmc/status")
            .status(500)
            .times(2),
    );
    sim.inject(
        Fault::on("PATCH", "/virtualmachines/web?")
            .status(500)
            .times(2),
    );
    let r = perform(&agent, one_shot(BootDevice::Pxe), deadline).await;
    assert_eq!(r, Err(ActionError::Timeout));
    until_pxe_applied(&sim, "applied through 500s").await;

    // Latency before every request of the change: in time, and the same result.
    for verb in ["GET", "PATCH"] {
        sim.inject(
            Fault::on(verb, "/web")
                .delay(Duration::from_millis(150))
                .times(usize::MAX),
        );
    }
    assert_eq!(
        perform(&agent, one_shot(BootDevice::Pxe), Duration::from_secs(5)).await,
        Ok(())
    );
    until_pxe_applied(&sim, "a second override keeps the baseline").await;
    sim.clear_faults();

    // The boot it was for: once the agent leads, the original orders come back.
    holder.abort();
    until("agent-a leads", || agent.backend.shared.is_leader()).await;
    reboot(&sim).await;
    until_original(&sim, "restored after the boot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_racing_overrides_keep_the_original_order() {
    let sim = sim().await;
    running_vm(&sim, None).await;
    let a = Agent::start_on(&sim, "node-a", 31210..=31219, Ipv4Addr::new(127, 0, 0, 1)).await;
    let b = Agent::start_on(&sim, "node-b", 31210..=31219, Ipv4Addr::new(127, 0, 0, 2)).await;
    a.wait_served(BMC).await;
    b.wait_served(BMC).await;
    // Reads of the record are slow: the two changes interleave.
    sim.inject(
        Fault::on("GET", "/virtualmachinebmcs/web-bmc")
            .delay(Duration::from_millis(80))
            .times(usize::MAX),
    );
    for (round, (da, db)) in [
        (BootDevice::Pxe, BootDevice::Disk),
        (BootDevice::Disk, BootDevice::Pxe),
        (BootDevice::Pxe, BootDevice::Pxe),
    ]
    .into_iter()
    .enumerate()
    {
        let (ra, rb) = tokio::join!(perform(&a, one_shot(da), T), perform(&b, one_shot(db), T));
        assert_eq!((ra.clone(), rb.clone()), (Ok(()), Ok(())), "round {round}");
        // One of them won; whichever, the record keeps the original baseline and the VM
        // holds its target.
        until(&format!("round {round} consistent"), || {
            let r = record(&sim);
            let want = match r["device"].as_str() {
                Some("pxe") => pxe_first(),
                Some("disk") => original(),
                _ => return false,
            };
            r["bootOrders"] == baseline()
                && boot_orders(&sim, VM) == want
                && marker(&sim).is_some_and(|m| m["bootOrders"] == baseline())
        })
        .await;
    }
    sim.clear_faults();
    reboot(&sim).await;
    until_original(&sim, "restored after the boot").await;
    let cached = |agent: &Agent| {
        agent
            .backend
            .shared
            .owner(BMC)
            .and_then(|o| o.status.clone())
            .and_then(|s| s.boot_override)
    };
    until("caches show no record", || {
        cached(&a).is_none() && cached(&b).is_none()
    })
    .await;

    // Stale caches: both agents' VirtualMachineBMC watches stall. A second override that
    // reaches the other agent before its cache shows the first still takes the baseline
    // from the record, not from the already changed VM.
    sim.inject(
        Fault::on("GET", "virtualmachinebmcs?")
            .delay(Duration::from_secs(3))
            .times(4),
    );
    sim.drop_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(perform(&a, one_shot(BootDevice::Pxe), T).await, Ok(()));
    assert_eq!(boot_orders(&sim, VM), pxe_first());
    assert!(cached(&b).is_none(), "node-b's cache is behind");
    assert_eq!(perform(&b, one_shot(BootDevice::Pxe), T).await, Ok(()));
    until_pxe_applied(&sim, "both recorded over the original").await;

    reboot(&sim).await;
    until_original(&sim, "restored after the boot").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_change_is_finished_by_the_next_start() {
    let sim = sim().await;
    running_vm(&sim, Some(31220)).await;
    let holder = hold_lease(&sim).await;
    let ports = 31220..=31229;
    let deadline = Duration::from_millis(300);

    // Killed after the record, before the VM patch (which never lands).
    let a = Agent::start(&sim, "agent-a", ports.clone()).await;
    a.wait_served(BMC).await;
    until_swept(&a).await;
    sim.inject(Fault::on("PATCH", "/virtualmachines/web?").hang());
    let r = perform(&a, one_shot(BootDevice::Pxe), deadline).await;
    assert_eq!(r, Err(ActionError::Timeout));
    until("recorded", || record(&sim)["device"] == "pxe").await;
    drop(a);
    sim.clear_faults();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        boot_orders(&sim, VM),
        original(),
        "the VM patch never landed"
    );
    assert!(marker(&sim).is_none());
    // The next agent to start (not the leader) finishes it.
    let b = Agent::start(&sim, "agent-b", ports.clone()).await;
    until_pxe_applied(&sim, "finished by the next start").await;
    assert_eq!(perform(&b, Action::SetBoot(None), T).await, Ok(()));
    until_original(&sim, "cleared").await;
    drop(b);

    // Killed after the VM patch, before its confirmation; then the boot comes while no
    // agent runs. The next start restores.
    sim.inject(Fault::on("GET", "/virtualmachines/web").after(2).hang());
    let c = Agent::start(&sim, "agent-c", ports.clone()).await;
    c.wait_served(BMC).await;
    until_swept(&c).await;
    let r = perform(&c, one_shot(BootDevice::Pxe), deadline).await;
    assert_eq!(r, Err(ActionError::Timeout));
    drop(c);
    sim.clear_faults();
    until_pxe_applied(&sim, "applied when killed").await;
    reboot(&sim).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        boot_orders(&sim, VM),
        pxe_first(),
        "no agent ran: nothing yet"
    );
    let d = Agent::start(&sim, "agent-d", ports.clone()).await;
    until_original(&sim, "restored by the next start").await;
    until_swept(&d).await;

    // Killed during the clear: the record is gone, the marker says how to undo it.
    let r = perform(&d, one_shot(BootDevice::Pxe), T).await;
    assert_eq!(r, Ok(()));
    until_pxe_applied(&sim, "applied").await;
    sim.inject(Fault::on("GET", "/virtualmachines/web").after(1).hang());
    let r = perform(&d, Action::SetBoot(None), deadline).await;
    assert_eq!(r, Err(ActionError::Timeout));
    until("record cleared", || record(&sim).is_null()).await;
    drop(d);
    sim.clear_faults();
    assert_eq!(boot_orders(&sim, VM), pxe_first());
    let e = Agent::start(&sim, "agent-e", ports.clone()).await;
    until_original(&sim, "undone from the marker by the next start").await;

    // And the leader, once there is one, restores after the boot too.
    let r = perform(&e, one_shot(BootDevice::Pxe), T).await;
    assert_eq!(r, Ok(()));
    until_pxe_applied(&sim, "applied").await;
    holder.abort();
    until("agent-e leads", || e.backend.shared.is_leader()).await;
    reboot(&sim).await;
    until_original(&sim, "restored by the leader after the boot").await;
}

/// ipmitool sees the deadline as a failed Set Boot Options (completion code 0xC3, which it
/// prints as "Timeout"); the override lands all the same, and IPMI reads it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipmitool_gets_an_answer_by_the_deadline_and_the_override_lands() {
    let sim = sim().await;
    running_vm(&sim, None).await;
    let mut opts = virtbmc::cluster::ClusterOptions::new(
        "agent-a",
        "virtbmc-system",
        virtbmc::engine::config::BmcConfig::new(vec![]),
    );
    opts.port_range = 31250..=31259;
    let agent =
        Agent::start_with_deadline(&sim, opts, Ipv4Addr::LOCALHOST, Duration::from_millis(500))
            .await;
    let port = agent.wait_served(BMC).await;
    until_login(port, "admin", "password").await;
    until_swept(&agent).await;
    sim.inject(
        Fault::on("PATCH", "/virtualmachines/web?")
            .delay(Duration::from_millis(1500))
            .times(2),
    );
    let out = admin(port, &["chassis", "bootdev", "pxe"]).await;
    assert!(
        out.text
            .contains("Set Chassis Boot Parameter 5 failed: Timeout"),
        "0xC3 expected while the VM patch is slow: {}",
        out.text
    );
    until_pxe_applied(&sim, "applied after the answer").await;
    until("the engine sees it", || {
        agent
            .backend
            .shared
            .view(BMC)
            .is_some_and(|v| v.boot.is_some())
    })
    .await;
    let out = admin(port, &["chassis", "bootparam", "get", "5"]).await;
    assert!(out.text.contains("PXE"), "{}", out.text);
    reboot(&sim).await;
    until_original(&sim, "restored after the boot").await;
}

/// A small deterministic generator: the run is the same every time.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_injection_run_loses_no_boot_order() {
    let sim = sim().await;
    running_vm(&sim, None).await;
    let a = Agent::start_on(&sim, "node-a", 31230..=31239, Ipv4Addr::new(127, 0, 0, 1)).await;
    let b = Agent::start_on(&sim, "node-b", 31230..=31239, Ipv4Addr::new(127, 0, 0, 2)).await;
    a.wait_served(BMC).await;
    b.wait_served(BMC).await;
    let mut rng = Lcg(7);
    let targets = [
        "/virtualmachines/web?",
        "/virtualmachines/web",
        "/virtualmachinebmcs/web-bmc",
        "/virtualmachinebmcs/web-bmc/status",
        "/virtualmachineinstances/web",
    ];
    for step in 0..24 {
        let on = targets[rng.next(targets.len() as u64) as usize];
        let verb = if on.ends_with('?') || on.ends_with("status") {
            "PATCH"
        } else {
            "GET"
        };
        match rng.next(4) {
            0 => sim.inject(
                Fault::on(verb, on)
                    .status(500)
                    .times(1 + rng.next(3) as usize),
            ),
            1 => sim.inject(
                Fault::on(verb, on)
                    .delay(Duration::from_millis(100 + rng.next(900)))
                    .times(1 + rng.next(3) as usize),
            ),
            2 => sim.drop_watches(),
            _ => {}
        }
        let agent = if rng.next(2) == 0 { &a } else { &b };
        let device = if rng.next(2) == 0 {
            BootDevice::Pxe
        } else {
            BootDevice::Disk
        };
        let deadline = Duration::from_millis(50 + rng.next(1000));
        // Any answer will do (done, late, failed); what matters is what the cluster holds.
        let r = perform(agent, one_shot(device), deadline).await;
        log::info!("step {step}: {device:?} within {deadline:?}: {r:?}");
        if rng.next(5) == 0 {
            reboot(&sim).await;
        }
        // Whatever is recorded or marked keeps the original orders to go back to.
        let r = record(&sim);
        assert!(
            r.is_null() || r["bootOrders"] == baseline(),
            "step {step}: {r}"
        );
        if let Some(m) = marker(&sim) {
            assert_eq!(m["bootOrders"], baseline(), "step {step}");
        }
    }
    sim.clear_faults();
    // The last override settles (recorded and applied, or already undone by a boot)...
    until("settled", || {
        let r = record(&sim);
        r.is_null() && marker(&sim).is_none()
            || r["bootOrders"] == baseline() && marker(&sim).is_some()
    })
    .await;
    // ...and the boot after it brings the original orders back.
    if !record(&sim).is_null() {
        reboot(&sim).await;
    }
    until_original(&sim, "the original order after the last boot").await;
}

/// Without the CRD the record is an annotation of the VM itself: the same protocol, the same
/// recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_mode_a_killed_agent_is_finished_by_the_next_start() {
    use virtbmc::cluster::labeled::{BOOT_ANNOTATION, PORT_ANNOTATION, PORT_PROOF_ANNOTATION};
    let sim = label_mode_sim().await;
    let key = seed_port_key(&sim);
    sim.inject(
        Fault::on("*", "virtualmachinebmcs")
            .status(404)
            .times(usize::MAX),
    );
    let vm = sim.seed_vm(NS, VM, "Always");
    // The port an earlier leader wrote, with its proof.
    let proof = key.proof(vm["metadata"]["uid"].as_str().unwrap(), 31240);
    sim.merge_patch(
        Kind::VirtualMachine,
        NS,
        VM,
        json!({"metadata": {"labels": {"bmc.kubevirt.io/enabled": "true"},
            "annotations": {PORT_ANNOTATION: "31240", PORT_PROOF_ANNOTATION: proof}}}),
    )
    .unwrap();
    sim.seed_secret(
        "virtbmc-system",
        "virtbmc-credentials",
        &[("username", "admin"), ("password", "password")],
    );
    sim.wait_vmi_phase(NS, VM, "Running", T).await.unwrap();
    let holder = hold_lease(&sim).await;
    let start = |identity: &'static str| {
        let opts = label_mode_options(
            identity,
            "virtbmc-system/virtbmc-credentials",
            31240..=31249,
        );
        Agent::start_with(&sim, opts, Ipv4Addr::LOCALHOST)
    };
    let label_record = || {
        sim.get(Kind::VirtualMachine, NS, VM).unwrap()["metadata"]["annotations"][BOOT_ANNOTATION]
            .as_str()
            .map(|s| serde_json::from_str::<Value>(s).unwrap())
    };

    let a = start("agent-a").await;
    assert_eq!(a.wait_served(BMC).await, 31240);
    until_swept(&a).await;
    // The record (a merge patch of the VM) lands; the boot order patch after it hangs.
    sim.inject(Fault::on("PATCH", "/virtualmachines/web?").after(1).hang());
    let r = perform(&a, one_shot(BootDevice::Pxe), Duration::from_millis(300)).await;
    assert_eq!(r, Err(ActionError::Timeout));
    until("recorded in the VM", || {
        label_record().is_some_and(|r| r["device"] == "pxe" && r["bootOrders"] == baseline())
    })
    .await;
    drop(a);
    sim.clear_faults();
    sim.inject(
        Fault::on("*", "virtualmachinebmcs")
            .status(404)
            .times(usize::MAX),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(boot_orders(&sim, VM), original());
    assert!(marker(&sim).is_none());

    let b = start("agent-b").await;
    until("finished by the next start", || {
        boot_orders(&sim, VM) == pxe_first()
            && marker(&sim).is_some_and(|m| m["bootOrders"] == baseline())
            && label_record().is_some()
    })
    .await;
    holder.abort();
    until("agent-b leads", || b.backend.shared.is_leader()).await;
    reboot(&sim).await;
    until("restored after the boot", || {
        boot_orders(&sim, VM) == original() && label_record().is_none() && marker(&sim).is_none()
    })
    .await;
}
