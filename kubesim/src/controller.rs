//! A simulated virt-controller and virt-handler (kv:pkg/virt-controller/watch/vm/vm.go,
//! vmi/lifecycle.go): reacts to runStrategy and stateChangeRequests,
//! creates and deletes VMIs, moves them through their phases with delays, and writes the VM
//! status. It writes through the store like any in-cluster client, so every step is a watch
//! event with its own resourceVersion.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Config;
use crate::kinds::Kind;
use crate::kubevirt::{VM_FINALIZER, VMI_FINALIZER, is_final, legacy_uuid, phase, run_strategy};
use crate::store::Store;
use crate::util;

pub struct Controller {
    store: Store,
    cfg: Config,
    /// VMI uid -> (phase seen, when it advances).
    deadlines: HashMap<String, (String, Instant)>,
    /// VMs whose RerunOnFailure VMI was stopped on request: not restarted.
    halted_by_user: HashSet<String>,
    /// Once VMs that already ran.
    once_done: HashSet<String>,
    /// Subscribed at construction, so no change made before the task runs is missed.
    changes: tokio::sync::watch::Receiver<u64>,
}

fn random_between(lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    let b = uuid::Uuid::new_v4();
    let r = u64::from_le_bytes(b.as_bytes()[..8].try_into().expect("8 bytes"));
    let span = (hi - lo).as_millis() as u64 + 1;
    lo + Duration::from_millis(r % span)
}

fn uid(o: &Value) -> String {
    o["metadata"]["uid"].as_str().unwrap_or("").to_string()
}

fn deleting(o: &Value) -> bool {
    o["metadata"].get("deletionTimestamp").is_some()
}

fn cond_true(vmi: &Value, t: &str) -> bool {
    vmi["status"]["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == t && c["status"] == "True"))
}

fn add_transition(vmi: &mut Value, phase: &str) {
    let ts = json!({ "phase": phase, "phaseTransitionTimestamp": util::now_rfc3339() });
    match vmi["status"]["phaseTransitionTimestamps"].as_array_mut() {
        Some(a) => a.push(ts),
        None => vmi["status"]["phaseTransitionTimestamps"] = json!([ts]),
    }
}

impl Controller {
    pub fn new(store: Store, cfg: Config) -> Self {
        Controller {
            changes: store.subscribe(),
            store,
            cfg,
            deadlines: HashMap::new(),
            halted_by_user: HashSet::new(),
            once_done: HashSet::new(),
        }
    }

    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut changes = self.changes.clone();
        // Objects seeded before this task first ran are seen here.
        self.sync_all();
        loop {
            // Sleep until a change, the next phase deadline, or the resync period.
            let now = Instant::now();
            let idle = self
                .deadlines
                .values()
                .map(|(_, t)| t.saturating_duration_since(now))
                .min()
                .unwrap_or(self.cfg.controller_tick)
                .min(self.cfg.controller_tick);
            tokio::select! {
                _ = stop.changed() => return,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(idle) => {}
            }
            if *stop.borrow() {
                return;
            }
            // Batch bursts of changes into one pass (a pass visits every VM).
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.sync_all();
        }
    }

    pub fn sync_all(&mut self) {
        let now = Instant::now();
        for vm in self.store.all(Kind::VirtualMachine, None) {
            self.sync_vm(&vm);
        }
        let mut live = HashSet::new();
        let vm_uids: HashSet<String> = self
            .store
            .all(Kind::VirtualMachine, None)
            .iter()
            .map(|v| uid(v))
            .collect();
        for vmi in self.store.all(Kind::VirtualMachineInstance, None) {
            live.insert(uid(&vmi));
            // Garbage collection: a VMI whose controlling VM is gone is deleted.
            let owner = vmi["metadata"]["ownerReferences"]
                .as_array()
                .and_then(|o| {
                    o.iter()
                        .find(|r| r["controller"] == true && r["kind"] == "VirtualMachine")
                })
                .and_then(|r| r["uid"].as_str());
            if let Some(owner) = owner
                && !vm_uids.contains(owner)
                && !deleting(&vmi)
            {
                let ns = vmi["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let name = vmi["metadata"]["name"].as_str().unwrap_or("").to_string();
                self.delete_vmi(&ns, &name);
                continue;
            }
            self.sync_vmi(&vmi, now);
        }
        self.deadlines.retain(|k, _| live.contains(k));
    }

    fn delete_vmi(&mut self, ns: &str, name: &str) {
        let _ = self
            .store
            .delete(Kind::VirtualMachineInstance, ns, name, &json!({}), false);
    }

    fn create_vmi(&mut self, vm: &Value, paused: bool) {
        let ns = vm["metadata"]["namespace"].as_str().unwrap_or("");
        let name = vm["metadata"]["name"].as_str().unwrap_or("");
        let tmpl = &vm["spec"]["template"];
        let mut spec = tmpl["spec"].clone();
        if !spec.is_object() {
            spec = json!({});
        }
        if paused {
            spec["startStrategy"] = json!("Paused");
        }
        let mut md = json!({
            "name": name,
            "namespace": ns,
            "finalizers": [VMI_FINALIZER],
            "ownerReferences": [{
                "apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachine",
                "name": name,
                "uid": vm["metadata"]["uid"],
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        });
        if let Some(l) = tmpl["metadata"]["labels"].as_object() {
            md["labels"] = json!(l);
        }
        if let Some(a) = tmpl["metadata"]["annotations"].as_object() {
            md["annotations"] = json!(a);
        }
        let vmi = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": md,
            "spec": spec,
        });
        if let Err(e) = self
            .store
            .create(Kind::VirtualMachineInstance, ns, vmi, false)
        {
            log::debug!("controller: create vmi {ns}/{name}: {e}");
        }
    }

    fn sync_vm(&mut self, vm: &Value) {
        let ns = vm["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = vm["metadata"]["name"].as_str().unwrap_or("").to_string();
        let vm_uid = uid(vm);
        let vmi = self
            .store
            .get_arc(Kind::VirtualMachineInstance, &ns, &name)
            .filter(|v| {
                // A VMI of the same name owned by another (older) VM is not ours.
                v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_none_or(|o| o.iter().any(|r| r["uid"] == json!(vm_uid)))
            });

        if deleting(vm) {
            self.write_status(vm, vmi.as_ref(), "Terminating");
            match &vmi {
                Some(v) if !deleting(v) => self.delete_vmi(&ns, &name),
                Some(_) => {}
                None => {
                    self.store.modify(Kind::VirtualMachine, &ns, &name, |o| {
                        if let Some(f) = o["metadata"]["finalizers"].as_array_mut() {
                            f.retain(|x| x != VM_FINALIZER && x != "foregroundDeletion");
                        }
                    });
                }
            }
            return;
        }

        let needs_finalizer = !vm["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == VM_FINALIZER));
        let needs_uuid = vm["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"]
            .as_str()
            .is_none_or(str::is_empty);
        if needs_finalizer || needs_uuid {
            let legacy = legacy_uuid(&name);
            self.store.modify(Kind::VirtualMachine, &ns, &name, |o| {
                if needs_finalizer {
                    match o["metadata"]["finalizers"].as_array_mut() {
                        Some(f) => f.push(json!(VM_FINALIZER)),
                        None => o["metadata"]["finalizers"] = json!([VM_FINALIZER]),
                    }
                }
                if needs_uuid {
                    // FirmwareController: legacy VMs get UUIDv5(name).
                    if !o["spec"]["template"]["spec"]["domain"]["firmware"].is_object() {
                        if !o["spec"]["template"]["spec"]["domain"].is_object() {
                            o["spec"]["template"]["spec"]["domain"] = json!({});
                        }
                        o["spec"]["template"]["spec"]["domain"]["firmware"] = json!({});
                    }
                    o["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"] = json!(legacy);
                }
            });
            return; // next tick sees the new state
        }

        let rs = run_strategy(vm).to_string();
        let reqs = vm["status"]["stateChangeRequests"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let first = reqs.first().cloned();
        let first_action = first
            .as_ref()
            .and_then(|r| r["action"].as_str())
            .unwrap_or("");
        let vmi_uid = vmi.as_deref().map(uid);
        let live = vmi.as_ref().is_some_and(|v| !is_final(v) && !deleting(v));

        // isTrimFirstChangeRequestNeeded
        let pop = match first_action {
            "Stop" => vmi_uid.as_deref() != first.as_ref().and_then(|r| r["uid"].as_str()),
            "Start" => live,
            _ => false,
        };
        if pop {
            self.store.modify(Kind::VirtualMachine, &ns, &name, |o| {
                if let Some(a) = o["status"]["stateChangeRequests"].as_array_mut()
                    && !a.is_empty()
                {
                    a.remove(0);
                    if a.is_empty() {
                        o["status"]
                            .as_object_mut()
                            .expect("status")
                            .remove("stateChangeRequests");
                    }
                }
            });
            return;
        }
        let stop_matches = first_action == "Stop"
            && vmi_uid.is_some()
            && vmi_uid.as_deref() == first.as_ref().and_then(|r| r["uid"].as_str());
        let start_paused = first_action == "Start"
            && first
                .as_ref()
                .is_some_and(|r| r["data"]["paused"] == "true");

        let mut create_expected = false;
        match rs.as_str() {
            "Always" => match &vmi {
                Some(v) => {
                    if !deleting(v) && (is_final(v) || stop_matches) {
                        self.delete_vmi(&ns, &name);
                    }
                }
                None => {
                    create_expected = true;
                    self.create_vmi(vm, start_paused);
                }
            },
            "Halted" => {
                if first_action == "Start" {
                    self.store.modify(Kind::VirtualMachine, &ns, &name, |o| {
                        crate::kubevirt::set_run_strategy(o, "Always");
                    });
                    create_expected = true;
                } else if let Some(v) = &vmi
                    && !deleting(v)
                {
                    self.delete_vmi(&ns, &name);
                }
            }
            "Manual" => match &vmi {
                Some(v) => {
                    if !deleting(v) && stop_matches {
                        self.delete_vmi(&ns, &name);
                    }
                }
                None => {
                    if first_action == "Start" {
                        create_expected = true;
                        self.create_vmi(vm, start_paused);
                    }
                }
            },
            "RerunOnFailure" => match &vmi {
                Some(v) => {
                    if !deleting(v) && (stop_matches || phase(v) == "Failed") {
                        if phase(v) == "Failed" && !stop_matches {
                            self.store.modify(Kind::VirtualMachine, &ns, &name, |o| {
                                if !o["status"].is_object() {
                                    o["status"] = json!({});
                                }
                                o["status"]["stateChangeRequests"] = json!([{ "action": "Start" }]);
                            });
                        } else {
                            self.halted_by_user.insert(vm_uid.clone());
                        }
                        self.delete_vmi(&ns, &name);
                    }
                }
                None => {
                    if first_action == "Start" || !self.halted_by_user.contains(&vm_uid) {
                        self.halted_by_user.remove(&vm_uid);
                        create_expected = true;
                        self.create_vmi(vm, start_paused);
                    }
                }
            },
            "Once" if vmi.is_none() && !self.once_done.contains(&vm_uid) => {
                self.once_done.insert(vm_uid.clone());
                create_expected = true;
                self.create_vmi(vm, start_paused);
            }
            _ => {}
        }

        // setPrintableStatus, first match wins.
        let printable = match &vmi {
            Some(v) if !is_final(v) && (deleting(v) || rs == "Halted" || stop_matches) => {
                "Stopping"
            }
            Some(v) if phase(v) == "Running" && cond_true(v, "Paused") => "Paused",
            Some(v) if phase(v) == "Running" => "Running",
            Some(v) if matches!(phase(v), "" | "Pending" | "Scheduling" | "Scheduled") => {
                "Starting"
            }
            None if create_expected => "Starting",
            _ => "Stopped",
        };
        self.write_status(vm, vmi.as_ref(), printable);
    }

    fn write_status(&mut self, vm: &Value, vmi: Option<&Arc<Value>>, printable: &str) {
        let ns = vm["metadata"]["namespace"].as_str().unwrap_or("");
        let name = vm["metadata"]["name"].as_str().unwrap_or("");
        let ready = vmi.is_some_and(|v| phase(v) == "Running" && cond_true(v, "Ready"));
        let created = vmi.is_some_and(|v| !is_final(v));
        let generation = vm["metadata"]["generation"].clone();
        let started = vmi.is_some() || vm["status"].get("runStrategy").is_some();
        let rs = run_strategy(vm).to_string();
        let apply = |st: &mut Value| {
            st["printableStatus"] = json!(printable);
            st["ready"] = json!(ready);
            st["created"] = json!(created);
            st["observedGeneration"] = generation.clone();
            st["desiredGeneration"] = generation.clone();
            if started {
                st["runStrategy"] = json!(rs);
            }
            st["conditions"] = json!([{
                "type": "Ready",
                "status": if ready { "True" } else { "False" },
            }]);
        };
        // Skip the store entirely when nothing would change (the common case on resync).
        let mut want = if vm["status"].is_object() {
            vm["status"].clone()
        } else {
            json!({})
        };
        apply(&mut want);
        if want == vm["status"] {
            return;
        }
        self.store.modify(Kind::VirtualMachine, ns, name, |o| {
            if !o["status"].is_object() {
                o["status"] = json!({});
            }
            apply(&mut o["status"]);
        });
    }

    fn sync_vmi(&mut self, vmi: &Value, now: Instant) {
        let ns = vmi["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = vmi["metadata"]["name"].as_str().unwrap_or("").to_string();
        let id = uid(vmi);
        let ph = phase(vmi).to_string();
        let del = deleting(vmi);
        let moving = del || matches!(ph.as_str(), "" | "Pending" | "Scheduling" | "Scheduled");
        if !moving {
            self.deadlines.remove(&id);
            return;
        }
        // The deadline is per (uid, phase, deleting).
        let stage = format!("{ph}/{del}");
        let cfg = &self.cfg;
        let delay = if del {
            if is_final(vmi) {
                cfg.cleanup_delay
            } else if vmi["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .is_some_and(|g| g <= 1)
            {
                cfg.force_stop_delay
            } else {
                cfg.stop_delay
            }
        } else {
            random_between(cfg.phase_delay.0, cfg.phase_delay.1)
        };
        let entry = self
            .deadlines
            .entry(id.clone())
            .or_insert_with(|| (stage.clone(), now + delay));
        if entry.0 != stage {
            *entry = (stage, now + delay);
        }
        if now < entry.1 {
            return;
        }
        // Several comma-separated node names spread VMs over nodes, stably by VM name.
        let nodes: Vec<&str> = self
            .cfg
            .node_name
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        let h = name
            .bytes()
            .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
        let node = nodes
            .get(h as usize % nodes.len().max(1))
            .copied()
            .unwrap_or("node1")
            .to_string();
        if del {
            if is_final(vmi) {
                self.store
                    .modify(Kind::VirtualMachineInstance, &ns, &name, |o| {
                        if let Some(f) = o["metadata"]["finalizers"].as_array_mut() {
                            f.retain(|x| x != VMI_FINALIZER);
                        }
                    });
            } else {
                self.store
                    .modify(Kind::VirtualMachineInstance, &ns, &name, |o| {
                        if !o["status"].is_object() {
                            o["status"] = json!({});
                        }
                        o["status"]["phase"] = json!("Succeeded");
                        o["status"]["conditions"] = json!([{ "type": "Ready", "status": "False" }]);
                        add_transition(o, "Succeeded");
                    });
            }
            return;
        }
        let next = match ph.as_str() {
            "" => "Pending",
            "Pending" => "Scheduling",
            "Scheduling" => "Scheduled",
            "Scheduled" => "Running",
            _ => return,
        };
        self.store.modify(Kind::VirtualMachineInstance, &ns, &name, |o| {
            if !o["status"].is_object() {
                o["status"] = json!({});
            }
            o["status"]["phase"] = json!(next);
            add_transition(o, next);
            match next {
                "Scheduled" => {
                    o["status"]["nodeName"] = json!(node);
                    if !o["metadata"]["labels"].is_object() {
                        o["metadata"]["labels"] = json!({});
                    }
                    o["metadata"]["labels"]["kubevirt.io/nodeName"] = json!(node);
                }
                "Running" => {
                    // A pod-network address, stable per VMI.
                    let h = o["metadata"]["uid"].as_str().unwrap_or("").bytes().fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
                    let ip = format!("10.244.{}.{}", (h >> 8) % 250, h % 250 + 2);
                    o["status"]["interfaces"] = json!([{
                        "name": "default",
                        "ipAddress": ip,
                        "ipAddresses": [ip],
                        "mac": format!("02:00:00:{:02x}:{:02x}:{:02x}", (h >> 16) as u8, (h >> 8) as u8, h as u8),
                        "interfaceName": "eth0",
                    }]);
                    let paused = o["spec"]["startStrategy"] == "Paused";
                    let mut conds = vec![json!({
                        "type": "Ready",
                        "status": if paused { "False" } else { "True" },
                    })];
                    if paused {
                        conds.push(json!({ "type": "Paused", "status": "True", "reason": "PausedByUser" }));
                    }
                    o["status"]["conditions"] = json!(conds);
                }
                _ => {}
            }
        });
    }
}
