//! From cluster objects to what the engine reads: a VM's power state, GUID and boot override,
//! and a BMC's users. Pure functions over the objects (cached `DynamicObject`s, or their JSON
//! in tests: see [`Object`]), tested below.

use kube::api::DynamicObject;
use serde_json::Value;

use super::crd::BootOverrideStatus;
use crate::engine::config::{Privilege, User};
use crate::engine::vm::{BootDevice, BootOverride, PowerState, uuid_to_wire};

/// Read access to a KubeVirt object: the cached `DynamicObject` (metadata typed, the rest
/// JSON, read in place without a copy) or plain JSON.
pub trait Object {
    /// A top-level field other than metadata (`spec`, `status`).
    fn top(&self, key: &str) -> &Value;
    /// Has a deletionTimestamp.
    fn deleting(&self) -> bool;
    fn uid(&self) -> Option<&str>;
}

impl Object for DynamicObject {
    fn top(&self, key: &str) -> &Value {
        &self.data[key]
    }
    fn deleting(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }
    fn uid(&self) -> Option<&str> {
        self.metadata.uid.as_deref()
    }
}

impl Object for Value {
    fn top(&self, key: &str) -> &Value {
        &self[key]
    }
    fn deleting(&self) -> bool {
        !self["metadata"]["deletionTimestamp"].is_null()
    }
    fn uid(&self) -> Option<&str> {
        self["metadata"]["uid"].as_str()
    }
}

/// Power as a physical BMC would report it, from the VM and its VMI, following KubeVirt's
/// VMI lifecycle. The first rule that matches wins:
///
/// | cluster state | power | why |
/// |---|---|---|
/// | VMI with `deletionTimestamp`, phase not final | Stopping | the guest is shutting down |
/// | VM `printableStatus` Stopping or Terminating, VMI not final | Stopping | a deletion is expected |
/// | no VMI, VM `printableStatus` Starting | Starting | the controller is about to create it |
/// | no VMI | Off | |
/// | VMI `Succeeded` or `Failed` | Off | the guest is down, even while the object lingers |
/// | VMI `""`, `Pending`, `Scheduling`, `Scheduled`, `WaitingForSync` | Starting | no guest CPU yet |
/// | VMI `Running`, not paused | On | |
/// | VMI `Running` and paused (condition `Paused=True`) | On | the guest holds its memory and devices, as a suspended machine keeps power; "power off" must still stop it, and "power on" must not answer as if it were off (KubeVirt refuses a start of a paused VM) |
/// | VMI `Unknown` | On | virt-handler lost track (node unreachable): the guest may well still run, and KubeVirt does not delete it; On lets "power off"/"reset" reach KubeVirt instead of being refused as busy forever |
/// | any other phase | Starting | a phase this agent does not know is treated as a transition: power commands other than off wait for it to end (0xC0 when it outlasts the deadline) rather than act on a guess |
pub fn power_state<O: Object>(vm: Option<&O>, vmi: Option<&O>) -> PowerState {
    let printable = vm
        .and_then(|v| v.top("status")["printableStatus"].as_str())
        .unwrap_or("");
    let Some(vmi) = vmi else {
        return if printable == "Starting" {
            PowerState::Starting
        } else {
            PowerState::Off
        };
    };
    let phase = vmi.top("status")["phase"].as_str().unwrap_or("");
    let finished = matches!(phase, "Succeeded" | "Failed");
    if finished {
        return PowerState::Off;
    }
    if vmi.deleting() || matches!(printable, "Stopping" | "Terminating") {
        return PowerState::Stopping;
    }
    match phase {
        "Running" | "Unknown" => PowerState::On,
        _ => PowerState::Starting,
    }
}

/// What the views ([`power_state`], [`guid`], [`boot_override`]), the leader and the
/// hardware summary ([`super::hardware`]) read of a cached VM, as JSON pointers into its data
/// (metadata is kept apart, whole), plus its volumes (which one is in the CD drive,
/// [`super::media`]). Boot-order changes re-read the VM from the API server; nothing else is
/// needed.
pub const VM_FIELDS: &[&str] = &[
    "/status/printableStatus",
    "/spec/template/spec/domain/firmware",
    "/spec/template/spec/domain/devices/disks",
    "/spec/template/spec/domain/devices/interfaces",
    "/spec/template/spec/domain/cpu",
    "/spec/template/spec/domain/memory",
    "/spec/template/spec/domain/resources",
    "/spec/template/spec/volumes",
];

/// What is read of a cached VMI: its phase (power, the end of a one-shot override).
pub const VMI_FIELDS: &[&str] = &["/status/phase"];

/// Keeps only the `fields` (JSON pointers) of `data`, moved, not copied. A real VMI's status
/// (interfaces, volumes, guest OS info, migration state...) and a VM's template run to
/// kilobytes each; at thousands of VMs that, not the BMCs, would be most of the agent's memory.
pub fn prune(data: &mut Value, fields: &[&str]) {
    let mut kept = Value::Object(Default::default());
    for pointer in fields {
        let Some(v) = data.pointer_mut(pointer).map(Value::take) else {
            continue;
        };
        let mut at = &mut kept;
        let mut keys = pointer.split('/').skip(1).peekable();
        while let Some(k) = keys.next() {
            let Some(obj) = at.as_object_mut() else {
                break;
            };
            if keys.peek().is_none() {
                obj.insert(k.to_string(), v);
                break;
            }
            at = obj
                .entry(k.to_string())
                .or_insert_with(|| Value::Object(Default::default()));
        }
    }
    *data = kept;
}

/// The VMI was started paused, or was paused since.
pub fn is_paused(vmi: &Value) -> bool {
    vmi["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Paused" && c["status"] == "True")
    })
}

/// The System GUID: the SMBIOS UUID the guest sees (`firmware.uuid`, stable across restarts),
/// else the VM's uid; in IPMI's byte order. None if neither parses.
pub fn guid<O: Object>(vm: &O) -> Option<[u8; 16]> {
    let s = vm.top("spec")["template"]["spec"]["domain"]["firmware"]["uuid"]
        .as_str()
        .or_else(|| vm.uid())?;
    parse_uuid(s).map(uuid_to_wire)
}

/// Parses the RFC 4122 text form (hyphens optional).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The override IPMI reads back, from `status.bootOverride`. Its `device` and `efi` are
/// ours, not the peer's: under a CRD schema without them (KubeVirtBMC's) the API server
/// prunes them, and they are read from the VM instead (the class of its first boot device,
/// its bootloader).
pub fn boot_override(
    status: Option<&BootOverrideStatus>,
    vm: Option<&Value>,
) -> Option<BootOverride> {
    let s = status?;
    let (device, efi) = match s.device.as_str() {
        "pxe" => (BootDevice::Pxe, s.efi),
        "disk" => (BootDevice::Disk, s.efi),
        "cdrom" => (BootDevice::Cdrom, s.efi),
        _ => {
            let vm = vm?;
            (super::boot::first_class(vm)?, super::boot::is_efi(vm))
        }
    };
    Some(BootOverride {
        device,
        persistent: s.mode == "Persistent",
        efi,
    })
}

/// Why a BMC has no users: written into the SecretAvailable condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretProblem {
    NotFound,
    Invalid(String),
}

/// The BMC's users from the Secret's `username` and `password` keys (the peer's Secret
/// layout), with Admin privilege: the peer has one user who may do everything.
pub fn users_from_secret(
    secret: Option<&k8s_openapi::api::core::v1::Secret>,
) -> Result<Vec<User>, SecretProblem> {
    let secret = secret.ok_or(SecretProblem::NotFound)?;
    let key = |k: &str| -> Result<String, SecretProblem> {
        let from_data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| String::from_utf8(b.0.clone()));
        // stringData is write-only on a real server; a fixture may still hand it back.
        let from_string = secret.string_data.as_ref().and_then(|d| d.get(k)).cloned();
        match (from_data, from_string) {
            (Some(Ok(v)), _) => Ok(v),
            (Some(Err(_)), _) => Err(SecretProblem::Invalid(format!("key {k:?} is not UTF-8"))),
            (None, Some(v)) => Ok(v),
            (None, None) => Err(SecretProblem::Invalid(format!("key {k:?} is missing"))),
        }
    };
    let (name, password) = (key("username")?, key("password")?);
    let (name, password) = (name.trim_end_matches('\n'), password.trim_end_matches('\n'));
    // The rules are checked here so that the condition names the key and the rule only:
    // `User::new`'s errors quote the user name, and whoever may create a VirtualMachineBMC
    // must not read the Secrets of its namespace back through its status.
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(SecretProblem::Invalid(format!(
            "the Secret's username must be 1 to {MAX_NAME} bytes"
        )));
    }
    if password.len() > MAX_PASSWORD {
        return Err(SecretProblem::Invalid(format!(
            "the Secret's password must be at most {MAX_PASSWORD} bytes"
        )));
    }
    let user = User::new(name, password, Privilege::Admin).map_err(|_| {
        SecretProblem::Invalid("the Secret's username or password is not usable".into())
    })?;
    Ok(vec![user])
}

/// A user name is at most 16 bytes (IPMI 2.0 §13.20, §22.16).
const MAX_NAME: usize = 16;
/// A password is at most 20 bytes: the key K_UID it pads to (IPMI 2.0 §13.31).
const MAX_PASSWORD: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(phase: &str) -> Value {
        json!({"metadata": {"name": "v"}, "status": {"phase": phase}})
    }

    #[test]
    fn power_mapping_covers_every_phase() {
        let vm = json!({"status": {"printableStatus": "Running"}});
        assert_eq!(power_state(Some(&vm), None), PowerState::Off);
        assert_eq!(
            power_state(
                Some(&json!({"status": {"printableStatus": "Starting"}})),
                None
            ),
            PowerState::Starting
        );
        for p in [
            "",
            "Pending",
            "Scheduling",
            "Scheduled",
            "WaitingForSync",
            "Surprise",
        ] {
            assert_eq!(
                power_state(Some(&vm), Some(&vmi(p))),
                PowerState::Starting,
                "{p}"
            );
        }
        assert_eq!(
            power_state(Some(&vm), Some(&vmi("Running"))),
            PowerState::On
        );
        assert_eq!(
            power_state(Some(&vm), Some(&vmi("Unknown"))),
            PowerState::On
        );
        let paused = json!({"status": {"phase": "Running", "conditions": [{"type": "Paused", "status": "True"}]}});
        assert!(is_paused(&paused));
        assert_eq!(power_state(Some(&vm), Some(&paused)), PowerState::On);
        for p in ["Succeeded", "Failed"] {
            assert_eq!(
                power_state(Some(&vm), Some(&vmi(p))),
                PowerState::Off,
                "{p}"
            );
        }
        let mut deleting = vmi("Running");
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(
            power_state(Some(&vm), Some(&deleting)),
            PowerState::Stopping
        );
        let stopping = json!({"status": {"printableStatus": "Stopping"}});
        assert_eq!(
            power_state(Some(&stopping), Some(&vmi("Running"))),
            PowerState::Stopping
        );
        assert_eq!(power_state::<Value>(None, None), PowerState::Off);
        let cached: DynamicObject = serde_json::from_value(json!({"metadata": {"name": "v", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}})).unwrap();
        assert_eq!(power_state(None, Some(&cached)), PowerState::Stopping);
    }

    #[test]
    fn pruned_objects_give_the_same_views() {
        let mut vm = json!({
            "spec": {"runStrategy": "Always", "dataVolumeTemplates": [{"spec": {"storage": {}}}],
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {
                    "domain": {"cpu": {"cores": 2}, "resources": {"requests": {"memory": "2Gi"}},
                        "firmware": {"uuid": "01020304-0506-0708-090a-0b0c0d0e0f10", "bootloader": {"efi": {}}},
                        "devices": {"disks": [{"name": "root", "disk": {}, "bootOrder": 2}],
                            "interfaces": [{"name": "pxe", "masquerade": {}, "bootOrder": 1}],
                            "rng": {}}},
                    "networks": [{"name": "pxe", "pod": {}}],
                    "volumes": [{"name": "root", "containerDisk": {"image": "x"}}]}}},
            "status": {"printableStatus": "Running", "ready": true, "created": true,
                "conditions": [{"type": "Ready", "status": "True"}], "volumeSnapshotStatuses": []}
        });
        let mut vmi = json!({"status": {"phase": "Running", "nodeName": "n1",
            "interfaces": [{"ipAddress": "10.0.0.1", "mac": "02:00:00:00:00:01"}],
            "guestOSInfo": {"id": "fedora"}, "volumeStatus": [{"name": "root"}]}});
        let o = BootOverrideStatus::default();
        let before = (
            power_state(Some(&vm), Some(&vmi)),
            guid(&vm),
            boot_override(Some(&o), Some(&vm)),
            crate::cluster::boot::current_orders(&vm),
            crate::cluster::hardware::of_vm(&vm),
        );
        prune(&mut vm, VM_FIELDS);
        prune(&mut vmi, VMI_FIELDS);
        let after = (
            power_state(Some(&vm), Some(&vmi)),
            guid(&vm),
            boot_override(Some(&o), Some(&vm)),
            crate::cluster::boot::current_orders(&vm),
            crate::cluster::hardware::of_vm(&vm),
        );
        assert_eq!(before, after);
        assert_eq!(vmi, json!({"status": {"phase": "Running"}}));
        assert_eq!(
            vm,
            json!({"status": {"printableStatus": "Running"},
                "spec": {"template": {"spec": {"domain": {
                    "cpu": {"cores": 2}, "resources": {"requests": {"memory": "2Gi"}},
                    "firmware": {"uuid": "01020304-0506-0708-090a-0b0c0d0e0f10", "bootloader": {"efi": {}}},
                    "devices": {"disks": [{"name": "root", "disk": {}, "bootOrder": 2}],
                        "interfaces": [{"name": "pxe", "masquerade": {}, "bootOrder": 1}]}},
                    "volumes": [{"name": "root", "containerDisk": {"image": "x"}}]}}}})
        );
        // Missing fields stay missing; a VM without devices is still a VM.
        let mut bare = json!({"spec": {"running": false}});
        prune(&mut bare, VM_FIELDS);
        assert_eq!(bare, json!({}));
    }

    #[test]
    fn guid_prefers_firmware_uuid() {
        let vm = json!({"metadata": {"uid": "00000000-0000-0000-0000-000000000001"},
            "spec": {"template": {"spec": {"domain": {"firmware": {"uuid": "01020304-0506-0708-090a-0b0c0d0e0f10"}}}}}});
        assert_eq!(
            guid(&vm).unwrap(),
            uuid_to_wire([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])
        );
        let vm = json!({"metadata": {"uid": "00000000-0000-0000-0000-000000000001"}});
        assert_eq!(
            guid(&vm).unwrap(),
            uuid_to_wire([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        );
        assert_eq!(guid(&json!({})), None);
        let cached: DynamicObject = serde_json::from_value(json!({"metadata": {"name": "v", "uid": "00000000-0000-0000-0000-000000000002"}, "spec": {}})).unwrap();
        assert_eq!(guid(&cached).unwrap()[0], 2);
        assert_eq!(parse_uuid("xyz"), None);
    }

    #[test]
    fn boot_override_without_our_fields_reads_the_vm() {
        let vm = json!({"spec": {"template": {"spec": {"domain": {
            "firmware": {"bootloader": {"efi": {}}},
            "devices": {"disks": [{"name": "root", "disk": {}, "bootOrder": 2}], "interfaces": [{"name": "n", "bootOrder": 1}]}}}}}});
        let pruned = BootOverrideStatus {
            mode: "Oneshot".into(),
            ..Default::default()
        };
        let b = boot_override(Some(&pruned), Some(&vm)).unwrap();
        assert_eq!(
            (b.device, b.persistent, b.efi),
            (BootDevice::Pxe, false, true)
        );
        let ours = BootOverrideStatus {
            mode: "Persistent".into(),
            device: "disk".into(),
            ..Default::default()
        };
        let b = boot_override(Some(&ours), Some(&vm)).unwrap();
        assert_eq!(
            (b.device, b.persistent, b.efi),
            (BootDevice::Disk, true, false)
        );
        assert_eq!(boot_override(None, Some(&vm)), None);
    }

    #[test]
    fn secret_keys() {
        use k8s_openapi::ByteString;
        let mut s = k8s_openapi::api::core::v1::Secret::default();
        assert_eq!(users_from_secret(None), Err(SecretProblem::NotFound));
        assert!(matches!(
            users_from_secret(Some(&s)),
            Err(SecretProblem::Invalid(_))
        ));
        s.data = Some(
            [
                ("username".to_string(), ByteString(b"admin".to_vec())),
                ("password".to_string(), ByteString(b"password".to_vec())),
            ]
            .into(),
        );
        let u = users_from_secret(Some(&s)).unwrap();
        assert_eq!(
            (u[0].name.as_str(), u[0].max_privilege),
            ("admin", Privilege::Admin)
        );
    }

    #[test]
    fn secret_problems_never_quote_the_values() {
        use k8s_openapi::ByteString;
        let secret = |user: &str, pass: &str| k8s_openapi::api::core::v1::Secret {
            data: Some(
                [
                    ("username".to_string(), ByteString(user.as_bytes().to_vec())),
                    ("password".to_string(), ByteString(pass.as_bytes().to_vec())),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let long_user = "probe-of-a-secret-username";
        let long_pass = "probe-of-a-secret-password";
        for (s, want, values) in [
            (
                secret(long_user, "pw"),
                "the Secret's username must be 1 to 16 bytes",
                [long_user, "pw"],
            ),
            (
                secret("", "pw"),
                "the Secret's username must be 1 to 16 bytes",
                ["", "pw"],
            ),
            (
                secret("admin", long_pass),
                "the Secret's password must be at most 20 bytes",
                ["admin", long_pass],
            ),
        ] {
            let Err(SecretProblem::Invalid(why)) = users_from_secret(Some(&s)) else {
                panic!("{want}: accepted");
            };
            assert_eq!(why, want);
            for v in values.iter().filter(|v| !v.is_empty()) {
                assert!(!why.contains(v), "{why:?} quotes {v:?}");
            }
        }
        // The limits themselves are accepted.
        assert!(users_from_secret(Some(&secret(&"u".repeat(16), &"p".repeat(20)))).is_ok());
    }
}
