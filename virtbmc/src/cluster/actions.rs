//! What a BMC asks of the cluster: power through KubeVirt's `start`/`stop`/`restart`
//! subresources, boot devices through guarded JSON Patches, and a
//! Kubernetes Event on the VM for every refusal or failure so `kubectl describe vm` says why
//! (repeats aggregated into one Event, see [`events`]).

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::Status;
use serde_json::{Value, json};

use super::boot::{self, PlanError};
use super::crd::BootOverrideStatus;
use super::events;
use super::serve::object_json;
use super::{Shared, VirtualMachineBMC, labeled, names, vm_resource};
use crate::engine::vm::{BootDevice, BootOverride, PowerState};
use crate::engine::{Action, ActionError};

/// A 422 on the boot-order patch means someone else changed the devices: re-read, retry.
const BOOT_ATTEMPTS: usize = 4;

/// Runs `action`, answering by `deadline` (the action's one deadline, set by the driver).
pub async fn perform(
    sh: &Shared,
    ns: &str,
    vm: &str,
    action: Action,
    deadline: tokio::time::Instant,
) -> Result<(), ActionError> {
    check_names(ns, vm)?;
    let work = async {
        match action {
            Action::SetBoot(b) => {
                let r = set_boot(sh, ns, vm, b).await;
                if let Err(e) = &r {
                    let reason = match e {
                        ActionError::NotInState(_) | ActionError::Unsupported(_) => {
                            "IPMIBootDeviceRefused"
                        }
                        _ => "IPMIBootDeviceFailed",
                    };
                    events::record(sh, ns, vm, reason, &format!("IPMI {action}: {e}"));
                }
                r
            }
            power => power_action(sh, ns, vm, power).await,
        }
    };
    // A hung API server must not leave the client without an answer or the VM without a
    // trace: 0xC3 and an Event (the request itself may still land).
    let result = match tokio::time::timeout_at(deadline, work).await {
        Ok(r) => r,
        Err(_) => {
            let msg = format!("IPMI {action}: no answer from the API server before the deadline");
            events::record(sh, ns, vm, "IPMIActionTimeout", &msg);
            Err(ActionError::Timeout)
        }
    };
    match &result {
        Ok(()) => log::info!("vm={ns}/{vm} action={action} accepted"),
        Err(e) => log::warn!("vm={ns}/{vm} action={action} refused: {e}"),
    }
    result
}

/// The subresource and body for each power action: on = start;
/// off and soft = stop with the VM's own grace period; hard reset = restart with grace 0;
/// cycle = restart (graceful).
fn subresource(action: Action) -> (&'static str, Value) {
    match action {
        Action::PowerOn => ("start", json!({})),
        Action::PowerOff | Action::SoftOff => ("stop", json!({})),
        Action::HardReset => ("restart", json!({"gracePeriodSeconds": 0})),
        _ => ("restart", json!({})),
    }
}

/// How KubeVirt's answer reads to a BMC client. A physical BMC asked for the state its
/// machine is already in says yes: KubeVirt's 409 "VM is already running" to a start and
/// "VM is not running" to a stop are successes. Other 409s are refusals in this state; a
/// start/stop already underway is a transition (busy); anything else is a failure.
pub fn classify(sub: &str, status: &Status) -> Result<(), ActionError> {
    let msg = status.message.as_str();
    match status.code {
        409 if sub == "start" && msg.contains("VM is already running") => Ok(()),
        // Exactly "not running": "VM is not running: Halted" (a restart) is a refusal.
        409 if sub == "stop" && msg.ends_with("VM is not running") => Ok(()),
        409 => Err(ActionError::NotInState(msg.to_string())),
        500 if msg.contains("already underway") => Err(ActionError::Busy),
        _ => Err(ActionError::Failed(format!(
            "{} {}: {msg}",
            status.code, status.reason
        ))),
    }
}

/// Refuses as busy what KubeVirt would act on badly during a transition (the driver tries
/// again once it ends); a stop may cut a start short, as a chassis cuts power during power-on.
async fn power_action(sh: &Shared, ns: &str, vm: &str, action: Action) -> Result<(), ActionError> {
    let power = sh.view(&format!("{ns}/{vm}")).map(|v| v.power);
    let cuts_start = action == Action::PowerOff && power == Some(PowerState::Starting);
    if power.is_some_and(PowerState::in_transition) && !cuts_start {
        return Err(ActionError::Busy);
    }
    let (sub, body) = subresource(action);
    let url = format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachines");
    let body = serde_json::to_vec(&body).expect("serialisable");
    let req = kube::core::Request::new(url)
        .replace_subresource(sub, vm, &PostParams::default(), body)
        .map_err(|e| ActionError::Failed(e.to_string()))?;
    let err = match sh.call(sh.client.request_text(req)).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(status)) => classify(sub, &status),
        Err(e) => Err(ActionError::Failed(e.to_string())),
    };
    if let Err(e) = &err {
        let reason = match e {
            ActionError::NotInState(_) => "IPMIActionRefused",
            ActionError::Busy => return err,
            _ => "IPMIActionFailed",
        };
        events::record(sh, ns, vm, reason, &format!("IPMI {action} ({sub}): {e}"));
    }
    err
}

/// kube-rs puts names into request paths unescaped: only names an object can have go there.
fn check_names(ns: &str, vm: &str) -> Result<(), ActionError> {
    if names::is_label(ns) && names::is_subdomain(vm) {
        Ok(())
    } else {
        Err(ActionError::Failed(
            "not a namespace and VirtualMachine name".into(),
        ))
    }
}

fn api_failed(what: &str, e: kube::Error) -> ActionError {
    ActionError::Failed(format!("{what}: {e}"))
}

/// Sets or clears the boot override: the VM's boot orders (and bootloader for the EFI flag)
/// now, and `status.bootOverride` on the VirtualMachineBMC so that the override reads back
/// and a one-shot one is undone after the next start (by the leader, see `leader.rs`).
///
/// The EFI flag switches a BIOS VM to EFI (the original firmware is recorded and restored
/// with a one-shot override); a clear flag leaves an EFI VM as it is, because most clients
/// never set it, and switching an EFI-installed guest to BIOS would leave it unbootable.
async fn set_boot(
    sh: &Shared,
    ns: &str,
    vm: &str,
    want: Option<BootOverride>,
) -> Result<(), ActionError> {
    let bmc = sh
        .owner(&format!("{ns}/{vm}"))
        .ok_or_else(|| ActionError::Failed(format!("no VirtualMachineBMC for {ns}/{vm}")))?;
    let existing = bmc.status.as_ref().and_then(|s| s.boot_override.clone());
    let vms: Api<DynamicObject> = Api::namespaced_with(sh.client.clone(), ns, &vm_resource());
    let Some(want) = want else {
        // Clearing: a pending one-shot override is undone now; a persistent one stays as
        // the VM's own order (it was meant to last), only the record goes.
        if let Some(o) = existing.as_ref().filter(|o| o.mode == "Oneshot") {
            restore_orders(sh, ns, vm, o).await?;
        }
        if existing.is_some() {
            write_override(sh, &bmc, None).await?;
        }
        return Ok(());
    };
    if want.device == BootDevice::Bios {
        return Err(ActionError::Unsupported(
            "KubeVirt cannot enter firmware setup".into(),
        ));
    }
    let mut last = String::new();
    for _ in 0..BOOT_ATTEMPTS {
        let obj = vms.get(vm).await.map_err(|e| api_failed("read VM", e))?;
        let vm_json = object_json(&obj);
        // Successive one-shot overrides keep the orders from before the first one.
        let baseline = match existing.as_ref().filter(|o| o.mode == "Oneshot") {
            Some(o) => o.boot_orders.clone(),
            None => boot::current_orders(&vm_json),
        };
        let orders = boot::plan(&vm_json, want.device).map_err(|e| match e {
            PlanError::NoDevice(d) => ActionError::NotInState(format!("the VM has no {d} device")),
            PlanError::Unsupported(d) => ActionError::Unsupported(format!("boot from {d}")),
        })?;
        let was_efi = boot::is_efi(&vm_json);
        let bootloader = (want.efi && !was_efi).then(|| json!({"efi": {}}));
        let original_firmware = existing
            .as_ref()
            .filter(|o| o.mode == "Oneshot")
            .and_then(|o| o.original_firmware.clone())
            .or_else(|| {
                bootloader
                    .as_ref()
                    .map(|_| if was_efi { "UEFI" } else { "Legacy" }.to_string())
            });
        if let Some(p) = boot::patch(&vm_json, &orders, bootloader) {
            match sh
                .call(vms.patch(vm, &PatchParams::default(), &Patch::Json::<()>(p)))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => {
                    log::info!(
                        "vm={ns}/{vm} boot order changed meanwhile ({}); re-reading",
                        s.code
                    );
                    last = s.message.clone();
                    continue;
                }
                Err(e) => return Err(api_failed("patch VM boot order", e)),
            }
        }
        let vmi_uid = sh
            .stores
            .vmi(ns, vm)
            .and_then(|o| o.metadata.uid.clone())
            .unwrap_or_default();
        let record = BootOverrideStatus {
            mode: if want.persistent {
                "Persistent"
            } else {
                "Oneshot"
            }
            .into(),
            vmi_uid,
            boot_orders: baseline,
            original_firmware,
            device: boot::device_name(want.device).into(),
            efi: want.efi,
        };
        return write_override(sh, &bmc, Some(record)).await;
    }
    Err(ActionError::Failed(format!(
        "boot order kept changing under us: {last}"
    )))
}

/// Puts back the orders (and firmware) recorded in a one-shot override.
pub async fn restore_orders(
    sh: &Shared,
    ns: &str,
    vm: &str,
    o: &BootOverrideStatus,
) -> Result<(), ActionError> {
    check_names(ns, vm)?;
    let vms: Api<DynamicObject> = Api::namespaced_with(sh.client.clone(), ns, &vm_resource());
    for _ in 0..BOOT_ATTEMPTS {
        let obj = match vms.get(vm).await {
            Ok(o) => o,
            // The VM is gone: nothing to restore.
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(api_failed("read VM", e)),
        };
        let vm_json = object_json(&obj);
        let bootloader = match o.original_firmware.as_deref() {
            Some("Legacy") => Some(json!({"bios": {}})),
            Some("UEFI") => Some(json!({"efi": {}})),
            _ => None,
        };
        let Some(p) = boot::patch(&vm_json, &o.boot_orders, bootloader) else {
            return Ok(());
        };
        match sh
            .call(vms.patch(vm, &PatchParams::default(), &Patch::Json::<()>(p)))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => continue,
            Err(e) => return Err(api_failed("restore VM boot order", e)),
        }
    }
    Err(ActionError::Failed(
        "boot order kept changing while restoring it".into(),
    ))
}

/// Writes (or removes) `status.bootOverride` with a merge patch on the status subresource.
pub async fn write_override(
    sh: &Shared,
    bmc: &VirtualMachineBMC,
    o: Option<BootOverrideStatus>,
) -> Result<(), ActionError> {
    if labeled::is_synthesized(bmc) {
        return labeled::write_override(sh, bmc, o.as_ref()).await;
    }
    let ns = bmc.metadata.namespace.clone().unwrap_or_default();
    let name = bmc.metadata.name.clone().unwrap_or_default();
    let api: Api<VirtualMachineBMC> = Api::namespaced(sh.client.clone(), &ns);
    let patch = json!({"status": {"bootOverride": o}});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| api_failed("record boot override", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(code: u16, msg: &str) -> Status {
        Status::failure(msg, "Conflict").with_code(code)
    }

    #[test]
    fn kubevirt_answers_as_a_bmc_would() {
        let already = "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"vm1\": VM is already running";
        assert_eq!(classify("start", &st(409, already)), Ok(()));
        let not_running = "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"vm1\": VM is not running";
        assert_eq!(classify("stop", &st(409, not_running)), Ok(()));
        assert!(matches!(
            classify("restart", &st(409, &format!("{not_running}: Halted"))),
            Err(ActionError::NotInState(_))
        ));
        assert!(matches!(
            classify(
                "start",
                &st(409, "Always does not support manual start requests")
            ),
            Err(ActionError::NotInState(_))
        ));
        assert_eq!(
            classify(
                "stop",
                &st(
                    500,
                    "Internal error occurred: unable to complete request: stop/start already underway"
                )
            ),
            Err(ActionError::Busy)
        );
        assert!(matches!(
            classify("start", &st(500, "Internal error occurred: boom")),
            Err(ActionError::Failed(_))
        ));
        assert!(matches!(
            classify("start", &st(404, "not found")),
            Err(ActionError::Failed(_))
        ));
    }
}
