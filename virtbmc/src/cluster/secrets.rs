//! Which Secrets keep their credentials in the cache. Secrets are watched cluster-wide (RBAC
//! cannot narrow a watch to the Secrets some VirtualMachineBMC names), but only those a
//! VirtualMachineBMC names keep `username` and `password` in memory; every other Secret is
//! cached as metadata alone. A Secret that becomes named is read once (a GET) and its copy
//! fed to the Secret reflector; one no longer named is fed back without its keys.
//!
//! Label mode watches only the one `--auth-secret`, which is always named.

use std::collections::{HashMap, HashSet};

use futures::channel::mpsc;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::{Shared, VirtualMachineBMC, names};

/// (namespace, name) of a Secret, or of a VirtualMachineBMC.
type Key = (String, String);

/// A copy to feed to the Secret reflector, applied only if the cached copy still has the
/// resourceVersion it had when the copy was asked for: a watch event meanwhile is newer
/// (and was already kept or trimmed by the set then current).
pub type Refeed = (Secret, Option<String>);

/// The Secrets VirtualMachineBMCs name, counted (several may name one).
#[derive(Default)]
pub struct Named {
    by_bmc: HashMap<Key, Key>,
    count: HashMap<Key, usize>,
    /// Secrets that became named (true) or stopped being named (false) since last drained:
    /// a VirtualMachineBMC event costs what it changes, not a pass over every name.
    changes: Vec<(Key, bool)>,
    /// Set once the VirtualMachineBMC cache is loaded: the Secret watch starts after, so its
    /// first list is trimmed by the full set.
    pub ready: bool,
}

impl Named {
    pub fn contains(&self, ns: &str, name: &str) -> bool {
        self.count.contains_key(&(ns.to_string(), name.to_string()))
    }

    fn names(&self) -> HashSet<Key> {
        self.count.keys().cloned().collect()
    }

    fn add(&mut self, bmc: Key, secret: Option<Key>) {
        // Most events (status writes) leave the reference as it was.
        if self.by_bmc.get(&bmc) == secret.as_ref() {
            return;
        }
        self.remove(&bmc);
        if let Some(s) = secret {
            let n = self.count.entry(s.clone()).or_default();
            *n += 1;
            if *n == 1 {
                self.changes.push((s.clone(), true));
            }
            self.by_bmc.insert(bmc, s);
        }
    }

    fn remove(&mut self, bmc: &Key) {
        if let Some(s) = self.by_bmc.remove(bmc)
            && let Some(n) = self.count.get_mut(&s)
        {
            *n -= 1;
            if *n == 0 {
                self.count.remove(&s);
                self.changes.push((s, false));
            }
        }
    }
}

fn bmc_key(b: &VirtualMachineBMC) -> Key {
    (b.namespace().unwrap_or_default(), b.name_any())
}

/// The Secret `b`'s users come from (the tenant's, or its copy), if its name can be one.
fn secret_of(sh: &Shared, b: &VirtualMachineBMC) -> Option<Key> {
    names::secret_ref(b).ok().map(|_| sh.stores.secret_ref(b))
}

/// Whether a cached Secret holds any credential key.
fn has_keys(s: &Secret) -> bool {
    s.data.as_ref().is_some_and(|d| !d.is_empty())
        || s.string_data.as_ref().is_some_and(|d| !d.is_empty())
}

/// Whether a Secret's key is one of the two a BMC's user is made of.
pub fn is_user_key(k: &str) -> bool {
    k == "username" || k == "password"
}

/// Only `username` and `password`, and those only of a named Secret (or in label mode,
/// where the watch selects the one named Secret, or of the controller's copies, which hold
/// nothing else and are all some BMC's).
pub fn trim(sh: &Shared, s: &mut Secret) {
    let keep_any = sh.opts.labels.is_some()
        || sh.stores.copies_namespace.is_some()
        || sh
            .named()
            .contains(&s.namespace().unwrap_or_default(), &s.name_any());
    let read = |k: &String| keep_any && is_user_key(k);
    if let Some(data) = s.data.as_mut() {
        data.retain(|k, _| read(k));
    }
    if let Some(data) = s.string_data.as_mut() {
        data.retain(|k, _| read(k));
    }
}

/// A VirtualMachineBMC event (CRD mode): the named set follows, and Secrets that became
/// named or stopped being named are re-read or trimmed.
pub fn vmbmc_event(sh: &Shared, ev: &watcher::Event<VirtualMachineBMC>) {
    let changes = {
        let mut n = sh.named();
        match ev {
            watcher::Event::Apply(b) => n.add(bmc_key(b), secret_of(sh, b)),
            watcher::Event::Delete(b) => n.remove(&bmc_key(b)),
            watcher::Event::InitDone => {
                // A re-list may have dropped VirtualMachineBMCs without a Delete: rebuilt.
                let (ready, before) = (n.ready, n.names());
                *n = Named::default();
                for b in sh.stores.vmbmc.state() {
                    n.add(bmc_key(&b), secret_of(sh, &b));
                }
                n.ready = true;
                let after = n.names();
                n.changes = after
                    .difference(&before)
                    .map(|k| (k.clone(), true))
                    .chain(before.difference(&after).map(|k| (k.clone(), false)))
                    .collect();
                if !ready {
                    // Not `send`: it drops the value when nobody listens yet.
                    sh.named_ready.send_replace(true);
                }
            }
            watcher::Event::Init | watcher::Event::InitApply(_) => {}
        }
        std::mem::take(&mut n.changes)
    };
    for ((ns, name), named) in changes {
        let Some(c) = sh.stores.secret.get(&ObjectRef::new(&name).within(&ns)) else {
            continue;
        };
        let seen = c.meta().resource_version.clone();
        if named && !has_keys(&c) {
            refetch(sh, &ns, &name, seen);
        } else if !named && has_keys(&c) {
            let _ = sh.secret_refeed.unbounded_send(((*c).clone(), seen));
        }
    }
}

/// Reads a Secret that has just become named; its copy is fed to the reflector.
fn refetch(sh: &Shared, ns: &str, name: &str, seen: Option<String>) {
    // Both come from a checked VirtualMachineBMC: a namespace and a Secret name.
    if !(names::is_label(ns) && names::is_subdomain(name)) {
        return;
    }
    let api: Api<Secret> = Api::namespaced(sh.client.clone(), ns);
    let tx: mpsc::UnboundedSender<Refeed> = sh.secret_refeed.clone();
    let (ns, name) = (ns.to_string(), name.to_string());
    tokio::spawn(async move {
        match api.get_opt(&name).await {
            Ok(Some(s)) => {
                let _ = tx.unbounded_send((s, seen));
            }
            Ok(None) => {}
            Err(e) => log::warn!("secret={ns}/{name} read: {e}"),
        }
    });
}

/// Whether a re-fed copy still applies (see [`Refeed`]).
pub fn still_current(sh: &Shared, (s, seen): &Refeed) -> bool {
    let cached = sh
        .stores
        .secret
        .get(&ObjectRef::new(&s.name_any()).within(&s.namespace().unwrap_or_default()));
    cached.is_some_and(|c| c.meta().resource_version == *seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(a: &str, b: &str) -> Key {
        (a.to_string(), b.to_string())
    }

    #[test]
    fn named_counts_references_and_reports_only_transitions() {
        let mut n = Named::default();
        n.add(k("ns", "b1"), Some(k("ns", "s")));
        n.add(k("ns", "b2"), Some(k("ns", "s")));
        // A status write: same reference, nothing to report.
        n.add(k("ns", "b1"), Some(k("ns", "s")));
        assert_eq!(std::mem::take(&mut n.changes), [(k("ns", "s"), true)]);
        assert!(n.contains("ns", "s"));
        n.remove(&k("ns", "b1"));
        assert!(n.contains("ns", "s") && n.changes.is_empty());
        // b2 now names another Secret: s is no longer named, t is.
        n.add(k("ns", "b2"), Some(k("ns", "t")));
        assert_eq!(
            std::mem::take(&mut n.changes),
            [(k("ns", "s"), false), (k("ns", "t"), true)]
        );
        assert!(!n.contains("ns", "s") && n.contains("ns", "t"));
        // An invalid Secret name names nothing.
        n.add(k("ns", "b2"), None);
        assert_eq!(std::mem::take(&mut n.changes), [(k("ns", "t"), false)]);
        assert!(n.names().is_empty());
        n.remove(&k("ns", "gone"));
        assert!(n.changes.is_empty());
    }
}
