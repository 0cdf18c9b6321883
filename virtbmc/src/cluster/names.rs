//! Object names checked before they reach an API path. kube-rs formats a name into the URL
//! as it is (`Api::get("a/stop?")` requests `.../virtualmachines/a/stop?`), so a name taken
//! from a user's spec could turn a read into a subresource call or a patch of another
//! object. The API server only ever stores names of these forms, so a name failing the
//! check names nothing and is never sent.

use super::VirtualMachineBMC;

/// A DNS-1123 subdomain (Kubernetes `IsDNS1123Subdomain`, the CRD's `pattern`): at most 253
/// characters, dot-separated parts of lowercase alphanumerics and `-`, each starting and
/// ending alphanumeric. VirtualMachine, Secret and Service names are of this form.
pub fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(labelish)
}

/// A DNS-1123 label (Kubernetes `IsDNS1123Label`): at most 63 characters of lowercase
/// alphanumerics and `-`, starting and ending alphanumeric. Namespace names are of this form.
pub fn is_label(s: &str) -> bool {
    s.len() <= 63 && labelish(s)
}

/// One part: lowercase alphanumerics and `-`, starting and ending alphanumeric.
fn labelish(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(&first), Some(&last)) => {
            alnum(first) && alnum(last) && b.iter().all(|&c| alnum(c) || c == b'-')
        }
        _ => false,
    }
}

/// What a condition says when a name in a VirtualMachineBMC's spec is unusable: the field
/// and the rule, not the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidRef {
    /// The condition reason.
    pub reason: &'static str,
    /// The field, as `kubectl explain` spells it.
    pub field: &'static str,
    /// The object kind the field names.
    pub kind: &'static str,
}

impl InvalidRef {
    pub fn message(&self) -> String {
        format!(
            "{} is not a valid {} name (a DNS-1123 subdomain: at most 253 characters, lowercase alphanumerics and '-' in '.'-separated parts, each starting and ending alphanumeric): nothing is served for it",
            self.field, self.kind
        )
    }
}

pub const INVALID_VM_REF: InvalidRef = InvalidRef {
    reason: "InvalidVirtualMachineRef",
    field: "spec.virtualMachineRef.name",
    kind: "VirtualMachine",
};

pub const INVALID_SECRET_REF: InvalidRef = InvalidRef {
    reason: "InvalidAuthSecretRef",
    field: "spec.authSecretRef.name",
    kind: "Secret",
};

/// The names `b` refers to, checked: the VirtualMachine's first (nothing can be served
/// without it), then the Secret's.
pub fn check_refs(b: &VirtualMachineBMC) -> Result<(), InvalidRef> {
    vm_ref(b)?;
    secret_ref(b)?;
    Ok(())
}

/// `spec.virtualMachineRef.name`, if it can name a VirtualMachine.
pub fn vm_ref(b: &VirtualMachineBMC) -> Result<&str, InvalidRef> {
    let name = b.spec.virtual_machine_ref.name.as_str();
    is_subdomain(name).then_some(name).ok_or(INVALID_VM_REF)
}

/// `spec.authSecretRef.name`, if it can name a Secret.
pub fn secret_ref(b: &VirtualMachineBMC) -> Result<&str, InvalidRef> {
    let name = b.spec.auth_secret_ref.name.as_str();
    is_subdomain(name).then_some(name).ok_or(INVALID_SECRET_REF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::crd::{LocalObjectReference, VirtualMachineBMCSpec};

    #[test]
    fn subdomains() {
        let max = format!("a{}", "b".repeat(252));
        for good in ["a", "vm1", "web-01", "a.b.c", "0", "x-y.z-0", max.as_str()] {
            assert!(is_subdomain(good), "{good:?}");
        }
        let long = format!("a{}", "b".repeat(253));
        for bad in [
            "",
            "a/stop?",
            "a/b",
            "..",
            ".",
            "a..b",
            "a-.b",
            "a.-b",
            "a/../b",
            "Web",
            "-a",
            "a-",
            ".a",
            "a.",
            "a_b",
            "a b",
            "a?x=1",
            "a#b",
            "a%2fb",
            "é",
            "a\n",
            long.as_str(),
        ] {
            assert!(!is_subdomain(bad), "{bad:?}");
        }
    }

    /// The Rust type's schema carries the manifest's pattern, and the check agrees with it.
    #[test]
    fn schema_pattern_matches_the_manifest() {
        let schema = schemars::schema_for!(crate::cluster::crd::LocalObjectReference);
        let v = serde_json::to_value(&schema).unwrap();
        let pattern = v["properties"]["name"]["pattern"].as_str().unwrap();
        let manifest = include_str!("../../../manifests/crd-virtualmachinebmc.yaml");
        assert_eq!(
            manifest.matches(&format!("pattern: '{pattern}'")).count(),
            2,
            "{pattern}"
        );
        assert_eq!(v["properties"]["name"]["maxLength"], 253);
    }

    #[test]
    fn labels() {
        assert!(is_label("default"));
        assert!(is_label(&"a".repeat(63)));
        for bad in ["", "a.b", "a/b", "A", "-a", "a-", &"a".repeat(64)] {
            assert!(!is_label(bad), "{bad:?}");
        }
    }

    fn bmc(vm: &str, secret: &str) -> VirtualMachineBMC {
        VirtualMachineBMC::new(
            "b",
            VirtualMachineBMCSpec {
                virtual_machine_ref: LocalObjectReference { name: vm.into() },
                auth_secret_ref: LocalObjectReference {
                    name: secret.into(),
                },
                ..Default::default()
            },
        )
    }

    #[test]
    fn refs_name_the_field_not_the_value() {
        assert_eq!(check_refs(&bmc("vm1", "creds")), Ok(()));
        let e = check_refs(&bmc("a/stop?", "creds")).unwrap_err();
        assert_eq!(e, INVALID_VM_REF);
        assert!(e.message().starts_with("spec.virtualMachineRef.name "));
        assert!(!e.message().contains("a/stop?"));
        let e = check_refs(&bmc("vm1", "../x")).unwrap_err();
        assert_eq!(e.reason, "InvalidAuthSecretRef");
        assert!(e.message().starts_with("spec.authSecretRef.name "));
        assert!(!e.message().contains("../x"));
        // Both wrong: the VirtualMachine's is reported first.
        assert_eq!(check_refs(&bmc("", "")), Err(INVALID_VM_REF));
    }
}
