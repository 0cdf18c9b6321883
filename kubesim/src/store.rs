//! The object store: one global resourceVersion (the etcd revision), the event history that
//! watches replay, and the write rules of the generic registry.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};

use crate::kinds::{Kind, KindInfo};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::util;

/// `ADDED`, `MODIFIED` or `DELETED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as a watch replays it.
#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: Kind,
    pub namespace: String,
    pub etype: EventType,
    pub object: Arc<Value>,
    /// The object before this change, so that a selector watch can turn a change that leaves
    /// the selection into DELETED and one that enters it into ADDED, as the apiserver does.
    pub prev: Option<Arc<Value>>,
}

/// Which part of an object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Main,
    Status,
}

/// A validating admission check of an update: the stored object, then the new one.
pub type Admit<'a> = Option<&'a dyn Fn(&Value, &Value) -> Result<(), ApiError>>;

/// The patch content types (`Content-Type` of a PATCH).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

/// What DELETE did.
#[derive(Debug)]
pub enum Deleted {
    /// Gone: the last state (for `ReturnDeletedObject` kinds) and the Success Status.
    Gone { object: Value, status: Value },
    /// Finalizers hold it: the object now carries deletionTimestamp.
    Finalizing(Value),
}

type Key = (Kind, String, String);

pub(crate) struct Inner {
    pub rv: u64,
    objects: BTreeMap<Key, Arc<Value>>,
    history: VecDeque<Event>,
    /// A watch from RV `r` can be served iff `r >= history_start`.
    pub history_start: u64,
    pub history_window: usize,
    snapshots: HashMap<String, (u64, Vec<Arc<Value>>)>,
    snapshot_seq: u64,
    /// Bumped to end every open watch with an ERROR 410.
    pub expire_epoch: u64,
    /// Bumped to cut every open watch connection.
    pub drop_epoch: u64,
    next_ip: u32,
    next_node_port: u32,
}

/// The shared store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<tokio::sync::watch::Sender<u64>>,
}

fn rv_of(o: &Value) -> Option<&str> {
    o["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
}

fn name_of(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or("")
}

/// Generation changes when a field outside metadata (and outside status, with a status
/// subresource) changes (customresource/strategy.go PrepareForUpdate).
fn spec_changed(info: &KindInfo, old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            if info.status_subresource {
                m.remove("status");
            }
        }
        v
    };
    strip(old) != strip(new)
}

impl Store {
    pub fn new(history_window: usize) -> Self {
        let (tx, _rx) = tokio::sync::watch::channel(0);
        Store {
            inner: Arc::new(Mutex::new(Inner {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                history_start: 1,
                history_window: history_window.max(1),
                snapshots: HashMap::new(),
                snapshot_seq: 0,
                expire_epoch: 0,
                drop_epoch: 0,
                next_ip: 10,
                next_node_port: 30000,
            })),
            notify: Arc::new(tx),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that wakes on every change (writes, expiry, dropped watches).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }

    pub(crate) fn wake(&self) {
        self.notify.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Run a write under the lock, and wake watchers and the controller only if it stored
    /// something: a no-op write must not wake anyone (the controller would spin).
    fn write<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let (r, changed) = {
            let mut g = self.lock();
            let before = g.rv;
            let r = f(&mut g);
            (r, g.rv != before)
        };
        if changed {
            self.wake();
        }
        r
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// The stored object, shared (no copy).
    pub fn get_arc(&self, kind: Kind, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.lock()
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
    }

    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .map(|o| (**o).clone())
    }

    /// All objects of a kind (in `ns`, or everywhere), in key order.
    pub fn all(&self, kind: Kind, ns: Option<&str>) -> Vec<Arc<Value>> {
        let g = self.lock();
        g.objects
            .iter()
            .filter(|((k, n, _), _)| *k == kind && ns.is_none_or(|ns| ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// LIST with selectors and paging; returns (items, list RV, continue token, remaining).
    #[allow(clippy::type_complexity)]
    pub fn list(
        &self,
        kind: Kind,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<(Vec<Arc<Value>>, u64, Option<String>, usize), ApiError> {
        let mut g = self.lock();
        let (rv, items) = match cont {
            Some(token) => g.snapshots.remove(token).ok_or_else(|| {
                ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. \
                     You can start a new list without the continue parameter.",
                )
            })?,
            None => {
                let items: Vec<Arc<Value>> = g
                    .objects
                    .iter()
                    .filter(|((k, n, _), o)| {
                        *k == kind
                            && ns.is_none_or(|ns| ns == n)
                            && labels.matches(o)
                            && fields.matches(o)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                (g.rv, items)
            }
        };
        match limit {
            Some(l) if l > 0 && items.len() > l => {
                let mut items = items;
                let rest = items.split_off(l);
                g.snapshot_seq += 1;
                let token = format!("{rv}.{}", g.snapshot_seq);
                let remaining = rest.len();
                g.snapshots.insert(token.clone(), (rv, rest));
                if g.snapshots.len() > 256 {
                    // Forget the oldest tokens: they then answer 410 Expired, as the real
                    // server does once the compacted revision passes them.
                    let mut keys: Vec<_> = g.snapshots.keys().cloned().collect();
                    keys.sort_by_key(|k| k.split('.').nth(1).and_then(|s| s.parse::<u64>().ok()));
                    for k in keys.into_iter().take(64) {
                        g.snapshots.remove(&k);
                    }
                }
                Ok((items, rv, Some(token), remaining))
            }
            _ => Ok((items, rv, None, 0)),
        }
    }

    /// Events of `kind` (in `ns`) after `from`, or Err(oldest servable RV) if expired.
    pub fn events_since(
        &self,
        kind: Kind,
        ns: Option<&str>,
        from: u64,
    ) -> Result<(Vec<Event>, u64), u64> {
        let g = self.lock();
        if from < g.history_start {
            return Err(g.history_start);
        }
        // History is ordered by RV; skip what the watcher has seen.
        let start = g.history.partition_point(|e| e.rv <= from);
        let evs = g
            .history
            .iter()
            .skip(start)
            .filter(|e| e.kind == kind && ns.is_none_or(|ns| ns == e.namespace))
            .cloned()
            .collect();
        Ok((evs, g.rv))
    }

    pub fn epochs(&self) -> (u64, u64) {
        let g = self.lock();
        (g.expire_epoch, g.drop_epoch)
    }

    /// Forget all history: a watch from any RV older than now gets 410, and open watches are
    /// ended with an ERROR 410 event.
    pub fn expire_watches(&self) {
        {
            let mut g = self.lock();
            g.history.clear();
            g.history_start = g.rv;
            g.expire_epoch += 1;
            g.snapshots.clear();
        }
        self.wake();
    }

    pub fn drop_watches(&self) {
        self.lock().drop_epoch += 1;
        self.wake();
    }

    pub fn set_history_window(&self, n: usize) {
        let mut g = self.lock();
        g.history_window = n.max(1);
        g.trim();
    }

    // ---- writes -------------------------------------------------------------------------

    /// PUT on the object or its status, with `admit` (validating admission) shown the old
    /// and the new object before an update of the object (not its status) is stored.
    #[allow(clippy::too_many_arguments)]
    pub fn replace_admitted(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        obj: Value,
        target: Target,
        dry_run: bool,
        admit: Admit<'_>,
    ) -> Result<(Value, bool), ApiError> {
        self.write(|g| g.replace(kind, ns, name, obj, target, dry_run, admit))
    }

    /// PATCH, with `admit` as for [`Store::replace_admitted`].
    #[allow(clippy::too_many_arguments)]
    pub fn patch_admitted(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        ptype: PatchType,
        body: &[u8],
        target: Target,
        field_manager: Option<&str>,
        dry_run: bool,
        admit: Admit<'_>,
    ) -> Result<(Value, bool), ApiError> {
        self.write(|g| {
            g.patch(
                kind,
                ns,
                name,
                ptype,
                body,
                target,
                field_manager,
                dry_run,
                admit,
            )
        })
    }

    /// POST: create with the defaults the apiserver and KubeVirt's webhooks add.
    pub fn create(
        &self,
        kind: Kind,
        ns: &str,
        obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        self.write(|g| g.create(kind, ns, obj, dry_run))
    }

    /// PUT on the object or its status; returns (object, created).
    pub fn replace(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        obj: Value,
        target: Target,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        self.replace_admitted(kind, ns, name, obj, target, dry_run, None)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        ptype: PatchType,
        body: &[u8],
        target: Target,
        field_manager: Option<&str>,
        dry_run: bool,
    ) -> Result<(Value, bool), ApiError> {
        self.patch_admitted(
            kind,
            ns,
            name,
            ptype,
            body,
            target,
            field_manager,
            dry_run,
            None,
        )
    }

    pub fn delete(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        options: &Value,
        dry_run: bool,
    ) -> Result<Deleted, ApiError> {
        self.write(|g| g.delete(kind, ns, name, options, dry_run))
    }

    /// A write by a controller inside the cluster: `f` edits a copy of the stored object; no
    /// preconditions, no subresource rules. Returns the new state (None if gone or absent).
    pub fn modify(
        &self,
        kind: Kind,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        self.write(|g| {
            let old = g
                .objects
                .get(&(kind, ns.to_string(), name.to_string()))?
                .clone();
            let mut new = (*old).clone();
            f(&mut new);
            g.commit_update(kind.info(), &old, new, false)
        })
    }
}

impl Inner {
    fn trim(&mut self) {
        while self.history.len() > self.history_window {
            if let Some(e) = self.history.pop_front() {
                self.history_start = e.rv;
            }
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(
        &mut self,
        kind: Kind,
        ns: &str,
        etype: EventType,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) {
        let rv = self.rv;
        self.history.push_back(Event {
            rv,
            kind,
            namespace: ns.to_string(),
            etype,
            object,
            prev,
        });
        self.trim();
    }

    /// Per-kind defaulting: Secret stringData, Service IPs and ports.
    fn normalize(&mut self, kind: Kind, obj: &mut Value) {
        match kind {
            Kind::Secret => {
                if let Some(sd) = obj.as_object_mut().and_then(|m| m.remove("stringData"))
                    && let Some(sd) = sd.as_object()
                {
                    for (k, v) in sd {
                        let enc = util::base64(v.as_str().unwrap_or("").as_bytes());
                        if !obj["data"].is_object() {
                            obj["data"] = json!({});
                        }
                        obj["data"][k] = json!(enc);
                    }
                }
                if obj.get("type").is_none() {
                    obj["type"] = json!("Opaque");
                }
            }
            Kind::Service => {
                if !obj["spec"].is_object() {
                    obj["spec"] = json!({});
                }
                let spec = &mut obj["spec"];
                if spec.get("type").is_none() {
                    spec["type"] = json!("ClusterIP");
                }
                if spec["type"] != "ExternalName" && spec.get("clusterIP").is_none() {
                    let n = self.next_ip;
                    self.next_ip += 1;
                    let ip = format!("10.96.{}.{}", n / 250, n % 250 + 1);
                    spec["clusterIP"] = json!(ip);
                    spec["clusterIPs"] = json!([ip]);
                }
                if spec.get("sessionAffinity").is_none() {
                    spec["sessionAffinity"] = json!("None");
                }
                let node_ports = matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"));
                if let Some(ports) = spec["ports"].as_array_mut() {
                    for p in ports {
                        if p.get("protocol").is_none() {
                            p["protocol"] = json!("TCP");
                        }
                        if p.get("targetPort").is_none() {
                            p["targetPort"] = p["port"].clone();
                        }
                        if node_ports && p.get("nodePort").is_none() {
                            p["nodePort"] = json!(self.next_node_port);
                            self.next_node_port += 1;
                        }
                    }
                }
            }
            Kind::Pod => crate::pods::default(obj),
            Kind::EndpointSlice => crate::endpointslices::default(obj),
            _ => {}
        }
    }

    fn validate(kind: Kind, obj: &Value) -> Result<(), ApiError> {
        match kind {
            Kind::VirtualMachine => crate::kubevirt::validate_vm(obj),
            Kind::VirtualMachineBmc => crate::kubevirt::validate_vmbmc(obj),
            Kind::Pod => crate::pods::validate(obj),
            Kind::EndpointSlice => crate::endpointslices::validate(obj),
            _ => Ok(()),
        }
    }

    /// The rules an update of the object (not its status) must also pass.
    fn validate_update(kind: Kind, old: &Value, new: &Value) -> Result<(), ApiError> {
        match kind {
            Kind::Pod => crate::pods::validate_update(old, new),
            Kind::EndpointSlice => crate::endpointslices::validate_update(old, new),
            _ => Ok(()),
        }
    }

    fn check_type(info: &KindInfo, obj: &mut Value) -> Result<(), ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request is not a JSON object",
            ));
        }
        let av = info.api_version();
        match obj["apiVersion"].as_str() {
            None | Some("") => obj["apiVersion"] = json!(av),
            Some(a) if a == av => {}
            Some(a) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({a}) does not match the expected API version ({av})"
                )));
            }
        }
        match obj["kind"].as_str() {
            None | Some("") => obj["kind"] = json!(info.kind_name),
            Some(k) if k == info.kind_name => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    info.kind_name
                )));
            }
        }
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        Ok(())
    }

    fn create(
        &mut self,
        kind: Kind,
        ns: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let info = kind.info();
        Self::check_type(info, &mut obj)?;
        let md = &mut obj["metadata"];
        match md["namespace"].as_str() {
            None | Some("") => md["namespace"] = json!(ns),
            Some(n) if n == ns => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        if name_of(&obj).is_empty() {
            match obj["metadata"]["generateName"].as_str() {
                Some(g) if !g.is_empty() => {
                    obj["metadata"]["name"] = json!(format!("{g}{}", util::random_suffix()))
                }
                _ => {
                    return Err(ApiError::invalid(
                        info,
                        "",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    ));
                }
            }
        }
        if rv_of(&obj).is_some() {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = name_of(&obj).to_string();
        let key = (kind, ns.to_string(), name.clone());
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(info, &name));
        }
        {
            let md = obj["metadata"].as_object_mut().expect("object");
            md.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
            md.insert("creationTimestamp".into(), json!(util::now_rfc3339()));
            md.remove("deletionTimestamp");
            md.remove("deletionGracePeriodSeconds");
            if info.crd {
                md.insert("generation".into(), json!(1));
            } else {
                md.remove("generation");
            }
        }
        if info.status_subresource
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        self.normalize(kind, &mut obj);
        match kind {
            Kind::VirtualMachine => crate::kubevirt::mutate_vm_on_create(&mut obj),
            Kind::Pod => crate::pods::prepare_for_create(&mut obj),
            _ => {}
        }
        Self::validate(kind, &obj)?;
        if dry_run {
            obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            return Ok(obj);
        }
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let arc = Arc::new(obj);
        self.objects.insert(key, arc.clone());
        self.record(kind, ns, EventType::Added, arc.clone(), None);
        Ok((*arc).clone())
    }

    /// Store `new` in place of `old`, keeping identity fields, bumping generation and RV.
    /// A no-op write stores nothing (etcd's GuaranteedUpdate short-circuit). An object marked
    /// for deletion whose finalizers are now empty is removed. Returns None if removed.
    fn commit_update(
        &mut self,
        info: &KindInfo,
        old: &Arc<Value>,
        mut new: Value,
        dry_run: bool,
    ) -> Option<Value> {
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "name",
            "namespace",
            "generation",
        ] {
            match old["metadata"].get(f) {
                Some(v) => new["metadata"][f] = v.clone(),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        new["apiVersion"] = old["apiVersion"].clone();
        new["kind"] = old["kind"].clone();
        if info.crd && spec_changed(info, old, &new) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if let Some(f) = new["metadata"].get("finalizers")
            && f.as_array().is_some_and(|a| a.is_empty())
            && let Some(m) = new["metadata"].as_object_mut()
        {
            m.remove("finalizers");
        }
        if new == **old {
            return Some(new);
        }
        if dry_run {
            return Some(new);
        }
        let kind = info.kind;
        let ns = old["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let name = name_of(old).to_string();
        let rv = self.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        // ShouldDeleteDuringUpdate: marked, no finalizers left, and no grace period running
        // (a pod in graceful deletion stays until its kubelet, or a DELETE, ends it).
        let finalizing = new["metadata"].get("deletionTimestamp").is_some()
            && new["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                == 0
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|a| a.is_empty());
        let arc = Arc::new(new);
        let key = (kind, ns.clone(), name);
        if finalizing {
            self.objects.remove(&key);
            self.record(kind, &ns, EventType::Deleted, arc, Some(old.clone()));
            None
        } else {
            self.objects.insert(key, arc.clone());
            self.record(
                kind,
                &ns,
                EventType::Modified,
                arc.clone(),
                Some(old.clone()),
            );
            Some((*arc).clone())
        }
    }

    /// The update path shared by PUT and PATCH, after the new object is known.
    fn update_checked(
        &mut self,
        kind: Kind,
        old: &Arc<Value>,
        mut new: Value,
        target: Target,
        dry_run: bool,
        admit: Admit<'_>,
    ) -> Result<Value, ApiError> {
        let info = kind.info();
        let name = name_of(old).to_string();
        match rv_of(&new) {
            None if !info.unconditional_update => {
                return Err(ApiError::invalid(
                    info,
                    &name,
                    "metadata.resourceVersion",
                    "Invalid value: 0x0: must be specified for an update",
                ));
            }
            Some(rv) if Some(rv) != rv_of(old) => return Err(ApiError::stale(info, &name)),
            _ => {}
        }
        if info.status_subresource {
            match target {
                // The status strategy keeps the whole old object but its status.
                Target::Status => {
                    let status = new.get("status").cloned();
                    new = (**old).clone();
                    match status {
                        Some(s) => new["status"] = s,
                        None => {
                            new.as_object_mut().expect("object").remove("status");
                        }
                    }
                }
                // The main endpoint silently keeps the old status.
                Target::Main => match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        new.as_object_mut().expect("object").remove("status");
                    }
                },
            }
        }
        if target == Target::Main {
            self.normalize(kind, &mut new);
            Self::validate(kind, &new)?;
            Self::validate_update(kind, old, &new)?;
        }
        // Validating admission comes last, after the object's own validation; a write of the
        // status subresource passes it too (a policy naming `<resource>/status` sees it).
        if let Some(admit) = admit {
            admit(old, &new)?;
        }
        Ok(self
            .commit_update(info, old, new.clone(), dry_run)
            .unwrap_or({
                // Removed because its last finalizer went: answer with the final state.
                new
            }))
    }

    fn lookup(&self, kind: Kind, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
    }

    #[allow(clippy::too_many_arguments)]
    fn replace(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        mut obj: Value,
        target: Target,
        dry_run: bool,
        admit: Admit<'_>,
    ) -> Result<(Value, bool), ApiError> {
        let info = kind.info();
        if target == Target::Status && !info.status_subresource {
            return Err(ApiError::no_route());
        }
        Self::check_type(info, &mut obj)?;
        if name_of(&obj) != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                name_of(&obj)
            )));
        }
        if let Some(n) = obj["metadata"]["namespace"].as_str()
            && !n.is_empty()
            && n != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let Some(old) = self.lookup(kind, ns, name) else {
            if info.create_on_update && target == Target::Main {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                return self.create(kind, ns, obj, dry_run).map(|o| (o, true));
            }
            return Err(ApiError::not_found(info, name));
        };
        self.update_checked(kind, &old, obj, target, dry_run, admit)
            .map(|o| (o, false))
    }

    #[allow(clippy::too_many_arguments)]
    fn patch(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        ptype: PatchType,
        body: &[u8],
        target: Target,
        field_manager: Option<&str>,
        dry_run: bool,
        admit: Admit<'_>,
    ) -> Result<(Value, bool), ApiError> {
        let info = kind.info();
        if target == Target::Status && !info.status_subresource {
            return Err(ApiError::no_route());
        }
        if ptype == PatchType::Strategic && info.crd {
            return Err(ApiError::unsupported_media(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        if ptype == PatchType::Apply && field_manager.is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                "PATCH, application/apply-patch+yaml requires fieldManager to be set",
            ));
        }
        let old = match self.lookup(kind, ns, name) {
            Some(o) => o,
            None if ptype == PatchType::Apply && target == Target::Main => {
                // Server-side apply creates a missing object (forceAllowCreate).
                let mut obj: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                Self::check_type(info, &mut obj)?;
                obj["metadata"]["name"] = json!(name);
                return self.create(kind, ns, obj, dry_run).map(|o| (o, true));
            }
            None => return Err(ApiError::not_found(info, name)),
        };
        let mut new = (*old).clone();
        match ptype {
            PatchType::Json => {
                let p: json_patch::Patch = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                json_patch::patch(&mut new, &p.0).map_err(|_| ApiError::patch_test_failed())?;
            }
            PatchType::Merge | PatchType::Strategic | PatchType::Apply => {
                // Strategic merge on built-in kinds is approximated by a merge patch (lists
                // are replaced rather than merged by key); apply without field ownership.
                let p: Value = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
                if !p.is_object() {
                    return Err(ApiError::bad_request("patch body must be a JSON object"));
                }
                json_patch::merge(&mut new, &p);
                if ptype == PatchType::Apply {
                    // An apply configuration does not carry resourceVersion as a precondition
                    // unless it sets one.
                    if rv_of(&p).is_none() {
                        new["metadata"]["resourceVersion"] =
                            old["metadata"]["resourceVersion"].clone();
                    }
                }
            }
        }
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        // A patch that drops resourceVersion is an unconditional update.
        if rv_of(&new).is_none() {
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        }
        self.update_checked(kind, &old, new, target, dry_run, admit)
            .map(|o| (o, false))
    }

    fn delete(
        &mut self,
        kind: Kind,
        ns: &str,
        name: &str,
        options: &Value,
        dry_run: bool,
    ) -> Result<Deleted, ApiError> {
        let info = kind.info();
        let Some(old) = self.lookup(kind, ns, name) else {
            return Err(ApiError::not_found(info, name));
        };
        let pre = &options["preconditions"];
        if let Some(uid) = pre["uid"].as_str() {
            let have = old["metadata"]["uid"].as_str().unwrap_or("");
            if uid != have {
                return Err(ApiError::conflict(
                    info,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"
                    ),
                ));
            }
        }
        if let Some(rv) = pre["resourceVersion"].as_str() {
            let have = rv_of(&old).unwrap_or("");
            if rv != have {
                return Err(ApiError::conflict(
                    info,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"
                    ),
                ));
            }
        }
        // Foreground deletion waits for dependents: only VMs have any here (their VMI); the
        // controller drops the `foregroundDeletion` finalizer once the VMI is gone.
        let foreground =
            options["propagationPolicy"] == "Foreground" && kind == Kind::VirtualMachine;
        let has_finalizers = foreground
            || old["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
        // Graceful deletion (pods only): the object stays, marked, for its grace period; a
        // DELETE with grace period 0 then removes it at once.
        let grace = match kind {
            Kind::Pod => crate::pods::grace_period(&old, options),
            _ => 0,
        };
        if has_finalizers || grace > 0 {
            if old["metadata"].get("deletionTimestamp").is_some() || dry_run {
                return Ok(Deleted::Finalizing((*old).clone()));
            }
            let mut new = (*old).clone();
            if foreground {
                match new["metadata"]["finalizers"].as_array_mut() {
                    Some(f) if !f.iter().any(|x| x == "foregroundDeletion") => {
                        f.push(json!("foregroundDeletion"))
                    }
                    Some(_) => {}
                    None => new["metadata"]["finalizers"] = json!(["foregroundDeletion"]),
                }
            }
            new["metadata"]["deletionTimestamp"] =
                json!(util::rfc3339(util::now_secs() + grace as u64));
            new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            let rv = self.next_rv();
            new["metadata"]["resourceVersion"] = json!(rv.to_string());
            let arc = Arc::new(new);
            self.objects
                .insert((kind, ns.to_string(), name.to_string()), arc.clone());
            self.record(kind, ns, EventType::Modified, arc.clone(), Some(old));
            return Ok(Deleted::Finalizing((*arc).clone()));
        }
        let mut last = (*old).clone();
        if !dry_run {
            let rv = self.next_rv();
            last["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.objects
                .remove(&(kind, ns.to_string(), name.to_string()));
            self.record(
                kind,
                ns,
                EventType::Deleted,
                Arc::new(last.clone()),
                Some(old.clone()),
            );
        }
        let mut details = json!({
            "name": name,
            "kind": info.plural,
            "uid": old["metadata"]["uid"],
        });
        if !info.group.is_empty() {
            details["group"] = json!(info.group);
        }
        let status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        });
        Ok(Deleted::Gone {
            object: last,
            status,
        })
    }
}
