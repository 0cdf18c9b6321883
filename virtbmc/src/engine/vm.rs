//! The engine's view of the machine behind a BMC, and what it may ask the backend to do.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerState {
    Off,
    On,
    /// Powering on: not yet "on" to a client. What a power command does meanwhile is
    /// in the table of `commands::chassis_control`.
    Starting,
    /// Powering off: still "on" to a client until it is down.
    Stopping,
}

impl PowerState {
    /// Get Chassis Status reports power on only when the machine is really up (or still up).
    pub fn is_on(self) -> bool {
        matches!(self, PowerState::On | PowerState::Stopping)
    }

    pub fn in_transition(self) -> bool {
        matches!(self, PowerState::Starting | PowerState::Stopping)
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::Off => "off",
            PowerState::On => "on",
            PowerState::Starting => "starting",
            PowerState::Stopping => "stopping",
        })
    }
}

/// Boot device selectors of boot option parameter 5 (IPMI 2.0 §28.13, table 28-14) that a
/// virtual machine can honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    Pxe,
    Disk,
    Cdrom,
    Bios,
}

impl BootDevice {
    pub fn from_selector(sel: u8) -> Option<BootDevice> {
        match sel {
            0b0001 => Some(BootDevice::Pxe),
            0b0010 => Some(BootDevice::Disk),
            0b0101 => Some(BootDevice::Cdrom),
            0b0110 => Some(BootDevice::Bios),
            _ => None,
        }
    }

    pub fn selector(self) -> u8 {
        match self {
            BootDevice::Pxe => 0b0001,
            BootDevice::Disk => 0b0010,
            BootDevice::Cdrom => 0b0101,
            BootDevice::Bios => 0b0110,
        }
    }
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::Cdrom => "cdrom",
            BootDevice::Bios => "bios",
        })
    }
}

/// A boot device override: one-shot unless persistent; `efi` selects EFI boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootOverride {
    pub device: BootDevice,
    pub persistent: bool,
    pub efi: bool,
}

/// A snapshot of the machine, kept current by the backend: the engine reads only this on the
/// packet path, never the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmView {
    pub power: PowerState,
    pub boot: Option<BootOverride>,
    /// System GUID as sent on the wire (IPMI 2.0 §22.14: SMBIOS byte order).
    pub guid: [u8; 16],
}

#[cfg(test)]
impl VmView {
    /// A machine in `power` with no boot override and a zero GUID, for tests.
    pub fn with_power(power: PowerState) -> VmView {
        VmView {
            power,
            boot: None,
            guid: [0; 16],
        }
    }
}

/// Converts an RFC 4122 UUID (as Kubernetes prints it) to the byte order IPMI sends a GUID in:
/// the whole 16 bytes reversed (IPMI 2.0 §20.8: node first, time-low last). ipmitool then
/// reports "IPMI" encoding and freeipmi prints the same UUID string as Kubernetes.
pub fn uuid_to_wire(u: [u8; 16]) -> [u8; 16] {
    let mut g = u;
    g.reverse();
    g
}

/// A side effect the engine asks for; the reply waits for its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PowerOn,
    /// Hard power off.
    PowerOff,
    /// ACPI soft shutdown.
    SoftOff,
    PowerCycle,
    HardReset,
    /// Set (Some) or clear (None) the boot override.
    SetBoot(Option<BootOverride>),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::PowerOn => f.write_str("power-on"),
            Action::PowerOff => f.write_str("power-off"),
            Action::SoftOff => f.write_str("soft-off"),
            Action::PowerCycle => f.write_str("power-cycle"),
            Action::HardReset => f.write_str("hard-reset"),
            Action::SetBoot(None) => f.write_str("boot-clear"),
            Action::SetBoot(Some(b)) => write!(
                f,
                "boot-{}{}{}",
                b.device,
                if b.persistent { "-persistent" } else { "" },
                if b.efi { "-efi" } else { "" }
            ),
        }
    }
}

/// When the driver may run an action. The engine never waits: a command that needs the
/// machine's power transition to end first says so here, and the driver waits for the
/// backend's view to settle before it acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// At once.
    Now,
    /// Once the machine is out of its transition (neither Starting nor Stopping). The wait and
    /// the action share one deadline; a transition that outlasts it answers
    /// [`ActionError::Busy`] (0xC0, "node busy").
    Settled,
}

/// How an action failed, as the backend saw it; each maps to the completion code a physical
/// BMC would send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    /// The machine is in a power transition: refused by a backend that cannot act before it
    /// ends (the driver then waits for it), or a transition that outlasted the deadline.
    #[error("machine is in a power transition")]
    Busy,
    #[error("not possible in the machine's present state: {0}")]
    NotInState(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("backend timed out")]
    Timeout,
    #[error("backend failed: {0}")]
    Failed(String),
}

impl ActionError {
    pub fn completion_code(&self) -> u8 {
        match self {
            ActionError::Busy => super::cc::NODE_BUSY,
            ActionError::NotInState(_) => super::cc::NOT_IN_STATE,
            ActionError::Unsupported(_) => super::cc::UNAVAILABLE,
            ActionError::Timeout => super::cc::TIMEOUT,
            ActionError::Failed(_) => super::cc::UNSPECIFIED,
        }
    }
}
