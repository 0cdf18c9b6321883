//! The System's power and boot, mapped onto the IPMI side's view and actions (one backend,
//! two protocols): PowerState from [`PowerState`], Boot from the boot override, and each
//! `ComputerSystem.Reset` type to the action an IPMI Chassis Control would run in the same
//! state (IPMI 2.0 §28.3), so that the two never disagree about what a request does.

use crate::engine::vm::{Action, BootDevice, BootOverride, PowerState, When};

/// Redfish `PowerState` (ComputerSystem schema, Resource.PowerState).
pub fn power_state(p: PowerState) -> &'static str {
    match p {
        PowerState::Off => "Off",
        PowerState::On => "On",
        PowerState::Starting => "PoweringOn",
        PowerState::Stopping => "PoweringOff",
    }
}

/// Reset types offered. KubeVirt has no NMI, and a push of the power button is either a
/// graceful shutdown or a power on: neither Nmi nor PushPowerButton is listed.
pub const RESET_TYPES: [&str; 5] = [
    "On",
    "ForceOff",
    "GracefulShutdown",
    "GracefulRestart",
    "ForceRestart",
];

/// What a reset does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// The machine is already where the request leads: success, nothing to run.
    Done,
    Run(Action, When),
    /// A restart of a machine that is off (IPMI: 0xD5, not in present state).
    Off,
}

/// The action for `reset_type` in `power`, as Chassis Control's table has it for the same
/// request (power on 01h, power down 00h, soft shutdown 05h, power cycle 02h, hard reset 03h).
/// None for a type not offered.
pub fn reset(reset_type: &str, power: PowerState) -> Option<Reset> {
    use PowerState::{Off, On, Starting, Stopping};
    use Reset::{Done, Run};
    let now = |a| Run(a, When::Now);
    let settled = |a| Run(a, When::Settled);
    Some(match (reset_type, power) {
        ("On", Off) => now(Action::PowerOn),
        ("On", On | Starting) => Done,
        ("On", Stopping) => settled(Action::PowerOn),
        ("ForceOff", On | Starting) => now(Action::PowerOff),
        ("ForceOff", Off | Stopping) => Done,
        ("GracefulShutdown", On) => now(Action::SoftOff),
        ("GracefulShutdown", Starting) => settled(Action::SoftOff),
        ("GracefulShutdown", Off | Stopping) => Done,
        ("GracefulRestart" | "ForceRestart", Off) => Reset::Off,
        ("GracefulRestart", On) => now(Action::PowerCycle),
        ("GracefulRestart", Starting) => settled(Action::PowerCycle),
        ("ForceRestart", On) => now(Action::HardReset),
        ("ForceRestart", Starting) => settled(Action::HardReset),
        ("GracefulRestart" | "ForceRestart", Stopping) => settled(Action::PowerOn),
        _ => return None,
    })
}

pub const TARGETS: [&str; 5] = ["None", "Pxe", "Hdd", "Cd", "BiosSetup"];
pub const ENABLED: [&str; 3] = ["Disabled", "Once", "Continuous"];
pub const MODES: [&str; 2] = ["Legacy", "UEFI"];

fn target(d: BootDevice) -> &'static str {
    match d {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
        BootDevice::Cdrom => "Cd",
        BootDevice::Bios => "BiosSetup",
    }
}

fn device(t: &str) -> Option<BootDevice> {
    match t {
        "Pxe" => Some(BootDevice::Pxe),
        "Hdd" => Some(BootDevice::Disk),
        "Cd" => Some(BootDevice::Cdrom),
        "BiosSetup" => Some(BootDevice::Bios),
        _ => None,
    }
}

/// The Boot properties as read: (Target, Enabled, Mode). With no override, the mode is
/// the one last asked for (`efi`), kept by the Redfish side since an IPMI override without
/// a device has nowhere to hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    pub target: &'static str,
    pub enabled: &'static str,
    pub mode: &'static str,
}

pub fn boot(o: Option<BootOverride>, efi: bool) -> Boot {
    let mode = |efi| if efi { "UEFI" } else { "Legacy" };
    match o {
        None => Boot {
            target: "None",
            enabled: "Disabled",
            mode: mode(efi),
        },
        Some(b) => Boot {
            target: target(b.device),
            enabled: if b.persistent { "Continuous" } else { "Once" },
            mode: mode(b.efi),
        },
    }
}

/// A PATCH of Boot, each property optional (already checked against the allowed values).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootPatch<'a> {
    pub target: Option<&'a str>,
    pub enabled: Option<&'a str>,
    pub mode: Option<&'a str>,
}

/// The override after `patch`, and the mode to remember: properties not in the patch keep
/// their value. A target set while the override is Disabled enables it Once, as a request
/// naming a device means to boot from it; Disabled or target None clears the override.
pub fn apply(
    cur: Option<BootOverride>,
    efi: bool,
    patch: BootPatch<'_>,
) -> (Option<BootOverride>, bool) {
    let now = boot(cur, efi);
    let mode = patch.mode.unwrap_or(now.mode);
    let efi = mode == "UEFI";
    let target = patch.target.unwrap_or(now.target);
    let enabled = match (patch.enabled, now.enabled, patch.target) {
        (Some(e), _, _) => e,
        (None, "Disabled", Some(t)) if t != "None" => "Once",
        (None, e, _) => e,
    };
    let next = match (device(target), enabled) {
        (Some(device), "Once" | "Continuous") => Some(BootOverride {
            device,
            persistent: enabled == "Continuous",
            efi,
        }),
        _ => None,
    };
    (next, efi)
}

/// The RFC 4122 text of a GUID as IPMI sends it (the UUID's bytes reversed, IPMI 2.0
/// §20.8), which is the VM's firmware UUID as Kubernetes prints it.
pub fn uuid(guid: [u8; 16]) -> String {
    let mut u = guid;
    u.reverse();
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_follow_the_chassis_control_table() {
        use PowerState::*;
        assert_eq!(
            reset("On", Off),
            Some(Reset::Run(Action::PowerOn, When::Now))
        );
        assert_eq!(reset("On", Starting), Some(Reset::Done));
        assert_eq!(
            reset("On", Stopping),
            Some(Reset::Run(Action::PowerOn, When::Settled))
        );
        assert_eq!(reset("ForceOff", Off), Some(Reset::Done));
        assert_eq!(
            reset("ForceOff", Starting),
            Some(Reset::Run(Action::PowerOff, When::Now))
        );
        assert_eq!(
            reset("GracefulShutdown", On),
            Some(Reset::Run(Action::SoftOff, When::Now))
        );
        assert_eq!(
            reset("GracefulShutdown", Starting),
            Some(Reset::Run(Action::SoftOff, When::Settled))
        );
        assert_eq!(
            reset("GracefulRestart", On),
            Some(Reset::Run(Action::PowerCycle, When::Now))
        );
        assert_eq!(
            reset("ForceRestart", On),
            Some(Reset::Run(Action::HardReset, When::Now))
        );
        assert_eq!(reset("ForceRestart", Off), Some(Reset::Off));
        assert_eq!(reset("Nmi", On), None);
        assert_eq!(reset("PushPowerButton", On), None);
        for t in RESET_TYPES {
            for p in [Off, On, Starting, Stopping] {
                assert!(reset(t, p).is_some(), "{t} in {p}");
            }
        }
    }

    #[test]
    fn boot_reads_and_patches() {
        let pxe_once = Some(BootOverride {
            device: BootDevice::Pxe,
            persistent: false,
            efi: false,
        });
        assert_eq!(
            boot(None, true),
            Boot {
                target: "None",
                enabled: "Disabled",
                mode: "UEFI"
            }
        );
        assert_eq!(
            boot(pxe_once, true),
            Boot {
                target: "Pxe",
                enabled: "Once",
                mode: "Legacy"
            }
        );
        // Ironic's boot device request.
        let p = BootPatch {
            target: Some("Hdd"),
            enabled: Some("Continuous"),
            mode: None,
        };
        assert_eq!(
            apply(pxe_once, true, p),
            (
                Some(BootOverride {
                    device: BootDevice::Disk,
                    persistent: true,
                    efi: false
                }),
                false
            )
        );
        // Target alone on a disabled override: once.
        let p = BootPatch {
            target: Some("Cd"),
            ..Default::default()
        };
        assert_eq!(
            apply(None, true, p),
            (
                Some(BootOverride {
                    device: BootDevice::Cdrom,
                    persistent: false,
                    efi: true
                }),
                true
            )
        );
        // Mode alone: kept with no override, carried into an existing one.
        let p = BootPatch {
            mode: Some("UEFI"),
            ..Default::default()
        };
        assert_eq!(apply(None, false, p), (None, true));
        assert!(apply(pxe_once, false, p).0.unwrap().efi);
        // Disabled, or target None, clears.
        let p = BootPatch {
            enabled: Some("Disabled"),
            ..Default::default()
        };
        assert_eq!(apply(pxe_once, false, p).0, None);
        let p = BootPatch {
            target: Some("None"),
            ..Default::default()
        };
        assert_eq!(apply(pxe_once, false, p).0, None);
    }

    #[test]
    fn uuid_is_the_reversed_guid() {
        let mut g = [0u8; 16];
        for (i, b) in g.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(uuid(g), "0f0e0d0c-0b0a-0908-0706-050403020100");
    }
}
