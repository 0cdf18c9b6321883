//! core/v1 Pod rules of the real apiserver (`pkg/registry/core/pod/strategy.go`,
//! `pkg/apis/core/v1/defaults.go`, `pkg/apis/core/validation`): defaults, a new pod starts
//! `Pending`, the spec is all but immutable, and deletion of a scheduled pod is graceful.
//! There is no kubelet: a test moves a pod's status with `Handle::set_status` and ends a
//! graceful deletion with a DELETE of grace period 0.

use serde_json::{Value, json};

use crate::kinds::Kind;
use crate::status::ApiError;

/// `SetDefaults_PodSpec`: the defaults every decoded pod gets (idempotent: also on update).
pub fn default(obj: &mut Value) {
    if !obj["spec"].is_object() {
        obj["spec"] = json!({});
    }
    let spec = &mut obj["spec"];
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
    ] {
        if spec.get(k).is_none() {
            spec[k] = v;
        }
    }
}

/// `PrepareForCreate`: whatever status was sent, a new pod is `Pending`.
pub fn prepare_for_create(obj: &mut Value) {
    obj["status"] = json!({ "phase": "Pending" });
}

/// `ValidatePod`, the part a test can trip over: containers with a name and an image.
pub fn validate(obj: &Value) -> Result<(), ApiError> {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let invalid =
        |field: &str, cause: &str| ApiError::invalid(Kind::Pod.info(), name, field, cause);
    let containers = obj["spec"]["containers"].as_array();
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        return Err(invalid("spec.containers", "Required value"));
    };
    for (i, c) in containers.iter().enumerate() {
        for f in ["name", "image"] {
            if c[f].as_str().is_none_or(str::is_empty) {
                return Err(invalid(
                    &format!("spec.containers[{i}].{f}"),
                    "Required value",
                ));
            }
        }
    }
    Ok(())
}

/// `ValidatePodUpdate`: only images, activeDeadlineSeconds and tolerations may change.
pub fn validate_update(old: &Value, new: &Value) -> Result<(), ApiError> {
    let mutable_cleared = |spec: &Value| {
        let mut s = spec.clone();
        for list in ["containers", "initContainers"] {
            if let Some(cs) = s[list].as_array_mut() {
                for c in cs {
                    c["image"] = Value::Null;
                }
            }
        }
        if let Some(m) = s.as_object_mut() {
            m.remove("activeDeadlineSeconds");
            m.remove("tolerations");
        }
        s
    };
    if mutable_cleared(&old["spec"]) == mutable_cleared(&new["spec"]) {
        return Ok(());
    }
    Err(ApiError::invalid(
        Kind::Pod.info(),
        old["metadata"]["name"].as_str().unwrap_or(""),
        "spec",
        "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, \
         `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` \
         (only additions to existing tolerations)",
    ))
}

/// `CheckGracefulDelete`: the grace period a DELETE gets. The option, else the pod's
/// terminationGracePeriodSeconds; 0 for a pod never scheduled or already finished; a
/// negative one becomes 1.
pub fn grace_period(pod: &Value, options: &Value) -> i64 {
    let asked = options["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(0);
    let unscheduled = pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    let finished = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    match asked {
        _ if unscheduled || finished => 0,
        p if p < 0 => 1,
        p => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods() {
        let pod = |node: &str, phase: &str| {
            let mut p = json!({"spec": {"nodeName": node}, "status": {"phase": phase}});
            default(&mut p);
            p
        };
        assert_eq!(grace_period(&pod("n1", "Running"), &json!({})), 30);
        assert_eq!(
            grace_period(&pod("n1", "Running"), &json!({"gracePeriodSeconds": 0})),
            0
        );
        assert_eq!(
            grace_period(&pod("n1", "Running"), &json!({"gracePeriodSeconds": -5})),
            1
        );
        assert_eq!(grace_period(&pod("", "Pending"), &json!({})), 0);
        assert_eq!(grace_period(&pod("n1", "Failed"), &json!({})), 0);
    }

    #[test]
    fn spec_is_immutable_but_images() {
        let old = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a:1"}]}});
        let mut new = old.clone();
        new["spec"]["containers"][0]["image"] = json!("a:2");
        assert!(validate_update(&old, &new).is_ok());
        new["spec"]["nodeName"] = json!("n1");
        assert_eq!(validate_update(&old, &new).unwrap_err().code, 422);
        assert!(validate(&old).is_ok());
        assert_eq!(validate(&json!({"spec": {}})).unwrap_err().code, 422);
    }
}
