//! Credentials for agents that may not read the tenants' Secrets. With the roles split, the
//! controller (which reads the Secrets VirtualMachineBMCs name) keeps one Secret per BMC in
//! the agents' namespace holding only `username` and `password`; the agents watch those
//! copies, in their own namespace only, and never a tenant's Secret.
//!
//! A copy carries the tenant Secret's uid and resourceVersion in [`SOURCE_ANNOTATION`], so the
//! controller rewrites it only when the tenant's Secret changed (a rotated password reaches
//! the agents, whose sessions of the old credentials then end) and reads no password to
//! compare. No ownerReference: a namespaced owner must live in its dependent's namespace, and
//! the garbage collector treats one from another namespace as absent and deletes the copy;
//! the controller deletes a copy whose BMC is gone instead.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use sha2::{Digest, Sha256};

use super::leader::{Round, delete_unwanted};
use super::secrets::is_user_key;
use super::view::users_from_secret;
use super::{MANAGED_BY, Shared, VMBMC_LABEL, VirtualMachineBMC};

/// Label of every copy: the agents' watch selects on it.
pub const COPY_LABEL: (&str, &str) = ("app.kubernetes.io/component", "bmc-credentials");
/// On a copy: `<uid>/<resourceVersion>` of the tenant Secret it was made from.
pub const SOURCE_ANNOTATION: &str = "bmc.kubevirt.io/credentials-source";
/// On a copy: the namespace of its VirtualMachineBMC (the name is under [`VMBMC_LABEL`]).
const VMBMC_NAMESPACE_LABEL: &str = "bmc.kubevirt.io/virtualmachinebmc-namespace";

/// The label selector of the copies.
pub fn selector() -> String {
    format!(
        "{}={},{}={}",
        COPY_LABEL.0, COPY_LABEL.1, MANAGED_BY.0, MANAGED_BY.1
    )
}

/// The copy's name: a digest of the BMC's namespace and name, so that no two BMCs share one
/// (`a-b`/`c` and `a`/`b-c` would, joined) and any length fits.
pub fn copy_name(b: &VirtualMachineBMC) -> String {
    let key = format!("{}/{}", b.namespace().unwrap_or_default(), b.name_any());
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..8].iter().map(|x| format!("{x:02x}")).collect();
    format!("bmc-{hex}")
}

/// Writes `b`'s copy if the tenant Secret holds a usable user and the copy is not already
/// made from this version of it. Returns the copy's key when one should exist.
pub(super) async fn ensure(
    sh: &Shared,
    b: &VirtualMachineBMC,
    round: &Round,
) -> Option<(String, String)> {
    let tenant = sh.stores.auth_secret(b)?;
    // No usable user: no copy, so every login is refused (SecretAvailable says why).
    users_from_secret(Some(&tenant)).ok()?;
    let ns = sh.opts.agent_namespace.clone();
    let name = copy_name(b);
    let source = format!(
        "{}/{}",
        tenant.metadata.uid.clone().unwrap_or_default(),
        tenant.metadata.resource_version.clone().unwrap_or_default()
    );
    let cached = sh.stores.secret.get(&ObjectRef::new(&name).within(&ns));
    if cached.is_some_and(|c| c.annotations().get(SOURCE_ANNOTATION) == Some(&source)) {
        return Some((ns, name));
    }
    let copy = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                (COPY_LABEL.0.into(), COPY_LABEL.1.into()),
                (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
                (VMBMC_LABEL.into(), b.name_any()),
                (
                    VMBMC_NAMESPACE_LABEL.into(),
                    b.namespace().unwrap_or_default(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(SOURCE_ANNOTATION.into(), source)])),
            ..Default::default()
        },
        data: tenant.data.as_ref().map(users_only),
        string_data: tenant.string_data.as_ref().map(users_only),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    let api: Api<Secret> = Api::namespaced(sh.client.clone(), &ns);
    match api
        .patch(
            &name,
            &PatchParams::apply("virtbmc").force(),
            &Patch::Apply(&copy),
        )
        .await
    {
        Ok(_) => log::info!(
            "secret={ns}/{name} credentials of vmbmc={}/{} written",
            b.namespace().unwrap_or_default(),
            b.name_any()
        ),
        Err(e) => {
            log::warn!("secret={ns}/{name} credentials: {e}");
            round.fail();
        }
    }
    Some((ns, name))
}

/// The two keys a BMC's user is made of, and nothing else of a Secret's data.
fn users_only<V: Clone>(d: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    d.iter()
        .filter(|(k, _)| is_user_key(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Deletes the copies no BMC wants any more.
pub(super) async fn remove_stale(sh: &Shared, wanted: &BTreeSet<(String, String)>, round: &Round) {
    let ns = &sh.opts.agent_namespace;
    let copies: Vec<_> = sh
        .stores
        .secret
        .state()
        .into_iter()
        .filter(|s| {
            s.namespace().as_deref() == Some(ns.as_str())
                && s.labels().get(COPY_LABEL.0).map(String::as_str) == Some(COPY_LABEL.1)
        })
        .collect();
    delete_unwanted(sh, copies, wanted, "secret", round).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::crd::VirtualMachineBMCSpec;

    #[test]
    fn one_name_per_bmc_whatever_the_dashes() {
        let b = |ns: &str, name: &str| {
            let mut b = VirtualMachineBMC::new(name, VirtualMachineBMCSpec::default());
            b.metadata.namespace = Some(ns.into());
            b
        };
        let (x, y) = (copy_name(&b("a-b", "c")), copy_name(&b("a", "b-c")));
        assert_ne!(x, y);
        assert_eq!(x, copy_name(&b("a-b", "c")));
        assert!(x.starts_with("bmc-") && x.len() == 20, "{x}");
    }
}
