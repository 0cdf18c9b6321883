//! Bearer-token authentication and RBAC authorization, decided as the apiserver decides:
//! request attributes as `k8s.io/apiserver/pkg/endpoints/request/requestinfo.go` derives
//! them, rules matched as `plugin/pkg/auth/authorizer/rbac/rbac.go` and
//! `pkg/apis/rbac/v1/evaluation_helpers.go` match them (ClusterRoleBindings first, then the
//! RoleBindings of the request's namespace; the first rule that allows wins), and the
//! refusal written as `endpoints/handlers/responsewriters/errors.go` writes it.
//!
//! Every allowed request records which rule allowed it, and every refusal is kept, so that
//! a test can list the grants of a policy that nothing used and the requests it refused.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use serde_json::{Value, json};

use crate::status::ApiError;
use crate::util::strings;

/// The group whose members the apiserver never asks RBAC about (cluster-admin's own group).
pub const SUPERUSER_GROUP: &str = "system:masters";

/// Who sent a request, as the token authenticator maps its bearer token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// `NAME[,GROUP...]`. A ServiceAccount's user (`system:serviceaccount:NS:NAME`) also gets
    /// `system:serviceaccounts` and `system:serviceaccounts:NS`, as its token would; everyone
    /// gets `system:authenticated`.
    pub fn parse(spec: &str) -> Option<User> {
        let mut parts = spec.split(',').map(str::trim);
        let name = parts.next().filter(|n| !n.is_empty())?.to_string();
        let mut groups: Vec<String> = parts.filter(|g| !g.is_empty()).map(String::from).collect();
        if let Some(rest) = name.strip_prefix("system:serviceaccount:") {
            let (ns, sa) = rest.split_once(':')?;
            if ns.is_empty() || sa.is_empty() {
                return None;
            }
            groups.push("system:serviceaccounts".into());
            groups.push(format!("system:serviceaccounts:{ns}"));
        }
        groups.push("system:authenticated".into());
        Some(User { name, groups })
    }

    fn is_superuser(&self) -> bool {
        self.groups.iter().any(|g| g == SUPERUSER_GROUP)
    }
}

/// What authentication and authorization need: tokens and the RBAC objects to enforce.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// Bearer token -> user (`NAME[,GROUP...]`, see [`User::parse`]).
    pub tokens: Vec<(String, String)>,
    /// Roles, ClusterRoles, RoleBindings and ClusterRoleBindings, ValidatingAdmissionPolicies
    /// and their bindings (other objects are ignored).
    pub objects: Vec<Value>,
}

impl AuthConfig {
    /// Take the RBAC objects of a multi-document YAML manifest.
    pub fn add_manifest(&mut self, yaml: &str) -> Result<(), String> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| e.to_string())?;
        self.objects
            .extend(docs.into_iter().filter(|d| !d.is_null()));
        Ok(())
    }

    /// [`AuthConfig::add_manifest`] on a file.
    pub fn add_manifest_file(&mut self, path: &std::path::Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.add_manifest(&text)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// `TOKEN=NAME[,GROUP...]`.
    pub fn add_token(&mut self, spec: &str) -> Result<(), String> {
        let (token, user) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: expected TOKEN=USER[,GROUP...]"))?;
        User::parse(user).ok_or_else(|| format!("{spec:?}: not a user name"))?;
        self.tokens.push((token.to_string(), user.to_string()));
        Ok(())
    }
}

/// One PolicyRule.
#[derive(Clone, Debug, Default)]
struct Rule {
    verbs: Vec<String>,
    api_groups: Vec<String>,
    resources: Vec<String>,
    resource_names: Vec<String>,
}

/// A Role (namespace set) or ClusterRole.
#[derive(Clone, Debug)]
struct Role {
    namespace: Option<String>,
    name: String,
    rules: Vec<Rule>,
}

impl Role {
    fn label(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("Role {ns}/{}", self.name),
            None => format!("ClusterRole {}", self.name),
        }
    }
}

#[derive(Clone, Debug)]
enum Subject {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

impl Subject {
    /// `appliesTo` of rbac.go.
    fn applies_to(&self, user: &User) -> bool {
        match self {
            Subject::User(n) => *n == user.name,
            Subject::Group(g) => user.groups.iter().any(|ug| ug == g),
            Subject::ServiceAccount { namespace, name } => {
                user.name == format!("system:serviceaccount:{namespace}:{name}")
            }
        }
    }
}

/// A RoleBinding (namespace set) or ClusterRoleBinding.
#[derive(Clone, Debug)]
struct Binding {
    namespace: Option<String>,
    /// Index into the roles, None when the referenced role does not exist (grants nothing).
    role: Option<usize>,
    subjects: Vec<Subject>,
}

/// What a request asks to do (`authorizer.Attributes` of a resource request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    /// "" at the cluster scope.
    pub namespace: String,
    /// "" for collections (unless a list or watch names one object by field selector).
    pub name: String,
}

impl Attributes {
    /// `resource/subresource`, as rules name it.
    pub fn combined_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// The attributes of a request under `/api` or `/apis`; None for everything else
    /// (discovery, `/version`, health: non-resource URLs).
    pub fn of(method: &str, segs: &[&str], query: &[(String, String)]) -> Option<Attributes> {
        let (group, version, rest) = match segs {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return None,
        };
        // requestinfo.go: `namespaces/NS/...` scopes the rest; `namespaces/NS` alone is the
        // Namespace object itself.
        let (namespace, parts) = match rest {
            ["namespaces", ns, more @ ..] if !more.is_empty() => (*ns, more),
            _ => ("", rest),
        };
        let (resource, name, subresource) = match parts {
            [] => return None,
            [r] => (*r, "", ""),
            [r, n] => (*r, *n, ""),
            [r, n, s, ..] => (*r, *n, *s),
        };
        let param = |k: &str| {
            query
                .iter()
                .rev()
                .find(|(q, _)| q == k)
                .map(|(_, v)| v.as_str())
        };
        let mut name = name.to_string();
        let verb = match method {
            "GET" | "HEAD" if !name.is_empty() => "get",
            "GET" | "HEAD" if matches!(param("watch"), Some("true" | "1")) => "watch",
            "GET" | "HEAD" => "list",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" if !name.is_empty() => "delete",
            "DELETE" => "deletecollection",
            _ => "",
        };
        // A list or watch of one object by `metadata.name` field selector is authorized for
        // that name, so that resourceNames can allow it.
        if matches!(verb, "list" | "watch")
            && let Some(sel) = param("fieldSelector")
            && let Some(v) = sel
                .strip_prefix("metadata.name==")
                .or_else(|| sel.strip_prefix("metadata.name="))
            && !v.contains(',')
        {
            name = v.to_string();
        }
        Some(Attributes {
            verb: verb.into(),
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name,
        })
    }
}

/// One grant: a verb on a resource of a group, by one rule of one role. A rule's lists are
/// a product; each combination is a grant of its own.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// `ClusterRole NAME` or `Role NS/NAME`.
    pub role: String,
    /// The rule's index in the role.
    pub rule: usize,
    pub verb: String,
    pub group: String,
    /// As the rule writes it (`virtualmachines/start`, `*`...).
    pub resource: String,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(
            f,
            "{} rule {}: {} {} ({g})",
            self.role, self.rule, self.verb, self.resource
        )
    }
}

/// A refused request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub user: String,
    pub method: String,
    pub uri: String,
    pub message: String,
}

/// Tokens, the policy, and what it allowed and refused so far.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: HashMap<String, User>,
    roles: Vec<Role>,
    bindings: Vec<Binding>,
    used: Mutex<HashMap<String, BTreeSet<Grant>>>,
    denied: Mutex<Vec<Denial>>,
    /// The ValidatingAdmissionPolicies among the objects.
    pub policies: crate::admission::Policies,
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> Result<Auth, String> {
        let mut auth = Auth {
            policies: crate::admission::Policies::from_objects(&cfg.objects)?,
            ..Auth::default()
        };
        for (token, spec) in &cfg.tokens {
            let user = User::parse(spec).ok_or_else(|| format!("{spec:?}: not a user name"))?;
            auth.tokens.insert(token.clone(), user);
        }
        let kind_of = |o: &Value| -> (String, String) {
            (
                o["apiVersion"].as_str().unwrap_or("").to_string(),
                o["kind"].as_str().unwrap_or("").to_string(),
            )
        };
        const RBAC: &str = "rbac.authorization.k8s.io/v1";
        for o in &cfg.objects {
            let (av, kind) = kind_of(o);
            if av != RBAC || !matches!(kind.as_str(), "Role" | "ClusterRole") {
                continue;
            }
            let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
            let namespace = (kind == "Role").then(|| {
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string()
            });
            let rules = o["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| Rule {
                    verbs: strings(&r["verbs"]),
                    api_groups: strings(&r["apiGroups"]),
                    resources: strings(&r["resources"]),
                    resource_names: strings(&r["resourceNames"]),
                })
                .collect();
            auth.roles.push(Role {
                namespace,
                name,
                rules,
            });
        }
        for o in &cfg.objects {
            let (av, kind) = kind_of(o);
            if av != RBAC || !matches!(kind.as_str(), "RoleBinding" | "ClusterRoleBinding") {
                continue;
            }
            let namespace = (kind == "RoleBinding").then(|| {
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string()
            });
            let rr = &o["roleRef"];
            let rname = rr["name"].as_str().unwrap_or("");
            // A RoleBinding's Role is in the binding's namespace; a ClusterRoleBinding may
            // only refer to a ClusterRole.
            let want_ns = match rr["kind"].as_str() {
                Some("ClusterRole") => None,
                Some("Role") if namespace.is_some() => namespace.clone(),
                _ => continue,
            };
            let role = auth
                .roles
                .iter()
                .position(|r| r.name == rname && r.namespace == want_ns);
            let subjects = o["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| {
                    let name = s["name"].as_str()?.to_string();
                    Some(match s["kind"].as_str()? {
                        "User" => Subject::User(name),
                        "Group" => Subject::Group(name),
                        "ServiceAccount" => Subject::ServiceAccount {
                            // A RoleBinding's ServiceAccount subject defaults to its namespace.
                            namespace: s["namespace"]
                                .as_str()
                                .map(String::from)
                                .or_else(|| namespace.clone())?,
                            name,
                        },
                        _ => return None,
                    })
                })
                .collect();
            auth.bindings.push(Binding {
                namespace,
                role,
                subjects,
            });
        }
        Ok(auth)
    }

    /// The user of an `Authorization` header; 401 without one or for a token no one has.
    pub fn authenticate(&self, header: Option<&str>) -> Result<User, ApiError> {
        header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .and_then(|t| self.tokens.get(t))
            .cloned()
            .ok_or_else(ApiError::unauthorized)
    }

    /// Allow (recording the grant used) or refuse (recording the refusal) a resource request.
    pub fn authorize(
        &self,
        user: &User,
        attrs: &Attributes,
        method: &str,
        uri: &str,
    ) -> Result<(), ApiError> {
        if user.is_superuser() {
            return Ok(());
        }
        match self.allowing_grant(user, attrs) {
            Some(g) => {
                self.used
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(user.name.clone())
                    .or_default()
                    .insert(g);
                Ok(())
            }
            None => {
                let e = ApiError::forbidden(user, attrs);
                log::info!("forbidden: {method} {uri}: {}", e.message);
                self.denied
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Denial {
                        user: user.name.clone(),
                        method: method.into(),
                        uri: uri.into(),
                        message: e.message.clone(),
                    });
                Err(e)
            }
        }
    }

    /// The first rule allowing the request, in the apiserver's order: every
    /// ClusterRoleBinding, then the RoleBindings of the request's namespace.
    fn allowing_grant(&self, user: &User, a: &Attributes) -> Option<Grant> {
        let cluster = self.bindings.iter().filter(|b| b.namespace.is_none());
        let local = self
            .bindings
            .iter()
            .filter(|b| !a.namespace.is_empty() && b.namespace.as_deref() == Some(&a.namespace));
        cluster
            .chain(local)
            .filter(|b| b.subjects.iter().any(|s| s.applies_to(user)))
            .filter_map(|b| b.role.map(|r| &self.roles[r]))
            .find_map(|role| {
                role.rules
                    .iter()
                    .enumerate()
                    .find_map(|(i, rule)| rule_allows(rule, a).map(|g| (i, g)))
                    .map(|(rule, (verb, group, resource))| Grant {
                        role: role.label(),
                        rule,
                        verb,
                        group,
                        resource,
                    })
            })
    }

    /// Every grant the policy gives `user` (through the bindings naming it).
    pub fn grants_of(&self, user: &User) -> BTreeSet<Grant> {
        let mut out = BTreeSet::new();
        for b in &self.bindings {
            if !b.subjects.iter().any(|s| s.applies_to(user)) {
                continue;
            }
            let Some(role) = b.role.map(|r| &self.roles[r]) else {
                continue;
            };
            for (i, rule) in role.rules.iter().enumerate() {
                for verb in &rule.verbs {
                    for group in &rule.api_groups {
                        for resource in &rule.resources {
                            out.insert(Grant {
                                role: role.label(),
                                rule: i,
                                verb: verb.clone(),
                                group: group.clone(),
                                resource: resource.clone(),
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// The grants that allowed at least one request of `user`.
    pub fn used_by(&self, user: &str) -> BTreeSet<Grant> {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    pub fn denials(&self) -> Vec<Denial> {
        self.denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// `RuleAllows`: the rule's own verb, group and resource entries that matched (so that a
/// wildcard entry is the grant used), or None.
fn rule_allows(rule: &Rule, a: &Attributes) -> Option<(String, String, String)> {
    let verb = rule.verbs.iter().find(|v| *v == "*" || **v == a.verb)?;
    let group = rule
        .api_groups
        .iter()
        .find(|g| *g == "*" || **g == a.group)?;
    let combined = a.combined_resource();
    let resource = rule.resources.iter().find(|r| {
        *r == "*"
            || **r == combined
            || (!a.subresource.is_empty() && **r == format!("*/{}", a.subresource))
    })?;
    if !rule.resource_names.is_empty() && !rule.resource_names.contains(&a.name) {
        return None;
    }
    Some((verb.clone(), group.clone(), resource.clone()))
}

impl ApiError {
    /// What the apiserver answers a request without valid credentials.
    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// `NewForbidden` as `responsewriters.Forbidden` fills it for a refused resource request.
    pub fn forbidden(user: &User, a: &Attributes) -> Self {
        let qualified = if a.group.is_empty() {
            a.resource.clone()
        } else {
            format!("{}.{}", a.resource, a.group)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", a.namespace)
        };
        let why = format!(
            "User {:?} cannot {} resource {:?} in API group {:?} {scope}",
            user.name,
            a.verb,
            a.combined_resource(),
            a.group
        );
        let message = if a.name.is_empty() {
            format!("{qualified} is forbidden: {why}")
        } else {
            format!("{qualified} {:?} is forbidden: {why}", a.name)
        };
        // StatusDetails fields are omitempty.
        let mut details = json!({ "kind": a.resource });
        if !a.name.is_empty() {
            details["name"] = json!(a.name);
        }
        if !a.group.is_empty() {
            details["group"] = json!(a.group);
        }
        ApiError {
            code: 403,
            reason: "Forbidden".into(),
            message,
            details: Some(details),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SA: &str = "system:serviceaccount:ops:agent";

    fn auth() -> Auth {
        let mut cfg = AuthConfig::default();
        cfg.add_token(&format!("t1={SA}")).unwrap();
        cfg.add_token("t2=root,system:masters").unwrap();
        cfg.add_token("t3=alice").unwrap();
        cfg.add_manifest(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: vms}
rules:
  - apiGroups: [kubevirt.io]
    resources: [virtualmachines]
    verbs: [get, list]
  - apiGroups: [subresources.kubevirt.io]
    resources: [virtualmachines/start]
    verbs: [update]
  - apiGroups: ["*"]
    resources: ["*/status"]
    verbs: [patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: vms}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: vms}
subjects: [{kind: ServiceAccount, name: agent, namespace: ops}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: creds, namespace: ops}
rules:
  - apiGroups: [""]
    resources: [secrets]
    resourceNames: [creds]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: creds, namespace: ops}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: creds}
subjects: [{kind: ServiceAccount, name: agent}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-reads-vms, namespace: dev}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: vms}
subjects: [{kind: User, name: alice}]
"#,
        )
        .unwrap();
        Auth::new(&cfg).unwrap()
    }

    fn attrs(method: &str, path: &str, query: &[(&str, &str)]) -> Attributes {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let q: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Attributes::of(method, &segs, &q).unwrap()
    }

    fn check(
        a: &Auth,
        token: &str,
        method: &str,
        path: &str,
        q: &[(&str, &str)],
    ) -> Result<(), ApiError> {
        let user = a.authenticate(Some(&format!("Bearer {token}")))?;
        a.authorize(&user, &attrs(method, path, q), method, path)
    }

    #[test]
    fn verbs_from_methods_and_paths() {
        let a = attrs(
            "GET",
            "/apis/kubevirt.io/v1/namespaces/x/virtualmachines",
            &[("watch", "true")],
        );
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_str(), a.name.as_str()),
            ("watch", "x", "")
        );
        let a = attrs("GET", "/apis/kubevirt.io/v1/virtualmachines", &[]);
        assert_eq!((a.verb.as_str(), a.namespace.as_str()), ("list", ""));
        let a = attrs(
            "PUT",
            "/apis/bmc.kubevirt.io/v1beta1/namespaces/x/virtualmachinebmcs/b/status",
            &[],
        );
        assert_eq!(a.combined_resource(), "virtualmachinebmcs/status");
        assert_eq!(a.verb, "update");
        assert_eq!(
            attrs("DELETE", "/api/v1/namespaces/x/pods", &[]).verb,
            "deletecollection"
        );
        assert_eq!(
            attrs("DELETE", "/api/v1/namespaces/x/pods/p", &[]).verb,
            "delete"
        );
        assert_eq!(
            attrs("PATCH", "/api/v1/namespaces/x/pods/p", &[]).verb,
            "patch"
        );
        assert_eq!(
            attrs("POST", "/api/v1/namespaces/x/pods", &[]).verb,
            "create"
        );
        let a = attrs(
            "GET",
            "/api/v1/namespaces/x/secrets",
            &[("fieldSelector", "metadata.name=s")],
        );
        assert_eq!((a.verb.as_str(), a.name.as_str()), ("list", "s"));
        for sel in ["metadata.name==s", "metadata.name=s,type=x"] {
            let a = attrs(
                "GET",
                "/api/v1/secrets",
                &[("fieldSelector", sel), ("watch", "true")],
            );
            let want = if sel.contains(',') { "" } else { "s" };
            assert_eq!((a.verb.as_str(), a.name.as_str()), ("watch", want), "{sel}");
        }
        let a = attrs("GET", "/api/v1/namespaces/x", &[]);
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("namespaces", "x", "")
        );
        let segs = ["apis"];
        assert!(Attributes::of("GET", &segs, &[]).is_none());
    }

    #[test]
    fn cluster_role_rules_subresources_and_wildcards() {
        let a = auth();
        check(
            &a,
            "t1",
            "GET",
            "/apis/kubevirt.io/v1/namespaces/any/virtualmachines/v",
            &[],
        )
        .unwrap();
        check(
            &a,
            "t1",
            "PUT",
            "/apis/subresources.kubevirt.io/v1/namespaces/any/virtualmachines/v/start",
            &[],
        )
        .unwrap();
        check(
            &a,
            "t1",
            "PATCH",
            "/apis/bmc.kubevirt.io/v1beta1/namespaces/any/virtualmachinebmcs/b/status",
            &[],
        )
        .unwrap();
        // The subresource is not the resource, nor another subresource.
        let e = check(
            &a,
            "t1",
            "PUT",
            "/apis/subresources.kubevirt.io/v1/namespaces/any/virtualmachines/v/stop",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            check(
                &a,
                "t1",
                "PATCH",
                "/apis/bmc.kubevirt.io/v1beta1/namespaces/any/virtualmachinebmcs/b",
                &[]
            )
            .is_err()
        );
        let e = check(
            &a,
            "t1",
            "DELETE",
            "/apis/kubevirt.io/v1/namespaces/any/virtualmachines/v",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_status(),
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "virtualmachines.kubevirt.io \"v\" is forbidden: User \"system:serviceaccount:ops:agent\" cannot delete resource \"virtualmachines\" in API group \"kubevirt.io\" in the namespace \"any\"",
                "reason": "Forbidden",
                "details": { "name": "v", "group": "kubevirt.io", "kind": "virtualmachines" },
                "code": 403,
            })
        );
        let used: Vec<String> = a.used_by(SA).iter().map(|g| g.to_string()).collect();
        assert_eq!(
            used,
            [
                "ClusterRole vms rule 0: get virtualmachines (kubevirt.io)",
                "ClusterRole vms rule 1: update virtualmachines/start (subresources.kubevirt.io)",
                "ClusterRole vms rule 2: patch */status (*)",
            ]
        );
        assert_eq!(a.denials().len(), 3);
    }

    #[test]
    fn role_bindings_hold_in_their_namespace_only_and_resource_names_narrow() {
        let a = auth();
        check(&a, "t1", "GET", "/api/v1/namespaces/ops/secrets/creds", &[]).unwrap();
        check(
            &a,
            "t1",
            "GET",
            "/api/v1/namespaces/ops/secrets",
            &[("fieldSelector", "metadata.name=creds"), ("watch", "1")],
        )
        .unwrap();
        let e = check(&a, "t1", "GET", "/api/v1/namespaces/ops/secrets", &[]).unwrap_err();
        assert_eq!(
            e.message,
            "secrets is forbidden: User \"system:serviceaccount:ops:agent\" cannot list resource \"secrets\" in API group \"\" in the namespace \"ops\""
        );
        assert_eq!(e.details, Some(json!({"kind": "secrets"})));
        assert!(check(&a, "t1", "GET", "/api/v1/namespaces/ops/secrets/other", &[]).is_err());
        assert!(check(&a, "t1", "GET", "/api/v1/namespaces/dev/secrets/creds", &[]).is_err());
        let e = check(&a, "t1", "GET", "/api/v1/secrets", &[]).unwrap_err();
        assert!(e.message.ends_with("at the cluster scope"), "{}", e.message);
        // A RoleBinding to a ClusterRole grants it in the binding's namespace only.
        check(
            &a,
            "t3",
            "GET",
            "/apis/kubevirt.io/v1/namespaces/dev/virtualmachines",
            &[],
        )
        .unwrap();
        assert!(
            check(
                &a,
                "t3",
                "GET",
                "/apis/kubevirt.io/v1/namespaces/ops/virtualmachines",
                &[]
            )
            .is_err()
        );
        assert!(check(&a, "t3", "GET", "/apis/kubevirt.io/v1/virtualmachines", &[]).is_err());
    }

    #[test]
    fn tokens_and_superusers() {
        let a = auth();
        check(
            &a,
            "t2",
            "DELETE",
            "/apis/kubevirt.io/v1/namespaces/x/virtualmachines/v",
            &[],
        )
        .unwrap();
        let e = check(&a, "nope", "GET", "/api/v1/pods", &[]).unwrap_err();
        assert_eq!(
            (e.code, e.reason.as_str(), e.message.as_str()),
            (401, "Unauthorized", "Unauthorized")
        );
        assert_eq!(a.authenticate(None).unwrap_err().code, 401);
        assert_eq!(a.authenticate(Some("Basic dTpw")).unwrap_err().code, 401);
        let sa = User::parse(SA).unwrap();
        assert_eq!(
            sa.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:ops",
                "system:authenticated"
            ]
        );
        assert!(User::parse("system:serviceaccount:ops").is_none());
        assert_eq!(a.grants_of(&sa).len(), 7);
    }
}
