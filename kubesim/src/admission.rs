//! ValidatingAdmissionPolicies (`admissionregistration.k8s.io/v1`) and their bindings,
//! evaluated as the apiserver's `plugin/policy/validating` does for the requests they match:
//! the resource rules of `matchConstraints`, every `matchConditions` expression true, the
//! `variables` in order, then each validation; the first false one denies the request with
//! its message and reason (`Invalid` when none is given), as `dispatcher.go` writes it.
//!
//! CEL is evaluated by the `cel` crate over `object`, `oldObject`, `request` and
//! `variables` (with the optional syntax, `a.?b`, as Kubernetes enables it). Unsupported
//! parts of the API (params, binding match resources, audit annotations) are refused when
//! the policy is loaded rather than ignored.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::rbac::{Attributes, User};
use crate::status::ApiError;
use crate::util::strings;

const GROUP: &str = "admissionregistration.k8s.io/v1";

struct ResourceRule {
    groups: Vec<String>,
    versions: Vec<String>,
    operations: Vec<String>,
    resources: Vec<String>,
}

impl ResourceRule {
    fn matches(&self, operation: &str, a: &Attributes) -> bool {
        let any = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        any(&self.groups, &a.group)
            && any(&self.versions, &a.version)
            && any(&self.operations, operation)
            && self.resources.iter().any(|r| {
                r == "*" || *r == a.combined_resource() || (r == "*/*" && !a.subresource.is_empty())
            })
    }
}

struct Expr {
    source: String,
    program: cel::Program,
}

impl Expr {
    fn compile(env: &cel::Env, source: &str) -> Result<Expr, String> {
        let program = env
            .compile(source)
            .map_err(|e| format!("expression {source:?}: {e}"))?;
        Ok(Expr {
            source: source.to_string(),
            program,
        })
    }
}

struct Validation {
    expr: Expr,
    message: Option<String>,
    reason: String,
}

struct Policy {
    name: String,
    fail_closed: bool,
    rules: Vec<ResourceRule>,
    match_conditions: Vec<Expr>,
    variables: Vec<(String, Expr)>,
    validations: Vec<Validation>,
    /// Bindings with the `Deny` action.
    bindings: Vec<String>,
}

/// The policies of the objects a server was given.
#[derive(Default)]
pub struct Policies(Vec<Policy>);

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|p| &p.name))
            .finish()
    }
}

fn is_empty(v: &Value) -> bool {
    v.is_null() || v.as_object().is_some_and(|m| m.is_empty())
}

/// What a denial answers: `reasonToCode` of `dispatcher.go`.
fn code_of(reason: &str) -> u16 {
    match reason {
        "Unauthorized" => 401,
        "Forbidden" => 403,
        "RequestEntityTooLarge" => 413,
        _ => 422,
    }
}

impl Policies {
    /// The ValidatingAdmissionPolicies among `objects`, each with its bindings.
    pub fn from_objects(objects: &[Value]) -> Result<Policies, String> {
        let env = cel::Env::stdlib();
        let of_kind = |k: &'static str| {
            objects
                .iter()
                .filter(move |o| o["apiVersion"] == GROUP && o["kind"] == k)
        };
        let mut out = Vec::new();
        for p in of_kind("ValidatingAdmissionPolicy") {
            let name = p["metadata"]["name"].as_str().unwrap_or("").to_string();
            let spec = &p["spec"];
            let unsupported = |what: &str| format!("policy {name}: {what} is not supported");
            if !spec["paramKind"].is_null() {
                return Err(unsupported("paramKind"));
            }
            if !spec["auditAnnotations"].is_null() {
                return Err(unsupported("auditAnnotations"));
            }
            let mc = &spec["matchConstraints"];
            if !is_empty(&mc["namespaceSelector"])
                || !is_empty(&mc["objectSelector"])
                || !mc["excludeResourceRules"].is_null()
            {
                return Err(unsupported("a selector or excludeResourceRules"));
            }
            let rules = mc["resourceRules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| ResourceRule {
                    groups: strings(&r["apiGroups"]),
                    versions: strings(&r["apiVersions"]),
                    operations: strings(&r["operations"]),
                    resources: strings(&r["resources"]),
                })
                .collect();
            let exprs = |key: &str| -> Result<Vec<(String, Expr)>, String> {
                spec[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|x| {
                        let src = x["expression"].as_str().unwrap_or("");
                        let n = x["name"].as_str().unwrap_or("").to_string();
                        Expr::compile(&env, src)
                            .map(|e| (n, e))
                            .map_err(|e| format!("policy {name}: {e}"))
                    })
                    .collect()
            };
            let match_conditions = exprs("matchConditions")?
                .into_iter()
                .map(|(_, e)| e)
                .collect();
            let variables = exprs("variables")?;
            let validations = spec["validations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    if !v["messageExpression"].is_null() {
                        return Err(unsupported("messageExpression"));
                    }
                    Ok(Validation {
                        expr: Expr::compile(&env, v["expression"].as_str().unwrap_or(""))
                            .map_err(|e| format!("policy {name}: {e}"))?,
                        message: v["message"].as_str().map(String::from),
                        reason: v["reason"].as_str().unwrap_or("Invalid").to_string(),
                    })
                })
                .collect::<Result<_, String>>()?;
            let bindings = of_kind("ValidatingAdmissionPolicyBinding")
                .filter(|b| b["spec"]["policyName"].as_str() == Some(&name))
                .map(|b| {
                    let bname = b["metadata"]["name"].as_str().unwrap_or("").to_string();
                    if !b["spec"]["paramRef"].is_null() || !is_empty(&b["spec"]["matchResources"]) {
                        return Err(format!(
                            "binding {bname}: paramRef and matchResources are not supported"
                        ));
                    }
                    Ok((bname, strings(&b["spec"]["validationActions"])))
                })
                .collect::<Result<Vec<_>, String>>()?
                .into_iter()
                .filter(|(_, actions)| actions.iter().any(|a| a == "Deny"))
                .map(|(b, _)| b)
                .collect();
            out.push(Policy {
                fail_closed: spec["failurePolicy"].as_str() != Some("Ignore"),
                name,
                rules,
                match_conditions,
                variables,
                validations,
                bindings,
            });
        }
        Ok(Policies(out))
    }

    /// Admit or deny a write of `user` that turns `old` (None: a create) into `new`.
    pub fn admit(
        &self,
        user: &User,
        a: &Attributes,
        old: Option<&Value>,
        new: &Value,
    ) -> Result<(), ApiError> {
        let operation = match (a.verb.as_str(), old) {
            (_, None) => "CREATE",
            ("delete" | "deletecollection", _) => "DELETE",
            _ => "UPDATE",
        };
        for p in &self.0 {
            if p.bindings.is_empty() || !p.rules.iter().any(|r| r.matches(operation, a)) {
                continue;
            }
            if let Err(message) = p.evaluate(user, a, operation, old, new) {
                let (message, reason) = message;
                // One denial per binding; they all say the same, the first is answered.
                let binding = &p.bindings[0];
                let why = format!(
                    "ValidatingAdmissionPolicy '{}' with binding '{binding}' denied request: {message}",
                    p.name
                );
                let qualified = if a.group.is_empty() {
                    a.resource.clone()
                } else {
                    format!("{}.{}", a.resource, a.group)
                };
                let mut details = json!({ "kind": a.resource, "causes": [{ "message": why }] });
                if !a.name.is_empty() {
                    details["name"] = json!(a.name);
                }
                if !a.group.is_empty() {
                    details["group"] = json!(a.group);
                }
                log::info!("admission: {why}");
                return Err(ApiError {
                    code: code_of(&reason),
                    message: format!("{qualified} {:?} is forbidden: {why}", a.name),
                    reason,
                    details: Some(details),
                });
            }
        }
        Ok(())
    }
}

impl Policy {
    /// Ok if admitted (or not matched); else the denial's message and reason.
    fn evaluate(
        &self,
        user: &User,
        a: &Attributes,
        operation: &str,
        old: Option<&Value>,
        new: &Value,
    ) -> Result<(), (String, String)> {
        let request = json!({
            "operation": operation,
            "userInfo": { "username": user.name, "groups": user.groups },
            "name": a.name,
            "namespace": a.namespace,
            "resource": { "group": a.group, "version": a.version, "resource": a.resource },
            "subResource": a.subresource,
        });
        let mut ctx = cel::Context::default();
        let add = |ctx: &mut cel::Context, name: &str, v: &Value| {
            ctx.add_variable(name, v)
                .map_err(|e| (format!("{name}: {e}"), "InternalError".to_string()))
        };
        add(&mut ctx, "object", new)?;
        add(&mut ctx, "oldObject", old.unwrap_or(&Value::Null))?;
        add(&mut ctx, "request", &request)?;
        let failed = |e: &Expr, err: String| -> Result<(), (String, String)> {
            if self.fail_closed {
                Err((
                    format!("expression '{}' resulted in error: {err}", e.source),
                    "Invalid".into(),
                ))
            } else {
                Ok(())
            }
        };
        let mut variables: HashMap<String, cel::Value> = HashMap::new();
        ctx.add_variable_from_value("variables", variables.clone());
        for c in &self.match_conditions {
            match c.program.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => return Ok(()),
                Ok(other) => return failed(c, format!("not a bool: {other:?}")),
                Err(e) => return failed(c, e.to_string()),
            }
        }
        for (name, e) in &self.variables {
            match e.program.execute(&ctx) {
                Ok(v) => {
                    variables.insert(name.clone(), v);
                    ctx.add_variable_from_value("variables", variables.clone());
                }
                Err(err) => return failed(e, err.to_string()),
            }
        }
        for v in &self.validations {
            match v.expr.program.execute(&ctx) {
                Ok(cel::Value::Bool(true)) => {}
                Ok(cel::Value::Bool(false)) => {
                    let message = v
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("failed expression: {}", v.expr.source));
                    return Err((message, v.reason.clone()));
                }
                Ok(other) => return failed(&v.expr, format!("not a bool: {other:?}")),
                Err(err) => return failed(&v.expr, err.to_string()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(yaml: &str) -> Vec<Value> {
        let mut cfg = crate::rbac::AuthConfig::default();
        cfg.add_manifest(yaml).unwrap();
        cfg.objects
    }

    const POLICY: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {name: replicas}
spec:
  failurePolicy: FAILURE_POLICY
  matchConstraints:
    resourceRules:
      - {apiGroups: [apps], apiVersions: ["*"], operations: [UPDATE], resources: [deployments]}
  matchConditions:
    - {name: not-root, expression: "request.userInfo.username != 'root'"}
  variables:
    - {name: r, expression: "object.spec.replicas"}
  validations:
    - {expression: "variables.r <= 5", message: "at most 5", reason: Forbidden}
    - {expression: "object.spec.?paused == oldObject.spec.?paused"}
    - {expression: "object.spec.missing.field == 1"}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {name: replicas-binding}
spec: {policyName: replicas, validationActions: [Deny]}
"#;

    fn policies(failure: &str) -> Policies {
        Policies::from_objects(&objects(&POLICY.replace("FAILURE_POLICY", failure))).unwrap()
    }

    fn update(p: &Policies, user: &str, old: Value, new: Value) -> Result<(), ApiError> {
        let segs = ["apis", "apps", "v1", "namespaces", "ns", "deployments", "d"];
        let a = Attributes::of("PATCH", &segs, &[]).unwrap();
        p.admit(&User::parse(user).unwrap(), &a, Some(&old), &new)
    }

    #[test]
    fn validations_in_order_with_their_message_reason_and_code() {
        let p = policies("Fail");
        let e = update(
            &p,
            "u",
            json!({"spec": {"replicas": 1}}),
            json!({"spec": {"replicas": 6}}),
        )
        .unwrap_err();
        let why = "ValidatingAdmissionPolicy 'replicas' with binding 'replicas-binding' denied request: at most 5";
        assert_eq!(
            e.to_status(),
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("deployments.apps \"d\" is forbidden: {why}"),
                "reason": "Forbidden", "code": 403,
                "details": {"name": "d", "group": "apps", "kind": "deployments", "causes": [{"message": why}]},
            })
        );
        // No message, no reason: the expression, and Invalid (422).
        let e = update(
            &p,
            "u",
            json!({"spec": {"replicas": 1}}),
            json!({"spec": {"replicas": 2, "paused": true}}),
        )
        .unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
        assert!(
            e.message.ends_with(
                "denied request: failed expression: object.spec.?paused == oldObject.spec.?paused"
            ),
            "{}",
            e.message
        );
        // An expression that errors denies under failurePolicy Fail...
        let e = update(
            &p,
            "u",
            json!({"spec": {"replicas": 1}}),
            json!({"spec": {"replicas": 2}}),
        )
        .unwrap_err();
        assert!(e.message.contains("resulted in error"), "{}", e.message);
        // ...and is ignored under Ignore.
        update(
            &policies("Ignore"),
            "u",
            json!({"spec": {"replicas": 1}}),
            json!({"spec": {"replicas": 2}}),
        )
        .unwrap();
        // A false match condition: not this policy's request.
        update(
            &p,
            "root",
            json!({"spec": {}}),
            json!({"spec": {"replicas": 50}}),
        )
        .unwrap();
        // Another resource, or a create: not matched.
        let segs = [
            "apis",
            "apps",
            "v1",
            "namespaces",
            "ns",
            "statefulsets",
            "s",
        ];
        let a = Attributes::of("PATCH", &segs, &[]).unwrap();
        let u = User::parse("u").unwrap();
        p.admit(&u, &a, Some(&json!({})), &json!({"spec": {"replicas": 50}}))
            .unwrap();
        let segs = ["apis", "apps", "v1", "namespaces", "ns", "deployments"];
        let a = Attributes::of("POST", &segs, &[]).unwrap();
        p.admit(&u, &a, None, &json!({"spec": {"replicas": 50}}))
            .unwrap();
    }

    #[test]
    fn unbound_or_warn_only_policies_deny_nothing_and_unsupported_fields_are_refused() {
        let warn = POLICY
            .replace("FAILURE_POLICY", "Fail")
            .replace("validationActions: [Deny]", "validationActions: [Warn]");
        let p = Policies::from_objects(&objects(&warn)).unwrap();
        update(
            &p,
            "u",
            json!({"spec": {"replicas": 1}}),
            json!({"spec": {"replicas": 9}}),
        )
        .unwrap();
        for (from, to) in [
            (
                "failurePolicy: FAILURE_POLICY",
                "paramKind: {apiVersion: v1, kind: ConfigMap}",
            ),
            (
                "spec: {policyName: replicas,",
                "spec: {matchResources: {namespaceSelector: {matchLabels: {a: b}}}, policyName: replicas,",
            ),
            (
                "{expression: \"variables.r <= 5\", message: \"at most 5\"",
                "{expression: \"variables.r <= 5\", messageExpression: \"'x'\"",
            ),
            ("variables.r <= 5", "variables.r <="),
        ] {
            assert!(POLICY.contains(from), "{from}");
            let y = POLICY.replace(from, to).replace("FAILURE_POLICY", "Fail");
            assert!(Policies::from_objects(&objects(&y)).is_err(), "{to}");
        }
    }
}
