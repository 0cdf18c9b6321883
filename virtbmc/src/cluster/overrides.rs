//! Boot overrides that no deadline, race, crash or restart leaves half done.
//!
//! An override lives in two objects: the *record* (`status.bootOverride` of the
//! VirtualMachineBMC, or the VM's [`BOOT_ANNOTATION`] without the CRD) and the VM's boot
//! orders. The record holds the target (mode, device, EFI), the VMI running when it was set,
//! and the *baseline*: the orders (and firmware) from before any override. Next to the orders
//! the VM carries the *applied marker* ([`APPLIED_ANNOTATION`]): the id of the record whose
//! target its orders hold (a digest of the record as the API server stores it) and, for a
//! one-shot override, the baseline again, so that the VM alone says how to undo it. The
//! writes, each conditional:
//!
//! 1. **Record.** The VM, the record and the VMI are read from the API server (never from a
//!    cache); the baseline is the existing one-shot record's, else an orphaned marker's, else
//!    the VM's present orders. The record is written with the holder's resourceVersion as
//!    precondition: of two agents recording at once one wins, the other re-reads and records
//!    its target over the winner's baseline. Nothing else is written first, so a failure up to
//!    here changes nothing.
//! 2. **Apply.** The VM is read, then the record. If the marker does not carry the record's
//!    id, one JSON Patch writes the target's orders (the device planned over the baseline),
//!    the firmware and the marker, `test`ing the device lists and the marker as read (the
//!    resourceVersion when there is none). Every apply and restore rewrites the marker, so a
//!    patch fails if anyone applied or restored since its read; and since the record was read
//!    after the VM, a record replaced since was replaced after that read, and its own apply
//!    comes after this one (or makes this one fail). The VM therefore ends with the target of
//!    the last record.
//! 3. **Restore.** Once a VMI other than the recorded one is Running (the boot a one-shot
//!    override was for), one guarded patch puts the baseline back and removes the marker;
//!    then the record goes, conditional on being the one read (an override recorded
//!    meanwhile stays, over the same baseline, and is applied for the boot after).
//!
//! A marker without a record (cleared by `bootdev none`, or gone with its
//! VirtualMachineBMC) is undone from the marker alone: the baseline back for a one-shot
//! override, only the marker removed for a persistent one, which was meant to last.
//!
//! Who finishes what: [`converge`] does whichever step is due, from fresh reads, and is
//! idempotent, so any number of agents may run it at once. The agent that took the request
//! runs the record and [`converge`] in a task of its own, retried with backoff until the VM
//! and the record agree; the action's deadline bounds only the answer to the client (0xC3
//! when late), never that work. The leader runs [`converge`] whenever its caches show a step
//! due (a record without its marker, a one-shot record whose boot came, a marker without a
//! record), and every agent does once for every VM when it starts ([`sweep`]), so a change
//! its agent died in the middle of is finished or undone by the next one. Neither touches a
//! VM that a request of the same agent is still changing: that request's own work finishes
//! it, and a second writer in the same process would only add patches that fail their
//! guards. A controller in a process of its own (`--role controller`) cannot know of an
//! agent's request under way: its converge may race that request's, and the guards make the
//! loser re-read, as between two agents.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::boot::{self, PlanError};
use super::crd::BootOverrideStatus;
use super::labeled::BOOT_ANNOTATION;
use super::serve::object_json;
use super::{Shared, Stores, VirtualMachineBMC, names, vm_resource, vmi_resource};
use crate::engine::ActionError;
use crate::engine::vm::{BootDevice, BootOverride};

/// On the VM: which record its boot orders hold, and the baseline of a one-shot override.
pub const APPLIED_ANNOTATION: &str = "bmc.kubevirt.io/boot-override-applied";

/// Re-reads after a conflict (409, 422) within one attempt.
const ROUNDS: usize = 8;
/// One attempt's bound: a request the API server never answers is given up and retried.
const ATTEMPT: Duration = Duration::from_secs(10);
/// Retrying a record that could not be written: after this long, nothing having changed,
/// the request fails.
const RECORD_PATIENCE: Duration = Duration::from_secs(30);
/// Retrying an apply or restore; after this long the leader's passes carry on.
const CONVERGE_PATIENCE: Duration = Duration::from_secs(600);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The applied marker's contents.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// [`record_id`] of the record applied.
    pub id: String,
    /// A one-shot override's baseline orders (none for a persistent one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_orders: Option<BTreeMap<String, u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_firmware: Option<String>,
}

/// A record's id: a digest of its fields, as read back from the API server (a schema that
/// prunes some of them gives every reader the same id).
pub fn record_id(r: &BootOverrideStatus) -> String {
    let bytes = serde_json::to_vec(r).expect("serialisable");
    Sha256::digest(&bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The marker in these annotations; one that does not parse counts as none.
pub fn applied(annotations: &BTreeMap<String, String>) -> Option<Applied> {
    annotations
        .get(APPLIED_ANNOTATION)
        .and_then(|j| serde_json::from_str(j).ok())
}

fn applied_in(vm: &Value) -> Option<Applied> {
    vm["metadata"]["annotations"][APPLIED_ANNOTATION]
        .as_str()
        .and_then(|j| serde_json::from_str(j).ok())
}

fn device_of(name: &str) -> Option<BootDevice> {
    match name {
        "pxe" => Some(BootDevice::Pxe),
        "disk" => Some(BootDevice::Disk),
        "cdrom" => Some(BootDevice::Cdrom),
        _ => None,
    }
}

fn is_one_shot(r: &BootOverrideStatus) -> bool {
    r.mode == "Oneshot"
}

/// The recorded firmware as a bootloader to put back.
fn bootloader(original: Option<&str>) -> Option<Value> {
    match original {
        Some("Legacy") => Some(json!({"bios": {}})),
        Some("UEFI") => Some(json!({"efi": {}})),
        _ => None,
    }
}

/// The VM as it would be with `orders`.
fn with_orders(vm: &Value, orders: &BTreeMap<String, u32>) -> Value {
    let mut v = vm.clone();
    if let Some(p) = boot::patch(vm, orders, None) {
        // Computed from `vm` itself: its tests hold.
        let _ = json_patch::patch(&mut v, &p);
    }
    v
}

/// What a request that recorded `stored` wanted: the target when the record lacks it (a
/// CRD schema without `device` and `efi` prunes them).
#[derive(Debug, Clone)]
pub struct Hint {
    pub stored: BootOverrideStatus,
    pub want: BootOverride,
}

/// The orders and bootloader a record asks for on this VM; None when they cannot be known
/// (device pruned from the record, or no longer on the VM).
fn target(
    r: &BootOverrideStatus,
    vm: &Value,
    hint: Option<&Hint>,
) -> Option<(BTreeMap<String, u32>, Option<Value>)> {
    let (device, efi) = match device_of(&r.device) {
        Some(d) => (d, r.efi),
        None => {
            let h = hint.filter(|h| h.stored == *r)?;
            (h.want.device, h.want.efi)
        }
    };
    let orders = boot::plan(&with_orders(vm, &r.boot_orders), device).ok()?;
    let bl = (efi && !boot::is_efi(vm)).then(|| json!({"efi": {}}));
    Some((orders, bl))
}

/// Where the record lives.
enum Holder {
    /// `status.bootOverride` of this VirtualMachineBMC, read at this resourceVersion.
    Crd { name: String, rv: String },
    /// The VM's own annotation (label mode).
    Label,
    /// No VirtualMachineBMC names the VM.
    None,
}

/// The VM, then the record, then the VMI, as the API server has them.
struct Fresh {
    vm: Value,
    holder: Holder,
    record: Option<BootOverrideStatus>,
    /// (uid, phase)
    vmi: Option<(String, String)>,
}

fn failed(what: &str, e: kube::Error) -> ActionError {
    ActionError::Failed(format!("{what}: {e}"))
}

fn vms(sh: &Shared, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(sh.client.clone(), ns, &vm_resource())
}

/// The VirtualMachineBMC serving the VM (the oldest naming it).
fn owner_name(sh: &Shared, ns: &str, vm: &str) -> Option<String> {
    sh.owner(&format!("{ns}/{vm}"))
        .or_else(|| Stores::owners(&sh.stores.vmbmcs()).remove(&(ns.to_string(), vm.to_string())))
        .and_then(|b| b.metadata.name.clone())
}

async fn read(sh: &Shared, ns: &str, vm: &str) -> Result<Option<Fresh>, ActionError> {
    let obj = match sh.call(vms(sh, ns).get(vm)).await {
        Ok(o) => o,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
        Err(e) => return Err(failed("read VM", e)),
    };
    let (holder, record) = if sh.opts.labels.is_some() {
        let record = obj
            .annotations()
            .get(BOOT_ANNOTATION)
            .and_then(|j| serde_json::from_str(j).ok());
        (Holder::Label, record)
    } else {
        match owner_name(sh, ns, vm) {
            None => (Holder::None, None),
            Some(name) => {
                let api: Api<VirtualMachineBMC> = Api::namespaced(sh.client.clone(), ns);
                match sh.call(api.get(&name)).await {
                    Ok(b) => {
                        let rv = b.resource_version().unwrap_or_default();
                        (
                            Holder::Crd { name, rv },
                            b.status.and_then(|s| s.boot_override),
                        )
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 => (Holder::None, None),
                    Err(e) => return Err(failed("read VirtualMachineBMC", e)),
                }
            }
        }
    };
    let vmis: Api<DynamicObject> = Api::namespaced_with(sh.client.clone(), ns, &vmi_resource());
    let vmi = match sh.call(vmis.get(vm)).await {
        Ok(o) => Some((
            o.metadata.uid.clone().unwrap_or_default(),
            o.data["status"]["phase"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )),
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => return Err(failed("read VMI", e)),
    };
    Ok(Some(Fresh {
        vm: object_json(&obj),
        holder,
        record,
        vmi,
    }))
}

/// The boot a one-shot override was for: a Running VMI other than the recorded one.
fn booted(vmi: Option<&(String, String)>, recorded: &str) -> bool {
    vmi.is_some_and(|(uid, phase)| phase == "Running" && uid != recorded)
}

/// The JSON Pointer of an annotation (`~` and `/` escaped).
pub fn annotation_path(key: &str) -> String {
    format!(
        "/metadata/annotations/{}",
        key.replace('~', "~0").replace('/', "~1")
    )
}

/// The guarded patch that gives `vm` these orders, this bootloader and this marker (None:
/// no marker); None if it has them already.
fn vm_patch(
    vm: &Value,
    orders: &BTreeMap<String, u32>,
    bl: Option<Value>,
    marker: Option<&Applied>,
) -> Option<json_patch::Patch> {
    let mut ops: Vec<Value> = boot::patch(vm, orders, bl)
        .and_then(|p| serde_json::to_value(p).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let path = annotation_path(APPLIED_ANNOTATION);
    let annotations = &vm["metadata"]["annotations"];
    let current = annotations[APPLIED_ANNOTATION].as_str();
    let new = marker.map(|m| serde_json::to_string(m).expect("serialisable"));
    match (current, new) {
        (Some(c), Some(n)) if c == n => {}
        (Some(c), Some(n)) => {
            ops.push(json!({"op": "test", "path": path, "value": c}));
            ops.push(json!({"op": "replace", "path": path, "value": n}));
        }
        (Some(c), None) => {
            ops.push(json!({"op": "test", "path": path, "value": c}));
            ops.push(json!({"op": "remove", "path": path}));
        }
        (None, Some(n)) => {
            // No marker to test: the whole object must be as read.
            ops.push(json!({"op": "test", "path": "/metadata/resourceVersion",
                "value": vm["metadata"]["resourceVersion"]}));
            if annotations.is_object() {
                ops.push(json!({"op": "add", "path": path, "value": n}));
            } else {
                ops.push(json!({"op": "add", "path": "/metadata/annotations",
                    "value": {APPLIED_ANNOTATION: n}}));
            }
        }
        (None, None) => {}
    }
    if ops.is_empty() {
        return None;
    }
    Some(serde_json::from_value(Value::Array(ops)).expect("ops are well-formed JSON Patch"))
}

/// Sends a guarded VM patch: true if it landed, false if the VM changed since it was read.
async fn send_vm_patch(
    sh: &Shared,
    ns: &str,
    vm: &str,
    p: json_patch::Patch,
) -> Result<bool, ActionError> {
    match sh
        .call(vms(sh, ns).patch(vm, &PatchParams::default(), &Patch::Json::<()>(p)))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => {
            log::info!("vm={ns}/{vm} changed meanwhile ({}); re-reading", s.code);
            Ok(false)
        }
        // Gone: nothing left to change.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
        Err(e) => Err(failed("patch VM boot order", e)),
    }
}

/// Removes the record read in `f`, if it is still the one read: true if it is gone.
async fn clear_record(sh: &Shared, ns: &str, vm: &str, f: &Fresh) -> Result<bool, ActionError> {
    let r = match &f.holder {
        Holder::None => return Ok(true),
        Holder::Crd { name, rv } => {
            let api: Api<VirtualMachineBMC> = Api::namespaced(sh.client.clone(), ns);
            let patch =
                json!({"metadata": {"resourceVersion": rv}, "status": {"bootOverride": null}});
            sh.call(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)))
                .await
                .map(|_| ())
        }
        Holder::Label => {
            let Some(current) = f.vm["metadata"]["annotations"][BOOT_ANNOTATION].as_str() else {
                return Ok(true);
            };
            let path = annotation_path(BOOT_ANNOTATION);
            let p: json_patch::Patch = serde_json::from_value(json!([
                {"op": "test", "path": path, "value": current},
                {"op": "remove", "path": path},
            ]))
            .expect("a valid JSON Patch");
            sh.call(vms(sh, ns).patch(vm, &PatchParams::default(), &Patch::Json::<()>(p)))
                .await
                .map(|_| ())
        }
    };
    match r {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => Ok(false),
        Err(e) => Err(failed("clear boot override record", e)),
    }
}

/// Writes `rec` if the holder is still as read in `f`: the record as stored, or None if
/// something changed meanwhile.
async fn write_record(
    sh: &Shared,
    ns: &str,
    vm: &str,
    f: &Fresh,
    rec: &BootOverrideStatus,
) -> Result<Option<BootOverrideStatus>, ActionError> {
    let r = match &f.holder {
        Holder::None => {
            return Err(ActionError::Failed(format!(
                "no VirtualMachineBMC for {ns}/{vm}"
            )));
        }
        Holder::Crd { name, rv } => {
            let api: Api<VirtualMachineBMC> = Api::namespaced(sh.client.clone(), ns);
            let patch =
                json!({"metadata": {"resourceVersion": rv}, "status": {"bootOverride": rec}});
            sh.call(api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)))
                .await
                .map(|b| b.status.and_then(|s| s.boot_override))
        }
        Holder::Label => {
            let patch = json!({"metadata": {
                "resourceVersion": f.vm["metadata"]["resourceVersion"],
                "annotations": {BOOT_ANNOTATION: serde_json::to_string(rec).expect("serialisable")},
            }});
            sh.call(vms(sh, ns).patch(vm, &PatchParams::default(), &Patch::Merge(&patch)))
                .await
                .map(|o| {
                    o.annotations()
                        .get(BOOT_ANNOTATION)
                        .and_then(|j| serde_json::from_str(j).ok())
                })
        }
    };
    match r {
        Ok(Some(stored)) => Ok(Some(stored)),
        Ok(None) => Err(ActionError::Failed(
            "the API server dropped the boot override record".into(),
        )),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(failed("record boot override", e)),
    }
}

/// Step 1: records `want` over the baseline. Refusals (no such device) come before any write.
async fn record(
    sh: &Shared,
    ns: &str,
    vm: &str,
    want: BootOverride,
) -> Result<BootOverrideStatus, ActionError> {
    for _ in 0..ROUNDS {
        let f = read(sh, ns, vm)
            .await?
            .ok_or_else(|| ActionError::Failed(format!("VirtualMachine {ns}/{vm} not found")))?;
        let marker = applied_in(&f.vm);
        let (baseline, firmware) = match (&f.record, &marker) {
            // Successive one-shot overrides keep the orders from before the first.
            (Some(o), _) if is_one_shot(o) => (o.boot_orders.clone(), o.original_firmware.clone()),
            // A persistent override not applied yet: what it is about to make the orders.
            (Some(p), m) if m.as_ref().map(|m| &m.id) != Some(&record_id(p)) => {
                match target(p, &f.vm, None) {
                    Some((orders, _)) => (orders, None),
                    None => (boot::current_orders(&f.vm), None),
                }
            }
            // A one-shot override whose record is gone but not yet undone.
            (None, Some(m)) if m.boot_orders.is_some() => (
                m.boot_orders.clone().unwrap_or_default(),
                m.original_firmware.clone(),
            ),
            _ => (boot::current_orders(&f.vm), None),
        };
        boot::plan(&with_orders(&f.vm, &baseline), want.device).map_err(|e| match e {
            PlanError::NoDevice(d) => ActionError::NotInState(format!("the VM has no {d} device")),
            PlanError::Unsupported(d) => ActionError::Unsupported(format!("boot from {d}")),
        })?;
        // The EFI flag switches a BIOS VM to EFI (restored with a one-shot override); a
        // clear flag leaves an EFI VM as it is: most clients never set it, and an
        // EFI-installed guest switched to BIOS would not boot.
        let original_firmware =
            firmware.or_else(|| (want.efi && !boot::is_efi(&f.vm)).then(|| "Legacy".to_string()));
        let rec = BootOverrideStatus {
            mode: if want.persistent {
                "Persistent"
            } else {
                "Oneshot"
            }
            .into(),
            vmi_uid: f
                .vmi
                .as_ref()
                .map(|(uid, _)| uid.clone())
                .unwrap_or_default(),
            boot_orders: baseline,
            original_firmware,
            device: boot::device_name(want.device).into(),
            efi: want.efi,
        };
        if let Some(stored) = write_record(sh, ns, vm, &f, &rec).await? {
            log::info!(
                "vm={ns}/{vm} boot override {} {} recorded (id {})",
                rec.mode,
                rec.device,
                record_id(&stored)
            );
            return Ok(stored);
        }
        log::info!("vm={ns}/{vm} boot override record changed meanwhile; re-reading");
    }
    Err(ActionError::Failed(
        "the boot override record kept changing".into(),
    ))
}

/// `bootdev none`: removes the record; [`converge`] then undoes what the marker says.
async fn clear(sh: &Shared, ns: &str, vm: &str) -> Result<(), ActionError> {
    for _ in 0..ROUNDS {
        let Some(f) = read(sh, ns, vm).await? else {
            return Ok(());
        };
        if f.record.is_none() || clear_record(sh, ns, vm, &f).await? {
            return Ok(());
        }
    }
    Err(ActionError::Failed(
        "the boot override record kept changing".into(),
    ))
}

/// Steps 2 and 3, whichever is due, until the VM and the record agree. Idempotent; safe to
/// run from any number of agents at once.
pub async fn converge(
    sh: &Shared,
    ns: &str,
    vm: &str,
    hint: Option<&Hint>,
) -> Result<(), ActionError> {
    for _ in 0..ROUNDS {
        let Some(f) = read(sh, ns, vm).await? else {
            return Ok(());
        };
        let marker = applied_in(&f.vm);
        let Some(r) = f.record.as_ref() else {
            // A marker without a record: undo what it says.
            let Some(m) = marker else {
                return Ok(());
            };
            let orders = m
                .boot_orders
                .clone()
                .unwrap_or_else(|| boot::current_orders(&f.vm));
            let bl = bootloader(m.original_firmware.as_deref());
            let Some(p) = vm_patch(&f.vm, &orders, bl, None) else {
                return Ok(());
            };
            log::info!(
                "vm={ns}/{vm} boot override {} has no record; undoing it",
                m.id
            );
            send_vm_patch(sh, ns, vm, p).await?;
            continue;
        };
        if is_one_shot(r) && booted(f.vmi.as_ref(), &r.vmi_uid) {
            let bl = bootloader(r.original_firmware.as_deref());
            if let Some(p) = vm_patch(&f.vm, &r.boot_orders, bl, None) {
                log::info!(
                    "vm={ns}/{vm} booted with the one-shot {} override; restoring boot order",
                    r.device
                );
                send_vm_patch(sh, ns, vm, p).await?;
                continue;
            }
            if clear_record(sh, ns, vm, &f).await? {
                return Ok(());
            }
            continue;
        }
        let id = record_id(r);
        if marker.as_ref().is_some_and(|m| m.id == id) {
            return Ok(());
        }
        let Some((orders, bl)) = target(r, &f.vm, hint) else {
            log::warn!(
                "vm={ns}/{vm} boot override {id}: its device is unknown or not on the VM; not applied"
            );
            return Ok(());
        };
        let m = Applied {
            id,
            boot_orders: is_one_shot(r).then(|| r.boot_orders.clone()),
            original_firmware: r.original_firmware.clone().filter(|_| is_one_shot(r)),
        };
        if let Some(p) = vm_patch(&f.vm, &orders, bl, Some(&m)) {
            log::info!(
                "vm={ns}/{vm} applying boot override {} ({})",
                m.id,
                r.device
            );
            send_vm_patch(sh, ns, vm, p).await?;
        }
    }
    Err(ActionError::Failed(
        "the boot order kept changing under us".into(),
    ))
}

/// Runs `attempt` until it succeeds, refuses, or `patience` runs out, backing off between
/// failures; each attempt is bounded by [`ATTEMPT`].
async fn retry<T, F, Fut>(what: &str, patience: Duration, mut attempt: F) -> Result<T, ActionError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ActionError>>,
{
    let start = tokio::time::Instant::now();
    let mut pause = BACKOFF_FIRST;
    loop {
        let r = match tokio::time::timeout(ATTEMPT, attempt()).await {
            Ok(r) => r,
            Err(_) => Err(ActionError::Failed(format!(
                "{what}: no answer within {ATTEMPT:?}"
            ))),
        };
        match r {
            Ok(v) => return Ok(v),
            Err(e @ (ActionError::NotInState(_) | ActionError::Unsupported(_))) => return Err(e),
            Err(e) if start.elapsed() + pause > patience => return Err(e),
            Err(e) => {
                log::warn!("{what}: {e}; again in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Marks a VM as changed by a request of this agent for as long as it lives (see
/// [`Shared::overrides_changing`]); dropped when the request's work ends, finished or not.
struct Changing<'a> {
    sh: &'a Shared,
    key: String,
}

impl<'a> Changing<'a> {
    fn mark(sh: &'a Shared, ns: &str, vm: &str) -> Changing<'a> {
        let key = format!("{ns}/{vm}");
        changing(sh).insert(key.clone());
        Changing { sh, key }
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        changing(self.sh).remove(&self.key);
    }
}

fn changing(sh: &Shared) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
    sh.overrides_changing
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Sets (record, then apply) or clears (remove the record, then undo) a boot override, to
/// the end: meant to run detached from the request that asked for it.
pub async fn set_boot(
    sh: &Shared,
    ns: &str,
    vm: &str,
    want: Option<BootOverride>,
) -> Result<(), ActionError> {
    let what = format!("vm={ns}/{vm} boot override");
    let _changing = Changing::mark(sh, ns, vm);
    let hint = match want {
        Some(w) if w.device == BootDevice::Bios => {
            return Err(ActionError::Unsupported(
                "KubeVirt cannot enter firmware setup".into(),
            ));
        }
        Some(w) => {
            let stored = retry(&what, RECORD_PATIENCE, || record(sh, ns, vm, w)).await?;
            Some(Hint { stored, want: w })
        }
        None => {
            retry(&what, RECORD_PATIENCE, || clear(sh, ns, vm)).await?;
            None
        }
    };
    retry(&what, CONVERGE_PATIENCE, || {
        converge(sh, ns, vm, hint.as_ref())
    })
    .await
}

/// Puts back the orders (and firmware) of a one-shot record and removes the marker: for a
/// VirtualMachineBMC deleted, or a VM no longer selected, before its override's boot.
pub async fn restore_orders(
    sh: &Shared,
    ns: &str,
    vm: &str,
    o: &BootOverrideStatus,
) -> Result<(), ActionError> {
    if !(names::is_label(ns) && names::is_subdomain(vm)) {
        return Err(ActionError::Failed(
            "not a namespace and VirtualMachine name".into(),
        ));
    }
    for _ in 0..ROUNDS {
        let obj = match sh.call(vms(sh, ns).get(vm)).await {
            Ok(o) => o,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(failed("read VM", e)),
        };
        let vm_json = object_json(&obj);
        let bl = bootloader(o.original_firmware.as_deref());
        let Some(p) = vm_patch(&vm_json, &o.boot_orders, bl, None) else {
            return Ok(());
        };
        if send_vm_patch(sh, ns, vm, p).await? {
            return Ok(());
        }
    }
    Err(ActionError::Failed(
        "boot order kept changing while restoring it".into(),
    ))
}

/// Whether the caches show a step due for this VM, whose record (as cached) is `record`;
/// never while a request of this agent is changing it (its own work finishes that).
pub fn due(sh: &Shared, ns: &str, vm: &str, record: Option<&BootOverrideStatus>) -> bool {
    if changing(sh).contains(&format!("{ns}/{vm}")) {
        return false;
    }
    let marker = sh.stores.vm(ns, vm).and_then(|o| applied(o.annotations()));
    match record {
        None => marker.is_some(),
        Some(r) => {
            let vmi = sh.stores.vmi(ns, vm).map(|o| {
                (
                    o.metadata.uid.clone().unwrap_or_default(),
                    o.data["status"]["phase"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            });
            (is_one_shot(r) && booted(vmi.as_ref(), &r.vmi_uid))
                || (device_of(&r.device).is_some() && marker.map(|m| m.id) != Some(record_id(r)))
        }
    }
}

/// One VirtualMachineBMC, as the leader sees it: converges if a step is due.
pub async fn reconcile_bmc(sh: &Shared, b: &VirtualMachineBMC) -> Result<(), ActionError> {
    let ns = b.namespace().unwrap_or_default();
    let vm = &b.spec.virtual_machine_ref.name;
    let record = b.status.as_ref().and_then(|s| s.boot_override.as_ref());
    if !due(sh, &ns, vm, record) {
        return Ok(());
    }
    converge(sh, &ns, vm, None).await
}

/// Every VM with a record or a marker whose caches show a step due: converged. With
/// `bmcs` false, only VMs no served VirtualMachineBMC names (the leader reaches the others
/// one by one). False if one failed.
pub async fn sweep(sh: &Shared, bmcs: bool) -> bool {
    let mut ok = true;
    let mut seen = std::collections::BTreeSet::new();
    if bmcs {
        for b in sh.stores.vmbmcs() {
            if names::check_refs(&b).is_err() || b.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let key = (
                b.namespace().unwrap_or_default(),
                b.spec.virtual_machine_ref.name.clone(),
            );
            if !seen.insert(key.clone()) {
                continue;
            }
            if let Err(e) = reconcile_bmc(sh, &b).await {
                log::warn!("vm={}/{} boot override: {e}", key.0, key.1);
                ok = false;
            }
        }
    }
    for vm in sh.stores.vm.state() {
        if !vm.annotations().contains_key(APPLIED_ANNOTATION) {
            continue;
        }
        let (ns, name) = (vm.namespace().unwrap_or_default(), vm.name_any());
        if seen.contains(&(ns.clone(), name.clone()))
            || sh.owner(&format!("{ns}/{name}")).is_some()
            || changing(sh).contains(&format!("{ns}/{name}"))
            || !(names::is_label(&ns) && names::is_subdomain(&name))
        {
            continue;
        }
        if let Err(e) = converge(sh, &ns, &name, None).await {
            log::warn!("vm={ns}/{name} boot override: {e}");
            ok = false;
        }
    }
    ok
}

/// On start, every agent: every recorded override and every marker, until one pass finds
/// nothing left to do.
pub async fn sweep_on_start(sh: std::sync::Arc<Shared>) {
    super::serve::wait_ready(&sh).await;
    let mut pause = BACKOFF_FIRST;
    while !sweep(&sh, true).await {
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(BACKOFF_MAX);
    }
    sh.overrides_swept
        .store(true, std::sync::atomic::Ordering::Relaxed);
    log::debug!("boot overrides: start-up pass done");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(annotations: Value) -> Value {
        json!({"metadata": {"resourceVersion": "7", "annotations": annotations},
            "spec": {"template": {"spec": {"domain": {"devices": {
            "disks": [{"name": "root", "disk": {}, "bootOrder": 1}],
            "interfaces": [{"name": "net", "masquerade": {}}],
        }}}}}})
    }

    fn one_shot(device: &str) -> BootOverrideStatus {
        BootOverrideStatus {
            mode: "Oneshot".into(),
            vmi_uid: "u1".into(),
            boot_orders: [("disk:root".to_string(), 1)].into(),
            device: device.into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_follow_the_record() {
        let a = one_shot("pxe");
        assert_eq!(record_id(&a), record_id(&a.clone()));
        assert_eq!(record_id(&a).len(), 16);
        assert_ne!(record_id(&a), record_id(&one_shot("disk")));
        let mut b = a.clone();
        b.vmi_uid = "u2".into();
        assert_ne!(record_id(&a), record_id(&b));
    }

    #[test]
    fn target_is_planned_over_the_baseline() {
        // The VM already holds a PXE override; a second one asks for disk: the target is
        // computed from the baseline, not from the changed orders.
        let mut v = vm(json!({}));
        v["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["bootOrder"] = json!(2);
        v["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["bootOrder"] = json!(1);
        let (orders, bl) = target(&one_shot("disk"), &v, None).unwrap();
        assert_eq!(orders, BTreeMap::from([("disk:root".to_string(), 1)]));
        assert_eq!(bl, None);
        let (orders, _) = target(&one_shot("pxe"), &v, None).unwrap();
        assert_eq!(
            orders,
            BTreeMap::from([
                ("interface:net".to_string(), 1),
                ("disk:root".to_string(), 2)
            ])
        );
        // A pruned device: only the request that wrote that very record knows it.
        let pruned = one_shot("");
        assert_eq!(target(&pruned, &v, None), None);
        let want = BootOverride {
            device: BootDevice::Pxe,
            persistent: false,
            efi: true,
        };
        let h = Hint {
            stored: pruned.clone(),
            want,
        };
        let (_, bl) = target(&pruned, &v, Some(&h)).unwrap();
        assert_eq!(bl, Some(json!({"efi": {}})));
        let other = Hint {
            stored: one_shot("x"),
            want,
        };
        assert_eq!(target(&pruned, &v, Some(&other)), None);
    }

    #[test]
    fn every_apply_and_restore_is_guarded_by_the_marker() {
        let m = Applied {
            id: "abc".into(),
            boot_orders: Some([("disk:root".to_string(), 1)].into()),
            original_firmware: None,
        };
        let orders = BTreeMap::from([("disk:root".to_string(), 1)]);
        // Same orders, no marker yet: the marker alone is written, tested on the
        // resourceVersion.
        let v = vm(json!({"other": "x"}));
        let p = serde_json::to_value(vm_patch(&v, &orders, None, Some(&m)).unwrap()).unwrap();
        assert_eq!(
            p[0],
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": "7"})
        );
        assert_eq!(p[1]["op"], "add");
        assert_eq!(
            p[1]["path"],
            "/metadata/annotations/bmc.kubevirt.io~1boot-override-applied"
        );
        let mut after = v.clone();
        json_patch::patch(
            &mut after,
            &serde_json::from_value::<json_patch::Patch>(p).unwrap(),
        )
        .unwrap();
        assert_eq!(applied_in(&after), Some(m.clone()));
        assert_eq!(after["metadata"]["annotations"]["other"], "x");
        // Already so: nothing to write.
        assert!(vm_patch(&after, &orders, None, Some(&m)).is_none());
        // Restoring tests the marker as read, then removes it.
        let p = serde_json::to_value(vm_patch(&after, &orders, None, None).unwrap()).unwrap();
        assert_eq!(p[0]["op"], "test");
        assert_eq!(p[1]["op"], "remove");
        // A VM without annotations gets the map.
        let bare = vm(Value::Null);
        let p = serde_json::to_value(vm_patch(&bare, &orders, None, Some(&m)).unwrap()).unwrap();
        assert_eq!(p[1]["path"], "/metadata/annotations");
        let mut after = bare.clone();
        json_patch::patch(
            &mut after,
            &serde_json::from_value::<json_patch::Patch>(p).unwrap(),
        )
        .unwrap();
        assert_eq!(applied_in(&after), Some(m));
    }

    #[test]
    fn the_boot_is_another_running_vmi() {
        let vmi = |uid: &str, phase: &str| Some((uid.to_string(), phase.to_string()));
        assert!(!booted(None, "u1"));
        assert!(!booted(vmi("u1", "Running").as_ref(), "u1"));
        assert!(!booted(vmi("u2", "Scheduling").as_ref(), "u1"));
        assert!(booted(vmi("u2", "Running").as_ref(), "u1"));
        assert!(booted(vmi("u2", "Running").as_ref(), ""));
    }
}
