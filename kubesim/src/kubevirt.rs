//! virt-api's part: the VM mutating webhook and the start/stop/restart subresources with
//! KubeVirt's answers per runStrategy (kv:pkg/virt-api/rest/lifecycle.go).

use serde_json::{Value, json};

use crate::kinds::Kind;
use crate::status::ApiError;
use crate::store::Store;

/// The finalizer every VMI carries (types.go).
pub const VMI_FINALIZER: &str = "kubevirt.io/foregroundDeleteVirtualMachine";
/// The finalizer virt-controller puts on VMs.
pub const VM_FINALIZER: &str = "kubevirt.io/virtualMachineControllerFinalize";
/// Namespace of `CalculateLegacyUUID` (watch/vm/firmware.go).
pub const LEGACY_UUID_NS: &str = "6a1a24a1-4061-4607-8bf4-a3963d0c5895";

/// The mutating webhook on VM create fills a random firmware uuid and serial if empty
/// (mutators/vm-mutator.go, KubeVirt >= 1.6).
pub fn mutate_vm_on_create(vm: &mut Value) {
    let spec = &mut vm["spec"];
    if !spec.is_object() {
        *spec = json!({});
    }
    let t = &mut spec["template"];
    if !t.is_object() {
        *t = json!({});
    }
    if !t["spec"].is_object() {
        t["spec"] = json!({});
    }
    if !t["spec"]["domain"].is_object() {
        t["spec"]["domain"] = json!({});
    }
    let d = &mut t["spec"]["domain"];
    if !d["firmware"].is_object() {
        d["firmware"] = json!({});
    }
    let fw = &mut d["firmware"];
    if fw["uuid"].as_str().is_none_or(str::is_empty) {
        fw["uuid"] = json!(uuid::Uuid::new_v4().to_string());
    }
    if fw["serial"].as_str().is_none_or(str::is_empty) {
        fw["serial"] = json!(uuid::Uuid::new_v4().to_string());
    }
}

/// `CalculateLegacyUUID(name)`: UUIDv5 in KubeVirt's namespace.
pub fn legacy_uuid(name: &str) -> String {
    let ns = uuid::Uuid::parse_str(LEGACY_UUID_NS).expect("constant");
    uuid::Uuid::new_v5(&ns, name.as_bytes()).to_string()
}

/// The effective run strategy: `spec.runStrategy`, else the deprecated `spec.running`.
pub fn run_strategy(vm: &Value) -> &str {
    match vm["spec"]["runStrategy"].as_str() {
        Some(s) => s,
        None => match vm["spec"]["running"].as_bool() {
            Some(true) => "Always",
            _ => "Halted",
        },
    }
}

/// Set the run strategy the way virt-api does: through `spec.running` if the VM uses it.
pub fn set_run_strategy(vm: &mut Value, rs: &str) {
    if vm["spec"].get("runStrategy").is_none() && vm["spec"].get("running").is_some() {
        vm["spec"]["running"] = json!(rs != "Halted");
    } else {
        vm["spec"]["runStrategy"] = json!(rs);
    }
}

pub fn phase(vmi: &Value) -> &str {
    vmi["status"]["phase"].as_str().unwrap_or("")
}

pub fn is_final(vmi: &Value) -> bool {
    matches!(phase(vmi), "Succeeded" | "Failed")
}

pub(crate) fn vm_conflict(name: &str, why: &str) -> ApiError {
    ApiError {
        code: 409,
        reason: "Conflict".into(),
        message: format!(
            "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"{name}\": {why}"
        ),
        details: Some(json!({ "name": name, "group": "kubevirt.io", "kind": "virtualmachine" })),
    }
}

pub(crate) fn vm_not_found(name: &str) -> ApiError {
    ApiError {
        code: 404,
        reason: "NotFound".into(),
        message: format!("virtualmachine.kubevirt.io \"{name}\" not found"),
        details: Some(json!({ "name": name, "group": "kubevirt.io", "kind": "virtualmachine" })),
    }
}

/// One action of the subresource API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "start" => Some(Action::Start),
            "stop" => Some(Action::Stop),
            "restart" => Some(Action::Restart),
            _ => None,
        }
    }
}

fn stop_req(uid: &str) -> Value {
    json!({ "action": "Stop", "uid": uid })
}

/// What the handler decided to write.
enum Effect {
    RunStrategy(&'static str),
    Requests(Vec<Value>),
}

/// Handle `PUT .../virtualmachines/{name}/{start|stop|restart}`; Ok means 202 Accepted.
pub fn handle(
    store: &Store,
    ns: &str,
    name: &str,
    action: Action,
    body: &[u8],
) -> Result<(), ApiError> {
    // decodeBody accepts an empty body.
    let opts: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "Can not unmarshal Request body to struct, error: {e}"
            ))
        })?
    };
    let dry_run = opts["dryRun"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v == "All"));
    let vm = store
        .get(Kind::VirtualMachine, ns, name)
        .ok_or_else(|| vm_not_found(name))?;
    let vmi = store.get(Kind::VirtualMachineInstance, ns, name);
    let rs = run_strategy(&vm).to_string();
    let vmi_uid = vmi
        .as_ref()
        .and_then(|v| v["metadata"]["uid"].as_str())
        .unwrap_or("")
        .to_string();
    let has_live_vmi = vmi.as_ref().is_some_and(|v| !is_final(v));
    let mut vmi_grace: Option<i64> = None;

    let effect = match action {
        Action::Start => {
            if let Some(v) = &vmi
                && !is_final(v)
                && phase(v) != "Unknown"
                && !phase(v).is_empty()
            {
                return Err(vm_conflict(name, "VM is already running"));
            }
            let paused = opts["paused"].as_bool().unwrap_or(false);
            match rs.as_str() {
                "Halted" if paused => Effect::Requests(vec![json!({
                    "action": "Start", "data": { "paused": "true" }
                })]),
                "Halted" => Effect::RunStrategy("Always"),
                "Manual" | "RerunOnFailure" => {
                    let phase = vmi.as_ref().map(phase).unwrap_or("");
                    if rs == "RerunOnFailure" && vmi.is_some() && phase == "Failed" {
                        return Err(vm_conflict(
                            name,
                            "RerunOnFailure does not support starting VM from failed state",
                        ));
                    }
                    let needs_restart = vmi.is_some()
                        && if rs == "RerunOnFailure" {
                            phase == "Succeeded"
                        } else {
                            is_final(vmi.as_ref().unwrap())
                        };
                    let mut start = json!({ "action": "Start" });
                    if paused {
                        start["data"] = json!({ "paused": "true" });
                    }
                    if needs_restart {
                        Effect::Requests(vec![stop_req(&vmi_uid), start])
                    } else {
                        Effect::Requests(vec![start])
                    }
                }
                other => {
                    return Err(vm_conflict(
                        name,
                        &format!("{other} does not support manual start requests"),
                    ));
                }
            }
        }
        Action::Stop => {
            let grace = opts["gracePeriod"].as_i64();
            match rs.as_str() {
                "Halted" => {
                    if !has_live_vmi {
                        return Err(vm_conflict(name, "VM is not running"));
                    }
                    let current = vmi
                        .as_ref()
                        .and_then(|v| v["spec"]["terminationGracePeriodSeconds"].as_i64());
                    match (grace, current) {
                        (Some(g), Some(c)) if g < c => {}
                        (Some(_), None) => {}
                        _ => {
                            return Err(vm_conflict(
                                name,
                                "Halted only supports manual stop requests with a shorter graceperiod",
                            ));
                        }
                    }
                    vmi_grace = grace;
                    Effect::Requests(vec![stop_req(&vmi_uid)])
                }
                "Manual" | "RerunOnFailure" => {
                    if !has_live_vmi {
                        return Err(vm_conflict(name, "VM is not running"));
                    }
                    vmi_grace = grace;
                    Effect::Requests(vec![stop_req(&vmi_uid)])
                }
                _ => {
                    vmi_grace = grace.filter(|_| has_live_vmi);
                    Effect::RunStrategy("Halted")
                }
            }
        }
        Action::Restart => {
            if let Some(g) = opts["gracePeriodSeconds"].as_i64() {
                if g > 0 {
                    return Err(ApiError::bad_request(
                        "For force restart, only gracePeriod=0 is supported for now",
                    ));
                }
                if g < 0 {
                    return Err(ApiError::bad_request(
                        "gracePeriod has to be greater or equal to 0",
                    ));
                }
                // Force restart: the VMI's grace period is first patched to 1.
                vmi_grace = Some(1);
            }
            if rs == "Halted" || rs == "Once" {
                return Err(vm_conflict(
                    name,
                    &format!("RunStategy {rs} does not support manual restart requests"),
                ));
            }
            if vmi.is_none() {
                return Err(vm_conflict(name, "VM is not running: Halted"));
            }
            Effect::Requests(vec![stop_req(&vmi_uid), json!({ "action": "Start" })])
        }
    };

    // getChangeRequestJson: only an empty list, or a lone Stop, may be replaced.
    if let Effect::Requests(_) = &effect {
        let current = vm["status"]["stateChangeRequests"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let lone_stop = current.len() == 1 && current[0]["action"] == "Stop";
        if !current.is_empty() && !lone_stop {
            return Err(ApiError::internal(
                "unable to complete request: stop/start already underway",
            ));
        }
    }
    if dry_run {
        return Ok(());
    }
    if let Some(g) = vmi_grace
        && vmi.is_some()
    {
        store.modify(Kind::VirtualMachineInstance, ns, name, |v| {
            v["spec"]["terminationGracePeriodSeconds"] = json!(g);
        });
    }
    let expected_rv = vm["metadata"]["resourceVersion"].clone();
    let mut raced = false;
    store.modify(Kind::VirtualMachine, ns, name, |v| {
        // virt-api's patches carry a `test`; a VM changed meanwhile fails it.
        let same = match &effect {
            Effect::RunStrategy(_) => run_strategy(v) == rs,
            Effect::Requests(_) => {
                v["status"]["stateChangeRequests"] == vm["status"]["stateChangeRequests"]
            }
        };
        if !same && v["metadata"]["resourceVersion"] != expected_rv {
            raced = true;
            return;
        }
        match &effect {
            Effect::RunStrategy(s) => set_run_strategy(v, s),
            Effect::Requests(reqs) => {
                if !v["status"].is_object() {
                    v["status"] = json!({});
                }
                v["status"]["stateChangeRequests"] = json!(reqs);
                if let Some(st) = v["status"].as_object_mut() {
                    st.remove("startFailure");
                }
            }
        }
    });
    if raced {
        return Err(ApiError::internal(
            // virt-api wraps the apiserver's generic 422 text (inferred).
            "the server rejected our request due to an error in our request",
        ));
    }
    Ok(())
}

/// `PUT .../virtualmachineinstances/{name}/reset` (KubeVirt >= 1.6): a hard reset of the
/// guest in place, 200 with an empty body. The VMI (and its uid) stays.
pub fn reset(store: &Store, ns: &str, name: &str) -> Result<(), ApiError> {
    let Some(vmi) = store.get_arc(Kind::VirtualMachineInstance, ns, name) else {
        return Err(ApiError {
            code: 404,
            reason: "NotFound".into(),
            message: format!("virtualmachineinstance.kubevirt.io \"{name}\" not found"),
            details: Some(
                json!({ "name": name, "group": "kubevirt.io", "kind": "virtualmachineinstance" }),
            ),
        });
    };
    if phase(&vmi) != "Running" {
        // Inferred: virt-handler cannot reset a domain that is not running.
        return Err(ApiError {
            code: 409,
            reason: "Conflict".into(),
            message: format!(
                "Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io \"{name}\": VMI is not running"
            ),
            details: Some(
                json!({ "name": name, "group": "kubevirt.io", "kind": "virtualmachineinstance" }),
            ),
        });
    }
    Ok(())
}

/// The VM validating webhook's run strategy rules (vms-admitter.go validateRunStrategy), on
/// create and on update of the main resource.
pub fn validate_vm(vm: &Value) -> Result<(), ApiError> {
    let spec = &vm["spec"];
    let running = spec.get("running").is_some_and(|v| !v.is_null());
    let strategy = spec.get("runStrategy").is_some_and(|v| !v.is_null());
    let why = match (running, strategy) {
        (true, true) => {
            "Running and RunStrategy are mutually exclusive. Note that Running is deprecated, please use RunStrategy instead"
        }
        (false, false) => "RunStrategy must be specified",
        _ => match spec["runStrategy"].as_str() {
            Some("Always" | "Halted" | "Manual" | "RerunOnFailure" | "Once" | "WaitAsReceiver")
            | None => return Ok(()),
            Some(_) => "Invalid RunStrategy",
        },
    };
    Err(ApiError {
        code: 422,
        reason: "Invalid".into(),
        message: format!(
            "admission webhook \"virtualmachine-validator.kubevirt.io\" denied the request: {why}"
        ),
        details: Some(json!({
            "causes": [{ "reason": "FieldValueInvalid", "message": why, "field": "spec.running" }],
        })),
    })
}

/// The VirtualMachineBMC CRD schema's required fields (`virtualMachineRef`, `authSecretRef`).
pub fn validate_vmbmc(obj: &Value) -> Result<(), ApiError> {
    for field in ["virtualMachineRef", "authSecretRef"] {
        if !obj["spec"][field].is_object() {
            let name = obj["metadata"]["name"].as_str().unwrap_or("");
            return Err(ApiError {
                code: 422,
                reason: "Invalid".into(),
                message: format!(
                    "VirtualMachineBMC.bmc.kubevirt.io \"{name}\" is invalid: spec.{field}: Required value"
                ),
                details: Some(json!({
                    "name": name, "group": "bmc.kubevirt.io", "kind": "VirtualMachineBMC",
                    "causes": [{ "reason": "FieldValueRequired", "message": "Required value", "field": format!("spec.{field}") }],
                })),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_fills_uuid_once() {
        let mut vm = json!({"spec": {"runStrategy": "Halted"}});
        mutate_vm_on_create(&mut vm);
        let u = vm["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(u.len(), 36);
        mutate_vm_on_create(&mut vm);
        assert_eq!(
            vm["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"],
            json!(u)
        );
    }

    #[test]
    fn legacy_uuid_is_v5() {
        let u = legacy_uuid("vm1");
        assert_eq!(u, legacy_uuid("vm1"));
        assert_eq!(&u[14..15], "5");
    }

    #[test]
    fn running_field() {
        let mut vm = json!({"spec": {"running": false}});
        assert_eq!(run_strategy(&vm), "Halted");
        set_run_strategy(&mut vm, "Always");
        assert_eq!(vm["spec"]["running"], json!(true));
        assert!(vm["spec"].get("runStrategy").is_none());
    }
}
