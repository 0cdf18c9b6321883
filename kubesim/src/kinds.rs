//! The resources this server knows, with the per-kind rules the real apiserver applies:
//! which have a status subresource, which allow PUT without a
//! resourceVersion or PUT-to-create, and how DELETE answers.

/// A resource served by kubesim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// kubevirt.io/v1 VirtualMachine (status subresource).
    VirtualMachine,
    /// kubevirt.io/v1 VirtualMachineInstance (no status subresource).
    VirtualMachineInstance,
    /// bmc.kubevirt.io/v1beta1 VirtualMachineBMC (status subresource).
    VirtualMachineBmc,
    /// core/v1 Secret.
    Secret,
    /// core/v1 Service.
    Service,
    /// core/v1 Event.
    Event,
    /// events.k8s.io/v1 Event (what kube-runtime's `Recorder` writes).
    EventV1,
    /// coordination.k8s.io/v1 Lease.
    Lease,
    /// core/v1 Pod (status subresource, graceful deletion).
    Pod,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// cdi.kubevirt.io/v1beta1 DataVolume (status subresource): an image imported into a
    /// volume.
    DataVolume,
}

/// Static facts about one resource.
#[derive(Debug)]
pub struct KindInfo {
    pub kind: Kind,
    /// API group, "" for core.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind_name: &'static str,
    /// A CustomResourceDefinition (generation tracking, JSON/merge/apply patches only).
    pub crd: bool,
    pub status_subresource: bool,
    /// `AllowUnconditionalUpdate`: PUT without metadata.resourceVersion is accepted.
    pub unconditional_update: bool,
    /// `AllowCreateOnUpdate`: PUT of a missing object creates it.
    pub create_on_update: bool,
    /// `ReturnDeletedObject`: DELETE answers with the object rather than a Status.
    pub return_deleted: bool,
    /// Short names for discovery (`kubectl get vm`).
    pub short_names: &'static [&'static str],
}

pub const ALL: &[KindInfo] = &[
    KindInfo {
        kind: Kind::VirtualMachine,
        group: "kubevirt.io",
        version: "v1",
        plural: "virtualmachines",
        kind_name: "VirtualMachine",
        crd: true,
        status_subresource: true,
        unconditional_update: false,
        create_on_update: false,
        return_deleted: false,
        short_names: &["vm", "vms"],
    },
    KindInfo {
        kind: Kind::VirtualMachineInstance,
        group: "kubevirt.io",
        version: "v1",
        plural: "virtualmachineinstances",
        kind_name: "VirtualMachineInstance",
        crd: true,
        status_subresource: false,
        unconditional_update: false,
        create_on_update: false,
        return_deleted: false,
        short_names: &["vmi", "vmis"],
    },
    KindInfo {
        kind: Kind::VirtualMachineBmc,
        group: "bmc.kubevirt.io",
        version: "v1beta1",
        plural: "virtualmachinebmcs",
        kind_name: "VirtualMachineBMC",
        crd: true,
        status_subresource: true,
        unconditional_update: false,
        create_on_update: false,
        return_deleted: false,
        short_names: &["vmbmc", "vmbmcs"],
    },
    KindInfo {
        kind: Kind::Secret,
        group: "",
        version: "v1",
        plural: "secrets",
        kind_name: "Secret",
        crd: false,
        status_subresource: false,
        unconditional_update: true,
        create_on_update: false,
        return_deleted: false,
        short_names: &[],
    },
    KindInfo {
        kind: Kind::Service,
        group: "",
        version: "v1",
        plural: "services",
        kind_name: "Service",
        crd: false,
        status_subresource: true,
        unconditional_update: true,
        create_on_update: false,
        // pkg/registry/core/service/storage: ReturnDeletedObject: true
        return_deleted: true,
        short_names: &["svc"],
    },
    KindInfo {
        kind: Kind::Event,
        group: "",
        version: "v1",
        plural: "events",
        kind_name: "Event",
        crd: false,
        status_subresource: false,
        unconditional_update: true,
        create_on_update: true,
        return_deleted: false,
        short_names: &["ev"],
    },
    KindInfo {
        kind: Kind::EventV1,
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        kind_name: "Event",
        crd: false,
        status_subresource: false,
        unconditional_update: true,
        create_on_update: true,
        return_deleted: false,
        short_names: &["ev"],
    },
    KindInfo {
        kind: Kind::Lease,
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind_name: "Lease",
        crd: false,
        status_subresource: false,
        // pkg/registry/coordination/lease/strategy.go
        unconditional_update: false,
        create_on_update: true,
        return_deleted: false,
        short_names: &[],
    },
    KindInfo {
        kind: Kind::Pod,
        group: "",
        version: "v1",
        plural: "pods",
        kind_name: "Pod",
        crd: false,
        status_subresource: true,
        // pkg/registry/core/pod/strategy.go: AllowUnconditionalUpdate true,
        // AllowCreateOnUpdate false; pod/storage: ReturnDeletedObject true.
        unconditional_update: true,
        create_on_update: false,
        return_deleted: true,
        short_names: &["po"],
    },
    KindInfo {
        kind: Kind::EndpointSlice,
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        kind_name: "EndpointSlice",
        crd: false,
        status_subresource: false,
        // pkg/registry/discovery/endpointslice/strategy.go
        unconditional_update: true,
        create_on_update: false,
        return_deleted: false,
        short_names: &[],
    },
    KindInfo {
        kind: Kind::DataVolume,
        group: "cdi.kubevirt.io",
        version: "v1beta1",
        plural: "datavolumes",
        kind_name: "DataVolume",
        crd: true,
        status_subresource: true,
        unconditional_update: false,
        create_on_update: false,
        return_deleted: false,
        short_names: &["dv", "dvs"],
    },
];

impl Kind {
    pub fn info(self) -> &'static KindInfo {
        ALL.iter()
            .find(|i| i.kind == self)
            .expect("every Kind is in ALL")
    }

    /// Find by URL group, version and plural.
    pub fn from_path(group: &str, version: &str, plural: &str) -> Option<Kind> {
        ALL.iter()
            .find(|i| i.group == group && i.version == version && i.plural == plural)
            .map(|i| i.kind)
    }

    /// Find by `apiVersion` and `kind` as written in an object.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        ALL.iter()
            .find(|i| i.api_version() == api_version && i.kind_name == kind)
            .map(|i| i.kind)
    }
}

impl KindInfo {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `virtualmachines.kubevirt.io`, or `secrets` for core: the resource as error messages name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The collection path in a namespace, or cluster-wide when `ns` is None.
    pub fn collection_path(&self, ns: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match ns {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", self.plural),
            None => format!("{base}/{}", self.plural),
        }
    }
}
