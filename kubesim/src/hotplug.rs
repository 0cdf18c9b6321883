//! KubeVirt's volume hotplug subresources on a VM (`PUT .../virtualmachines/{name}/addvolume`
//! and `removevolume`, 202) as the DeclarativeHotplugVolumes gate has them: they edit the
//! VM's template, adding or removing the volume (and a disk for it when none has its name; a
//! CD-ROM disk stays when its volume goes, which is how a CD is ejected), and a running VMI
//! shows the change in `status.volumeStatus` at once.

use serde_json::{Value, json};

use crate::kinds::Kind;
use crate::kubevirt::{is_final, vm_conflict, vm_not_found};
use crate::status::ApiError;
use crate::store::Store;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Add,
    Remove,
}

impl Op {
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "addvolume" => Some(Op::Add),
            "removevolume" => Some(Op::Remove),
            _ => None,
        }
    }
}

fn body_of(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("Request body is empty"));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "Can not unmarshal Request body to struct, error: {e}"
        ))
    })
}

/// The array at `path` under `v`, made (with the objects above it) when absent.
fn list<'a>(v: &'a mut Value, path: &[&str]) -> &'a mut Vec<Value> {
    let mut at = v;
    for (i, key) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let wrong = if last {
            !at[*key].is_array()
        } else {
            !at[*key].is_object()
        };
        if wrong {
            at[*key] = if last { json!([]) } else { json!({}) };
        }
        at = &mut at[*key];
    }
    at.as_array_mut().expect("made an array above")
}

const VOLUMES: &[&str] = &["spec", "volumes"];
const DISKS: &[&str] = &["spec", "domain", "devices", "disks"];

fn named<'a>(items: &'a [Value], name: &str) -> Option<&'a Value> {
    items.iter().find(|i| i["name"] == name)
}

/// Adds `volume` (and `disk` unless a disk has its name) to a VM template or a VMI spec.
fn add_to(spec_root: &mut Value, volume: &Value, disk: &Value) {
    let name = volume["name"].as_str().unwrap_or_default().to_string();
    list(spec_root, VOLUMES).push(volume.clone());
    let disks = list(spec_root, DISKS);
    if named(disks, &name).is_none() {
        disks.push(disk.clone());
    }
}

/// Removes the volume `name`; its disk goes too unless it is a CD-ROM.
fn remove_from(spec_root: &mut Value, name: &str) {
    list(spec_root, VOLUMES).retain(|v| v["name"] != name);
    list(spec_root, DISKS).retain(|d| d["name"] != name || d.get("cdrom").is_some());
}

pub fn handle(store: &Store, ns: &str, vm: &str, op: Op, body: &[u8]) -> Result<(), ApiError> {
    let opts = body_of(body)?;
    let dry_run = opts["dryRun"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v == "All"));
    let current = store
        .get(Kind::VirtualMachine, ns, vm)
        .ok_or_else(|| vm_not_found(vm))?;
    let Some(name) = opts["name"].as_str().filter(|n| !n.is_empty()) else {
        let what = if op == Op::Add { "Add" } else { "Remove" };
        return Err(ApiError::bad_request(format!(
            "{what}VolumeOptions requires name to be set"
        )));
    };
    let template = &current["spec"]["template"];
    let exists = template["spec"]["volumes"]
        .as_array()
        .is_some_and(|v| named(v, name).is_some());
    let change: Box<dyn Fn(&mut Value)> = match op {
        Op::Add => {
            let Some(disk) = opts["disk"].as_object() else {
                return Err(ApiError::bad_request(
                    "AddVolumeOptions requires disk to not be nil",
                ));
            };
            let source = &opts["volumeSource"];
            let mut volume = json!({ "name": name });
            if let Some(dv) = source["dataVolume"]["name"].as_str() {
                volume["dataVolume"] = json!({ "name": dv, "hotpluggable": true });
            } else if let Some(claim) = source["persistentVolumeClaim"]["claimName"].as_str() {
                volume["persistentVolumeClaim"] =
                    json!({ "claimName": claim, "hotpluggable": true });
            } else {
                return Err(ApiError::bad_request(
                    "AddVolumeOptions requires a VolumeSource to be set",
                ));
            }
            if exists {
                return Err(vm_conflict(
                    vm,
                    &format!(
                        "Unable to add volume [{name}] because volume with that name already exists"
                    ),
                ));
            }
            let mut disk = Value::Object(disk.clone());
            disk["name"] = json!(name);
            Box::new(move |root| add_to(root, &volume, &disk))
        }
        Op::Remove => {
            if !exists {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("Unable to remove volume [{name}] because it does not exist"),
                ));
            }
            let name = name.to_string();
            Box::new(move |root| remove_from(root, &name))
        }
    };
    if dry_run {
        return Ok(());
    }
    store.modify(Kind::VirtualMachine, ns, vm, |v| {
        change(&mut v["spec"]["template"]);
    });
    if let Some(vmi) = store.get(Kind::VirtualMachineInstance, ns, vm)
        && !is_final(&vmi)
    {
        store.modify(Kind::VirtualMachineInstance, ns, vm, |v| {
            change(v);
            let status = list(v, &["status", "volumeStatus"]);
            status.retain(|s| s["name"] != name);
            if op == Op::Add {
                status.push(json!({
                    "name": name, "target": "", "phase": "Ready", "reason": "VolumeReady",
                    "message": "Successfully attach hotplugged volume",
                    "hotplugVolume": { "attachPodName": format!("hp-volume-{vm}") },
                }));
            }
        });
    }
    Ok(())
}
