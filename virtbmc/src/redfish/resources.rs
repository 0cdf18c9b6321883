//! The JSON documents served, with the properties sushy and Ironic read and the schema
//! versions they are written against (DMTF DSP8010).

use serde_json::{Value, json};

use super::auth;
use super::media::Place;
use super::system::{self, Boot};
use crate::backend::Hardware;
use crate::engine::config::{BmcConfig, Privilege};
use crate::engine::vm::VmView;

pub const ROOT: &str = "/redfish/v1";
pub const SYSTEMS: &str = "/redfish/v1/Systems";
pub const SYSTEM: &str = "/redfish/v1/Systems/1";
pub const RESET: &str = "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset";
pub const MANAGERS: &str = "/redfish/v1/Managers";
pub const MANAGER: &str = "/redfish/v1/Managers/1";
pub const CHASSIS_ALL: &str = "/redfish/v1/Chassis";
pub const CHASSIS: &str = "/redfish/v1/Chassis/1";
pub const SESSION_SERVICE: &str = "/redfish/v1/SessionService";
pub const SESSIONS: &str = "/redfish/v1/SessionService/Sessions";
pub const ACCOUNT_SERVICE: &str = "/redfish/v1/AccountService";
pub const ACCOUNTS: &str = "/redfish/v1/AccountService/Accounts";
pub const ROLES: &str = "/redfish/v1/AccountService/Roles";

/// Redfish specification version (DSP0266) the service follows.
pub const REDFISH_VERSION: &str = "1.11.0";

pub(super) fn link(id: &str) -> Value {
    json!({ "@odata.id": id })
}

pub(super) fn context(kind: &str) -> String {
    format!("/redfish/v1/$metadata#{kind}.{kind}")
}

fn collection(id: &str, kind: &str, name: &str, members: &[String]) -> Value {
    json!({
        "@odata.id": id,
        "@odata.type": format!("#{kind}.{kind}"),
        "@odata.context": context(kind),
        "Name": name,
        "Members@odata.count": members.len(),
        "Members": members.iter().map(|m| link(m)).collect::<Vec<_>>(),
    })
}

pub fn versions() -> Value {
    json!({ "v1": "/redfish/v1/" })
}

pub fn service_root(uuid: &str) -> Value {
    json!({
        "@odata.id": ROOT,
        "@odata.type": "#ServiceRoot.v1_11_0.ServiceRoot",
        "@odata.context": context("ServiceRoot"),
        "Id": "RootService",
        "Name": "virtbmc Redfish service",
        "RedfishVersion": REDFISH_VERSION,
        "UUID": uuid,
        "Vendor": "virtbmc",
        "Product": "virtbmc",
        "Systems": link(SYSTEMS),
        "Managers": link(MANAGERS),
        "Chassis": link(CHASSIS_ALL),
        "SessionService": link(SESSION_SERVICE),
        "AccountService": link(ACCOUNT_SERVICE),
        "Links": { "Sessions": link(SESSIONS) },
    })
}

/// The OData service document (DSP0266 §9.2: `/redfish/v1/odata`).
pub fn odata() -> Value {
    let set = |name: &str, url: &str| json!({ "name": name, "kind": "Singleton", "url": url });
    json!({
        "@odata.context": "/redfish/v1/$metadata",
        "value": [
            set("Service", ROOT),
            set("Systems", SYSTEMS),
            set("Managers", MANAGERS),
            set("Chassis", CHASSIS_ALL),
            set("SessionService", SESSION_SERVICE),
            set("AccountService", ACCOUNT_SERVICE),
        ]
    })
}

/// The `$metadata` document: which schema each namespace above comes from.
pub fn metadata() -> String {
    let refs = [
        ("ServiceRoot", "v1_11_0"),
        ("ComputerSystemCollection", ""),
        ("ComputerSystem", "v1_13_0"),
        ("ManagerCollection", ""),
        ("Manager", "v1_10_0"),
        ("ChassisCollection", ""),
        ("Chassis", "v1_14_0"),
        ("SessionService", "v1_1_8"),
        ("SessionCollection", ""),
        ("Session", "v1_3_0"),
        ("AccountService", "v1_10_0"),
        ("ManagerAccountCollection", ""),
        ("ManagerAccount", "v1_7_0"),
        ("RoleCollection", ""),
        ("Role", "v1_3_1"),
        ("VirtualMediaCollection", ""),
        ("VirtualMedia", "v1_6_0"),
        ("Message", "v1_1_1"),
        ("Resource", "v1_0_0"),
    ];
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<edmx:Edmx xmlns:edmx=\"http://docs.oasis-open.org/odata/ns/edmx\" Version=\"4.0\">\n",
    );
    for (ns, v) in refs {
        out.push_str(&format!(
            "  <edmx:Reference Uri=\"http://redfish.dmtf.org/schemas/v1/{ns}_v1.xml\">\n    <edmx:Include Namespace=\"{ns}\"/>\n"
        ));
        if !v.is_empty() {
            out.push_str(&format!("    <edmx:Include Namespace=\"{ns}.{v}\"/>\n"));
        }
        out.push_str("  </edmx:Reference>\n");
    }
    out.push_str("  <edmx:DataServices>\n    <Schema xmlns=\"http://docs.oasis-open.org/odata/ns/edm\" Namespace=\"Service\">\n      <EntityContainer Name=\"Service\" Extends=\"ServiceRoot.v1_11_0.ServiceContainer\"/>\n    </Schema>\n  </edmx:DataServices>\n</edmx:Edmx>\n");
    out
}

pub fn systems() -> Value {
    collection(
        SYSTEMS,
        "ComputerSystemCollection",
        "Computer System Collection",
        &[SYSTEM.into()],
    )
}

fn status(view: Option<&VmView>) -> Value {
    match view {
        Some(v) if v.power.is_on() => json!({ "State": "Enabled", "Health": "OK" }),
        Some(_) => json!({ "State": "StandbyOffline", "Health": "OK" }),
        None => json!({ "State": "UnavailableOffline" }),
    }
}

/// `virtual_media`: whether the backend has a virtual CD to link to.
pub fn system(
    name: &str,
    view: Option<&VmView>,
    efi: bool,
    hardware: Option<Hardware>,
    virtual_media: bool,
) -> Value {
    let power = view.map_or("Off", |v| system::power_state(v.power));
    let Boot {
        target,
        enabled,
        mode,
    } = system::boot(view.and_then(|v| v.boot), efi);
    let mut s = json!({
        "@odata.id": SYSTEM,
        "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
        "@odata.context": context("ComputerSystem"),
        "Id": "1",
        "Name": name,
        "HostName": name,
        "SystemType": "Virtual",
        "Manufacturer": "KubeVirt",
        "Model": "KubeVirt VirtualMachine",
        "PowerState": power,
        "Status": status(view),
        "Boot": {
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideTarget@Redfish.AllowableValues": system::TARGETS,
            "BootSourceOverrideEnabled": enabled,
            "BootSourceOverrideEnabled@Redfish.AllowableValues": system::ENABLED,
            "BootSourceOverrideMode": mode,
            "BootSourceOverrideMode@Redfish.AllowableValues": system::MODES,
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": RESET,
                "ResetType@Redfish.AllowableValues": system::RESET_TYPES,
            }
        },
        "Links": {
            "ManagedBy": [link(MANAGER)],
            "Chassis": [link(CHASSIS)],
        },
    });
    if let Some(v) = view {
        s["UUID"] = json!(system::uuid(v.guid));
    }
    // The size the VM's spec declares (what Ironic's inspection reads as CPUs and memory).
    if let Some(h) = hardware {
        s["ProcessorSummary"] = json!({ "Count": h.cpus });
        if let Some(mib) = h.memory_mib {
            s["MemorySummary"] = json!({ "TotalSystemMemoryGiB": mib as f64 / 1024.0 });
        }
    }
    if virtual_media {
        s["VirtualMedia"] = link(&Place::System.collection());
    }
    s
}

pub fn managers() -> Value {
    collection(
        MANAGERS,
        "ManagerCollection",
        "Manager Collection",
        &[MANAGER.into()],
    )
}

pub fn manager(name: &str, virtual_media: bool) -> Value {
    let mut m = json!({
        "@odata.id": MANAGER,
        "@odata.type": "#Manager.v1_10_0.Manager",
        "@odata.context": context("Manager"),
        "Id": "1",
        "Name": format!("virtbmc for {name}"),
        "ManagerType": "BMC",
        "Model": "virtbmc",
        "FirmwareVersion": env!("CARGO_PKG_VERSION"),
        "PowerState": "On",
        "Status": { "State": "Enabled", "Health": "OK" },
        "Links": {
            "ManagerForServers": [link(SYSTEM)],
            "ManagerForChassis": [link(CHASSIS)],
        },
    });
    if virtual_media {
        m["VirtualMedia"] = link(&Place::Manager.collection());
    }
    m
}

pub fn chassis_all() -> Value {
    collection(
        CHASSIS_ALL,
        "ChassisCollection",
        "Chassis Collection",
        &[CHASSIS.into()],
    )
}

pub fn chassis(name: &str, view: Option<&VmView>) -> Value {
    json!({
        "@odata.id": CHASSIS,
        "@odata.type": "#Chassis.v1_14_0.Chassis",
        "@odata.context": context("Chassis"),
        "Id": "1",
        "Name": name,
        "ChassisType": "Other",
        "Manufacturer": "KubeVirt",
        "PowerState": view.map_or("Off", |v| if v.power.is_on() { "On" } else { "Off" }),
        "Status": status(view),
        "Links": {
            "ComputerSystems": [link(SYSTEM)],
            "ManagedBy": [link(MANAGER)],
        },
    })
}

pub fn session_service() -> Value {
    json!({
        "@odata.id": SESSION_SERVICE,
        "@odata.type": "#SessionService.v1_1_8.SessionService",
        "@odata.context": context("SessionService"),
        "Id": "SessionService",
        "Name": "Session Service",
        "ServiceEnabled": true,
        "SessionTimeout": auth::SESSION_TIMEOUT.as_secs(),
        "Status": { "State": "Enabled", "Health": "OK" },
        "Sessions": link(SESSIONS),
    })
}

pub fn sessions(ids: &[String]) -> Value {
    let members: Vec<String> = ids.iter().map(|id| format!("{SESSIONS}/{id}")).collect();
    collection(
        SESSIONS,
        "SessionCollection",
        "Session Collection",
        &members,
    )
}

pub fn session(id: &str, user: &str) -> Value {
    json!({
        "@odata.id": format!("{SESSIONS}/{id}"),
        "@odata.type": "#Session.v1_3_0.Session",
        "@odata.context": context("Session"),
        "Id": id,
        "Name": "User Session",
        "UserName": user,
        "SessionType": "Redfish",
    })
}

pub fn account_service() -> Value {
    json!({
        "@odata.id": ACCOUNT_SERVICE,
        "@odata.type": "#AccountService.v1_10_0.AccountService",
        "@odata.context": context("AccountService"),
        "Id": "AccountService",
        "Name": "Account Service",
        "ServiceEnabled": true,
        "Status": { "State": "Enabled", "Health": "OK" },
        "Accounts": link(ACCOUNTS),
        "Roles": link(ROLES),
    })
}

/// Accounts are numbered as the IPMI side numbers its users (Get User Name, user id).
pub fn account_id(config: &BmcConfig, name: &str) -> String {
    crate::engine::users::user_id(config, name).to_string()
}

pub fn accounts(ids: &[String]) -> Value {
    let members: Vec<String> = ids.iter().map(|id| format!("{ACCOUNTS}/{id}")).collect();
    collection(
        ACCOUNTS,
        "ManagerAccountCollection",
        "Accounts Collection",
        &members,
    )
}

pub fn account(id: &str, user: &str, privilege: Privilege) -> Value {
    let role = auth::role(privilege).unwrap_or("NoAccess");
    let mut a = json!({
        "@odata.id": format!("{ACCOUNTS}/{id}"),
        "@odata.type": "#ManagerAccount.v1_7_0.ManagerAccount",
        "@odata.context": context("ManagerAccount"),
        "Id": id,
        "Name": "User Account",
        "UserName": user,
        "RoleId": role,
        "Enabled": true,
        "Locked": false,
        "Password": null,
        "AccountTypes": ["Redfish", "IPMI"],
    });
    if auth::role(privilege).is_some() {
        a["Links"] = json!({ "Role": link(&format!("{ROLES}/{role}")) });
    }
    a
}

pub const ROLE_IDS: [&str; 3] = ["Administrator", "Operator", "ReadOnly"];

pub fn roles() -> Value {
    let members: Vec<String> = ROLE_IDS.iter().map(|r| format!("{ROLES}/{r}")).collect();
    collection(ROLES, "RoleCollection", "Roles Collection", &members)
}

/// The predefined roles and their privileges (DSP0266 §13.4, table of roles).
pub fn role(id: &str) -> Option<Value> {
    let privileges: &[&str] = match id {
        "Administrator" => &[
            "Login",
            "ConfigureManager",
            "ConfigureUsers",
            "ConfigureSelf",
            "ConfigureComponents",
        ],
        "Operator" => &["Login", "ConfigureSelf", "ConfigureComponents"],
        "ReadOnly" => &["Login", "ConfigureSelf"],
        _ => return None,
    };
    Some(json!({
        "@odata.id": format!("{ROLES}/{id}"),
        "@odata.type": "#Role.v1_3_1.Role",
        "@odata.context": context("Role"),
        "Id": id,
        "Name": format!("{id} role"),
        "RoleId": id,
        "IsPredefined": true,
        "AssignedPrivileges": privileges,
    }))
}
