//! Boot device overrides as KubeVirt boot orders (`spec.template.spec.domain.devices.disks[]`
//! and `.interfaces[].bootOrder`), applied by a JSON Patch whose `test` ops guard the device
//! lists it rewrites: a concurrent edit makes the server answer 422 and the caller re-reads.
//! A template change applies at the VM's next start, as a BIOS setting would.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::engine::vm::BootDevice;

const DEVICES: &str = "/spec/template/spec/domain/devices";
const BOOTLOADER: &str = "/spec/template/spec/domain/firmware/bootloader";

/// Device classes as IPMI names them: a disk entry with a `cdrom` key is a CD-ROM, any other
/// disk entry is a disk, an interface is the network (PXE).
fn class_of(list: &str, dev: &Value) -> BootDevice {
    match list {
        "interfaces" => BootDevice::Pxe,
        _ if dev.get("cdrom").is_some() => BootDevice::Cdrom,
        _ => BootDevice::Disk,
    }
}

fn key_of(list: &str, dev: &Value) -> String {
    let class = match class_of(list, dev) {
        BootDevice::Pxe => "interface",
        BootDevice::Cdrom => "cdrom",
        _ => "disk",
    };
    format!("{class}:{}", dev["name"].as_str().unwrap_or(""))
}

fn devices(vm: &Value, list: &str) -> Vec<Value> {
    vm["spec"]["template"]["spec"]["domain"]["devices"][list]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The current boot orders, keyed as in `status.bootOverride.bootOrders`.
pub fn current_orders(vm: &Value) -> BTreeMap<String, u32> {
    let mut m = BTreeMap::new();
    for list in ["disks", "interfaces"] {
        for d in devices(vm, list) {
            if let Some(o) = d["bootOrder"].as_u64() {
                m.insert(key_of(list, &d), o as u32);
            }
        }
    }
    m
}

/// The class of the device with the lowest boot order, if any has one.
pub fn first_class(vm: &Value) -> Option<BootDevice> {
    let mut best: Option<(u64, BootDevice)> = None;
    for list in ["disks", "interfaces"] {
        for d in devices(vm, list) {
            if let Some(o) = d["bootOrder"].as_u64()
                && best.is_none_or(|(b, _)| o < b)
            {
                best = Some((o, class_of(list, &d)));
            }
        }
    }
    best.map(|(_, c)| c)
}

/// Whether the VM boots with EFI (`firmware.bootloader.efi`); KubeVirt's default is BIOS.
pub fn is_efi(vm: &Value) -> bool {
    vm["spec"]["template"]["spec"]["domain"]["firmware"]["bootloader"]
        .get("efi")
        .is_some()
}

#[derive(Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The VM has no device of the chosen class: nothing to boot from, and renumbering
    /// would only push the others down. Answered as "not in this state".
    NoDevice(BootDevice),
    /// BIOS setup: KubeVirt has no way to enter firmware setup.
    Unsupported(BootDevice),
}

/// The orders that put `first` ahead of everything else: every device of that class, in
/// their present order (those with a bootOrder by it, then the rest as listed), numbered
/// from 1; then every other device that had a bootOrder, keeping their relative order. If no
/// device had one (KubeVirt's default: the disks as listed), the other disks follow in list
/// order so the machine still falls back to them. Devices of other classes are never wiped.
pub fn plan(vm: &Value, first: BootDevice) -> Result<BTreeMap<String, u32>, PlanError> {
    if !matches!(
        first,
        BootDevice::Pxe | BootDevice::Disk | BootDevice::Cdrom
    ) {
        return Err(PlanError::Unsupported(first));
    }
    // (key, class, old order, list position)
    let mut all = Vec::new();
    let mut pos = 0;
    for list in ["disks", "interfaces"] {
        for d in devices(vm, list) {
            all.push((
                key_of(list, &d),
                class_of(list, &d),
                d["bootOrder"].as_u64(),
                pos,
            ));
            pos += 1;
        }
    }
    let by_order = |v: &mut Vec<&(String, BootDevice, Option<u64>, usize)>| {
        v.sort_by_key(|(_, _, o, p)| (o.is_none(), o.unwrap_or(0), *p))
    };
    let mut chosen: Vec<_> = all.iter().filter(|d| d.1 == first).collect();
    if chosen.is_empty() {
        return Err(PlanError::NoDevice(first));
    }
    by_order(&mut chosen);
    let any_order = all.iter().any(|d| d.2.is_some());
    let mut rest: Vec<_> = all
        .iter()
        .filter(|d| d.1 != first && (d.2.is_some() || (!any_order && d.1 == BootDevice::Disk)))
        .collect();
    by_order(&mut rest);
    Ok(chosen
        .into_iter()
        .chain(rest)
        .enumerate()
        .map(|(i, d)| (d.0.clone(), i as u32 + 1))
        .collect())
}

/// The JSON Patch that sets `orders` (a device absent from it loses its bootOrder) and, when
/// `efi` is Some, the bootloader. Each device list it rewrites is first `test`ed against the
/// state it was computed from. None if nothing would change.
pub fn patch(
    vm: &Value,
    orders: &BTreeMap<String, u32>,
    bootloader: Option<Value>,
) -> Option<json_patch::Patch> {
    let mut ops = Vec::new();
    for list in ["disks", "interfaces"] {
        let old = devices(vm, list);
        let new: Vec<Value> = old
            .iter()
            .map(|d| {
                let mut d = d.clone();
                match orders.get(&key_of(list, &d)) {
                    Some(o) => d["bootOrder"] = json!(o),
                    None => {
                        if let Some(m) = d.as_object_mut() {
                            m.remove("bootOrder");
                        }
                    }
                }
                d
            })
            .collect();
        if new != old {
            let path = format!("{DEVICES}/{list}");
            ops.push(json!({"op": "test", "path": path, "value": old}));
            ops.push(json!({"op": "replace", "path": path, "value": new}));
        }
    }
    if let Some(bl) = bootloader {
        let firmware = &vm["spec"]["template"]["spec"]["domain"]["firmware"];
        if firmware.is_null() {
            ops.push(json!({"op": "add", "path": "/spec/template/spec/domain/firmware", "value": {"bootloader": bl}}));
        } else if firmware["bootloader"] != bl {
            ops.push(json!({"op": "add", "path": BOOTLOADER, "value": bl}));
        }
    }
    if ops.is_empty() {
        return None;
    }
    Some(serde_json::from_value(Value::Array(ops)).expect("ops are well-formed JSON Patch"))
}

pub fn device_name(d: BootDevice) -> &'static str {
    match d {
        BootDevice::Pxe => "pxe",
        BootDevice::Disk => "disk",
        BootDevice::Cdrom => "cdrom",
        BootDevice::Bios => "bios",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> Value {
        json!({"spec": {"template": {"spec": {"domain": {"devices": {
            "disks": [
                {"name": "root", "disk": {}, "bootOrder": 1},
                {"name": "data", "disk": {}},
                {"name": "iso", "cdrom": {}, "bootOrder": 2},
            ],
            "interfaces": [{"name": "default", "masquerade": {}}, {"name": "pxe", "bridge": {}, "bootOrder": 3}],
        }}}}}})
    }

    #[test]
    fn chosen_class_first_rest_keep_order() {
        let p = plan(&vm(), BootDevice::Pxe).unwrap();
        let want: BTreeMap<String, u32> = [
            ("interface:pxe", 1),
            ("interface:default", 2),
            ("disk:root", 3),
            ("cdrom:iso", 4),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(p, want);
        let p = plan(&vm(), BootDevice::Cdrom).unwrap();
        assert_eq!(
            (p["cdrom:iso"], p["disk:root"], p["interface:pxe"]),
            (1, 2, 3)
        );
        assert!(!p.contains_key("disk:data") && !p.contains_key("interface:default"));
        let p = plan(&vm(), BootDevice::Disk).unwrap();
        assert_eq!(
            (
                p["disk:root"],
                p["disk:data"],
                p["cdrom:iso"],
                p["interface:pxe"]
            ),
            (1, 2, 3, 4)
        );
    }

    #[test]
    fn missing_class_and_bios_are_refused() {
        let mut v = vm();
        v["spec"]["template"]["spec"]["domain"]["devices"]["disks"] =
            json!([{"name": "root", "disk": {}, "bootOrder": 1}]);
        assert_eq!(
            plan(&v, BootDevice::Cdrom),
            Err(PlanError::NoDevice(BootDevice::Cdrom))
        );
        assert_eq!(
            plan(&v, BootDevice::Bios),
            Err(PlanError::Unsupported(BootDevice::Bios))
        );
    }

    #[test]
    fn no_orders_means_disks_stay_bootable() {
        let v = json!({"spec": {"template": {"spec": {"domain": {"devices": {
            "disks": [{"name": "a", "disk": {}}, {"name": "b", "disk": {}}], "interfaces": [{"name": "n"}]}}}}}});
        let p = plan(&v, BootDevice::Pxe).unwrap();
        assert_eq!((p["interface:n"], p["disk:a"], p["disk:b"]), (1, 2, 3));
    }

    #[test]
    fn patch_tests_then_replaces_and_restores() {
        let v = vm();
        let before = current_orders(&v);
        let p = plan(&v, BootDevice::Pxe).unwrap();
        let jp = patch(&v, &p, Some(json!({"efi": {}}))).unwrap();
        let ops = serde_json::to_value(&jp).unwrap();
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(ops[1]["op"], "replace");
        let mut after = v.clone();
        json_patch::patch(&mut after, &jp).unwrap();
        assert_eq!(current_orders(&after), p);
        assert!(is_efi(&after));
        // Restoring the recorded orders gives the original devices back, byte for byte.
        let back = patch(&after, &before, None).unwrap();
        json_patch::patch(&mut after, &back).unwrap();
        assert_eq!(
            after["spec"]["template"]["spec"]["domain"]["devices"],
            v["spec"]["template"]["spec"]["domain"]["devices"]
        );
        assert!(patch(&v, &before, None).is_none());
    }
}
