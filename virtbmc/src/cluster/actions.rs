//! What a BMC asks of the cluster: power through KubeVirt's `start`/`stop`/`restart`
//! subresources, boot devices through guarded JSON Patches, and a
//! Kubernetes Event on the VM for every refusal or failure so `kubectl describe vm` says why
//! (repeats aggregated into one Event, see [`events`]).

use std::sync::Arc;

use kube::api::PostParams;
use kube::core::Status;
use serde_json::{Value, json};

use super::{Shared, events, names, overrides};
use crate::engine::vm::PowerState;
use crate::engine::{Action, ActionError};

/// Runs `action`, answering by `deadline` (the action's one deadline, set by the driver). A
/// boot device change runs on in a task of its own past the deadline, until the VM and its
/// record agree ([`overrides`]): the deadline bounds the answer, never the work.
pub async fn perform(
    sh: &Arc<Shared>,
    ns: &str,
    vm: &str,
    action: Action,
    deadline: tokio::time::Instant,
) -> Result<(), ActionError> {
    check_names(ns, vm)?;
    let work = async {
        match action {
            Action::SetBoot(b) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let (owned, ns, vm) = (sh.clone(), ns.to_string(), vm.to_string());
                sh.spawn_work(async move {
                    let sh = &*owned;
                    let r = overrides::set_boot(sh, &ns, &vm, b).await;
                    if let Err(e) = &r {
                        let reason = match e {
                            ActionError::NotInState(_) | ActionError::Unsupported(_) => {
                                "IPMIBootDeviceRefused"
                            }
                            _ => "IPMIBootDeviceFailed",
                        };
                        events::record(sh, &ns, &vm, reason, &format!("IPMI {action}: {e}"));
                    }
                    // The requester may have stopped waiting: the work was done all the same.
                    let _ = tx.send(r);
                });
                rx.await
                    .unwrap_or_else(|_| Err(ActionError::Failed("the agent is stopping".into())))
            }
            power => power_action(sh, ns, vm, power).await,
        }
    };
    // A hung API server must not leave the client without an answer or the VM without a
    // trace: 0xC3 and an Event (the request itself may still land).
    let result = match tokio::time::timeout_at(deadline, work).await {
        Ok(r) => r,
        Err(_) => {
            let msg = match action {
                Action::SetBoot(_) => format!(
                    "IPMI {action}: not done before the deadline; the change carries on to its end"
                ),
                _ => format!("IPMI {action}: no answer from the API server before the deadline"),
            };
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
