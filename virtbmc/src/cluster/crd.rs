//! `VirtualMachineBMC` (`bmc.kubevirt.io/v1beta1`), with the fields KubeVirtBMC uses so that its
//! manifests and Secrets keep working, plus `status.port`: the agent port this
//! VM's BMC is served on, allocated by the elected controller and stored here so it survives restarts.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
#[kube(
    group = "bmc.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineBMC",
    plural = "virtualmachinebmcs",
    shortname = "vmbmc",
    namespaced,
    status = "VirtualMachineBMCStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineBMCSpec {
    pub virtual_machine_ref: LocalObjectReference,
    pub auth_secret_ref: LocalObjectReference,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipmi: Option<IpmiSpec>,
    /// Read for compatibility; this agent creates a ClusterIP Service whatever it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,
}

impl VirtualMachineBMCSpec {
    /// IPMI is on unless `spec.ipmi.enabled` is explicitly false (the peer's default).
    pub fn ipmi_enabled(&self) -> bool {
        self.ipmi.as_ref().and_then(|i| i.enabled).unwrap_or(true)
    }
}

impl VirtualMachineBMC {
    /// Served, with a Service: IPMI enabled and not being deleted (a VirtualMachineBMC held
    /// by our finalizer is going; only its pending boot override is still undone).
    pub fn active(&self) -> bool {
        self.spec.ipmi_enabled() && self.metadata.deletion_timestamp.is_none()
    }

    /// The one-shot boot override still waiting for the next start, if any.
    pub fn pending_one_shot(&self) -> Option<&BootOverrideStatus> {
        self.status
            .as_ref()
            .and_then(|s| s.boot_override.as_ref())
            .filter(|o| o.mode == "Oneshot")
    }
}

/// A VirtualMachine or Secret in the VirtualMachineBMC's namespace. The name is a DNS-1123
/// subdomain, as in the CRD manifest's schema; the agent checks it again ([`super::names`]).
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq, Eq)]
pub struct LocalObjectReference {
    #[serde(default)]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct IpmiSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct ServiceSpec {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineBMCStatus {
    #[serde(rename = "clusterIP", default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_override: Option<BootOverrideStatus>,
    /// The agent port (UDP) this BMC is served on; the Service maps 623 to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A `metav1.Condition`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The peer's `status.bootOverride` (mode, vmiUID, bootOrders keyed `disk:<name>`,
/// `cdrom:<name>`, `interface:<name>`, originalFirmware), plus what IPMI reads back:
/// the device and the EFI flag.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BootOverrideStatus {
    /// `Oneshot` or `Persistent`.
    pub mode: String,
    /// For a one-shot override: the VMI running when it was set ("" if none). The first
    /// Running VMI with another uid has booted with it, and the original orders come back.
    #[serde(rename = "vmiUID", default)]
    pub vmi_uid: String,
    /// The boot orders before the override (absent key: the device had none).
    #[serde(default)]
    pub boot_orders: BTreeMap<String, u32>,
    /// `Legacy` or `UEFI`: the firmware before the override, when the override changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_firmware: Option<String>,
    /// `pxe`, `disk` or `cdrom`.
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub efi: bool,
}
